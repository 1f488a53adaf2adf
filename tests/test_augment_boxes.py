"""The box-changing augmentations detkit adds or wires up (detkit/data/transforms.py): after
MinIoURandomCrop and Mosaic every box still frames its own object, with its own label."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from detkit.data.base import Annotation, DetectionDataset
from detkit.data.transforms import MinIoURandomCrop, _centres_inside, build_transforms

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255]], np.uint8)


def scene(seed: int, size=(120, 160), n=3):
    """An image with ``n`` solid rectangles of distinct colours on black; label k = colour k (they may
    overlap: :func:`non_overlapping_scene` picks seeds where they do not)."""
    rng = np.random.default_rng(seed)
    h, w = size
    image = np.zeros((h, w, 3), np.uint8)
    boxes, labels = [], []
    for k in rng.permutation(len(COLOURS))[:n]:
        bw, bh = rng.integers(15, w // 2), rng.integers(15, h // 2)
        x1, y1 = rng.integers(0, w - bw), rng.integers(0, h - bh)
        image[y1:y1 + bh, x1:x1 + bw] = COLOURS[k]
        boxes.append([x1, y1, x1 + bw, y1 + bh])
        labels.append(k)
    return image, np.asarray(boxes, np.float32), np.asarray(labels, np.int64)


def colour_extent(image, colour):
    mask = (np.abs(image.astype(int) - colour).sum(-1) < 60)
    ys, xs = np.nonzero(mask)
    return mask, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if len(xs) else None


def check_boxes_frame_their_objects(image, boxes, labels, tol):
    assert len(boxes) == len(labels)
    for box, label in zip(boxes, labels):
        mask, extent = colour_extent(image, COLOURS[label])
        assert extent is not None, "a box survived whose object is not in the image"
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        inside = mask[y1:y2, x1:x2].mean()
        assert inside > 0.8, f"box {box} of label {label} is not on its object ({inside:.2f} of it is)"
        assert np.allclose(box, extent, atol=tol), (box, extent)


def check_boxes_tight(image, boxes, labels, margin=3):
    """Each box sits on its colour and is tight to it (within ``margin`` pixels): the box shrunk by
    ``margin`` is that colour, the strips ``margin`` pixels outside each edge are not. Works when a
    colour appears more than once (Mosaic takes images whose objects share colours)."""
    h, w = image.shape[:2]
    judged = 0
    for box, label in zip(boxes, labels):
        mask = (np.abs(image.astype(int) - COLOURS[label]).sum(-1) < 60)
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        if x2 - x1 <= 2 * margin + 1 or y2 - y1 <= 2 * margin + 1:
            continue  # a sliver cut at a tile edge: too thin to judge to within `margin` pixels
        judged += 1
        assert mask[y1 + margin:y2 - margin, x1 + margin:x2 - margin].mean() > 0.9, (box, label)
        rows, cols = slice(y1 + margin, y2 - margin), slice(x1 + margin, x2 - margin)
        for strip in ((rows, x1 - margin) if x1 - margin >= 0 else None,
                      (rows, x2 + margin - 1) if x2 + margin - 1 < w else None,
                      (y1 - margin, cols) if y1 - margin >= 0 else None,
                      (y2 + margin - 1, cols) if y2 + margin - 1 < h else None):
            if strip is not None:
                assert mask[strip].mean() < 0.5, (box, label, "box is not tight")
    return judged


def non_overlapping_scene(seed):
    for s in range(seed * 100, seed * 100 + 100):
        image, boxes, labels = scene(s)
        a, b = boxes[:, None], boxes[None]
        overlap = ((np.minimum(a[..., 2], b[..., 2]) > np.maximum(a[..., 0], b[..., 0]))
                   & (np.minimum(a[..., 3], b[..., 3]) > np.maximum(a[..., 1], b[..., 1])))
        if overlap.sum() == len(boxes):  # only each box with itself
            return image, boxes, labels
    raise AssertionError("no scene without overlaps")


@pytest.mark.parametrize("seed", range(8))
def test_min_iou_random_crop_keeps_centred_objects_on_their_pixels(seed):
    image, boxes, labels = non_overlapping_scene(seed)
    crop = A.Compose([MinIoURandomCrop(min_ious=(0.1, 0.3), min_crop_size=0.3, p=1.0)],
                     bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True),
                     save_applied_params=True)
    crop.set_random_seed(seed)
    out = crop(image=image, bboxes=boxes, labels=labels)
    window = dict(out["applied_transforms"])["MinIoURandomCrop"]["crop_coords"]
    # box-aware filtering: exactly the objects centred in the window survive, clipped to it
    expected = labels[_centres_inside(boxes.astype(np.float64), window)]
    assert sorted(np.asarray(out["labels"]).tolist()) == sorted(expected.tolist())
    assert len(expected) >= 1
    check_boxes_frame_their_objects(out["image"], np.asarray(out["bboxes"]), np.asarray(out["labels"]), tol=0.01)


def test_min_iou_random_crop_obeys_the_iou_floor():
    image, boxes, labels = non_overlapping_scene(1)
    crop = A.Compose([MinIoURandomCrop(min_ious=(0.5,), p=1.0)],
                     bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"]), save_applied_params=True)
    from detkit.data.transforms import _window_iou

    for seed in range(20):
        crop.set_random_seed(seed)
        window = dict(crop(image=image, bboxes=boxes, labels=labels)["applied_transforms"])["MinIoURandomCrop"][
            "crop_coords"]
        full = tuple(window) == (0, 0, image.shape[1], image.shape[0])
        assert full or _window_iou(window, boxes.astype(np.float64)).min() >= 0.5


class Scenes(DetectionDataset):
    def __init__(self, n=6, transforms=None):
        self.items = [non_overlapping_scene(i) for i in range(n)]
        super().__init__([f"c{k}" for k in range(len(COLOURS))], transforms)

    def __len__(self):
        return len(self.items)

    def load_annotation(self, index):
        _, boxes, labels = self.items[index]
        return Annotation(image_id=index, file_name=f"{index}.png", boxes=boxes, labels=labels,
                          difficult=labels == 2, width=160, height=120)

    def load_image(self, index):
        return self.items[index][0].copy()

    def image_path(self, index):
        return f"/scenes/{index}.png"


def test_mosaic_takes_other_images_of_the_data_set_with_their_labels():
    ds = Scenes(transforms=dict(augment=[dict(type="Mosaic", target_size=(120, 160), cell_shape=(120, 160),
                                               fill=0, p=1.0)], min_visibility=0.3))
    assert ds.transforms.mosaic_extra == 3
    sources = set()
    for seed in range(6):
        ds.transforms.set_random_seed(seed)
        sample = ds.transforms(ds.raw_sample(seed % len(ds)))
        labels = sample["labels"]
        # boxes from the other images keep their own labels and flags (difficult <=> label 2 here)
        assert np.array_equal(sample["difficult"], labels == 2)
        assert check_boxes_tight(sample["image"], sample["boxes"], labels) >= 1
        sources |= {int(l) for l in labels} - set(ds.items[seed % len(ds)][2].tolist())
        assert sample["meta"]["augmented"]
    assert sources, "no box of another image ever appeared"


def test_mosaic_is_repeatable_from_the_seed():
    ds = Scenes(transforms=dict(size=64, augment=[dict(type="Mosaic", target_size=(120, 160),
                                                       cell_shape=(120, 160), p=1.0)]))
    ds.transforms.set_random_seed(3)
    a = ds[0]
    ds.transforms.set_random_seed(3)
    b = ds[0]
    assert np.array_equal(a[0].numpy(), b[0].numpy()) and np.array_equal(a[1]["boxes"], b[1]["boxes"])


def test_mosaic_runs_before_the_preset_and_every_other_step():
    # The three other images Mosaic adds are raw, so the preset must scale/shift/flip the whole
    # mosaic, not the first image alone.
    import albumentations as A

    t = build_transforms(dict(size=64, preset="yolov1", augment=[
        dict(type="HorizontalFlip", p=0.5), dict(type="Mosaic", target_size=(64, 64), cell_shape=(64, 64))]))
    names = [type(step).__name__ for step in t.augmentation.transforms]
    assert names == ["Mosaic", "Affine", "RandomHSVGain", "HorizontalFlip", "HorizontalFlip"]
    assert isinstance(t.augmentation.transforms[0], A.Mosaic) and t.mosaic_extra == 3


def test_named_augmentations_are_checked_like_albumentations_ones():
    from detkit.errors import ConfigError

    with pytest.raises(ConfigError, match="MinIoURandomCrop.*unknown argument 'min_iou'.*min_ious"):
        build_transforms(dict(augment=[dict(type="MinIoURandomCrop", min_iou=0.3)]))
    with pytest.raises(ConfigError, match="did you mean 'MinIoURandomCrop'"):
        build_transforms(dict(augment=[dict(type="MinIouRandomCrop")]))
