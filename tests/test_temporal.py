"""Temporal consistency: the warp and its mask against hand-computed cases, the term's zero and
non-zero cases, the style task's hook, a few training steps that lower E_warp, and the stability
measure and its command."""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from stylenet import StylenetError
from stylenet.cli.stability import main as stability_main
from stylenet.nets import TransformerNet
from stylenet.stability import KINDS, clip_change, make_sequence, markdown_table, measure, sequence_error
from stylenet.tasks import StyleTransferTask
from stylenet.temporal import (
    SENSOR_NOISE,
    MotionRange,
    TemporalConsistency,
    affine_flow,
    random_flow,
    split_temporal_weight,
    temporal_loss,
    warp,
    warping_error,
)
from tests.conftest import make_photo
from tests.helpers import signal_self, stops_handled_by
from tests.test_video import tiny_model_file

TINY_MODEL = {"channels": 8, "residual_blocks": 1, "norm": "instance"}


def shift(height: int, width: int, dx: float, dy: float) -> torch.Tensor:
    flow = torch.zeros(1, 2, height, width)
    flow[:, 0], flow[:, 1] = dx, dy
    return flow


def test_integer_shift_warp_and_mask_by_hand() -> None:
    """Pixel (i, j) reads (i + 1, j + 2); the last row and the last two columns come from beyond the
    edge and are masked out."""
    image = torch.arange(5 * 6, dtype=torch.float32).view(1, 1, 5, 6)
    warped, mask = warp(image, shift(5, 6, dx=2, dy=1))
    assert torch.equal(warped[0, 0, :4, :4], image[0, 0, 1:, 2:])
    expected_mask = torch.zeros(5, 6)
    expected_mask[:4, :4] = 1
    assert torch.equal(mask[0, 0], expected_mask)
    # half a pixel: the bilinear mean of the two neighbours
    half, _ = warp(image, shift(5, 6, dx=0.5, dy=0))
    assert torch.allclose(half[0, 0, :, :5], (image[0, 0, :, :5] + image[0, 0, :, 1:]) / 2)


def test_affine_flow_rotates_about_the_centre() -> None:
    """A quarter turn of a 3x3 grid: the picture turns counter-clockwise as displayed (np.rot90), the
    centre stays; a 2x zoom makes the corner read halfway to the centre."""
    flow = affine_flow(3, 3, shift=torch.zeros(1, 2), zoom=torch.ones(1), rotation=torch.tensor([90.0]))
    image = torch.arange(9, dtype=torch.float32).view(1, 1, 3, 3)
    warped, mask = warp(image, flow)
    assert torch.allclose(warped[0, 0], torch.from_numpy(np.rot90(image[0, 0].numpy()).copy()), atol=1e-5)
    assert mask.all()
    zoom = affine_flow(5, 5, shift=torch.zeros(1, 2), zoom=torch.tensor([2.0]), rotation=torch.zeros(1))
    assert torch.allclose(zoom[0, :, 0, 0], torch.tensor([1.0, 1.0]))


def test_random_flows_are_small_smooth_and_reproducible() -> None:
    first = random_flow(3, 40, 48, torch.Generator().manual_seed(5))
    again = random_flow(3, 40, 48, torch.Generator().manual_seed(5))
    assert torch.equal(first, again) and first.shape == (3, 2, 40, 48)
    assert 0.5 < first.abs().max() < 3 + 48 * 0.06 + 1.5 * 1.2  # shift + zoom/rotation reach + deformation
    assert (first[..., 1:] - first[..., :-1]).abs().max() < 0.35  # smooth: neighbours move alike


def test_temporal_term_zero_for_identity_and_commuting_maps_positive_otherwise(one_thread: None) -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 3, 24, 32)
    net = TransformerNet(channels=8, residual_blocks=1).eval()
    with torch.no_grad():
        output = net(images)
        identity = temporal_loss(net, images, output, torch.zeros(2, 2, 24, 32))
        assert float(identity) == pytest.approx(0.0, abs=1e-10)
        moved = shift(24, 32, dx=3, dy=-2).expand(2, -1, -1, -1)
        # a per-pixel map commutes with an integer shift; a position-dependent one does not
        assert float(temporal_loss(lambda x: x.square(), images, images.square(), moved)) < 1e-12
        ramp = torch.linspace(0, 1, 32)
        assert float(temporal_loss(lambda x: x * ramp, images, images * ramp, moved)) > 1e-3
        assert float(temporal_loss(net, images, output, moved)) > 1e-5


def test_the_training_noise_enters_the_moved_frame() -> None:
    """Identity network, no motion: the term is then exactly the noise's mean square (mid-grey
    images, so that no value is clamped)."""
    images = torch.full((2, 3, 16, 20), 0.5)
    noise = torch.randn(2, 3, 16, 20, generator=torch.Generator().manual_seed(0)) * 0.05
    term = temporal_loss(lambda x: x, images, images, torch.zeros(2, 2, 16, 20), noise)
    assert float(term) == pytest.approx(float(noise.square().mean()), rel=1e-5)


def test_validation_measures_by_formula() -> None:
    """With the identity network E_warp is 0 (N(W(x)) is W(x) itself, compared with W(N(x)) = W(x)), and
    the still camera's flicker is the sensor noise's mean absolute value, sigma sqrt(2 / pi) x 255; a
    network that ignores its input has neither."""
    consistency = TemporalConsistency(1.0)
    images = torch.full((2, 3, 64, 64), 0.5)
    images[:, :, :, 32:] = 0.3  # an edge, so that the motion changes the frames
    identity = consistency.instability(lambda x: x, images, images)
    assert float(identity["temporal/e_warp"]) == pytest.approx(0.0, abs=1e-4)
    assert float(identity["temporal/flicker"]) == pytest.approx(SENSOR_NOISE * (2 / np.pi) ** 0.5 * 255, rel=0.03)
    constant = torch.full_like(images, 0.7)
    fixed = consistency.instability(lambda x: constant, images, constant)
    assert float(fixed["temporal/e_warp"]) == pytest.approx(0.0, abs=1e-4)
    assert float(fixed["temporal/flicker"]) == 0.0


def test_split_temporal_weight_keeps_the_loss_network_settings_clean() -> None:
    settings, weight = split_temporal_weight({"weights": "random", "temporal_weight": 2.5})
    assert settings == {"weights": "random"} and weight == 2.5
    assert split_temporal_weight({"weights": "random"}) == ({"weights": "random"}, 0.0)
    with pytest.raises(StylenetError, match="loss.temporal_weight must be a number >= 0"):
        split_temporal_weight({"temporal_weight": -1})


def test_style_task_adds_the_term_only_when_asked(style_image: Path, one_thread: None) -> None:
    """temporal_weight > 0: ``temporal`` and the weighted total; 0: no term and one network pass per
    step; the model file's loss settings never hold the key; validation's measures are grey levels."""
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    task = StyleTransferTask(model=TINY_MODEL, loss={"weights": "random", "temporal_weight": 3.0},
                             style={"name": "test", "image": str(style_image), "size": 32}, image_size=32)
    assert "temporal_weight" not in task.hparams["loss"] and task.hparams["temporal_weight"] == 3.0
    calls = []
    task.net.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        output = task.net(images)
        base = task.loss(output, images)["total"]
        terms = task.objective(output, images)
        assert float(terms["temporal"]) > 0 and len(calls) == 2  # output, then the warped pass
        assert torch.allclose(terms["total"], base + 3.0 * terms["temporal"], rtol=1e-5)
        task.temporal = TemporalConsistency(0.0)
        assert task.objective(output, images).keys() == base_terms(task, output, images) and len(calls) == 2
        measures = task.temporal.instability(task.net, images, output)
    assert set(measures) == {"temporal/e_warp", "temporal/flicker"}
    assert all(0 < float(value) < 255 for value in measures.values())


def base_terms(task: StyleTransferTask, output: torch.Tensor, images: torch.Tensor) -> set[str]:
    return set(task.loss(output, images))


def test_a_few_steps_of_the_term_lower_e_warp(one_thread: None) -> None:
    """The same tiny network, seed, data and steps, with and without the term: E_warp on a pan
    sequence drops with it (training on a copy-the-photo objective that leaves it unconstrained)."""
    photo = torch.from_numpy(np.asarray(make_photo_array(96), dtype=np.float32) / 255).permute(2, 0, 1)
    sequence = make_sequence(photo, "pan", size=32, frames=4)
    errors = {}
    for weight in (0.0, 1000.0):
        torch.manual_seed(0)
        net = TransformerNet(channels=8, residual_blocks=1)
        optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
        term = TemporalConsistency(weight)
        batches = torch.Generator().manual_seed(1)
        for step in range(12):
            top, left = torch.randint(0, 64, (2,), generator=batches).tolist()
            images = photo[None, :, top:top + 32, left:left + 32].repeat(2, 1, 1, 1)
            output = net(images)
            terms = term.add_term({"total": (output - images).abs().mean()}, net, images, output, step)
            optimizer.zero_grad()
            terms["total"].backward()
            optimizer.step()
        with torch.no_grad():
            errors[weight] = sequence_error(net(sequence.frames), sequence.flows)
    assert errors[1000.0] < 0.7 * errors[0.0], errors


def test_each_ddp_process_draws_its_own_motion_and_the_first_a_single_processs() -> None:
    """Under DDP every process trains on other photos; the same motion and noise on all of them would
    make the term see a world-size times smaller sample of motions per step."""
    torch.manual_seed(0)
    net = TransformerNet(channels=4, residual_blocks=0)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    term = TemporalConsistency(1.0)
    with torch.no_grad():
        output = net(images)
        single, first, second = (float(term.add_term({"total": torch.zeros(())}, net, images, output, 5, *rank)
                                       ["temporal"]) for rank in ((), (0,), (1,)))
        # and each seed= its own (runs at seeds 0, 1 and 2 drew the same motions and noise at every step)
        seeds = [float(TemporalConsistency(1.0, seed).add_term({"total": torch.zeros(())}, net, images, output, 5)
                       ["temporal"]) for seed in (0, 1, 0)]
    assert term.seed == 0  # torch's, as stylenet-train seeds it (here torch.manual_seed(0))
    assert single == first and second != first and seeds[0] == seeds[2] == first != seeds[1]


def make_photo_array(size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    return (np.stack([np.sin(9 * xx) * np.cos(7 * yy), np.cos(11 * xx * yy), np.sin(5 * (xx + yy))], -1)
            * 127.5 + 127.5).astype(np.uint8)


def test_sequences_follow_their_flows_and_the_measure_reads_zero_for_an_identity_network() -> None:
    photo = torch.from_numpy(make_photo_array(80).astype(np.float32) / 255).permute(2, 0, 1)
    for kind in KINDS:
        clip = make_sequence(photo, kind, size=40, frames=3)
        assert clip.frames.shape == (3, 3, 40, 40) and len(clip.flows) == 2
        # each frame is what the one before showed at p + flow(p), up to interpolation (and noise)
        floor = sequence_error(clip.frames, clip.flows)
        if kind == "still":  # two frames' independent noise of 2 grey levels: E|n1 - n2| = 2 sqrt(2) sqrt(2 / pi)
            assert floor == pytest.approx(2 * 2 ** 0.5 * (2 / np.pi) ** 0.5, abs=0.25), floor
        else:
            assert floor < 2.5, (kind, floor)
    clips = [make_sequence(photo, kind, size=40, frames=3) for kind in KINDS]
    inputs = measure(None, clips)
    same = measure(lambda frames: frames, clips)  # the identity network is exactly as stable as its input
    assert same == pytest.approx(inputs) and set(inputs) == {*KINDS, "e_warp"}
    rough = measure(lambda frames: [f + 0.05 * torch.randn_like(f) for f in frames], clips)
    assert rough["e_warp"] > inputs["e_warp"] + 5
    table = markdown_table({"input frames": inputs, "noisy": rough})
    assert table.splitlines()[0].startswith("|  | pan | zoom | rotation | deformation |") and "| noisy |" in table


def test_every_frame_is_rendered_from_the_photo_up_to_its_edges() -> None:
    """Frame t of a pan is the photo read at the window moved by t steps, at every pixel: the pixels whose
    motion comes from beyond the window's edge too (once the last column, repeated across the edge)."""
    from stylenet.stability import PAN, photo_for_sequences
    from stylenet.temporal import pixel_grid, sample_at

    photo = photo_for_sequences(torch.from_numpy(make_photo_array(80).astype(np.float32) / 255).permute(2, 0, 1), 40)
    clip = make_sequence(photo, "pan", size=40, frames=5)
    corner = torch.tensor([(photo.shape[2] - 40) / 2, (photo.shape[1] - 40) / 2]).view(1, 2, 1, 1)
    for t in range(5):
        direct = sample_at(photo[None], pixel_grid(40, 40) + corner + t * torch.tensor(PAN).view(1, 2, 1, 1))[0][0]
        assert (clip.frames[t] - direct.mul(255).round().div(255)).abs().max() <= 1 / 255 + 1e-6, t
    # a long clip gets a photo big enough for its window's travel: a pan of 59 steps; the zoom magnifies, so
    # its window shrinks: a 300-frame clip needs no photo of many thousand pixels
    long = photo_for_sequences(photo, 40, frames=60)
    assert min(long.shape[-2:]) == 40 + 2 * (2 * 59 + 2)
    assert min(photo_for_sequences(photo, 256, frames=300).shape[-2:]) == 256 + 2 * (2 * 299 + 2)


def test_warping_error_is_in_grey_levels() -> None:
    previous = torch.zeros(1, 3, 8, 8)
    current = torch.full((1, 3, 8, 8), 10 / 255)
    assert float(warping_error(current, previous, torch.zeros(1, 2, 8, 8))) == pytest.approx(10.0)
    # only the pixels that stay visible count: a shift by (2, 1) leaves the last two columns and the last row
    previous = torch.arange(30, dtype=torch.float32).view(1, 1, 5, 6) / 255
    flow = shift(5, 6, dx=2, dy=1)
    current, mask = warp(previous, flow)
    assert int(mask.sum()) == 4 * 4
    current = torch.where(mask.bool(), current + 3 / 255, torch.ones_like(current))  # white where nothing was seen
    assert float(warping_error(current, previous, flow)) == pytest.approx(3.0, abs=1e-4)


def test_each_step_s_term_adds_its_own_noise_to_the_moved_frame() -> None:
    """Without motion, an identity network's term is the mean square of the noise that step draws (Gupta et
    al. 2017's noise robustness): the term alone, without its noise, would be 0."""
    consistency = TemporalConsistency(2.0)
    consistency.motion = MotionRange(shift=0, zoom=0, rotation=0, deformation=0)
    images = torch.full((2, 3, 16, 20), 0.5)
    terms = consistency.add_term({"total": torch.tensor(1.0)}, lambda x: x, images, images, step=7)
    generator = torch.Generator().manual_seed(7)
    random_flow(2, 16, 20, generator, consistency.motion)  # the step's draws before its noise
    sigma = torch.rand(2, 1, 1, 1, generator=generator) * consistency.motion.noise
    noise = torch.randn(images.shape, generator=generator) * sigma
    assert float(terms["temporal"]) == pytest.approx(float(noise.square().mean()), rel=1e-4)
    assert float(terms["temporal"]) > 1e-5 and float(terms["total"]) == pytest.approx(1 + 2 * float(terms["temporal"]))


def test_clip_change_compares_output_and_input_change() -> None:
    frames = [np.full((4, 4, 3), 10 * t, dtype=np.uint8) for t in range(4)]  # +10 per frame
    change = clip_change(iter(frames), lambda inputs: (frame * 2 for frame in inputs))
    assert change == {"frames": 4.0, "input": 10.0, "output": 20.0, "ratio": 2.0}


def test_a_clip_that_does_not_change_has_no_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    from stylenet.cli.stability import _clip_line

    still = [np.full((4, 4, 3), 90, dtype=np.uint8)] * 3
    monkeypatch.setattr("stylenet.video.io.iter_video_frames", lambda clip, limit: iter(still))
    model = SimpleNamespace(stylize_frames=lambda frames: (frame for frame in frames))
    assert _clip_line("still.mp4", "m", model, 10) == ("- still.mp4, m: 3 frames, output 0.00 vs input 0.00 grey "
                                                       "levels per frame (no ratio: the input does not change)")


def test_stability_command_prints_and_writes_the_table(tmp_path: Path, one_thread: None,
                                                      capsys: pytest.CaptureFixture) -> None:
    model = tiny_model_file(tmp_path)
    photo = make_photo(tmp_path / "photo.png", size=(64, 56))
    status = stability_main([str(photo), "-m", str(model), "-m", str(tmp_path / "missing.safetensors"),
                             "--size", "24", "--frames", "3", "--out", str(tmp_path / "table.md"),
                             "--strip", str(tmp_path / "strip.png")])
    assert status == 1  # the missing model: one line, the other measured
    captured = capsys.readouterr()
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and "missing.safetensors" in errors[0]
    table = (tmp_path / "table.md").read_text()
    assert "| input frames |" in table and "| tiny.safetensors |" in table and table in captured.out
    with Image.open(tmp_path / "strip.png") as picture:  # rows: input, tiny; columns: 3 frames and the error
        assert picture.size == (4 * (24 + 4), 2 * (24 + 4))


@pytest.mark.parametrize(("signum", "status", "how"), [(signal.SIGINT, 130, "interrupted"),
                                                     (signal.SIGTERM, 143, "terminated")])
def test_stability_stopped_while_measuring_is_one_line_and_writes_no_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        signum: signal.Signals, status: int, how: str) -> None:
    """Ctrl-C or SIGTERM while the clips are measured: one line, exit 130 or 143, no table."""
    photo = make_photo(tmp_path / "photo.png", size=(64, 56))
    monkeypatch.setattr("stylenet.stability.measure", lambda *args, **kwargs: signal_self(signum))
    with stops_handled_by("stylenet-stability"):
        code = stability_main([str(photo), "-m", str(tiny_model_file(tmp_path)), "--size", "24", "--frames", "3",
                               "--out", str(tmp_path / "table.md")])
    assert code == status
    assert capsys.readouterr().err == f"stylenet-stability: {how}\n"
    assert not (tmp_path / "table.md").exists()


def test_stability_rows_for_each_style_and_for_two_files_of_one_name(tmp_path: Path, one_thread: None,
                                                                       capsys: pytest.CaptureFixture) -> None:
    """A model of several styles gets a row per style; two runs' ``<name>.safetensors`` a row each, both by
    their paths; one file given twice, ``#2``. Photos may stand after the options too."""
    from tests.test_multistyle import multi_file

    photo = make_photo(tmp_path / "photo.png", size=(48, 40))
    first, second = tiny_model_file(tmp_path / "run1"), tiny_model_file(tmp_path / "run2")
    multi = multi_file(tmp_path / "multi.safetensors")
    assert stability_main(["-m", str(first), "-m", str(second), "-m", str(multi), "-m", str(second),
                           "--size", "24", "--frames", "2", str(photo)]) == 0
    names = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert names[2:] == [str(first), str(second), "multi.safetensors (a)", "multi.safetensors (b)",
                         "multi.safetensors (c)", f"{second} #2"], names
    assert stability_main(["-m", str(multi), "-m", str(multi), "--size", "24", "--frames", "2", str(photo)]) == 0
    names = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert names[2:] == ["multi.safetensors (a)", "multi.safetensors (b)", "multi.safetensors (c)",
                         "multi.safetensors (a) #2", "multi.safetensors (b) #2", "multi.safetensors (c) #2"], names
    with pytest.raises(SystemExit):  # -m takes one file: a second one after it is no photo
        stability_main(["-m", str(first), str(second), str(photo)])
    assert f"{str(second)!r} is a model file, not an image: each -m takes one model file" in capsys.readouterr().err


def test_stability_command_refuses_bad_outputs_before_measuring_and_skips_an_unreadable_photo(
        tmp_path: Path, one_thread: None, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import stylenet.stability

    model = tiny_model_file(tmp_path)
    photo = make_photo(tmp_path / "photo.png", size=(64, 56))
    (tmp_path / "afile").write_text("not a folder")
    measured = []
    real_measure = stylenet.stability.measure
    monkeypatch.setattr(stylenet.stability, "measure", lambda *a, **k: measured.append(1) or real_measure(*a, **k))
    common = [str(photo), "-m", str(model), "--size", "24", "--frames", "2"]
    for bad, named in ((["--strip", str(tmp_path / "s.jpgg")], "s.jpgg"),
                       (["--out", str(tmp_path)], str(tmp_path)),
                       (["--out", str(tmp_path / "afile" / "t.md")], "afile"),
                       (["--out", str(model)], "is an input"),  # never overwrite a model or a photo
                       (["--out", str(tmp_path / "trip.mp4")], "names a picture, video or model file"),  # nor a clip
                       (["--strip", str(photo)], "is an input"),
                       (["--out", str(tmp_path / "both.png"), "--strip", str(tmp_path / "both.png")],
                        "--out and --strip both name"),
                       (["--strip", str(tmp_path / "afile" / "s.png")], "cannot write --strip"),
                       (["--seed", "-1"], "--seed must be a whole number from 0 to 2**32 - 1, got -1"),
                       (["--device", "foo"], "unknown device 'foo'")):  # not each model file's fault
        if bad[0] in ("--seed", "--device"):  # a usage error, before anything runs
            with pytest.raises(SystemExit) as stop:
                stability_main([*common, *bad])
            assert stop.value.code == 2 and named in capsys.readouterr().err.strip().splitlines()[-1]
            continue
        assert stability_main([*common, *bad]) == 1
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and named in errors[0]
    with pytest.raises(SystemExit):  # sequences beyond any memory: the setting is named, not the photo
        stability_main([*common, "--frames", "10000000"])
    err = capsys.readouterr().err
    assert "--frames 10000000 of --size 24 px would hold over 120 megapixels per photo" in err
    assert "photo.png" not in err
    with pytest.raises(SystemExit):  # beyond a float: still the setting, not a traceback
        stability_main([*common, "--size", "1" + "0" * 400])
    assert "would hold over 120 megapixels per photo" in capsys.readouterr().err
    assert measured == []  # refused before any model ran
    status = stability_main([str(tmp_path / "missing.png"), *common, "--out", str(tmp_path / "t.md")])
    assert status == 1
    captured = capsys.readouterr()
    assert captured.err.count("error:") == 1 and "missing.png" in captured.err
    assert "1 photo(s)" in (tmp_path / "t.md").read_text()  # the readable photo was still measured


def test_stability_writes_nothing_when_no_model_is_measured_and_names_a_bad_clip_once(
        tmp_path: Path, one_thread: None, capsys: pytest.CaptureFixture) -> None:
    model = tiny_model_file(tmp_path)
    photo = make_photo(tmp_path / "photo.png", size=(64, 56))
    table = tmp_path / "t.md"
    table.write_text("an earlier table")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"")
    assert stability_main([str(photo), "-m", str(broken), "--size", "24", "--frames", "2", "--out", str(table)]) == 1
    assert "no model could be measured: nothing written" in capsys.readouterr().err
    assert table.read_text() == "an earlier table"
    # a still image is no clip (FFmpeg reads it as one frame): refused once, not once per model
    status = stability_main([str(photo), "-m", str(model), "-m", str(model), "--size", "24", "--frames", "2",
                             "--video", str(photo)])
    errors = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(errors) == 1 and "has 1 frame(s): a change per frame needs at least 2" in errors[0]


def test_stability_ctrl_c_is_one_line_and_exit_130(tmp_path: Path, one_thread: None, capsys: pytest.CaptureFixture,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import stylenet.stability

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(stylenet.stability, "measure", interrupted)
    photo = make_photo(tmp_path / "photo.png", size=(64, 56))
    assert stability_main([str(photo), "-m", str(tiny_model_file(tmp_path)), "--size", "24", "--frames", "2"]) == 130
    assert capsys.readouterr().err == "stylenet-stability: interrupted\n"
