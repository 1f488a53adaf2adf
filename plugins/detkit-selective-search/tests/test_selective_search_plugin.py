"""detkit-selective-search: the proposal contract on a real photo, the disk cache, parallel precompute."""

from __future__ import annotations

import importlib.metadata
import logging
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from detkit import registry
from detkit.errors import ConfigError, DataError, DetkitError

RACCOON = Path(__file__).resolve().parents[3].parent / "shared" / "datasets" / "raccoon"


@pytest.fixture
def raccoon():
    if not (RACCOON / "Annotations").is_dir():
        pytest.skip(f"raccoon data set not found at {RACCOON}")
    return RACCOON


def _read(path):
    from detkit.data.io import read_image

    return read_image(path)


def _gt_boxes(xml_path: Path) -> np.ndarray:
    root = ET.parse(xml_path).getroot()
    return np.array([[float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
                     for o in root.iter("object")], dtype=np.float32)


def test_registered_as_a_proposal_generator_of_its_distribution():
    infos = [i for i in registry.components("proposals") if i.name == "selective_search"]
    assert [(i.distribution, i.status) for i in infos] == [("detkit-selective-search", "ok")]
    assert infos[0].version == importlib.metadata.version("detkit-selective-search")


def test_proposals_on_a_real_raccoon_photo_cover_the_ground_truth(raccoon, tmp_path):
    image = _read(raccoon / "JPEGImages" / "raccoon-1.jpg")
    gt = _gt_boxes(raccoon / "Annotations" / "raccoon-1.xml")
    generator = registry.build("proposals", dict(type="selective_search", cache_dir=str(tmp_path)))
    boxes = generator(image)

    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert 100 <= len(boxes) <= generator.max_proposals
    h, w = image.shape[:2]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
    sizes = boxes[:, 2:] - boxes[:, :2]
    assert (sizes >= generator.min_size).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    best = box_iou(torch.from_numpy(boxes), torch.from_numpy(gt)).max(dim=0).values
    assert (best >= 0.5).all(), best  # every raccoon is covered by some proposal


def test_cache_hit_returns_identical_proposals_without_recomputing(raccoon, tmp_path, monkeypatch):
    image = _read(raccoon / "JPEGImages" / "raccoon-2.jpg")
    generator = registry.build("proposals", dict(type="selective_search", mode="single", max_side=200,
                                                 cache_dir=str(tmp_path)))
    first = generator(image)
    assert (generator.num_computed, generator.num_cached) == (1, 0)
    assert len(list(tmp_path.rglob("*.npy"))) == 1

    def must_not_run(image):
        raise AssertionError("selective search ran although the result is cached")

    monkeypatch.setattr(generator, "compute", must_not_run)
    again = generator(image.copy())  # same pixels, another array object
    np.testing.assert_array_equal(again, first)
    assert (generator.num_computed, generator.num_cached) == (1, 1)

    # A fresh generator with the same parameters (a new process, a DataLoader worker) finds it too.
    other = registry.build("proposals", dict(type="selective_search", mode="single", max_side=200,
                                             cache_dir=str(tmp_path)))
    monkeypatch.setattr(other, "compute", must_not_run)
    np.testing.assert_array_equal(other(image), first)


def test_cache_key_depends_on_pixels_and_parameters(tmp_path):
    from detkit_selective_search import SelectiveSearch

    image = np.zeros((40, 60, 3), np.uint8)
    a = SelectiveSearch(cache_dir=tmp_path)
    key = a.cache_key(image)
    assert key == SelectiveSearch(cache_dir=tmp_path / "elsewhere").cache_key(image.copy())
    changed = image.copy()
    changed[3, 4, 1] = 1
    assert a.cache_key(changed) != key
    assert a.cache_key(image.reshape(60, 40, 3)) != key  # same bytes, other shape
    for kwargs in (dict(mode="quality"), dict(max_proposals=10), dict(min_size=5), dict(max_side=None),
                   dict(sigma=0.5), dict(base_k=100), dict(seed=1)):
        assert SelectiveSearch(cache_dir=tmp_path, **kwargs).cache_key(image) != key, kwargs


def test_results_are_reproducible_without_the_cache(raccoon):
    # OpenCV ranks regions with the C library's rand(); the generator seeds it so the order (and so
    # which boxes survive max_proposals) is the same on every call.
    image = _read(raccoon / "JPEGImages" / "raccoon-3.jpg")
    generator = registry.build("proposals", dict(type="selective_search", mode="single", max_side=200,
                                                 max_proposals=50, cache=False))
    first, second = generator(image), generator(image)
    np.testing.assert_array_equal(first, second)
    assert generator.num_computed == 2 and generator.num_cached == 0


def test_rects_are_converted_scaled_clipped_filtered_and_deduplicated():
    from detkit_selective_search.selective_search import _to_boxes

    rects = np.array([[10, 20, 30, 40],    # -> [20, 40, 80, 120] at scale 0.5
                      [0, 0, 2, 50],       # 4 px wide in the original: below min_size
                      [10, 20, 30, 40],    # duplicate of the first
                      [90, 50, 20, 20],    # -> [180, 100, 220, 140], clipped to width 200
                      [5, 5, 10, 10]], np.int32)
    boxes = _to_boxes(rects, scale=0.5, width=200, height=150, min_size=10, limit=10)
    np.testing.assert_array_equal(boxes, np.array([[20, 40, 80, 120], [180, 100, 200, 140], [10, 10, 30, 30]],
                                                  np.float32))
    assert _to_boxes(rects, 0.5, 200, 150, 10, limit=2).shape == (2, 4)  # best-ranked kept
    assert _to_boxes(np.zeros((0, 4), np.int32), 1.0, 10, 10, 0, 5).shape == (0, 4)


def test_bad_inputs_and_arguments_are_clear_errors(tmp_path):
    generator = registry.build("proposals", dict(type="selective_search", cache_dir=str(tmp_path)))
    with pytest.raises(DataError, match=r"uint8 \[H, W, 3\] RGB array, got a float32 array"):
        generator(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(DataError, match="got a Tensor"):
        generator(torch.zeros(10, 10, 3, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="mode must be one of fast, quality, single"):
        registry.build("proposals", dict(type="selective_search", mode="accurate"))
    with pytest.raises(ConfigError, match="max_proposals"):
        registry.build("proposals", dict(type="selective_search", max_proposals=0))


@pytest.mark.parametrize("broken", ["no ximgproc", "stub ximgproc"])
def test_missing_contrib_build_names_the_fix(monkeypatch, broken):
    import cv2

    from detkit_selective_search.selective_search import OpenCVContribMissing

    if broken == "no ximgproc":  # only opencv-python-headless was ever installed
        monkeypatch.delattr(cv2, "ximgproc")
    else:
        # The plain wheel reinstalled over the contrib one: cv2/ximgproc/ (type stubs) is left behind,
        # so cv2.ximgproc exists, but the compiled module has no segmentation in it.
        monkeypatch.setattr(cv2, "ximgproc", types.ModuleType("cv2.ximgproc"))
    with pytest.raises(OpenCVContribMissing) as err:
        registry.build("proposals", dict(type="selective_search"))
    version = importlib.metadata.version("opencv-python-headless")
    assert f"pip install --force-reinstall --no-deps opencv-contrib-python-headless=={version}" in str(err.value)
    assert isinstance(err.value, DetkitError) and isinstance(err.value, ImportError)


def test_a_damaged_cache_entry_is_recomputed(tmp_path, caplog):
    from detkit_selective_search import SelectiveSearch

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    generator = SelectiveSearch(mode="single", cache_dir=tmp_path, min_size=2)
    first = generator(image)
    generator.cache.path(generator.cache_key(image)).write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING):
        again = generator(image)
    np.testing.assert_array_equal(again, first)
    assert generator.num_computed == 2 and "unreadable" in caplog.text
    np.testing.assert_array_equal(generator.cache.get(generator.cache_key(image)), first)  # rewritten


def test_precompute_in_worker_processes_fills_the_cache(raccoon, tmp_path):
    from detkit_selective_search import SelectiveSearch, precompute

    paths = [raccoon / "JPEGImages" / f"raccoon-{i}.jpg" for i in (4, 5, 6)]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG")
    settings = dict(mode="single", max_side=160, cache_dir=str(tmp_path / "cache"))

    report = precompute([*paths, broken], settings, workers=2, progress=False)
    assert (report.total, report.computed, report.cached) == (4, 3, 0)
    assert len(report.failed) == 1 and report.failed[0][0] == str(broken)

    # The proposals computed in the workers are what this process's generator finds in the cache.
    generator = SelectiveSearch(**settings)
    arrays = [_read(p) for p in paths]
    cached = [generator(a) for a in arrays]
    assert generator.num_cached == 3 and generator.num_computed == 0
    fresh = [SelectiveSearch(**settings, cache=False)(a) for a in arrays]
    for got, want in zip(cached, fresh):
        np.testing.assert_array_equal(got, want)

    again = precompute(arrays, generator, workers=1, progress=False, return_proposals=True)
    assert (again.computed, again.cached, again.failed) == (0, 3, [])
    for got, want in zip(again.proposals, fresh):
        np.testing.assert_array_equal(got, want)

    with pytest.raises(ConfigError, match="cache is off"):
        precompute(arrays, dict(cache=False), workers=1, progress=False)
