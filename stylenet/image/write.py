"""Writing image tensors to files: PNG, JPEG, WebP, BMP and TIFF, 8 or 16 bits, alpha and colour
profile kept, atomically.

Pillow writes 8-bit files; 16-bit colour PNG and TIFF, which Pillow cannot write, are encoded with
imagecodecs and tifffile. An interrupted run never leaves a half-written output that looks like a
finished one (:mod:`stylenet.atomic`).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image

from stylenet.atomic import atomic_write, unwritable
from stylenet.errors import first_line
from stylenet.image.colour import LUMA_WEIGHTS
from stylenet.image.formats import (
    OPAQUE_FORMATS,
    SIXTEEN_BIT_FORMATS,
    WRITABLE_EXTENSIONS,
    WRITE_FORMATS,
    file_error,
    fitting_icc_profile,
)


def _alpha_to_uint8(alpha: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Any supported alpha tensor -> HxW uint8, so RGBA output is always 8-bit."""
    a = alpha.detach().cpu()
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2 or tuple(a.shape) != (height, width):
        raise ValueError(
            f"alpha must be (1, {height}, {width}) or ({height}, {width}), got {tuple(alpha.shape)}"
        )
    if a.dtype == torch.uint8:
        out = a
    elif a.dtype == torch.uint16:
        out = ((a.to(torch.int32) + 128) // 257).to(torch.uint8)  # round(a * 255 / 65535)
    elif a.dtype == torch.bool:
        out = a.to(torch.uint8) * 255
    elif a.is_floating_point():
        out = a.float().nan_to_num(0.0).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    else:
        raise ValueError(f"alpha must be uint8, uint16, bool or float in [0, 1], got {a.dtype}")
    return out.contiguous().numpy()


def _alpha_to_uint16(alpha: torch.Tensor, height: int, width: int) -> np.ndarray:
    """Any supported alpha tensor -> HxW uint16, for 16-bit RGBA output (8-bit alpha times 257)."""
    a = alpha.detach().cpu()
    if a.dtype != torch.uint16 and not a.is_floating_point():  # uint8, bool: checked and scaled there
        return _alpha_to_uint8(alpha, height, width).astype(np.uint16) * np.uint16(257)
    a = a[0] if a.ndim == 3 and a.shape[0] == 1 else a
    if tuple(a.shape) != (height, width):
        raise ValueError(f"alpha must be (1, {height}, {width}) or ({height}, {width}), got {tuple(alpha.shape)}")
    if a.dtype == torch.uint16:
        return a.contiguous().numpy()
    return a.float().nan_to_num(0.0).clamp(0.0, 1.0).mul(65535.0).round().to(torch.int32).numpy().astype(np.uint16)


def _as_chw(rgb: torch.Tensor) -> torch.Tensor:
    """``rgb`` detached, as (3, H, W): a leading batch dimension of 1 is accepted."""
    t = rgb.detach()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"rgb must be a (3, H, W) tensor, got shape {tuple(rgb.shape)}")
    return t


def _rgb_to_uint16(rgb: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1], uint8 or uint16 -> HxWx3 uint16 (rounded; uint8 times 257)."""
    t = _as_chw(rgb)
    if t.dtype == torch.uint16:
        levels = t.cpu().to(torch.int32)
    elif t.dtype == torch.uint8:
        levels = t.cpu().to(torch.int32) * 257
    elif t.is_floating_point():
        levels = t.cpu().float().nan_to_num(0.0).clamp(0.0, 1.0).mul(65535.0).round().to(torch.int32)
    else:
        raise ValueError(f"rgb must be a float tensor in [0, 1], uint8 or uint16, got {t.dtype}")
    return levels.permute(1, 2, 0).contiguous().numpy().astype(np.uint16)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _encode_sixteen_bit(fmt: str, pixels: np.ndarray, icc_profile: bytes | None) -> bytes:
    """HxWx3 or HxWx4 uint16 ``pixels`` (HxW or HxWx2: grey) encoded as a 16-bit PNG or TIFF file.

    PNG: imagecodecs (libpng), with the ICC profile added as an iCCP chunk right after IHDR (where
    the PNG specification wants it, before the pixel data; imagecodecs writes no metadata).
    TIFF: tifffile, RGB(A) with unassociated alpha, lossless Deflate with horizontal differencing
    (libtiff, Photoshop, GIMP and Pillow all read it), the ICC profile in its standard tag. Encoded
    in memory: tifffile wants a named file, and the atomic writer hands it a descriptor.
    """
    if fmt == "PNG":
        import imagecodecs

        data = bytes(imagecodecs.png_encode(pixels))
        if icc_profile:
            iccp = _png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(bytes(icc_profile)))
            data = data[:33] + iccp + data[33:]  # 8-byte signature + 25-byte IHDR chunk
        return data

    import tifffile

    buffer = io.BytesIO()
    gray = pixels.ndim == 2 or pixels.shape[-1] == 2
    tifffile.imwrite(buffer, pixels, photometric="minisblack" if gray else "rgb",
                     extrasamples=("unassalpha",) if pixels.ndim == 3 and pixels.shape[-1] in (2, 4) else None,
                     iccprofile=bytes(icc_profile) if icc_profile else None,
                     compression="zlib", predictor=True, metadata=None)
    return buffer.getvalue()


def to_pil(rgb: torch.Tensor, alpha: torch.Tensor | None = None) -> Image.Image:
    """Float ``(3, H, W)`` in [0, 1] -> 8-bit Pillow ``RGB`` (or ``RGBA`` when ``alpha`` is given).

    Values are clamped to [0, 1] (nets overshoot slightly), NaN becomes 0, and the result is
    *rounded*, not truncated, so ``k / 255`` maps back to exactly ``k``: that is what makes an
    8-bit load -> save round trip pixel-exact. A leading batch dimension of 1 is accepted, a
    uint8 tensor is taken as already quantised, and a uint16 one (16-bit levels) is rounded to 8
    bits. ``alpha`` may be uint8, uint16 (rounded to 8 bits), bool or float in [0, 1], shaped
    ``(1, H, W)`` or ``(H, W)``.
    """
    t = _as_chw(rgb)
    if t.dtype == torch.uint8:
        q = t
    elif t.dtype == torch.uint16:
        q = ((t.to(torch.int32) + 128) // 257).to(torch.uint8)  # round(t * 255 / 65535)
    elif t.is_floating_point():
        q = t.float().nan_to_num(0.0).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    else:
        raise ValueError(f"rgb must be a float tensor in [0, 1] (or uint8, uint16), got {t.dtype}")
    arr = q.cpu().permute(1, 2, 0).contiguous().numpy()
    if alpha is not None:
        a = _alpha_to_uint8(alpha, arr.shape[0], arr.shape[1])
        arr = np.concatenate([arr, a[..., None]], axis=2)
    return Image.fromarray(arr)


def check_output_path(path: str | Path, *, overwrite: bool = True) -> None:
    """Raise :class:`ImageError` if ``path`` cannot receive an image, BEFORE any compute.

    Stylising a 4K video frame or training for hours and then failing on ``out.jpgg`` is a bad
    way to learn about a typo, so CLIs call this first. Checks: a writable suffix (see
    :data:`WRITABLE_EXTENSIONS`, case-insensitive), the path is not a directory, and with
    ``overwrite=False`` that it does not already exist.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in WRITE_FORMATS:
        got = f"extension {suffix!r}" if suffix else "no extension"
        raise file_error(
            p, f"{got} is not a writable format (use one of {', '.join(WRITABLE_EXTENSIONS)})", verb="write"
        )
    reason = unwritable(p)
    if reason is not None:
        raise file_error(p, reason, verb="write")
    if not overwrite and p.exists():
        raise file_error(p, "file exists and overwrite=False", verb="write")


#: The longest side each format's encoder writes (WebP's 14-bit size fields; libjpeg's JPEG_MAX_DIMENSION).
MAX_SIDE = {"WEBP": 16383, "JPEG": 65500}


def check_output_size(path: str | Path, height: int, width: int) -> None:
    """Raise :class:`ImageError` if ``path``'s format cannot hold a ``height`` x ``width`` image, BEFORE any
    compute: a panorama's WebP failed after the whole network pass, as the encoder's "error 5"."""
    fmt = WRITE_FORMATS.get(Path(path).suffix.lower())
    limit = MAX_SIDE.get(fmt or "")
    if limit is not None and max(height, width) > limit:
        raise file_error(path, f"{width}x{height} px is beyond {fmt}'s largest side, {limit} px (write .png or "
                               ".tif, or a smaller image: stylenet-stylize --max-size)", verb="write")


def _encoder(fmt: str, rgb: torch.Tensor, alpha: torch.Tensor | None, icc_profile: bytes | None,
             quality: int, depth: int, gray: bool = False) -> Callable[[BinaryIO], None]:
    """What writes the encoded image to an open file: 16-bit PNG/TIFF through
    :func:`_encode_sixteen_bit` at ``depth`` 16, Pillow otherwise; ``gray`` keeps one channel. Pixels
    are converted now, so a bad tensor fails before any file is created. A profile not of the file's space
    (:func:`fitting_icc_profile`: GRAY for ``gray``, else RGB) is left out."""
    icc_profile = fitting_icc_profile(icc_profile, gray=gray and fmt != "WEBP")  # WebP holds colour only
    if depth == 16 and fmt in SIXTEEN_BIT_FORMATS:
        pixels = _rgb_to_uint16(rgb)
        if gray:  # luma, as Pillow's L of the 8-bit image (the red channel was written)
            pixels = np.rint(pixels.astype(np.float64) @ np.array(LUMA_WEIGHTS))[..., None].astype(np.uint16)
        if alpha is not None:
            pixels = np.dstack([pixels, _alpha_to_uint16(alpha, *pixels.shape[:2])])
        pixels = np.ascontiguousarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        return lambda handle: handle.write(_encode_sixteen_bit(fmt, pixels, icc_profile))
    img = to_pil(rgb, alpha)
    if gray:  # equal channels: Pillow's luma weights sum to one, so L is that channel exactly
        img = img.convert("LA" if alpha is not None else "L")
    if fmt in OPAQUE_FORMATS and img.mode in ("RGBA", "LA"):
        img = img.convert(img.mode[:-1])
    params: dict[str, object] = {}
    if fmt in ("JPEG", "WEBP"):
        params["quality"] = int(quality)
    if icc_profile and fmt != "BMP":
        params["icc_profile"] = bytes(icc_profile)
    return lambda handle: img.save(handle, format=fmt, **params)


def drops_transparency(path: str | Path, alpha: torch.Tensor | None) -> str | None:
    """The format's name where :func:`save_image` loses transparency writing ``alpha`` to ``path`` (JPEG
    and BMP hold no alpha: it is dropped), else None: an alpha opaque everywhere loses nothing, so a CLI
    can say so when it matters."""
    fmt = WRITE_FORMATS.get(Path(path).suffix.lower())
    if alpha is None or fmt not in OPAQUE_FORMATS:
        return None
    return fmt if bool((_alpha_to_uint8(alpha, *alpha.shape[-2:]) < 255).any()) else None


def save_image(path: str | Path, rgb: torch.Tensor, *, alpha: torch.Tensor | None = None,
               icc_profile: bytes | None = None, quality: int = 95, overwrite: bool = True,
               bits: int | None = None, gray: bool = False) -> Path:
    """Write ``rgb`` (float ``(3, H, W)`` in [0, 1], or uint8 / uint16 levels) to ``path``
    atomically; return the path.

    The format comes from the extension: PNG (lossless, alpha), JPEG (``quality``), WebP
    (``quality``, alpha kept losslessly), BMP, TIFF; JPEG and BMP hold no alpha, so ``alpha`` is
    dropped there, not composited. ``icc_profile`` is embedded where the format supports it (all but BMP), so colours
    stay what the source meant, if it is of the file's colour space (a GRAY profile in a grey file, an RGB one
    in a colour file). Parent folders are created.

    Bit depth: ``bits`` 16 (the default for uint16 ``rgb``, i.e. the output of a 16-bit source)
    writes 16 bits per sample, alpha included, where the format holds them
    (:data:`SIXTEEN_BIT_EXTENSIONS`: PNG and TIFF, through imagecodecs and tifffile, since Pillow
    cannot write 48/64-bit RGB(A)); JPEG, WebP and BMP get the pixels rounded to 8 bits. ``bits``
    8 (the default otherwise) always writes 8 bits. ``gray`` writes one grey channel (of a
    greyscale input stylized with ``keep_gray``, whose three channels are equal): L / LA, or 16-bit
    grey.

    Atomicity (:func:`stylenet.atomic.atomic_write`): readers see either the old file or the
    complete new one; on any error, KeyboardInterrupt included, the temporary file is removed.
    ``overwrite=False`` raises :class:`ImageError` if the target exists (checked before encoding
    and again, race-free, when publishing).
    """
    p = Path(path)
    check_output_path(p, overwrite=overwrite)
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if bits not in (None, 8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    check_output_size(p, *rgb.shape[-2:])
    fmt = WRITE_FORMATS[p.suffix.lower()]
    depth = bits if bits is not None else (16 if rgb.dtype == torch.uint16 else 8)
    encode = _encoder(fmt, rgb, alpha, icc_profile, quality, depth, gray)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise file_error(p, f"cannot create folder ({err.strerror or err})", verb="write") from None

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            encode(handle)

    try:
        return atomic_write(p, write, overwrite=overwrite)
    except FileExistsError:
        raise file_error(p, "file exists and overwrite=False", verb="write") from None
    except Exception as err:  # a full disk, an encoder failure: a property of this output
        raise file_error(p, first_line(err), verb="write") from None
