"""Data sets at COCO scale: how long building the data set takes and how much memory it needs.

    python tools/bench.py data-scale [--images 118287] [--boxes 860001] [--voc-files 20000]
                                     [--points 24] [--root ../shared/datasets/raccoon]
                                     [--verify-files 20000] [--keep DIR]

Writes, into a temporary folder (or ``--keep DIR``, reused when it is there):

* a synthetic COCO annotation file of COCO train2017's size: 118,287 images, 860,001 boxes over the 80
  COCO category ids, each with a polygon ``segmentation`` of ``--points`` points (real files are mostly
  polygons: 448 MB for train2017), ``area``, ``iscrowd``; about the real file's size;
* a Pascal VOC folder of 20,000 XML files (1-6 objects each; ``JPEGImages/`` empty: the XML files are
  what is measured).

Then measures, each in a fresh process (so peak RSS is that step's alone; imports included):

* ``pycocotools.coco.COCO(file)`` -- the reference, in the same run;
* ``COCODataset(file, img_dir)`` -- detkit's index (parse, validate, boxes to arrays);
* ``VOCDataset(root, split=None)`` over the 20k XML files;
* the verification pass (:mod:`detkit.data.verify`) over ``--verify-files`` real image files (hard links
  to the photos of ``--root``, the raccoon set when present, cycled): cold (every image decoded) and
  warm (the cache), with plain ``cv2.imread`` of the photos as the reference rate.

Targets on the 2-core development machine: COCO-scale index <= 20 s and <= 2 GB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "raccoon"
# COCO's 80 category ids (1..90 with gaps)
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


# ----------------------------------------------------------------------------------------------
# Writing the synthetic data (streamed: the writer must not be what runs out of memory)
# ----------------------------------------------------------------------------------------------
def write_coco(path: Path, images: int, boxes: int, points: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    # A pool of polygon strings reused at random: parsing costs the same, writing is 20x faster.
    pool = []
    for _ in range(2000):
        xy = rng.uniform(0, 600, 2 * points)
        pool.append("[[" + ",".join(f"{v:.2f}" for v in xy) + "]]")
    per_image = rng.multinomial(boxes, np.full(images, 1 / images))
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"info":{"description":"synthetic, COCO train2017 sized"},"licenses":[],"images":[')
        sizes = rng.integers(200, 640, (images, 2))
        f.write(",".join(f'{{"license": 3,"file_name": "{i + 1:012d}.jpg","height": {h},"width": {w},"id": {i + 1}}}'
                         for i, (w, h) in enumerate(sizes.tolist())))
        f.write('],"annotations":[')
        ann_id = 0
        first = True
        image_of = np.repeat(np.arange(images), per_image)
        cats = rng.choice(COCO_IDS, boxes)
        chunk = 50_000
        for lo in range(0, boxes, chunk):
            hi = min(lo + chunk, boxes)
            img = image_of[lo:hi]
            w, h = sizes[img, 0], sizes[img, 1]
            x, y = rng.uniform(0, w * 0.8), rng.uniform(0, h * 0.8)
            bw, bh = rng.uniform(1, w - x), rng.uniform(1, h - y)
            crowd = rng.random(hi - lo) < 0.01
            parts = []
            for k in range(hi - lo):
                ann_id += 1
                # the formatting of COCO's own files: '": ' after keys, no spaces inside number lists
                parts.append(f'{{"segmentation": {pool[ann_id % len(pool)]},"area": {bw[k] * bh[k]:.2f},'
                             f'"iscrowd": {int(crowd[k])},"image_id": {img[k] + 1},"bbox": [{x[k]:.2f},{y[k]:.2f},'
                             f'{bw[k]:.2f},{bh[k]:.2f}],"category_id": {cats[lo + k]},"id": {ann_id}}}')
            f.write(("" if first else ",") + ",".join(parts))
            first = False
        f.write('],"categories":[' + ",".join(f'{{"supercategory":"thing","id":{c},"name":"class{c}"}}'
                                                for c in COCO_IDS) + "]}")


def write_voc(root: Path, files: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(exist_ok=True)
    names = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
             "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
    for i in range(files):
        w, h = (int(v) for v in rng.integers(200, 500, 2))
        objects = []
        for _ in range(int(rng.integers(1, 7))):
            x1, y1 = (int(v) for v in rng.integers(1, (w // 2, h // 2)))
            x2, y2 = int(rng.integers(x1 + 1, w)), int(rng.integers(y1 + 1, h))
            objects.append(f"\t<object>\n\t\t<name>{names[int(rng.integers(20))]}</name>\n\t\t<pose>Unspecified</pose>"
                           f"\n\t\t<truncated>0</truncated>\n\t\t<difficult>{int(rng.random() < 0.1)}</difficult>\n"
                           f"\t\t<bndbox>\n\t\t\t<xmin>{x1}</xmin>\n\t\t\t<ymin>{y1}</ymin>\n\t\t\t<xmax>{x2}</xmax>\n"
                           f"\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n\t</object>\n")
        (root / "Annotations" / f"{i:06d}.xml").write_text(
            f"<annotation>\n\t<folder>VOC</folder>\n\t<filename>{i:06d}.jpg</filename>\n\t<size>\n\t\t<width>{w}"
            f"</width>\n\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n\t</size>\n\t<segmented>0</segmented>\n"
            + "".join(objects) + "</annotation>\n")


def write_verify_set(work: Path, originals: Path, files: int) -> tuple[Path, Path]:
    """``files`` hard links to the real photos in ``originals`` (cycled) and a COCO file listing them."""
    import shutil

    folder = work / f"verify_{files}"
    ann = work / f"verify_{files}.json"
    if ann.is_file():
        return ann, folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sources = sorted(p for p in originals.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    images, anns = [], []
    for i in range(files):
        name = f"{i:06d}{sources[i % len(sources)].suffix}"
        try:
            os.link(sources[i % len(sources)], folder / name)
        except OSError:  # another file system
            shutil.copy(sources[i % len(sources)], folder / name)
        images.append({"id": i + 1, "file_name": name})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [1, 1, 10, 10]})
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}))
    return ann, folder


# ----------------------------------------------------------------------------------------------
# Measurements, each in its own process
# ----------------------------------------------------------------------------------------------
def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def child(kind: str, args: list[str]) -> dict:
    if kind == "pycocotools":
        import contextlib
        import io

        from pycocotools.coco import COCO

        base = _peak_mb()
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(args[0])
        return {"seconds": time.perf_counter() - start, "images": len(coco.imgs), "boxes": len(coco.anns),
                "base_mb": base}
    if kind == "coco":
        from detkit.data.coco import COCODataset

        base = _peak_mb()
        start = time.perf_counter()
        ds = COCODataset(args[0], args[1])
        seconds = time.perf_counter() - start
        t = time.perf_counter()
        n = min(len(ds), 20_000)
        boxes = sum(len(ds.load_annotation(i).boxes) for i in range(n))
        per_sample = (time.perf_counter() - t) / n
        return {"seconds": seconds, "images": len(ds), "boxes": int(ds.stats["boxes"]), "base_mb": base,
                "load_annotation_us": per_sample * 1e6, "sampled_boxes": boxes}
    if kind == "voc":
        from detkit.data.voc import VOCDataset

        base = _peak_mb()
        start = time.perf_counter()
        ds = VOCDataset(args[0], split=None)
        return {"seconds": time.perf_counter() - start, "images": len(ds), "boxes": int(ds.stats["boxes"]),
                "base_mb": base}
    if kind == "verify":
        import cv2

        from detkit.data.coco import COCODataset
        from detkit.data.verify import verify_dataset

        ann, img_dir, originals = args[0], Path(args[1]), sorted(Path(args[2]).iterdir())
        start = time.perf_counter()
        for p in originals:
            cv2.imread(str(p))
        imread = (time.perf_counter() - start) / len(originals)
        ds = COCODataset(ann, img_dir)
        cold = verify_dataset(ds, name="bench", cache=False, progress=False)
        warm = verify_dataset(ds, name="bench", cache=True, progress=False)
        return {"images": len(ds), "imread_s_per_image": imread, "cold_s": cold.seconds, "warm_s": warm.seconds,
                "warm_cached": warm.from_cache, "excluded": len(cold.excluded)}
    raise SystemExit(f"unknown child {kind}")


def run_child(kind: str, *args) -> dict:
    env = dict(os.environ)
    env.setdefault("DETKIT_CACHE_DIR", tempfile.mkdtemp(prefix="detkit-bench-cache-"))
    out = subprocess.run([sys.executable, __file__, "--child", kind, *map(str, args)], capture_output=True,
                         text=True, env=env, cwd=Path(__file__).resolve().parents[2])
    if out.returncode != 0:
        raise SystemExit(f"[data-scale] {kind} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str]) -> list[tuple[str, str]]:
    parser = argparse.ArgumentParser(prog="bench.py data-scale", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=118_287)
    parser.add_argument("--boxes", type=int, default=860_001)
    parser.add_argument("--points", type=int, default=24, help="polygon points per annotation")
    parser.add_argument("--voc-files", type=int, default=20_000)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="real images for the verification pass")
    parser.add_argument("--verify-files", type=int, default=20_000, help="image files the verification pass checks")
    parser.add_argument("--keep", type=Path, default=None, help="write the synthetic data here (and reuse it)")
    args = parser.parse_args(argv)

    work = args.keep or Path(tempfile.mkdtemp(prefix="detkit-data-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    ann = work / f"instances_{args.images}_{args.boxes}_{args.points}_v2.json"
    if not ann.is_file():
        start = time.perf_counter()
        write_coco(ann, args.images, args.boxes, args.points)
        print(f"wrote {ann.name}: {ann.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - start:.0f} s", flush=True)
    voc = work / f"voc_{args.voc_files}"
    if not (voc / "Annotations").is_dir() or len(os.listdir(voc / "Annotations")) != args.voc_files:
        start = time.perf_counter()
        write_voc(voc, args.voc_files)
        print(f"wrote {args.voc_files} VOC XML files in {time.perf_counter() - start:.0f} s", flush=True)
    (work / "images").mkdir(exist_ok=True)

    print(f"COCO-scale file: {args.images:,} images, {args.boxes:,} boxes, {ann.stat().st_size / 1e6:.0f} MB "
          f"({args.points}-point polygons); each step in a fresh process, peak RSS includes its imports", flush=True)
    ref = run_child("pycocotools", ann)
    ours = run_child("coco", ann, work / "images")
    voc_res = run_child("voc", voc)
    rows = []  # what the README's benchmark table shows (see tools/bench.py --record)
    grow_ref, grow_ours = ref["rss_mb"] - ref["base_mb"], ours["rss_mb"] - ours["base_mb"]
    met = ours["seconds"] <= 20 and ours["rss_mb"] <= 2048
    rows.append((f"build a COCO train2017-sized data set ({args.images:,} images, {args.boxes:,} boxes, "
                 f"{ann.stat().st_size / 1e6:.0f} MB JSON with {args.points}-point polygons): `COCODataset` vs "
                 "`pycocotools.COCO` on the same file",
                 f"{ours['seconds']:.1f} s, {ours['rss_mb'] / 1024:.2f} GB peak RSS (torch included) vs "
                 f"{ref['seconds']:.1f} s, {ref['rss_mb'] / 1024:.2f} GB: {ref['seconds'] / ours['seconds']:.2f}× "
                 f"faster, {grow_ref / max(grow_ours, 1):.1f}× less memory growth (target ≤ 20 s, ≤ 2 GB: "
                 f"{'met' if met else 'missed'})"))
    print(f"pycocotools.COCO(file)         {ref['seconds']:6.1f} s   peak RSS {ref['rss_mb']:6.0f} MB "
          f"(+{grow_ref:.0f} MB over its imports)")
    print(f"detkit COCODataset(file)       {ours['seconds']:6.1f} s   peak RSS {ours['rss_mb']:6.0f} MB "
          f"(+{grow_ours:.0f} MB over its imports, torch included)")
    print(f"    {ref['seconds'] / ours['seconds']:.2f}x faster than pycocotools, {grow_ref / max(grow_ours, 1):.1f}x less "
          f"memory growth; target <= 20 s and <= 2048 MB peak: "
          f"{'met' if met else 'MISSED'}; load_annotation "
          f"{ours['load_annotation_us']:.0f} us/sample; {ours['boxes']:,} boxes kept")
    print(f"detkit VOCDataset({args.voc_files:,} XML)    {voc_res['seconds']:6.1f} s   peak RSS {voc_res['rss_mb']:6.0f} MB "
          f"({voc_res['boxes']:,} boxes; {1e3 * voc_res['seconds'] / voc_res['images']:.2f} ms per file)")
    rows.append((f"build a Pascal VOC data set of {args.voc_files:,} XML files (`VOCDataset`)",
                 f"{voc_res['seconds']:.1f} s ({1e3 * voc_res['seconds'] / voc_res['images']:.2f} ms per file), "
                 f"{voc_res['rss_mb'] / 1024:.2f} GB peak RSS (torch included)"))
    if (args.root / "JPEGImages").is_dir():
        ann_v, img_v = write_verify_set(work, args.root / "JPEGImages", args.verify_files)
        v = run_child("verify", ann_v, img_v, args.root / "JPEGImages")
        rate_cold, rate_warm = v["images"] / v["cold_s"], v["images"] / v["warm_s"]
        rate_ref = 1 / v["imread_s_per_image"]
        print(f"verification pass over {v['images']:,} real image files ({args.root.name} photos, hard-linked), 2 threads: "
              f"cold {v['cold_s']:.1f} s ({rate_cold:.0f} img/s; one cv2.imread thread: {rate_ref:.0f} img/s), "
              f"warm {v['warm_s']:.1f} s ({rate_warm:.0f} img/s, {v['warm_cached']:,} from the cache)")
        print(f"    for {args.images:,} images: first run ~{args.images / rate_cold / 60:.1f} min, later runs "
              f"~{args.images / rate_warm:.0f} s")
        rows.append((f"verification pass over {v['images']:,} real image files ({args.root.name} photos, "
                     "hard-linked), 2 threads",
                     f"{rate_cold:.0f} images/s decoding (one `cv2.imread` thread: {rate_ref:.0f}/s), "
                     f"{rate_warm:,.0f}/s from the cache"))
    else:
        print(f"verification pass: no real images at {args.root}; pass --root")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"    ({os.cpu_count()} CPU cores, load average {load:.1f} at the end; a shared machine inflates times)")
    if args.keep is None:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        result = child(sys.argv[2], sys.argv[3:])
        result["rss_mb"] = _peak_mb()
        print(json.dumps(result))
    else:
        main(sys.argv[1:])
