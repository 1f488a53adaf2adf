"""A synthetic detection data set: coloured shapes on cluttered backgrounds.

``make_shapes(out, num=500, seed=0, size=256, val_fraction=0.2)`` writes::

    out/JPEGImages/000000.jpg ...          the images (size x size, RGB)
    out/Annotations/000000.xml ...         Pascal VOC XML, one per image
    out/ImageSets/Main/{train,val}.txt     the split
    out/annotations/instances_{train,val}.json   the same boxes as COCO JSON (detkit.data.convert)
    out/classes.txt                        one class name per line, in label order
    out/README.md                          what was generated and how

and :class:`ShapesDataset` reads it back (a :class:`~detkit.data.voc.VOCDataset` whose classes
default to :data:`CLASSES`).

``make_shapes(out, mode="classification", size=64)`` writes single-shape crops of the same scenes
instead, in ImageFolder layout (``detkit classify``'s ``image_folder`` data set reads them)::

    out/train/<class>/SSSSSS_K.jpg         shape K of scene S: a square crop around its box, size x size
    out/val/<class>/...                    crops of other scenes (no scene gives crops to both splits)
    out/classes.txt, out/README.md

Each crop is the shape's box widened to a square with ``CROP_CONTEXT`` (15%) of its side as context on
each side (shifted to stay inside the scene), cut from the 256 px scene and resized (area
interpolation). It holds what the detector sees around that object: background clutter and, where
shapes overlap, parts of their neighbours. ``num`` counts crops; scenes are drawn in order until both
splits are full. Use a different ``seed`` from the detection set's so that pre-training never sees
the detector's validation images.

What the images hold, and why:

* Five classes told apart by **outline only**: circle, square, triangle, star, cross. Colours are
  random per shape, so colour carries no class information. Every shape is randomly rotated and
  mildly stretched (aspect 0.8..1.25), so a circle may be an ellipse and a square a rectangle.
* 0..4 shapes per image (about one image in five is empty), each 12%..45% of the image side, fully
  inside the image.
* Backgrounds are a colour gradient plus low-frequency noise, soft blobs and thin random lines,
  and every image gets pixel noise; shape colours are drawn to stand out from the background under
  them, which keeps the task learnable by a small detector in a few CPU minutes.
* **Occlusion**: shapes are painted in order, later ones on top. A box is always the *full* extent
  of its shape (what a VOC annotator draws for an occluded object), measured from the rendered
  pixels. A new shape (painted on top) is only placed where it leaves every earlier shape at least
  ``MIN_VISIBLE`` (50%) visible; after a few failed placements it is left out. So every annotated
  shape is at least half visible, and no box stands for a shape one cannot see.
* Deterministic: image ``i`` is drawn from ``numpy.random.default_rng([seed, i])`` only, so the same
  seed gives byte-identical annotation files regardless of the number of worker processes.

Box convention in the XML is VOC's: 1-based inclusive pixel indices, so a shape covering pixel
columns ``c0..c1`` (0-based) gets ``xmin=c0+1, xmax=c1+1``, i.e. the continuous box ``[c0, c1+1)``.
"""

from __future__ import annotations

import os
import shutil
import time
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np

from detkit.data.voc import VOCDataset
from detkit.errors import DataError

__all__ = ["CLASSES", "CROP_CONTEXT", "MIN_VISIBLE", "ShapesDataset", "crop_shapes", "make_shapes", "render_image"]

CLASSES = ("circle", "square", "triangle", "star", "cross")
MIN_VISIBLE = 0.5  # an earlier shape must keep at least this fraction of its pixels visible
MAX_SHAPES = 4
SIZE_RANGE = (0.12, 0.45)  # shape extent as a fraction of the image side
_PLACEMENT_TRIES = 12
_README_MARKER = "<!-- detkit synthetic shapes data set -->"
MODES = ("detection", "classification")
CROP_CONTEXT = 0.15  # context around a shape in a classification crop, per side, as a fraction of its side
_SCENE_SIZE = 256  # the scenes classification crops are cut from


# ----------------------------------------------------------------------------------------------
# Shape outlines: unit polygons (extent about [-1, 1]) rotated / stretched per instance
# ----------------------------------------------------------------------------------------------
def _regular_polygon(n: int, start: float, radius: float = 1.0) -> np.ndarray:
    angles = start + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer = _regular_polygon(points, -np.pi / 2)
    inner_pts = _regular_polygon(points, -np.pi / 2 + np.pi / points, inner)
    return np.stack([outer, inner_pts], axis=1).reshape(-1, 2)


def _cross(arm: float = 0.36) -> np.ndarray:
    a = arm
    return np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a),
                     (-1, -a), (-a, -a)], dtype=np.float64)


_OUTLINES = {
    "circle": _regular_polygon(64, 0.0),
    "square": np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64),
    "triangle": _regular_polygon(3, -np.pi / 2),
    "star": _star(),
    "cross": _cross(),
}
_SUBPIXEL_BITS = 4  # cv2.fillPoly fixed-point precision: vertices placed to 1/16 px


def _shape_mask(name: str, centre, extent: float, aspect: float, angle: float, size: int) -> np.ndarray:
    """Binary mask of one shape whose rotated outline spans about ``extent`` pixels."""
    pts = _OUTLINES[name] * np.array([aspect ** 0.5, aspect ** -0.5])
    c, s = np.cos(angle), np.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]])
    # Normalise so the rotated polygon's larger side is exactly `extent` (keeps sizes in range).
    span = (pts.max(0) - pts.min(0)).max()
    pts = (pts - (pts.max(0) + pts.min(0)) / 2) * (extent / span) + np.asarray(centre)
    mask = np.zeros((size, size), np.uint8)
    fixed = np.round(pts * (1 << _SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillPoly(mask, [fixed], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL_BITS)
    return mask.astype(bool)


# ----------------------------------------------------------------------------------------------
# Backgrounds
# ----------------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    # A linear gradient between two colours at a random angle.
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    t = np.float32(np.cos(theta)) * ramp[None, :] + np.float32(np.sin(theta)) * ramp[:, None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]
    # Low-frequency colour noise (clouds): a coarse random grid upsampled smoothly.
    cells = int(rng.integers(3, 9))
    coarse = rng.normal(0, rng.uniform(5, 35), (cells, cells, 3)).astype(np.float32)
    img += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    # Soft blobs: blurred ellipses, semi-transparent, so they never read as crisp shapes.
    k = 2 * (size // 24) + 1
    for _ in range(int(rng.integers(0, 5))):
        centre = rng.integers(0, size, 2)
        axes = rng.integers(size // 16, size // 4, 2)
        angle = float(rng.uniform(0, 180))
        colour = rng.uniform(0, 255, 3).astype(np.float32)
        alpha = float(rng.uniform(0.2, 0.5))
        # Work on the blob's neighbourhood only: blurring the whole image per blob is the slow part.
        r = int(axes.max()) + k
        x0, y0 = max(int(centre[0]) - r, 0), max(int(centre[1]) - r, 0)
        x1, y1 = min(int(centre[0]) + r, size), min(int(centre[1]) + r, size)
        weight = np.zeros((y1 - y0, x1 - x0), np.float32)
        cv2.ellipse(weight, (int(centre[0]) - x0, int(centre[1]) - y0), (int(axes[0]), int(axes[1])), angle,
                    0, 360, alpha, -1)
        weight = cv2.GaussianBlur(weight, (k, k), 0)[..., None]
        roi = img[y0:y1, x0:x1].astype(np.float32)
        img[y0:y1, x0:x1] = (roi * (1 - weight) + colour * weight).astype(np.uint8)
    # Thin random lines (1-2 px: far thinner than a cross's arms).
    for _ in range(int(rng.integers(0, 7))):
        p0 = tuple(int(v) for v in rng.integers(-size // 4, size + size // 4, 2))
        p1 = tuple(int(v) for v in rng.integers(-size // 4, size + size // 4, 2))
        cv2.line(img, p0, p1, tuple(float(v) for v in rng.uniform(0, 255, 3)), int(rng.integers(1, 3)),
                 cv2.LINE_AA)
    return img


def _contrasting_colour(rng: np.random.Generator, under: np.ndarray, tries: int = 16) -> np.ndarray:
    """A random colour far (L1 >= 160) from the mean background colour ``under`` the shape."""
    best, best_d = None, -1.0
    for _ in range(tries):
        colour = rng.uniform(0, 255, 3)
        d = float(np.abs(colour - under).sum())
        if d >= 160:
            return colour
        if d > best_d:
            best, best_d = colour, d
    return best


# ----------------------------------------------------------------------------------------------
# One image
# ----------------------------------------------------------------------------------------------
def render_image(seed: int, index: int, size: int = 256, return_masks: bool = False):
    """Draw image ``index`` of the data set ``seed``.

    Returns ``(image uint8 [size, size, 3] RGB, boxes int64 [K, 4], labels int64 [K], occluded bool [K])``
    with boxes as half-open pixel extents ``[x0, y0, x1, y1)`` of the full (possibly occluded) shapes,
    in painting order; with ``return_masks`` also the list of each shape's full (amodal) bool mask.
    """
    rng = np.random.default_rng([seed, index])
    image = _background(rng, size)
    # About one image in five is empty; the rest hold 1..MAX_SHAPES shapes.
    count = 0 if rng.random() < 0.2 else int(rng.integers(1, MAX_SHAPES + 1))
    owner = np.full((size, size), -1, np.int16)  # which shape is on top at each pixel
    masks, labels = [], []
    for _ in range(count):
        label = int(rng.integers(len(CLASSES)))
        for _try in range(_PLACEMENT_TRIES):
            extent = rng.uniform(*SIZE_RANGE) * size
            aspect = rng.uniform(0.8, 1.25)
            angle = rng.uniform(0, 2 * np.pi)
            centre = rng.uniform(extent / 2 + 1, size - extent / 2 - 1, 2)
            mask = _shape_mask(CLASSES[label], centre, extent, aspect, angle, size)
            if not mask.any():
                continue
            # Would painting it leave every earlier shape at least MIN_VISIBLE visible?
            covered = np.bincount(owner[mask].astype(np.int64) + 1, minlength=len(masks) + 1)[1:]
            visible_after = np.array([(owner == k).sum() - covered[k] for k in range(len(masks))])
            totals = np.array([m.sum() for m in masks])
            if len(masks) and (visible_after < MIN_VISIBLE * totals).any():
                continue
            owner[mask] = len(masks)
            masks.append(mask)
            labels.append(label)
            break
    for k, mask in enumerate(masks):
        colour = _contrasting_colour(rng, image[mask].reshape(-1, 3).mean(0))
        ys, xs = np.nonzero(owner == k)
        # A gentle shading across the shape, so it is not a perfectly flat fill.
        along = xs if rng.random() < 0.5 else ys
        shade = 1 + rng.uniform(-0.15, 0.15) * (along * (2.0 / max(size - 1, 1)) - 1)
        image[ys, xs] = np.clip(colour[None] * shade[:, None], 0, 255).astype(np.uint8)
    noise_sigma = rng.uniform(0, 8)
    if noise_sigma > 0.5:
        noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise_sigma)
        image = np.clip(image + noise, 0, 255).astype(np.uint8)
    boxes = np.zeros((len(masks), 4), np.int64)
    occluded = np.zeros(len(masks), bool)
    for k, mask in enumerate(masks):
        ys = np.flatnonzero(mask.any(axis=1))
        xs = np.flatnonzero(mask.any(axis=0))
        boxes[k] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
        occluded[k] = bool((owner[mask] != k).any())
    if return_masks:
        return image, boxes, np.asarray(labels, np.int64), occluded, masks
    return image, boxes, np.asarray(labels, np.int64), occluded


# ----------------------------------------------------------------------------------------------
# Writing the data set
# ----------------------------------------------------------------------------------------------
def _voc_xml(file_name: str, size: int, boxes: np.ndarray, labels: np.ndarray, occluded: np.ndarray) -> str:
    objects = []
    for (x0, y0, x1, y1), label, occ in zip(boxes.tolist(), labels.tolist(), occluded.tolist()):
        # VOC corners are 1-based inclusive pixel indices: the half-open extent [x0, x1) covers
        # pixels x0..x1-1, i.e. xmin = x0 + 1 and xmax = x1.
        objects.append(
            "  <object>\n"
            f"    <name>{escape(CLASSES[label])}</name>\n"
            "    <pose>Unspecified</pose>\n"
            "    <truncated>0</truncated>\n"
            f"    <occluded>{int(occ)}</occluded>\n"
            "    <difficult>0</difficult>\n"
            "    <bndbox>\n"
            f"      <xmin>{x0 + 1}</xmin>\n      <ymin>{y0 + 1}</ymin>\n"
            f"      <xmax>{x1}</xmax>\n      <ymax>{y1}</ymax>\n"
            "    </bndbox>\n"
            "  </object>\n"
        )
    return (
        "<annotation>\n"
        "  <folder>JPEGImages</folder>\n"
        f"  <filename>{escape(file_name)}</filename>\n"
        "  <source>\n    <database>detkit synthetic shapes</database>\n  </source>\n"
        f"  <size>\n    <width>{size}</width>\n    <height>{size}</height>\n    <depth>3</depth>\n  </size>\n"
        "  <segmented>0</segmented>\n"
        + "".join(objects)
        + "</annotation>\n"
    )


def _write_images(out: str, seed: int, size: int, indices: list[int]) -> list[tuple[int, int, list[int]]]:
    """Render and write images ``indices``; returns ``(index, boxes, per-class counts)`` per image."""
    results = []
    root = Path(out)
    for index in indices:
        image, boxes, labels, occluded = render_image(seed, index, size)
        stem = _image_id(index)
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise DataError(f"{root / 'JPEGImages' / (stem + '.jpg')}: OpenCV failed to encode the image")
        (root / "JPEGImages" / f"{stem}.jpg").write_bytes(encoded.tobytes())
        (root / "Annotations" / f"{stem}.xml").write_text(
            _voc_xml(f"{stem}.jpg", size, boxes, labels, occluded), encoding="utf-8")
        counts = np.bincount(labels, minlength=len(CLASSES)).tolist()
        results.append((index, len(boxes), counts))
    return results


def _image_id(index: int) -> str:
    return f"{index:06d}"


def _prepare_out(out: Path, mode: str) -> None:
    """Create ``out``; refuse to write into a non-empty folder that is not an earlier shapes set of
    the same mode."""
    readme = out / "README.md"
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (readme.is_file() and _README_MARKER in readme.read_text(encoding="utf-8", errors="replace")):
            raise DataError(f"{out}: folder is not empty and does not hold a detkit shapes data set; "
                            "choose an empty or new folder")
        other = "train" if mode == "detection" else "JPEGImages"
        if (out / other).is_dir():
            raise DataError(f"{out}: holds a shapes data set of the other mode; choose another folder for "
                            f"the {mode} set")
        # An earlier shapes set: remove its images so no stale file outlives the new split.
        if mode == "classification":
            for split in ("train", "val"):
                shutil.rmtree(out / split, ignore_errors=True)
        for sub, pattern in (("JPEGImages", "[0-9]*.jpg"), ("Annotations", "[0-9]*.xml")):
            for f in (out / sub).glob(pattern):
                f.unlink()
    subdirs = ("JPEGImages", "Annotations", "ImageSets/Main", "annotations") if mode == "detection" else ()
    for sub in subdirs:
        (out / sub).mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _init_worker() -> None:
    # Forked children must not touch OpenCV's thread pool inherited from the parent; one process per
    # core is the parallelism here anyway.
    cv2.setNumThreads(1)


def _auto_workers(num: int) -> int:
    # Process start-up costs ~0.2 s; only worth it for a few hundred images.
    return 1 if num < 200 else max(1, min(4, os.cpu_count() or 1))


def make_shapes(out: str | os.PathLike, num: int = 500, seed: int = 0, size: int | None = None,
                val_fraction: float = 0.2, workers: int | None = None, mode: str = "detection") -> str:
    """Generate the synthetic shapes data set into ``out``; returns a summary.

    ``mode="detection"``: ``num`` images of ``size`` (default 256) px in VOC layout + COCO JSON; the
    first ``num - round(num * val_fraction)`` images form ``train``, the rest ``val``. ``workers``
    processes render in parallel (default: several for >= 200 images); the output does not depend on it.
    ``mode="classification"``: ``num`` single-shape crops of ``size`` (default 64) px in ImageFolder
    layout (see the module docstring), ``round(num * val_fraction)`` of them in ``val``.
    """
    if mode not in MODES:
        raise DataError(f"make-shapes: --mode must be one of {', '.join(MODES)}, got {mode!r}")
    size = size if size is not None else (256 if mode == "detection" else 64)
    if num < 1:
        raise DataError(f"make-shapes: --num must be at least 1, got {num}")
    if size < (32 if mode == "detection" else 8):
        raise DataError(f"make-shapes: --size must be at least {32 if mode == 'detection' else 8} pixels, got {size}")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"make-shapes: --val-fraction must lie in [0, 1), got {val_fraction}")
    if mode == "classification":
        return _make_crops(Path(out), num, seed, size, val_fraction)
    from detkit.data.convert import voc_to_coco

    start = time.perf_counter()
    out = Path(out)
    _prepare_out(out, mode)
    workers = _auto_workers(num) if workers is None else max(1, int(workers))
    indices = list(range(num))
    if workers == 1:
        results = _write_images(str(out), seed, size, indices)
    else:
        chunks = [indices[i::workers * 4] for i in range(workers * 4)]
        # "spawn", not the default fork: forking a process that already runs threads (torch, OpenCV,
        # pytest plugins) can deadlock the child on a lock held by a thread that does not exist there.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, mp_context=context) as pool:
            parts = pool.map(_write_images, [str(out)] * len(chunks), [seed] * len(chunks), [size] * len(chunks),
                             chunks)
            results = sorted(r for part in parts for r in part)
    num_val = int(round(num * val_fraction))
    splits = {"train": indices[:num - num_val], "val": indices[num - num_val:]}
    for split, ids in splits.items():
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text(
            "".join(f"{_image_id(i)}\n" for i in ids), encoding="utf-8")
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES), encoding="utf-8")
    (out / "README.md").write_text(_readme(num, seed, size, val_fraction, splits), encoding="utf-8")
    coco_notes = []
    for split, ids in splits.items():
        json_path = out / "annotations" / f"instances_{split}.json"
        if ids:
            voc_to_coco(out, json_path, split=split, classes=CLASSES,
                        description=f"detkit synthetic shapes, seed {seed}, {split} split")
            coco_notes.append(str(json_path))
        else:
            json_path.unlink(missing_ok=True)
    boxes = sum(r[1] for r in results)
    per_class = np.sum([r[2] for r in results], axis=0).astype(int).tolist()
    empty = sum(1 for r in results if r[1] == 0)
    return (
        f"wrote {num} images ({len(splits['train'])} train, {len(splits['val'])} val) of {size}x{size} px to "
        f"{out} in {time.perf_counter() - start:.1f} s\n"
        f"  {boxes} boxes: " + ", ".join(f"{c} {n}" for c, n in zip(CLASSES, per_class))
        + f"; {empty} images without shapes\n"
        f"  VOC: {out / 'Annotations'}, {out / 'ImageSets' / 'Main'}; COCO: {', '.join(coco_notes)}"
    )


def _readme(num: int, seed: int, size: int, val_fraction: float, splits: dict) -> str:
    return f"""{_README_MARKER}
# Synthetic shapes

Generated by `detkit data make-shapes` (detkit.data.shapes) with num={num}, seed={seed}, size={size},
val_fraction={val_fraction}: {len(splits['train'])} train and {len(splits['val'])} val images.
The same arguments always give the same annotation files.

Classes (label order, also in classes.txt): {', '.join(CLASSES)}.
Shapes are told apart by outline only (colours are random); 0..{MAX_SHAPES} per image, each
{SIZE_RANGE[0]:.0%}..{SIZE_RANGE[1]:.0%} of the image side, fully inside the image. Later shapes occlude
earlier ones; a box is always the full extent of its shape, and every shape stays at least
{MIN_VISIBLE:.0%} visible (`<occluded>1</occluded>` marks the partly hidden ones).

    JPEGImages/NNNNNN.jpg                   images
    Annotations/NNNNNN.xml                  Pascal VOC boxes (1-based inclusive corners)
    ImageSets/Main/train.txt, val.txt       the split
    annotations/instances_train.json, instances_val.json   the same boxes as COCO JSON

Train on it with `configs/_base_/datasets/shapes.py` (dataset type `shapes`).
"""


# ----------------------------------------------------------------------------------------------
# Classification crops
# ----------------------------------------------------------------------------------------------
def crop_shapes(image: np.ndarray, boxes: np.ndarray, size: int, context: float = CROP_CONTEXT) -> list[np.ndarray]:
    """One ``size`` x ``size`` crop per box of ``image``: the box widened to a square with ``context``
    of its side on each side, shifted to stay inside the image, resized with area interpolation."""
    height, width = image.shape[:2]
    crops = []
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        side = min(max(x1 - x0, y1 - y0) * (1 + 2 * context), width, height)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        left = int(round(min(max(cx - side / 2, 0), width - side)))
        top = int(round(min(max(cy - side / 2, 0), height - side)))
        side = int(round(side))
        crops.append(cv2.resize(image[top:top + side, left:left + side], (size, size),
                                interpolation=cv2.INTER_AREA))
    return crops


def _make_crops(out: Path, num: int, seed: int, size: int, val_fraction: float) -> str:
    start = time.perf_counter()
    _prepare_out(out, "classification")
    num_val = int(round(num * val_fraction))
    quota = {"train": num - num_val, "val": num_val}
    counts = {split: np.zeros(len(CLASSES), np.int64) for split in quota}
    for split in quota:
        for name in CLASSES:
            (out / split / name).mkdir(parents=True, exist_ok=True)
    scene, scenes = 0, {"train": 0, "val": 0}
    for split in ("train", "val"):
        # Whole scenes per split: no scene gives crops to both.
        while counts[split].sum() < quota[split]:
            image, boxes, labels, _ = render_image(seed, scene, _SCENE_SIZE)
            for k, (crop, label) in enumerate(zip(crop_shapes(image, boxes, size), labels.tolist())):
                if counts[split].sum() >= quota[split]:
                    break
                path = out / split / CLASSES[label] / f"{_image_id(scene)}_{k}.jpg"
                ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                                           [cv2.IMWRITE_JPEG_QUALITY, 95])
                if not ok:
                    raise DataError(f"{path}: OpenCV failed to encode the image")
                path.write_bytes(encoded.tobytes())
                counts[split][label] += 1
            scene += 1
            scenes[split] += 1
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in CLASSES), encoding="utf-8")
    (out / "README.md").write_text(f"""{_README_MARKER}
# Synthetic shapes, classification crops

Generated by `detkit data make-shapes --mode classification` (detkit.data.shapes) with num={num},
seed={seed}, size={size}, val_fraction={val_fraction}: {quota['train']} train crops from {scenes['train']} scenes,
{quota['val']} val crops from {scenes['val']} other scenes ({_SCENE_SIZE} px scenes of the detection generator).
Each crop is one shape's box widened to a square with {CROP_CONTEXT:.0%} context per side, resized to
{size}x{size}. The same arguments always give the same files.

    train/<class>/SSSSSS_K.jpg     shape K of scene S
    val/<class>/...

Train a classifier on it with `detkit classify train configs/classify_shapes_resnet18.py`.
""", encoding="utf-8")
    return (
        f"wrote {num} crops ({quota['train']} train from {scenes['train']} scenes, {quota['val']} val from "
        f"{scenes['val']} scenes) of {size}x{size} px to {out} in {time.perf_counter() - start:.1f} s\n"
        + "\n".join(f"  {split}: " + ", ".join(f"{c} {n}" for c, n in zip(CLASSES, counts[split].tolist()))
                    for split in quota)
    )


class ShapesDataset(VOCDataset):
    """The shapes data set written by :func:`make_shapes`: a VOC data set with :data:`CLASSES` as default."""

    def __init__(self, root, split="train", classes=None, transforms=None, strict: bool = False):
        super().__init__(root, split=split, classes=tuple(classes) if classes else CLASSES,
                         transforms=transforms, strict=strict)
