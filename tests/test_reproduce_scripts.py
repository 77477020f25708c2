"""The scripts of scripts/ (the reproductions of the paper and the checks behind the README's figures) end to
end, at tiny sizes."""

from __future__ import annotations

import csv
import importlib.util
import os
import signal
import statistics
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

from stylenet import StylenetError
from stylenet.modelfile import read_header, save_model
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
    # the verdict is the CSV's: the fewest iterations whose Gatys mean is at most the network's mean
    network = statistics.fmean(float(r["objective"]) for r in rows if r["method"] == "network")
    for init in ("noise", "content"):
        means = {n: statistics.fmean(float(r["objective"]) for r in rows if r["init"] == init and r["iterations"] == n)
                 for n in ("2", "3")}
        reached = [n for n in ("2", "3") if means[n] <= network]
        assert (f"from {init} at {reached[0]} iterations" if reached else f"from {init} not within 3 iterations") \
            in captured.out


def test_fig5_report_names_the_first_iteration_count_at_or_below_the_network() -> None:
    fig5 = load_script("reproduce_fig5")
    means = {("noise", 2): 0.7, ("noise", 3): 0.5, ("noise", 5): 0.3, ("content", 2): 0.6, ("content", 5): 0.55}
    assert fig5.report({32: (0.5, 0.1)}, {32: means}, ["noise", "content"]) == (
        "32 px: network objective 0.5 +- 0.1; Gatys first matches it from noise at 3 iterations, "
        "from content not within 5 iterations")


def test_fig5_needs_the_style_image(tmp_path: Path, style_model: Path, style_image: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    style_image.unlink()
    fig5 = load_script("reproduce_fig5")
    assert fig5.main(["--model", str(style_model), "--images", str(tmp_path), "--sizes", "32",
                      "--no-plot", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == ("reproduce_fig5.py: error: style image (--style): cannot read "
                                               f"image '{style_image}': no such file")


def test_fig5_refuses_a_recorded_style_picture_that_changed_since_training(
        tmp_path: Path, style_image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The file at the recorded path was measured, whatever picture it held now: another style's objective,
    without a word. An explicit --style of another picture is measured, with a warning."""
    from stylenet.styles import file_sha256

    trained_on = file_sha256(style_image)
    make_photo(style_image, size=(64, 64), seed=7)  # the picture replaced since
    model = save_model(tmp_path / "t.safetensors", TransformerNet(channels=8, residual_blocks=1),
                       {"task": "style", "style_name": "t", "style_image": str(style_image), "style_sha256": trained_on,
                        "style_size": 64, "loss": {"weights": "random"}})
    fig5 = load_script("reproduce_fig5")
    args = fig5.parse_args(["--model", str(model), "--images", str(tmp_path)])
    with pytest.raises(StylenetError) as refused:
        fig5.build_objective(str(model), args, torch.device("cpu"))
    assert str(refused.value) == (f"{str(style_image)!r} is not the picture {str(model)!r} was trained on (its "
                                  "sha256 differs): pass that picture with --style")
    args = fig5.parse_args(["--model", str(model), "--images", str(tmp_path), "--style", str(style_image)])
    fig5.build_objective(str(model), args, torch.device("cpu"))
    assert capsys.readouterr().err.strip() == (f"reproduce_fig5.py: warning: --style {str(style_image)!r} is not the "
                                               f"picture {str(model)!r} was trained on: the network's objective is "
                                               "measured against another style")


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
    # a file grown by task=add_style: each style keeps its own objective, and the file's own (its last run's,
    # of a file written before the temporal term was kept apart from the loss network's: a TypeError) is not it
    grown = [{**styles[0], "style_size": 24, "loss": {"weights": "random", "style_weight": 3.0}},
             {**styles[1], "style_size": 32, "loss": {"weights": "random", "style_weight": 10.0}}]
    grown_file = save_model(tmp_path / "grown.safetensors", TransformerNet(channels=8, residual_blocks=1, styles=2),
                            {**metadata, "styles": grown, "base": "ab.safetensors",
                             "loss": {"weights": "random", "style_weight": 10.0, "temporal_weight": 600.0}})
    args = fig5.parse_args(["--model", str(grown_file), "--images", str(tmp_path / "val"), "--model-style", "a"])
    _net, loss = fig5.build_objective(str(grown_file), args, torch.device("cpu"))
    assert loss.term_weights["style"] == 3.0  # style a's own, not the file's
    from stylenet.image import load_rgb, resize_long_side
    from stylenet.losses import PerceptualLoss

    own = PerceptualLoss(weights="random", style_weight=3.0)  # its Grams of the picture at its own 24 px, not 32
    own.set_style([resize_long_side(load_rgb(style_image), 24)])
    assert torch.allclose(loss.target_gram("relu1_2"), own.target_gram("relu1_2"))


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
    # a folder of an earlier run's results (hours of measuring, replaced without a word)
    earlier = {"reproduce_table1": "table1.csv", "reproduce_fig5": "fig5.csv"}[script]
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / earlier).write_text("measured")
    with pytest.raises(SystemExit) as stop:
        module.main([*inputs, "--sizes", "32", "--out", str(tmp_path / "done")])
    assert stop.value.code == 2 and (tmp_path / "done" / earlier).read_text() == "measured"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"{script}.py: error: --out '{tmp_path / 'done'}' holds an earlier run's {earlier}: pass another --out "
        "(or move it away)")


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
    (broken := tmp_path / "broken.jpg").write_bytes(b"not a jpeg")  # found, but unreadable: before any training,
    with pytest.MonkeyPatch.context() as patch:                     # not after every other network's
        patch.setattr(check, "fit", lambda *args: pytest.fail("trained before the styles were read"))
        assert check.main(["--styles", "demo:ihc", "demo:brick", "--new-style", str(broken), "--steps", "1",
                           "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("multistyle_check.py: error: --new-style") and "broken.jpg" in err and "\n" not in err
    quality = load_script("sr_quality")
    with pytest.raises(quality.StepFailed, match=r"failed \(exit 1\)"):
        quality.run([sys.executable, "-c", "raise SystemExit(1)"], threads=1)


@pytest.mark.parametrize("script", ["reproduce_table1", "reproduce_fig5"])
def test_ctrl_c_is_one_line_and_exit_130(tmp_path: Path, script: str, style_model: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C in the (hours-long) optimisation: one line, as stylenet's commands say it, not a traceback."""
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    make_photo(tmp_path / "val" / "photo.png")
    module = load_script(script)
    monkeypatch.setattr(module, "optimize", interrupted)
    extra = (["--model", str(style_model), "--images", str(tmp_path / "val"), "--no-plot"]
             if script == "reproduce_fig5" else ["--weights", "random", "--repeats", "1"])
    assert module.main([*extra, "--sizes", "32", "--iterations", "2", "--out", str(tmp_path / "out")]) == 130
    assert capsys.readouterr().err.strip() == f"{script}.py: interrupted"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("stop", ["ctrl_c", "sigterm"])
@pytest.mark.parametrize("script", ["sr_quality", "multistyle_check", "tile_check"])
def test_the_other_scripts_end_a_ctrl_c_in_one_line_and_exit_130(
        tmp_path: Path, script: str, stop: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """They printed a traceback (sr_quality, tile_check) or exited 1 after Lightning's shutdown line
    (multistyle_check); SIGTERM is 143 and "terminated", as the commands say it (multistyle_check said
    "interrupted", 130)."""
    from stylenet.cli import Terminated

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt if stop == "ctrl_c" else Terminated

    module = load_script(script)
    monkeypatch.setattr(module, {"sr_quality": "run", "multistyle_check": "fit", "tile_check": "check_export"}[script],
                        interrupted)
    argv = {"sr_quality": ["--run-dir", str(tmp_path / "sq")],
            "multistyle_check": ["--steps", "1", "--out", str(tmp_path / "ms")], "tile_check": ["export"]}[script]
    assert module.main(argv) == (130 if stop == "ctrl_c" else 143)
    said = "interrupted" if stop == "ctrl_c" else "terminated"
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"{script}.py: {said}")


def test_fig5_refuses_a_style_size_that_cannot_work_before_measuring(tmp_path: Path, style_model: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """--style-size 0 is a usage error (not the model's size in its place), and one too large for the
    memory is refused with the estimate, as --sizes is, not by the allocation's traceback."""
    make_photo(tmp_path / "val" / "photo.png")
    fig5 = load_script("reproduce_fig5")
    common = ["--model", str(style_model), "--images", str(tmp_path / "val"), "--sizes", "32", "--iterations", "2",
              "--no-plot", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stop:
        fig5.main([*common, "--style-size", "0"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "reproduce_fig5.py: error: --style-size must be >= 1 px"
    assert fig5.main([*common, "--style-size", "100000"]) == 2
    captured = capsys.readouterr()
    assert "image needs about" in captured.err and "use a smaller --style-size" in captured.err
    assert "\n" not in captured.err.strip() and "32 px" not in captured.out + captured.err  # nothing measured


def test_fig5_refuses_a_model_style_a_single_style_file_does_not_hold(tmp_path: Path, style_model: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    make_photo(tmp_path / "val" / "photo.png")
    fig5 = load_script("reproduce_fig5")
    common = ["--model", str(style_model), "--images", str(tmp_path / "val"), "--sizes", "32", "--iterations", "2",
              "--inits", "content", "--no-plot"]
    assert fig5.main([*common, "--model-style", "foo", "--out", str(tmp_path / "foo")]) == 2
    assert capsys.readouterr().err.strip() == (f"reproduce_fig5.py: error: model file '{style_model}' has no style "
                                               "'foo' (available: t)")
    assert fig5.main([*common, "--model-style", "t", "--out", str(tmp_path / "t")]) == 0  # its own name
    assert len(read_csv(tmp_path / "t" / "fig5.csv")) == 2


@pytest.mark.parametrize(("options", "message"), [
    (["--out", "afile"], "cannot write into --out '{tmp}/afile': '{tmp}/afile' is a file, not a folder"),
    (["--image-size", "0"], "--channels, --style-size, --batch-size, --image-size and --scale-size must be >= 1 "
                            "and --residual-blocks >= 0"),
    (["--residual-blocks", "-1"], "--channels, --style-size, --batch-size, --image-size and --scale-size must be "
                                  ">= 1 and --residual-blocks >= 0"),
    (["--seed", "-1"], "--seed must be a whole number from 0 to 2**32 - 1, got -1"),
])
def test_multistyle_check_usage_errors(tmp_path: Path, options: list[str], message: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before anything is trained, not a traceback later nor a default in the place of a 0."""
    (tmp_path / "afile").write_text("x")
    options = [str(tmp_path / value) if value == "afile" else value for value in options]
    with pytest.raises(SystemExit) as stop:
        load_script("multistyle_check").main(["--steps", "1", "--out", str(tmp_path / "m"), *options])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "multistyle_check.py: error: " + message.format(tmp=tmp_path))
    assert not (tmp_path / "m").exists()


def test_multistyle_check_refuses_an_out_with_an_earlier_runs_results(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A second run into the same --out rewrote results.json and every model file without a word (and left an
    earlier run's other styles beside the new results); with --reuse it goes on from them, as documented."""
    check = load_script("multistyle_check")
    for earlier in ("results.json", "results.md", "brick.safetensors"):
        out = tmp_path / earlier.replace(".", "_")
        out.mkdir()
        (out / earlier).write_text("an earlier run's")
        with pytest.raises(SystemExit) as stop:
            check.parse_args(["--steps", "1", "--out", str(out)])
        assert stop.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == (
            f"multistyle_check.py: error: --out {str(out)!r} holds an earlier run's {earlier}: pass another --out, "
            "or --reuse to go on with its model files")
        assert check.parse_args(["--steps", "1", "--out", str(out), "--reuse"]).reuse


def test_multistyle_check_reuses_only_files_that_record_this_runs_settings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--reuse keeps a model file whose header records what this run would train; one of other settings
    (here: fewer steps, a narrower network) is retrained, with a line naming the difference, instead of
    its numbers being reported under this run's settings."""
    check = load_script("multistyle_check")
    settings = check.demo_settings(32, None, "random")
    args = check.parse_args(["--steps", "2", "--channels", "8", "--residual-blocks", "1", "--style-size", "32",
                             "--batch-size", "1", "--loss-weights", "random", "--reuse", "--out", str(tmp_path)])
    args.scale_size = settings["scale_size"]
    path = tmp_path / "ihc.safetensors"
    task = check.style_task(["demo:ihc"], args, settings)
    assert check.fit(task, 2, args, path) == path
    assert "trained ihc.safetensors (2 steps)" in capsys.readouterr().err
    written = path.read_bytes()
    assert check.fit(check.style_task(["demo:ihc"], args, settings), 2, args, path) == path  # the same settings
    err = capsys.readouterr().err  # (beside whatever logging an earlier test left attached to stderr)
    assert f"reusing {path}" in err.splitlines() and "trained" not in err and "retraining" not in err
    assert path.read_bytes() == written
    args.steps, args.channels = 3, 4
    assert check.fit(check.style_task(["demo:ihc"], args, settings), 3, args, path) == path
    err = capsys.readouterr().err
    assert (f"retraining {path}: it records other settings (network.channels: 8, this run has 4; steps: 2, this run "
            "has 3)") in err and "trained ihc.safetensors (3 steps)" in err
    assert read_header(path)["steps"] == 3


@pytest.mark.parametrize(("options", "message"), [
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--threads", "-3"], "--threads must be >= 1, got -3"),
    (["--run-dir", "afile"], "cannot write into --run-dir '{tmp}/afile': '{tmp}/afile' is a file, not a folder"),
    (["--run-dir", "done"], "--run-dir '{tmp}/done' holds a finished measurement (sr_quality.csv): pass another "
                            "--run-dir"),
    (["--run-dir", "trained"], "--run-dir '{tmp}/trained' holds a trained model not yet evaluated "
                               "(train/sr_demo.safetensors): resume=auto evaluates it, or pass another --run-dir"),
    (["--run-dir", "cut"], "--run-dir '{tmp}/cut' holds an interrupted run (train/checkpoints/): pass another "
                           "--run-dir, or resume=auto to go on with it"),
    # the steps after training look for the model where the protocol puts it: a trained run then failed
    (["name=foo"], "name=foo: the protocol sets the run's name and folder (the model is sr_demo.safetensors in "
                   "<--run-dir>/train); pass --run-dir instead"),
])
def test_sr_quality_refuses_before_preparing_data(tmp_path: Path, options: list[str], message: str,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A --run-dir that is a file or holds a finished or interrupted run (stylenet-train would refuse it only
    after the data preparation), and --threads under 1: one usage line, before any command runs."""
    (tmp_path / "afile").write_text("x")
    for run_dir in ("done", "trained"):
        (tmp_path / run_dir / "train").mkdir(parents=True)
        (tmp_path / run_dir / "train" / "sr_demo.safetensors").write_bytes(b"trained")
    (tmp_path / "done" / "sr_quality.csv").write_text("measured")
    (tmp_path / "cut" / "train" / "checkpoints").mkdir(parents=True)
    (tmp_path / "cut" / "train" / "checkpoints" / "last.ckpt").write_bytes(b"stopped at step 300")
    quality = load_script("sr_quality")
    monkeypatch.setattr(quality, "run", lambda *args: pytest.fail("a step ran"))
    options = [str(tmp_path / value) if value in ("afile", "done", "trained", "cut") else value for value in options]
    with pytest.raises(SystemExit) as stop:
        quality.main([*options, "trainer.max_steps=5", "resume=never"])  # resume=never continues nothing
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "sr_quality.py: error: " + message.format(tmp=tmp_path)
    assert sorted(path.name for path in (tmp_path / "trained").iterdir()) == ["train"]  # no photos/ prepared


def test_sr_quality_stopped_in_its_evaluation_evaluates_with_resume_auto(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Stopped after training, its own advice (resume=auto) was refused as a finished run: only training all
    2500 steps again gave a verdict. The trained model is evaluated, nothing prepared or trained again."""
    quality = load_script("sr_quality")
    train = tmp_path / "sq" / "train"
    (train / ".hydra").mkdir(parents=True)
    (train / "sr_demo.safetensors").write_bytes(b"trained")
    (train / ".hydra" / "overrides.yaml").write_text("- experiment=sr_demo\n- data=shards\n- data.root=/x/shards\n"
                                                     "- resume=never\n- trainer.max_steps=5\n")
    ran: list[str] = []

    def run(command: list[str], threads: int) -> float:
        ran.append(next(part for part in command if "stylenet" in part))
        (tmp_path / "sq" / "sr_quality.csv").write_text("photo,sr_demo_psnr,bicubic_psnr,sr_demo_ssim,bicubic_ssim\n"
                                                        "mean,27.0,26.0,0.8,0.7\n")
        return 1.0

    monkeypatch.setattr(quality, "run", run)
    monkeypatch.setattr(quality, "held_out_files", lambda run_dir: ["photo.png"])
    monkeypatch.setattr(quality, "trained_steps", lambda run_dir: (5, 5))
    assert quality.main(["--run-dir", str(tmp_path / "sq"), "trainer.max_steps=5", "resume=auto"]) == 0
    assert len(ran) == 1 and "evaluate" in ran[0], ran  # neither stylenet-prepare nor stylenet-train
    out = capsys.readouterr().out
    assert "+1.00 dB PSNR" in out and "training" not in out.replace("is trained", "")
    # other settings than the model was trained with: not dropped without a word
    (tmp_path / "sq" / "sr_quality.csv").unlink()  # (stopped in the evaluation again)
    assert quality.main(["--run-dir", str(tmp_path / "sq"), "trainer.max_steps=9", "resume=auto"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"sr_quality.py: error: {train / 'sr_demo.safetensors'} was trained with other overrides "
        "(trainer.max_steps=5): pass those with resume=auto to evaluate it, or another --run-dir")


def test_sr_quality_passes_sigterm_on_and_gives_no_verdict_on_a_model_trained_short(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM ended the script and left stylenet-train training in the run folder (an orphan); and a run cut
    short by the preset's trainer.max_time (131 of 2500 steps on a busy machine) was judged as the protocol's."""
    import threading

    from stylenet.cli import Terminated, sigterm_as_terminated

    quality = load_script("sr_quality")
    marker = tmp_path / "got"
    child = [sys.executable, "-c", "import pathlib, signal, sys, time\n"
             f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path({str(marker)!r}).write_text('TERM'), "
             "sys.exit(143)))\ntime.sleep(60)"]
    threading.Timer(3, os.kill, (os.getpid(), signal.SIGTERM)).start()
    with sigterm_as_terminated(), pytest.raises(Terminated):
        quality.run(child, threads=1)
    assert marker.read_text() == "TERM"  # passed on, and waited for
    train = tmp_path / "sq" / "train"
    (train / ".hydra").mkdir(parents=True)
    (train / ".hydra" / "config.yaml").write_text("trainer:\n  max_steps: 2500\n")
    (train / ".hydra" / "overrides.yaml").write_text("- experiment=sr_demo\n- data=shards\n- data.root=/x\n"
                                                     "- resume=never\n")
    save_model(train / "sr_demo.safetensors", TransformerNet(channels=8, residual_blocks=1), {"task": "style",
                                                                                               "steps": 131})
    monkeypatch.setattr(quality, "run", lambda *args: 0.0)
    with pytest.raises(quality.StepFailed, match=r"^training stopped at step 131 of trainer.max_steps=2500 "):
        quality.measure(SimpleNamespace(run_dir=str(tmp_path / "sq"), threads=1, overrides=[]))


def test_sr_quality_knows_which_overrides_continue_a_run() -> None:
    resumes = load_script("sr_quality").resumes
    assert all(resumes(o) for o in ("resume=auto", "+resume=must", "resume='auto'", "ckpt_path=last", "ckpt_path=x"))
    assert not any(resumes(o) for o in ("resume=never", "ckpt_path=null", "ckpt_path=", "trainer.max_steps=5"))


def test_sr_quality_help_names_the_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_script("sr_quality").main(["--help"])
    assert "stylenet-train overrides" in capsys.readouterr().out


@pytest.mark.parametrize("options", [["psnr", "--size", "0"], ["psnr", "--size", "64", "--tile", "0"],
                                     ["large", "--large", "0"]])
def test_tile_check_usage_errors(options: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        load_script("tile_check").main(options)
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "tile_check.py: error: --size and --large must be >= 1 px and --tile >= 64 px")


def test_tile_check_runs_every_check_by_default_and_refuses_an_unknown_one(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """README's `python scripts/tile_check.py` failed at once, every time: argparse checked the default list
    against choices. The export check's extra is looked for before minutes of the other checks."""
    tile_check = load_script("tile_check")
    ran: list[str] = []
    for check in ("psnr", "speed", "export", "large"):
        monkeypatch.setattr(tile_check, f"check_{check}", lambda *args, check=check: ran.append(check))
    assert tile_check.main([]) == 0 and ran == ["psnr", "speed", "export", "large"]
    with pytest.raises(SystemExit) as stop:
        tile_check.main(["seams"])
    assert stop.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == (
        "tile_check.py: error: no check 'seams' (choose from psnr, speed, export, large)")
    monkeypatch.setattr(tile_check.importlib.util, "find_spec", lambda name: None)  # no export extra
    with pytest.raises(SystemExit) as stop:
        tile_check.main(["psnr", "export"])
    assert stop.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == (
        "tile_check.py: error: the export check needs onnx and onnxscript: pip install -e '.[export]'")


def test_tile_check_large_fails_when_stylize_fails(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """It printed "exit 1, 2 s, peak RSS 0.98 GiB" and exited 0 when stylize refused the photo: figures of a
    failure, for README's row."""
    import subprocess

    tile_check = load_script("tile_check")
    monkeypatch.setattr(tile_check, "paper_model", lambda folder: folder / "random.safetensors")
    monkeypatch.setattr(tile_check.subprocess, "run", lambda command, **kwargs: subprocess.CompletedProcess(
        command, 1, "", "stylenet-stylize: error: cannot read image 'large_16.jpg': too many pixels\n"))
    assert tile_check.main(["large", "--large", "16", "--tile", "64"]) == 1
    out, err = capsys.readouterr()
    assert err.strip() == ("tile_check.py: error: large: stylize of 16x16 failed (exit 1): stylenet-stylize: error: "
                           "cannot read image 'large_16.jpg': too many pixels") and "peak RSS" not in out


def test_tile_check_measures_seams_in_fp32_and_says_so(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Where auto would pick bf16 (its rounding alone caps the PSNR near 47 dB), the seam check still
    runs in fp32, and prints the precision it used."""
    tile_check = load_script("tile_check")
    monkeypatch.setattr("stylenet.inference.model.inference_precision", lambda device: "bf16")
    assert tile_check.main(["psnr", "--size", "96", "--tile", "64"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("whole 96x96 in fp32: ") and "overlap 32: PSNR vs whole" in printed
    assert "overlap 64" not in printed  # more than half a tile: the tiler would measure overlap 32 again
    # the thumbnails of 48 and 24 px are a tile's 64 px: one row, named by the side used (were "48", "24" twice)
    assert [line.split(" from a ")[1].split(":")[0] for line in printed.splitlines() if " thumbnail:" in line] == [
        "64 px thumbnail"]
