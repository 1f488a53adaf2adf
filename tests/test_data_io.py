"""detkit.data.io: the one image reader (EXIF, grey/palette/alpha/16-bit, truncated and broken files)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from detkit.data import io as dio
from detkit.data.io import decode_image, image_size, jpeg_structure_problem, read_image
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
def test_truncated_jpeg_raises(tmp_path, progressive, keep):
    full = write_jpeg(tmp_path / "full.jpg", smooth_image(), progressive=progressive).read_bytes()
    cut = {"quarter": len(full) // 4, "half": len(full) // 2, "all_but_100": len(full) - 100,
           "all_but_eoi": len(full) - 2, "all_but_1": len(full) - 1}[keep]
    path = tmp_path / "cut.jpg"
    path.write_bytes(full[:cut])
    with pytest.raises(DataError, match=r"cut\.jpg.*truncated"):
        read_image(path)
    assert read_image(tmp_path / "full.jpg").shape == (120, 160, 3)


def test_truncated_jpeg_caught_even_when_opencv_decodes_partially(tmp_path, monkeypatch):
    """cv2.imread (and older imdecode builds) fill a cut-off JPEG with grey instead of failing."""
    full = write_jpeg(tmp_path / "full.jpg", smooth_image()).read_bytes()
    real_imread = cv2.imread

    def imdecode_like_imread(buf, flags):
        scratch = tmp_path / "scratch.jpg"
        scratch.write_bytes(buf.tobytes())
        return real_imread(str(scratch), flags)

    monkeypatch.setattr(cv2, "imdecode", imdecode_like_imread)
    (tmp_path / "cut.jpg").write_bytes(full[: len(full) // 2])
    partial = imdecode_like_imread(np.frombuffer(full[: len(full) // 2], np.uint8), cv2.IMREAD_COLOR)
    assert partial is not None and partial.shape == (120, 160, 3)  # the premise: a silent partial decode
    with pytest.raises(DataError, match=r"cut\.jpg.*truncated"):
        read_image(tmp_path / "cut.jpg")
    assert read_image(tmp_path / "full.jpg").shape == (120, 160, 3)  # no false alarm on whole files


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
    with pytest.raises(DataError, match="truncated"):
        read_image(tmp_path / "cut.jpg")
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
