"""The one image reader of detkit: every dataset, check-data, browse and inference read through here.

:func:`read_image` returns ``uint8 [H, W, 3]`` RGB for any file OpenCV can decode:

* the file is read as bytes and decoded with ``cv2.imdecode``, so names with spaces or non-ASCII
  characters work everywhere (``cv2.imread`` cannot open non-ASCII paths on Windows);
* the EXIF orientation is applied: in OpenCV 5.0 ``imdecode`` with ``IMREAD_COLOR``,
  ``IMREAD_COLOR_RGB`` or ``IMREAD_ANYCOLOR`` rotates like ``imread`` does (checked; only
  ``IMREAD_UNCHANGED`` and ``IMREAD_IGNORE_ORIENTATION`` skip it). Annotations are therefore taken to
  be in the orientation a viewer shows, as COCO, detectron2 and ultralytics assume;
* grey and palette images become 3 channels; an alpha channel is dropped (not composited), like
  ``PIL.Image.convert("RGB")`` and torchvision's ``ImageReadMode.RGB``;
* 16-bit images are scaled to 8 bit by ``round(v * 255 / 65535)`` (65535 -> 255), not truncated;
* a missing, empty, unreadable or undecodable file raises :class:`~detkit.errors.DataError` naming
  the path and the problem.

**Decompression bombs.** A 100 KB PNG can declare 30000x30000 pixels (2.7 GB once decoded). The size
is read from the file's header (:func:`header_size`, a few bytes of JPEG, PNG, GIF, BMP, WebP or
TIFF, no decoding) and an image with more pixels than the limit is refused with a DataError before
anything is allocated. The limit is Pillow's ``Image.MAX_IMAGE_PIXELS`` (89,478,485 pixels, about
0.25 GB of RGB) unless ``data.max_image_pixels`` in the config, the ``max_pixels`` argument, or the
environment variable ``DETKIT_MAX_IMAGE_PIXELS`` says otherwise (``0``: no limit). The check is here,
so it covers check-data, training, evaluation and inference alike.

**Truncated JPEGs** (a file that ends before its end-of-image marker, common in real photo sets) are
*restored*, as ultralytics does and as Pillow's ``LOAD_TRUNCATED_IMAGES`` mode decodes them: the
missing end-of-image marker is appended and the part that is there is decoded (the missing rows
come out grey). :func:`read_image` logs a warning once per file ("restored"); the verification pass
(:mod:`detkit.data.verify`) counts them. A file that ends before any image data is undecodable.
libjpeg only prints "Premature end of JPEG file" to stderr, where Python cannot see it, and OpenCV 5's
``imdecode`` returns ``None`` for a cut-off buffer while ``imread`` and older builds return a
half-grey image; so truncation is found by walking the JPEG marker by marker
(:func:`jpeg_structure_problem`: segment lengths are skipped and the entropy-coded data is scanned
with one regular expression in C) to its end-of-image marker. That is stricter than "the last two
bytes are FF D9", which rejects good files with trailing bytes (camera trailers) and accepts a cut
inside an embedded EXIF thumbnail. Restored files are decoded with Pillow, which adds the marker the
same way and prints nothing (OpenCV's libjpeg prints a warning line per file).
"""

from __future__ import annotations

import io
import logging
import os
import re
import threading
import warnings
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from detkit.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "DEFAULT_MAX_IMAGE_PIXELS", "ImageSize", "ImageCheck", "ImageTooLargeError",
           "read_image", "decode_image", "image_size", "header_size", "check_image_file", "max_image_pixels",
           "sniff_format", "jpeg_structure_problem"]

logger = logging.getLogger(__name__)

# Extensions treated as images when searching folders (compared lower-cased).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")

# Pillow's Image.MAX_IMAGE_PIXELS (1024**3 // 4 // 3), the limit users of PIL-based loaders know.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
MAX_PIXELS_ENV = "DETKIT_MAX_IMAGE_PIXELS"

# OpenCV >= 4.10 decodes straight to RGB; older builds decode BGR and we convert.
_RGB_FLAG = getattr(cv2, "IMREAD_COLOR_RGB", None)
# ANYDEPTH keeps 16-bit data 16-bit (plain IMREAD_COLOR would cut it to its high byte itself, but
# keeping it lets us round properly and lets the check below see what the file really held).
_DECODE_FLAGS = (_RGB_FLAG if _RGB_FLAG is not None else cv2.IMREAD_COLOR) | cv2.IMREAD_ANYDEPTH
# Checking a JPEG: libjpeg's 1/8 scaling still decodes every entropy-coded block (so corrupt data
# fails the same way) but skips most of the inverse DCT and colour conversion.
_CHECK_FLAGS_JPEG = cv2.IMREAD_REDUCED_COLOR_8


class ImageSize(NamedTuple):
    """Size of an image after EXIF orientation, in the order of ``image.shape[:2]``."""

    height: int
    width: int


class ImageCheck(NamedTuple):
    """What :func:`check_image_file` found: the decoded size and, for a restored file, why."""

    height: int
    width: int
    restored: str | None = None  # the problem that was worked around (a truncated JPEG), or None


class ImageTooLargeError(DataError):
    """The header declares more pixels than the limit (a decompression bomb, or a genuine huge image)."""

    def __init__(self, message: str, width: int, height: int):
        super().__init__(message)
        self.width, self.height = width, height


def max_image_pixels(limit: int | None = None) -> int:
    """The pixel limit in force: ``limit`` when given, else ``$DETKIT_MAX_IMAGE_PIXELS``, else Pillow's.

    ``0`` means no limit.
    """
    if limit is None:
        text = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_IMAGE_PIXELS
        try:
            limit = int(float(text))
        except ValueError:
            raise DataError(f"{MAX_PIXELS_ENV}={text!r}: expected a number of pixels (0: no limit)") from None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
        raise DataError(f"max_image_pixels: expected a number of pixels >= 0 (0: no limit), got {limit!r}")
    return int(limit)


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as ``uint8 [H, W, 3]`` RGB (EXIF orientation applied).

    ``max_pixels``: refuse larger images (default: :func:`max_image_pixels`). A truncated JPEG is
    restored and logged once per file. Raises :class:`DataError` naming ``path`` when the file is
    missing, empty, unreadable, over the pixel limit or not a decodable image.
    """
    path = Path(path)
    image, restored = _decode(_read_bytes(path), str(path), max_pixels)
    if restored:
        _warn_restored(str(path), restored)
    return image


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes like :func:`read_image`; ``name`` is used in messages."""
    image, restored = _decode(data, name, max_pixels)
    if restored:
        _warn_restored(name, restored)
    return image


def check_image_file(path: str | os.PathLike, max_pixels: int | None = None) -> ImageCheck:
    """Decode ``path`` once to prove it is usable; returns its size (after EXIF) and whether it was restored.

    Raises what :func:`read_image` raises (:class:`ImageTooLargeError` for the pixel limit). Cheaper
    than :func:`read_image` for JPEGs (decoded at 1/8 scale: every block is still decoded).
    """
    path = Path(path)
    data = _read_bytes(path)
    name = str(path)
    kind, raw = _check_header(data, name, max_pixels)
    if kind == "JPEG" and raw is not None and jpeg_structure_problem(data) is None:
        small = cv2.imdecode(np.frombuffer(data, np.uint8), _CHECK_FLAGS_JPEG)
        if small is not None:
            size = _size_from_reduced(small.shape[:2], raw, data)
            if size is not None:
                return ImageCheck(*size)
    image, restored = _decode(data, name, max_pixels)
    return ImageCheck(image.shape[0], image.shape[1], restored)


def image_size(path: str | os.PathLike) -> ImageSize:
    """``(height, width)`` of an image after EXIF orientation, read from the header only (no decoding).

    Uses Pillow's lazy ``Image.open``, which parses the header and EXIF but not the pixel data.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply our own limit
            with Image.open(path) as img:
                width, height = img.size
                orientation = img.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot read the image header: {exc}") from None
    if orientation in (5, 6, 7, 8):  # these orientations transpose the image
        width, height = height, width
    return ImageSize(int(height), int(width))


# ----------------------------------------------------------------------------------------------
# Reading and decoding
# ----------------------------------------------------------------------------------------------
def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an image file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read image file: {exc.strerror or exc}") from None


def _check_header(data: bytes, name: str, max_pixels: int | None) -> tuple[str | None, tuple[int, int] | None]:
    """Format and header size ``(width, height)``; raises ImageTooLargeError over the pixel limit."""
    if not data:
        raise DataError(f"{name}: empty image file (0 bytes)")
    kind = sniff_format(data)
    size = header_size(data, kind)
    limit = max_image_pixels(max_pixels)
    if size is not None and limit and size[0] * size[1] > limit:
        width, height = size
        raise ImageTooLargeError(
            f"{name}: refused, the header declares {width}x{height} = {width * height:,} pixels, over the limit "
            f"of {limit:,} (decoding would take {width * height * 3 / 2**30:.1f} GB). "
            f"A decompression bomb, or a genuine huge image: then raise data.max_image_pixels (or "
            f"{MAX_PIXELS_ENV}; 0 = no limit)", width, height)
    return kind, size


def _decode(data: bytes, name: str, max_pixels: int | None) -> tuple[np.ndarray, str | None]:
    kind, _ = _check_header(data, name, max_pixels)
    if kind == "JPEG":
        problem = jpeg_structure_problem(data)
        if problem == _TRUNCATED:
            return _restore_truncated_jpeg(data, name), problem
        if problem:
            raise DataError(f"{name}: {problem}")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), _DECODE_FLAGS)
    except cv2.error as exc:  # e.g. more pixels than CV_IO_MAX_IMAGE_PIXELS
        reason = str(exc).strip().splitlines()[-1]
        raise DataError(f"{name}: OpenCV cannot decode this image: {reason}") from None
    if image is None:
        raise DataError(f"{name}: {_why_undecodable(kind, data)}")
    if _RGB_FLAG is None and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return _to_uint8_rgb(image, name), None


def _restore_truncated_jpeg(data: bytes, name: str) -> np.ndarray:
    """Decode the part of a cut-off JPEG that is there (Pillow's truncated mode, EXIF applied)."""
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # limit checked already
            with Image.open(io.BytesIO(data + b"\xff\xd9")) as img:
                image = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... here
        raise DataError(f"{name}: {_TRUNCATED}, and nothing before the cut can be decoded ({exc})") from None
    return np.ascontiguousarray(image)


_warned_lock = threading.Lock()
_warned: set[str] = set()


def _warn_restored(name: str, problem: str) -> None:
    with _warned_lock:  # once per file and process: training reads a file every epoch
        if name in _warned:
            return
        _warned.add(name)
    logger.warning("%s: %s; restored: decoded the part that is there (the rest is grey)", name, problem)


def _size_from_reduced(reduced: tuple[int, int], raw: tuple[int, int], data: bytes) -> tuple[int, int] | None:
    """Full ``(height, width)`` after EXIF from a 1/8-scale decode and the header's ``(width, height)``."""
    width, height = raw
    plain = (-(-height // 8), -(-width // 8))  # libjpeg rounds scaled sizes up
    if plain == (plain[1], plain[0]) and width != height:  # both orientations give this shape: ask EXIF
        try:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as img:
                transposed = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        except Exception:  # noqa: BLE001 - fall back to a full decode
            return None
        return (width, height) if transposed else (height, width)
    if tuple(reduced) == plain:
        return height, width
    if tuple(reduced) == (plain[1], plain[0]):
        return width, height
    return None


# ----------------------------------------------------------------------------------------------
# Format sniffing, header sizes and structure checks
# ----------------------------------------------------------------------------------------------
def sniff_format(data: bytes) -> str | None:
    """Name of the image format from the first bytes (not the file extension), or ``None``."""
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


def header_size(data: bytes, kind: str | None = None) -> tuple[int, int] | None:
    """``(width, height)`` the header declares (before EXIF orientation), or None if unknown.

    Reads only the header of JPEG (the SOF segment), PNG (IHDR), GIF, BMP, WebP (VP8/VP8L/VP8X) and
    TIFF (first IFD); nothing is decoded, so a decompression bomb costs nothing to measure.
    """
    kind = kind or sniff_format(data)
    try:
        if kind == "PNG" and data[12:16] == b"IHDR":
            return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        if kind == "GIF" and len(data) >= 10:
            return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
        if kind == "BMP" and len(data) >= 26:
            if int.from_bytes(data[14:18], "little") == 12:  # BITMAPCOREHEADER: 16-bit sizes
                return int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
            return (abs(int.from_bytes(data[18:22], "little", signed=True)),
                    abs(int.from_bytes(data[22:26], "little", signed=True)))  # negative height: top-down
        if kind == "WebP":
            return _webp_size(data)
        if kind == "TIFF":
            return _tiff_size(data)
        if kind == "JPEG":
            return _jpeg_size(data)
    except (IndexError, ValueError):
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and data[20:21] == b"\x2f":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = "little" if data[:2] == b"II" else "big"
    ifd = int.from_bytes(data[4:8], order)
    count = int.from_bytes(data[ifd:ifd + 2], order)
    found = {}
    for k in range(count):
        entry = data[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
        if len(entry) < 12:
            break
        tag, kind = int.from_bytes(entry[0:2], order), int.from_bytes(entry[2:4], order)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4), stored in the entry
            found[tag] = int.from_bytes(entry[8:10] if kind == 3 else entry[8:12], order)
    return (found[256], found[257]) if len(found) == 2 else None


# SOF markers: baseline, extended, progressive, lossless, arithmetic variants (not DHT C4, JPG C8, DAC CC)
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            pos += 1  # stray bytes between segments (libjpeg skips them too)
            continue
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI / SOS before any SOF: no size
            return None
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _SOF_MARKERS and pos + 9 <= n:
            height = int.from_bytes(data[pos + 5:pos + 7], "big")
            width = int.from_bytes(data[pos + 7:pos + 9], "big")
            return (width, height) if height else None  # height 0: set later by a DNL marker
        if length < 2:
            return None
        pos += 2 + length
    return None


def _why_undecodable(kind: str | None, data: bytes) -> str:
    if kind is None:
        return "not an image file OpenCV can read (unknown format: the first bytes match no image type)"
    if kind == "PNG" and b"IEND" not in data[-12:]:
        return "truncated PNG: the file ends before its IEND chunk"
    return f"corrupt {kind} data: OpenCV cannot decode it"


# A marker inside entropy-coded data: 0xFF not followed by a stuffed 0x00, a restart marker
# (0xD0-0xD7) or another fill byte 0xFF.
_NEXT_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")
_TRUNCATED = "truncated JPEG: the file ends before the end-of-image marker (FF D9)"


def jpeg_structure_problem(data: bytes) -> str | None:
    """Why the JPEG ``data`` is incomplete, or ``None`` when its marker structure reaches EOI.

    Walks the segments from SOI: marker segments are skipped by their length field (so an EXIF
    thumbnail's own EOI inside APP1 is never mistaken for the end), entropy-coded data after each SOS
    is skipped to the next real marker. Bytes after EOI are ignored; stray bytes between segments are
    skipped like libjpeg does (it only warns about "extraneous bytes").
    """
    n = len(data)
    if data[:2] != b"\xff\xd8":
        return "not a JPEG file (no start-of-image marker)"
    pos = 2
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= n:
            return _TRUNCATED
        while pos + 1 < n and data[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos + 1 >= n:
            return _TRUNCATED
        marker = data[pos + 1]
        pos += 2
        if marker == 0xD9:  # EOI
            return None
        if marker == 0x00 or marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length field
            continue
        if pos + 2 > n:
            return _TRUNCATED
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2:
            return f"corrupt JPEG: marker FF {marker:02X} at byte {pos - 2} has an invalid length {length}"
        pos += length
        if pos > n:
            return _TRUNCATED
        if marker == 0xDA:  # SOS: entropy-coded data runs to the next marker
            match = _NEXT_MARKER.search(data, pos)
            if match is None:
                return _TRUNCATED
            pos = match.start()


def _to_uint8_rgb(image: np.ndarray, name: str) -> np.ndarray:
    if image.ndim == 2:  # defensive: IMREAD_COLOR* always gives 3 channels
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
    if image.dtype == np.uint16:
        # round(v * 255 / 65535) in integers: exact, and 65535 -> 255 (a shift by 8 is not rounding)
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DataError(f"{name}: unsupported pixel type {image.dtype} (detkit reads 8- and 16-bit images)")
    return np.ascontiguousarray(image)
