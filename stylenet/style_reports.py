"""The end of a training run of several styles (Dumoulin et al. 2017): what a single-style run ends
with (:func:`stylenet.report.training_report`), once per style.

Each style's network is the model file's single-style network of that style
(:meth:`stylenet.modelfile.StoredModel.for_style`), measured against its own style image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from stylenet.errors import StylenetError, first_line
from stylenet.image import load_rgb, resolve_image_path, save_image
from stylenet.inference import InferenceModel
from stylenet.modelfile import read_model
from stylenet.report import held_out_photos, network_method, run_report, verdict, write_report
from stylenet.styles import style_records

log = logging.getLogger(__name__)


def style_reports(run_dir: str | Path, model_path: str | Path, photos: Sequence[Path], size: int,
                  on_error: Callable[[str], None] | None = None, shown: Path | None = None
                  ) -> dict[str, dict[str, Path]]:
    """For every style of ``model_path``: the ``shown`` held-out photo (by default the first; the next one
    for the style whose picture it is) stylized, ``<photo>_<style>.png`` in ``run_dir``, and photo | style |
    network for the held-out photos but the style's own picture, measured at the style size the style was
    trained at (its record's, in a file grown by ``task=add_style``; else ``size``), as ``figure.png``,
    ``quality.md`` and ``quality.json`` in ``run_dir/styles/<style>/``. A style whose image cannot be read
    gets no report (a warning); the model file is written already. A photo left out is passed to
    ``on_error`` (one line), for each style."""
    shown = shown or photos[0]
    run_dir, stored = Path(run_dir), read_model(model_path, task="style")
    reports: dict[str, dict[str, Path]] = {}
    for record, (name, net) in zip(style_records(stored.metadata), stored.style_networks(), strict=True):
        try:  # demo:<name> too: that photo is the style here, no held-out photo (a single style's report, alike)
            picture = resolve_image_path(str(record.get("image")))
        except StylenetError:
            picture = None
        try:
            held_out = photos if picture is None else held_out_photos(photos, picture)
        except StylenetError as err:
            log.warning("no stylized photo and no quality report for style %s: %s", name, first_line(err))
            continue
        # the shown photo, or for the style whose picture it is the next held-out one (those before it are unread)
        later = [photo for photo in held_out if photos.index(photo) >= photos.index(shown)]
        try:  # at the photo's own size, within stylenet-stylize's memory budget, as a single style's run
            if later:
                save_image(run_dir / f"{later[0].stem}_{name}.png",
                           InferenceModel(net, precision="fp32").transform(load_rgb(later[0])))
        except (StylenetError, RuntimeError) as err:
            log.warning("no stylized held-out photo for style %s: %s", name, first_line(err))
        try:
            report, rows = run_report(run_dir / "styles" / name, record["image"], held_out,
                                      [network_method("network", net)], size=int(record.get("style_size") or size),
                                      images="quality", on_error=on_error)
        except (StylenetError, OSError) as err:
            log.warning("no quality report for style %s: %s", name, first_line(err))
            continue
        reports[name] = write_report(run_dir / "styles" / name, report, rows, table="quality.md",
                                     data="quality.json", title=f"Quality of {Path(model_path).name}, style {name}",
                                     extra={"model": str(model_path), "style": name})
        log.info("style %s: quality of the held-out photos: targets %s; %s", name,
                 verdict(report.missed("network")), reports[name]["table"])
    return reports
