"""scripts/reproduce_table1.py and scripts/reproduce_fig5.py end to end, at tiny sizes."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

from stylenet.modelfile import save_model
from stylenet.nets import TransformerNet
from tests.conftest import make_photo

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
# Every test here runs tiny convolutions: one thread each (tests/conftest.py: one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_table1_measures_and_writes_the_paper_layout(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    table1 = load_script("reproduce_table1")
    assert table1.main(["--sizes", "32", "--iterations", "2", "3", "--weights", "random", "--repeats", "1",
                        "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "| Image size | Gatys 2 | Gatys 3 | Ours | Speed-up 2 | Speed-up 3 |" in printed
    assert "| 32 x 32 |" in printed and "measured in one 3-iteration run" in printed
    assert (tmp_path / "table1.md").read_text(encoding="utf-8").strip() == printed.strip()
    [row] = read_csv(tmp_path / "table1.csv")
    assert row["size"] == "32" and row["device"] == "cpu" and row["gatys_measured_iterations"] == "3"
    assert 0 < float(row["gatys_2_s"]) < float(row["gatys_3_s"])
    speedup = float(row["gatys_3_s"]) / float(row["network_s"])
    assert float(row["speedup_3"]) == pytest.approx(speedup, rel=1e-4)


def test_table1_extrapolation_is_opt_in_and_stated(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    table1 = load_script("reproduce_table1")
    assert table1.main(["--sizes", "32", "--iterations", "4", "--weights", "random", "--repeats", "1",
                        "--extrapolate-from", "2", "--out", str(tmp_path)]) == 0
    assert "EXTRAPOLATED linearly from 2 timed iterations" in capsys.readouterr().out
    assert read_csv(tmp_path / "table1.csv")[0]["gatys_measured_iterations"] == "2"


@pytest.mark.parametrize("script", ["reproduce_table1", "reproduce_fig5"])
def test_every_size_is_checked_for_memory_before_any_is_measured(tmp_path: Path, script: str, style_model: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    make_photo(tmp_path / "val" / "photo.png")
    extra = (["--model", str(style_model), "--images", str(tmp_path / "val")] if script == "reproduce_fig5"
             else ["--weights", "random"])
    assert load_script(script).main(["--sizes", "32", "100000", "--iterations", "2", *extra,
                                     "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert "100000x100000 image needs about" in err and "use a smaller --sizes" in err
    assert "32 px" not in captured.out + err  # nothing measured first
    assert "optimizer=adam" not in err  # no such option in these scripts


def test_table1_extrapolates_from_the_rate_after_the_first_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first iteration holds the one-off start: a clock reading 1.0 s after it and 0.2 s per
    iteration after that gives 1.0 + 0.2 x 9 = 2.8 s for 10 iterations, not 10 x (1.4 s / 3)."""
    table1 = load_script("reproduce_table1")
    now = {"t": 0.0}

    def fake_optimize(content: torch.Tensor, loss: object, *, iterations: int, callback: object = None) -> object:
        for iteration in range(1, iterations + 1):
            now["t"] += 1.0 if iteration == 1 else 0.2
            if callback is not None:
                callback(SimpleNamespace(iteration=iteration))
        return SimpleNamespace(stopped=None, evaluations=2 * iterations + 1)

    monkeypatch.setattr(table1, "optimize", fake_optimize)
    monkeypatch.setattr(table1.time, "perf_counter", lambda: now["t"])
    loss = SimpleNamespace(device=torch.device("cpu"))
    seconds, evaluations, run = table1.time_gatys(torch.zeros(3, 8, 8), loss, [5, 10], extrapolate_from=3)
    assert run == 3 and evaluations == 2.0
    assert seconds == pytest.approx({5: 1.8, 10: 2.8})


@pytest.fixture
def style_model(tmp_path: Path, style_image: Path) -> Path:
    """A tiny (untrained) per-style model file whose metadata holds its training loss config."""
    metadata = {"task": "style", "style_name": "t", "style_image": str(style_image), "style_size": 64,
                "loss": {"weights": "random", "style_weight": 10.0, "tv_weight": 40.0}}
    return save_model(tmp_path / "t.safetensors", TransformerNet(channels=8, residual_blocks=1), metadata)


def test_fig5_writes_csv_plot_and_where_gatys_matches(tmp_path: Path, style_model: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    for seed in range(2):
        make_photo(tmp_path / "val" / f"photo{seed}.png", seed=seed)
    (tmp_path / "val" / "broken.png").write_bytes(b"not a png")
    fig5 = load_script("reproduce_fig5")
    out = tmp_path / "fig5"
    assert fig5.main(["--model", str(style_model), "--images", str(tmp_path / "val"), "--sizes", "32",
                      "--iterations", "2", "3", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "skipped cannot read image" in captured.err and "broken.png" in captured.err
    assert "32 px: network objective" in captured.out and "Gatys first matches it from noise" in captured.out
    rows = read_csv(out / "fig5.csv")
    assert len(rows) == 2 * (1 + 2 * 2)  # per image: the network, and 2 starts x 2 iteration counts
    assert {(r["method"], r["init"], r["iterations"]) for r in rows} == {
        ("network", "", ""), ("gatys", "noise", "2"), ("gatys", "noise", "3"), ("gatys", "content", "2"),
        ("gatys", "content", "3")}
    assert (out / "fig5.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fig5_needs_the_style_image(tmp_path: Path, style_model: Path, style_image: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    style_image.unlink()
    fig5 = load_script("reproduce_fig5")
    assert fig5.main(["--model", str(style_model), "--images", str(tmp_path), "--sizes", "32",
                      "--no-plot", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == ("reproduce_fig5.py: error: style image (--style): cannot read "
                                               f"image '{style_image}': no such file")


def test_fig5_measures_one_style_of_a_several_styles_file(tmp_path: Path, style_image: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A file of two styles needs --model-style (a one-line error naming the styles); with it, that
    style's network is measured against its own style image from the file's records."""
    other = make_photo(tmp_path / "other.png", size=(40, 40), seed=7)
    styles = [{"name": "a", "sha256": None, "image": str(style_image)}, {"name": "b", "sha256": None,
                                                                          "image": str(other)}]
    metadata = {"task": "style", "style_name": "ab", "styles": styles, "style_size": 32,
                "loss": {"weights": "random", "style_weight": 10.0, "tv_weight": 40.0}}
    model = save_model(tmp_path / "ab.safetensors", TransformerNet(channels=8, residual_blocks=1, styles=2), metadata)
    make_photo(tmp_path / "val" / "photo.png", seed=0)
    fig5 = load_script("reproduce_fig5")
    common = ["--model", str(model), "--images", str(tmp_path / "val"), "--sizes", "32", "--iterations", "2",
              "--inits", "content", "--no-plot"]
    assert fig5.main([*common, "--out", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip() == (f"reproduce_fig5.py: error: model file '{model}' holds 2 styles "
                                               "(a, b): pick one with --model-style NAME")
    assert fig5.main([*common, "--model-style", "b", "--out", str(tmp_path / "b")]) == 0
    assert len(read_csv(tmp_path / "b" / "fig5.csv")) == 2  # the network, and Gatys from the photo


@pytest.mark.parametrize("script", ["reproduce_table1", "reproduce_fig5"])
def test_an_out_that_cannot_be_written_is_refused_before_measuring(tmp_path: Path, script: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (afile := tmp_path / "afile").write_text("x")
    module = load_script(script)
    inputs = ["--model", "nowhere.safetensors", "--images", str(tmp_path)] if script == "reproduce_fig5" else []
    with pytest.raises(SystemExit) as stop:
        module.main([*inputs, "--sizes", "32", "--out", str(afile)])
    assert stop.value.code == 2
    # the usage and this line only: nothing was measured (table1 names each size it times; fig5 would
    # first miss the model)
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"{script}.py: error: cannot write into --out '{afile}': '{afile}' is a file, not a folder")


def test_multistyle_check_and_sr_quality_errors_are_one_line(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    check = load_script("multistyle_check")
    assert check.main(["--styles", "demo:ihc", str(tmp_path / "none.jpg"), "--steps", "1",
                       "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("multistyle_check.py: error: ") and "none.jpg" in err and "\n" not in err
    # names that would overwrite another model file here, refused before any training
    make_photo(tmp_path / "multi.png")
    for styles, new, clash in ((["demo:ihc", str(tmp_path / "multi.png")], "demo:gravel", "multi"),
                               (["demo:ihc", "demo:brick"], "demo:ihc", "ihc")):
        assert check.main(["--styles", *styles, "--new-style", new, "--steps", "1", "--out", str(tmp_path / "m")]) == 2
        err = capsys.readouterr().err.strip()
        assert f"its name {clash!r} is another model file's here" in err and "\n" not in err, err
    assert not list((tmp_path / "m").glob("*.safetensors"))
    quality = load_script("sr_quality")
    with pytest.raises(quality.StepFailed, match=r"failed \(exit 1\)"):
        quality.run([sys.executable, "-c", "raise SystemExit(1)"], threads=1)
