"""stylenet-upscale and stylenet-stylize --upscale end to end: sizes, image modes, alpha, tiles,
histogram matching, refusing the wrong kind of model, bad inputs."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylenet.cli import stylize, upscale
from stylenet.image import load_image
from stylenet.modelfile import read_model, save_model
from stylenet.nets import SuperResolutionNet, TransformerNet
from tests.conftest import make_photo
from tests.helpers import console_script


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny x4 SR model (random weights: the tests compare pipelines, not looks) and a style model."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    sr = SuperResolutionNet(4, channels=8, residual_blocks=1)
    style = TransformerNet(channels=4, residual_blocks=1)
    return {"sr": save_model(root / "sr_x4.safetensors", sr, {"task": "sr", "factor": 4}),
            "style": save_model(root / "candy.safetensors", style, {"task": "style", "style_name": "candy"})}


def washed_out_upscaler(path: Path) -> Path:
    """An x4 network that upsamples (nearest) and squashes the colours into [0.5, 0.88]: every
    convolution passes channels 0-2 through its centre tap, the residual bodies are zero, and the
    output's scaled tanh does the squashing. Histogram matching should undo the squashing."""
    net = SuperResolutionNet(4, channels=3, residual_blocks=1)
    with torch.no_grad():
        for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d)):
            conv.weight.zero_()
            conv.bias.zero_()
            centre = conv.kernel_size[0] // 2
            if conv is not net.residuals[0].body[1][1]:
                conv.weight[range(3), range(3), centre, centre] = 1.0
    return save_model(path, net, {"task": "sr", "factor": 4})


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image).astype(np.int16)


def expected_upscale(source: Path, model: Path) -> np.ndarray:
    """The SR network run directly on the whole image, quantised as a file would be."""
    net = read_model(model).net
    with torch.no_grad():
        output = net(load_image(source).rgb.unsqueeze(0))[0]
    return output.mul(255).round().to(torch.int16).permute(1, 2, 0).numpy()


def test_any_size_and_mode_is_upscaled_by_the_factor(tmp_path: Path, models: dict[str, Path],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    sources = [make_photo(tmp_path / "in" / "rgb.png", size=(37, 23)),
               make_photo(tmp_path / "in" / "grey.png", size=(20, 31), mode="L"),
               make_photo(tmp_path / "in" / "palette.png", size=(16, 16), mode="P"),
               make_photo(tmp_path / "in" / "cmyk.jpg", size=(24, 18), mode="CMYK")]
    Image.fromarray(np.full((9, 7), 40000, np.uint16)).save(tmp_path / "in" / "grey16.png")
    assert upscale.main([str(tmp_path / "in"), "-m", str(models["sr"]), "-o", str(tmp_path / "out")]) == 0
    assert "5 done, 0 failed" in capsys.readouterr().out
    for source in [*sources, tmp_path / "in" / "grey16.png"]:
        with Image.open(source) as before, Image.open(tmp_path / "out" / f"{source.stem}_x4.png") as after:
            assert after.size == (4 * before.size[0], 4 * before.size[1])
    rgb = pixels(tmp_path / "out" / "rgb_x4.png")
    assert np.abs(rgb - expected_upscale(sources[0], models["sr"])).max() <= 1
    with Image.open(tmp_path / "out" / "grey_x4.png") as grey:  # no tint invented: grey in, grey out
        assert grey.mode == "L"
        luma = expected_upscale(sources[1], models["sr"]) @ np.array([0.299, 0.587, 0.114])
        assert np.abs(np.asarray(grey, np.int16) - luma).max() <= 1.5


def test_alpha_is_upscaled_beside_the_network(tmp_path: Path, models: dict[str, Path]) -> None:
    source = make_photo(tmp_path / "cut.png", size=(24, 20))
    rgba = np.dstack([pixels(source).astype(np.uint8), np.zeros((20, 24), np.uint8)])
    rgba[:, 12:, 3] = 255  # transparent left half, opaque right half
    Image.fromarray(rgba, "RGBA").save(source)
    assert upscale.main([str(source), "-m", str(models["sr"]), "-o", str(tmp_path / "cut_x4.png")]) == 0
    out = pixels(tmp_path / "cut_x4.png")
    assert out.shape == (80, 96, 4)
    assert (out[:, :40, 3] == 0).all() and (out[:, 56:, 3] == 255).all()  # away from the edge
    assert np.abs(out[..., :3] - expected_upscale(source, models["sr"])).max() <= 1  # the net saw RGB only


def test_tiled_upscale_matches_the_whole_image(tmp_path: Path, models: dict[str, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    source = make_photo(tmp_path / "big.png", size=(150, 130), seed=3)
    whole, tiled = tmp_path / "whole.png", tmp_path / "tiled.png"
    assert upscale.main([str(source), "-m", str(models["sr"]), "-o", str(whole)]) == 0
    assert upscale.main([str(source), "-m", str(models["sr"]), "-o", str(tiled), "--tile", "64"]) == 0
    difference = np.abs(pixels(whole) - pixels(tiled))
    assert difference.max() <= 1, difference.max()
    capsys.readouterr()
    assert upscale.main([str(source), "-m", str(models["sr"]), "-o", str(tiled), "--tile", "64",
                         "--tile-overlap", "8"]) == 0  # allowed, with a word on what it risks
    assert ("stylenet-upscale: note: --tile-overlap 8 is below the default 64 px: the tiles' borders can show as "
            "seams in tiled images") in capsys.readouterr().err


def test_match_histogram_gives_the_output_the_inputs_distribution(tmp_path: Path) -> None:
    source = make_photo(tmp_path / "photo.png", size=(40, 32), seed=5)
    model = washed_out_upscaler(tmp_path / "washed_out.safetensors")
    plain, matched = tmp_path / "plain.png", tmp_path / "matched.png"
    assert upscale.main([str(source), "-m", str(model), "-o", str(plain)]) == 0
    assert upscale.main([str(source), "-m", str(model), "-o", str(matched), "--match-histogram"]) == 0
    quantiles = np.linspace(0.02, 0.98, 25)
    reference = np.quantile(pixels(source).reshape(-1, 3), quantiles, axis=0)
    error = {name: np.abs(np.quantile(pixels(path).reshape(-1, 3), quantiles, axis=0) - reference).mean()
             for name, path in (("plain", plain), ("matched", matched))}
    assert error["matched"] < 2.0 < error["plain"], error


def test_each_cli_refuses_the_other_tasks_model_in_one_line(tmp_path: Path, models: dict[str, Path],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    source = make_photo(tmp_path / "photo.png", size=(24, 24))
    assert upscale.main([str(source), "-m", str(models["style"]), "-o", str(tmp_path / "a.png")]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == [f"stylenet-upscale: error: model file {str(models['style'])!r} is a 'style' model, "
                      "not a 'sr' model"]
    assert stylize.main([str(source), "-m", str(models["sr"]), "-o", str(tmp_path / "b.png")]) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == [f"stylenet-stylize: error: model file {str(models['sr'])!r} is a 'sr' model, "
                      "not a 'style' model"]
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()


def test_bad_inputs_are_reported_and_the_rest_is_upscaled(tmp_path: Path, models: dict[str, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    make_photo(tmp_path / "in" / "good.png", size=(16, 12))
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    assert upscale.main([str(tmp_path / "in"), "-m", str(models["sr"]), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and len([line for line in err.splitlines() if "error" in line]) == 1
    assert (tmp_path / "out" / "good_x4.png").is_file() and not (tmp_path / "out" / "broken_x4.png").exists()
    assert upscale.main([str(tmp_path / "in"), "-m", str(tmp_path / "missing.safetensors"), "-o",
                         str(tmp_path / "out2")]) != 0
    assert "does not exist" in capsys.readouterr().err


def test_stylize_then_upscale_runs_the_style_net_at_the_working_size(tmp_path: Path,
                                                                     models: dict[str, Path]) -> None:
    source = make_photo(tmp_path / "photo.png", size=(120, 90))
    out = tmp_path / "styled_x4.png"
    assert stylize.main([str(source), "-m", str(models["style"]), "--max-size", "40", "--upscale",
                         str(models["sr"]), "-o", str(out)]) == 0
    with Image.open(out) as image:
        assert image.size == (160, 120)  # 40x30 working size, x4
    # the style network first, then the upscaler: as the two commands in turn (up to the 8 bits between them);
    # with an upscaler that passes the picture on (the random one's output is nearly flat)
    upscaler = washed_out_upscaler(tmp_path / "nearest_x4.safetensors")
    assert stylize.main([str(source), "-m", str(models["style"]), "--max-size", "40", "--upscale", str(upscaler),
                         "-o", str(tmp_path / "combined.png")]) == 0
    for strength, name in (("1", "styled"), ("0", "plain")):
        assert stylize.main([str(source), "-m", str(models["style"]), "--max-size", "40", "--strength", strength,
                             "-o", str(tmp_path / f"{name}.png")]) == 0
        assert upscale.main([str(tmp_path / f"{name}.png"), "-m", str(upscaler), "-o",
                             str(tmp_path / f"{name}_x4.png")]) == 0
    combined = load_image(tmp_path / "combined.png").rgb
    assert (combined - load_image(tmp_path / "styled_x4.png").rgb).abs().mean() < 1.5 / 255
    assert (combined - load_image(tmp_path / "plain_x4.png").rgb).abs().mean() > 10 / 255  # not the photo upscaled
    assert stylize.main([str(source), "-m", str(models["style"]), "--upscale", str(models["style"]),
                         "-o", str(tmp_path / "never.png")]) != 0
    assert not (tmp_path / "never.png").exists()


def test_the_upscaled_output_is_held_against_the_free_memory_before_the_style_pass(
        tmp_path: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """stylenet-upscale refused a size whose x4 output would not fit; --upscale made the same output
    unchecked (a 12 MP photo through an x8 model: 3 Gpx, the allocator's error or the OOM killer). At 40x30,
    3 x 4 x 40 x 30 x (1 + 16) = 244,800 bytes against 200,000 free; 20x15 (61,200) goes on."""
    monkeypatch.setattr("stylenet.inference.memory.available_memory", lambda device: 200_000)
    big, small = make_photo(tmp_path / "big.png", size=(40, 30)), make_photo(tmp_path / "small.png", size=(20, 15))
    out = tmp_path / "out"
    assert stylize.main([str(big), str(small), "-m", str(models["style"]), "--upscale", str(models["sr"]),
                         "-o", f"{out}/"]) == 1
    err = capsys.readouterr().err
    assert err == (f"stylenet-stylize: error: {big}: resized to 40x30 px, the image and its output alone need "
                   "0.245 MB of memory, but 0.2 MB is free: ask for a smaller size (on the command line: --scale, "
                   "--max-size)\n"), err
    assert [path.name for path in out.iterdir()] == ["small_candy.png"]


def test_console_script_runs(tmp_path: Path, models: dict[str, Path]) -> None:
    source = make_photo(tmp_path / "photo.png", size=(20, 16))
    result = subprocess.run([*console_script("stylenet-upscale"), str(source), "--model", str(models["sr"]), "-o",
                             str(tmp_path / "o.png")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    with Image.open(tmp_path / "o.png") as image:
        assert image.size == (80, 64)


def test_the_readme_forms_with_the_model_before_the_photo(tmp_path: Path, models: dict[str, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`stylenet-upscale -m sr_x4.safetensors photo.png -o photo_x4.png --match-histogram` and
    `stylenet-stylize -m candy.safetensors --max-size 512 --upscale sr_x4.safetensors photo.jpg -o big.png`."""
    source = make_photo(tmp_path / "photo.png", size=(20, 16))
    assert upscale.main(["-m", str(models["sr"]), str(source), "-o", str(tmp_path / "photo_x4.png"),
                         "--match-histogram"]) == 0
    with Image.open(tmp_path / "photo_x4.png") as image:
        assert image.size == (80, 64)
    assert stylize.main(["-m", str(models["style"]), "--max-size", "10", "--upscale", str(models["sr"]),
                         str(source), "-o", str(tmp_path / "big.png")]) == 0
    with Image.open(tmp_path / "big.png") as image:
        assert image.size == (40, 32)
    assert "1 done, 0 failed" in capsys.readouterr().out


def test_an_unexpected_error_on_one_input_spares_the_others(tmp_path: Path, models: dict[str, Path],
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """stylenet-upscale shares stylenet-stylize's isolation: a RuntimeError from the network on one
    input is that input's one-line error, the others are written, the exit status is 1."""
    import stylenet.inference

    good = make_photo(tmp_path / "in" / "good.png", size=(16, 12))
    odd = make_photo(tmp_path / "in" / "odd.png", size=(13, 11), seed=1)
    real_transform = stylenet.inference.InferenceModel.transform

    def transform(self: object, rgb: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if rgb.shape[-1] == 13:
            raise RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR\nmore detail")
        return real_transform(self, rgb, *args, **kwargs)

    monkeypatch.setattr(stylenet.inference.InferenceModel, "transform", transform)
    assert upscale.main([str(good), str(odd), "-m", str(models["sr"]), "-o", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"stylenet-upscale: error: {odd}: RuntimeError: cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good_x4.png"]
    assert captured.out.startswith("1 done, 1 failed")


def test_frames_through_a_super_resolution_model_blend_with_the_upscaled_frame(models: dict[str, Path]) -> None:
    from stylenet import load_model

    model = load_model(models["sr"], device="cpu", precision="fp32", task="sr")
    frame = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    for options in ({"strength": 0.5}, {"preserve_color": True}):  # both need the content at the output's size
        streamed = next(model.stylize_frames([frame], **options))
        alone = np.asarray(model.stylize(Image.fromarray(frame), **options))
        assert streamed.shape == (48, 64, 3) and np.abs(streamed.astype(int) - alone).max() <= 1


def test_a_style_named_for_a_super_resolution_model_is_refused_as_such(models: dict[str, Path]) -> None:
    """It was refused as "no style 'candy' (available: stylized)", a name the model goes by nowhere else."""
    from stylenet import StylenetError, load_model
    from stylenet.inference import InferenceModel

    model = load_model(models["sr"], device="cpu", precision="fp32", task="sr")
    photo = Image.new("RGB", (8, 6))
    for call in (lambda: model.stylize(photo, style="candy"), lambda: model.stylize(photo, style={"candy": 1.0}),
                 lambda: next(model.stylize_frames([np.zeros((6, 8, 3), np.uint8)], style="candy")),
                 lambda: model.selected(["candy"])):
        with pytest.raises(StylenetError) as refused:
            call()
        assert str(refused.value) == (f"model file {str(models['sr'])!r} is a super-resolution model (x4): it has no "
                                      "styles to choose from; leave the style out")
    assert model.stylize(photo).size == (32, 24)
    wrapped = InferenceModel(read_model(models["sr"]).net, precision="fp32")  # a network, no model file
    with pytest.raises(StylenetError, match=r"^this model is a super-resolution model \(x4\): it has no styles"):
        wrapped.for_style("candy")


def test_narrow_networks_take_photos_down_to_their_minimum_size(tmp_path: Path, models: dict[str, Path]) -> None:
    """An 8-channel network's first 9x9 layer runs as a depth-to-space convolution, whose padding
    once reflected further than a 5 px side allows."""
    sources = [make_photo(tmp_path / f"in{h}x{w}.png", size=(w, h)) for h, w in ((5, 5), (5, 6), (6, 7))]
    assert upscale.main([*map(str, sources), "-m", str(models["sr"]), "-o", str(tmp_path / "out"),
                         "--device", "cpu"]) == 0
    for source in sources:
        assert np.abs(pixels(tmp_path / "out" / f"{source.stem}_x4.png") - expected_upscale(source, models["sr"])
                      ).max() <= 1


def test_ctrl_c_while_torch_loads_is_one_line(tmp_path: Path, models: dict[str, Path],
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C in the first second, while run_cli imports torch (here: the import of stylenet.fastpath), ends
    as it does later, not as a traceback of the import machinery."""

    class Interrupted(types.ModuleType):
        def __getattr__(self, name: str) -> object:
            if name.startswith("__"):  # what tracebacks and pytest's reports look up
                raise AttributeError(name)
            raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "stylenet.fastpath", Interrupted("stylenet.fastpath"))
    photo = make_photo(tmp_path / "photo.png", size=(16, 16))
    try:
        code = upscale.main([str(photo), "-m", str(models["sr"]), "-o", str(tmp_path / "out")])
    except KeyboardInterrupt:  # not pytest's to see: it would stop the session
        pytest.fail("Ctrl-C escaped stylenet-upscale as a traceback")
    assert code == 130
    assert capsys.readouterr().err == "stylenet-upscale: interrupted; 0 done, 0 failed, no pixels processed\n"
    assert not (tmp_path / "out").exists()
