"""Proposal generators: sliding windows (sizes, positions, cap, order, cache) and precomputed files.

Expected values come from the documented geometry (window sizes, edge coverage, spacing) checked
box by box, from the image meta's definition (``x_input = x_orig * sx + left``, written out) for the
mapping of stored boxes, and from files written in the test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from detkit import registry
from detkit.errors import ConfigError, DataError
from detkit.models.proposals.precomputed import PrecomputedProposals, read_proposals, write_proposals
from detkit.models.proposals.sliding_window import SlidingWindow, bit_reversed_order

SCALES = (0.2, 0.4, 0.8)
ASPECTS = (0.5, 1.0, 2.0)


def group_of(boxes: np.ndarray, sizes: dict) -> np.ndarray:
    """Index of the (scale, aspect) group whose window size each box has (-1: none)."""
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    out = np.full(len(boxes), -1)
    for g, (gw, gh) in enumerate(sizes.values()):
        out[(np.abs(w - gw) < 1e-3) & (np.abs(h - gh) < 1e-3)] = g
    return out


def expected_sizes(height: int, width: int) -> dict:
    """(scale, aspect) -> (w, h) as documented: area of an s*min(H, W) square, shrunk to the image."""
    side = min(height, width)
    return {(s, a): (min(s * side / math.sqrt(a), width), min(s * side * math.sqrt(a), height))
            for s in SCALES for a in ASPECTS}


# ----------------------------------------------------------------------------------------------
# Sliding windows
# ----------------------------------------------------------------------------------------------


def test_bit_reversed_order_is_a_permutation_whose_prefixes_spread_over_the_range():
    assert bit_reversed_order(8).tolist() == [0, 4, 2, 6, 1, 5, 3, 7]
    for n in (1, 2, 5, 13, 100):
        order = bit_reversed_order(n)
        assert sorted(order.tolist()) == list(range(n))
    order = bit_reversed_order(100)
    assert order[:2].min() == 0 and order[:2].max() >= 50  # both halves after two picks
    assert len({int(i) // 25 for i in order[:4]}) == 4  # all four quarters after four picks


@pytest.mark.parametrize("height, width", [(96, 128), (200, 150), (64, 64)])
def test_sliding_windows_have_every_scale_and_aspect_lie_inside_and_cover_both_edges(height, width):
    generator = SlidingWindow(scales=SCALES, aspect_ratios=ASPECTS, step=0.25, max_proposals=None, min_size=1)
    boxes = generator.for_size(height, width)
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)  # no duplicates

    sizes = expected_sizes(height, width)
    groups = group_of(boxes, sizes)
    assert (groups >= 0).all(), "a window with a size that no (scale, aspect) gives"
    distinct_sizes = {tuple(np.round(v, 3)) for v in sizes.values()}
    found_sizes = {tuple(np.round(v, 3)) for v in sizes.values() if (group_of(boxes, {0: v}) == 0).any()}
    assert found_sizes == distinct_sizes  # every scale and aspect is present

    for (scale, aspect), (w, h) in sizes.items():
        mine = boxes[group_of(boxes, {0: (w, h)}) == 0]
        xs, ys = np.unique(mine[:, 0]), np.unique(mine[:, 1])
        # Both edges are reached and neighbours are at most step * side apart.
        assert xs[0] == pytest.approx(0) and xs[-1] == pytest.approx(width - w, abs=1e-3)
        assert ys[0] == pytest.approx(0) and ys[-1] == pytest.approx(height - h, abs=1e-3)
        assert np.diff(xs).max(initial=0) <= 0.25 * w + 1e-3
        assert np.diff(ys).max(initial=0) <= 0.25 * h + 1e-3
        # A full grid: every x position with every y position (unless a duplicate was merged).
        if len({tuple(np.round(v, 3)) for v in sizes.values()}) == len(sizes):
            assert len(mine) == len(xs) * len(ys)


def test_windows_larger_than_the_image_are_shrunk_to_it_and_kept_once():
    generator = SlidingWindow(scales=(0.9, 1.0), aspect_ratios=(0.25, 4.0), step=0.5, max_proposals=None)
    boxes = generator.for_size(100, 100)
    # aspect 4 at scale 0.9 and 1.0 is 45 x 180 and 50 x 200 -> both as tall as the image.
    sizes = {(round(float(b[2] - b[0]), 3), round(float(b[3] - b[1]), 3)) for b in boxes}
    assert sizes == {(45.0, 100.0), (50.0, 100.0), (100.0, 45.0), (100.0, 50.0)}
    # Scale 5 with aspect 1 at 100 x 100: every window is the full image, kept once.
    assert SlidingWindow(scales=(5.0, 6.0), aspect_ratios=(1.0,)).for_size(100, 100).tolist() == [[0, 0, 100, 100]]


def test_cap_keeps_a_balanced_prefix_with_every_scale_and_aspect():
    full = SlidingWindow(scales=SCALES, aspect_ratios=ASPECTS, max_proposals=None).for_size(160, 160)
    sizes = expected_sizes(160, 160)
    all_groups = group_of(full, sizes)
    counts = np.bincount(all_groups, minlength=len(sizes))
    for cap in (9, 40, 150):
        capped = SlidingWindow(scales=SCALES, aspect_ratios=ASPECTS, max_proposals=cap).for_size(160, 160)
        assert len(capped) == cap
        np.testing.assert_array_equal(capped, full[:cap])  # the cap is a prefix of the full order
        kept = np.bincount(group_of(capped, sizes), minlength=len(sizes))
        assert (kept >= 1).all(), f"cap {cap}: a scale/aspect vanished: {kept}"
        # Proportional: one common fraction t of every group is kept, up to one window per group:
        # (kept - 1) / n <= t <= kept / n for all groups at once.
        assert ((kept - 1) / counts).max() <= (kept / counts).min() + 1e-12, (kept, counts)
    # The smallest windows are many; a prefix of them is spread over the image, not the top rows.
    small = SlidingWindow(scales=(0.1,), aspect_ratios=(1.0,), max_proposals=16).for_size(200, 200)
    centres = (small[:, :2] + small[:, 2:]) / 2
    quadrants = {(int(x >= 100), int(y >= 100)) for x, y in centres}
    assert quadrants == {(0, 0), (0, 1), (1, 0), (1, 1)}


def test_sliding_windows_are_deterministic_cached_read_only_and_sized_by_the_image():
    a, b = SlidingWindow(), SlidingWindow()
    first = a.for_size(120, 90)
    np.testing.assert_array_equal(first, b.for_size(120, 90))
    assert a.for_size(120, 90) is first  # computed once per size
    assert not first.flags.writeable
    with pytest.raises(ValueError):
        first[0, 0] = 5.0
    image = np.zeros((120, 90, 3), np.uint8)
    np.testing.assert_array_equal(a(image), first)
    assert len(SlidingWindow(max_proposals=100).for_size(120, 90)) == 100
    assert len(SlidingWindow(max_proposals=None).for_size(120, 90)) > 100


def test_min_size_drops_small_windows():
    generator = SlidingWindow(scales=(0.05, 0.5), aspect_ratios=(1.0,), min_size=10, max_proposals=None)
    boxes = generator.for_size(100, 100)
    sides = boxes[:, 2] - boxes[:, 0]
    assert (sides == 50).all()  # the 5 px windows are below min_size


@pytest.mark.parametrize("kwargs, message", [
    (dict(scales=()), "scales"),
    (dict(scales=(0.1, -1)), "scales"),
    (dict(aspect_ratios=("wide",)), "aspect_ratios"),
    (dict(step=0), "step"),
    (dict(step=1.5), "step"),
    (dict(max_proposals=0), "max_proposals"),
    (dict(min_size=-1), "min_size"),
])
def test_sliding_window_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SlidingWindow(**kwargs)


# ----------------------------------------------------------------------------------------------
# Precomputed proposals
# ----------------------------------------------------------------------------------------------


def stored():
    return {
        "000005.jpg": np.array([[10, 20, 110, 220], [0, 0, 50, 40], [300, 100, 500, 375]], np.float32),
        "000007": np.array([[1.5, 2.5, 30.25, 40.75]], np.float32),
        "42": np.zeros((0, 4), np.float32),
    }


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_precomputed_file_round_trips(tmp_path, suffix):
    path = write_proposals(tmp_path / f"props{suffix}", stored())
    assert path.is_file() and not list(tmp_path.glob("*.tmp*"))  # no temporary left behind
    loaded = read_proposals(path)
    assert set(loaded) == set(stored())
    for key, boxes in stored().items():
        assert loaded[key].dtype == np.float32
        np.testing.assert_array_equal(loaded[key], boxes.reshape(-1, 4))


def test_npz_layout_is_the_documented_one_and_loads_without_pickle(tmp_path):
    path = write_proposals(tmp_path / "p.npz", stored())
    with np.load(path, allow_pickle=False) as data:
        assert str(data["format"]) == "detkit-proposals-v1"
        assert data["names"].tolist() == ["000005.jpg", "000007", "42"]
        assert data["offsets"].tolist() == [0, 3, 4, 4]
        assert data["boxes"].shape == (4, 4)
    # A JSON file written by hand in the documented layout reads the same.
    hand = tmp_path / "hand.json"
    hand.write_text(json.dumps({"format": "detkit-proposals-v1", "proposals": {"a.jpg": [[1, 2, 3, 4]]}}))
    np.testing.assert_array_equal(read_proposals(hand)["a.jpg"], [[1, 2, 3, 4]])


def test_lookup_by_file_name_path_stem_or_image_id(tmp_path):
    generator = PrecomputedProposals(write_proposals(tmp_path / "p.npz", stored()))
    assert len(generator) == 3
    image = np.zeros((375, 500, 3), np.uint8)
    by_name = generator(image, meta={"file_name": "000005.jpg"})
    np.testing.assert_array_equal(by_name, stored()["000005.jpg"])
    np.testing.assert_array_equal(generator(image, meta={"path": "/data/VOC/JPEGImages/000005.jpg"}), by_name)
    # Stored under the stem, looked up with a file name.
    np.testing.assert_array_equal(generator(image, meta={"file_name": "000007.png"}), stored()["000007"])
    # Stored under the image id.
    assert generator(image, meta={"file_name": "x.jpg", "image_id": 42}).shape == (0, 4)


def test_stored_boxes_are_mapped_through_the_resize_record_and_clipped(tmp_path):
    generator = PrecomputedProposals(write_proposals(tmp_path / "p.json", stored()))
    # 500 x 375 letterboxed into 448 x 448: scale 0.896, 56 px of padding at the top.
    meta = {"file_name": "000005.jpg", "orig_size": (375, 500), "input_size": (448, 448),
            "scale": (0.896, 0.896), "pad": (0.0, 56.0)}
    got = generator(np.zeros((448, 448, 3), np.uint8), meta=meta)
    # x_input = x_orig * sx + left (the meta's definition), written out
    expected = torch.from_numpy(stored()["000005.jpg"]) * 0.896 + torch.tensor([0.0, 56.0, 0.0, 56.0])
    expected[:, 0::2] = expected[:, 0::2].clamp(0, 448)
    expected[:, 1::2] = expected[:, 1::2].clamp(0, 448)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6, atol=1e-4)
    # Clipping: the same boxes on a smaller input are cut at its border.
    small = generator(np.zeros((100, 120, 3), np.uint8), meta={"file_name": "000005.jpg"})
    assert small[0].tolist() == [10, 20, 110, 100] and small[2].tolist() == [120, 100, 120, 100]


def test_min_size_and_cap_apply_at_the_input_scale(tmp_path):
    path = write_proposals(tmp_path / "p.npz", stored())
    meta = {"file_name": "000005.jpg", "scale": (0.5, 0.5), "pad": (0.0, 0.0)}
    image = np.zeros((300, 300, 3), np.uint8)
    # At half scale the 50 x 40 box is 25 x 20: dropped by min_size=21.
    kept = PrecomputedProposals(path, min_size=21)(image, meta=meta)
    np.testing.assert_allclose(kept, [[5, 10, 55, 110], [150, 50, 250, 187.5]])
    assert PrecomputedProposals(path, max_proposals=1)(image, meta=meta).tolist() == [[5, 10, 55, 110]]


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_proposals=0), r"precomputed: max_proposals must be a positive integer or None, got 0"),
    (dict(max_proposals=True), r"precomputed: max_proposals .* got True"),
    (dict(min_size=-1), r"precomputed: min_size must be >= 0, got -1"),
])
def test_precomputed_rejects_bad_limits(tmp_path, kwargs, message):
    path = write_proposals(tmp_path / "p.npz", stored())
    with pytest.raises(ConfigError, match=message):
        PrecomputedProposals(path, **kwargs)


def test_missing_entry_is_a_data_error_naming_the_image_and_the_file(tmp_path):
    path = write_proposals(tmp_path / "p.npz", stored())
    generator = PrecomputedProposals(path)
    expected = r"no proposals for image /data/000009\.jpg.*'000009\.jpg'.*3 images"
    with pytest.raises(DataError, match=expected) as info:
        generator(np.zeros((10, 10, 3), np.uint8), meta={"path": "/data/000009.jpg", "file_name": "000009.jpg"})
    assert str(path) in str(info.value)
    with pytest.raises(DataError, match="no file name, path or image id"):
        generator(np.zeros((10, 10, 3), np.uint8), meta={"orig_size": (10, 10)})


def test_augmented_images_cannot_use_original_image_proposals(tmp_path):
    generator = PrecomputedProposals(write_proposals(tmp_path / "p.npz", stored()))
    with pytest.raises(ConfigError, match="augmentation.*000005.jpg|000005.jpg.*augmentation"):
        generator(np.zeros((10, 10, 3), np.uint8), meta={"file_name": "000005.jpg", "augmented": True})


def test_bad_files_are_data_errors_naming_the_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        PrecomputedProposals(tmp_path / "absent.npz")
    other = tmp_path / "other.npz"
    np.savez(other, something=np.zeros(3))
    with pytest.raises(DataError, match=r"other\.npz.*missing array"):
        PrecomputedProposals(other)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match=r"broken\.npz"):
        read_proposals(broken)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"format": "detkit-proposals-v1", "proposals": {"a.jpg": [[5, 5, 1, 1]]}}')
    with pytest.raises(DataError, match=r"bad\.json.*'a\.jpg'.*x2 < x1"):
        read_proposals(bad_json)
    bad_shape = tmp_path / "shape.json"
    bad_shape.write_text('{"proposals": {"a.jpg": [[1, 2, 3]]}}')
    with pytest.raises(DataError, match=r"shape\.json.*\[P, 4\]"):
        read_proposals(bad_shape)
    with pytest.raises(DataError, match="format 'v0'"):
        (tmp_path / "v0.json").write_text('{"format": "v0", "proposals": {}}')
        read_proposals(tmp_path / "v0.json")
    with pytest.raises(DataError, match="NaN"):
        write_proposals(tmp_path / "nan.npz", {"a": np.array([[0, 0, np.nan, 1]])})
    with pytest.raises(ConfigError, match=r"\.npz or \.json"):
        write_proposals(tmp_path / "p.pkl", stored())


# ----------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------

ENTRY_POINTS = {
    "sliding_window": "detkit.models.proposals.sliding_window:SlidingWindow",
    "precomputed": "detkit.models.proposals.precomputed:PrecomputedProposals",
}


def test_generators_build_by_name_from_the_registry(tmp_path):
    boxes = registry.build("proposals", {"type": "sliding_window", "max_proposals": 50}).for_size(64, 64)
    assert boxes.shape == (50, 4)
    path = write_proposals(tmp_path / "p.npz", stored())
    generator = registry.build("proposals", {"type": "precomputed", "path": str(path)})
    assert isinstance(generator, PrecomputedProposals) and len(generator) == 3
