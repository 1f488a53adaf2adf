"""The cases found on real photo sets, each built here and followed through check-data, train and infer.

* truncated JPEGs: restored (decoded as far as they go), counted and listed, kept;
* undecodable files, missing files and decompression bombs: excluded when the data set is built,
  counted and listed; training runs to the end without them, inference skips them with a message;
* the verification pass is cached by file size and modification time;
* COCO: dropped boxes logged, a training set without boxes warned about, ``file_name`` outside
  ``img_dir`` refused;
* paths: relative data roots resolve against the config file that wrote them, ``--set`` against the
  current directory, ``$DETKIT_DATA`` when set; the error says whether the root is missing or not a
  data set folder, and where it looked.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from test_check_data import voc_xml, write_voc
from test_data_io import write_png_bomb
from test_trainer import TinyDet

from detkit import registry
from detkit.cli import main
from detkit.config import load_config
from detkit.data.builder import build_dataset
from detkit.data.check import check_split
from detkit.errors import DataError


def photo(path: Path, w: int = 64, h: int = 48, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=90)
    return path


def bad_files(folder: Path) -> dict:
    """The bad files of the found cases, written into ``folder`` (a VOC JPEGImages/); stem -> what."""
    data = photo(folder / "cut.jpg", seed=1).read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])  # a JPEG that ends half-way
    (folder / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")  # undecodable
    write_png_bomb(folder / "bomb.png", 12000, 12000)  # 144 Mpx in a few hundred KB
    return {"cut": "restored", "garbage": "undecodable", "bomb": "too_large", "gone": "missing"}


def bad_voc(root: Path, good: int = 6) -> Path:
    """A VOC tree with ``good`` fine samples (one box each) and the bad files of the found cases."""
    samples = {f"ok{i}": (voc_xml(objects=[("cat" if i % 2 else "dog", (5 + i, 5, 40, 30 + i))]), "ok")
               for i in range(good)}
    for stem in ("cut", "garbage", "bomb", "gone"):
        samples[stem] = (voc_xml(objects=[("cat", (1, 1, 20, 20))]), "missing")
    write_voc(root, samples)
    for i in range(good):
        photo(root / "JPEGImages" / f"ok{i}.jpg", seed=10 + i)
    bad_files(root / "JPEGImages")
    return root


def voc_cfg(root: Path) -> dict:
    return {"data": {"classes": ["cat", "dog"],
                     "train": {"type": "voc", "root": str(root), "split": "train", "transforms": {"size": 32}}}}


# ----------------------------------------------------------------------------------------------
# Build time: verification, exclusion, cache
# ----------------------------------------------------------------------------------------------
def test_building_verifies_excludes_restores_and_caches(tmp_path, caplog):
    root = bad_voc(tmp_path / "voc")
    cfg = voc_cfg(root)
    with caplog.at_level(logging.WARNING, logger="detkit"):
        ds = build_dataset(cfg, "train")
    report = ds.verification
    assert len(report.checks) == 10 and len(ds) == 7  # 6 good + the restored cut.jpg
    assert sorted(ds.ids) == ["cut", "ok0", "ok1", "ok2", "ok3", "ok4", "ok5"]
    assert dict(report.excluded_by_kind()) == {"undecodable": 1, "too_large": 1, "missing": 1}
    assert [Path(c.path).name for c in report.restored] == ["cut.jpg"]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "7 usable, 3 excluded (1 missing image files, 1 undecodable image files, 1 images over the pixel limit)" in text
    assert "1 truncated JPEGs restored" in text
    for name in ("garbage.jpg", "bomb.png", "gone", "cut.jpg"):
        assert name in text
    assert "12000x12000 = 144,000,000 pixels" in text
    # every kept sample loads (the restored one too); the excluded ones are gone
    assert all(ds[i][0].shape == (3, 32, 32) for i in range(len(ds)))

    # A second build reads the cache: nothing is decoded again ...
    again = build_dataset(cfg, "train").verification
    assert again.from_cache == 9  # every file that exists (gone.jpg has nothing to cache)
    assert [c.excluded for c in again.checks] == [c.excluded for c in report.checks]
    # ... until a file changes (size / modification time): then that one is checked afresh.
    photo(root / "JPEGImages" / "garbage.jpg", seed=3)
    fixed = build_dataset(cfg, "train")
    assert fixed.verification.from_cache == 8 and len(fixed) == 8 and "garbage" in fixed.ids
    # The pixel limit is applied to cached sizes: raising it lets the bomb's header pass and decodes it
    # (a 1x1 limit then refuses everything, straight from the cache).
    tiny = build_dataset({**cfg, "data": {**cfg["data"], "max_image_pixels": 64 * 48 - 1}}, "train", verify=False)
    from detkit.data.verify import verify_dataset

    refused = verify_dataset(tiny, progress=False)
    assert refused.from_cache == 9 and dict(refused.excluded_by_kind()) == {"too_large": 9, "missing": 1}


def test_a_split_with_nothing_usable_is_an_error(tmp_path):
    root = tmp_path / "voc"
    write_voc(root, {"gone": (voc_xml(objects=[("cat", (1, 1, 5, 5))]), "missing"),
                     "text": (voc_xml(objects=[("cat", (1, 1, 5, 5))]), "text")})
    with pytest.raises(DataError, match=r"data\.train: none of its 2 samples is usable; first problem: .*gone"):
        build_dataset(voc_cfg(root), "train")


def test_check_data_prints_the_report_training_logs(tmp_path, caplog):
    root = bad_voc(tmp_path / "voc")
    config = tmp_path / "cfg.py"
    config.write_text(f"data = {voc_cfg(root)['data']!r}\n")
    result = CliRunner().invoke(main, ["check-data", str(config)])
    assert result.exit_code == 1, result.output
    with caplog.at_level(logging.INFO, logger="detkit"):
        ds = build_dataset(load_config(config), "train")
    # the same summary lines, from the cache this time (so minus the timing words)
    for line in ds.verification.summary().splitlines()[1:]:
        assert line.strip() in result.output
    assert "7 usable, 3 excluded" in result.output and "1 truncated JPEGs restored" in result.output
    assert "FATAL" in result.output and "images over the pixel limit" in result.output
    report = check_split(load_config(config), "train", progress=False)
    assert len(report.excluded["too_large"]) == 1 and "bomb.png" in report.excluded["too_large"][0]
    assert len(report.restored) == 1 and report.images_read == 7
    # --no-cache decodes everything again: same verdicts
    fresh = CliRunner().invoke(main, ["check-data", str(config), "--no-cache"])
    assert fresh.exit_code == 1 and "(0 from the cache)" in fresh.output


# ----------------------------------------------------------------------------------------------
# Training and inference on the bad files
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_det():
    with registry.register("detectors", "tiny_verify_det", TinyDet):
        yield


@pytest.mark.parametrize("workers", [0, 2])
def test_training_finishes_with_the_bad_files_excluded_and_counted(tiny_det, tmp_path, workers):
    from detkit.engine.runner import train

    root = bad_voc(tmp_path / "voc", good=6)
    cfg = voc_cfg(root)
    cfg["data"]["val"] = dict(cfg["data"]["train"])
    cfg.update(model={"type": "tiny_verify_det"},
               train={"epochs": 2, "batch_size": 4, "num_workers": workers, "log_interval": 1,
                      "optimizer": {"type": "sgd", "lr": 0.01}, "bad_sample": "raise"},
               eval={"metric": ["voc07"], "batch_size": 4, "num_workers": 0, "save_best": None})
    summary = train(cfg, work_dir=tmp_path / "run", device="cpu")
    assert summary["epochs"] == 2  # bad_sample="raise", yet nothing raised: the bad files were left out
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("7 usable, 3 excluded") == 2  # train and val
    assert "bomb.png" in log and "garbage.jpg" in log and "restored" in log
    assert "data: 7 training images, 7 validation images" in log


def test_inference_skips_bombs_and_undecodable_files_and_restores_truncated_ones(tmp_path):
    from test_infer import FixedBoxDetector

    from detkit.inference.run import infer

    folder = tmp_path / "images"
    folder.mkdir()
    photo(folder / "fine.jpg")
    bad_files(folder)
    with registry.register("detectors", "fixed_box_verify", FixedBoxDetector):
        cfg = {"model": {"type": "fixed_box_verify"},
               "data": {"classes": ["cat", "dog"], "val": {"type": "voc", "root": "unused", "transforms": {"size": 32}}}}
        ckpt = tmp_path / "model.pth"
        torch.save({"format": "detkit-checkpoint", "version": 1, "model": FixedBoxDetector(2).state_dict(),
                    "class_names": ["cat", "dog"]}, ckpt)
        result = infer(cfg, ckpt, str(folder), out_dir=tmp_path / "out", save_json=True, progress=False)
        assert result.images == 2  # fine.jpg and the restored cut.jpg
        skipped = dict(result.skipped)
        assert set(map(lambda p: Path(p).name, skipped)) == {"bomb.png", "garbage.jpg"}
        assert "144,000,000 pixels" in skipped[str(folder / "bomb.png")]
        assert (tmp_path / "out" / "cut.jpg").is_file()
        # The limit comes from the config too: data.max_image_pixels=1000 refuses the 64x48 photos.
        cfg["data"]["max_image_pixels"] = 1000
        small = infer(cfg, ckpt, str(folder), out_dir=tmp_path / "out2", progress=False)
        assert small.images == 0 and "over the limit of 1,000" in dict(small.skipped)[str(folder / "fine.jpg")]


# ----------------------------------------------------------------------------------------------
# COCO
# ----------------------------------------------------------------------------------------------
def coco_set(tmp_path: Path, annotations: list, images: list | None = None) -> dict:
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    photo(img_dir / "a.jpg")
    photo(img_dir / "b.jpg", seed=1)
    photo(tmp_path / "outside.jpg", seed=2)  # a real image the annotation file must not reach
    data = {"images": images or [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
                                 {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48}],
            "annotations": annotations, "categories": [{"id": 1, "name": "cat"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return {"data": {"train": {"type": "coco", "ann_file": str(tmp_path / "ann.json"), "img_dir": str(img_dir),
                               "transforms": {"size": 32}}}}


def test_coco_dropped_boxes_are_logged_and_a_training_set_without_boxes_warned(tmp_path, caplog):
    cfg = coco_set(tmp_path, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, -3, 10]},
                              {"id": 2, "image_id": 2, "category_id": 1, "bbox": [90, 5, 10, 10]}])
    with caplog.at_level(logging.WARNING, logger="detkit"):
        ds = build_dataset(cfg, "train")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "ann.json: 1 boxes entirely outside the image (dropped); 1 zero-area / inverted boxes (dropped)" in text
    assert "data.train: the training data has no boxes at all (2 images, all negatives)" in text
    assert len(ds) == 2 and ds.stats["dropped"] == 1 and ds.stats["outside"] == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detkit"):
        build_dataset({"data": {"val": cfg["data"]["train"]}}, "val")
    assert "no boxes at all" not in caplog.text  # only training data is expected to have boxes


@pytest.mark.parametrize("file_name", ["../outside.jpg", "../../etc/passwd", "/etc/passwd", "a/../../outside.jpg"])
def test_coco_file_name_leaving_img_dir_is_refused(tiny_det, tmp_path, file_name):
    from detkit.engine.runner import train

    cfg = coco_set(tmp_path, [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20]},
                              {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 5, 20, 20]},
                              {"id": 3, "image_id": 3, "category_id": 1, "bbox": [5, 5, 20, 20]}],
                   images=[{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
                           {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48},
                           {"id": 3, "file_name": file_name, "width": 64, "height": 48}])
    report = check_split(cfg, "train", progress=False)
    assert report.fatal and len(report.annotation_errors) == 1
    assert f"file_name {file_name!r}, which leaves img_dir" in report.annotation_errors[0]
    assert report.images_read == 2  # the outside file was never opened
    ds = build_dataset(cfg, "train")
    assert ds.img_ids == [1, 2]
    cfg.update(model={"type": "tiny_verify_det"},
               train={"epochs": 1, "batch_size": 2, "num_workers": 0, "optimizer": {"type": "sgd", "lr": 0.01},
                      "eval_interval": 0})
    assert train(cfg, work_dir=tmp_path / "run", device="cpu")["epochs"] == 1
    assert "leaves img_dir" in (tmp_path / "run" / "train.log").read_text()


# ----------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------
def test_relative_roots_resolve_against_the_file_that_wrote_them(tmp_path, monkeypatch):
    root = bad_voc(tmp_path / "project" / "data" / "voc", good=2)
    base = tmp_path / "project" / "configs" / "_base_"
    base.mkdir(parents=True)
    (base / "data.py").write_text(
        "data = dict(classes=['cat', 'dog'], train=dict(type='voc', root='../../data/voc', split='train'))\n")
    recipe = tmp_path / "project" / "configs" / "recipe.py"
    recipe.write_text("_base_ = ['_base_/data.py']\ndata = dict(val=dict(type='voc', root='../data/voc'))\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # e.g. `detkit eval` run from another folder
    cfg = load_config(recipe)
    assert cfg["data"]["train"]["root"] == str(base / "../../data/voc")  # the fragment's folder
    assert cfg["data"]["val"]["root"] == str(recipe.parent / "../data/voc")  # the recipe's folder
    assert len(build_dataset(cfg, "train")) == 3
    # --set paths are relative to where the command runs
    (elsewhere / "mine").symlink_to(root)
    assert load_config(recipe, ["data.train.root=mine"])["data"]["train"]["root"] == str(elsewhere / "mine")
    # $DETKIT_DATA: relative paths written in configs resolve against it instead
    monkeypatch.setenv("DETKIT_DATA", str(tmp_path / "project" / "data"))
    (base / "data.py").write_text("data = dict(train=dict(type='voc', root='voc', split='train'))\n")
    assert load_config(recipe)["data"]["train"]["root"] == str(tmp_path / "project" / "data" / "voc")
    # references are left alone and follow the value they point at
    (base / "data.py").write_text("data = dict(train=dict(type='voc', root='voc'), val=dict(type='voc', "
                                  "root='${data.train.root}'))\n")
    recipe.write_text("_base_ = ['_base_/data.py']\n")
    cfg = load_config(recipe)
    assert cfg["data"]["val"]["root"] == cfg["data"]["train"]["root"] == str(tmp_path / "project" / "data" / "voc")


def test_root_errors_say_which_problem_and_where(tmp_path):
    missing = tmp_path / "nowhere" / "voc"
    with pytest.raises(DataError, match=rf"VOC root not found: {missing} does not exist; the nearest folder "
                                        rf"that exists is {tmp_path} \(relative data paths"):
        build_dataset(voc_cfg(missing), "train")
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"stuff: not a Pascal VOC folder, it has no Annotations/ folder; it holds "
                                        r"notes\.txt"):
        build_dataset(voc_cfg(tmp_path / "stuff"), "train")
    yolo = tmp_path / "yolo"
    (yolo / "images" / "train").mkdir(parents=True)
    (yolo / "labels" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"not a Pascal VOC folder.*looks like a YOLO data set: use type='yolo'"):
        build_dataset(voc_cfg(yolo), "train")
    cfg = {"data": {"train": {"type": "coco", "ann_file": str(tmp_path / "ann.json"), "img_dir": str(tmp_path)}}}
    with pytest.raises(DataError, match=r"COCO annotation file not found: .*ann\.json does not exist"):
        build_dataset(cfg, "train")
    result = CliRunner().invoke(main, ["check-data", str(tmp_path / "cfg.py")])
    assert result.exit_code == 2  # a missing config is a one-line error too
