"""K-fold splits of a data set: pool its train and val images, deal them into K folds, write each fold.

Used by ``detkit kfold`` (:mod:`detkit.engine.kfold`). The steps:

1. :func:`build_pool` reads the data sets of ``data.train`` and ``data.val`` and lists every image once
   (an image listed in both splits counts once), each with a key that names it in files and errors:
   ``<root>::<id>`` for VOC layouts, ``<annotation file>::<image id>`` for COCO files, the image's
   path for YOLO layouts.
2. :func:`assign_folds` shuffles the pool with ``numpy.random.default_rng(seed)`` and cuts it into K
   contiguous parts whose sizes differ by at most one (scikit-learn's ``KFold(shuffle=True)`` rule):
   the same pool and seed always give the same folds, on every machine.
3. :meth:`Pool.write_fold` writes fold ``k``'s data (fold ``k`` is the validation set, the others the
   training set) and returns the ``data.train`` / ``data.val`` config entries that read it. Every
   other key of the original entries (transforms, classes, options) is kept, so a fold trains exactly
   like the recipe would:

   * VOC (and types derived from it, such as ``shapes``): one id list per root,
     ``<dir>/<role>.<n>.txt``, given as the data set's ``split`` (a split ending in ``.txt`` is a
     file of ids; see :mod:`detkit.data.voc`);
   * YOLO (ultralytics layout): an image list per role, ``<dir>/<role>.txt`` (absolute paths; the
     label files stay next to the images), and ``<dir>/data.yaml`` naming both lists and the classes;
   * COCO: an annotation file per role, ``<dir>/<role>.json``, holding that role's images and their
     annotations. Images pooled from two files (train and val JSONs) are renumbered when their ids
     collide, and when the two files use different image folders the common parent folder becomes
     ``img_dir`` and each ``file_name`` gets its folder's relative path in front.

Other data set types are refused with a clear error: a fold needs a way to name a subset of images.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detkit.errors import ConfigError, DataError

__all__ = ["Pool", "build_pool", "assign_folds", "pool_from_datasets"]

ROLES = ("train", "val")


def assign_folds(num_items: int, folds: int, seed: int) -> list[np.ndarray]:
    """Indices ``0..num_items-1`` dealt into ``folds`` parts (sorted within each part)."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"--folds: expected an integer >= 2, got {folds!r}")
    if num_items < folds:
        raise DataError(f"cannot make {folds} folds of {num_items} images: every fold needs at least one")
    order = np.random.default_rng(seed).permutation(num_items)
    return [np.sort(part) for part in np.array_split(order, folds)]


@dataclass
class _Item:
    key: str
    source: int  # index into Pool.sources
    ident: object  # VOC: the id (file stem); COCO: the image id in its source file


class Pool:
    """Every image of the pooled splits once; ``keys[i]`` names image ``i``."""

    def __init__(self, kind: str, sources: list, items: list[_Item], role_cfgs: Mapping[str, dict],
                 duplicates: int = 0):
        self.kind = kind
        self.sources = sources  # VOC: root folders; COCO: _COCOSource; YOLO: [class names]
        self.items = items
        self.role_cfgs = {role: copy.deepcopy(dict(cfg)) for role, cfg in role_cfgs.items()}
        self.duplicates = duplicates

    def __len__(self) -> int:
        return len(self.items)

    @property
    def keys(self) -> list[str]:
        return [item.key for item in self.items]

    def write_fold(self, folds: Sequence[np.ndarray], k: int, out_dir: str | os.PathLike) -> dict[str, dict]:
        """Write fold ``k`` under ``out_dir``; returns ``{"train": cfg, "val": cfg}`` data entries."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        val = np.asarray(folds[k])
        train = np.sort(np.concatenate([np.asarray(f) for i, f in enumerate(folds) if i != k]))
        entries = {}
        for role, indices in (("train", train), ("val", val)):
            items = [self.items[i] for i in indices.tolist()]
            writer = {"voc": self._write_voc, "coco": self._write_coco, "yolo": self._write_yolo}[self.kind]
            entries[role] = {**self.role_cfgs[role], **writer(items, out_dir, role)}
        return entries

    # -- VOC: id lists ---------------------------------------------------------------------------
    def _write_voc(self, items: list[_Item], out_dir: Path, role: str) -> dict:
        roots, splits = [], []
        for source in sorted({item.source for item in items}):
            ids = [str(item.ident) for item in items if item.source == source]
            path = out_dir / f"{role}.{len(roots)}.txt"
            path.write_text("".join(i + "\n" for i in ids), encoding="utf-8")
            roots.append(str(self.sources[source]))
            splits.append(str(path.resolve()))
        if len(roots) == 1:
            return {"root": roots[0], "split": splits[0]}
        return {"root": roots, "split": splits}

    # -- YOLO: image lists and a data.yaml -------------------------------------------------------
    def _write_yolo(self, items: list[_Item], out_dir: Path, role: str) -> dict:
        (out_dir / f"{role}.txt").write_text("".join(f"{item.ident}\n" for item in items), encoding="utf-8")
        # JSON is YAML: the fold's data.yaml names both lists (label files sit next to the images)
        spec = {"path": str(out_dir.resolve()), "train": "train.txt", "val": "val.txt", "names": self.sources[0]}
        (out_dir / "data.yaml").write_text(json.dumps(spec, indent=1), encoding="utf-8")
        return {"root": str((out_dir / "data.yaml").resolve()), "split": role}

    # -- COCO: annotation subsets ----------------------------------------------------------------
    def _write_coco(self, items: list[_Item], out_dir: Path, role: str) -> dict:
        used = sorted({item.source for item in items})
        img_dirs = [self.sources[s].img_dir for s in used]
        common = img_dirs[0] if len(set(img_dirs)) == 1 else Path(os.path.commonpath(img_dirs))
        ids = [item.ident for item in items]
        # renumber only when two source files would give two images the same id
        renumber = len(used) > 1 and len(set(ids)) != len(ids)
        images, annotations = [], []
        for n, item in enumerate(items):
            source = self.sources[item.source]
            image = dict(source.images[item.ident])
            prefix = source.img_dir.relative_to(common)
            if str(prefix) != ".":
                image["file_name"] = (prefix / image["file_name"]).as_posix()
            image["id"] = n + 1 if renumber else image["id"]
            for ann in source.annotations.get(item.ident, []):
                ann = dict(ann, image_id=image["id"])
                if len(used) > 1:  # annotation ids of two files may collide too
                    ann["id"] = len(annotations) + 1
                annotations.append(ann)
            images.append(image)
        first = self.sources[used[0]].data
        out = {"info": first.get("info", {}), "licenses": first.get("licenses", []), "images": images,
               "annotations": annotations, "categories": first["categories"]}
        path = out_dir / f"{role}.json"
        path.write_text(json.dumps(out), encoding="utf-8")
        return {"ann_file": str(path.resolve()), "img_dir": str(common)}


@dataclass
class _COCOSource:
    """One COCO annotation file of the pool, indexed by image id."""

    ann_file: Path
    img_dir: Path
    data: dict
    images: dict  # image id -> image record
    annotations: dict  # image id -> its annotation records

    @classmethod
    def of(cls, dataset) -> "_COCOSource":
        data = dataset.coco.dataset
        by_image: dict = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann)
        return cls(Path(dataset.ann_file).resolve(), Path(dataset.img_dir).resolve(), data,
                   {img["id"]: img for img in data["images"]}, by_image)


def _yolo_like(dataset) -> bool:
    try:
        from detkit.data.yolo import YOLODataset
    except ImportError:  # a detkit without the yolo data set type
        return False
    return isinstance(dataset, YOLODataset)


def _yolo_names(dataset) -> list[str]:
    """The class names of the data set's files (its data.yaml's, else the classes it was given)."""
    if getattr(dataset, "yaml_path", None) is not None:
        from detkit.data.yolo import read_data_yaml

        return list(read_data_yaml(dataset.yaml_path)["names"])
    return list(dataset.classes)


def _voc_like(dataset) -> bool:
    from detkit.data.voc import VOCDataset

    return isinstance(dataset, VOCDataset)


def _coco_like(dataset) -> bool:
    from detkit.data.coco import COCODataset

    return isinstance(dataset, COCODataset)


def pool_from_datasets(datasets: Mapping[str, object], role_cfgs: Mapping[str, dict]) -> Pool:
    """The pool of already built data sets (``{"train": ds, "val": ds}``); see the module docstring."""
    kinds = {role: "voc" if _voc_like(ds) else "coco" if _coco_like(ds) else "yolo" if _yolo_like(ds) else None
             for role, ds in datasets.items()}
    for role, kind in kinds.items():
        if kind is None:
            raise ConfigError(f"data.{role}: k-fold splits need a 'voc', 'coco' or 'yolo' data set (or a type "
                              f"derived from them), got {type(datasets[role]).__name__}")
    if len(set(kinds.values())) != 1:
        raise ConfigError(f"k-fold pools data.train and data.val, which must be of one kind; got {kinds}")
    kind = next(iter(kinds.values()))
    sources: list = []  # VOC: root folders; COCO: _COCOSource
    source_index: dict = {}
    items: list[_Item] = []
    seen: set[str] = set()
    duplicates = 0
    for ds in datasets.values():
        if kind == "voc":
            entries = [(Path(root).resolve(), stem) for root, stem in zip(ds.roots, ds.ids)]
        elif kind == "yolo":
            names = _yolo_names(ds)
            if sources and sources[0] != names:
                raise DataError(f"data.train and data.val name their classes differently ({sources[0]} vs "
                                f"{names}); their label files cannot be pooled into folds")
            sources[:1] = [names]
            entries = [(None, str(Path(p).resolve())) for p in ds.image_paths]
        else:
            source_key = (Path(ds.ann_file).resolve(), Path(ds.img_dir).resolve())
            if source_key not in source_index:
                source_index[source_key] = len(sources)
                sources.append(_COCOSource.of(ds))
            entries = [(source_key, img_id) for img_id in ds.img_ids]
        for source_key, name in entries:
            if kind == "yolo":  # one source: the class names; an image is named by its path
                if name in seen:
                    duplicates += 1
                    continue
                seen.add(name)
                items.append(_Item(name, 0, name))
                continue
            if source_key not in source_index:
                source_index[source_key] = len(sources)
                sources.append(source_key)
            src = source_index[source_key]
            key = f"{sources[src] if kind == 'voc' else sources[src].ann_file}::{name}"
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            items.append(_Item(key, src, name))
    if kind == "coco":
        _check_same_categories(sources)
    return Pool(kind, sources, items, role_cfgs, duplicates)


def _check_same_categories(sources: list) -> None:
    def cats(source):
        return sorted((c["id"], c["name"]) for c in source.data["categories"])

    for source in sources[1:]:
        if cats(source) != cats(sources[0]):
            raise DataError(f"{source.ann_file}: its categories differ from those of {sources[0].ann_file}; "
                            "the two files cannot be pooled into folds (a category id must mean one class)")


def build_pool(cfg: Mapping) -> Pool:
    """Build ``data.train`` and ``data.val`` of ``cfg`` (without their transforms) and pool them."""
    from detkit.data.builder import build_dataset

    data = cfg.get("data") if isinstance(cfg, Mapping) else None
    if not isinstance(data, Mapping):
        raise ConfigError("config has no 'data' section")
    role_cfgs = {}
    for role in ROLES:
        if not isinstance(data.get(role), Mapping):
            raise ConfigError(f"data.{role}: k-fold pools data.train and data.val; the config has no data.{role}")
        role_cfgs[role] = dict(data[role])
    # Transforms are not needed to list the images (and a crop pipeline need not be built twice).
    bare = {**cfg, "data": {**data, **{r: {k: v for k, v in c.items() if k != "transforms"}
                                         for r, c in role_cfgs.items()}}}
    # The pool lists what the annotations name; each fold's own data sets are verified when the fold
    # trains and evaluates (unusable images excluded and reported there). Verifying here too would
    # make the fold plan, which a resumed experiment must match, depend on the verification.
    datasets = {role: build_dataset(bare, role, verify=False) for role in ROLES}
    return pool_from_datasets(datasets, role_cfgs)
