"""Tests for stylenet.image: every image is generated here, in tmp_path; no network."""

from __future__ import annotations

import functools
import io
import os
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms, ImageFile

from stylenet import StylenetError
from stylenet import image as im_mod
from stylenet.image import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageError,
    LoadedImage,
    check_output_path,
    from_pil,
    list_images,
    load_image,
    load_rgb,
    read_image_size,
    save_image,
    to_pil,
)
from stylenet.image.colour import luma
from stylenet.image.read import orient
from tests.helpers import BAD_FILES, encoded, png_with_header_size

# ------------------------------------------------------------------------------------------- helpers


def _save(path: Path, img: Image.Image, **kw) -> Path:
    img.save(path, **kw)
    return path


def _px(loaded: LoadedImage, x: int, y: int) -> tuple[int, int, int]:
    """RGB of pixel (x, y) as 0..255 ints."""
    return tuple(round(float(v) * 255) for v in loaded.rgb[:, y, x])


def _row(mode: str, values: list, size: tuple[int, int] | None = None) -> Image.Image:
    img = Image.new(mode, size or (len(values), 1))
    for i, v in enumerate(values):
        img.putpixel((i, 0), v)
    return img


@functools.cache
def _srgb_icc() -> bytes:
    """One sRGB profile for the whole run: each one made records the second it was made, so two made a
    second apart differ in their bytes."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _assert_one_line_naming(err: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(err.value)
    assert isinstance(err.value, ImageError)
    assert path.name in msg
    assert "\n" not in msg and "\r" not in msg
    return msg


# ------------------------------------------------------------------------------- mode conversions


def test_luma_has_bt601_weights() -> None:
    """Y of pure red, green and blue is 0.299, 0.587 and 0.114 (BT.601, JPEG's YCbCr)."""
    primaries = torch.eye(3).view(3, 3, 1, 1)  # (3 images, RGB, 1, 1)
    torch.testing.assert_close(luma(primaries).flatten(), torch.tensor([0.299, 0.587, 0.114]))


def test_rgb_png_values_and_types(tmp_path):
    p = _save(tmp_path / "rgb.png", _row("RGB", [(255, 0, 0), (0, 128, 7)]))
    out = load_image(p)
    assert out.rgb.dtype == torch.float32 and out.rgb.shape == (3, 1, 2)
    assert _px(out, 0, 0) == (255, 0, 0) and _px(out, 1, 0) == (0, 128, 7)
    assert out.alpha is None and out.was_gray is False and out.icc_profile is None
    assert torch.equal(load_rgb(p), out.rgb)


def test_mode_1(tmp_path):
    out = load_image(_save(tmp_path / "one.png", _row("1", [0, 255, 0])))
    assert [_px(out, x, 0) for x in range(3)] == [(0, 0, 0), (255, 255, 255), (0, 0, 0)]
    assert out.was_gray and out.alpha is None


def test_mode_l(tmp_path):
    out = load_image(_save(tmp_path / "l.png", _row("L", [0, 128, 255])))
    assert out.rgb[:, 0, 1].tolist() == pytest.approx([128 / 255] * 3)
    assert out.was_gray and out.alpha is None


def test_mode_la_keeps_alpha(tmp_path):
    out = load_image(_save(tmp_path / "la.png", _row("LA", [(100, 50), (200, 255)])))
    assert _px(out, 0, 0) == (100, 100, 100) and _px(out, 1, 0) == (200, 200, 200)
    assert out.alpha.dtype == torch.uint8 and out.alpha.tolist() == [[[50, 255]]]
    assert out.was_gray


def test_mode_la_premultiplied_from_a_caller_is_unpremultiplied():
    from stylenet.image.read import decode_pil

    premultiplied = _row("LA", [(100, 128), (200, 255)]).convert("La")  # what Pillow's resizing hands back
    rgb, alpha, was_gray = decode_pil(premultiplied)
    assert was_gray and np.asarray(alpha).ravel().tolist() == [128, 255]
    assert np.abs(np.asarray(rgb)[0, :, 0] * 255 - [100, 200]).max() <= 1.5  # premultiplied would read 50


def test_mode_p_without_transparency(tmp_path):
    img = _row("P", [0, 1])
    img.putpalette([255, 0, 0, 0, 0, 255])
    out = load_image(_save(tmp_path / "p.png", img))
    assert _px(out, 0, 0) == (255, 0, 0) and _px(out, 1, 0) == (0, 0, 255)
    assert out.alpha is None and not out.was_gray


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_mode_p_with_index_transparency(tmp_path, suffix):
    img = _row("P", [0, 1, 0])
    img.putpalette([255, 0, 0, 0, 0, 255])
    out = load_image(_save(tmp_path / f"pt{suffix}", img, transparency=1))
    assert out.alpha is not None and out.alpha.tolist() == [[[255, 0, 255]]]
    assert _px(out, 0, 0) == (255, 0, 0)


def test_mode_p_with_per_index_alpha(tmp_path):
    img = _row("P", [0, 1, 2])
    img.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    out = load_image(_save(tmp_path / "pa.png", img, transparency=bytes([255, 0, 77])))
    assert out.alpha.tolist() == [[[255, 0, 77]]]
    assert [_px(out, x, 0) for x in range(3)] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def test_mode_pa(tmp_path):
    img = Image.new("PA", (2, 1))
    img.putpalette([10, 20, 30, 200, 100, 0])
    img.putpixel((0, 0), (0, 255))
    img.putpixel((1, 0), (1, 7))
    p = _save(tmp_path / "pa.tif", img)
    assert Image.open(p).mode == "PA"
    out = load_image(p)
    assert _px(out, 0, 0) == (10, 20, 30) and _px(out, 1, 0) == (200, 100, 0)
    assert out.alpha.tolist() == [[[255, 7]]]


def test_mode_rgba(tmp_path):
    out = load_image(_save(tmp_path / "rgba.png", _row("RGBA", [(1, 2, 3, 0), (250, 251, 252, 128)])))
    assert _px(out, 0, 0) == (1, 2, 3) and _px(out, 1, 0) == (250, 251, 252)
    assert out.alpha.tolist() == [[[0, 128]]]


@pytest.mark.parametrize(
    ("mode", "key", "values", "expected"),
    [
        ("L", 100, [0, 100, 200], [255, 0, 255]),
        ("RGB", (1, 2, 3), [(1, 2, 3), (4, 5, 6)], [0, 255]),
    ],
)
def test_png_colour_key_transparency(tmp_path, mode, key, values, expected):
    out = load_image(_save(tmp_path / "key.png", _row(mode, values), transparency=key))
    assert out.alpha.tolist() == [[expected]]


def test_mode_cmyk_pure_cyan(tmp_path):
    p = _save(tmp_path / "cmyk.tif", _row("CMYK", [(255, 0, 0, 0), (0, 0, 0, 255), (0, 255, 255, 0)]))
    assert Image.open(p).mode == "CMYK"
    out = load_image(p)
    assert [_px(out, x, 0) for x in range(3)] == [(0, 255, 255), (0, 0, 0), (255, 0, 0)]
    assert not out.was_gray and out.alpha is None


def test_mode_ycbcr(tmp_path):
    p = _save(tmp_path / "ycc.tif", _row("YCbCr", [(255, 128, 128), (0, 128, 128), (76, 85, 255)]))
    assert Image.open(p).mode == "YCbCr"
    out = load_image(p)
    assert _px(out, 0, 0) == (255, 255, 255) and _px(out, 1, 0) == (0, 0, 0)
    r, g, b = _px(out, 2, 0)  # BT.601 red
    assert r > 240 and g < 10 and b < 10


def test_16bit_png_midgrey_is_half_not_clipped(tmp_path):
    img = Image.fromarray(np.array([[0, 1000, 32768, 65535]], dtype=np.uint16))
    p = _save(tmp_path / "g16.png", img)
    assert Image.open(p).mode == "I;16"
    out = load_image(p)
    assert out.rgb[0, 0].tolist() == pytest.approx([0, 1000 / 65535, 32768 / 65535, 1.0], abs=1e-6)
    assert abs(float(out.rgb[1, 0, 2]) - 0.5) < 1e-4  # 32768 -> ~0.5, not clipped to 1
    assert out.was_gray and out.alpha is None


def test_16bit_big_endian_tiff(tmp_path):
    img = Image.new("I;16B", (2, 1))
    img.putpixel((0, 0), 32768)
    img.putpixel((1, 0), 65535)
    p = _save(tmp_path / "g16b.tif", img)
    assert Image.open(p).mode == "I;16B"
    out = load_image(p)
    assert out.rgb[:, 0, 0].tolist() == pytest.approx([32768 / 65535] * 3, abs=1e-6)
    assert out.rgb[:, 0, 1].tolist() == pytest.approx([1.0] * 3)
    assert out.was_gray


def test_16bit_colour_key_gives_16bit_alpha(tmp_path):
    img = Image.fromarray(np.array([[0, 1000, 40000]], dtype=np.uint16))
    out = load_image(_save(tmp_path / "k16.png", img, transparency=1000))
    assert out.alpha.dtype == torch.uint16
    assert out.alpha.tolist() == [[[65535, 0, 65535]]]


def test_mode_i_from_16bit_pgm(tmp_path):
    img = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    p = _save(tmp_path / "g16.pgm", img)
    assert Image.open(p).mode == "I"
    out = load_image(p)
    assert out.rgb[0, 0].tolist() == pytest.approx([0.0, 32768 / 65535, 1.0], abs=1e-6)
    assert out.was_gray


def test_mode_i_beyond_16bit_scales_by_max(tmp_path):
    p = _save(tmp_path / "i32.tif", _row("I", [-5, 100000, 200000]))
    assert Image.open(p).mode == "I"
    assert load_image(p).rgb[2, 0].tolist() == pytest.approx([0.0, 0.5, 1.0])


@pytest.mark.parametrize(
    ("values", "expected"),
    [([0.0, 0.25, 1.0], [0.0, 0.25, 1.0]), ([0.0, 2.0, 4.0], [0.0, 0.5, 1.0]), ([-1.0, 0.5], [0.0, 0.5])],
)
def test_mode_f(tmp_path, values, expected):
    p = _save(tmp_path / "f.tif", _row("F", values))
    assert Image.open(p).mode == "F"
    out = load_image(p)
    assert out.rgb[1, 0].tolist() == pytest.approx(expected)
    assert out.was_gray


def test_gif_and_ppm_read(tmp_path):
    out = load_image(_save(tmp_path / "a.ppm", _row("RGB", [(9, 8, 7)])))
    assert _px(out, 0, 0) == (9, 8, 7)
    out = load_image(_save(tmp_path / "a.gif", _row("RGB", [(255, 0, 0), (0, 0, 255)])))
    assert _px(out, 0, 0) == (255, 0, 0) and _px(out, 1, 0) == (0, 0, 255)


# ------------------------------------------------------------------------------------------- EXIF


def _oriented(tmp_path: Path, suffix: str) -> Path:
    """A 40 wide x 16 high image, red 8x8 block at the stored top-left, EXIF orientation 6."""
    arr = np.zeros((16, 40, 3), dtype=np.uint8)
    arr[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(tmp_path / f"rot{suffix}", Image.fromarray(arr), exif=exif.tobytes())


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_exif_orientation_6_rotates(tmp_path, suffix):
    p = _oriented(tmp_path, suffix)
    out = load_image(p)
    assert out.rgb.shape == (3, 40, 16)  # displayed upright: 16 wide, 40 high
    r, g, b = _px(out, 16 - 3, 3)  # stored top-left ends at displayed top-right (90 deg clockwise)
    assert r > 200 and g < 40 and b < 40
    r, g, b = _px(out, 2, 3)
    assert r < 40
    assert read_image_size(p) == (16, 40)
    assert read_image_size(p, apply_exif=False) == (40, 16)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16"])
@pytest.mark.parametrize("compression", [None, "tiff_lzw"])
def test_a_tiff_of_any_mode_is_turned_by_its_orientation_as_its_pixels_say(tmp_path: Path, mode: str,
                                                                          compression: str | None) -> None:
    """Each orientation of a TIFF reads as the unturned file's pixels turned (:func:`orient`). Pillow 13
    turns TIFFs itself as it loads them, and scrambled uncompressed ones in these modes (5-8: the
    transposing orientations), which were stylized with exit 0."""
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    image = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).convert(mode) if mode == "I;16" \
        else Image.fromarray(rgb).convert(mode)
    image.save(stored := tmp_path / "stored.tif", compression=compression)
    upright = load_image(stored).rgb.numpy().transpose(1, 2, 0)
    for orientation in range(1, 9):
        image.save(turned := tmp_path / f"turned{orientation}.tif", compression=compression,
                   exif=_exif(orientation))
        assert np.array_equal(load_image(turned).rgb.numpy().transpose(1, 2, 0), orient(upright, orientation)), \
            orientation


def test_read_image_size_does_not_decode(tmp_path):
    """A PNG with an intact header but missing pixel data still reports its size."""
    buf = io.BytesIO()
    Image.new("RGB", (300, 200), (5, 5, 5)).save(buf, "PNG")
    p = tmp_path / "cut.png"
    p.write_bytes(buf.getvalue()[:60])
    assert read_image_size(p) == (300, 200)
    with pytest.raises(ImageError):
        load_image(p)


# --------------------------------------------------------------------------- alpha / ICC / round trip


def test_rgba_alpha_round_trips_bit_exactly(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(9, 11, 4), dtype=np.uint8)
    first = load_image(_save(tmp_path / "in.png", Image.fromarray(arr)))
    assert first.alpha.shape == (1, 9, 11)
    assert np.array_equal(first.alpha[0].numpy(), arr[..., 3])
    out = save_image(tmp_path / "out.png", first.rgb, alpha=first.alpha)
    second = load_image(out)
    assert torch.equal(second.alpha, first.alpha)
    assert torch.equal(second.rgb, first.rgb)
    assert np.array_equal(np.asarray(Image.open(out)), arr)


def test_webp_keeps_alpha_and_jpeg_drops_it(tmp_path):
    rng = np.random.default_rng(1)
    rgb = torch.rand(3, 16, 16)
    alpha = torch.from_numpy(rng.integers(0, 256, size=(1, 16, 16), dtype=np.uint8))
    webp = load_image(save_image(tmp_path / "o.webp", rgb, alpha=alpha))
    assert torch.equal(webp.alpha, alpha)
    jpg = save_image(tmp_path / "o.jpg", rgb, alpha=alpha)
    assert Image.open(jpg).mode == "RGB" and load_image(jpg).alpha is None


def test_png_round_trip_is_pixel_exact(tmp_path):
    arr = np.random.default_rng(2).integers(0, 256, size=(13, 17, 3), dtype=np.uint8)
    src = _save(tmp_path / "src.png", Image.fromarray(arr))
    dst = save_image(tmp_path / "dst.png", load_image(src).rgb)
    assert np.array_equal(np.asarray(Image.open(dst)), arr)
    assert torch.equal(load_rgb(dst), load_rgb(src))


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tif"])
def test_icc_profile_passes_through(tmp_path, suffix):
    icc = _srgb_icc()
    src = _save(tmp_path / "src.png", Image.new("RGB", (4, 4), (10, 200, 30)), icc_profile=icc)
    loaded = load_image(src)
    assert loaded.icc_profile == icc
    out = save_image(tmp_path / f"out{suffix}", loaded.rgb, icc_profile=loaded.icc_profile)
    assert load_image(out).icc_profile == icc
    assert load_image(save_image(tmp_path / f"plain{suffix}", loaded.rgb)).icc_profile is None


def test_a_grey_profile_is_kept_for_grey_files_only(tmp_path):
    gray_icc = bytearray(_srgb_icc())
    gray_icc[16:20] = b"GRAY"
    p = _save(tmp_path / "g.png", Image.new("L", (2, 2), 7), icc_profile=bytes(gray_icc))
    assert Image.open(p).info["icc_profile"] == bytes(gray_icc)
    loaded = load_image(p)
    assert loaded.icc_profile == bytes(gray_icc)
    for bits in (8, 16):  # written grey: kept; in colour: left out, it would misdescribe the pixels
        grey = save_image(tmp_path / f"grey{bits}.png", loaded.rgb, icc_profile=loaded.icc_profile, gray=True,
                          bits=bits)
        assert load_image(grey).icc_profile == bytes(gray_icc)
        colour = save_image(tmp_path / f"colour{bits}.png", loaded.rgb, icc_profile=loaded.icc_profile, bits=bits)
        assert Image.open(colour).info.get("icc_profile") is None
    coloured = _save(tmp_path / "c.png", Image.new("RGB", (2, 2), 7), icc_profile=bytes(gray_icc))
    assert load_image(coloured).icc_profile is None  # a colour photo's grey profile: of no use
    cmyk = bytearray(_srgb_icc())
    cmyk[16:20] = b"CMYK"
    assert load_image(_save(tmp_path / "k.png", Image.new("L", (2, 2), 7), icc_profile=bytes(cmyk))).icc_profile \
        is None


def test_sixteen_bit_grey_written_grey_is_its_luma(tmp_path):
    """gray=True of colour pixels: the luma Pillow's L gives at 8 bits, at 16 bits too (the red channel was)."""
    rgb = torch.zeros(3, 2, 2)
    rgb[0] = 1.0
    rgb[1, 0] = 0.5
    expected = (0.299 + 0.587 * np.array([0.5, 0.0]))[:, None].repeat(2, 1)
    eight = np.asarray(Image.open(save_image(tmp_path / "g8.png", rgb, gray=True)), dtype=float) / 255
    sixteen = load_image(save_image(tmp_path / "g16.png", rgb, gray=True, bits=16))
    assert np.abs(eight - expected).max() <= 0.5 / 255
    assert sixteen.bits == 16 and np.abs(sixteen.rgb[0].numpy() - expected).max() <= 1 / 65535


@pytest.mark.parametrize("alpha", [False, True])
def test_a_16_bit_min_is_white_tiff_reads_as_its_8_bit_version(tmp_path, alpha):
    """Photometric 0 (MinIsWhite: 0 is white, as scanners write): Pillow turns an 8-bit file's samples round,
    not a 16-bit one's, which came out as its negative."""
    import tifffile

    levels = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1365)
    tifffile.imwrite(tmp_path / "w8.tif", (levels >> 8).astype(np.uint8), photometric="miniswhite")
    samples = np.stack([levels, levels[::-1]], -1) if alpha else levels
    tifffile.imwrite(tmp_path / "w16.tif", samples, photometric="miniswhite", extrasamples=[2] if alpha else None)
    eight, sixteen = load_image(tmp_path / "w8.tif"), load_image(tmp_path / "w16.tif")
    assert sixteen.bits == 16 and sixteen.was_gray
    np.testing.assert_allclose(sixteen.rgb[0].numpy(), 1.0 - levels / 65535, atol=1e-6)
    assert (sixteen.rgb - eight.rgb).abs().max() <= 1 / 255
    if alpha:  # the alpha stays as stored
        assert torch.equal(sixteen.alpha[0], torch.from_numpy(levels[::-1].copy()))
        return
    with Image.open(tmp_path / "w16.tif") as opened:  # a PIL image of the file, through the Python API
        assert (from_pil(opened).rgb - sixteen.rgb).abs().max() == 0


@pytest.mark.parametrize("layout", ["big-endian", "float"])
def test_other_min_is_white_grey_tiffs_read_as_their_min_is_black_twins(tmp_path, layout):
    """A big-endian 16-bit MinIsWhite grey, which Pillow cannot open, was refused as a layout to convert; a
    float one was read as its negative."""
    import tifffile

    levels = np.arange(48, dtype=np.uint16).reshape(6, 8) * 1365
    samples = levels if layout == "big-endian" else (levels / 65535).astype(np.float32)
    options = {"byteorder": ">"} if layout == "big-endian" else {}
    tifffile.imwrite(tmp_path / "white.tif", samples, photometric="miniswhite", **options)
    tifffile.imwrite(tmp_path / "black.tif", samples, photometric="minisblack", **options)
    white, black = load_image(tmp_path / "white.tif"), load_image(tmp_path / "black.tif")
    assert white.bits == black.bits == 16 and white.was_gray
    torch.testing.assert_close(white.rgb, 1.0 - black.rgb, atol=1e-6, rtol=0)
    assert read_image_size(tmp_path / "white.tif") == (8, 6)
    tifffile.imwrite(tmp_path / "pages.tif", np.stack([samples, samples]), photometric="miniswhite", **options)
    assert load_image(tmp_path / "pages.tif").frames == 2  # a scanner's pages: said, not passed over


def test_an_xmp_orientation_turns_the_size_read_from_the_header(tmp_path):
    """read_image_size matches load_image for a PNG whose only orientation is in its XMP packet."""
    from PIL import PngImagePlugin

    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           '<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    path = _save(tmp_path / "x.png", Image.new("RGB", (60, 40)), pnginfo=info)
    assert load_image(path).rgb.shape == (3, 60, 40)
    assert read_image_size(path) == (40, 60)


# ------------------------------------------------------------------------------------------ to_pil


def test_to_pil_rounds_and_clamps():
    rgb = torch.tensor([[[-0.5, 0.2, 1.5, float("nan")]]] * 3)
    img = to_pil(rgb)
    assert img.mode == "RGB" and img.size == (4, 1)
    assert np.asarray(img)[0, :, 0].tolist() == [0, 51, 255, 0]
    assert to_pil(rgb[None]).size == (4, 1)  # batch of one accepted
    k = torch.arange(256, dtype=torch.float32).reshape(1, 1, 256).expand(3, 1, 256) / 255
    assert np.asarray(to_pil(k))[0, :, 1].tolist() == list(range(256))


def test_to_pil_alpha_dtypes():
    rgb = torch.zeros(3, 1, 3)
    a16 = torch.tensor([[[0, 32896, 65535]]], dtype=torch.uint16)
    assert np.asarray(to_pil(rgb, a16))[0, :, 3].tolist() == [0, 128, 255]
    af = torch.tensor([[0.0, 0.5, 2.0]])
    img = to_pil(rgb, af)
    assert img.mode == "RGBA" and np.asarray(img)[0, :, 3].tolist() == [0, 128, 255]
    with pytest.raises(ValueError):
        to_pil(rgb, torch.zeros(1, 2, 3, dtype=torch.uint8))
    with pytest.raises(ValueError):
        to_pil(torch.zeros(4, 2, 2))


# ------------------------------------------------------------------------------ decompression bombs


@pytest.mark.parametrize(
    ("size", "max_pixels"),
    [(20000, DEFAULT_MAX_PIXELS), (11000, DEFAULT_MAX_PIXELS), (2000, 1_000_000), (20000, None)],
)
def test_bomb_header_refused_fast_without_global_changes(tmp_path, size, max_pixels):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_with_header_size(size, size))
    assert p.stat().st_size < 100
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError) as err:
            load_image(p, max_pixels=max_pixels)
    assert time.perf_counter() - start < 0.5
    _assert_one_line_naming(err, p)
    # beyond Pillow's own refusal (179 MP) too: the limit in force and the settings that raise it
    assert (f"{size * size} pixels exceeds the limit of {max_pixels} (a possible decompression bomb; a larger "
            "limit admits it: --max-pixels" in str(err.value)) is (max_pixels is not None)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert before == (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)


def test_max_pixels_applies_to_real_images(tmp_path):
    p = _save(tmp_path / "big.png", Image.new("RGB", (100, 100)))
    with pytest.raises(ImageError, match="exceeds"):
        load_image(p, max_pixels=5000)
    assert load_image(p, max_pixels=10_000).rgb.shape == (3, 100, 100)


def test_read_image_size_of_bomb_header_is_quiet(tmp_path):
    p = tmp_path / "big.png"
    p.write_bytes(png_with_header_size(10000, 10000))  # above Pillow's warning threshold
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image_size(p) == (10000, 10000)


# ------------------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_raise_one_line_image_error(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(BAD_FILES[name]())
    with pytest.raises(ImageError) as err:
        load_image(p)
    msg = _assert_one_line_naming(err, p)
    if name.startswith("truncated"):
        assert "truncated" in msg.split("': ", 1)[1]  # the reason, not the file's name
    with pytest.raises(ImageError):
        read_image_size(p) if name in ("zero_bytes.png", "random_bytes.jpg") else load_rgb(p)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / "nope.png")
    assert "no such file" in _assert_one_line_naming(err, tmp_path / "nope.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageError) as err:
        load_image(tmp_path / "folder.png")
    assert "directory" in _assert_one_line_naming(err, tmp_path / "folder.png")


def test_file_name_with_newline_stays_one_line(tmp_path):
    p = tmp_path / "two\nlines.png"
    p.write_bytes(b"garbage")
    with pytest.raises(ImageError) as err:
        load_image(p)
    assert "\n" not in str(err.value) and "lines.png" in str(err.value)


def _seed_files() -> list[bytes]:
    seeds = [encoded("PNG", 4)[:400], encoded("JPEG", 3)[:600]]
    for fmt, mode in [
        ("PNG", "RGBA"),
        ("GIF", "P"),
        ("BMP", "RGB"),
        ("TIFF", "CMYK"),
        ("PPM", "L"),
        ("WEBP", "RGB"),
    ]:
        buf = io.BytesIO()
        Image.new(mode, (5, 3)).save(buf, fmt)
        seeds.append(buf.getvalue())
    return seeds


_SEEDS = _seed_files()


@st.composite
def _file_bytes(draw) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


# Mangled TIFF/EXIF tags make Pillow warn "Truncated File Read"; the outcome is what we test.
@pytest.mark.filterwarnings("ignore::UserWarning")
@settings(max_examples=50, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(data=_file_bytes())
def test_fuzz_load_returns_or_raises_image_error(tmp_path_factory, data):
    p = tmp_path_factory.getbasetemp() / "fuzz.jpg"
    p.write_bytes(data)
    try:
        out = load_image(p, max_pixels=1_000_000)
    except ImageError as err:
        assert "fuzz.jpg" in str(err) and "\n" not in str(err)
    else:
        assert out.rgb.dtype == torch.float32 and out.rgb.shape[0] == 3
        assert float(out.rgb.min()) >= 0.0 and float(out.rgb.max()) <= 1.0


# ------------------------------------------------------------------------------------------ saving


def test_save_creates_parents_and_leaves_no_temp(tmp_path, monkeypatch):
    synced, replaced = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(
        os, "replace", lambda a, b: (replaced.append((Path(a), Path(b))), real_replace(a, b))[1]
    )
    target = tmp_path / "a" / "b" / "out.png"
    assert save_image(target, torch.rand(3, 5, 6)) == target
    assert synced and len(replaced) == 1
    tmp, final = replaced[0]
    assert final == target and tmp.parent == target.parent
    assert tmp.name.startswith(".out.") and tmp.name.endswith(".tmp.png")  # hidden, format kept
    assert sorted(os.listdir(target.parent)) == ["out.png"]


def test_save_overwrite_false_refuses(tmp_path):
    target = save_image(tmp_path / "out.png", torch.zeros(3, 2, 2))
    before = target.read_bytes()
    with pytest.raises(ImageError) as err:
        save_image(target, torch.ones(3, 2, 2), overwrite=False)
    _assert_one_line_naming(err, target)
    assert target.read_bytes() == before
    save_image(target, torch.ones(3, 2, 2))  # overwrite=True (default) replaces
    assert _px(load_image(target), 0, 0) == (255, 255, 255)
    fresh = save_image(tmp_path / "fresh.png", torch.ones(3, 2, 2), overwrite=False)
    assert sorted(os.listdir(tmp_path)) == ["fresh.png", "out.png"] and fresh.exists()


@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError])
def test_save_failure_removes_temp_and_keeps_old_file(tmp_path, monkeypatch, exc):
    target = save_image(tmp_path / "out.png", torch.zeros(3, 2, 2))
    before = target.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"partial")
        raise exc("boom")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(KeyboardInterrupt if exc is KeyboardInterrupt else ImageError):
        save_image(target, torch.ones(3, 2, 2))
    assert os.listdir(tmp_path) == ["out.png"]
    assert target.read_bytes() == before


def test_check_output_path(tmp_path):
    with pytest.raises(ImageError) as err:
        check_output_path(tmp_path / "out.xyz")
    assert ".xyz" in _assert_one_line_naming(err, tmp_path / "out.xyz")
    with pytest.raises(ImageError):
        check_output_path(tmp_path / "no_extension")
    for name in ["a.png", "b.JPG", "c.jpeg", "d.webp", "e.bmp", "f.tif", "g.TIFF"]:
        check_output_path(tmp_path / name)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageError):
        check_output_path(tmp_path / "dir.png")
    with pytest.raises(ImageError):  # refused before anything is created
        save_image(tmp_path / "new" / "out.xyz", torch.zeros(3, 2, 2))
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("suffix", [".jpg", ".JPEG", ".bmp", ".tiff", ".webp"])
def test_save_formats_follow_extension(tmp_path, suffix):
    rgb = torch.full((3, 8, 8), 0.5)
    out = save_image(tmp_path / f"o{suffix}", rgb, quality=90)
    expected = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tiff": "TIFF", ".webp": "WEBP"}
    assert Image.open(out).format == expected[suffix.lower()]
    assert torch.allclose(load_rgb(out), rgb, atol=3 / 255)


# ------------------------------------------------------------------------------------- list_images


def test_list_images_recursive_case_insensitive_sorted(tmp_path):
    names = [
        "b.PNG",
        "a/c.jpg",
        "a/deep/z.JpEg",
        "a/deep/y.webp",
        "d.tif",
        "e.pgm",
        "notes.txt",
        "x.png.bak",
        ".hidden.png",
        ".cache/k.png",
    ]
    for n in names:
        (tmp_path / n).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / n).write_bytes(b"")
    got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert got == ["a/c.jpg", "a/deep/y.webp", "a/deep/z.JpEg", "b.PNG", "d.tif", "e.pgm"]
    assert list_images(str(tmp_path / "b.PNG")) == [tmp_path / "b.PNG"]
    with pytest.raises(ImageError) as err:
        list_images(tmp_path / "missing")
    assert "missing" in str(err.value)


def test_list_images_follows_links_to_folders_once_each(tmp_path: Path) -> None:
    """A dataset assembled from links: a linked folder is searched, a second link to it and a link
    loop are not (each real folder once, the first in sorted order)."""
    root, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    for path in (root / "a" / "x.png", elsewhere / "y.jpg"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    (root / "b").symlink_to(root / "a")  # the same photos again
    (root / "a" / "loop").symlink_to(root)  # a loop
    (root / "linked").symlink_to(elsewhere)
    assert [p.relative_to(root).as_posix() for p in list_images(root)] == ["a/x.png", "linked/y.jpg"]


def test_list_images_can_leave_out_run_folders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``data.root=.`` where runs are written: an earlier run's figure, its style picture and a sweep's contact
    sheet are not photos (a folder holding ``.hydra/`` or ``multirun.yaml`` is Hydra's); the root itself is
    the user's choice even if it is one."""
    names = ["photo.jpg", "outputs/a/2026/.hydra/config.yaml", "outputs/a/2026/figure.png",
             "outputs/a/2026/quality/style.png", "outputs/multirun/x/multirun.yaml", "outputs/multirun/x/sheet.png",
             "outputs/multirun/x/0/.hydra/config.yaml", "outputs/multirun/x/0/figure.png", "outputs/kept.png"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert len(list_images(tmp_path)) == 6
    with caplog.at_level("WARNING"):
        got = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, skip_runs=True)]
    assert got == ["outputs/kept.png", "photo.jpg"]
    assert "left out 2 folder(s)" in caplog.text and "outputs/a/2026" in caplog.text
    run = tmp_path / "outputs" / "a" / "2026"
    assert [p.name for p in list_images(run, skip_runs=True)] == ["figure.png", "style.png"]


def test_extension_tables_are_formats_pillow_reads_and_writes():
    """Against Pillow's own registry (the decoder and encoder behind load_image and save_image)."""
    registered = Image.registered_extensions()
    assert set(IMAGE_EXTENSIONS) <= set(registered)
    assert set(im_mod.WRITABLE_EXTENSIONS) <= set(IMAGE_EXTENSIONS)
    assert {registered[extension] for extension in im_mod.WRITABLE_EXTENSIONS} <= set(Image.SAVE)


# ------------------------------------------------------------------------------ 16-bit colour


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png16(pixels: np.ndarray, *, before: bytes = b"", after: bytes = b"") -> bytes:
    """A 16-bit PNG written straight from the specification (filter 0, one IDAT), independent of the
    libraries under test; ``before``/``after``: raw chunks placed before/after the pixel data."""
    height, width, channels = pixels.shape
    colour_type = {2: 4, 3: 2, 4: 6}[channels]  # grey + alpha, RGB, RGBA
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0))
    return (b"\x89PNG\r\n\x1a\n" + header + before + _chunk(b"IDAT", zlib.compress(rows)) + after
            + _chunk(b"IEND", b""))


def _levels16(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Random 16-bit levels, none a multiple of 257 (those are exactly 8-bit levels scaled up)."""
    levels = np.random.default_rng(seed).integers(0, 65535, size=shape, dtype=np.uint16)
    return np.where(levels % 257 == 0, levels + 1, levels).astype(np.uint16)


def _as_levels16(rgb: torch.Tensor) -> np.ndarray:
    return (rgb.permute(1, 2, 0).double() * 65535).round().numpy().astype(np.uint16)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("layout", ["png rgb", "png rgba", "png grey+alpha", "tif rgb", "tif rgba",
                                    "tif planar rgb"])
def test_sixteen_bit_colour_is_read_with_all_16_bits(tmp_path: Path, layout: str) -> None:
    import tifffile

    channels = {"rgb": 3, "rgba": 4, "grey+alpha": 2}[layout.split()[-1]]
    pixels = _levels16((7, 11, channels))
    path = tmp_path / ("in.png" if layout.startswith("png") else "in.tif")
    if layout.startswith("png"):
        path.write_bytes(_png16(pixels))
    elif layout == "tif planar rgb":
        tifffile.imwrite(path, np.moveaxis(pixels, -1, 0), photometric="rgb", planarconfig="separate")
    else:
        tifffile.imwrite(path, pixels, photometric="rgb", extrasamples=["unassalpha"] if channels == 4 else None)
    with Image.open(path) as pillow:  # what Pillow alone would give: 8 bits (or nothing at all)
        assert pillow.mode not in ("I;16", "I;16B", "I;16L")
    loaded = load_image(path)
    assert loaded.bits == 16 and loaded.rgb.dtype == torch.float32
    colour = 1 if channels == 2 else 3
    expected = np.repeat(pixels[..., :1], 3, axis=2) if colour == 1 else pixels[..., :3]
    assert np.array_equal(_as_levels16(loaded.rgb), expected)
    assert loaded.was_gray == (colour == 1)
    if channels in (2, 4):
        assert loaded.alpha.dtype == torch.uint16
        assert np.array_equal(loaded.alpha[0].numpy(), pixels[..., -1])
    else:
        assert loaded.alpha is None


def test_sixteen_bit_png_colour_key_becomes_16bit_alpha(tmp_path: Path) -> None:
    pixels = _levels16((4, 5, 3), seed=1)
    key = pixels[1, 2]
    path = tmp_path / "key.png"
    path.write_bytes(_png16(pixels, before=_chunk(b"tRNS", struct.pack(">3H", *key.tolist()))))
    loaded = load_image(path)
    expected = np.where((pixels == key).all(axis=2), 0, 65535)
    assert loaded.alpha.dtype == torch.uint16 and np.array_equal(loaded.alpha[0].numpy(), expected)
    assert np.array_equal(_as_levels16(loaded.rgb), pixels)


def test_associated_alpha_tiff_is_unpremultiplied(tmp_path: Path) -> None:
    import tifffile

    colour = np.array([[[40000, 20000, 10000]]], dtype=np.float64)
    alpha = np.array([[32768]], dtype=np.float64)
    premultiplied = np.round(colour * alpha[..., None] / 65535).astype(np.uint16)
    pixels = np.dstack([premultiplied, alpha.astype(np.uint16)])
    tifffile.imwrite(tmp_path / "pre.tif", pixels, photometric="rgb", extrasamples=["assocalpha"])
    loaded = load_image(tmp_path / "pre.tif")
    assert np.abs(loaded.rgb[:, 0, 0].double().numpy() * 65535 - colour[0, 0]).max() <= 2
    assert loaded.alpha.tolist() == [[[32768]]]


def test_a_16_bit_grey_and_alpha_tiff_reads_back_as_written(tmp_path: Path) -> None:
    """Pillow has no 16-bit mode of two samples and cannot open such a TIFF, which save_image writes for
    a 16-bit grey + alpha source (stylenet-stylize --keep-gray): tifffile reads it, upright, every level."""
    import tifffile

    levels = _levels16((5, 7, 2), seed=4)
    rgb = torch.from_numpy(np.repeat(levels[..., :1], 3, axis=2).transpose(2, 0, 1).copy())
    alpha = torch.from_numpy(levels[..., 1].copy())[None]
    written = save_image(tmp_path / "ga.tif", rgb, alpha=alpha, gray=True)
    loaded = load_image(written)
    assert (loaded.bits, loaded.was_gray, loaded.alpha.dtype) == (16, True, torch.uint16)
    assert torch.equal((loaded.rgb * 65535).round().to(torch.int32), rgb.to(torch.int32))
    assert torch.equal(loaded.alpha, alpha) and read_image_size(written) == (7, 5)
    tifffile.imwrite(tmp_path / "turned.tif", levels, photometric="minisblack", extrasamples=["unassalpha"],
                     extratags=[(0x0112, "H", 1, 6, True)])  # stored 7 wide, 5 high: displayed 5 x 7
    turned = load_image(tmp_path / "turned.tif")
    assert turned.rgb.shape == (3, 7, 5) and read_image_size(tmp_path / "turned.tif") == (5, 7)
    assert torch.equal(turned.alpha[0], torch.from_numpy(np.rot90(levels[..., 1], -1).copy()))


@pytest.mark.parametrize("where", ["png before pixels", "png after pixels", "tif"])
def test_sixteen_bit_files_are_turned_upright(tmp_path: Path, where: str) -> None:
    import tifffile

    pixels = _levels16((6, 10, 3), seed=2)  # stored 10 wide, 6 high; orientation 6: displayed 6 x 10
    if where == "tif":
        path = tmp_path / "rot.tif"
        tifffile.imwrite(path, pixels, photometric="rgb", extratags=[(0x0112, "H", 1, 6, True)])
    else:
        path = tmp_path / "rot.png"
        exif = _chunk(b"eXIf", _exif(6)[6:])  # the chunk holds the TIFF structure, no "Exif\0\0"
        path.write_bytes(_png16(pixels, **({"before": exif} if "before" in where else {"after": exif})))
    loaded = load_image(path)
    assert np.array_equal(_as_levels16(loaded.rgb), np.rot90(pixels, -1))  # 90 degrees clockwise
    # header only: an eXIf chunk after the pixel data is not seen without decoding (documented)
    assert read_image_size(path) == ((10, 6) if where == "png after pixels" else (6, 10))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_of_undecoded_pixels_matches_pillow(orientation: int) -> None:
    pixels = np.random.default_rng(orientation).integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", exif=_exif(orientation))
    buffer.seek(0)
    from PIL import ImageOps

    with Image.open(buffer) as image:
        expected = np.asarray(ImageOps.exif_transpose(image))
    assert np.array_equal(orient(pixels, orientation), expected)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".TIFF"])
def test_sixteen_bit_round_trip_is_exact_with_alpha_and_icc(tmp_path: Path, suffix: str) -> None:
    import imagecodecs
    import tifffile

    pixels = _levels16((9, 13, 4), seed=3)
    rgb = torch.from_numpy(pixels[..., :3].astype(np.int32)).permute(2, 0, 1).to(torch.uint16)
    alpha = torch.from_numpy(pixels[..., 3:].astype(np.int32)).permute(2, 0, 1).to(torch.uint16)
    out = save_image(tmp_path / f"out{suffix}", rgb, alpha=alpha, icc_profile=_srgb_icc())
    # read back by the libraries themselves, then by load_image
    on_disk = (imagecodecs.png_decode(out.read_bytes()) if suffix == ".png" else tifffile.imread(out))
    assert on_disk.dtype == np.uint16 and np.array_equal(on_disk, pixels)
    with Image.open(out) as pillow:
        assert pillow.info["icc_profile"] == _srgb_icc()
    loaded = load_image(out)
    assert loaded.bits == 16 and loaded.icc_profile == _srgb_icc()
    assert np.array_equal(_as_levels16(loaded.rgb), pixels[..., :3])
    assert torch.equal(loaded.alpha, alpha)


def test_float_rgb_can_be_written_with_16_bits(tmp_path: Path) -> None:
    import imagecodecs

    rgb = torch.tensor([[[0.0, 1 / 65535, 0.5, 1.0]]]).expand(3, 1, 4)
    out = save_image(tmp_path / "f.png", rgb, bits=16)
    assert imagecodecs.png_decode(out.read_bytes())[0, :, 0].tolist() == [0, 1, 32768, 65535]
    assert load_image(save_image(tmp_path / "f8.png", rgb)).bits == 8  # floats default to 8 bits
    with pytest.raises(ValueError, match="bits"):
        save_image(tmp_path / "x.png", rgb, bits=12)


@pytest.mark.parametrize("suffix", [".bmp", ".jpg", ".webp"])
def test_sixteen_bit_pixels_are_rounded_for_8_bit_formats(tmp_path: Path, suffix: str) -> None:
    levels = np.array([0, 128, 129, 385, 32896, 65406, 65535], dtype=np.int32)
    rgb = torch.from_numpy(np.broadcast_to(levels, (3, 8, 7)).copy()).to(torch.uint16)
    out = save_image(tmp_path / f"o{suffix}", rgb)
    with Image.open(out) as written:
        assert written.mode == "RGB"  # 8 bits per sample: all these formats hold
        if suffix == ".bmp":  # lossless: exactly round(level * 255 / 65535)
            assert np.asarray(written)[0, :, 0].tolist() == [0, 0, 1, 1, 128, 254, 255]


def test_compact_holds_every_level_of_the_source(tmp_path: Path) -> None:
    eight = torch.arange(256, dtype=torch.float32).expand(3, 1, 256) / 255
    held = im_mod.compact(LoadedImage(rgb=eight, alpha=None, icc_profile=None, was_gray=False))
    assert held.rgb.dtype == torch.uint8 and held.rgb.flatten().tolist() == [*range(256)] * 3
    assert torch.equal(im_mod.unit_float(held.rgb), eight)  # the very float32 values: k / 255
    assert im_mod.compact(held) is held  # held so already: nothing to narrow again
    sixteen = torch.arange(65536, dtype=torch.float32).expand(3, 1, 65536) / 65535
    held = im_mod.compact(LoadedImage(rgb=sixteen, alpha=None, icc_profile=None, was_gray=False, bits=16))
    assert held.rgb.dtype == torch.float32
    assert torch.equal((held.rgb * 65535).round(), torch.arange(65536.0).expand(3, 1, 65536))
    assert not torch.equal((sixteen.half().float() * 65535).round(), (sixteen * 65535).round())  # why


def test_eight_bit_and_16_bit_grey_sources_report_their_depth(tmp_path: Path) -> None:
    assert load_image(_save(tmp_path / "a.png", Image.new("RGB", (3, 2)))).bits == 8
    grey16 = _save(tmp_path / "g.png", Image.fromarray(np.array([[1, 40000]], dtype=np.uint16)))
    assert load_image(grey16).bits == 16


def test_a_tiff_pillow_cannot_decode_is_named_by_its_layout_not_called_corrupt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow cannot open a TIFF of float colour samples, or one in a compression it lacks; the file is sound,
    so the error says what it holds (it said "truncated or corrupt", sending the user to look for damage),
    from the header alone (a small file may declare gigapixels); a cut one is still corrupt."""
    import tifffile

    tifffile.imwrite(path := tmp_path / "float.tif", np.full((6, 5, 3), 0.5, np.float32), photometric="rgb")
    tifffile.imwrite(lerc := tmp_path / "lerc.tif", np.zeros((6, 5, 3), np.uint8), photometric="rgb",
                     compression="lerc")
    monkeypatch.setattr(tifffile.TiffPage, "asarray", lambda *args, **kwargs: pytest.fail("decoded the pixels"))
    for tiff, layout in ((path, "3 float32 samples per pixel"), (lerc, "3 uint8 samples per pixel, LERC compressed")):
        with pytest.raises(ImageError, match=f"this TIFF's {layout} cannot be decoded here: convert it to an 8- or "
                                             "16-bit RGB or grey TIFF, or a PNG$") as err:
            load_image(tiff)
        _assert_one_line_naming(err, tiff)
    (cut := tmp_path / "cut.tif").write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageError, match="truncated or corrupt TIFF file"):
        load_image(cut)


def test_truncated_sixteen_bit_png_is_an_image_error(tmp_path: Path) -> None:
    data = _png16(_levels16((40, 40, 3), seed=4))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as err:
        load_image(path)
    _assert_one_line_naming(err, path)


def test_scaled_shapes_round_halves_to_even_sides_and_refuse_bad_scales() -> None:
    from stylenet.image.resize import scaled_shape, target_size

    assert scaled_shape(1080, 1920, 1000 / 1920) == (562, 1000)  # 562.5: even, so a video stays 4:2:0
    assert scaled_shape(31, 41, 0.5) == (16, 20) and scaled_shape(3, 5, 0.1) == (1, 1)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(StylenetError, match="--scale must be a finite number > 0"):
            target_size(31, 41, scale=bad)


def test_temporary_names_fit_the_file_system_whatever_the_name(tmp_path: Path) -> None:
    """atomic_write's hidden temporary name beside a long output name: at most NAME_MAX bytes, whole
    characters (valid UTF-8 where the name is), the format's extension kept where it fits."""
    import os

    from stylenet.atomic import NAME_MAX, temporary_path, unwritable, write_text

    for name in ("short.png", "x" * 251 + ".png", "é" * 125 + "x.png", "€" * 83 + "a.png", "a." + "b" * 252):
        assert unwritable(tmp_path / name) is None
        temporary = os.fsencode(temporary_path(tmp_path / name).name)
        assert len(temporary) <= NAME_MAX and temporary.decode("utf-8").startswith(".")
        assert temporary.endswith(b".png") == name.endswith(".png")
        write_text(tmp_path / name, "written")
        assert (tmp_path / name).read_text() == "written"
    assert unwritable(tmp_path / ("x" * 256)) == f"its name is 256 bytes, longer than file systems allow ({NAME_MAX})"


def test_a_report_naming_a_file_whose_name_is_not_utf8_is_written(tmp_path: Path) -> None:
    """A photo named in Latin-1 (b"caf\\xe9.jpg") reaches Python as a lone surrogate; the reports that name
    it are written with an escape in its place rather than failing the run at its end."""
    from stylenet.atomic import write_text

    name = os.fsdecode(b"caf\xe9")
    write_text(tmp_path / "quality.md", f"| {name} | 0.5 |\n")
    assert (tmp_path / "quality.md").read_bytes() == b"| caf\\udce9 | 0.5 |\n"
