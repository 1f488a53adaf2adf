"""K-fold protocol (detkit/data/folds.py, detkit/engine/kfold.py, `detkit kfold`): folds partition the
pooled images, no image is in the training and validation data of one fold, VOC id lists and COCO
annotation subsets read back as the right images, the summary is numpy's mean / std of the folds,
finished folds are not redone, and another plan in the same directory is refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from detkit.config import load_config
from detkit.data.coco import COCODataset
from detkit.data.folds import assign_folds, build_pool
from detkit.data.shapes import make_shapes
from detkit.data.voc import VOCDataset
from detkit.engine.kfold import FOLD_RESULT_FILE, SUMMARY_FILE, kfold
from detkit.errors import ConfigError, DataError
from detkit.evaluation.names import FOLD_KEYS

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "yolov1_shapes.py"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("kfold") / "shapes"
    make_shapes(root, num=12, size=64, val_fraction=0.34, workers=1)
    return root


def tiny_overrides(root):
    return [f"data.train.root={root}", "data.train.transforms.size=64", "data.val.transforms.size=64",
            "model.backbone={'type': 'lenet5'}", "train.epochs=1", "train.batch_size=4", "train.num_workers=0",
            "train.eval_interval=0", "train.log_interval=1", "eval.batch_size=4", "eval.num_workers=0"]


def test_assign_folds_partitions_deterministically():
    parts = assign_folds(23, 5, seed=7)
    assert sorted(np.concatenate(parts).tolist()) == list(range(23))
    assert sorted(len(p) for p in parts) == [4, 4, 5, 5, 5]
    assert all(np.array_equal(a, b) for a, b in zip(parts, assign_folds(23, 5, seed=7)))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, assign_folds(23, 5, seed=8)))
    with pytest.raises(ConfigError, match="--folds"):
        assign_folds(10, 1, 0)
    with pytest.raises(DataError, match="cannot make 5 folds of 3 images"):
        assign_folds(3, 5, 0)


def test_voc_folds_are_id_lists_that_read_back_as_the_right_images(shapes, tmp_path):
    cfg = load_config(CONFIG, tiny_overrides(shapes))
    pool = build_pool(cfg)
    assert len(pool) == 12 and pool.duplicates == 0
    parts = assign_folds(len(pool), 3, seed=0)
    val_seen = []
    for k in range(3):
        entries = pool.write_fold(parts, k, tmp_path / f"fold_{k}")
        assert entries["train"]["transforms"] == cfg["data"]["train"]["transforms"]  # the recipe is kept
        train_ids = _ids(entries["train"])
        val_ids = _ids(entries["val"])
        assert not set(train_ids) & set(val_ids)
        assert sorted(train_ids + val_ids) == sorted(key.split("::")[1] for key in pool.keys)
        assert val_ids == [pool.keys[i].split("::")[1] for i in parts[k]]
        val_seen += val_ids
    assert sorted(val_seen) == sorted(key.split("::")[1] for key in pool.keys)  # folds partition the pool


def _ids(entry):
    from detkit.data.shapes import ShapesDataset

    return ShapesDataset(entry["root"], split=entry["split"]).ids


def test_voc_split_may_name_a_file(shapes, tmp_path):
    ids = ["000003", "000001"]
    (tmp_path / "mine.txt").write_text("\n".join(ids) + "\n")
    assert VOCDataset(shapes, split=str(tmp_path / "mine.txt"), classes=["circle"]).ids == ids
    # relative to the root; an unknown file is a clear error
    assert VOCDataset(shapes, split="ImageSets/Main/val.txt", classes=["circle"]).ids == \
        VOCDataset(shapes, split="val", classes=["circle"]).ids
    with pytest.raises(DataError, match="split file not found: .*nope.txt"):
        VOCDataset(shapes, split="nope.txt", classes=["circle"])


def _coco_file(path, img_dir, ids, offset):
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 200, "height": 40} for i in ids]
    anns = [{"id": n + 1, "image_id": i, "category_id": 3, "bbox": [offset + n, 2.0, 10.0, 8.0], "area": 80.0,
             "iscrowd": 0} for n, i in enumerate(ids)]
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 3, "name": "cat"}]}))
    img_dir.mkdir(parents=True, exist_ok=True)


def test_coco_folds_pool_two_files_with_colliding_ids(tmp_path):
    _coco_file(tmp_path / "train.json", tmp_path / "images" / "train", [1, 2, 3, 4], offset=0)
    _coco_file(tmp_path / "val.json", tmp_path / "images" / "val", [1, 2], offset=100)
    cfg = {"data": {"classes": None,
                    "train": {"type": "coco", "ann_file": str(tmp_path / "train.json"),
                              "img_dir": str(tmp_path / "images" / "train"), "transforms": {"size": 32}},
                    "val": {"type": "coco", "ann_file": str(tmp_path / "val.json"),
                            "img_dir": str(tmp_path / "images" / "val")}}}
    pool = build_pool(cfg)
    assert len(pool) == 6
    parts = assign_folds(6, 2, seed=1)
    entries = pool.write_fold(parts, 0, tmp_path / "fold")
    seen = {}
    for role in ("train", "val"):
        ds = COCODataset(entries[role]["ann_file"], entries[role]["img_dir"])
        assert Path(entries[role]["img_dir"]) == (tmp_path / "images").resolve()
        assert len(set(ds.img_ids)) == len(ds.img_ids)  # renumbered: no two images share an id
        for index in range(len(ds)):
            ann = ds.load_annotation(index)
            # each image keeps its own box: x tells which file (0.. train, 100.. val) and which image
            seen[str(ds.image_path(index).relative_to(tmp_path / "images"))] = float(ann.boxes[0, 0])
        assert entries[role].get("transforms") == cfg["data"][role].get("transforms")
    assert seen == {"train/1.jpg": 0.0, "train/2.jpg": 1.0, "train/3.jpg": 2.0, "train/4.jpg": 3.0,
                    "val/1.jpg": 100.0, "val/2.jpg": 101.0}


def test_kfold_runs_summarises_and_resumes_per_fold(shapes, tmp_path, monkeypatch, capsys):
    cfg = load_config(CONFIG, tiny_overrides(shapes))
    out = tmp_path / "kf"
    summary = kfold(cfg, folds=3, seed=0, out=out, device="cpu", folds_to_run=[0, 2])
    assert summary["folds_done"] == [0, 2] and not (out / "fold_1").exists()

    summary = kfold(cfg, folds=3, seed=0, out=out, device="cpu")  # adds fold 1 only
    results = [json.loads((out / f"fold_{k}" / FOLD_RESULT_FILE).read_text()) for k in range(3)]
    assert summary["folds_done"] == [0, 1, 2]
    assert json.loads((out / SUMMARY_FILE).read_text())["metrics"] == json.loads(json.dumps(summary["metrics"]))
    for key in FOLD_KEYS:
        values = [json.loads((out / f"fold_{k}" / "eval_metrics.json").read_text())[key] for k in range(3)]
        assert [r["metrics"][key] for r in results] == values
        assert summary["metrics"][key]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert summary["metrics"][key]["std"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert sum(r["num_val"] for r in results) == 12 and all(r["num_train"] + r["num_val"] == 12 for r in results)

    # no image in a fold's training and validation data; the validation sets partition the pool
    plan = json.loads((out / "kfold.json").read_text())
    val_ids = []
    for k in range(3):
        fold_cfg = json.loads((out / f"fold_{k}" / "config.json").read_text())
        train_ids, ids = _ids(fold_cfg["data"]["train"]), _ids(fold_cfg["data"]["val"])
        assert not set(train_ids) & set(ids)
        assert sorted(ids) == sorted(key.split("::")[1] for key, f in zip(plan["pool"], plan["fold_of"]) if f == k)
        val_ids += ids
    assert sorted(val_ids) == sorted(key.split("::")[1] for key in plan["pool"])
    assert (out / "fold_0" / "diagnostics.json").is_file()
    assert "mean ± std" in capsys.readouterr().out

    # finished folds are not redone; an evaluated-but-unrecorded fold resumes from last.pth
    import detkit.engine.runner as runner

    calls = []
    real_train = runner.train
    monkeypatch.setattr(runner, "train", lambda *a, **k: calls.append(k) or real_train(*a, **k))
    (out / "fold_1" / FOLD_RESULT_FILE).unlink()
    again = kfold(cfg, folds=3, seed=0, out=out, device="cpu")
    assert [c["resume"] for c in calls] == ["auto"]  # fold 1 only, from its checkpoint
    assert again["metrics"]["coco_ap"]["values"] == summary["metrics"]["coco_ap"]["values"]

    # test-time settings on the same weights: no training, the source's weights re-scored
    calls.clear()
    strict = {**cfg, "model": {**cfg["model"], "postprocessor": {**cfg["model"]["postprocessor"],
                                                                   "score_threshold": 0.5}}}
    rescored = kfold(strict, folds=3, seed=0, out=tmp_path / "rescored", device="cpu", weights_from=out)
    assert calls == [] and rescored["folds_done"] == [0, 1, 2]
    assert rescored["train_minutes"]["values"] == again["train_minutes"]["values"]  # the source's training
    assert rescored["metrics"]["coco_ar100"]["mean"] <= summary["metrics"]["coco_ar100"]["mean"]
    with pytest.raises(ConfigError, match="its folds differ"):
        kfold(strict, folds=3, seed=1, out=tmp_path / "other", device="cpu", weights_from=out)

    # how a run executes is not what it trains: other loader workers / log interval are the same plan
    same = {**cfg, "train": {**cfg["train"], "num_workers": 1, "log_interval": 5}}
    assert kfold(same, folds=3, seed=0, out=out, device="cpu")["folds_done"] == [0, 1, 2]
    with pytest.raises(ConfigError, match="another config .*train.epochs was 1, now 2"):
        kfold({**cfg, "train": {**cfg["train"], "epochs": 2}}, folds=3, seed=0, out=out, device="cpu")
    with pytest.raises(ConfigError, match="another folds"):
        kfold(cfg, folds=4, seed=0, out=out, device="cpu")
    with pytest.raises(ConfigError, match="--fold 3: folds are numbered 0..2"):
        kfold(cfg, folds=3, seed=0, out=out, device="cpu", folds_to_run=[3])


def test_cli_kfold(shapes, tmp_path):
    from detkit.cli import main

    args = ["kfold", str(CONFIG), "--folds", "2", "--out", str(tmp_path / "kf"), "--device", "cpu", "--fold", "1",
            "--set", *tiny_overrides(shapes)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "1 of 2 folds done" in result.output and (tmp_path / "kf" / "fold_1" / FOLD_RESULT_FILE).is_file()
    result = CliRunner().invoke(main, ["kfold", str(CONFIG), "--folds", "2", "--out", str(tmp_path / "kf"),
                                       "--set", *tiny_overrides(shapes), "data.train.type='coco'"])
    assert result.exit_code == 2 and "error:" in result.output


def test_yolo_folds_are_image_lists_with_a_data_yaml(tmp_path):
    yolo = pytest.importorskip("detkit.data.yolo")  # the ultralytics-layout data set type
    import cv2

    root = tmp_path / "animals"
    for split, n in (("train", 5), ("val", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / "images" / split / f"{split}{i}.jpg"), np.zeros((40, 60, 3), np.uint8))
            # class 1 (dog) for the val images, a box whose x tells which image it is
            (root / "labels" / split / f"{split}{i}.txt").write_text(
                f"{int(split == 'val')} {0.1 + 0.1 * i:.2f} 0.5 0.1 0.2\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [cat, dog]\n")
    cfg = {"data": {"classes": None, "train": {"type": "yolo", "root": str(root), "split": "train"},
                    "val": {"type": "yolo", "root": str(root), "split": "val"}}}
    pool = build_pool(cfg)
    assert len(pool) == 7
    parts = assign_folds(7, 3, seed=0)
    seen = {}
    for k in range(3):
        entries = pool.write_fold(parts, k, tmp_path / f"fold_{k}")
        train = yolo.YOLODataset(entries["train"]["root"], split=entries["train"]["split"])
        val = yolo.YOLODataset(entries["val"]["root"], split=entries["val"]["split"])
        assert train.classes == val.classes == ("cat", "dog")
        names = lambda ds: {Path(p).name for p in ds.image_paths}  # noqa: E731
        assert not names(train) & names(val) and len(names(train) | names(val)) == 7
        for index in range(len(val)):  # labels still come from the images' own label files
            ann = val.load_annotation(index)
            seen[Path(val.image_paths[index]).name] = (int(ann.labels[0]), round(float(ann.boxes[0, 0] + 3) / 60, 2))
    assert seen == {**{f"train{i}.jpg": (0, round(0.1 + 0.1 * i, 2)) for i in range(5)},
                    **{f"val{i}.jpg": (1, round(0.1 + 0.1 * i, 2)) for i in range(2)}}


class _Interrupt(Exception):
    pass


def test_a_fold_killed_before_its_first_checkpoint_starts_again_with_its_data(shapes, tmp_path):
    """A fold stopped before it saved anything left config.json / train.log next to its data lists:
    the next run moves that partial run aside (never deletes it) and trains the fold from scratch on
    its data lists, which must not be moved aside with it."""
    from detkit.engine.hooks import Hook

    class StopAtFirstIteration(Hook):
        def before_iter(self, trainer):
            raise _Interrupt

    cfg = load_config(CONFIG, tiny_overrides(shapes))
    out = tmp_path / "kf"
    with pytest.raises(_Interrupt):
        kfold(cfg, folds=2, seed=0, out=out, device="cpu", folds_to_run=[0], extra_hooks=[StopAtFirstIteration()])
    fold = out / "fold_0"
    assert (fold / "train.log").is_file() and not (fold / "last.pth").exists()

    summary = kfold(cfg, folds=2, seed=0, out=out, device="cpu", folds_to_run=[0])
    assert summary["folds_done"] == [0] and (fold / "last.pth").is_file()
    fold_cfg = json.loads((fold / "config.json").read_text())
    assert Path(fold_cfg["data"]["train"]["split"]).is_file() and Path(fold_cfg["data"]["val"]["split"]).is_file()
    (archived,) = (fold / "previous").iterdir()
    assert (archived / "train.log").is_file() and not (archived / "last.pth").exists()


def test_a_fold_whose_last_checkpoint_is_gone_resumes_from_its_newest_epoch(shapes, tmp_path, monkeypatch):
    """faults16's resume fallback: a fold with epoch_N.pth but no (or a damaged) last.pth continues from
    epoch_N.pth instead of being moved aside and trained again."""
    import detkit.engine.runner as runner

    cfg = load_config(CONFIG, tiny_overrides(shapes) + ["train.epochs=2"])
    out = tmp_path / "kf"
    kfold(cfg, folds=2, seed=0, out=out, device="cpu", folds_to_run=[0])
    fold = out / "fold_0"
    (fold / FOLD_RESULT_FILE).unlink()
    (fold / "last.pth").unlink()
    calls = []
    real_train = runner.train
    monkeypatch.setattr(runner, "train", lambda *a, **k: calls.append(k) or real_train(*a, **k))
    again = kfold(cfg, folds=2, seed=0, out=out, device="cpu", folds_to_run=[0])
    assert [c["resume"] for c in calls] == ["auto"] and again["folds_done"] == [0]
    assert not (fold / "previous").exists()
    result = json.loads((fold / FOLD_RESULT_FILE).read_text())
    assert result["resumed"] is True

    # a resumed fold's time is its epochs' times, from every part of the run, each epoch once
    records = [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines()]
    epochs = {r["epoch"]: r["epoch_time_s"] for r in records if r["type"] == "epoch"}
    assert sorted(epochs) == [1, 2] and result["train_seconds"] == pytest.approx(sum(epochs.values()))
    # a result written by an earlier detkit (wall time of the last part) is corrected in the summary
    (fold / FOLD_RESULT_FILE).write_text(json.dumps({**result, "train_seconds": 0.5,
                                                     "train_seconds_from_epochs": None}))
    summary = kfold(cfg, folds=2, seed=0, out=out, device="cpu", folds_to_run=[0])
    assert summary["train_minutes"]["values"] == [pytest.approx(sum(epochs.values()) / 60)]


def test_summary_commit_only_from_a_checkout_of_its_own(tmp_path):
    """The summary records the commit of the code that ran; a copy of the code inside another
    repository (a snapshot in a work dir, a venv in a project) must not report that repository's."""
    import shutil
    import subprocess

    from detkit.engine.kfold import _git_revision

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    (repo / "snapshot").mkdir(parents=True)
    (repo / "a.txt").write_text("a\n")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    for args in (["init", "-q"], ["add", "a.txt"], ["commit", "-q", "-m", "x"]):
        subprocess.run(["git", *args], cwd=repo, check=True, env=env)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert _git_revision(repo) == head
    (repo / "a.txt").write_text("b\n")
    assert _git_revision(repo) == head + "+dirty"
    assert _git_revision(repo / "snapshot") is None
    assert _git_revision(tmp_path / "repo_not") is None
