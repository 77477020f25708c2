"""Images: the single place where pixels enter and leave stylenet, and the operations on them.

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
  from the header before any decoding) and Pillow's bomb warning is only silenced locally. (A command,
  which owns its process, raises ``Image.MAX_IMAGE_PIXELS`` for a ``--max-pixels`` beyond Pillow's limit:
  :func:`stylenet.cli.allow_pixels`.)
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

The modules: :mod:`~stylenet.image.formats` (extensions, modes, :class:`LoadedImage`,
:class:`ImageError`), :mod:`~stylenet.image.read`, :mod:`~stylenet.image.write`,
:mod:`~stylenet.image.resize`, :mod:`~stylenet.image.colour` and :mod:`~stylenet.image.demo`; their
public names are all importable from ``stylenet.image``.
"""

from stylenet.image.colour import LUMA_WEIGHTS, luma, match_histogram
from stylenet.image.demo import DEMO_PHOTOS, demo_root, resolve_image_path
from stylenet.image.formats import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    SIXTEEN_BIT_EXTENSIONS,
    UNREAD_PHOTO_SUFFIXES,
    WRITABLE_EXTENSIONS,
    ImageError,
    LoadedImage,
    TooManyPixelsError,
    compact,
    fitting_icc_profile,
    levels_to_unit_,
    unit_float,
    unread_photos_note,
)
from stylenet.image.read import from_pil, list_by_kind, list_images, load_image, load_rgb, read_image_size
from stylenet.image.resize import (
    crop,
    long_side_shape,
    resize,
    resize_alpha,
    resize_long_side,
    resize_short_side,
    short_side_shape,
    target_size,
    training_sample,
)
from stylenet.image.write import check_output_path, check_output_size, drops_transparency, save_image, to_pil

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEMO_PHOTOS",
    "IMAGE_EXTENSIONS",
    "LUMA_WEIGHTS",
    "SIXTEEN_BIT_EXTENSIONS",
    "UNREAD_PHOTO_SUFFIXES",
    "WRITABLE_EXTENSIONS",
    "ImageError",
    "LoadedImage",
    "TooManyPixelsError",
    "check_output_path",
    "check_output_size",
    "compact",
    "crop",
    "demo_root",
    "drops_transparency",
    "fitting_icc_profile",
    "from_pil",
    "levels_to_unit_",
    "list_by_kind",
    "list_images",
    "load_image",
    "load_rgb",
    "long_side_shape",
    "luma",
    "match_histogram",
    "read_image_size",
    "resize",
    "resize_alpha",
    "resize_long_side",
    "resize_short_side",
    "resolve_image_path",
    "save_image",
    "short_side_shape",
    "target_size",
    "to_pil",
    "training_sample",
    "unit_float",
    "unread_photos_note",
]
