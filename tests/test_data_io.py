"""detkit.data.io: the one image reader (EXIF, grey/palette/alpha/16-bit, truncated and broken files)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from detkit.data import io as dio
from detkit.data.io import (
    check_image_file,
    decode_image,
    header_size,
    image_size,
    jpeg_structure_problem,
    max_image_pixels,
    read_image,
)
from detkit.errors import DataError


def quadrants(h: int = 24, w: int = 40) -> np.ndarray:
    """An RGB image whose four quadrants have different colours, so any flip or rotation shows."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (230, 20, 20)
    img[: h // 2, w // 2:] = (20, 230, 20)
    img[h // 2:, : w // 2] = (20, 20, 230)
    img[h // 2:, w // 2:] = (230, 230, 20)
    return img


def smooth_image(h: int = 120, w: int = 160, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(img, (9, 9), 3)


def write_jpeg(path, array, **kwargs):
    Image.fromarray(array).save(path, format="JPEG", quality=95, subsampling=0, **kwargs)
    return path


# ----------------------------------------------------------------------------------------------
# EXIF orientation
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied_like_pil(tmp_path, orientation):
    array = quadrants()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = write_jpeg(tmp_path / f"o{orientation}.jpg", array, exif=exif.tobytes())

    # Reference: Pillow's exif_transpose on the same file (independent implementation).
    with Image.open(path) as im:
        reference = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == reference.shape
    assert np.abs(image.astype(int) - reference.astype(int)).mean() < 3
    assert tuple(image_size(path)) == image.shape[:2]
    # The verification pass decodes JPEGs at 1/8 scale and must still report the displayed size,
    # also when both orientations give the same 1/8 shape (62x57 -> 8x8: decided by the EXIF tag).
    assert tuple(check_image_file(path))[:2] == image.shape[:2]
    odd = write_jpeg(tmp_path / f"odd{orientation}.jpg", quadrants(57, 62), exif=exif.tobytes())
    assert tuple(check_image_file(odd))[:2] == read_image(odd).shape[:2]


def test_exif_orientation_6_is_a_clockwise_quarter_turn(tmp_path):
    array = quadrants(20, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = write_jpeg(tmp_path / "o6.jpg", array, exif=exif.tobytes())
    image = read_image(path)
    expected = np.rot90(array, k=-1)  # clockwise
    assert image.shape == (40, 20, 3)
    assert np.abs(image.astype(int) - expected.astype(int)).mean() < 3
    assert image_size(path) == (40, 20) and image_size(path).height == 40


# ----------------------------------------------------------------------------------------------
# Pixel formats
# ----------------------------------------------------------------------------------------------
def test_16bit_png_is_scaled_not_truncated(tmp_path):
    # 400 and 65280 tell rounding (2, 254) from taking the high byte (1, 255).
    values = np.array([[0, 257, 400, 32767, 32768, 65280, 65535, 1000]], np.uint16)
    cv2.imwrite(str(tmp_path / "grey16.png"), values)
    image = read_image(tmp_path / "grey16.png")
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert image.dtype == np.uint8 and image.shape == (1, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], expected)
    assert image[0, 6, 0] == 255 and image[0, 2, 0] == 2 and image[0, 5, 0] == 254


def test_16bit_colour_png_keeps_rgb_order(tmp_path):
    bgr = np.zeros((2, 2, 3), np.uint16)
    bgr[..., 0] = 65535  # blue
    bgr[..., 2] = 400  # red
    cv2.imwrite(str(tmp_path / "colour16.png"), bgr)
    image = read_image(tmp_path / "colour16.png")
    assert image[0, 0].tolist() == [2, 0, 255]  # R, G, B


def test_grey_palette_rgba_and_bilevel_become_rgb(tmp_path):
    Image.fromarray(np.array([[0, 128, 255]], np.uint8), "L").save(tmp_path / "grey.png")
    pal = Image.new("P", (3, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    pal.putdata([0, 1, 2])
    pal.save(tmp_path / "palette.png")
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.array([[True, False, True]])).save(tmp_path / "bilevel.png")
    Image.fromarray(np.full((8, 8), 77, np.uint8), "L").save(tmp_path / "grey.jpg", quality=100)

    grey = read_image(tmp_path / "grey.png")
    assert grey.shape == (1, 3, 3) and grey[0, :, 0].tolist() == [0, 128, 255]
    assert (grey == grey[..., :1]).all()
    assert read_image(tmp_path / "palette.png")[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]]
    # Alpha is dropped, colour kept (like PIL's convert("RGB")).
    assert read_image(tmp_path / "rgba.png")[0].tolist() == [[10, 20, 30], [40, 50, 60]]
    assert read_image(tmp_path / "bilevel.png")[0, :, 1].tolist() == [255, 0, 255]
    jpeg = read_image(tmp_path / "grey.jpg")
    assert jpeg.shape == (8, 8, 3) and abs(int(jpeg.mean()) - 77) <= 1


def test_rgb_order_and_unicode_file_name(tmp_path):
    array = quadrants()
    folder = tmp_path / "a folder with spaces"
    folder.mkdir()
    path = folder / "größe 猫 (1).png"
    Image.fromarray(array).save(path)
    image = read_image(path)
    np.testing.assert_array_equal(image, array)  # PNG is lossless: exact, and RGB (not BGR)
    assert image.flags["C_CONTIGUOUS"]
    assert image_size(path) == (24, 40)


def test_decode_image_from_bytes(tmp_path):
    array = quadrants()
    ok, buf = cv2.imencode(".png", cv2.cvtColor(array, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(decode_image(buf.tobytes()), array)


def test_format_is_sniffed_from_content_not_extension(tmp_path):
    array = quadrants()
    Image.fromarray(array).save(tmp_path / "really_a_png.jpg", format="PNG")
    np.testing.assert_array_equal(read_image(tmp_path / "really_a_png.jpg"), array)


# ----------------------------------------------------------------------------------------------
# Broken files
# ----------------------------------------------------------------------------------------------
def test_missing_empty_folder_and_non_image_files(tmp_path):
    with pytest.raises(DataError, match=r"not found.*nope\.jpg"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.jpg.*empty image file \(0 bytes\)"):
        read_image(tmp_path / "empty.jpg")
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(DataError, match=r"dir\.jpg.*folder"):
        read_image(tmp_path / "dir.jpg")
    (tmp_path / "page.jpg").write_text("<html>404 not found</html>")
    with pytest.raises(DataError, match=r"page\.jpg.*not an image"):
        read_image(tmp_path / "page.jpg")
    with pytest.raises(DataError, match=r"nope\.jpg"):
        image_size(tmp_path / "nope.jpg")
    with pytest.raises(DataError, match=r"page\.jpg"):
        image_size(tmp_path / "page.jpg")


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("keep", ["quarter", "half", "all_but_100", "all_but_eoi", "all_but_1"])
def test_truncated_jpeg_is_restored_like_pillows_truncated_mode(tmp_path, progressive, keep, caplog):
    """A JPEG cut short decodes as far as it goes (Pillow's LOAD_TRUNCATED_IMAGES result), with a warning."""
    from PIL import ImageFile

    full = write_jpeg(tmp_path / "full.jpg", smooth_image(), progressive=progressive).read_bytes()
    cut = {"quarter": len(full) // 4, "half": len(full) // 2, "all_but_100": len(full) - 100,
           "all_but_eoi": len(full) - 2, "all_but_1": len(full) - 1}[keep]
    path = tmp_path / "cut.jpg"
    path.write_bytes(full[:cut])
    with caplog.at_level("WARNING", logger="detkit.data.io"):
        restored = read_image(path)
        read_image(path)
    assert restored.shape == (120, 160, 3)
    # Exactly what Pillow's truncated mode decodes (the reference ultralytics relies on).
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        reference = np.asarray(Image.open(path).convert("RGB"))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    np.testing.assert_array_equal(restored, reference)
    whole = read_image(tmp_path / "full.jpg")
    if keep in ("all_but_eoi", "all_but_1"):  # only the marker is missing: every pixel is there
        np.testing.assert_array_equal(restored, whole)
    elif not progressive:  # the top rows (decoded before the cut) match the whole file
        np.testing.assert_array_equal(restored[:8], whole[:8])
    warnings = [r.getMessage() for r in caplog.records if "restored" in r.getMessage()]
    assert len(warnings) == 1 and "cut.jpg" in warnings[0] and "truncated" in warnings[0]  # once per file
    check = check_image_file(path)
    assert (check.height, check.width) == (120, 160) and "truncated" in check.restored
    assert check_image_file(tmp_path / "full.jpg") == (120, 160, None)


def test_jpeg_cut_before_any_image_data_is_undecodable(tmp_path):
    full = write_jpeg(tmp_path / "full.jpg", smooth_image()).read_bytes()
    sos = full.index(b"\xff\xda")
    (tmp_path / "head.jpg").write_bytes(full[:sos])
    with pytest.raises(DataError, match=r"head\.jpg.*truncated.*nothing before the cut"):
        read_image(tmp_path / "head.jpg")
    with pytest.raises(DataError, match=r"head\.jpg"):
        check_image_file(tmp_path / "head.jpg")


def _with_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """Insert a marker segment right after SOI."""
    segment = bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:2] + segment + jpeg[2:]


def test_jpeg_structure_walk(tmp_path):
    full = write_jpeg(tmp_path / "full.jpg", smooth_image()).read_bytes()
    assert jpeg_structure_problem(full) is None
    # Bytes after EOI (camera trailers, padding) are fine.
    assert jpeg_structure_problem(full + b"\x00" * 64 + b"TRAILER") is None
    # An FF D9 inside a segment (comment, EXIF thumbnail) is not the end of the image: a file cut in
    # its scan data is still truncated. A "contains FF D9" check would pass it.
    thumb = _with_segment(full, 0xE1, b"Exif\x00\x00" + b"\xff\xd8\xff\xd9" * 4)
    commented = _with_segment(thumb, 0xFE, b"look: \xff\xd9 here")
    assert jpeg_structure_problem(commented) is None
    assert decode_image(commented).shape == (120, 160, 3)
    cut = commented[: len(commented) - 500]
    assert b"\xff\xd9" in cut
    assert "truncated" in jpeg_structure_problem(cut)
    (tmp_path / "cut.jpg").write_bytes(cut)
    assert "truncated" in check_image_file(tmp_path / "cut.jpg").restored
    # Restart markers and fill bytes inside the scan do not end it.
    assert jpeg_structure_problem(b"\xff\xd8\xff\xda\x00\x02ab\xff\x00c\xff\xd3d\xff\xff\xd9") is None
    assert jpeg_structure_problem(b"\xff\xd8\xff\xda\x00\x02ab\xff\x00c\xff\xd3d") is not None


def test_truncated_png_raises(tmp_path):
    Image.fromarray(smooth_image()).save(tmp_path / "full.png")
    full = (tmp_path / "full.png").read_bytes()
    for name, data in (("half.png", full[: len(full) // 2]), ("no_iend.png", full[:-12])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=rf"{name.replace('.', '[.]')}.*(truncated|corrupt)"):
            read_image(tmp_path / name)


def test_opencv_errors_become_data_errors(tmp_path, monkeypatch):
    def refuse(buf, flags):
        raise cv2.error("OpenCV(5.0) imgcodecs: image is too big")

    monkeypatch.setattr(dio.cv2, "imdecode", refuse)
    Image.fromarray(quadrants()).save(tmp_path / "big.png")
    with pytest.raises(DataError, match=r"big\.png.*too big"):
        read_image(tmp_path / "big.png")


# ----------------------------------------------------------------------------------------------
# Header sizes and the pixel limit (decompression bombs)
# ----------------------------------------------------------------------------------------------
def write_png_bomb(path, width: int, height: int):
    """A valid grey PNG of ``width x height`` zeros, compressed row by row (kilobytes on disk)."""
    import struct
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + one byte per pixel
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("fmt, options", [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}),
                                          ("GIF", {}), ("BMP", {}), ("WEBP", {}), ("WEBP", {"lossless": True}),
                                          ("TIFF", {}), ("TIFF", {"compression": "tiff_lzw"})])
def test_header_size_matches_pillow(tmp_path, fmt, options):
    path = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(smooth_image(37, 91)).save(path, fmt, **options)
    with Image.open(path) as im:
        assert header_size(path.read_bytes()) == im.size == (91, 37)


def test_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    """A 12000x12000 PNG of a few hundred KB (432 MB decoded) is refused before any decoding."""
    import resource
    import time

    bomb = write_png_bomb(tmp_path / "bomb.png", 12000, 12000)
    assert bomb.stat().st_size < 1_000_000 and header_size(bomb.read_bytes()) == (12000, 12000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for reader in (read_image, check_image_file):
        with pytest.raises(dio.ImageTooLargeError, match=r"bomb\.png.*12000x12000 = 144,000,000 pixels, "
                                                          r"over the limit of 89,478,485.*max_image_pixels") as info:
            reader(bomb)
        assert (info.value.width, info.value.height) == (12000, 12000)
    assert time.perf_counter() - start < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KB: nothing decoded

    small = tmp_path / "small.png"
    Image.fromarray(smooth_image(20, 30)).save(small)
    with pytest.raises(DataError, match=r"small\.png.*30x20"):
        read_image(small, max_pixels=599)
    assert read_image(small, max_pixels=600).shape == (20, 30, 3)
    assert read_image(small, max_pixels=0).shape == (20, 30, 3)  # 0: no limit
    monkeypatch.setenv("DETKIT_MAX_IMAGE_PIXELS", "100")
    assert max_image_pixels() == 100
    with pytest.raises(DataError, match=r"over the limit of 100 "):
        read_image(small)
    monkeypatch.setenv("DETKIT_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(DataError, match="DETKIT_MAX_IMAGE_PIXELS='lots'"):
        read_image(small)
