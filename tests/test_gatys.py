"""The Gatys optimiser (stylenet.gatys): it optimises, on the training objective, and fails cleanly."""

from __future__ import annotations

import math
import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stylenet import StylenetError
from stylenet.cli import Terminated
from stylenet.cli.gatys import run
from stylenet.cli.train import config_dir
from stylenet.gatys import (
    GREY,
    Progress,
    check_memory,
    estimate_memory,
    match_luminance,
    optimize,
    optimize_image,
    read_image,
    resize_to,
    scale_shapes,
    style_at,
    with_content_chroma,
)
from stylenet.image import load_rgb, luma
from stylenet.losses import PerceptualLoss, gram_matrix
from stylenet.tasks import StyleTransferTask, load_style_image
from tests.conftest import make_photo

ROOT = Path(__file__).resolve().parents[1]
# Every test here runs tiny convolutions: one thread each (tests/conftest.py: one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def smooth_image(size: int, seed: int) -> torch.Tensor:
    """A (3, size, size) image with photo-like smooth structure, values in [0, 1]."""
    noise = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.avg_pool2d(noise, 5, 1, 2)[0]


# factors measured here: ~50x (L-BFGS) and ~20x (Adam)
@pytest.mark.parametrize(("optimizer", "iterations", "factor"), [("lbfgs", 10, 30), ("adam", 30, 10)])
def test_optimiser_lowers_the_objective_by_a_large_factor(optimizer: str, iterations: int,
                                                          factor: float) -> None:
    loss = PerceptualLoss(weights="random", style_weight=1e6, tv_weight=40.0)  # style-dominated, as random VGG needs
    seen: list[Progress] = []
    result = optimize_image(smooth_image(32, 0), [torch.rand(3, 48, 40)], loss, iterations=iterations,
                            optimizer=optimizer, init="noise", callback=seen.append)
    assert result.history[-1] * factor < result.history[0]
    assert result.terms["total"] == result.history[-1] == seen[-1].terms["total"]
    assert result.iterations == iterations and [p.iteration for p in seen] == list(range(1, iterations + 1))
    assert result.image.shape == (3, 32, 32) and result.image.min() >= 0 and result.image.max() <= 1
    # one evaluation per Adam step; L-BFGS's line search rarely needs a second (plus the initial one)
    most = iterations + 1 if optimizer == "adam" else 2 * iterations
    assert iterations < result.evaluations <= most


def test_gatys_objective_equals_the_training_objective(style_image: Path) -> None:
    loss_config = {"weights": "random", "style_weight": 30.0, "tv_weight": 5.0}
    task = StyleTransferTask(model={"channels": 8, "residual_blocks": 1}, loss=loss_config,
                             style={"image": str(style_image), "size": 64})
    content = smooth_image(32, 1)
    style, _ = load_style_image(str(style_image), 64)  # exactly as training loads it
    result = optimize_image(content, [style], PerceptualLoss(**loss_config), iterations=3)
    training = task.loss(result.image.unsqueeze(0), content.unsqueeze(0))  # as in training_step
    assert float(training["total"]) == result.terms["total"]
    assert {name: float(value) for name, value in training.items()} == result.terms


def test_vgg19_classic_layers_resolve(tmp_path: Path) -> None:
    config = OmegaConf.to_container(compose_gatys(tmp_path, "loss=gatys_vgg19").loss)  # as the CLI sees it
    assert config["content_layers"] == ["relu4_2"] and config["weights"] == "random"
    loss = PerceptualLoss(**config)
    assert loss.vgg.arch == "vgg19" and loss.vgg.names[-1] == "relu5_1"
    assert loss.smallest_side == 16  # four poolings before relu5_1
    result = optimize_image(smooth_image(32, 2), [smooth_image(32, 3)], loss, iterations=1)
    assert {"content", "style/relu1_1", "style/relu2_1", "style/relu3_1", "style/relu4_1",
            "style/relu5_1"} <= set(result.terms)


def test_non_finite_objective_stops_and_keeps_the_last_finite_image() -> None:
    loss = PerceptualLoss(weights="random")
    loss.set_style([torch.rand(3, 32, 32)])
    images: dict[int, torch.Tensor] = {}

    def poison(progress: Progress) -> None:
        images[progress.iteration] = progress.image.clone()
        if progress.iteration == 2:
            loss.term_weights["style"] = math.nan

    result = optimize(smooth_image(32, 4), loss, iterations=5, init="noise", callback=poison)
    assert result.iterations == 2 and len(result.history) == 3
    assert "non-finite" in result.stopped and "during iteration 3" in result.stopped
    assert "kept the image of iteration 2" in result.stopped
    assert torch.equal(result.image, images[2]) and math.isfinite(result.terms["total"])


def test_lbfgs_stuck_on_a_flat_start_stops_and_says_so_but_a_minimum_is_no_stall() -> None:
    """A white photo under the offline loss: every line search returned no step (max-pooling's ties), and the
    run wrote the photo unchanged as a success ("objective 3921 -> 3921", exit 0)."""
    offline = PerceptualLoss(weights="calibrated", style_layers=["relu1_1", "relu1_2", "relu2_1", "relu2_2", "relu3_1"],
                             normalize=True, style_weight=100.0)
    white = torch.ones(3, 64, 64)
    stuck = optimize_image(white, [read_image("demo:ihc", "styles")], offline, iterations=3)
    assert stuck.iterations == 0 and stuck.stopped.startswith("L-BFGS made no progress in iteration 1")
    assert torch.equal(stuck.image, white)
    moved = optimize_image(white, [read_image("demo:ihc", "styles")], offline, iterations=1, optimizer="adam")
    assert moved.stopped is None and moved.history[-1] < moved.history[0]
    content_only = PerceptualLoss(weights="random", style_weight=0.0, tv_weight=0.0)  # the start is the minimum
    result = optimize_image(smooth_image(32, 1), [torch.rand(3, 32, 32)], content_only, iterations=2)
    assert result.stopped is None and result.history == [0.0, 0.0, 0.0]
    # a run that has converged (its line search finds nothing lower) is no stall: it was called one at iteration 39
    converged = PerceptualLoss(weights="calibrated", style_layers=["relu1_1", "relu1_2", "relu2_1"],
                               content_layers=["relu1_2"], normalize=True, style_weight=0.0, tv_weight=1e-3)
    ramp = torch.linspace(0, 1, 32)
    photo = torch.stack([ramp[:, None].expand(32, 32), ramp[None, :].expand(32, 32), ramp[:, None] * ramp[None, :]])
    result = optimize_image(photo, [torch.rand(3, 32, 32)], converged, iterations=60, init="noise")
    assert result.stopped is None and result.iterations == 60 and result.history[-1] < 1e-4 * result.history[0]


def test_non_finite_initial_objective_keeps_the_initial_image() -> None:
    loss = PerceptualLoss(weights="random")
    loss.term_weights["content"] = math.inf  # refused as a setting: set here to make the objective infinite
    loss.set_style([torch.rand(3, 32, 32)])
    content = smooth_image(32, 5)
    result = optimize(content, loss, iterations=3)
    assert result.iterations == 0 and "initial image" in result.stopped
    assert torch.equal(result.image, content)


def test_coarse_to_fine_and_init_style() -> None:
    assert scale_shapes(64, 48, 3) == [(16, 12), (32, 24), (64, 48)]
    loss = PerceptualLoss(weights="random")
    seen: list[Progress] = []
    content, style = smooth_image(32, 6), smooth_image(40, 7)
    result = optimize_image(content, [style], loss, iterations=2, scales=2, init="style", callback=seen.append)
    assert [(p.iteration, p.scale, p.total, p.image.shape[-1]) for p in seen] == [
        (1, 0, 4, 16), (2, 0, 4, 16), (3, 1, 4, 32), (4, 1, 4, 32)]
    assert result.iterations == 4 and len(result.history) == 6 and result.image.shape == (3, 32, 32)

    def objective(image: torch.Tensor, size: int, style_side: int) -> float:
        loss.set_style([resize_to(style, style_side, style_side)])
        return float(loss(resize_to(image, size, size)[None], resize_to(content, size, size)[None])["total"])

    # the first scale starts from the style picture stretched to it, the second from the first one's result;
    # each against the style shrunk as the image is (the full-size style's Grams had patterns twice as large)
    assert result.history[0] == pytest.approx(objective(style, 16, 20), rel=1e-4)
    assert result.history[3] == pytest.approx(objective(seen[1].image, 32, 40), rel=1e-4)
    # never below the loss network's smallest side (8 px here): a 40 px style at a 1/8 scale is 8 px, not 5
    assert [tuple(style_at(style, shrink, 8).shape) for shrink in (1, 4, 8)] == [(3, 40, 40), (3, 10, 10), (3, 8, 8)]


def test_preserve_color_keeps_the_content_chroma() -> None:
    content = 0.25 + 0.5 * smooth_image(32, 8)
    image = 0.25 + 0.5 * smooth_image(32, 9)
    recoloured = with_content_chroma(image, content)
    torch.testing.assert_close(luma(recoloured), luma(image))  # the stylised luminance,
    torch.testing.assert_close(recoloured - luma(recoloured), content - luma(content))  # the chroma
    result = optimize_image(content, [torch.rand(3, 32, 32)], PerceptualLoss(weights="random"), iterations=2,
                            preserve_color=True)
    chroma = result.image - luma(result.image)
    inside = ((result.image > 0) & (result.image < 1)).all(dim=0)  # where clamping did not act
    torch.testing.assert_close(chroma[:, inside], (content - luma(content))[:, inside])


@pytest.mark.parametrize("init", ["content", "noise"])
def test_preserve_color_optimises_a_grey_image_and_reports_its_objective(init: str) -> None:
    """Luminance-only transfer optimises the luminance: the image stays grey (three free channels drifted
    apart, from colour noise too), and the objective reported is that of the grey image whose luminance is
    kept (it was a quarter of it)."""
    content, style = 0.2 + 0.6 * smooth_image(32, 8), smooth_image(32, 9)
    loss = PerceptualLoss(weights="random")
    seen: list[Progress] = []
    result = optimize(GREY.apply(content, None), (loss.set_style([match_luminance(style, content)]), loss)[1],
                      iterations=5, init=init, grey=True, callback=seen.append)
    assert torch.equal(result.image[0], result.image[1]) and torch.equal(result.image[1], result.image[2])
    assert all(torch.equal(progress.image[0], progress.image[2]) for progress in seen)
    grey_objective = float(loss(result.image[None], GREY.apply(content, None)[None])["total"])
    assert result.terms["total"] == pytest.approx(grey_objective, rel=1e-5)
    assert result.history[-1] < result.history[0]
    final = optimize_image(content, [style], loss, iterations=5, init=init, preserve_color=True)
    assert float(loss(luma(final.image).expand(3, -1, -1)[None], GREY.apply(content, None)[None])["total"]) == \
        pytest.approx(final.terms["total"], rel=1e-3)  # the recoloured image's luminance: what was optimised


def test_a_run_stopped_at_a_coarse_scale_and_one_of_no_iterations_give_a_full_size_image() -> None:
    """A non-finite objective at a coarse scale returned the coarse image (written at its size); no
    iterations with a pyramid returned the photo shrunk and enlarged: blurred, the objective up."""
    content, style = smooth_image(32, 6), smooth_image(32, 7)
    loss = PerceptualLoss(weights="random")

    def poison(progress: Progress) -> None:
        loss.term_weights["style"] = math.nan

    stopped = optimize_image(content, [style], loss, iterations=3, scales=2, callback=poison)
    assert "scale 1 of 2, 16x16 px" in stopped.stopped and stopped.image.shape == (3, 32, 32)
    loss.term_weights["style"] = 1.0
    unchanged = optimize_image(content, [style], loss, iterations=0, scales=3)
    assert torch.equal(unchanged.image, content) and unchanged.iterations == 0


def test_preserve_color_optimises_against_the_style_made_grey_at_the_photo_s_brightness() -> None:
    """Gatys et al. 2016, "Preserving Color", eq. 1: the style's luminance alone, its mean and standard
    deviation set to the photo's, gives the Grams (the recolouring at the end would hide a colour style)."""
    content, style = 0.4 + 0.2 * smooth_image(32, 8), 0.3 + 0.4 * smooth_image(32, 9)
    matched = match_luminance(style, content)
    assert torch.equal(matched[0], matched[1]) and torch.equal(matched[1], matched[2])
    torch.testing.assert_close(matched[:1], (luma(style) - luma(style).mean()) / luma(style).std()
                               * luma(content).std() + luma(content).mean())  # no clamping at these values
    loss = PerceptualLoss(weights="random", style_layers=["relu1_2", "relu2_2"])
    optimize_image(content, [style], loss, iterations=1, preserve_color=True)
    for layer in ("relu1_2", "relu2_2"):
        torch.testing.assert_close(loss.target_gram(layer), gram_matrix(loss.vgg(matched[None], [layer])[layer]))


def test_bad_settings_fail_with_one_line_errors() -> None:
    loss = PerceptualLoss(weights="random")
    content, styles = smooth_image(32, 10), [torch.rand(3, 32, 32)]
    with pytest.raises(StylenetError, match="at least 8 px"):
        optimize_image(content[:, :4, :4], styles, loss, iterations=1)
    with pytest.raises(StylenetError, match="coarsest image is 4x4 px.*at least 8 px"):
        optimize_image(content, styles, loss, iterations=1, scales=4)
    with pytest.raises(StylenetError, match="optimizer must be one of lbfgs, adam"):
        optimize_image(content, styles, loss, iterations=1, optimizer="sgd")
    with pytest.raises(StylenetError, match="init must be one of"):
        optimize_image(content, styles, loss, iterations=1, init="zeros")
    with pytest.raises(StylenetError, match="style weights"):
        optimize_image(content, styles, loss, iterations=1, style_weights=[0.5, 0.5])


def test_memory_estimate_grows_with_size_and_history_and_is_checked_up_front() -> None:
    loss = PerceptualLoss(weights="random")
    small, large = estimate_memory(loss, 256, 256), estimate_memory(loss, 512, 512)
    assert 3.5 < large / small < 4.5
    assert estimate_memory(loss, 256, 256, "adam") < small
    with pytest.raises(StylenetError, match=r"100000x100000 image needs about [\d.]+ GiB on cpu.*free") as e:
        check_memory(loss, 100_000, 100_000, "lbfgs", 100, torch.device("cpu"))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------- the CLI


def run_gatys_cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``stylenet-gatys`` as users run it, on one thread (the test images are tiny)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stylenet.cli.gatys", *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def compose_gatys(tmp_path: Path, *overrides: str) -> DictConfig:
    """The app's config, as Hydra composes it for a run in ``tmp_path`` (for in-process runs)."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        defaults = [f"hydra.run.dir={tmp_path}", "loss.weights=random", "size=32", "iterations=2",
                    "progress=false"]
        cfg = compose("gatys", overrides=[*defaults, *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_cli_end_to_end_with_blended_styles(tmp_path: Path, style_image: Path) -> None:
    content, second_style = make_photo(tmp_path / "content.png"), make_photo(tmp_path / "s2.png", seed=5)
    run_dir = tmp_path / "run"
    result = run_gatys_cli(f"content={content}", f"styles=[{style_image},{second_style}]",
                           "style_weights=[0.7,0.3]", "size=32", "iterations=4", "loss.weights=random",
                           "save_every=2", "image_every=2", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert load_rgb(run_dir / "gatys.png").shape == (3, 26, 32)  # 80x64 content, long side 32
    assert sorted(p.name for p in (run_dir / "steps").iterdir()) == ["iter_00002.png", "iter_00004.png"]
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"loss/total", "loss/content", "loss/style", "loss/style/relu4_3", "loss/tv"} <= scalars
    assert [event.step for event in events.Scalars("loss/total")] == [1, 2, 3, 4]
    assert {"image", "final", "content", "style/0", "style/1"} <= set(events.Tags()["images"])
    assert "loss=" in result.stderr  # the progress bar shows the objective
    assert "4 lbfgs iterations" in result.stdout + result.stderr
    assert not (tmp_path / "outputs").exists()


def test_cli_ctrl_c_is_one_line_and_exit_130(tmp_path: Path, style_image: Path, capsys: pytest.CaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from stylenet.cli import gatys as gatys_cli

    def interrupted(*args: object, **kwargs: object) -> int:
        raise KeyboardInterrupt

    run_dir = tmp_path / "run"  # a folder of an earlier run: its Hydra record is put back (EarlierRecord)
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- earlier\n")
    monkeypatch.setattr(gatys_cli, "run", interrupted)
    monkeypatch.setattr(sys, "argv", ["stylenet-gatys", f"content={make_photo(tmp_path / 'c.png')}",
                                      f"styles={style_image}", f"hydra.run.dir={run_dir}"])
    with pytest.raises(SystemExit) as stopped:
        gatys_cli.main()
    assert stopped.value.code == 130
    assert capsys.readouterr().err.endswith("stylenet-gatys: interrupted: the run did not finish\n")
    assert [path.name for path in (run_dir / ".hydra").iterdir()] == ["overrides.yaml"]
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == "- earlier\n"


@pytest.mark.parametrize("stop", [KeyboardInterrupt, Terminated])
def test_cli_stopped_mid_run_keeps_the_last_iteration_and_goes_on_from_it(
        tmp_path: Path, style_image: Path, stop: type[BaseException], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C or SIGTERM after three iterations: the third one's image is written, the run says how to
    go on, and ``init=<it>`` starts a new run from exactly that image (with output= named, into another
    file: an init image is never overwritten)."""
    from stylenet.cli import gatys as gatys_cli

    content, seen = make_photo(tmp_path / "content.png"), []

    def stopping_reporter(*args: object) -> Callable[[Progress], None]:
        def on_iteration(progress: Progress) -> None:
            seen.append(progress.image.clone())
            if progress.iteration == 3:  # as the fourth iteration starts
                raise stop
        return on_iteration

    monkeypatch.setattr(gatys_cli, "progress_reporter", stopping_reporter)
    named = stop is Terminated  # SIGTERM's run names its output, Ctrl-C's writes into its run folder
    output = tmp_path / "res.png" if named else tmp_path / "a" / "gatys.png"
    cfg = compose_gatys(tmp_path / "a", f"content={content}", f"styles={style_image}", "iterations=5",
                        *([f"output={output}"] if named else []))
    with pytest.raises(gatys_cli.StoppedRun) as stopped:
        run(cfg, tmp_path / "a")
    how, status = ("terminated", 143) if stop is Terminated else ("interrupted", 130)
    assert stopped.value.status == status
    elsewhere = " and another output=, not res.png" if named else ""
    assert capsys.readouterr().err.strip() == (f"stylenet-gatys: {how}: after iteration 3 of 5; wrote its image to "
                                               f"{output} (a new run goes on from it with init={output}{elsewhere})")
    assert len(seen) == 3 and torch.equal(load_rgb(output), (seen[2] * 255).round() / 255)
    monkeypatch.undo()
    result = tmp_path / "b" / "gatys.png"
    # no step: the result is the image it starts from
    again = compose_gatys(tmp_path / "b", f"content={content}", f"styles={style_image}", f"init={output}",
                          "iterations=0", *([f"output={result}"] if named else []))
    assert run(again, tmp_path / "b") == 0
    assert torch.equal(load_rgb(result), load_rgb(output))


def test_cli_stopped_before_the_first_iteration_writes_nothing_and_its_folder_takes_a_run(
        tmp_path: Path, style_image: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Its "nothing written" is true: no TensorBoard events either, which used to make the folder refuse the
    run started again in it ('already holds a run (tensorboard/)')."""
    from stylenet.cli import gatys as gatys_cli

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    content, run_dir = make_photo(tmp_path / "content.png"), tmp_path / "run"
    cfg = compose_gatys(run_dir, f"content={content}", f"styles={style_image}")
    monkeypatch.setattr("stylenet.gatys.optimize_image", interrupted)
    with pytest.raises(gatys_cli.StoppedRun) as stopped:
        run(cfg, run_dir)
    assert stopped.value.status == 130
    assert capsys.readouterr().err.strip().endswith(
        "stylenet-gatys: interrupted: before the first iteration ended; nothing written")
    assert [path for path in run_dir.rglob("*") if path.is_file()] == []
    monkeypatch.undo()
    assert run(compose_gatys(run_dir, f"content={content}", f"styles={style_image}"), run_dir) == 0
    assert (run_dir / "gatys.png").is_file() and any((run_dir / "tensorboard").iterdir())


def test_cli_stopped_at_a_coarse_scale_keeps_the_contents_colours_at_full_size(
        tmp_path: Path, style_image: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``scales=2 preserve_color=true`` stopped in the half-size scale: the image is written at the
    result's size, with the content's chroma at that size (not the half-size chroma upsampled)."""
    from stylenet.cli import gatys as gatys_cli

    def stopping_reporter(*args: object) -> Callable[[Progress], None]:
        def on_iteration(progress: Progress) -> None:
            raise KeyboardInterrupt  # after the first iteration, of the coarse scale
        return on_iteration

    monkeypatch.setattr(gatys_cli, "progress_reporter", stopping_reporter)
    content = make_photo(tmp_path / "content.png", size=(64, 64))
    cfg = compose_gatys(tmp_path, f"content={content}", f"styles={style_image}", "scales=2", "preserve_color=true",
                        "iterations=3")
    with pytest.raises(gatys_cli.StoppedRun):
        run(cfg, tmp_path)
    err = capsys.readouterr().err
    assert "after iteration 1 of 6" in err and f"with init={tmp_path / 'gatys.png'} scales=1)" in err
    written, photo = load_rgb(tmp_path / "gatys.png"), load_rgb(content)
    photo = torch.nn.functional.interpolate(photo[None], size=(32, 32), mode="bilinear", antialias=True)[0]
    inside = ((written > 0.02) & (written < 0.98)).all(dim=0)  # where neither clamping nor rounding's ends act
    chroma, expected = (written - luma(written))[:, inside], (photo - luma(photo))[:, inside]
    assert (chroma - expected).abs().max() < 2.5 / 255  # 8-bit rounding of the file, in three channels


def test_cli_one_pixel_content_optimises(tmp_path: Path, style_image: Path) -> None:
    """A 1 x 1 photo, stretched to the size, is a valid start (its decoded strides once broke L-BFGS)."""
    one = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (90, 120, 200)).save(one)
    assert run(compose_gatys(tmp_path / "run", f"content={one}", f"styles={style_image}"), tmp_path / "run") == 0
    assert load_rgb(tmp_path / "run" / "gatys.png").shape == (3, 32, 32)


def test_cli_help_shows_its_own_settings_not_the_training_groups(tmp_path: Path) -> None:
    """The config folder is stylenet-train's too: Hydra's stock page would offer experiment=, model=, ...,
    which stylenet-gatys cannot take."""
    result = run_gatys_cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("stylenet-gatys: optimise one image against the perceptual objective")
    assert "loss=gatys_vgg19" in result.stdout and "\ninit: content\n" in result.stdout
    assert "experiment:" not in result.stdout and "trainer:" not in result.stdout and "powered by" not in result.stdout


def test_cli_bad_input_is_one_line_naming_the_file(tmp_path: Path, style_image: Path) -> None:
    result = run_gatys_cli("content=/no/such/photo.jpg", f"styles={style_image}", "loss.weights=random",
                           f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("stylenet-gatys: error: content: cannot read image "
                                     "'/no/such/photo.jpg': no such file")


def test_cli_refuses_an_added_setting_that_nothing_reads(tmp_path: Path, style_image: Path) -> None:
    """``+iteratons=5`` ran the default iterations without a word."""
    result = run_gatys_cli("content=demo:astronaut", f"styles={style_image}", "loss.weights=random", "+iteratons=5",
                           f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == ("stylenet-gatys: error: +iteratons: no setting iteratons exists to add (a typo? "
                                     "stylenet-gatys --help lists every setting)")
    # stylenet-train's groups and style settings (Hydra itself suggests +trainer=gpu for trainer=gpu) were taken
    # and read by nothing
    for added in ("+trainer=gpu", "+style.size=1024"):
        result = run_gatys_cli("content=demo:astronaut", f"styles={style_image}", "loss.weights=random", added,
                               f"hydra.run.dir={tmp_path}", cwd=tmp_path)
        key = added.lstrip("+").partition("=")[0]
        assert result.returncode == 2 and result.stderr.strip() == (
            f"stylenet-gatys: error: +{key}: no setting {key} exists to add (a typo? stylenet-gatys --help lists "
            "every setting)"), result.stderr


def test_cli_sweep_runs_every_job_when_one_fails(tmp_path: Path, style_image: Path) -> None:
    """stylenet-gatys -m: a bad job is one line, the next job still runs, exit 2 at the end."""
    content = make_photo(tmp_path / "content.png")
    result = run_gatys_cli("-m", f"content=/no/such/photo.jpg,{content}", f"styles={style_image}", "size=32",
                           "iterations=2", "loss.weights=random", "progress=false",
                           f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("stylenet-gatys: error")]
    assert errors == ["stylenet-gatys: error: content: cannot read image '/no/such/photo.jpg': no such file",
                      "stylenet-gatys: error: 1 sweep job(s) failed: #0"]
    assert load_rgb(tmp_path / "sweep" / "1" / "gatys.png").shape == (3, 26, 32)


def test_a_sweep_refuses_a_job_whose_output_an_earlier_job_wrote(tmp_path: Path, style_image: Path) -> None:
    """output= the same in every job: each job replaced the one before, silently. A job that would is refused
    (the earlier result kept, the other jobs run); a sweep of one job, or outputs Hydra resolves per job, run."""
    content = make_photo(tmp_path / "content.png")
    common = ["-m", f"content={content}", "size=32", "iterations=1", "loss.weights=random", "progress=false"]
    result = run_gatys_cli(*common, f"styles={style_image},{content}", "output=result.png",
                           f"hydra.sweep.dir={tmp_path / 'a'}", cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("stylenet-gatys: error")]
    assert result.returncode == 2 and errors == [
        "stylenet-gatys: error: output=result.png is job #0's result in this sweep: give each job its own (sweep "
        "output= too, or put ${hydra:job.num} in it), or leave it out",
        "stylenet-gatys: error: 1 sweep job(s) failed: #1"], result.stderr[-2000:]
    first = (tmp_path / "result.png").read_bytes()
    result = run_gatys_cli(*common, f"styles={style_image}", "output=one.png", f"hydra.sweep.dir={tmp_path / 'b'}",
                           cwd=tmp_path)
    assert result.returncode == 0 and (tmp_path / "one.png").is_file(), result.stderr[-2000:]
    result = run_gatys_cli(*common, f"styles={style_image},{content}", "output=job${hydra:job.num}.png",
                           f"hydra.sweep.dir={tmp_path / 'c'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [load_rgb(tmp_path / f"job{n}.png").shape for n in (0, 1)] == [(3, 26, 32)] * 2
    assert (tmp_path / "result.png").read_bytes() == first


@pytest.mark.parametrize(("override", "message"), [
    ("styles=/no/such/style.png", "style: cannot read image '/no/such/style.png': no such file"),
    ("size=100000", r"a 100000x80000 image needs about [\d.]+ GiB on cpu"),
    ("optimizer=sgd", "optimizer must be one of lbfgs, adam"),
    ("init=zeros", r"init must be one of content, noise, style or an image file \(a path or demo:<name>\), "
                   "got 'zeros'"),
    ("scales=0", "scales must be >= 1"),
    ("size=abc", "size must be a whole number of pixels >= 1 or null, got 'abc'"),
    ("iterations=ten", "iterations must be a whole number, got 'ten'"),
    ("scales=1.5", "scales must be a whole number, got 1.5"),
    ("lr=fast", "lr must be a number or null, got 'fast'"),
    ("lr=inf", "lr must be a finite number > 0 .*got inf"),
    ("content=demo:", "no bundled demo image ''; choose one of astronaut, brick, .*ihc, "),  # every picture
    ("content=demo:**", r"no bundled demo image '\*\*'"),
    ("style_weights=0.5", r"style_weights must be a list of numbers, one per style image .*got 0.5"),
    ("seed=-5", r"seed must be a whole number from 0 to 2\*\*32 - 1, got -5"),
    ("save_every=-1", r"save_every must be a whole number >= 0 \(0: never\), got -1"),
    ("preserve_color=maybe", "preserve_color must be true or false, got 'maybe'"),
    ("style_size=3", "the style image is 3x2 px, but the loss network needs at least 8 px a side"),
    ("output=123", r"^output must be a file name or null \(the run folder's <name>.png\), got 123$"),
    ("device=null", r"^device must be auto, cpu, cuda or cuda:N, got None$"),
    ("style_size=100000", r"image needs about [\d.]+ GiB on cpu \(VGG activations\), .*use a smaller style_size$"),
    ("size=4", r"the image is 4x3 px, but the loss network needs at least 8 px a side; use a larger size"),
    ("scales=300000", r"the coarsest image is 1x1 px, .* use a larger size or fewer scales"),  # hung, building every
    # the advice named --max-pixels and data.max_pixels, which stylenet-gatys has not
    ("max_pixels=1000", r"^content: cannot read image .* pixels exceeds the limit of 1000 .*stylenet-gatys\)$"),
    ("max_pixels=0", r"^max_pixels must be a whole number >= 1, got 0$"),
    ("max_pixels=null", r"^max_pixels must be a whole number >= 1, got None$"),
    ("output=/tmp/result.gif", "not a writable format"),
    ("output=/tmp", "cannot write output '/tmp': it is a folder"),
    ("loss.style_layers=[relu9_1]", "unknown VGG layer"),
    ("loss.style_weight=abc", "loss.style_weight must be a number >= 0, got 'abc'"),
    ("loss.style_layer_weights=[a,b,c,d]", r"loss.style_layer_weights\[0\] \(relu1_2\) must be a number >= 0, got 'a'"),
    ("style_weights=[-1]", r"style weights \[-1.0\] must be finite, >= 0, not all zero, one per style image"),
    ("styles=5", r"styles must be an image or a list of images: .*; got 5"),
    ("styles=null", r"styles must be an image or a list of images: .*; got None"),
    ("init=5", r"init must be one of content, noise, style or an image file \(.*\), got 5"),
    ("loss.seed=abc", r"loss.seed must be a whole number from 0 to 2\*\*32 - 1, got 'abc'"),
    ("loss.seed=-1", r"loss.seed must be a whole number from 0 to 2\*\*32 - 1, got -1"),
    ("loss=pixel", r"^the loss has no style term to optimise: choose loss=offline, perceptual or gatys_vgg19"),
    ("loss.style_weight=0", r"^the loss has no style term to optimise"),
    ("loss.style_layer_weights=[0,0,0,0]", r"^the loss has no style term to optimise"),  # TV alone ran
    ("name=../../victim", r"^name must be letters, digits, '\.', '\+', '-' or '_' \(it names the run's folder and its "
                          r"picture\), got '\.\./\.\./victim'$"),  # it wrote (over) a picture outside the run
])
def test_cli_bad_settings_fail_before_optimising(tmp_path: Path, style_image: Path, override: str,
                                                 message: str) -> None:
    content = make_photo(tmp_path / "content.png")
    cfg = compose_gatys(tmp_path, f"content={content}", f"styles={style_image}", override)
    with pytest.raises(StylenetError, match=message):
        run(cfg, tmp_path)
    assert not (tmp_path / "tensorboard").exists()


def test_max_pixels_applies_to_every_picture_stylenet_gatys_reads(tmp_path: Path) -> None:
    small, big = make_photo(tmp_path / "small.png", size=(40, 40)), make_photo(tmp_path / "big.png", size=(60, 60))
    for pictures, what in (([f"styles={big}"], "style"), ([f"styles={small}", f"init={big}"], "init")):
        cfg = compose_gatys(tmp_path, f"content={small}", *pictures, "max_pixels=2000")
        with pytest.raises(StylenetError, match=f"^{what}: cannot read image .*60x60 = 3600 pixels exceeds the limit "
                                                "of 2000"):
            run(cfg, tmp_path)


def test_cli_refuses_to_overwrite_its_input(tmp_path: Path, style_image: Path) -> None:
    content = make_photo(tmp_path / "content.png")
    before = content.read_bytes()
    start = make_photo(tmp_path / "start.png", seed=3)  # an earlier run's result, to go on from
    for key, path in (("content", content), ("styles", style_image), ("init", start)):
        cfg = compose_gatys(tmp_path, f"content={content}", f"styles={style_image}", f"output={path}",
                            f"init={start}")
        with pytest.raises(StylenetError, match=f"output '{path}' is the {key} image: refusing to overwrite"):
            run(cfg, tmp_path)
    assert content.read_bytes() == before


def test_cli_refuses_to_overwrite_a_bundled_demo_input_or_an_earlier_run(
        tmp_path: Path, style_image: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``demo:astronaut`` is a file too (scikit-image's, here a copy of it): a later demo run would
    hold it out. A run folder that already holds a run would mix both runs' curves and snapshots."""
    bundled = tmp_path / "skimage_data"
    bundled.mkdir()
    make_photo(bundled / "astronaut.png")
    monkeypatch.setattr("stylenet.image.demo.demo_root", lambda: bundled)
    before = (bundled / "astronaut.png").read_bytes()
    cfg = compose_gatys(tmp_path / "a", "content=demo:astronaut", f"styles={style_image}",
                        f"output={bundled / 'astronaut.png'}")
    with pytest.raises(StylenetError, match="is the content image: refusing to overwrite an input"):
        run(cfg, tmp_path / "a")
    assert (bundled / "astronaut.png").read_bytes() == before
    content = make_photo(tmp_path / "content.png")
    assert run(compose_gatys(tmp_path / "b", f"content={content}", f"styles={style_image}"), tmp_path / "b") == 0
    result = (tmp_path / "b" / "gatys.png").read_bytes()
    with pytest.raises(StylenetError, match=r"'.*b' already holds a run \(tensorboard/\): give another hydra.run.dir"):
        run(compose_gatys(tmp_path / "b", f"content={content}", f"styles={style_image}", "size=24"), tmp_path / "b")
    assert (tmp_path / "b" / "gatys.png").read_bytes() == result
    # a training run's folder (here without its TensorBoard: ~logger), whose record and pictures it would replace
    trained = tmp_path / "trained"
    (trained / "checkpoints").mkdir(parents=True)
    (trained / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint")
    (trained / "smoke.safetensors").write_bytes(b"a model")
    (trained / "quality.json").write_text("{}")
    with pytest.raises(StylenetError, match=r"already holds a run \(checkpoints/, smoke.safetensors, quality.json\)"):
        run(compose_gatys(trained, f"content={content}", f"styles={style_image}"), trained)


def test_cli_a_folder_in_use_a_snapshot_it_cannot_write_and_a_style_too_small_among_several(
        tmp_path: Path, style_image: Path) -> None:
    """Two launches in the same second shared the default folder: both wrote one picture, one result lost.
    A steps/ snapshot the disk refused lost the whole optimisation and output= (exit 2, a 'bad setting').
    A style picture too small among several was 'a style image'."""
    from stylenet.checkpoints import run_folder_lock

    content, run_dir = make_photo(tmp_path / "content.png"), tmp_path / "run"
    settings = (f"content={content}", f"styles={style_image}", "loss.weights=random", "progress=false", "size=32")
    with run_folder_lock(run_dir, "stylenet-train"):  # a training run at work there: the refusal names it
        busy = run_gatys_cli(*settings, "iterations=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert busy.returncode == 2 and busy.stderr.strip().splitlines()[-1] == (
        f"stylenet-gatys: error: run folder {str(run_dir)!r} is in use by another stylenet-train: let it end, "
        "or give another hydra.run.dir")
    assert not (run_dir / "gatys.png").exists()

    full = tmp_path / "full"
    full.mkdir()
    (full / "steps").write_text("a file where the snapshots' folder goes")
    stopped = run_gatys_cli(*settings, "iterations=4", "save_every=2", f"output={tmp_path / 'kept.png'}",
                            f"hydra.run.dir={full}", cwd=tmp_path)
    last = stopped.stderr.strip().splitlines()[-1]
    assert stopped.returncode == 1 and last.startswith("stylenet-gatys: error: cannot write image "), last
    assert last.endswith(f"; the run stopped after iteration 2 of 4; wrote its image to {tmp_path / 'kept.png'} "
                         f"(a new run goes on from it with init={tmp_path / 'kept.png'} and another output=, "
                         "not kept.png)"), last
    assert load_rgb(tmp_path / "kept.png").shape == (3, 26, 32)

    def small_files() -> None:  # a disk that is full once TensorBoard's record passes 6 KiB
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (6 << 10, 6 << 10))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    full = subprocess.run([sys.executable, "-m", "stylenet.cli.gatys", *settings, "iterations=6", "save_every=1",
                           f"output={tmp_path / 'full.png'}", f"hydra.run.dir={tmp_path / 'small'}"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    # TensorBoard writes from a thread of its own: which of its writes meets the limit (one during the run, or
    # its last as the run ends) varies, and so does how it ends (its thread's traceback may cut into our line);
    # the picture is written either way
    said = re.findall(r"stylenet-gatys: error: cannot write [^\n]*File too large", full.stderr)
    assert full.returncode in (1, 2) and len(said) == 1, full.stderr[-2000:]
    assert load_rgb(tmp_path / "full.png").shape == (3, 26, 32)

    strip = make_photo(tmp_path / "strip.png", size=(300, 4))
    cfg = compose_gatys(tmp_path / "s", f"content={content}", f"styles=[{style_image},{strip}]", "size=32")
    with pytest.raises(StylenetError, match=r"^style image 2 of 2 is \d+x\d+ px, but the loss network needs"):
        run(cfg, tmp_path / "s")


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes)."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


def test_cli_refused_in_the_folder_of_a_finished_run_leaves_its_files_as_they_were(
        tmp_path: Path, style_image: Path) -> None:
    """The refusal is on stderr only: the run's gatys.log still ends with that run's own ending (README), and
    its Hydra record is the one of the run that made it."""
    content, run_dir = make_photo(tmp_path / "content.png"), tmp_path / "run"
    settings = (f"content={content}", f"styles={style_image}", "loss.weights=random", "iterations=1",
                "progress=false", f"hydra.run.dir={run_dir}")
    first = run_gatys_cli(*settings, "size=32", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    before = folder_bytes(run_dir)
    assert "wrote " in before["gatys.log"].decode().splitlines()[-1]
    again = run_gatys_cli(*settings, "size=40", cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1] == (
        f"stylenet-gatys: error: {str(run_dir)!r} already holds a run (tensorboard/): give another hydra.run.dir "
        "(hydra.sweep.dir for -m)")
    assert folder_bytes(run_dir) == before


def test_cli_non_finite_objective_writes_the_last_finite_image(tmp_path: Path, style_image: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("stylenet.losses.setting_weight", lambda value, setting: float(value))  # let nan in
    cfg = compose_gatys(tmp_path, "content=demo:astronaut", f"styles={style_image}",
                        "loss.content_weight=nan")
    assert run(cfg, tmp_path) == 1
    assert "stylenet-gatys: error: the objective is not finite" in capsys.readouterr().err
    assert load_rgb(tmp_path / "gatys.png").shape == (3, 32, 32)  # the initial image: the content
