"""Image files <-> tensors: the single place where pixels enter and leave stylenet.

Everything else in the package works on float32 tensors shaped ``(3, H, W)`` with values in
``[0, 1]``. This module is the boundary that makes that assumption true, so the nets, the losses
and the CLIs never have to think about Pillow modes, bit depths, EXIF orientation, alpha channels,
colour profiles, malformed files or decompression bombs.

Design rules (and why):

* **Every failure is an** :class:`ImageError` **with a one-line message naming the file.** A batch
  job over thousands of user photos must be able to report "this file is broken" and carry on, and
  a CLI must be able to print ``str(err)`` instead of a Pillow traceback.
* **Pillow's global switches are never touched.** ``Image.MAX_IMAGE_PIXELS`` and
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` are process-wide; flipping them would silently change the
  behaviour of every other library in the process. The pixel cap is ours (``max_pixels``, checked
  from the header before any decoding) and Pillow's bomb warning is only silenced locally.
* **Only the formats we advertise are decoded.** Pillow identifies files by content, not name, and
  some of its plugins are risky or slow (EPS shells out to Ghostscript). A file named ``.jpg`` that
  is really something else outside :data:`IMAGE_EXTENSIONS`' formats is refused.
* **Alpha is carried, not composited.** The nets see RGB only; the original alpha band travels
  beside it, unchanged, so that ``load -> stylise -> save`` keeps a cut-out a cut-out.
* **16 bits in, 16 bits out.** Pillow reduces 16-bit colour PNG and TIFF to 8 bits when it decodes
  them and cannot write 48/64-bit RGB(A), so those samples are decoded with imagecodecs (PNG) and
  tifffile (TIFF) instead, Pillow still reading the header (size, bomb check, EXIF, ICC), and
  written with them when the output format holds 16 bits (PNG, TIFF). :attr:`LoadedImage.bits`
  carries the source's depth to the writer.
* **Writes are atomic.** An interrupted run must never leave a half-written output that looks like
  a finished one (or clobber a good file with a broken one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import random
import secrets
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from stylenet import StylenetError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "SIXTEEN_BIT_EXTENSIONS",
    "WRITABLE_EXTENSIONS",
    "ImageError",
    "LoadedImage",
    "check_output_path",
    "compact",
    "list_images",
    "load_image",
    "load_rgb",
    "read_image_size",
    "save_image",
    "to_pil",
]


class ImageError(StylenetError, ValueError):
    """A file that is not a usable image (or cannot be written as one).

    ``str(err)`` is ONE line that names the file and the reason, e.g.
    ``"cannot read image 'x.jpg': truncated file"``, so that callers can log it and move on.
    It subclasses :class:`ValueError` because a bad file is bad *input*, not a bug.
    """


#: Lower-case suffixes that :func:`list_images` collects and :func:`load_image` is meant for.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".webp",
    ".tif",
    ".tiff",
    ".gif",
    ".ppm",
    ".pgm",
)

#: Decompression-bomb cap in pixels (width * height), checked from the header before decoding.
#: 120 MP fits any real camera photo (a 100 MP medium-format frame included) while a float32
#: RGB tensor of that size is still only ~1.4 GB.
DEFAULT_MAX_PIXELS: int = 120_000_000

#: Pillow format names we let Pillow decode: exactly the formats behind IMAGE_EXTENSIONS.
#: (MPO, the multi-picture JPEG many phones write, is opened by the JPEG plugin.)
_READ_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF", "PPM")

#: Output suffix -> Pillow format name.
_WRITE_FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}

#: Lower-case suffixes :func:`save_image` can write.
WRITABLE_EXTENSIONS: tuple[str, ...] = tuple(_WRITE_FORMATS)

#: Suffixes :func:`save_image` writes with 16 bits per sample when asked to (16-bit sources); the
#: others (JPEG, WebP, BMP) hold 8 bits, so 16-bit pixels are rounded to 8 bits for them.
SIXTEEN_BIT_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff")
_SIXTEEN_BIT_FORMATS = frozenset(_WRITE_FORMATS[suffix] for suffix in SIXTEEN_BIT_EXTENSIONS)

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
# Modes whose conversion to RGB Pillow implements properly (CMYK naively, i.e. without a profile).
_CONVERTIBLE_MODES = frozenset({"RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """A decoded image, split into what the nets consume and what must survive beside them.

    ``eq=False``: instances compare by identity, because element-wise tensor equality has no
    single truth value.
    """

    #: float32 ``(3, H, W)`` in ``[0, 1]``, EXIF orientation already applied.
    rgb: torch.Tensor
    #: The ORIGINAL alpha band, unchanged, shaped ``(1, H, W)``: uint8 (uint16 for a 16-bit
    #: source whose transparency comes from a tRNS key). ``None`` when the source carries no
    #: transparency information at all (an RGBA file that is fully opaque still has its band).
    alpha: torch.Tensor | None
    #: The embedded ICC profile if it describes an RGB colour space (so it is still valid for
    #: :attr:`rgb`); ``None`` otherwise, e.g. for CMYK or GRAY profiles, which would be wrong on
    #: an RGB output file.
    icc_profile: bytes | None
    #: The source had no colour (modes 1, L, LA, I, I;16*, F), so callers may write grey back.
    was_gray: bool
    #: Bits per sample worth keeping on output: 16 for 16-bit PNG, TIFF and PGM sources (and float
    #: TIFFs, 16 being the most an output file holds), 8 otherwise. The stylize and upscale commands
    #: quantise to this depth and :func:`save_image` writes it where the format holds it.
    bits: int = 8


def compact(image: LoadedImage) -> LoadedImage:
    """``image`` with its RGB held in the narrowest float type that still keeps every level of its
    source: float16 for 8-bit sources (``k / 255`` stays within 0.07 of level ``k``, so outputs
    round back exactly, at half the memory of float32), float32 for 16-bit ones (float16 has 11
    significant bits, 32 16-bit levels apart near 1: ``--strength 0`` could not return the input)."""
    dtype = torch.float16 if image.bits <= 8 else torch.float32
    return dataclasses.replace(image, rgb=image.rgb.to(dtype))


# --------------------------------------------------------------------------------------------
# helpers


def _one_line(text: str) -> str:
    """Collapse whitespace so a message can never span lines (logs, progress bars, CSVs)."""
    return " ".join(str(text).split())


def _error(path: str | Path, reason: str, *, verb: str = "read") -> ImageError:
    # repr() quotes the name and escapes any newline inside it: the message stays one line.
    return ImageError(f"cannot {verb} image {str(path)!r}: {_one_line(reason)}")


def _describe(err: BaseException) -> str:
    """Turn a decoder exception into a short human reason."""
    text = _one_line(str(err)) or type(err).__name__
    if isinstance(err, EOFError) or "truncat" in text.lower():
        return f"truncated file ({text})"
    if isinstance(err, MemoryError):
        return "not enough memory to decode it"
    return f"corrupt or unsupported image data ({type(err).__name__}: {text})"


def _check_is_file(p: Path) -> None:
    """Fail early, with a clear reason, on the cases Pillow reports obscurely."""
    try:
        if p.is_dir():
            raise _error(p, "is a directory, not a file")
        if not p.exists():
            raise _error(p, "no such file")
        if p.stat().st_size == 0:
            raise _error(p, "empty file (0 bytes)")
    except OSError as err:  # e.g. permission denied on a parent directory
        raise _error(p, err.strerror or str(err)) from None


def _open(p: Path) -> Image.Image:
    """Open (header only) a file, restricted to the formats we support."""
    return Image.open(p, formats=_READ_FORMATS)


def _exif_orientation_from_header(im: Image.Image) -> int:
    """EXIF orientation without decoding pixel data.

    PngImageFile.getexif() decodes the whole image when the eXIf chunk was not seen before IDAT,
    so for PNG we only look at what the header pass found.
    """
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # malformed EXIF must not make an otherwise good image unreadable
        return 1


def _exif_transpose(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation so tensors are upright, as every viewer displays them."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # malformed EXIF: keep the pixels as stored rather than refuse the file
        return im


def _scale_int(values: np.ndarray) -> np.ndarray:
    """Mode "I" (32-bit int) to [0, 1].

    Pillow uses "I" for 16-bit greyscale from several formats (PGM with maxval 65535, older PNG
    readers), so values in [0, 65535] are divided by 65535, exactly like I;16. Anything larger
    cannot be 16-bit and is divided by its maximum instead. Negative values are clipped to 0.
    """
    top = float(values.max()) if values.size else 0.0
    scale = 65535.0 if top <= 65535.0 else top
    return np.clip(values.astype(np.float32) / np.float32(scale), 0.0, 1.0)


def _scale_float(values: np.ndarray) -> np.ndarray:
    """Mode "F" (32-bit float) to [0, 1].

    Float images carry no declared range. If every value is <= 1 the data is taken to be in
    [0, 1] already (the common convention for float TIFFs); otherwise it is divided by its
    maximum. NaN and infinities become 0, and negatives are clipped to 0.
    """
    values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    top = float(values.max()) if values.size else 0.0
    if top > 1.0:
        values = values / np.float32(top)
    return np.clip(values, 0.0, 1.0)


def _key_alpha(values: np.ndarray, key: object, opaque: int, dtype: type) -> np.ndarray | None:
    """Alpha from a tRNS-style colour key: transparent exactly where the pixel equals the key."""
    if isinstance(key, (int, np.integer)) and values.ndim == 2:
        hit = values == int(key)
    elif isinstance(key, tuple) and values.ndim == 3 and len(key) == values.shape[2]:
        hit = np.all(values == np.asarray(key, dtype=values.dtype), axis=2)
    else:
        return None
    return np.where(hit, 0, opaque).astype(dtype)


def _decode(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Convert a loaded Pillow image of any supported mode to (HxWx3 float32, HxW alpha, was_gray).

    Pillow's ``convert("RGB")`` is not used blindly because it silently drops alpha and squashes
    16-bit data to 8 bits by clipping at 255 (a 16-bit mid-grey would turn white).
    """
    mode = im.mode
    key = im.info.get("transparency")
    alpha: np.ndarray | None = None
    was_gray = mode in _GRAY_MODES

    if mode in ("1", "L"):
        if key is not None:
            arr = np.asarray(im.convert("LA"))  # Pillow maps the key (any bit depth) to alpha
            grey, alpha = arr[..., 0], arr[..., 1]
        else:
            grey = np.asarray(im.convert("L"))
        grey = grey.astype(np.float32) / np.float32(255.0)
    elif mode in ("LA", "La"):
        arr = np.asarray(im if mode == "LA" else im.convert("RGBA").convert("LA"))
        grey = arr[..., 0].astype(np.float32) / np.float32(255.0)
        alpha = arr[..., 1]
    elif mode in _SIXTEEN_BIT_MODES or mode == "I":
        arr = np.asarray(im)
        if key is not None:
            alpha = _key_alpha(arr, key, 65535, np.uint16)
        grey = _scale_int(arr) if mode == "I" else arr.astype(np.float32) / np.float32(65535.0)
    elif mode == "F":
        grey = _scale_float(np.asarray(im))
    else:
        grey = None

    if grey is not None:
        rgb = np.repeat(grey[..., None], 3, axis=2)
        return rgb, alpha, was_gray

    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or key is not None or (im.palette is not None and "A" in im.palette.mode)
        arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    elif mode == "RGB":
        arr = np.asarray(im.convert("RGBA") if key is not None else im)
    elif mode in ("RGBA", "RGBa"):
        arr = np.asarray(im if mode == "RGBA" else im.convert("RGBA"))
    elif mode in _CONVERTIBLE_MODES:
        arr = np.asarray(im.convert("RGB"))
    else:
        raise ValueError(f"unsupported image mode {mode!r}")

    if arr.shape[2] == 4:
        alpha = arr[..., 3]
    rgb = arr[..., :3].astype(np.float32) / np.float32(255.0)
    return rgb, alpha, was_gray


def _source_bits(im: Image.Image) -> int:
    """16 for Pillow's 16-bit and wider modes (I;16*, I, F), else 8: the depth worth writing back."""
    return 16 if im.mode in _SIXTEEN_BIT_MODES or im.mode in ("I", "F") else 8


def _rgb_icc(profile: object) -> bytes | None:
    """Keep an ICC profile only if its colour space (header bytes 16..20) is RGB."""
    if isinstance(profile, (bytes, bytearray)) and len(profile) >= 20 and profile[16:20] == b"RGB ":
        return bytes(profile)
    return None


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to an (H, W, C) array exactly as ``ImageOps.exif_transpose``
    applies it to an image, for the pixels decoded without Pillow."""
    flips = {
        2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
        3: lambda a: a[::-1, ::-1],  # ROTATE_180
        4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
        5: lambda a: a.swapaxes(0, 1),  # TRANSPOSE
        6: lambda a: np.rot90(a, -1),  # ROTATE_270 (90 degrees clockwise)
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),  # TRANSVERSE
        8: lambda a: np.rot90(a, 1),  # ROTATE_90 (counter-clockwise)
    }
    flip = flips.get(orientation)
    return pixels if flip is None else flip(pixels)


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """``(type, payload)`` of every chunk of a PNG held in memory, up to IEND (CRCs are the decoder's job)."""
    offset = 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        yield kind, data[offset + 8: offset + 8 + length]
        if kind == b"IEND":
            return
        offset += 12 + length


def _png_orientation(im: Image.Image, data: bytes) -> int:
    """EXIF orientation of a PNG whose pixels are not decoded by Pillow, read as
    ``ImageOps.exif_transpose`` reads it: an eXIf chunk before or after the pixel data, else XMP's
    ``tiff:Orientation``. ``PngImageFile.getexif()`` decodes the whole image to look for an eXIf
    chunk its header pass did not reach, so the chunk found here (or none, as empty EXIF) is handed
    to it first."""
    if "exif" not in im.info:
        im.info["exif"] = next((payload for kind, payload in _png_chunks(data) if kind == b"eXIf"), b"")
    return _exif_orientation_from_header(im)


def _tags(im: Image.Image, tag: int, default: int) -> tuple[int, ...]:
    """A TIFF tag's values as a tuple (Pillow gives one value for one sample, a tuple for several)."""
    value = im.tag_v2.get(tag, default)  # type: ignore[attr-defined]
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _is_sixteen_bit_colour(p: Path, im: Image.Image) -> bool:
    """Whether ``im`` (header read) stores 16-bit colour, or 16-bit grey + alpha, samples, which
    Pillow would reduce to 8 bits (its 16-bit modes are single-channel: 16-bit grey is read fine)."""
    if im.format == "PNG":
        with open(p, "rb") as handle:
            head = handle.read(26)
        # IHDR: bit depth at byte 24, colour type at 25 (2 RGB, 4 grey + alpha, 6 RGBA)
        return len(head) == 26 and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 4, 6)
    if im.format == "TIFF":
        bits, formats = _tags(im, 258, 1), _tags(im, 339, 1)  # BitsPerSample, SampleFormat (1: unsigned)
        return len(bits) > 1 and set(bits) == {16} and set(formats) == {1} and _tags(im, 262, -1)[0] in (1, 2)
    return False


def _decode_sixteen_bit(p: Path, im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """A 16-bit colour PNG or TIFF (see :func:`_is_sixteen_bit_colour`) -> (HxWx3 float32 in [0, 1],
    HxW uint16 alpha or None, was_gray), EXIF orientation applied.

    imagecodecs decodes PNG (libpng: interlacing, and tRNS colour keys as an alpha channel);
    tifffile decodes TIFF (any compression imagecodecs has, strips or tiles, planar or not).
    Associated (premultiplied) TIFF alpha is divided out, as Pillow's ``RGBa`` -> ``RGBA`` does.
    """
    associated = False
    if im.format == "PNG":
        import imagecodecs

        data = p.read_bytes()
        samples = imagecodecs.png_decode(data)
        orientation = _png_orientation(im, data)
        colour = 1 if samples.shape[-1] in (1, 2) else 3
        alpha_index = colour if samples.shape[-1] in (2, 4) else None
    else:
        import tifffile

        with tifffile.TiffFile(p) as tif:
            page = tif.pages[0]
            samples, axes = page.asarray(), page.axes
            extras, colour = tuple(page.extrasamples), 3 if page.photometric == 2 else 1
        if axes.startswith("S"):  # planar configuration: one plane per sample
            samples = np.moveaxis(samples, 0, -1)
        alpha_index = colour if extras and int(extras[0]) in (1, 2) else None  # 1 associated, 2 unassociated
        associated = alpha_index is not None and int(extras[0]) == 1
        orientation = _exif_orientation_from_header(im)
    if samples.ndim != 3 or samples.dtype != np.uint16 or samples.shape[-1] < colour:
        raise ValueError(f"unsupported 16-bit layout {samples.dtype} {samples.shape}")
    samples = _orient(samples, orientation)
    rgb = samples[..., :colour].astype(np.float32) / np.float32(65535.0)
    alpha = np.ascontiguousarray(samples[..., alpha_index]) if alpha_index is not None else None
    if associated and alpha is not None:
        weight = alpha[..., None].astype(np.float32) / np.float32(65535.0)
        rgb = np.where(weight > 0, np.minimum(rgb / np.maximum(weight, 1e-12), 1.0), 0.0).astype(np.float32)
    if colour == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return rgb, alpha, colour == 1


# --------------------------------------------------------------------------------------------
# reading


def list_images(root: str | Path) -> list[Path]:
    """All image files under ``root``, recursively, in a stable sorted order.

    Files are selected by suffix (case-insensitive, see :data:`IMAGE_EXTENSIONS`) without opening
    them: listing a 100k-image folder must stay cheap; broken files surface later as
    :class:`ImageError` from :func:`load_image`. Hidden files and folders (name starting with
    ``.``) are skipped: they are editor/OS debris such as macOS ``._x.jpg`` resource forks, and
    our own in-progress ``.x.png.tmp`` files. Sorting is by path components, so the order does
    not depend on the filesystem. A ``root`` that is itself an image file gives ``[root]``.
    """
    base = Path(root)
    if base.is_file():
        if base.suffix.lower() in IMAGE_EXTENSIONS:
            return [base]
        raise ImageError(f"not an image file or folder: {str(base)!r}")
    if not base.is_dir():
        raise ImageError(f"image folder does not exist: {str(base)!r}")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(base).parts)


def read_image_size(path: str | Path, *, apply_exif: bool = True) -> tuple[int, int]:
    """``(width, height)`` as displayed, from the header only (no pixel decoding).

    Used to plan work (batching, tiling, bomb checks, dataset filtering) without paying for a
    decode. With ``apply_exif`` the EXIF orientations that rotate by 90 degrees swap the two, so
    the answer matches ``load_image(path).rgb.shape``. Limitation: a PNG whose eXIf chunk comes
    after the pixel data (rare) is reported unrotated, because reading it would need a decode.
    Pillow's own hard limit (2 x ``Image.MAX_IMAGE_PIXELS``) still applies at open time and is
    reported as :class:`ImageError`.
    """
    p = Path(path)
    _check_is_file(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open(p) as im:
                width, height = im.size
                if im.format == "TIFF":  # Pillow reports a TIFF's size already turned by its orientation
                    width, height = _tags(im, 256, width)[0], _tags(im, 257, height)[0]  # stored size
                orientation = _exif_orientation_from_header(im) if apply_exif else 1
    except Image.DecompressionBombError as err:
        raise _error(p, f"refusing a possible decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise _error(p, _unidentified_reason()) from None
    except Exception as err:
        raise _error(p, _describe(err)) from None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return width, height


def _unidentified_reason() -> str:
    return "not a recognised image file (readable formats: " + ", ".join(_READ_FORMATS) + ")"


def load_image(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode an image file into a :class:`LoadedImage` (RGB in [0, 1] + alpha + ICC + grey flag).

    Steps and why:

    1. Open the header (formats restricted to :data:`IMAGE_EXTENSIONS`' formats) and refuse
       ``width * height > max_pixels`` *before* decoding: a few-hundred-byte PNG can declare
       20000 x 20000 pixels and would otherwise allocate gigabytes. ``max_pixels=None`` disables
       our cap; Pillow's own hard limit (2 x ``Image.MAX_IMAGE_PIXELS``) still applies and is
       reported as :class:`ImageError`. Pillow's bomb *warning* is silenced locally only.
    2. ``img.load()`` inside the ``try``: Pillow decodes lazily, so a truncated file only fails
       here, and must fail as :class:`ImageError`, not later inside a training loop.
    3. ``ImageOps.exif_transpose``: phone photos are stored sideways with an orientation tag.
    4. Convert every mode to RGB without losing information (see ``_decode``): 16-bit grey is
       divided by 65535 rather than clipped at 255; palette transparency becomes alpha; CMYK,
       YCbCr, LAB and HSV go through Pillow's conversion. Multi-frame files give their first frame.
       16-bit colour PNG and TIFF (which Pillow would reduce to 8 bits) skip Pillow's decoder:
       see ``_decode_sixteen_bit``; their alpha is uint16 and ``bits`` is 16.
    """
    p = Path(path)
    _check_is_file(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open(p) as im:
                width, height = im.size
                if max_pixels is not None and width * height > max_pixels:
                    raise _error(
                        p,
                        f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
                        "(possible decompression bomb; pass a larger max_pixels to allow it)",
                    )
                if _is_sixteen_bit_colour(p, im):  # the profile is in the header (PNG: before the pixels)
                    icc = _rgb_icc(im.info.get("icc_profile"))
                    rgb, alpha, was_gray = _decode_sixteen_bit(p, im)
                    bits = 16
                else:
                    im.load()
                    icc = _rgb_icc(im.info.get("icc_profile"))
                    upright = _exif_transpose(im)
                    rgb, alpha, was_gray = _decode(upright)
                    bits = _source_bits(upright)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise _error(p, f"refusing a possible decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise _error(p, _unidentified_reason()) from None
    except Exception as err:  # any decoder failure is a property of the file, not a bug here
        raise _error(p, _describe(err)) from None

    rgb_t = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))
    alpha_t = None
    if alpha is not None:
        alpha = alpha.astype(np.uint16 if alpha.dtype.itemsize == 2 else np.uint8)  # native endian
        alpha_t = torch.from_numpy(np.ascontiguousarray(alpha)[None])
    return LoadedImage(rgb=rgb_t, alpha=alpha_t, icc_profile=icc, was_gray=was_gray, bits=bits)


def load_rgb(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Shortcut for ``load_image(path).rgb``: what training data and style images need."""
    return load_image(path, max_pixels=max_pixels).rgb


# --------------------------------------------------------------------------------------------
# writing


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


def _rgb_to_uint16(rgb: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1], uint8 or uint16 -> HxWx3 uint16 (rounded; uint8 times 257)."""
    t = rgb.detach()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"rgb must be a (3, H, W) tensor, got shape {tuple(rgb.shape)}")
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
    """HxWx3 or HxWx4 uint16 ``pixels`` encoded as a 16-bit PNG or TIFF file.

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
    tifffile.imwrite(buffer, pixels, photometric="rgb",
                     extrasamples=("unassalpha",) if pixels.shape[-1] == 4 else None,
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
    t = rgb.detach()
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"rgb must be a (3, H, W) tensor, got shape {tuple(rgb.shape)}")
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
    if suffix not in _WRITE_FORMATS:
        got = f"extension {suffix!r}" if suffix else "no extension"
        raise _error(
            p, f"{got} is not a writable format (use one of {', '.join(WRITABLE_EXTENSIONS)})", verb="write"
        )
    if p.is_dir():
        raise _error(p, "is a directory", verb="write")
    if not overwrite and p.exists():
        raise _error(p, "file exists and overwrite=False", verb="write")


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); best effort where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, target: Path, overwrite: bool) -> None:
    """Move the finished temp file into place, atomically."""
    if overwrite:
        os.replace(tmp, target)
        return
    # link() fails if the target exists, so no check-then-replace race can clobber a file that
    # appeared meanwhile.
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise _error(target, "file exists and overwrite=False", verb="write") from None
    except OSError:  # filesystem without hard links: fall back to check + replace
        if target.exists():
            raise _error(target, "file exists and overwrite=False", verb="write") from None
        os.replace(tmp, target)
        return
    tmp.unlink()


def save_image(
    path: str | Path,
    rgb: torch.Tensor,
    *,
    alpha: torch.Tensor | None = None,
    icc_profile: bytes | None = None,
    quality: int = 95,
    overwrite: bool = True,
    bits: int | None = None,
) -> Path:
    """Write ``rgb`` (float ``(3, H, W)`` in [0, 1], or uint8 / uint16 levels) to ``path``
    atomically; return the path.

    The format comes from the extension: PNG (lossless, alpha), JPEG (``quality``; JPEG has no
    alpha, so ``alpha`` is dropped, not composited), WebP (``quality``, alpha kept losslessly),
    BMP, TIFF. ``icc_profile`` is embedded where the format supports it (all but BMP), so colours
    stay what the source meant. Parent folders are created.

    Bit depth: ``bits`` 16 (the default for uint16 ``rgb``, i.e. the output of a 16-bit source)
    writes 16 bits per sample, alpha included, where the format holds them
    (:data:`SIXTEEN_BIT_EXTENSIONS`: PNG and TIFF, through imagecodecs and tifffile, since Pillow
    cannot write 48/64-bit RGB(A)); JPEG, WebP and BMP get the pixels rounded to 8 bits. ``bits``
    8 (the default otherwise) always writes 8 bits.

    Atomicity: the image is encoded into ``.<name>.<random>.tmp`` in the target folder, flushed
    and ``fsync``-ed, then ``os.replace``-d over the target, so readers see either the old file or
    the complete new one. On any error, KeyboardInterrupt included, the temp file is removed.
    ``overwrite=False`` raises :class:`ImageError` if the target exists (checked before encoding
    and again, race-free, when publishing).
    """
    p = Path(path)
    check_output_path(p, overwrite=overwrite)
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if bits not in (None, 8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    fmt = _WRITE_FORMATS[p.suffix.lower()]
    depth = bits if bits is not None else (16 if rgb.dtype == torch.uint16 else 8)
    if depth == 16 and fmt in _SIXTEEN_BIT_FORMATS:
        pixels = _rgb_to_uint16(rgb)
        if alpha is not None:
            pixels = np.dstack([pixels, _alpha_to_uint16(alpha, *pixels.shape[:2])])

        def write(handle: Any) -> None:
            handle.write(_encode_sixteen_bit(fmt, pixels, icc_profile))
    else:
        img = to_pil(rgb, alpha)
        params: dict[str, object] = {}
        if fmt == "JPEG":
            if img.mode == "RGBA":
                img = img.convert("RGB")
            params["quality"] = int(quality)
        elif fmt == "WEBP":
            params["quality"] = int(quality)
        if icc_profile and fmt != "BMP":
            params["icc_profile"] = bytes(icc_profile)

        def write(handle: Any) -> None:
            img.save(handle, format=fmt, **params)

    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _error(p, f"cannot create folder ({err.strerror or err})", verb="write") from None

    tmp = p.parent / f".{p.name}.{secrets.token_hex(6)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        _publish(tmp, p, overwrite)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, ImageError) or not isinstance(err, Exception):
            raise
        raise _error(p, _one_line(str(err)) or type(err).__name__, verb="write") from None
    _fsync_dir(p.parent)
    return p


# --- Demo photos and resizing: light helpers shared by training, Gatys, scripts and inference. ---

#: scikit-image's bundled sample photos (colour and grey), used by ``data=demo``.
#: The demo's training photos. Not ``ihc.png`` (the demo style: training on the style image itself would
#: flatter the results) nor ``motorcycle_right.png`` (the stereo twin of ``motorcycle_left.png``, so a
#: near-duplicate of a photo that could be held out).
DEMO_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
               "hubble_deep_field.jpg", "retina.jpg", "camera.png")


def demo_root() -> Path:
    """The folder of scikit-image's sample images (shipped in its wheel, no download)."""
    import skimage

    return Path(skimage.__file__).parent / "data"


def resolve_image_path(spec: str | Path) -> Path:
    """A path, or ``demo:<name>`` for one of scikit-image's bundled photos (e.g. ``demo:chelsea``)."""
    text = str(spec)
    if text.startswith("demo:"):
        name = text.removeprefix("demo:")
        matches = sorted(demo_root().glob(f"{name}.*")) or sorted(demo_root().glob(name))
        if not matches:
            raise StylenetError(f"no bundled demo image {name!r}; choose one of "
                                f"{', '.join(Path(p).stem for p in DEMO_PHOTOS)}")
        return matches[0]
    return Path(text).expanduser()


def resize_short_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased bilinear resize of a (3, H, W) image so that its shorter side is ``size``."""
    height, width = image.shape[-2:]
    scale = size / min(height, width)
    new_size = (max(size, round(height * scale)), max(size, round(width * scale)))
    return F.interpolate(image.unsqueeze(0), size=new_size, mode="bilinear", antialias=True,
                         align_corners=False).squeeze(0).clamp_(0, 1)


def resize_long_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """Antialiased resize of a (3, H, W) image so that its longer side is ``size`` (style images)."""
    height, width = image.shape[-2:]
    scale = size / max(height, width)
    new_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(image.unsqueeze(0), size=new_size, mode="bilinear", antialias=True,
                         align_corners=False).squeeze(0).clamp_(0, 1)


def crop(image: torch.Tensor, size: int, rng: random.Random | None) -> torch.Tensor:
    """A size x size crop: random when ``rng`` is given, centred otherwise."""
    height, width = image.shape[-2:]
    top = rng.randint(0, height - size) if rng else (height - size) // 2
    left = rng.randint(0, width - size) if rng else (width - size) // 2
    return image[:, top: top + size, left: left + size]
