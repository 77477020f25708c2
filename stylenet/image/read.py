"""Reading image files into :class:`~stylenet.image.formats.LoadedImage`: every mode, bit depth,
EXIF orientation, alpha band and colour profile, and every failure as one :class:`ImageError` line.

Only the formats we advertise are decoded (Pillow identifies files by content, and some of its
plugins are risky or slow), the pixel cap is checked from the header before decoding, and 16-bit
colour PNG and TIFF, which Pillow reduces to 8 bits, are decoded with imagecodecs and tifffile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import warnings
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from stylenet.errors import one_line
from stylenet.image.formats import (
    CONVERTIBLE_MODES,
    DEFAULT_MAX_PIXELS,
    EXIF_ORIENTATION,
    GRAY_MODES,
    IMAGE_EXTENSIONS,
    READ_FORMATS,
    SIXTEEN_BIT_MODES,
    ImageError,
    LoadedImage,
    TooManyPixelsError,
    file_error,
    fitting_icc_profile,
)

log = logging.getLogger(__name__)


def _describe(err: BaseException) -> str:
    """Turn a decoder exception into a short human reason."""
    text = one_line(str(err)) or type(err).__name__
    if isinstance(err, EOFError) or "truncat" in text.lower():
        return f"truncated file ({text})"
    if isinstance(err, MemoryError):
        return "not enough memory to decode it"
    return f"corrupt or unsupported image data ({type(err).__name__}: {text})"


def _check_is_file(p: Path) -> None:
    """Fail early, with a clear reason, on the cases Pillow reports obscurely."""
    try:
        if p.is_dir():
            raise file_error(p, "is a directory, not a file")
        if not p.exists():
            raise file_error(p, "no such file")
        if not p.is_file():  # a named pipe, a socket, a device: opening one may wait for ever
            raise file_error(p, "not a regular file (a named pipe, socket or device)")
        if p.stat().st_size == 0:
            raise file_error(p, "empty file (0 bytes)")
    except OSError as err:  # e.g. permission denied on a parent directory
        raise file_error(p, err.strerror or str(err)) from None


def _open(p: Path) -> Image.Image:
    """Open (header only) a file, restricted to the formats we support."""
    return Image.open(p, formats=READ_FORMATS)


def _exif_orientation_from_header(im: Image.Image) -> int:
    """EXIF orientation without decoding pixel data.

    PngImageFile.getexif() decodes the whole image when the eXIf chunk was not seen before IDAT,
    so for PNG we only look at what the header pass found.
    """
    if im.format == "PNG" and "exif" not in im.info:  # an XMP packet's orientation, as Pillow reads it there
        match = re.search(r'tiff:Orientation(?:="|>)([1-8])', str(im.info.get("XML:com.adobe.xmp", "")))
        return int(match[1]) if match else 1
    try:
        return int(im.getexif().get(EXIF_ORIENTATION, 1))
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


def decode_pil(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Convert a loaded Pillow image of any supported mode to (HxWx3 float32, HxW alpha, was_gray).

    Pillow's ``convert("RGB")`` is not used blindly because it silently drops alpha and squashes
    16-bit data to 8 bits by clipping at 255 (a 16-bit mid-grey would turn white).
    """
    mode = im.mode
    key = im.info.get("transparency")
    alpha: np.ndarray | None = None
    was_gray = mode in GRAY_MODES

    if mode in ("1", "L"):
        if key is not None:
            arr = np.asarray(im.convert("LA"))  # Pillow maps the key (any bit depth) to alpha
            grey, alpha = arr[..., 0], arr[..., 1]
        else:
            grey = np.asarray(im.convert("L"))
        grey = grey.astype(np.float32) / np.float32(255.0)
    elif mode in ("LA", "La"):
        arr = np.asarray(im if mode == "LA" else im.convert("LA"))  # La: alpha premultiplied, undone
        grey = arr[..., 0].astype(np.float32) / np.float32(255.0)
        alpha = arr[..., 1]
    elif mode in SIXTEEN_BIT_MODES or mode == "I":
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
    elif mode in CONVERTIBLE_MODES:
        arr = np.asarray(im.convert("RGB"))
    else:
        raise ValueError(f"unsupported image mode {mode!r}")

    if arr.shape[2] == 4:
        alpha = arr[..., 3]
    rgb = arr[..., :3].astype(np.float32) / np.float32(255.0)
    return rgb, alpha, was_gray


def _stored_white_as_zero(im: Image.Image) -> bool:
    """A 16-bit, 32-bit or float grey TIFF stored "MinIsWhite" (photometric 0: 0 is white, as scanners and fax
    software write it). Pillow turns an 8-bit one's samples round as it reads them, not these: their negative."""
    return im.format == "TIFF" and (im.mode in SIXTEEN_BIT_MODES or im.mode in ("I", "F")) and \
        getattr(im, "tag_v2", {}).get(262) == 0


def _source_bits(im: Image.Image) -> int:
    """16 for Pillow's 16-bit and wider modes (I;16*, I, F), else 8: the depth worth writing back."""
    return 16 if im.mode in SIXTEEN_BIT_MODES or im.mode in ("I", "F") else 8


def kept_icc_profile(profile: object, was_gray: bool) -> bytes | None:
    """The ICC profile kept of a source: one of an RGB colour space, or of a grey one on a grey source
    (written back on its grey output: ``--keep-gray``)."""
    return fitting_icc_profile(profile, gray=False) or (fitting_icc_profile(profile, gray=True) if was_gray else None)


def orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
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


@dataclass(frozen=True)
class TiffHeader:
    """What :func:`load_image` needs of a TIFF's header when Pillow cannot read it."""

    width: int  # as stored
    height: int
    orientation: int  # EXIF's numbering
    icc_profile: bytes | None
    frames: int = 1  # pages: a scanner's multi-page file


def _grey_tiff_beyond_pillow(p: Path) -> TiffHeader | None:
    """The header of a 16-bit grey TIFF that Pillow cannot open, which :func:`_decode_sixteen_bit` decodes: grey
    + alpha (Pillow has no 16-bit mode of two samples; ``stylenet-stylize --keep-gray`` writes such files), or a
    big-endian MinIsWhite grey; None for any other file, which Pillow opens or refuses itself."""
    if p.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        with warnings.catch_warnings():  # what Pillow warns of, it says again where the file is opened
            warnings.simplefilter("ignore")
            with _open(p):
                return None
    except UnidentifiedImageError:
        pass
    except Exception:
        return None
    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            page = tif.pages[0]  # grey, 0 white or black
            if page.dtype != np.uint16 or page.samplesperpixel not in (1, 2) or page.photometric not in (0, 1):
                return None
            profile = page.tags.get(34675)  # InterColorProfile
            return TiffHeader(page.imagewidth, page.imagelength, _tiff_orientation(page),
                              profile.value if profile is not None else None, len(tif.pages))
    except Exception:
        return None


def _tiff_orientation(page: Any) -> int:
    """A tifffile page's Orientation tag (274), as EXIF numbers it; 1 if absent or malformed."""
    try:
        tag = page.tags.get(274)
        return int(tag.value) if tag is not None else 1
    except (TypeError, ValueError):
        return 1


def _decode_sixteen_bit(p: Path, im: Image.Image | None) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """A 16-bit colour PNG or TIFF (see :func:`_is_sixteen_bit_colour`), or a 16-bit grey + alpha TIFF
    (:func:`_grey_tiff_beyond_pillow`; ``im`` None: Pillow cannot open it) -> (HxWx3 float32 in [0, 1], HxW
    uint16 alpha or None, was_gray), EXIF orientation applied.

    imagecodecs decodes PNG (libpng: interlacing, and tRNS colour keys as an alpha channel);
    tifffile decodes TIFF (any compression imagecodecs has, strips or tiles, planar or not).
    Associated (premultiplied) TIFF alpha is divided out, as Pillow's ``RGBa`` -> ``RGBA`` does.
    """
    associated = white_as_zero = False
    if im is not None and im.format == "PNG":
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
            orientation = _tiff_orientation(page)
            white_as_zero = page.photometric == 0  # MinIsWhite grey
        if axes.startswith("S"):  # planar configuration: one plane per sample
            samples = np.moveaxis(samples, 0, -1)
        if samples.ndim == 2:  # one sample per pixel
            samples = samples[..., None]
        alpha_index = colour if extras and int(extras[0]) in (1, 2) else None  # 1 associated, 2 unassociated
        associated = alpha_index is not None and int(extras[0]) == 1
    if samples.ndim != 3 or samples.dtype != np.uint16 or samples.shape[-1] < colour:
        raise ValueError(f"unsupported 16-bit layout {samples.dtype} {samples.shape}")
    samples = orient(samples, orientation)
    rgb = samples[..., :colour].astype(np.float32) / np.float32(65535.0)
    if white_as_zero:
        np.subtract(1.0, rgb, out=rgb)
    alpha = np.ascontiguousarray(samples[..., alpha_index]) if alpha_index is not None else None
    if associated and alpha is not None:
        weight = alpha[..., None].astype(np.float32) / np.float32(65535.0)
        rgb = np.where(weight > 0, np.minimum(rgb / np.maximum(weight, 1e-12), 1.0), 0.0).astype(np.float32)
    if colour == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return rgb, alpha, colour == 1


def list_images(root: str | Path, suffixes: Collection[str] = IMAGE_EXTENSIONS, *,
                skip_runs: bool = False) -> list[Path]:
    """All image files under ``root``, recursively, in a stable sorted order (or the files of other
    ``suffixes``, lower case: ``stylenet-stylize`` counts a folder's videos by the same walk).

    With ``skip_runs`` the folders Hydra writes a run or a sweep into (those holding ``.hydra/`` or
    ``multirun.yaml``) are left out, with a warning: training from a folder that is also where its
    runs go (``data.root=.``) would otherwise take an earlier run's figure and its style picture for photos.

    Files are selected by suffix (case-insensitive, see :data:`IMAGE_EXTENSIONS`) without opening
    them: listing a 100k-image folder must stay cheap; broken files surface later as
    :class:`ImageError` from :func:`load_image`. Hidden files and folders (name starting with
    ``.``) are skipped: they are editor/OS debris such as macOS ``._x.jpg`` resource forks, and
    our own in-progress ``.x.<random>.tmp.png`` files. Links to folders are followed (a dataset is
    often assembled from links), each real folder listed once, so a link loop ends. Sorting is by path
    components, so the order does not depend on the filesystem. A ``root`` that is itself an image file
    gives ``[root]``.
    """
    base = Path(root)
    try:
        is_file, is_dir = base.is_file(), base.is_dir()
    except OSError as err:  # a name too long for the filesystem, ...: pathlib re-raises what it does not expect
        raise ImageError(f"cannot read {str(base)!r}: {err.strerror or type(err).__name__}") from None
    if is_file:
        if base.suffix.lower() in suffixes:
            return [base]
        raise ImageError(f"not an image file or folder: {str(base)!r}")
    if not is_dir:
        raise ImageError(f"no such image file or folder: {str(base)!r}")
    found: list[Path] = []
    runs: list[str] = []
    for dirpath, dirnames, filenames in walk_folders(base):
        if skip_runs and dirpath != str(base) and (".hydra" in dirnames or "multirun.yaml" in filenames):
            runs.append(dirpath)
            dirnames[:] = []
            continue
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in suffixes:
                found.append(Path(dirpath) / name)
    if runs:
        log.warning("left out %d folder(s) under %s that hold a run's outputs, not photos: %s", len(runs), base,
                    ", ".join(os.path.relpath(run, base) for run in runs[:3]) + (", ..." if len(runs) > 3 else ""))
    return sorted(found, key=lambda p: p.relative_to(base).parts)


def list_by_kind(root: str | Path, *kinds: Collection[str], skip_runs: bool = False) -> list[list[Path]]:
    """:func:`list_images` of ``root`` for the suffixes of every kind at once (one walk), split by kind: a
    folder's photos, beside its photos in formats not read here (named, not passed over) and its videos."""
    listed = list_images(root, [suffix for suffixes in kinds for suffix in suffixes], skip_runs=skip_runs)
    return [[path for path in listed if path.suffix.lower() in suffixes] for suffixes in kinds]


def walk_folders(base: Path) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(base)``, following links to folders (a dataset, or a folder of models, is often assembled
    from links), each real folder once, so that a link loop ends; hidden folders are not entered, the
    others in a fixed order. The caller may empty the ``dirnames`` it is given (before they are filtered:
    a run's ``.hydra``) to go no deeper there."""
    walked: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in walked:  # a second link to a folder already listed, or a link loop
            dirnames[:] = []
            continue
        walked.add(real)
        yield dirpath, dirnames, filenames
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # which link comes first: fixed


def read_image_size(path: str | Path, *, apply_exif: bool = True) -> tuple[int, int]:
    """``(width, height)`` as displayed, from the header only (no pixel decoding).

    Used to refuse a picture beyond a pixel limit (a style picture, an upload to the web page) before
    paying for its decode. With ``apply_exif`` the EXIF orientations that rotate by 90 degrees swap
    the two, so the answer matches ``load_image(path).rgb.shape``. Limitation: a PNG whose eXIf chunk comes
    after the pixel data (rare) is reported unrotated, because reading it would need a decode.
    Pillow's own hard limit (2 x ``Image.MAX_IMAGE_PIXELS``) still applies at open time and is
    reported as :class:`ImageError`.
    """
    p = Path(path)
    _check_is_file(p)
    tiff = _grey_tiff_beyond_pillow(p)
    if tiff is not None:
        width, height, orientation = tiff.width, tiff.height, tiff.orientation if apply_exif else 1
    else:
        with _opened(p) as im:
            width, height = im.size
            if im.format == "TIFF":  # Pillow reports a TIFF's size already turned by its orientation
                width, height = _tags(im, 256, width)[0], _tags(im, 257, height)[0]  # stored size
            orientation = _exif_orientation_from_header(im) if apply_exif else 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return width, height


#: The first bytes of the readable formats (WebP: RIFF, 4 bytes of size, then WEBP) and of BMP ("BM").
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"))


def _signature_format(p: Path) -> str | None:
    """The format whose signature ``p`` starts with, or None: tells a cut-off photo from another file."""
    try:
        with open(p, "rb") as handle:
            head = handle.read(12)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((kind for signature, kind in _SIGNATURES if head.startswith(signature)), None)


def _tiff_layout(p: Path) -> str | None:
    """``"3 float32 samples per pixel"`` (with its compression where the samples are 8- or 16-bit integers,
    which Pillow reads otherwise: ``"..., LERC compressed"``) for a TIFF whose header tifffile reads; None if
    it cannot. From the header alone: a small file may declare gigapixels, and no pixel limit applies here."""
    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            page = tif.pages[0]
            layout = f"{page.samplesperpixel} {page.dtype} sample{'s' if page.samplesperpixel > 1 else ''} per pixel"
            if page.dtype in (np.uint8, np.uint16) and page.compression != tifffile.COMPRESSION.NONE:
                layout += f", {page.compression.name} compressed"
            return layout
    except Exception:
        return None


@contextlib.contextmanager
def _opened(p: Path, max_pixels: int | None = None) -> Iterator[Image.Image]:
    """``p`` opened, header only, restricted to our formats, Pillow's bomb warning silenced here
    only; any failure inside the block, decoding included, becomes one :class:`ImageError` line.
    Pillow's own refusal (beyond twice its limit, before our ``max_pixels`` is looked at) is ours where
    the image passes ``max_pixels`` too: the limit in force and the settings that raise it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open(p) as im:
                yield im
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        declared = re.search(r"\((\d+) pixels\)", str(err))
        if declared is not None:
            _check_pixel_count(p, int(declared[1]), max_pixels)
        raise file_error(p, f"refusing a possible decompression bomb ({err})", kind=TooManyPixelsError) from None
    except UnidentifiedImageError:
        kind = _signature_format(p)
        layout = _tiff_layout(p) if kind == "TIFF" else None
        if layout is not None:  # a TIFF whose samples or compression Pillow has no decoder for (float RGB, LERC)
            raise file_error(p, f"this TIFF's {layout} cannot be decoded here: convert it to an 8- or 16-bit RGB or "
                                "grey TIFF, or a PNG") from None
        if kind is not None:  # Pillow gives up on a PNG cut after its header as on a text file
            raise file_error(p, f"truncated or corrupt {kind} file (it starts as one, but cannot be read)") from None
        raise file_error(p, "not a recognised image file (readable formats: " + ", ".join(READ_FORMATS) + ")") from None
    except Exception as err:  # any decoder failure is a property of the file, not a bug here
        raise file_error(p, _describe(err)) from None


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
    4. Convert every mode to RGB without losing information (see :func:`decode_pil`): 16-bit grey is
       divided by 65535 rather than clipped at 255; palette transparency becomes alpha; CMYK,
       YCbCr, LAB and HSV go through Pillow's conversion. Multi-frame files give their first frame.
       16-bit colour PNG and TIFF (which Pillow would reduce to 8 bits) skip Pillow's decoder:
       see ``_decode_sixteen_bit``; their alpha is uint16 and ``bits`` is 16.
    """
    p = Path(path)
    _check_is_file(p)
    tiff = _grey_tiff_beyond_pillow(p)
    if tiff is not None:  # Pillow cannot open it: tifffile alone reads it
        _check_pixels(p, tiff.width, tiff.height, max_pixels)
        try:
            rgb, alpha, was_gray = _decode_sixteen_bit(p, None)
        except Exception as err:  # a decoder failure is a property of the file
            raise file_error(p, _describe(err)) from None
        icc, bits, frames = tiff.icc_profile, 16, tiff.frames
    else:
        rgb, alpha, icc, was_gray, bits, frames = _load_with_pillow(p, max_pixels)
    rgb_t = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))
    alpha_t = None
    if alpha is not None:
        alpha = alpha.astype(np.uint16 if alpha.dtype.itemsize == 2 else np.uint8)  # native endian
        alpha_t = torch.from_numpy(np.ascontiguousarray(alpha)[None])
    return LoadedImage(rgb=rgb_t, alpha=alpha_t, icc_profile=kept_icc_profile(icc, was_gray), was_gray=was_gray,
                       bits=bits, frames=frames)


def _check_pixels(p: Path, width: int, height: int, max_pixels: int | None) -> None:
    """Refuse an image of more than ``max_pixels`` pixels before it is decoded (a decompression bomb)."""
    _check_pixel_count(p, width * height, max_pixels, f"{width}x{height} = ")


def _check_pixel_count(p: Path, pixels: int, max_pixels: int | None, size: str = "") -> None:
    """:func:`_check_pixels` of a count alone (all Pillow's refusal says), ``size`` written before it."""
    if max_pixels is not None and pixels > max_pixels:
        raise file_error(p, f"{size}{pixels} pixels exceeds the limit of {max_pixels} "
                            "(a possible decompression bomb; a larger limit admits it: --max-pixels on the "
                            "command line, data.max_pixels in training, max_pixels= in Python and stylenet-gatys)",
                         kind=TooManyPixelsError)


def _load_with_pillow(p: Path, max_pixels: int | None
                      ) -> tuple[np.ndarray, np.ndarray | None, bytes | None, bool, int, int]:
    """:func:`load_image`'s decoding of every file Pillow opens: (rgb, alpha, ICC profile, was_gray, bits,
    frames in the file)."""
    with _opened(p, max_pixels) as im:
        _check_pixels(p, *im.size, max_pixels)
        # animations and multi-page TIFFs; not a camera's MPO JPEG, whose second picture is a preview or a depth map
        frames = getattr(im, "n_frames", 1) if im.format in ("GIF", "PNG", "WEBP", "TIFF") else 1
        if _is_sixteen_bit_colour(p, im):  # the profile is in the header (PNG: before the pixels)
            icc = im.info.get("icc_profile")
            rgb, alpha, was_gray = _decode_sixteen_bit(p, im)
            bits = 16
        else:
            if im.format == "TIFF":  # Pillow 13 maps an uncompressed L, P, RGBA, I;16 ... TIFF into memory at
                im.filename = ""  # its size as turned (orientation 5-8) and scrambles it: read it instead
            im.load()
            icc = im.info.get("icc_profile")
            upright = _exif_transpose(im)
            rgb, alpha, was_gray = decode_pil(upright)
            if _stored_white_as_zero(im):
                np.subtract(1.0, rgb, out=rgb)
            bits = _source_bits(upright)
    return rgb, alpha, icc, was_gray, bits, frames


def load_rgb(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Shortcut for ``load_image(path).rgb``: what training data and style images need."""
    return load_image(path, max_pixels=max_pixels).rgb


def from_pil(image: Image.Image) -> LoadedImage:
    """A PIL image already in memory -> :class:`LoadedImage`, with the mode handling files get
    (:func:`decode_pil`: 16-bit, palette transparency, LA, ...), EXIF orientation applied."""
    name = getattr(image, "filename", "") or "given"
    try:  # a PIL image opened from a file decodes now: a file cut short fails here
        image.load()  # the pixels of a lazily opened file; a closed image's are gone
    except (ValueError, AssertionError):  # closed after loading / before (Pillow asserts on its missing file)
        raise ImageError(f"the PIL image {name!r} was closed before stylenet read it: stylize it inside its "
                         "with block, or pass a copy made there (image.copy())") from None
    except (OSError, SyntaxError) as err:
        raise ImageError(f"cannot read image {name!r}: {err}") from None
    try:
        upright = ImageOps.exif_transpose(image)
        rgb, alpha, was_gray = decode_pil(upright)
        if _stored_white_as_zero(image):
            np.subtract(1.0, rgb, out=rgb)
    except (OSError, SyntaxError) as err:
        raise ImageError(f"cannot read image {name!r}: {err}") from None
    rgb_t = torch.from_numpy(rgb.transpose(2, 0, 1).copy())
    alpha_t = None if alpha is None else torch.from_numpy(alpha.copy())[None]
    return LoadedImage(rgb=rgb_t, alpha=alpha_t, icc_profile=kept_icc_profile(image.info.get("icc_profile"), was_gray),
                       was_gray=was_gray, bits=_source_bits(upright))
