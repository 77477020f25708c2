"""The super-resolution protocol (stylenet.metrics): LR degradation, Y channel, PSNR and SSIM against
hand-computed values, known properties and scikit-image; and stylenet-evaluate-sr, which uses them."""

from __future__ import annotations

import csv
import math
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from stylenet.cli import evaluate_sr
from stylenet.image import load_rgb
from stylenet.markdown import table_row
from stylenet.metrics import (
    degrade,
    gaussian_kernel,
    modcrop,
    psnr,
    rgb_to_y,
    shave,
    sr_scores,
    ssim,
    upscale_bicubic,
)
from stylenet.modelfile import read_model, save_model
from stylenet.nets import SuperResolutionNet
from tests.conftest import make_photo
from tests.helpers import signal_self, stops_handled_by


def test_y_channel_is_bt601_studio_swing() -> None:
    rgb = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0, 1.0]])
    y = rgb_to_y(rgb.view(3, 1, 5)).flatten()
    expected = torch.tensor([16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966]) / 255
    torch.testing.assert_close(y, expected)


def test_psnr_hand_computed_identical_and_constant_offset() -> None:
    target = torch.zeros(1, 1, 2, 2)
    one_off = target.clone()
    one_off[0, 0, 0, 0] = 0.1  # MSE = 0.01 / 4
    assert psnr(one_off, target).item() == pytest.approx(10 * math.log10(400))
    images = torch.rand(3, 1, 16, 16)
    assert torch.isinf(psnr(images, images)).all()
    for offset in (0.01, 0.1, 0.25):
        assert psnr(images + offset, images).tolist() == pytest.approx([10 * math.log10(1 / offset**2)] * 3)
    eight_bit = psnr(images * 255 + 10, images * 255, data_range=255)
    assert eight_bit.tolist() == pytest.approx([20 * math.log10(25.5)] * 3)


def test_ssim_identical_is_one_and_constants_follow_the_luminance_term() -> None:
    images = torch.rand(2, 3, 24, 20)
    torch.testing.assert_close(ssim(images, images), torch.ones(2, dtype=torch.float64))
    a, b = torch.full((1, 1, 16, 16), 0.2), torch.full((1, 1, 16, 16), 0.6)
    c1 = 0.01**2  # no variance anywhere: only (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) is left
    assert ssim(a, b).item() == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.rand(1, 1, 10, 30), torch.rand(1, 1, 10, 30))


@pytest.mark.parametrize("height,width,noise", [(11, 11, 0.05), (32, 48, 0.1), (57, 40, 0.3)])
def test_ssim_equals_scikit_image(height: int, width: int, noise: float) -> None:
    generator = torch.Generator().manual_seed(height)
    clean = torch.rand(2, 3, height, width, generator=generator)
    noisy = (clean + noise * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
    ours = ssim(noisy, clean)
    for i in range(2):
        reference = structural_similarity(noisy[i].double().numpy(), clean[i].double().numpy(),
                                          channel_axis=0, gaussian_weights=True, sigma=1.5,
                                          use_sample_covariance=False, data_range=1.0)
        assert ours[i].item() == pytest.approx(reference, abs=1e-12)


def test_sr_scores_work_on_y_and_ignore_the_border() -> None:
    target = torch.rand(2, 3, 40, 40)
    output = target.clone()
    output[..., :4, :] = 0  # only the 4 px border differs
    output[..., :, -4:] = 1
    scores = sr_scores(output, target, border=4)
    assert torch.isinf(scores["psnr"]).all()
    torch.testing.assert_close(scores["ssim"], torch.ones(2, dtype=torch.float64))
    assert torch.isfinite(sr_scores(output, target, border=3)["psnr"]).all()
    # +d on every RGB channel moves Y by d * 219 / 255
    shifted = sr_scores(target * 0.5 + 0.1, target * 0.5, border=4)["psnr"]
    assert shifted.tolist() == pytest.approx([-20 * math.log10(0.1 * 219 / 255)] * 2)
    assert shave(target, 0).shape == target.shape and shave(target, 4).shape == (2, 3, 32, 32)


def cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel."""
    x = np.abs(x)
    return np.where(x <= 1, (a + 2) * x**3 - (a + 3) * x**2 + 1,
                    np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0))


def reference_degrade(hr: np.ndarray, factor: int) -> np.ndarray:
    """Blur with a 7x7 Gaussian (sigma 1, reflect) written out in full, then resample each output
    pixel with the cubic stretched by the factor (antialiasing), for one (H, W) channel."""
    x = np.arange(-3, 4)
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / 2.0)
    g /= g.sum()
    padded = np.pad(hr, 3, mode="reflect")
    blurred = np.array([[(padded[i: i + 7, j: j + 7] * g).sum() for j in range(hr.shape[1])]
                        for i in range(hr.shape[0])])

    def weights(length: int) -> np.ndarray:
        out = np.zeros((length // factor, length))
        for i in range(length // factor):
            centre = (i + 0.5) * factor - 0.5
            w = cubic((np.arange(length) - centre) / factor)
            out[i] = w / w.sum()
        return out

    return weights(hr.shape[0]) @ blurred @ weights(hr.shape[1]).T


@pytest.mark.parametrize("factor", [2, 4])
def test_degrade_is_gaussian_blur_then_antialiased_bicubic_downsampling(factor: int) -> None:
    hr = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(factor))
    lr = degrade(hr, factor)
    assert lr.shape == (1, 3, 48 // factor, 40 // factor)
    assert torch.equal(lr, (lr * 255).round() / 255)  # 8-bit levels, like an LR image file
    expected = torch.from_numpy(reference_degrade(hr[0, 1].double().numpy(), factor))
    # away from the borders, where the resampler renormalises truncated kernels; within 8-bit rounding
    inner = slice(2, -2)
    torch.testing.assert_close(lr[0, 1, inner, inner].double(), expected[inner, inner], atol=0.5 / 255 + 1e-6,
                               rtol=0)
    # blurring first matters: without it the LR image is clearly sharper
    plain = torch.nn.functional.interpolate(hr, scale_factor=1 / factor, mode="bicubic", antialias=True)
    assert (plain - lr).abs().mean() > 2 / 255


def test_degrade_keeps_constants_and_needs_multiples_of_the_factor() -> None:
    flat = torch.full((2, 3, 32, 24), 0.4)
    torch.testing.assert_close(degrade(flat, 8), torch.full((2, 3, 4, 3), round(0.4 * 255) / 255))
    flat_lr = torch.full((1, 3, 5, 7), 0.3)
    torch.testing.assert_close(upscale_bicubic(flat_lr, 4), torch.full((1, 3, 20, 28), 0.3))
    with pytest.raises(ValueError, match="modcrop"):
        degrade(torch.rand(1, 3, 30, 32), 4)
    assert modcrop(torch.rand(1, 3, 30, 35), 4).shape == (1, 3, 28, 32)
    assert gaussian_kernel(1.5, 5).shape == (11,) and gaussian_kernel(1.0).sum().item() == pytest.approx(1)


# ---------------------------------------------------------------------------- stylenet-evaluate-sr


def keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (1981) at offsets ``t``."""
    t = np.abs(t)
    return np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                    np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))


def test_bicubic_baseline_is_the_cubic_of_matlab_and_pil() -> None:
    """Along one axis, away from the borders, upscale_bicubic equals Keys' cubic with a = -0.5 (MATLAB's
    imresize, PIL's BICUBIC), computed here by hand: output pixel j samples the input at (j + 0.5) / f - 0.5."""
    factor, row = 4, np.random.default_rng(0).random(12)
    lr = torch.tensor(np.tile(row, (3, 5, 1)), dtype=torch.float32).unsqueeze(0).clamp(0.3, 0.7)  # no clamping
    lr_row = lr[0, 0, 0].double().numpy()
    out = upscale_bicubic(lr, factor)[0, 0, 2].double().numpy()
    for j in range(3 * factor, (len(row) - 3) * factor):
        x = (j + 0.5) / factor - 0.5
        taps = np.arange(math.floor(x) - 1, math.floor(x) + 3)
        assert out[j] == pytest.approx(float((keys_cubic(x - taps) * lr_row[taps]).sum()), abs=1e-5), j


def hr_folder(root: Path) -> Path:
    make_photo(root / "a.png", size=(64, 52), seed=1)
    make_photo(root / "sub" / "b.png", size=(50, 67), seed=2)  # not multiples of 4: modcropped
    return root


def sr_model_file(path: Path, factor: int = 4) -> Path:
    torch.manual_seed(0)
    net = SuperResolutionNet(factor, channels=4, residual_blocks=1).eval()
    return save_model(path, net, {"task": "sr", "factor": factor})


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_bar_in_a_file_name_stays_in_its_table_cell(tmp_path: Path) -> None:
    """A ``|`` in a name would split its markdown cell and shift the scores under other headers."""
    root = tmp_path / "pipes"
    make_photo(root / "a|b.png", size=(48, 48))
    assert evaluate_sr.main([str(root), "--factor", "4", "--out", str(tmp_path / "t.md")]) == 0
    header, _, row, mean = (tmp_path / "t.md").read_text().splitlines()[2:6]
    cells = [re.split(r"(?<!\\)\|", line)[1:-1] for line in (header, row, mean)]  # split at unescaped bars
    assert [len(c) for c in cells] == [3, 3, 3] and cells[1][0].strip() == r"a\|b.png"
    assert table_row(["x|y", "two\nlines", 1.5]) == r"| x\|y | two lines | 1.5 |"


def test_evaluate_bicubic_table_matches_the_metric_functions(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    root = hr_folder(tmp_path / "Set2")
    status = evaluate_sr.main([str(root), "--factor", "4", "--out", str(tmp_path / "t.csv"),
                               "--out", str(tmp_path / "t.md")])
    assert status == 0
    rows = read_csv(tmp_path / "t.csv")
    assert [r["image"] for r in rows] == ["a.png", "sub/b.png", "mean"]
    assert (rows[1]["height"], rows[1]["width"]) == ("64", "48")
    hr = modcrop(load_rgb(root / "sub" / "b.png"), 4).unsqueeze(0)
    expected = sr_scores(upscale_bicubic(degrade(hr, 4), 4), hr, border=4)
    assert float(rows[1]["bicubic_psnr"]) == pytest.approx(expected["psnr"].item(), abs=1e-5)
    assert float(rows[1]["bicubic_ssim"]) == pytest.approx(expected["ssim"].item(), abs=1e-5)
    assert float(rows[2]["bicubic_psnr"]) == pytest.approx((float(rows[0]["bicubic_psnr"])
                                                            + float(rows[1]["bicubic_psnr"])) / 2, abs=1e-5)
    table = (tmp_path / "t.md").read_text()
    assert table == capsys.readouterr().out
    assert "| sub/b.png | 48x64 |" in table and "| **mean** |" in table
    # a file named twice, or again through its folder, is one row; rows of one name show their paths
    make_photo(root / "sub" / "a.png", size=(48, 48))
    assert evaluate_sr.main([str(root / "a.png"), str(root / "a.png"), str(root / "sub"), str(root / "sub" / "b.png"),
                             "--factor", "4", "--out", str(tmp_path / "twice.csv")]) == 0
    assert [r["image"] for r in read_csv(tmp_path / "twice.csv")] == [
        str(root / "a.png"), str(root / "sub" / "a.png"), "b.png", "mean"]


def test_evaluate_leaves_out_the_lr_copies_of_benchmark_folders(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """BasicSR's Set5 (GTmod12/ beside LRbicx4/), SelfExSR's (*_HR.png beside *_LR.png) and DIV2K's
    (DIV2K_valid_LR_bicubic/X4/): only HR scored; folders that merely start with the letters stay."""
    root = tmp_path / "Set5"
    for name in ("GTmod12/baby.png", "LRbicx4/baby.png", "image_SRF_4/img_001_SRF_4_HR.png",
                 "image_SRF_4/img_001_SRF_4_LR.png", "DIV2K_valid_LR_bicubic/X4/0801x4.png", "LRGB/m31.png",
                 "lroom/kitchen.png"):
        make_photo(root / name, size=(48, 48))
    assert evaluate_sr.main([str(root), "--factor", "4", "--out", str(tmp_path / "t.csv")]) == 0
    assert [r["image"] for r in read_csv(tmp_path / "t.csv")] == [
        "GTmod12/baby.png", "LRGB/m31.png", "image_SRF_4/img_001_SRF_4_HR.png", "lroom/kitchen.png", "mean"]
    assert "left out 3 files that are no HR image at x4" in capsys.readouterr().err
    # a file named on the command line is scored whatever its name
    lr_file = root / "LRbicx4" / "baby.png"
    assert evaluate_sr.main([str(lr_file), "--factor", "4", "--out", str(tmp_path / "one.csv")]) == 0
    assert read_csv(tmp_path / "one.csv")[0]["image"] == "baby.png"


def test_evaluate_scores_only_the_hr_images_of_selfexsr_folders_at_the_factor(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SelfExSR's Set5 holds, per factor, the HR image beside other methods' outputs: only the x4
    folder's ``*_HR`` is scored at x4, once; a folder without ``*_HR`` files keeps all of its images."""
    root = tmp_path / "Set5"
    for n in (2, 3, 4):
        for method in ("HR", "LR", "bicubic", "SRCNN", "nearest"):
            make_photo(root / f"image_SRF_{n}" / f"img_001_SRF_{n}_{method}.png", size=(48, 48), seed=n)
    make_photo(root / "plain" / "bird.png", size=(48, 48))
    assert evaluate_sr.main([str(root), "--factor", "4", "--out", str(tmp_path / "t.csv")]) == 0
    assert [r["image"] for r in read_csv(tmp_path / "t.csv")] == [
        "image_SRF_4/img_001_SRF_4_HR.png", "plain/bird.png", "mean"]
    assert "left out 14 files" in capsys.readouterr().err
    # SelfExSR ships no x8 folder: the HR images of the smallest factor's folder are scored, once
    assert evaluate_sr.main([str(root), "--factor", "8", "--out", str(tmp_path / "x8.csv")]) == 0
    assert [r["image"] for r in read_csv(tmp_path / "x8.csv")] == [
        "image_SRF_2/img_001_SRF_2_HR.png", "plain/bird.png", "mean"]


def test_evaluate_scores_one_copy_of_basicsr_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """BasicSR's Set5 holds the HR images twice, GTmod12/ (cropped to a multiple of 12) beside original/: each
    image was scored twice, and the mean was over both. GTmod12 at x4 (12 = 3 x 4), original at x8."""
    root = tmp_path / "Set5"
    for name in ("GTmod12/baby.png", "GTmod12/bird.png", "original/baby.png", "original/bird.png",
                 "LRbicx4/baby.png", "LRbicx4/bird.png"):
        make_photo(root / name, size=(48, 48))
    for factor, scored in ((4, "GTmod12"), (8, "original")):
        assert evaluate_sr.main([str(root), "--factor", str(factor), "--out", str(tmp_path / f"x{factor}.csv")]) == 0
        assert [r["image"] for r in read_csv(tmp_path / f"x{factor}.csv")] == [
            f"{scored}/baby.png", f"{scored}/bird.png", "mean"]
        assert "left out 4 files" in capsys.readouterr().err


def test_evaluate_models_against_bicubic(tmp_path: Path) -> None:
    root = hr_folder(tmp_path / "hr")
    x4 = sr_model_file(tmp_path / "x4.safetensors")
    other = sr_model_file(tmp_path / "other" / "x4.safetensors")
    assert evaluate_sr.main([str(root / "a.png"), "--model", str(x4), "--model", str(other),
                             "--out", str(tmp_path / "t.csv")]) == 0
    row = read_csv(tmp_path / "t.csv")[0]
    assert {f"{x4}_psnr", f"{other}_ssim", "bicubic_psnr"} <= set(row)  # same stems: full paths
    # a model file named like the baseline keeps its own column, and the baseline its scores
    named_bicubic = sr_model_file(tmp_path / "bicubic.safetensors")
    assert evaluate_sr.main([str(root / "a.png"), "--model", str(named_bicubic), "--out", str(tmp_path / "b.csv")]) == 0
    scored = read_csv(tmp_path / "b.csv")[0]
    assert float(scored["bicubic_psnr"]) == pytest.approx(float(row["bicubic_psnr"]), abs=1e-6)
    assert float(scored[f"{named_bicubic}_psnr"]) == pytest.approx(float(row[f"{x4}_psnr"]), abs=1e-4)
    assert evaluate_sr.main([str(root / "a.png"), "--model", str(x4), "--model", str(x4)]) == 2
    (tmp_path / "link.safetensors").symlink_to(x4)  # the same file under another name: not a second column
    link = str(tmp_path / "link.safetensors")
    assert evaluate_sr.main([str(root / "a.png"), "--model", str(x4), "--model", link]) == 2
    hr = modcrop(load_rgb(root / "a.png"), 4).unsqueeze(0)
    with torch.no_grad():
        output = read_model(x4).net(degrade(hr, 4))
    assert float(row[f"{x4}_psnr"]) == pytest.approx(sr_scores(output, hr, 4)["psnr"].item(), abs=1e-4)


def test_evaluate_reports_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = hr_folder(tmp_path / "hr")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    make_photo(root / "tiny.png", size=(12, 12))
    assert evaluate_sr.main([str(root), "--factor", "4"]) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "tiny.png: 12x12 is too small to score at x4 (needs 20 px a side)" in err
    # the image's own size, not what is left once cropped to a multiple of the factor
    make_photo(tmp_path / "thin" / "strip.png", size=(10, 30))
    assert evaluate_sr.main([str(tmp_path / "thin"), "--factor", "8"]) == 2
    assert "strip.png: 10x30 is too small" in capsys.readouterr().err
    # a mistyped input is named and the others are still scored
    assert evaluate_sr.main([str(root / "a.png"), str(tmp_path / "nope.png"), "--factor", "4",
                             "--out", str(tmp_path / "partial.csv")]) == 1
    assert f"no such image file or folder: '{tmp_path / 'nope.png'}'" in capsys.readouterr().err
    assert [r["image"] for r in read_csv(tmp_path / "partial.csv")] == ["a.png", "mean"]
    too_long = tmp_path / ("n" * 300 + ".png")  # pathlib raises ENAMETOOLONG where it says False for a missing file
    assert evaluate_sr.main([str(root / "a.png"), str(too_long), "--factor", "4"]) == 1
    assert "File name too long" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_sr.main([str(root / "a.png"), "--factor", "4", "--out", str(too_long.with_suffix(".md"))])
    assert "cannot write --out" in capsys.readouterr().err
    longest = tmp_path / "new" / ("n" * 251 + ".md")  # a name the system takes, whose temporary name would not be
    assert evaluate_sr.main([str(root / "a.png"), "--factor", "4", "--out", str(longest)]) == 0
    assert "| a.png |" in longest.read_text()
    capsys.readouterr()
    for bad in ("0", "-5"):
        with pytest.raises(SystemExit):
            evaluate_sr.main([str(root / "a.png"), "--factor", "4", "--max-pixels", bad])
        assert f"--max-pixels must be at least 1, got {bad}" in capsys.readouterr().err
    from PIL import Image

    from tests.helpers import png_with_header_size

    (tmp_path / "panorama.png").write_bytes(png_with_header_size(20_000, 10_000))  # 200 MP: beyond Pillow's 179
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the command raises it: put back after
        assert evaluate_sr.main([str(tmp_path / "panorama.png"), "--factor", "4", "--max-pixels", "250000000"]) == 2
    err = capsys.readouterr().err  # past Pillow's limit to its (missing) pixels: ours alone decides
    assert "panorama.png" in err and "bomb" not in err and "exceeds" not in err, err
    assert evaluate_sr.main([str(root / "a.png"), "--factor", "4", "--device", "bogus"]) == 2  # no model: still checked
    assert "unknown device 'bogus'" in capsys.readouterr().err
    assert evaluate_sr.main([str(root)]) == 2
    assert "--factor is required without --model" in capsys.readouterr().err
    for factor in ("-4", "1"):
        assert evaluate_sr.main([str(root), "--factor", factor]) == 2
        assert f"--factor must be 2 or more, got {factor}" in capsys.readouterr().err
    x8 = sr_model_file(tmp_path / "x8.safetensors", factor=8)
    assert evaluate_sr.main([str(root), "--model", str(x8), "--factor", "4"]) == 2
    assert "disagree on the factor: [4, 8]" in capsys.readouterr().err
    assert evaluate_sr.main([str(tmp_path / "nowhere"), "--factor", "4"]) == 2
    with pytest.raises(SystemExit):
        evaluate_sr.main([str(root), "--factor", "4", "--out", "table.txt"])
    capsys.readouterr()
    # an --out that cannot be written is refused before any scoring, naming it
    for out, reason in ((root / "a.png" / "t.md", "is a file, not a folder"), (root / "sub.md", "it is a folder")):
        (root / "sub.md").mkdir(exist_ok=True)
        with pytest.raises(SystemExit) as stop:
            evaluate_sr.main([str(root), "--factor", "4", "--out", str(out)])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert f"cannot write --out {str(out)!r}" in err and reason in err and "bicubic" not in err


@pytest.mark.parametrize(("signum", "status", "how"), [(signal.SIGINT, 130, "interrupted"),
                                                     (signal.SIGTERM, 143, "terminated")])
def test_evaluate_stopped_while_scoring_is_one_line_and_writes_no_table(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        signum: signal.Signals, status: int, how: str) -> None:
    """Ctrl-C or SIGTERM while an image is scored: the line and exit status of the other commands, not a
    traceback of wherever torch was (or SIGTERM's silent death)."""
    root = hr_folder(tmp_path / "hr")

    monkeypatch.setattr("stylenet.metrics.sr_scores", lambda *args, **kwargs: signal_self(signum))
    with stops_handled_by("stylenet-evaluate-sr"):
        code = evaluate_sr.main([str(root), "--factor", "4", "--out", str(tmp_path / "t.md")])
    assert code == status
    assert capsys.readouterr().err == f"stylenet-evaluate-sr: {how}; no table written\n"
    assert not (tmp_path / "t.md").exists()


def test_evaluate_cli_imports_neither_lightning_nor_hydra(tmp_path: Path) -> None:
    root = hr_folder(tmp_path / "hr")
    code = ("import sys; from stylenet.cli.evaluate_sr import main;"
            "status = main([sys.argv[1], '--factor', '4']);"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'hydra')];"
            "print(heavy); sys.exit(status or bool(heavy))")
    result = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
