"""Transforms: boxes stay on their pixels, meta maps back exactly, labels stay aligned, errors are clear."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from detkit.data.transforms import RandomHSVGain, build_transforms
from detkit.errors import ConfigError
from detkit.structures import boxes_to_original, identity_meta

# Pure hues on a grey background: a pixel "belongs" to colour c when channel c beats the others
# clearly. Grey (and the grey padding) has no saturation, so HSV gains keep it grey.
COLOURS = {0: (230, 20, 20), 1: (20, 230, 20), 2: (20, 20, 230)}
BACKGROUND = 100


def make_sample(height, width, rects, labels, difficult=None, iscrowd=None):
    image = np.full((height, width, 3), BACKGROUND, np.uint8)
    for (x1, y1, x2, y2), label in zip(rects, labels):
        image[y1:y2, x1:x2] = COLOURS[label]
    k = len(rects)
    return {
        "image": image,
        "boxes": np.asarray(rects, np.float32).reshape(k, 4),
        "labels": np.asarray(labels, np.int64),
        "difficult": np.zeros(k, bool) if difficult is None else np.asarray(difficult, bool),
        "iscrowd": np.zeros(k, bool) if iscrowd is None else np.asarray(iscrowd, bool),
        "image_id": 7,
        "meta": identity_meta(height, width),
    }


def colour_mask(image, label):
    img = image.astype(np.int32)
    c = int(np.argmax(COLOURS[label]))
    others = [i for i in range(3) if i != c]
    return (img[..., c] - img[..., others].max(-1)) > 40


def check_boxes_enclose_pixels(out, tol=1.5):
    """Each box encloses every pixel of its label's colour, and is tight around them."""
    image = out["image"]
    for box, label in zip(out["boxes"], out["labels"]):
        ys, xs = np.nonzero(colour_mask(image, int(label)))
        assert len(xs), f"box {box} of label {label} has no pixels of its colour"
        x1, y1, x2, y2 = box
        # pixel (x, y) covers [x, x+1): inside the box means x >= x1 - tol and x + 1 <= x2 + tol
        assert xs.min() >= x1 - tol and xs.max() + 1 <= x2 + tol, (box, xs.min(), xs.max())
        assert ys.min() >= y1 - tol and ys.max() + 1 <= y2 + tol, (box, ys.min(), ys.max())


def test_plain_resize_boxes_and_meta_round_trip():
    rng = np.random.default_rng(0)
    for (h, w), size in [((375, 500), 448), ((480, 301), (320, 480)), ((64, 64), 100)]:
        boxes = rng.uniform(0, 1, (6, 4)) * [w, h, w, h]
        boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:]) + 1],
                               1).clip(0, [w, h, w, h]).astype(np.float32)
        sample = make_sample(h, w, [], [])
        sample.update(boxes=boxes, labels=np.arange(6), difficult=np.zeros(6, bool), iscrowd=np.zeros(6, bool))
        out = build_transforms(dict(size=size))(sample)
        oh, ow = (size, size) if isinstance(size, int) else size
        assert out["image"].shape == (oh, ow, 3) and out["image"].dtype == np.uint8
        assert out["meta"]["input_size"] == (oh, ow)
        assert out["meta"]["scale"] == pytest.approx((ow / w, oh / h))
        assert out["meta"]["pad"] == (0.0, 0.0)
        # independent: scale the corners by hand
        np.testing.assert_allclose(out["boxes"], boxes * [ow / w, oh / h, ow / w, oh / h], atol=1e-3)
        back = boxes_to_original(torch.from_numpy(out["boxes"]).double(), out["meta"])
        np.testing.assert_allclose(back.numpy(), boxes, atol=1e-3)
        assert "augmented" not in out["meta"]


def test_letterbox_meta_round_trip_and_padding():
    rng = np.random.default_rng(1)
    for (h, w), size in [((375, 500), 448), ((500, 375), 448), ((100, 300), (200, 200)), ((300, 200), (120, 320))]:
        oh, ow = (size, size) if isinstance(size, int) else size
        rect = [w // 4, h // 4, w // 2, h // 2]
        sample = make_sample(h, w, [rect], [0])
        extra = rng.uniform(0, 1, (5, 4)) * [w, h, w, h]
        boxes = np.concatenate([sample["boxes"], np.sort(extra.reshape(5, 2, 2), axis=1).reshape(5, 4)]).astype(
            np.float32)
        sample.update(boxes=boxes, labels=np.zeros(6, np.int64), difficult=np.zeros(6, bool), iscrowd=np.zeros(6, bool))
        out = build_transforms(dict(size=size, letterbox=True, pad_value=0))(sample)
        assert out["image"].shape == (oh, ow, 3)
        meta = out["meta"]
        # hand-computed letterbox: one scale for both axes, centred
        s = min(oh / h, ow / w)
        new_h, new_w = round(h * s), round(w * s)
        assert meta["scale"] == pytest.approx((new_w / w, new_h / h))
        assert meta["scale"][0] == pytest.approx(meta["scale"][1], rel=0.01)
        left, top = meta["pad"]
        assert left == (ow - new_w) // 2 and top == (oh - new_h) // 2
        back = boxes_to_original(torch.from_numpy(out["boxes"]).double(), meta)
        np.testing.assert_allclose(back.numpy(), boxes, atol=1e-3)
        # padding is pad_value; the picture (grey background) is not
        img = out["image"]
        assert (img[: int(top)] == 0).all() and (img[int(top) + new_h:] == 0).all()
        assert (img[:, : int(left)] == 0).all() and (img[:, int(left) + new_w:] == 0).all()
        assert (img[int(top) + 2: int(top) + new_h - 2, int(left) + 2] > 0).all()
        check_boxes_enclose_pixels(dict(out, boxes=out["boxes"][:1], labels=out["labels"][:1]))


@pytest.mark.parametrize("cfg", [
    dict(size=160),
    dict(size=(96, 200), letterbox=True),
    dict(size=160, preset="yolov1"),
    dict(size=(128, 160), letterbox=True, preset="yolov1"),
    dict(size=128, augment=[dict(type="Affine", rotate=(-30, 30), scale=(0.7, 1.3), translate_percent=0.15, p=1.0),
                            dict(type="VerticalFlip", p=0.5)]),
])
def test_boxes_follow_their_pixels_through_augmentation(cfg):
    """Three rectangles of distinct colours: after any transform, each box encloses its colour."""
    transform = build_transforms(cfg)
    transform.set_random_seed(0)
    rects = [(20, 30, 90, 80), (120, 40, 170, 150), (40, 120, 100, 170)]
    sample = make_sample(180, 240, rects, [0, 1, 2], difficult=[False, True, False], iscrowd=[True, False, False])
    flags = {0: (False, True), 1: (True, False), 2: (False, False)}
    seen_flip = False
    for _ in range(12):
        out = transform(sample)
        check_boxes_enclose_pixels(out)
        # difficult / iscrowd travel with their box's label
        for label, d, c in zip(out["labels"], out["difficult"], out["iscrowd"]):
            assert (bool(d), bool(c)) == flags[int(label)]
        assert out["boxes"].dtype == np.float32 and out["labels"].dtype == np.int64
        assert out["difficult"].dtype == bool and out["iscrowd"].dtype == bool
        assert out["image_id"] == 7
        if cfg.get("preset") and len(out["boxes"]):
            ys, xs = np.nonzero(colour_mask(out["image"], 0))
            if len(xs) and out["labels"][0] == 0:
                # red starts at the left; a flipped image has it on the right half more often
                seen_flip |= xs.mean() > out["image"].shape[1] / 2
    if cfg.get("preset"):
        assert seen_flip, "the yolov1 preset should flip some images"


def test_horizontal_flip_matches_hand_computed_boxes():
    rects = [(10, 20, 50, 60), (70, 5, 95, 30)]
    sample = make_sample(80, 100, rects, [1, 2], difficult=[True, False])
    out = build_transforms(dict(augment=[dict(type="HorizontalFlip", p=1.0)]))(sample)
    expected = np.array([[100 - 50, 20, 100 - 10, 60], [100 - 95, 5, 100 - 70, 30]], np.float32)
    np.testing.assert_allclose(out["boxes"], expected, atol=1e-4)
    assert out["labels"].tolist() == [1, 2] and out["difficult"].tolist() == [True, False]
    np.testing.assert_array_equal(out["image"], sample["image"][:, ::-1])
    assert out["meta"]["augmented"] is True


def test_dropped_boxes_keep_per_box_fields_aligned():
    # Shift left by 150 px: box 0 leaves the image, box 1 keeps 40/90 of its width (< min_visibility
    # 0.5), box 2 stays whole. Labels / difficult / iscrowd must be those of box 2 only.
    rects = [(10, 20, 30, 40), (100, 100, 190, 150), (160, 10, 190, 30)]
    sample = make_sample(200, 200, rects, [0, 1, 2], difficult=[False, False, True], iscrowd=[True, False, False])
    cfg = dict(augment=[dict(type="Affine", translate_px={"x": (-150, -150), "y": (0, 0)}, p=1.0)], min_visibility=0.5)
    out = build_transforms(cfg)(sample)
    np.testing.assert_allclose(out["boxes"], [[10, 10, 40, 30]], atol=1e-3)
    assert out["labels"].tolist() == [2]
    assert out["difficult"].tolist() == [True] and out["iscrowd"].tolist() == [False]
    # with a low threshold the partly visible box survives, clipped to the image
    out = build_transforms(dict(cfg, min_visibility=0.1))(sample)
    assert out["labels"].tolist() == [1, 2]
    np.testing.assert_allclose(out["boxes"][0], [0, 100, 40, 150], atol=1e-3)


@pytest.mark.parametrize("cfg", [
    dict(size=64), dict(size=64, letterbox=True), dict(size=64, preset="yolov1"),
    dict(augment=[dict(type="RandomSizedBBoxSafeCrop", height=50, width=50, p=1.0), dict(type="Rotate", p=1.0)]),
])
def test_empty_images_pass_every_transform(cfg):
    sample = make_sample(90, 120, [], [])
    out = build_transforms(cfg)(sample)
    assert out["boxes"].shape == (0, 4) and out["boxes"].dtype == np.float32
    assert out["labels"].shape == (0,) and out["labels"].dtype == np.int64
    assert out["difficult"].shape == (0,) and out["iscrowd"].shape == (0,)
    assert out["image"].dtype == np.uint8 and out["image"].ndim == 3


def test_same_seed_same_augmentation_different_seed_different():
    sample = make_sample(100, 120, [(10, 10, 60, 50)], [0])
    t = build_transforms(dict(size=64, preset="yolov1"))
    t.set_random_seed(3)
    a = [t(sample) for _ in range(3)]
    t.set_random_seed(3)
    b = [t(sample) for _ in range(3)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["boxes"], y["boxes"])
    t.set_random_seed(4)
    c = t(sample)
    assert not np.array_equal(a[0]["image"], c["image"])


def test_hsv_gain_matches_a_float_reference():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    t = RandomHSVGain(saturation=1.5, exposure=1.5)
    for sat_gain, val_gain in [(1.4, 0.8), (0.7, 1.3), (1.0, 1.0)]:
        out = t.apply(image, sat_gain=sat_gain, val_gain=val_gain, hue_shift=0.0).astype(np.float64)
        ref = np.empty_like(out)
        for y in range(16):
            for x in range(16):
                h, s, v = colorsys.rgb_to_hsv(*(image[y, x] / 255.0))
                ref[y, x] = np.array(colorsys.hsv_to_rgb(h, min(s * sat_gain, 1.0), min(v * val_gain, 1.0))) * 255
        # OpenCV's uint8 HSV quantises hue to 2 degrees and S, V to 1/255: small per-pixel errors
        err = np.abs(out - ref)
        assert err.mean() < 2.5 and np.percentile(err, 99) < 12, (err.mean(), err.max())
    # the factors follow darknet's rand_scale: within [1/1.5, 1.5], about half below 1
    t.set_random_seed(0)
    gains = np.array([[p["sat_gain"], p["val_gain"]] for p in (t.get_params() for _ in range(2000))])
    assert gains.min() >= 1 / 1.5 - 1e-9 and gains.max() <= 1.5 + 1e-9
    assert 0.4 < (gains < 1).mean() < 0.6


def test_unknown_albumentation_suggests_a_name():
    with pytest.raises(ConfigError, match="HorizontalFlip") as info:
        build_transforms(dict(augment=[dict(type="HorizontalFlipp", p=0.5)]))
    assert "augment[0]" in str(info.value) and "did you mean" in str(info.value)
    with pytest.raises(ConfigError, match="'horizontalflip'.*'HorizontalFlip'"):
        build_transforms(dict(augment=[dict(type="horizontalflip")]))


def test_bad_kwargs_name_the_transform():
    with pytest.raises(ConfigError, match=r"augment\[1\] \(HorizontalFlip\).*'pp'.*did you mean 'p'"):
        build_transforms(dict(augment=[dict(type="VerticalFlip"), dict(type="HorizontalFlip", pp=0.5)]))
    with pytest.raises(ConfigError, match=r"Affine.*invalid arguments"):
        build_transforms(dict(augment=[dict(type="Affine", scale="big")]))
    with pytest.raises(ConfigError, match=r"augment\[0\]\.transforms\[0\].*'Blurr'.*'Blur'"):
        build_transforms(dict(augment=[dict(type="OneOf", transforms=[dict(type="Blurr")])]))
    with pytest.raises(ConfigError, match="'type'"):
        build_transforms(dict(augment=[dict(p=0.5)]))


def test_nested_compose_transforms_work():
    t = build_transforms(dict(size=32, augment=[dict(type="OneOf", transforms=[dict(type="HorizontalFlip", p=1.0),
                                                                               dict(type="VerticalFlip", p=1.0)],
                                                      p=1.0)]))
    out = t(make_sample(40, 40, [(0, 0, 10, 10)], [0]))
    check_boxes_enclose_pixels(out)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="did you mean 'letterbox'"):
        build_transforms(dict(size=64, letterbx=True))
    with pytest.raises(ConfigError, match="unknown preset 'yolo'"):
        build_transforms(dict(size=64, preset="yolo"))
    with pytest.raises(ConfigError, match="size"):
        build_transforms(dict(size=(64, 0)))
    with pytest.raises(ConfigError, match="needs a size"):
        build_transforms(dict(letterbox=True))
    with pytest.raises(ConfigError, match="min_visibility"):
        build_transforms(dict(size=64, min_visibility=2))
    assert build_transforms(None) is None and build_transforms({}) is None


def test_dataset_builds_transforms_from_a_dict(tmp_path):
    """DetectionDataset(transforms=dict(...)) goes through build_transforms: a config needs no code."""
    from detkit.data.base import DetectionDataset

    class One(DetectionDataset):
        pass

    ds = One(["a"], transforms=dict(size=48, letterbox=True))
    out = ds.transforms(make_sample(30, 60, [(0, 0, 30, 15)], [0]))
    assert out["image"].shape == (48, 48, 3)
    assert out["meta"]["pad"] == (0.0, 12.0)
