"""Styles of a network of several (Dumoulin, Shlens & Kudlur, ICLR 2017): their names, and how a name,
an index or a blend of names becomes the blend weights the network takes.

A model file of several styles records them in its metadata as ``styles``: one entry per style, in
the order of the rows of its conditional norm tables (``name``, ``sha256`` of the style image,
``image``). A single-style file has no such entry; its one style is its ``style_name``. Kept free of
torch: the command-line tools parse ``--style`` and ``--blend`` before loading anything.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from stylenet.errors import StylenetError

#: What picks the style(s) of an output: a name, an index, or {name: weight} for a blend.
StyleChoice = str | int | Mapping[str, float]
#: Names a style may have: they end up in output file names (``photo_<style>.png``).
STYLE_NAME = re.compile(r"[\w.+-]+")


def file_sha256(path: Path) -> str:
    """Hash of a file's bytes: identifies the style image a model was trained on (and a loss network's weights file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def style_records(metadata: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The styles of a model file, in the order of its norm tables' rows: ``name``, ``sha256``,
    ``image`` each (one for a single-style file, from its ``style_name``, ``style_sha256`` and
    ``style_image``); in a file grown by ``task=add_style``, also the ``style_size`` and ``loss`` each
    was trained with (the file's own are the last run's)."""
    styles = metadata.get("styles")
    if isinstance(styles, list) and styles:
        if not all(isinstance(style, Mapping) and "name" in style for style in styles):
            raise StylenetError(f"its 'styles' metadata must list records with a 'name', got {str(styles)[:80]}")
        return [dict(style) for style in styles]
    return [{"name": str(metadata.get("style_name") or "stylized"), "sha256": metadata.get("style_sha256"),
             "image": metadata.get("style_image")}]


def style_names(metadata: Mapping[str, Any]) -> list[str]:
    """The names of a model file's styles (see :func:`style_records`)."""
    return [str(style["name"]) for style in style_records(metadata)]


def style_name_of(image: str | Path) -> str:
    """The default name of the style in ``image`` (a path or ``demo:<name>``): the file's stem, any
    character a style name cannot hold replaced by ``_`` (``My Painting.jpg`` -> ``My_Painting``)."""
    stem = Path(str(image).removeprefix("demo:")).stem
    return re.sub(r"[^\w.+-]", "_", stem) or "style"


def check_run_name(name: object, names: str) -> None:
    """``name=`` of stylenet-train and stylenet-gatys (``names``: what it names), refused in one line unless it is
    one file-name part: ``name=../../x`` would write outside the run's folder. Hydra reads ``name=2024`` as a
    number (kept) and ``name=1e3`` as 1000.0 (refused, not renamed)."""
    if isinstance(name, bool) or not isinstance(name, (str, int)) or not STYLE_NAME.fullmatch(str(name)) \
            or str(name) in (".", ".."):
        raise StylenetError(f"name must be letters, digits, '.', '+', '-' or '_' ({names}), got {name!r}")


def check_style_names(names: Sequence[str], setting: str, *, new: int | None = None) -> list[str]:
    """``names`` if every one is a usable, distinct file-name part; else one line naming ``setting``.
    Distinct ignoring case too, for the names from index ``new`` on (default: all of them): the names
    before it are a model file's own, kept as they are."""
    bad = [name for name in names if not STYLE_NAME.fullmatch(str(name)) or str(name) in (".", "..")]
    if bad:  # "." and ".." are folders, not names: styles/../ would be the run folder itself
        raise StylenetError(f"{setting}: style name {bad[0]!r} must be letters, digits, '.', '+', '-' or '_' "
                            "(not '.' or '..')")
    folded = [str(name).casefold() for name in names]
    repeated = [i for i, name in enumerate(folded) if i >= (new or 0) and folded.index(name) != i]
    if len(set(names)) != len(names) or repeated:
        # photo_Ink.png and photo_ink.png would be one file on the file systems of macOS and Windows
        raise StylenetError(f"{setting}: style names {list(names)} are not distinct (ignoring case, as the "
                            "file systems of macOS and Windows do)")
    return [str(name) for name in names]


def file_name_part(name: str) -> str:
    """``name`` if it can stand inside an output file's name (``photo_<style>.png``); a one-line
    error otherwise. Names made by stylenet are :data:`STYLE_NAME`s, but a model file may come from
    anywhere, and a name such as ``../x`` would put the output outside the folder asked for."""
    if name in {"", ".", ".."} or any(char in name for char in "/\\\0"):
        raise StylenetError(f"style name {name!r} cannot be part of a file name "
                            "(rename the style: stylenet-export MODEL -o NEW.safetensors --style-name NAME; for a "
                            "model of several styles NAME,NAME,... in its order)")
    return name


def parse_blend(text: str) -> dict[str, float]:
    """``"a=0.7,b=0.3"`` -> ``{"a": 0.7, "b": 0.3}`` (``--blend``); weights >= 0, not all zero."""
    blend: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name.strip() or not 0 <= weight < math.inf or name.strip() in blend:
            raise StylenetError(f"--blend {text!r}: expected NAME=WEIGHT,NAME=WEIGHT with finite weights >= 0, "
                                "each name once (e.g. a=0.7,b=0.3)")
        blend[name.strip()] = weight
    total = sum(blend.values())
    if total <= 0:
        raise StylenetError(f"--blend {text!r}: the weights are all zero")
    if total == math.inf:  # each finite, the sum not (1e308 twice): normalising it would give NaNs
        raise StylenetError(f"--blend {text!r}: the weights' sum is beyond a float's range; give smaller weights "
                            "(only their ratios count)")
    return blend


def blend_label(blend: Mapping[str, float]) -> str:
    """The name of a blend in output file names: ``a0.7+b0.3``; each weight as Python's shortest spelling of
    it, so that two blends name two files (``:g``'s six digits gave 0.1234567 and 0.1234568 one name); an
    exponent without its ``+`` (``1e20``), which would read as the separator."""
    return "+".join(f"{name}{repr(float(weight)).removesuffix('.0').replace('e+', 'e')}"
                    for name, weight in blend.items())


def choice_weights(names: Sequence[str], choice: StyleChoice, where: str) -> tuple[str, list[float]]:
    """(label, blend weights over ``names``) for a style name, an index, or {name: weight} (a blend,
    normalised to sum to 1, as Dumoulin et al. 2017 mix the parameters convexly). An unknown name
    is one line naming ``where`` (the model file) and the styles it has."""
    if isinstance(choice, Mapping):
        if not all(isinstance(weight, numbers.Real) and not isinstance(weight, bool) for weight in choice.values()):
            raise StylenetError(f"blend {dict(choice)} for {where}: weights must be numbers")  # not "0.5", as strength
        blend = {name: float(weight) for name, weight in choice.items()}
        if not blend or not all(0 <= weight < math.inf for weight in blend.values()) or \
                not 0 < sum(blend.values()) < math.inf:  # 1e308 + 1e308 overflows: every share would be 0
            raise StylenetError(f"blend {blend} for {where}: weights must be finite, >= 0, not all zero and "
                                "sum to a finite number")
    elif isinstance(choice, numbers.Integral) and not isinstance(choice, bool):
        choice = int(choice)
        if not 0 <= choice < len(names):
            raise StylenetError(f"{where} has no style {choice} (it has {len(names)}: {', '.join(names)})")
        return names[choice], [float(k == choice) for k in range(len(names))]
    else:
        blend = {str(choice): 1.0}
    unknown = [name for name in blend if name not in names]
    if unknown:
        raise StylenetError(f"{where} has no style {unknown[0]!r} (available: {', '.join(names)})")
    total = sum(blend.values())
    weights = [blend.get(name, 0.0) / total for name in names]
    label = next(iter(blend)) if len(blend) == 1 else blend_label(blend)
    return label, weights
