"""The quality report (stylenet-report), the training run's own figure and the multirun contact sheet:
what they draw is what was measured, and every number can be recomputed from the saved files."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import stylenet.gatys
from stylenet import StylenetError, quality
from stylenet.cli.report import main
from stylenet.cli.train import config_dir
from stylenet.image import load_rgb, resize_long_side, resolve_image_path, to_pil
from stylenet.inference import run_network
from stylenet.modelfile import read_model, save_model
from stylenet.nets import TransformerNet
from stylenet.report import GAP, LABEL_HEIGHT, MEASURES, demo_held_out, load_loss_config
from stylenet.styles import file_sha256
from stylenet.sweep import write_sweep_report
from tests.conftest import make_photo
from tests.helpers import console_script, signal_self, stops_handled_by
from tests.test_multistyle import NAMES, multi_file, multi_net

SIZE = 32


def tiny_model(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return save_model(path, TransformerNet(channels=8, residual_blocks=1), {"task": "style", "style_name": "t"})


def cell(figure: Image.Image, row: int, column: int, shape: tuple[int, int], size: int = SIZE) -> np.ndarray:
    """The pixels of an image of ``shape`` (H, W) centred in cell (row, column), by the layout's own
    arithmetic: square cells of ``size`` px, ``GAP`` px apart, under a ``LABEL_HEIGHT`` px strip."""
    height, width = shape
    left = GAP + column * (size + GAP) + (size - width) // 2
    top = LABEL_HEIGHT + row * (size + GAP) + (size - height) // 2
    return np.asarray(figure)[top:top + height, left:left + width]


#: a cell of the contact sheet with no image: the page's white
BLANK = (255, 255, 255)


def assert_sheet_cells(sheet: Image.Image, size: int, colours: dict[tuple[int, int], tuple[int, int, int]]) -> None:
    """Each (row, column) cell of a contact sheet of flat ``size`` px images is the colour given."""
    for (row, column), colour in colours.items():
        assert (cell(sheet, row, column, (size, size), size) == colour).all(), (row, column)


def pixels(image: torch.Tensor) -> np.ndarray:
    return np.asarray(to_pil(image))


def table_rows(markdown: str) -> dict[tuple[str, str], list[float]]:
    """``(photo, method) -> [measures]`` from report.md's table (mean rows included)."""
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 + len(MEASURES) and re.fullmatch(r"-?\d+\.\d{3}", cells[2]):
            rows[cells[0], cells[1]] = [float(c) for c in cells[2:]]
    return rows


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    return {"wide": make_photo(tmp_path / "in" / "wide.png", size=(40, 30), seed=1),
            "tall": make_photo(tmp_path / "in" / "tall.png", size=(30, 40), seed=2),
            "style": make_photo(tmp_path / "in" / "style.png", size=(48, 40), seed=99),
            "a": tiny_model(tmp_path / "models" / "a.safetensors", seed=0),
            "b": tiny_model(tmp_path / "models" / "b.safetensors", seed=1)}


def test_a_columns_folder_is_never_the_style_cell_nor_outside_out(tmp_path: Path, inputs: dict[str, Path],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Column folders came from the model file's stem and its styles' names unchecked: '..safetensors' wrote
    images/./style.png over the style's cell; a style named '../../x' wrote outside --out."""
    import shutil

    from tests.test_multistyle import multi_net

    dots = tmp_path / "m2" / "..safetensors"
    dots.parent.mkdir()
    shutil.copy(inputs["a"], dots)
    (photo := tmp_path / "p2" / "style.png").parent.mkdir()
    shutil.copy(inputs["wide"], photo)
    out = tmp_path / "r"
    assert main([str(photo), "--style", str(inputs["style"]), "-m", str(dots), "--size", str(SIZE),
                 "--device", "cpu", "--out", str(out)]) == 0, capsys.readouterr().err
    assert (out / "images" / "model" / "style.png").is_file()
    assert np.array_equal(np.asarray(Image.open(out / "images" / "style.png")),
                          pixels(resize_long_side(load_rgb(inputs["style"]), SIZE)))
    styles = [{"name": name, "sha256": file_sha256(inputs["style"]) if name.startswith("..") else f"{k:064d}",
               "image": "x.png"} for k, name in enumerate(["a", "../../../../escaped", "c"])]
    bad = save_model(tmp_path / "models" / "mm.safetensors", multi_net(), {"task": "style", "styles": styles})
    code = main([str(inputs["wide"]), "--style", str(inputs["style"]), "-m", str(bad), "--size", str(SIZE),
                 "--device", "cpu", "--out", str(tmp_path / "deep" / "x" / "rr")])
    assert code == 1 and "style name '../../../../escaped' cannot be part of a file name" in capsys.readouterr().err
    assert not list((tmp_path / "deep").rglob("escaped"))  # images/mm_../../../../escaped: deep/x/escaped


def test_figure_geometry_round_trip_and_table_recomputed_from_the_saved_files(
        tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    code = main([str(inputs["wide"]), str(inputs["tall"]), "--style", str(inputs["style"]), "-m", str(inputs["a"]),
                 "-m", str(inputs["b"]), "--size", str(SIZE), "--device", "cpu", "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    figure = Image.open(out / "figure.png").convert("RGB")
    columns, rows = 4, 2  # photo | style | a | b, one row per photo
    assert figure.size == (GAP + columns * (SIZE + GAP), LABEL_HEIGHT + rows * (SIZE + GAP))

    style = resize_long_side(load_rgb(inputs["style"]), SIZE)
    for row, name in enumerate(("wide", "tall")):
        photo = resize_long_side(load_rgb(inputs[name]), SIZE)  # the photo as the report should show it
        shape = tuple(photo.shape[-2:])
        assert np.array_equal(cell(figure, row, 0, shape), pixels(photo))
        assert np.array_equal(cell(figure, row, 1, tuple(style.shape[-2:])), pixels(style))
        for column, method in ((2, "a"), (3, "b")):  # each output: saved as a PNG, drawn as it was saved
            saved = np.asarray(Image.open(out / "images" / method / f"{name}.png").convert("RGB"))
            assert saved.shape[:2] == shape
            assert np.array_equal(cell(figure, row, column, shape), saved)

    table = table_rows((out / "report.md").read_text())
    data = json.loads((out / "report.json").read_text())
    assert len(data["entries"]) == 4 and not data["errors"]
    for name in ("wide", "tall"):
        photo, style_png = load_rgb(out / "images" / "photo" / f"{name}.png"), load_rgb(out / "images" / "style.png")
        for method in ("a", "b"):
            expected = quality.score(photo, style_png, load_rgb(out / "images" / method / f"{name}.png")).as_dict()
            assert table[name, method] == pytest.approx([expected[k] for k in MEASURES], abs=5e-4)
            entry = next(e for e in data["entries"] if (e["photo"], e["method"]) == (name, method))
            assert {k: entry[k] for k in MEASURES} == pytest.approx(expected, abs=1e-12)
    for method in ("a", "b"):
        mean = [np.mean([table[name, method][i] for name in ("wide", "tall")]) for i in range(len(MEASURES))]
        assert table["**mean**", method] == pytest.approx(mean, abs=1e-3)
    last = (out / "report.md").read_text().strip().splitlines()[-1]
    assert last.startswith("Targets (stylenet.quality.TARGETS") and "colour_moved >= 0.6" in last
    assert re.search(r"\ba: (met|NOT met)", last) and re.search(r"\bb: (met|NOT met)", last)

    # rerun into the same folder with fewer photos and models: the earlier cells it does not show go
    user_file = out / "images" / "notes.txt"  # not a cell of the earlier report: never deleted
    user_file.write_text("mine")
    code = main([str(inputs["wide"]), "--style", str(inputs["style"]), "-m", str(inputs["a"]), "--size", str(SIZE),
                 "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    left = sorted(str(path.relative_to(out)) for path in (out / "images").rglob("*") if path.is_file())
    assert left == ["images/a/wide.png", "images/notes.txt", "images/photo/wide.png", "images/style.png"]
    # an earlier report.json that names other files (edited, or another tool's) deletes none of them
    data = json.loads((out / "report.json").read_text())
    data["photos"] = {"x": "", "y": ".", "z": "images", "w": "report.md", "v": "images/notes.txt", "u": "a\0b.png"}
    (out / "report.json").write_text(json.dumps(data))
    assert main([str(inputs["wide"]), "--style", str(inputs["style"]), "-m", str(inputs["a"]), "--size", str(SIZE),
                 "--device", "cpu", "--out", str(out)]) == 0
    assert (out / "report.md").is_file() and (out / "images" / "notes.txt").read_text() == "mine"


def test_bad_inputs_fail_with_one_line_each_and_the_others_are_processed(
        tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"not a png")
    bad_model = tmp_path / "models" / "bad.safetensors"
    bad_model.write_bytes(b"\x00" * 64)
    out = tmp_path / "report"
    code = main([str(broken), str(inputs["wide"]), str(tmp_path / "missing.jpg"), str(inputs["style"]),
                 "--style", str(inputs["style"]), "-m", str(bad_model), "-m", str(inputs["a"]),
                 "--size", str(SIZE), "--device", "cpu", "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("stylenet-report: error:")]
    assert len(errors) == 4, err
    for bad in (broken, tmp_path / "missing.jpg", bad_model, inputs["style"]):  # the style is no held-out photo
        assert sum(str(bad) in line for line in errors) == 1, (bad, errors)
    data = json.loads((out / "report.json").read_text())
    assert [(e["photo"], e["method"]) for e in data["entries"]] == [("wide", "a")]
    # the refused model is in the saved report too, not only on stderr
    assert sum(str(bad_model) in line for line in data["errors"]) == 1 and len(data["errors"]) == 4
    assert str(bad_model) in (out / "report.md").read_text()
    figure = Image.open(out / "figure.png")
    assert figure.size == (GAP + 3 * (SIZE + GAP), LABEL_HEIGHT + SIZE + GAP)
    # a rerun into the same folder that measures nothing, with another style and photos that all fail,
    # leaves the last report as it was, its style and photo cells too
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    monkeypatch.setattr("stylenet.inference.run_network", lambda *args: (_ for _ in ()).throw(StylenetError("no")))
    code = main([str(broken), str(inputs["wide"]), "--style", str(inputs["tall"]), "-m", str(inputs["a"]),
                 "--size", str(SIZE), "--device", "cpu", "--out", str(out)])
    assert code == 1 and f"nothing was measured: {str(out)!r} is left as it was" in capsys.readouterr().err
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before

    code = main(["--style", str(tmp_path / "nope.png"), "-m", str(inputs["a"]), "--out", str(tmp_path / "r2")])
    _, err = capsys.readouterr()
    assert code == 1 and err.strip().count("\n") == 0 and "nope.png" in err


def test_a_photo_beyond_the_memory_for_one_pass_is_one_line_and_the_next_is_measured(
        tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A large --size was the allocator's traceback, and the photos after it were never measured."""
    import stylenet.inference

    calls: list[int] = []
    run_network = stylenet.inference.run_network

    def first_runs_out(net: torch.nn.Module, photo: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")
        return run_network(net, photo)

    monkeypatch.setattr("stylenet.inference.run_network", first_runs_out)
    out = tmp_path / "report"
    code = main([str(inputs["wide"]), str(inputs["tall"]), "--style", str(inputs["style"]), "-m", str(inputs["a"]),
                 "--size", str(SIZE), "--device", "cpu", "--out", str(out)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("stylenet-report: error:")]
    assert code == 1 and len(errors) == 1 and str(inputs["wide"]) in errors[0], errors
    assert errors[0].endswith("is beyond the memory free for one pass: use a smaller --size")
    data = json.loads((out / "report.json").read_text())
    assert [(e["photo"], e["method"]) for e in data["entries"]] == [("tall", "a")]


@pytest.mark.parametrize(("signum", "status", "how"), [(signal.SIGINT, 130, "interrupted"),
                                                     (signal.SIGTERM, 143, "terminated")])
def test_a_report_stopped_while_scoring_is_one_line_and_leaves_the_last_report(
        tmp_path: Path, inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], signum: signal.Signals, status: int, how: str) -> None:
    """Ctrl-C or SIGTERM (a scheduler's stop) while a photo is scored: the line and exit status of the
    other commands, not a traceback or SIGTERM's silent death; the table and figure already in --out
    stay those of the last finished report, and no temporary file is left beside them."""
    out = tmp_path / "report"
    arguments = [str(inputs["wide"]), "--style", str(inputs["style"]), "-m", str(inputs["a"]), "--size", str(SIZE),
                 "--device", "cpu", "--out", str(out)]
    assert main(arguments) == 0
    files = sorted(out.rglob("*"))
    before = {name: (out / name).read_bytes() for name in ("report.json", "report.md", "figure.png")}
    capsys.readouterr()
    monkeypatch.setattr("stylenet.report.quality.score", lambda *args, **kwargs: signal_self(signum))
    with stops_handled_by("stylenet-report"):
        code = main(arguments)
    assert code == status
    assert capsys.readouterr().err.splitlines()[-1] == f"stylenet-report: {how}"
    assert sorted(out.rglob("*")) == files
    assert {name: (out / name).read_bytes() for name in before} == before


def test_inputs_among_the_reports_own_files_are_refused_before_anything_is_written(
        tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A rerun on an earlier report's cells (its style.png, its photos) would overwrite its own inputs."""
    out = tmp_path / "report"
    assert main([str(inputs["wide"]), "--style", str(inputs["style"]), "-m", str(inputs["a"]),
                 "--size", str(SIZE), "--device", "cpu", "--out", str(out)]) == 0
    capsys.readouterr()
    cells = {path: path.read_bytes() for path in [out / "images" / "style.png", out / "figure.png",
                                                  out / "images" / "photo" / "wide.png"]}
    for photo, style in [(inputs["tall"], out / "images" / "style.png"), (out / "images" / "photo" / "wide.png",
                                                                         inputs["style"]),
                         (out / "figure.png", inputs["style"])]:
        code = main([str(photo), "--style", str(style), "-m", str(inputs["a"]), "--size", str(SIZE // 2),
                     "--device", "cpu", "--out", str(out)])
        _, err = capsys.readouterr()
        assert code == 1 and err.strip().count("\n") == 0, err
        assert str(style if style.is_relative_to(out) else photo) in err
    assert all(path.read_bytes() == data for path, data in cells.items())


def test_a_several_style_model_is_measured_in_the_style_of_the_style_image(
        tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Every column is measured against --style: of ``mm.safetensors`` (styles a, b, c) that is the style
    trained on that picture (the same bytes), column mm_b, and a model named mm_b is a second column, not
    a second writer of mm_b's cells. A picture none of its styles was trained on is one line listing
    them, and the other models are still measured."""
    images = [make_photo(tmp_path / "styles" / f"{name}.png", size=(40, 36), seed=10 + k)
              for k, name in enumerate(NAMES)]
    styles = [{"name": name, "sha256": file_sha256(image), "image": str(image)}
              for name, image in zip(NAMES, images, strict=True)]
    mm = save_model(tmp_path / "models" / "mm.safetensors", multi_net(),
                    {"task": "style", "style_name": "multi", "styles": styles})
    single = tiny_model(tmp_path / "models" / "mm_b.safetensors", seed=3)
    out = tmp_path / "report"
    assert main([str(inputs["wide"]), "--style", str(images[1]), "-m", str(mm), "-m", str(single),
                 "--size", str(SIZE), "--device", "cpu", "--out", str(out)]) == 0
    capsys.readouterr()
    data = json.loads((out / "report.json").read_text())
    assert list(data["methods"]) == ["mm_b", "mm_b_2"]
    photo = load_rgb(out / "images" / "photo" / "wide.png")
    for column, net in (("mm_b", read_model(mm).for_style("b")[1]), ("mm_b_2", read_model(single).net)):
        with torch.inference_mode():
            assert np.array_equal(pixels(run_network(net, photo)), np.asarray(Image.open(out / "images" / column /
                                                                                         "wide.png")))
    assert Image.open(out / "figure.png").size[0] == GAP + 4 * (SIZE + GAP)

    code = main([str(inputs["wide"]), "--style", str(inputs["style"]), "-m", str(mm), "-m", str(single),
                 "--size", str(SIZE), "--device", "cpu", "--out", str(tmp_path / "other")])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 1 and len(errors) == 1, errors
    assert f"model {str(mm)!r} holds 3 styles and none was trained on --style {str(inputs['style'])!r}" in errors[0]
    assert f"b ({str(images[1])!r})" in errors[0]
    assert list(json.loads((tmp_path / "other" / "report.json").read_text())["methods"]) == ["mm_b"]


def test_what_a_report_would_misjudge_or_lose_is_refused(tmp_path: Path, inputs: dict[str, Path],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A one-style model trained on another picture was measured against --style without a word; a copy of
    the style picture among the photos moved nothing and pulled the means down; a model named
    style.png.safetensors failed after all the stylizing (its column folder was the style's cell); an --out
    that is a training run's folder lost the run's figure.png."""
    style = inputs["style"]
    record = {"task": "style", "style_name": "s", "style_image": str(style), "style_sha256": file_sha256(style)}
    trained = save_model(tmp_path / "models" / "style.png.safetensors", TransformerNet(channels=8, residual_blocks=1),
                         record)
    other = save_model(tmp_path / "models" / "other.safetensors", TransformerNet(channels=8, residual_blocks=1),
                       {**record, "style_image": "elsewhere.png", "style_sha256": "0" * 64})
    (copy := tmp_path / "in" / "copy.png").write_bytes(style.read_bytes())
    out = tmp_path / "report"
    code = main([str(inputs["wide"]), str(copy), "--style", str(style), "-m", str(trained), "-m", str(other),
                 "--size", str(SIZE), "--device", "cpu", "--out", str(out)])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 1 and errors == [
        f"stylenet-report: error: model {str(other)!r} was trained on another picture ('elsewhere.png') than "
        f"--style {str(style)!r}: pass its picture as --style",
        f"stylenet-report: error: photo {str(copy)!r} is the style image (or a copy); hold out another photo"]
    data = json.loads((out / "report.json").read_text())
    assert [(entry["photo"], entry["method"]) for entry in data["entries"]] == [("wide", "style.png_2")]
    assert (out / "images" / "style.png_2" / "wide.png").is_file() and (out / "images" / "style.png").is_file()

    (run := tmp_path / "run").mkdir()
    (run / "quality.json").write_text("{}")
    (run / "figure.png").write_bytes(b"the run's figure")
    with pytest.raises(SystemExit) as usage:
        main([str(inputs["wide"]), "--style", str(style), "-m", str(trained), "--out", str(run)])
    assert usage.value.code == 2 and capsys.readouterr().err.endswith(
        f"error: cannot write into --out {str(run)!r}: it is a training run's folder (its figure.png and "
        "quality.json): name another\n")
    assert (run / "figure.png").read_bytes() == b"the run's figure"


def test_a_target_is_judged_on_the_mean_the_table_shows() -> None:
    """texture 0.3496 is shown as 0.350: against texture >= 0.35 the table must not say NOT met beside it."""
    from stylenet.report import cell, meets

    assert cell(0.3496) == "0.350" and meets("texture_moved", 0.3496, 0.35)
    assert cell(0.3494) == "0.349" and not meets("texture_moved", 0.3494, 0.35)
    assert cell(0.0104) == "0.010" and meets("clipped_beyond_style", 0.0104, 0.01)
    assert not meets("clipped_beyond_style", 0.0106, 0.01) and not meets("structure", float("nan"), 0.3)


def test_gatys_column_uses_the_named_loss_config(tmp_path: Path, inputs: dict[str, Path],
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    offline = load_loss_config("offline", config_dir())  # the configs/loss defaults list, merged as Hydra would
    assert (offline["weights"], offline["normalize"], offline["style_weight"]) == ("calibrated", True, 100.0)
    assert offline["arch"] == "vgg16" and offline["content_layers"] == ["relu2_2"]  # from perceptual.yaml
    assert offline["style_layers"] == ["relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1"]  # its own
    config = tmp_path / "loss.yaml"
    config.write_text("defaults:\n  - offline\n  - _self_\nweights: random\nstyle_layers: [relu1_2, relu2_2]\n")
    mine = load_loss_config(config, config_dir())  # a user's file building on configs/loss/offline.yaml
    assert mine == {**offline, "weights": "random", "style_layers": ["relu1_2", "relu2_2"]}
    losses = []
    real = stylenet.gatys.optimize_image
    monkeypatch.setattr(stylenet.gatys, "optimize_image", lambda *args, **kwargs: losses.append(args[2]) or
                        real(*args, **kwargs))
    out = tmp_path / "report"
    code = main([str(inputs["wide"]), "--style", str(inputs["style"]), "--gatys", "--gatys-iterations", "2",
                 "--loss-config", str(config), "--size", str(SIZE), "--device", "cpu", "--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    (loss,) = losses  # the Gatys column optimised the objective the user named
    assert list(loss.style_layers) == ["relu1_2", "relu2_2"] and loss.vgg.weights_source == "random"
    assert loss.term_weights["style"] == mine["style_weight"] and list(loss.content_layers) == ["relu2_2"]
    data = json.loads((out / "report.json").read_text())
    assert data["methods"]["gatys"]["targets"]["texture_moved"] == 0.5  # the Gatys target
    assert (out / "images" / "gatys" / "wide.png").is_file()
    assert "gatys (texture_moved >= 0.5): " in (out / "report.md").read_text()
    # which objective the column optimised: a loss config's, not the model's own
    assert data["gatys"] == {"loss_config": str(config), "iterations": 2}
    assert f"(Gatys: loss config {config}, 2 L-BFGS iterations)" in (out / "report.md").read_text().splitlines()[0]


@pytest.mark.parametrize(("content", "expected"), [
    (b"weights: [oops\n", " is not valid YAML: expected ',' or ']', but got '<stream end>' (line 2, column 1)"),
    (b"\xff\xfeweights: random\n", " is not UTF-8 text: 'utf-8' codec can't decode byte 0xff in position 0"),
    (b"style_weight: ${oops}\n", ": Interpolation key 'oops' not found (at style_weight)"),
    (b"defaults: [offline]\nstyle_wieght: 5\n", ": unknown setting 'style_wieght' (the loss takes weights, arch, "),
])
def test_a_broken_loss_config_is_one_line_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    content: bytes, expected: str) -> None:
    """PyYAML's and OmegaConf's errors span lines (a traceback around them): the user sees one line."""
    config = tmp_path / "loss.yaml"
    config.write_bytes(content)
    code = main(["--style", "demo:ihc", "--gatys", "--loss-config", str(config), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"stylenet-report: error: loss config {str(config)!r}{expected}"), err
    assert not (tmp_path / "out").exists()


def test_what_the_report_cannot_do_is_refused_before_the_work(tmp_path: Path, inputs: dict[str, Path],
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of these was found out late or not at all: -m given two files read the second as a photo; an
    --out that cannot be written failed after every column was made; a Gatys column on an objective without
    a style term was the photo untouched, reported as a result; a size beyond memory was a traceback (or the
    OOM killer) that stopped every photo."""
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as usage:
        main(["--style", str(inputs["style"]), "-m", str(inputs["a"]), str(inputs["b"]), "--out", str(out)])
    assert usage.value.code == 2 and f"{str(inputs['b'])!r} is a model file, not an image: each -m takes one" \
        in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:  # and without any -m (an IndexError, building that advice)
        main([str(inputs["b"]), "--style", str(inputs["style"]), "--gatys", "--out", str(out)])
    assert usage.value.code == 2 and capsys.readouterr().err.endswith(
        f"error: {str(inputs['b'])!r} is a model file, not an image: pass it with -m (-m {inputs['b']})\n")
    (occupied := tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as usage:
        main([str(inputs["wide"]), "--style", str(inputs["style"]), "-m", str(inputs["a"]), "--out", str(occupied)])
    assert usage.value.code == 2 and f"cannot write into --out {str(occupied)!r}: " in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # '' is the current folder: without the refusal, the report would land there
    with pytest.raises(SystemExit) as usage:
        main([str(inputs["wide"]), "--style", str(inputs["style"]), "-m", str(inputs["a"]), "--out", ""])
    assert usage.value.code == 2 and "--out must name a folder, got ''" in capsys.readouterr().err
    (broken := tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    code = main([str(inputs["wide"]), "--style", str(broken), "-m", str(inputs["a"]), "--out", str(out)])
    err = capsys.readouterr().err  # it was "trained on another picture", of every model
    assert code == 1 and "broken.png" in err and "another picture" not in err and len(err.splitlines()) == 1, err
    code = main([str(inputs["wide"]), "--style", str(inputs["style"]), "--gatys", "--loss-config", "pixel",
                 "--out", str(out)])
    assert code == 1 and capsys.readouterr().err == (
        "stylenet-report: error: the loss has no style term to optimise: choose --loss-config offline, perceptual "
        "or gatys_vgg19 (with a style_weight > 0)\n")
    assert not out.exists()
    monkeypatch.setattr("stylenet.gatys.available_memory", lambda device: 1 << 20)  # 1 MiB free
    code = main([str(inputs["wide"]), "--style", str(inputs["style"]), "--gatys", "--gatys-iterations", "1",
                 "-m", str(inputs["a"]), "--size", str(SIZE), "--device", "cpu", "--out", str(out)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("stylenet-report: error:")]
    assert code == 1 and len(errors) == 1, errors
    # the style picture's Gram pass is checked first: said of the picture (it read as the photo's size)
    assert re.fullmatch(rf"stylenet-report: error: gatys on {re.escape(repr(str(inputs['wide'])))}: the style picture "
                        r"at this size: a \d+x\d+ image needs about .* GiB on cpu \(VGG activations\), but only "
                        r"0\.0 GiB is free; use a smaller --size", errors[0]), errors
    assert [(e["photo"], e["method"]) for e in json.loads((out / "report.json").read_text())["entries"]] == [
        ("wide", "a")]  # the network's column is still measured


def test_default_photos_are_the_demo_held_out_ones_and_never_the_style() -> None:
    photos = demo_held_out(config_dir())
    assert [p.stem for p in photos] == ["astronaut", "motorcycle_left"]  # data=demo's validation split
    without = demo_held_out(config_dir(), exclude=resolve_image_path("demo:astronaut"))
    assert [p.stem for p in without] == ["motorcycle_left"]
    assert "ihc" not in [p.stem for p in photos]


def test_a_sweep_without_style_runs_writes_nothing(tmp_path: Path) -> None:
    for job in ("0", "1"):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- loss.pixel_weight={job}\n")
    assert write_sweep_report(tmp_path) is None
    assert not (tmp_path / "sweep.md").exists()
    (tmp_path / "1" / "styles" / "wave").mkdir(parents=True)  # runs of several styles: a report per style
    (tmp_path / "1" / "styles" / "wave" / "quality.json").write_text("{}")
    with pytest.raises(StylenetError, match=r"its runs train several styles each, with a report per style"):
        write_sweep_report(tmp_path)


def fake_style_run(folder: Path, style: str, colours: dict[str, tuple[int, int, int]], size: int) -> None:
    """A finished style run as the sweep report reads it: overrides, quality.json and its images, each a
    flat colour (``colours``: 'style', each photo, and 'out_<photo>')."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- style.image={style}\n")
    (folder / "quality").mkdir()
    for name, colour in colours.items():
        Image.new("RGB", (size, size), colour).save(folder / "quality" / f"{name}.png")
    photos = [name for name in colours if name != "style" and not name.startswith("out_")]
    mean = dict.fromkeys(MEASURES, 0.5)
    (folder / "quality.json").write_text(json.dumps({
        "style": style, "size": size, "style_file": "quality/style.png",
        "photos": {p: f"quality/{p}.png" for p in photos},
        "entries": [{"photo": p, "method": "network", "output": f"quality/out_{p}.png"} for p in photos],
        "methods": {"network": {"targets": quality.TARGETS, "mean": mean}}}))


def test_a_sweep_over_the_style_shows_each_runs_style_above_its_column(tmp_path: Path) -> None:
    """photo / style | run 1 | run 2, with a first row of the runs' own styles (not run 1's style twice)."""
    size = 8
    fake_style_run(tmp_path / "0", "a.png", {"style": (255, 0, 0), "p": (0, 0, 255), "out_p": (0, 255, 0)}, size)
    fake_style_run(tmp_path / "1", "b.png", {"style": (255, 255, 0), "p": (0, 0, 255), "out_p": (0, 255, 255)},
                   size)
    sheet = Image.open(write_sweep_report(tmp_path)["sheet"]).convert("RGB")
    assert sheet.size == (GAP + 3 * (size + GAP), LABEL_HEIGHT + 2 * (size + GAP))
    assert_sheet_cells(sheet, size, {(0, 1): (255, 0, 0), (0, 2): (255, 255, 0), (1, 0): (0, 0, 255),
                                     (1, 1): (0, 255, 0), (1, 2): (0, 255, 255)})
    # one style for all runs: the style is a column, as before
    (tmp_path / "1" / "quality.json").write_text((tmp_path / "1" / "quality.json").read_text()
                                                 .replace('"style": "b.png"', '"style": "a.png"'))
    sheet = Image.open(write_sweep_report(tmp_path)["sheet"]).convert("RGB")
    assert sheet.size == (GAP + 4 * (size + GAP), LABEL_HEIGHT + 1 * (size + GAP))
    assert (cell(sheet, 0, 1, (size, size), size) == (255, 0, 0)).all()


def test_a_sweep_whose_runs_hold_other_photos_shows_each_and_says_so(tmp_path: Path) -> None:
    """data.val_images=1,2: the sheet had the first run's photo rows only (run 1's second output left out), and
    sweep.md said every mean was over the first run's photos. A photo is known by its name and the file it was
    read from, not its copy (resized to each run's style.size: a sweep over it split each photo into a row per
    run); by name alone in reports from before they recorded it (runs 0 and 1 here)."""
    size = 8
    fake_style_run(tmp_path / "0", "a.png", {"style": (255, 0, 0), "p": (0, 0, 255), "out_p": (0, 255, 0)}, size)
    fake_style_run(tmp_path / "1", "a.png", {"style": (255, 0, 0), "p": (0, 0, 255), "q": (9, 9, 9),
                                             "out_p": (0, 255, 255), "out_q": (90, 90, 90)}, size)
    fake_style_run(tmp_path / "2", "a.png", {"style": (255, 0, 0), "p": (0, 0, 254), "out_p": (1, 2, 3)}, size)
    sheet = Image.open(write_sweep_report(tmp_path)["sheet"]).convert("RGB")
    assert sheet.size == (GAP + 5 * (size + GAP), LABEL_HEIGHT + 2 * (size + GAP))  # rows: p, q
    assert_sheet_cells(sheet, size, {(0, 0): (0, 0, 255), (0, 2): (0, 255, 0), (0, 3): (0, 255, 255),
                                     (0, 4): (1, 2, 3), (1, 0): (9, 9, 9), (1, 3): (90, 90, 90),
                                     (1, 2): BLANK, (1, 4): BLANK})  # no such output: blank
    assert "over each run's held-out photos (they differ: 0: p; 1: p, q; 2: p)" in (tmp_path / "sweep.md").read_text()
    for run, source in (("1", "/photos/a/p.png"), ("2", "/photos/b/p.png")):  # another data.root: another p
        record = json.loads((tmp_path / run / "quality.json").read_text())
        record["photo_sources"] = {"p": source, "q": "/photos/a/q.png"}
        (tmp_path / run / "quality.json").write_text(json.dumps(record))
    (tmp_path / "0" / "quality.json").unlink()  # (a run that failed)
    sheet = Image.open(write_sweep_report(tmp_path)["sheet"]).convert("RGB")
    assert sheet.size == (GAP + 5 * (size + GAP), LABEL_HEIGHT + 3 * (size + GAP))  # rows: p of a, q, p of b
    assert_sheet_cells(sheet, size, {(0, 0): (0, 0, 255), (0, 3): (0, 255, 255), (1, 0): (9, 9, 9),
                                     (1, 3): (90, 90, 90), (2, 0): (0, 0, 254), (2, 4): (1, 2, 3),
                                     (0, 4): BLANK, (2, 3): BLANK})


def test_a_sweep_table_says_why_a_run_has_no_measures_and_holds_this_sweeps_runs_only(tmp_path: Path) -> None:
    """A run of several styles and a super-resolution run read "no quality.json", as a failed run does; and
    a second sweep into the same folder listed the first sweep's jobs beside its own."""
    from omegaconf import OmegaConf

    from stylenet.sweep import SweepReport

    fake_style_run(tmp_path / "0", "a.png", {"style": (255, 0, 0), "p": (0, 0, 255), "out_p": (0, 255, 0)}, 8)
    for job, files in (("1", {"styles/ink/quality.md": "", "styles/ink/quality.json": "{}"}),
                       ("2", {".hydra/config.yaml": "task:\n  _target_: stylenet.tasks.SuperResolutionTask\n"}),
                       ("3", {})):
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job}\n")
        for name, text in files.items():
            (tmp_path / job / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / job / name).write_text(text)
    write_sweep_report(tmp_path)
    rows = {line.split(" | ")[0].strip("| "): line.rstrip(" |").split(" | ")[-1]
            for line in (tmp_path / "sweep.md").read_text().splitlines() if line.startswith("| ") and "---" not in line}
    assert (rows["1"], rows["2"], rows["3"]) == ("several styles: see 1/styles/*/quality.md",
                                                 "super-resolution: no quality report", "no quality.json")
    report = SweepReport()  # a later sweep of one job into the same folder: its own job alone
    report.on_job_end(OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path / "0")}}}), None)
    report.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert [row for row in (tmp_path / "sweep.md").read_text().splitlines() if row.startswith("| 0")] != []
    assert not [row for row in (tmp_path / "sweep.md").read_text().splitlines() if row.startswith(("| 1", "| 2"))]


def test_multirun_ends_with_one_contact_sheet_and_one_table(tmp_path: Path) -> None:
    """A bad job and two tiny style runs: the bad one is reported and the sweep goes on (exit 2 at the
    end); each run leaves its own figure and quality.json, none resumes from the other, and the sweep
    folder gets one contact sheet (photo | style | run 1 | run 2) and one table."""
    sweep, size = tmp_path / "sweep", 32

    def launch(weights: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*console_script("stylenet-train"), "-m", "experiment=smoke", f"loss.style_weight={weights}",
             "trainer.max_steps=2", "trainer.val_check_interval=2", "model.channels=8", "data.image_size=32",
             "data.batch_size=1", f"style.size={size}", f"hydra.sweep.dir={sweep}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300)

    result = launch("-1,1,20")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "loss.style_weight must be a number >= 0" in result.stderr and "1 sweep job(s) failed: #0" in result.stderr
    for job in ("1", "2"):
        assert {"figure.png", "quality.md", "quality.json"} <= {p.name for p in (sweep / job).iterdir()}
        assert "continuing from" not in (sweep / job / "train.log").read_text()  # a sibling job is no earlier run
    sheet = Image.open(sweep / "contact_sheet.png")
    assert sheet.size == (GAP + 5 * (size + GAP), LABEL_HEIGHT + 2 * (size + GAP))  # 2 held-out photos; job 0 blank
    table = (sweep / "sweep.md").read_text()
    runs = [line for line in table.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(runs) == 3, table
    assert runs[0].startswith("| 0 | loss.style_weight=-1 | ") and runs[0].endswith("| no quality.json |")
    runs = runs[1:]
    assert runs[0].startswith("| 1 | loss.style_weight=1 | ") and runs[1].startswith("| 2 | loss.style_weight=20 | ")
    assert "experiment=smoke" in table.split("|")[0]  # shared overrides: stated once, not per run
    mean = json.loads((sweep / "2" / "quality.json").read_text())["methods"]["network"]["mean"]
    assert f"| {mean['colour_moved']:.3f} | {mean['texture_moved']:.3f} |" in runs[1]
    # the same sweep again (as after an interruption): finished jobs are passed over, not failures
    again = launch("-1,1,20")
    assert again.returncode == 2 and "1 sweep job(s) failed: #0" in again.stderr, again.stderr[-2000:]
    assert [line.split("'")[1] for line in again.stderr.splitlines() if "is finished already" in line] == [
        str(sweep / "1"), str(sweep / "2")]
    # another sweep into the same folder: a refused job's folder keeps the record of the run it holds,
    # so the table still labels that run with its own settings
    other = launch("-1,5,20")
    assert other.returncode == 2 and "2 sweep job(s) failed: #0, #1" in other.stderr, other.stderr[-2000:]
    assert (sweep / "1" / ".hydra" / "overrides.yaml").read_text().splitlines()[1] == "- loss.style_weight=1"
    assert "| 1 | loss.style_weight=1 | " in (sweep / "sweep.md").read_text()


def test_a_photo_without_edges_leaves_structure_out_of_the_mean_and_the_json_valid(
        tmp_path: Path, inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    flat = tmp_path / "in" / "flat.png"
    Image.new("RGB", (40, 30), (128, 128, 128)).save(flat)
    out = tmp_path / "report"
    assert main([str(flat), str(inputs["wide"]), "--style", str(inputs["style"]), "-m", str(inputs["a"]),
                 "--size", str(SIZE), "--device", "cpu", "--out", str(out)]) == 0
    capsys.readouterr()

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    data = json.loads((out / "report.json").read_text(), parse_constant=refuse)  # no NaN in strict JSON
    structures = {entry["photo"]: entry["structure"] for entry in data["entries"]}
    assert structures["flat"] is None and structures["wide"] is not None
    assert data["methods"]["a"]["mean"]["structure"] == pytest.approx(structures["wide"])  # the defined one
    assert "| flat | a |" in (out / "report.md").read_text() and " n/a |" in (out / "report.md").read_text()


def test_the_training_report_passes_each_photo_it_leaves_out_to_its_caller(tmp_path: Path,
                                                                           inputs: dict[str, Path]) -> None:
    """The end of a run lists held-out photos the report could not use in skipped_images.txt."""
    from stylenet.report import training_report

    left_out: list[str] = []
    missing = tmp_path / "in" / "moved.png"
    paths, said = training_report(tmp_path / "run", inputs["a"], inputs["style"], [inputs["wide"], missing], SIZE,
                                  on_error=left_out.append)
    assert left_out == [f"cannot read image {str(missing)!r}: no such file"]
    assert [entry["photo"] for entry in json.loads(paths["data"].read_text())["entries"]] == ["wide"]
    assert f"network: {said}." in paths["table"].read_text()  # the run's log says the table's verdict


def test_each_styles_report_passes_the_photos_it_leaves_out_to_its_caller(
        tmp_path: Path, inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A run of several styles: each style's report meets the moved photo (the caller lists it once)."""
    from stylenet.style_reports import style_reports
    from tests.test_multistyle import NAMES

    monkeypatch.chdir(tmp_path)  # the model file records its style images as relative paths
    for k, name in enumerate(NAMES):
        make_photo(tmp_path / f"{name}.jpg", size=(48, 40), seed=10 + k)
    left_out: list[str] = []
    missing = tmp_path / "in" / "moved.png"
    reports = style_reports(tmp_path / "run", multi_file(tmp_path / "models" / "mm.safetensors"),
                            [inputs["wide"], missing], SIZE, on_error=left_out.append)
    assert sorted(reports) == sorted(NAMES)
    assert left_out == [f"cannot read image {str(missing)!r}: no such file"] * len(NAMES)


def test_a_demo_style_picture_among_the_held_out_photos_is_left_out_without_a_word(
        tmp_path: Path, inputs: dict[str, Path]) -> None:
    """style.images=[demo:astronaut, ...]: that photo is a style, not a held-out photo, for its own style's report
    (as for a single style); it was compared as the path 'demo:astronaut' and reported as a photo skipped."""
    from stylenet.image import resolve_image_path
    from stylenet.style_reports import style_reports
    from tests.test_multistyle import NAMES, multi_net

    styles = [{"name": name, "sha256": f"{k:064d}", "image": "demo:astronaut" if k == 0 else str(inputs["style"])}
              for k, name in enumerate(NAMES)]
    styles[1]["style_size"] = SIZE + 16  # grown by task=add_style at another size: measured at its own
    model = save_model(tmp_path / "mm.safetensors", multi_net(), {"task": "style", "style_name": "multi",
                                                                   "styles": styles})
    left_out: list[str] = []
    astronaut = resolve_image_path("demo:astronaut")
    reports = style_reports(tmp_path / "run", model, [astronaut, inputs["wide"]], SIZE, on_error=left_out.append)
    assert left_out == [] and sorted(reports) == sorted(NAMES)
    photos = {name: [entry["photo"] for entry in json.loads(reports[name]["data"].read_text())["entries"]]
              for name in NAMES}
    assert photos == {NAMES[0]: ["wide"], **{name: ["astronaut", "wide"] for name in NAMES[1:]}}
    sources = json.loads(reports[NAMES[1]]["data"].read_text())["photo_sources"]  # what a sweep tells photos by
    assert sources == {"astronaut": str(astronaut.resolve()), "wide": str(inputs["wide"].resolve())}
    # each style's stylized photo is one of its own held-out photos (the first style's picture was shown once)
    assert sorted(path.name for path in (tmp_path / "run").glob("*.png")) == sorted(
        [f"wide_{NAMES[0]}.png", *(f"astronaut_{name}.png" for name in NAMES[1:])])
    sizes = [json.loads(reports[name]["data"].read_text())["size"] for name in NAMES]
    assert sizes == [SIZE, SIZE + 16, *[SIZE] * (len(NAMES) - 2)]


def test_a_sweep_column_is_labelled_with_its_job_first(tmp_path: Path) -> None:
    """The job number leads, so that columns too narrow for their overrides still differ (and match the
    rows of sweep.md); a run whose overrides all runs share is labelled by its job alone."""
    from stylenet.sweep import Run, column_label, labels, sweep_runs

    runs = [Run(tmp_path / str(job), ["experiment=smoke", f"loss.style_weight={weight}", "loss.tv_weight=0.5"], None)
            for job, weight in ((0, 1), (1, 20))]
    assert [column_label(run, name, tmp_path) for run, name in zip(runs, labels(runs, tmp_path), strict=True)] == [
        "0: style_weight=1", "1: style_weight=20"]
    paths = [Run(tmp_path / str(job), ["experiment=smoke", f"style.image=/art/{name}.jpg"], None)
             for job, name in ((0, "a"), (1, "b"))]
    assert [column_label(run, name, tmp_path) for run, name in zip(paths, labels(paths, tmp_path), strict=True)] == [
        "0: image=a.jpg", "1: image=b.jpg"]
    for job, name in ((0, "ihc"), (1, "brick")):  # Hydra records an override as typed, escaped
        (tmp_path / "escaped" / str(job) / ".hydra").mkdir(parents=True)
        (tmp_path / "escaped" / str(job) / ".hydra" / "overrides.yaml").write_text(
            f"- experiment=smoke\n- style.image=demo\\:{name}\n")
    escaped = sweep_runs(tmp_path / "escaped")
    assert [column_label(run, name, tmp_path / "escaped")
            for run, name in zip(escaped, labels(escaped, tmp_path / "escaped"), strict=True)] == [
        "0: image=demo:ihc", "1: image=demo:brick"]
    alone = [Run(tmp_path / "0", ["experiment=smoke"], None)]
    assert [column_label(run, name, tmp_path) for run, name in zip(alone, labels(alone, tmp_path), strict=True)] == [
        "0"]
