"""What stylenet reads and writes: file extensions, Pillow formats and modes, the decoded image.

The tables and types shared by :mod:`stylenet.image.read` and :mod:`stylenet.image.write`, and the
one error every image failure is: :class:`ImageError`, one line naming the file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from stylenet.errors import StylenetError, one_line


class ImageError(StylenetError, ValueError):
    """A file that is not a usable image (or cannot be written as one).

    ``str(err)`` is ONE line that names the file and the reason, e.g.
    ``"cannot read image 'x.jpg': truncated file"``, so that callers can log it and move on.
    It subclasses :class:`ValueError` because a bad file is bad *input*, not a bug.
    """


class TooManyPixelsError(ImageError):
    """An image refused for its size before it is decoded: over ``max_pixels``, or over Pillow's own
    bound (a possible decompression bomb)."""


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

#: Photo formats of phones and cameras that this Pillow does not read (HEIC/HEIF, AVIF, JPEG XL, raw files): a
#: folder's are named in a note (stylenet-stylize) or a warning (training), not passed over in silence.
UNREAD_PHOTO_SUFFIXES: tuple[str, ...] = (".heic", ".heif", ".avif", ".jxl", ".dng", ".cr2", ".cr3", ".nef", ".arw",
                                          ".raf", ".orf", ".rw2")


def unread_photos_note(files: list[Path]) -> str:
    """``files`` (of :data:`UNREAD_PHOTO_SUFFIXES`) as a phrase: how many, of which formats, and what to do."""
    suffixes = ", ".join(sorted({path.suffix.lower() for path in files}))
    return f"{len(files)} photo(s) in a format not read here ({suffixes}): convert them to JPEG or PNG"


#: Decompression-bomb cap in pixels (width * height), checked from the header before decoding.
#: 120 MP fits any real camera photo (a 100 MP medium-format frame included) while a float32
#: RGB tensor of that size is still only ~1.4 GB.
DEFAULT_MAX_PIXELS: int = 120_000_000

#: Pillow format names we let Pillow decode: exactly the formats behind IMAGE_EXTENSIONS.
#: (MPO, the multi-picture JPEG many phones write, is opened by the JPEG plugin.)
READ_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF", "PPM")

#: Output suffix -> Pillow format name.
WRITE_FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}

#: Formats that hold no alpha: :func:`save_image` drops it (not composited). Pillow writes BMP's alpha as
#: the 32-bit layout's reserved byte, which readers (Pillow among them) ignore.
OPAQUE_FORMATS = frozenset({"JPEG", "BMP"})

#: Lower-case suffixes :func:`save_image` can write.
WRITABLE_EXTENSIONS: tuple[str, ...] = tuple(WRITE_FORMATS)

#: Suffixes :func:`save_image` writes with 16 bits per sample when asked to (16-bit sources); the
#: others (JPEG, WebP, BMP) hold 8 bits, so 16-bit pixels are rounded to 8 bits for them.
SIXTEEN_BIT_EXTENSIONS: tuple[str, ...] = (".png", ".tif", ".tiff")
SIXTEEN_BIT_FORMATS = frozenset(WRITE_FORMATS[suffix] for suffix in SIXTEEN_BIT_EXTENSIONS)

GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
# Modes whose conversion to RGB Pillow implements properly (CMYK naively, i.e. without a profile).
CONVERTIBLE_MODES = frozenset({"RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
EXIF_ORIENTATION = 0x0112


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
    #: :attr:`rgb`), or a grey one on a grey source (valid for it written back grey: writers embed a
    #: profile only in a file of its own space, :func:`fitting_icc_profile`); ``None`` otherwise,
    #: e.g. for CMYK profiles, which would be wrong on an RGB output file.
    icc_profile: bytes | None
    #: The source had no colour (modes 1, L, LA, I, I;16*, F), so callers may write grey back.
    was_gray: bool
    #: Bits per sample worth keeping on output: 16 for 16-bit PNG, TIFF and PGM sources (and float
    #: TIFFs, 16 being the most an output file holds), 8 otherwise. The stylize and upscale commands
    #: quantise to this depth and :func:`save_image` writes it where the format holds it.
    bits: int = 8
    #: Frames in the file (an animated GIF, PNG or WebP, a multi-page TIFF): only the first is here.
    frames: int = 1


def fitting_icc_profile(profile: object, *, gray: bool) -> bytes | None:
    """``profile`` where it is an ICC profile for a grey image (a GRAY colour space, header bytes 16..20) if
    ``gray``, else for a colour one (RGB), None otherwise: a profile of another space (a CMYK JPEG's, a grey
    photo's on its colour output) would misdescribe the pixels."""
    if isinstance(profile, (bytes, bytearray)) and profile[16:20] == (b"GRAY" if gray else b"RGB "):
        return bytes(profile)
    return None


def compact(image: LoadedImage) -> LoadedImage:
    """``image`` with its RGB held as compactly as its source allows while the networks run: an
    8-bit source as its uint8 levels (a quarter of float32's memory; :func:`unit_float` makes them
    ``k / 255`` in float32 again, the very values :func:`~stylenet.image.from_pil` gives, so a
    command's output is the notebook API's), a 16-bit one in float32. Not float16: ``k / 255`` is
    off by up to 0.07 of a level there, and a network amplifies that on a photo of low contrast."""
    if image.bits > 8 or image.rgb.dtype == torch.uint8:  # nothing to narrow, or held so already
        return image
    return dataclasses.replace(image, rgb=image.rgb.mul(255.0).round_().to(torch.uint8))


def unit_float(rgb: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """An image in float32 on ``device`` (its own by default): uint8 levels ``k`` (:func:`compact`)
    as ``k / 255`` (:func:`levels_to_unit_`); a float image in [0, 1] as it is (the same tensor if it is
    already float32 there)."""
    out = rgb.to(device or rgb.device, torch.float32)
    return levels_to_unit_(out) if rgb.dtype == torch.uint8 else out


def levels_to_unit_(levels: torch.Tensor) -> torch.Tensor:
    """8-bit levels ``k`` held in a float32 tensor, divided in place into ``k / 255``, correctly rounded
    as :func:`~stylenet.image.from_pil` computes them. The divisor is a tensor on the device: CUDA
    divides by a Python number as a product with its reciprocal, a unit off in the last place for about
    half the levels."""
    return levels.div_(torch.full((), 255.0, device=levels.device))


def file_error(path: str | Path, reason: str, *, verb: str = "read", kind: type[ImageError] = ImageError
               ) -> ImageError:
    """``cannot <verb> image '<path>': <reason>`` as an :class:`ImageError` (or ``kind`` of it), on one
    line (repr() quotes the name and escapes any newline inside it)."""
    return kind(f"cannot {verb} image {str(path)!r}: {one_line(reason)}")
