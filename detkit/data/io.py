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
* a missing, empty, unreadable, undecodable or truncated file raises :class:`~detkit.errors.DataError`
  naming the path and the problem.

Truncated JPEGs need a check of their own: libjpeg decodes what is there and fills the rest with grey,
only printing "Premature end of JPEG file" to stderr, where Python cannot see it. OpenCV 5's
``imdecode`` happens to return ``None`` for a cut-off buffer, but ``imread`` and older builds return
the half-grey image. So every decoded JPEG is also walked marker by marker (cheap: segment lengths are
skipped and the entropy-coded data is scanned with one regular expression in C) and must reach its
end-of-image marker. This is stricter than "the last two bytes are FF D9", which rejects good files
with trailing bytes (camera trailers) and accepts a cut inside an embedded EXIF thumbnail.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from detkit.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "ImageSize", "read_image", "decode_image", "image_size", "sniff_format"]

# Extensions treated as images when searching folders (compared lower-cased).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")

# OpenCV >= 4.10 decodes straight to RGB; older builds decode BGR and we convert.
_RGB_FLAG = getattr(cv2, "IMREAD_COLOR_RGB", None)
# ANYDEPTH keeps 16-bit data 16-bit (plain IMREAD_COLOR would cut it to its high byte itself, but
# keeping it lets us round properly and lets the check below see what the file really held).
_DECODE_FLAGS = (_RGB_FLAG if _RGB_FLAG is not None else cv2.IMREAD_COLOR) | cv2.IMREAD_ANYDEPTH


class ImageSize(NamedTuple):
    """Size of an image after EXIF orientation, in the order of ``image.shape[:2]``."""

    height: int
    width: int


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``uint8 [H, W, 3]`` RGB (EXIF orientation applied).

    Raises :class:`DataError` naming ``path`` when the file is missing, empty, unreadable, not a
    decodable image, or truncated.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an image file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read image file: {exc.strerror or exc}") from None
    return decode_image(data, name=str(path))


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes like :func:`read_image`; ``name`` is used in error messages."""
    if not data:
        raise DataError(f"{name}: empty image file (0 bytes)")
    kind = sniff_format(data)
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), _DECODE_FLAGS)
    except cv2.error as exc:  # e.g. more pixels than CV_IO_MAX_IMAGE_PIXELS
        reason = str(exc).strip().splitlines()[-1]
        raise DataError(f"{name}: OpenCV cannot decode this image: {reason}") from None
    if image is None:
        raise DataError(f"{name}: {_why_undecodable(kind, data)}")
    if kind == "JPEG":
        problem = jpeg_structure_problem(data)
        if problem:
            raise DataError(f"{name}: {problem}")
    if _RGB_FLAG is None and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return _to_uint8_rgb(image, name)


def image_size(path: str | os.PathLike) -> ImageSize:
    """``(height, width)`` of an image after EXIF orientation, read from the header only (no decoding).

    Uses Pillow's lazy ``Image.open``, which parses the header and EXIF but not the pixel data.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
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
# Format sniffing and structure checks
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


def _why_undecodable(kind: str | None, data: bytes) -> str:
    if kind is None:
        return "not an image file OpenCV can read (unknown format: the first bytes match no image type)"
    if kind == "JPEG":
        problem = jpeg_structure_problem(data)
        if problem:
            return problem
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
