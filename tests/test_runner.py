"""``detkit train`` / ``detkit eval`` end to end on a tiny in-process detector and data set:
the run directory, exact resume, config errors, evaluation in original pixels, the CLI."""

from __future__ import annotations

import copy
import json
import logging
import textwrap

import pytest
import torch
from click.testing import CliRunner
from test_trainer import TinyDataset, TinyDet

from detkit import registry
from detkit.checkpoint import load_checkpoint, save_checkpoint
from detkit.engine.hooks import Hook
from detkit.engine.runner import train
from detkit.errors import CheckpointError, ConfigError
from detkit.evaluation.run import evaluate


@pytest.fixture
def tiny():
    with registry.register("detectors", "tiny_test_det", TinyDet), \
            registry.register("datasets", "tiny_test_ds", TinyDataset):
        yield


def tiny_cfg(metric=("voc07",), **train_overrides):
    train_cfg = dict(
        epochs=2, batch_size=4, num_workers=0, seed=3,
        optimizer=dict(type="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4, no_decay_norm_bias=True),
        scheduler=dict(type="cosine", warmup_epochs=0.5, warmup_start_factor=0.1, min_lr_factor=0.1),
        grad_clip=5.0, log_interval=1, keep_last=2, eval_interval=1,
    )
    train_cfg.update(train_overrides)
    return {
        "model": {"type": "tiny_test_det"},
        "data": {"classes": ["a", "b"],
                 # 10 images, batch 4: 3 iterations per epoch, the last one with 2 images
                 "train": {"type": "tiny_test_ds", "num": 10, "augment": True},
                 "val": {"type": "tiny_test_ds", "num": 6, "id_offset": 500}},
        "train": train_cfg,
        "eval": {"metric": list(metric), "batch_size": 4, "num_workers": 0, "save_best": "voc07_ap50"},
    }


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_train_fills_the_run_directory(tiny, tmp_path):
    cfg = tiny_cfg(metric=("voc07", "coco"))
    work = tmp_path / "run"
    summary = train(cfg, work_dir=work, device="cpu")

    assert summary["epochs"] == 2 and summary["work_dir"] == work
    files = sorted(p.name for p in work.iterdir())
    assert {"config.json", "train.log", "metrics.jsonl", "last.pth", "epoch_1.pth", "epoch_2.pth",
            "best_voc07_ap50.pth", "plots"} <= set(files)
    assert sorted(p.name for p in (work / "plots").iterdir()) == ["loss.png", "lr.png", "map.png"]

    config = json.loads((work / "config.json").read_text())
    assert config["train"]["seed"] == 3 and config["train"]["nan_policy"] == "raise"  # defaults filled in
    assert config["eval"]["batch_size"] == 4 and config["model"] == cfg["model"]

    records = read_jsonl(work / "metrics.jsonl")
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert len([r for r in records if r["type"] == "train"]) == 6  # log_interval=1, 3 iterations x 2
    for rec in epochs:
        assert {"voc07_ap50", "coco_ap", "coco_ap50", "coco_ap75", "per_class", "loss", "loss_box",
                "loss_cls"} <= set(rec)
        assert set(rec["per_class"]) == {"a", "b"}

    last = load_checkpoint(work / "last.pth")
    assert last["epoch"] == 2 and last["iter"] == 6 and last["class_names"] == ["a", "b"]
    assert last["config"] == config
    best = load_checkpoint(summary["best_checkpoint"])
    assert best["best_metric"] == summary["best_metric"] == max(r["voc07_ap50"] for r in epochs)
    log = (work / "train.log").read_text()
    assert "training finished: 2 epoch(s)" in log and str(summary["best_checkpoint"]) in log
    assert "plots:" in log and "lr.png" in log


class CrashAfterEpoch(Hook):
    """Kills the run right after an epoch's checkpoint was written (as a power cut would)."""

    priority = 100

    def __init__(self, epoch):
        self.epoch = epoch

    def after_epoch(self, trainer):
        if trainer.epochs_done == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_is_bit_identical_to_an_uninterrupted_run(tiny, tmp_path, workers):
    cfg = tiny_cfg(num_workers=workers, epochs=2)
    straight = tmp_path / "straight"
    train(cfg, work_dir=straight, device="cpu")

    resumed = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, work_dir=resumed, device="cpu", extra_hooks=[CrashAfterEpoch(1)])
    assert load_checkpoint(resumed / "last.pth")["epoch"] == 1
    train(cfg, work_dir=resumed, device="cpu", resume="auto")

    a, b = load_checkpoint(straight / "last.pth"), load_checkpoint(resumed / "last.pth")
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"])
    assert a["best_metric"] == b["best_metric"] and a["best_epoch"] == b["best_epoch"]

    # metrics.jsonl reads like one run: same records, same losses and learning rates
    ra, rb = read_jsonl(straight / "metrics.jsonl"), read_jsonl(resumed / "metrics.jsonl")
    keys = ("type", "epoch", "iter", "lr", "loss", "loss_box", "loss_cls", "voc07_ap50")
    assert [tuple(r.get(k) for k in keys) for r in ra] == [tuple(r.get(k) for k in keys) for r in rb]


def test_changing_the_seed_changes_the_run(tiny, tmp_path):
    # guards the resume test against passing trivially (e.g. if nothing random reached the model)
    cfg = tiny_cfg(epochs=1, eval_interval=0)
    train(cfg, work_dir=tmp_path / "a", device="cpu")
    train(cfg, work_dir=tmp_path / "b", device="cpu", seed=4)
    a, b = load_checkpoint(tmp_path / "a/last.pth"), load_checkpoint(tmp_path / "b/last.pth")
    assert not torch.equal(a["model"]["head.weight"], b["model"]["head.weight"])
    assert b["config"]["train"]["seed"] == 4


def test_resume_problems(tiny, tmp_path, caplog):
    cfg = tiny_cfg(epochs=1)
    with pytest.raises(CheckpointError, match="nope.pth: checkpoint not found"):
        train(cfg, work_dir=tmp_path / "w", device="cpu", resume=str(tmp_path / "nope.pth"))
    torch.save(TinyDet(2).state_dict(), tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="holds model weights only"):
        train(cfg, work_dir=tmp_path / "w", device="cpu", resume=str(tmp_path / "weights.pth"))

    torch.save({"format": "detkit-checkpoint", "version": 1, "model": {}, "x": CrashAfterEpoch(1)},
               tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="--unsafe-load"):
        train(cfg, work_dir=tmp_path / "w", device="cpu", resume=str(tmp_path / "pickled.pth"))

    other = copy.deepcopy(cfg)
    train(other, work_dir=tmp_path / "first", device="cpu")
    ckpt = load_checkpoint(tmp_path / "first/last.pth")
    ckpt["class_names"] = ["x", "y"]
    save_checkpoint(tmp_path / "other_classes.pth", ckpt)
    with pytest.raises(ConfigError, match=r"classes \['x', 'y'\]"):
        train(cfg, work_dir=tmp_path / "w", device="cpu", resume=str(tmp_path / "other_classes.pth"))

    with caplog.at_level(logging.WARNING, logger="detkit"):
        summary = train(cfg, work_dir=tmp_path / "fresh", device="cpu", resume="auto")
    assert summary["epochs"] == 1
    assert any("no checkpoint" in r.message and "starting from scratch" in r.message for r in caplog.records)


def test_a_new_run_moves_an_earlier_run_aside_instead_of_overwriting_it(tiny, tmp_path, caplog):
    cfg = tiny_cfg(epochs=1, eval_interval=0)
    work = tmp_path / "w"
    train(cfg, work_dir=work, device="cpu")
    first = (work / "last.pth").read_bytes()
    first_log = (work / "train.log").read_text()
    with caplog.at_level(logging.WARNING, logger="detkit"):
        train(cfg, work_dir=work, device="cpu", seed=5)
    (previous,) = (work / "previous").iterdir()
    assert (previous / "last.pth").read_bytes() == first  # the earlier checkpoint is intact
    assert (previous / "train.log").read_text() == first_log  # and its log got nothing of the new run
    assert "seed 5" in (work / "train.log").read_text() and "seed 5" not in first_log
    assert load_checkpoint(work / "last.pth")["config"]["train"]["seed"] == 5
    assert any("moved it to" in r.message for r in caplog.records)


@pytest.mark.parametrize("change, message", [
    (("train", "epoch", 3), r"train\.epoch: unknown key\. Did you mean 'epochs'"),
    (("train", "nan_policy", "ignore"), r"train\.nan_policy: 'ignore' is not one of raise, skip"),
    (("train", "accumulate", 0), r"train\.accumulate: expected an integer >= 1"),
    (("train", "grad_clip", -1), r"train\.grad_clip: expected a number > 0 or None"),
    (("eval", "metirc", ["voc"]), r"eval\.metirc: unknown key\. Did you mean 'metric'"),
    (("eval", "save_best", "voc07_ap5"), r"eval\.save_best: 'voc07_ap5' .* Did you mean 'voc07_ap50'"),
    (("eval", "metric", ["voc2012"]), r"eval\.metric: unknown metric 'voc2012'"),
])
def test_config_errors_name_the_key(tiny, tmp_path, change, message):
    cfg = tiny_cfg()
    section, key, value = change
    cfg[section][key] = value
    with pytest.raises(ConfigError, match=message):
        train(cfg, work_dir=tmp_path / "w", device="cpu")
    assert not (tmp_path / "w").exists()  # rejected before anything was created


def test_cli_overrides_are_checked(tiny, tmp_path):
    with pytest.raises(ConfigError, match="--epochs"):
        train(tiny_cfg(), work_dir=tmp_path / "w", device="cpu", epochs=0)
    with pytest.raises(ConfigError, match="--device 'gpu0': not a device"):
        train(tiny_cfg(), work_dir=tmp_path / "w", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cuda: CUDA is not available"):
            train(tiny_cfg(), work_dir=tmp_path / "w", device="cuda")


def test_deterministic_mode_is_on_during_training_only(tiny, tmp_path):
    seen = []

    class Probe(Hook):
        def before_iter(self, trainer):
            seen.append(torch.are_deterministic_algorithms_enabled())

    assert not torch.are_deterministic_algorithms_enabled()
    train(tiny_cfg(epochs=1), work_dir=tmp_path / "w", device="cpu", deterministic=True, extra_hooks=[Probe()])
    assert seen and all(seen)
    assert not torch.are_deterministic_algorithms_enabled()


def test_evaluate_scores_detections_in_original_pixels(tiny, tmp_path):
    from detkit.evaluation import build_evaluators

    cfg = tiny_cfg(epochs=1)
    work = tmp_path / "run"
    summary = train(cfg, work_dir=work, device="cpu")
    metrics_out, results_out = tmp_path / "m.json", tmp_path / "r.json"
    metrics = evaluate(cfg, summary["last_checkpoint"], metric="all", metrics_out=metrics_out,
                       results_out=results_out, device="cpu", batch_size=4)

    # Reference, by hand: the model sees each image alone and without targets (input pixels);
    # boxes are scaled back with the data set's known resize; the ground truth is the *original*
    # annotation, not the resized one mapped back.
    data = TinyDataset(classes=("a", "b"), num=6, id_offset=500)
    model = TinyDet(2)
    model.load_state_dict(load_checkpoint(summary["last_checkpoint"])["model"])
    model.eval()
    sx, sy = 32 / 48, 32 / 40
    dets, gts, expected_results = [], [], []
    with torch.no_grad():
        for i in range(len(data)):
            image, _ = data[i]
            det = model(image[None])[0]
            boxes = det["boxes"] / torch.tensor([sx, sy, sx, sy])
            dets.append({"boxes": boxes, "scores": det["scores"], "labels": det["labels"]})
            _, orig_boxes, label = data.original(i)
            gts.append({"boxes": torch.from_numpy(orig_boxes), "labels": torch.tensor([label]), "image_id": 500 + i})
            for b, s, l in zip(boxes.tolist(), det["scores"].tolist(), det["labels"].tolist()):
                expected_results.append((500 + i, l + 1, [b[0], b[1], b[2] - b[0], b[3] - b[1]], s))
    ref = build_evaluators("all", ["a", "b"])
    ref.update(dets, gts)
    expected = ref.compute()
    for key in ("voc07_ap50", "voc_ap50", "coco_ap", "coco_ap50", "coco_ap75"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-6), key

    written = json.loads(metrics_out.read_text())
    assert written["voc07_ap50"] == pytest.approx(metrics["voc07_ap50"])
    assert set(written["per_class"]) == {"a", "b"}
    results = json.loads(results_out.read_text())
    assert len(results) == len(expected_results) == 12
    got = sorted((r["image_id"], r["category_id"], r["bbox"], r["score"]) for r in results)
    for (gi, gc, gb, gs), (ei, ec, eb, es) in zip(got, sorted(expected_results)):
        assert (gi, gc) == (ei, ec)
        assert gb == pytest.approx(eb, abs=1e-3) and gs == pytest.approx(es, abs=1e-6)

    # the same numbers as the evaluation during training (last epoch record)
    last = [r for r in read_jsonl(work / "metrics.jsonl") if r["type"] == "epoch"][-1]
    assert last["voc07_ap50"] == pytest.approx(metrics["voc07_ap50"], abs=1e-9)


class TinyCocoDataset(TinyDataset):
    """TinyDataset whose classes carry real COCO category ids, as a COCO json data set's do."""

    cat_ids = (18, 3)


def test_evaluate_writes_results_with_the_datasets_category_ids(tiny, tmp_path):
    cfg = tiny_cfg(epochs=1)
    cfg["data"]["val"]["type"] = "tiny_test_coco_ds"
    save_checkpoint(tmp_path / "c.pth", {"model": TinyDet(2).state_dict(), "class_names": ["a", "b"]})
    with registry.register("datasets", "tiny_test_coco_ds", TinyCocoDataset):
        evaluate(cfg, tmp_path / "c.pth", metric="all", results_out=tmp_path / "r.json", device="cpu")
    results = json.loads((tmp_path / "r.json").read_text())
    # TinyDet gives one detection per class and image: label 0 -> category 18, label 1 -> category 3
    assert sorted((r["image_id"], r["category_id"]) for r in results) == \
        sorted((500 + i, c) for i in range(6) for c in (18, 3))


def test_evaluate_refuses_mismatched_classes(tiny, tmp_path):
    cfg = tiny_cfg(epochs=1)
    model = TinyDet(3)
    save_checkpoint(tmp_path / "c.pth", {"model": model.state_dict(), "class_names": ["a", "b", "c"]})
    with pytest.raises(ConfigError, match=r"c.pth has 3 classes but the config's data.classes has 2: "
                                          r"\['a', 'b', 'c'\] vs \['a', 'b'\]"):
        evaluate(cfg, tmp_path / "c.pth", metric="voc07", device="cpu")
    # Without a class list in the config, the data set's classes are checked against the model's.
    del cfg["data"]["classes"]
    with pytest.raises(ConfigError, match=r"classes \['a', 'b', 'c'\] but data.val has \['a', 'b'\]"):
        evaluate(cfg, tmp_path / "c.pth", metric="voc07", device="cpu")


def test_cli_train_and_eval(tiny, tmp_path, monkeypatch):
    from detkit.cli import main

    config = tmp_path / "tiny_cfg.py"
    config.write_text(textwrap.dedent("""
        model = dict(type="tiny_test_det")
        data = dict(classes=["a", "b"], train=dict(type="tiny_test_ds", num=6),
                    val=dict(type="tiny_test_ds", num=4))
        train = dict(epochs=1, batch_size=3, num_workers=0, optimizer=dict(type="sgd", lr=0.01),
                     log_interval=1)
        eval = dict(metric=["voc07"], batch_size=2, num_workers=0)
    """))
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(config), "--device", "cpu", "--seed", "5"])
    assert result.exit_code == 0, result.output
    work = tmp_path / "work_dirs" / "tiny_cfg"  # default work dir: work_dirs/<config name>
    assert json.loads((work / "config.json").read_text())["train"]["seed"] == 5
    assert (work / "last.pth").is_file()

    result = runner.invoke(main, ["eval", str(config), str(work / "last.pth"), "--metric", "voc07",
                                  "--metrics-out", "m.json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "voc07_ap50" in result.output
    assert "voc07_ap50" in json.loads((tmp_path / "m.json").read_text())

    result = runner.invoke(main, ["train", str(config), "--device", "cpu", "--set", "train.epochs=0"])
    assert result.exit_code == 2 and "train.epochs: expected an integer >= 1" in result.output


def test_real_yolov1_on_shapes_resumes_exactly(tmp_path):
    """Integration: the real YOLOv1 detector, shapes data set, albumentations pipeline and loaders.
    A run killed after epoch 1 and resumed ends with the same weights as an uninterrupted one."""
    from pathlib import Path

    from detkit.config import load_config
    from detkit.data.shapes import make_shapes

    make_shapes(tmp_path / "shapes", num=12, size=64, val_fraction=0.34, workers=1)
    config = Path(__file__).resolve().parents[1] / "configs" / "yolov1_shapes.py"
    cfg = load_config(config, [
        f"data.train.root={tmp_path / 'shapes'}", "data.train.transforms.size=64",
        "data.val.transforms.size=64", "model.backbone={'type': 'lenet5'}",  # small and quick
        "train.epochs=2", "train.batch_size=4", "train.num_workers=0", "train.eval_interval=1",
        "train.log_interval=1", "eval.batch_size=4", "eval.num_workers=0", "eval.metric=['voc07']",
    ])
    straight = train(cfg, work_dir=tmp_path / "a", device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, work_dir=tmp_path / "b", device="cpu", extra_hooks=[CrashAfterEpoch(1)])
    resumed = train(cfg, work_dir=tmp_path / "b", device="cpu", resume=str(tmp_path / "b" / "last.pth"))
    a, b = load_checkpoint(straight["last_checkpoint"]), load_checkpoint(resumed["last_checkpoint"])
    assert a["class_names"] == ["circle", "square", "triangle", "star", "cross"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    records = [r for r in read_jsonl(tmp_path / "b" / "metrics.jsonl") if r["type"] == "epoch"]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"loss_xy", "loss_wh", "loss_obj", "loss_noobj", "loss_cls", "voc07_ap50"} <= set(records[-1])
    metrics = evaluate(cfg, straight["last_checkpoint"], metric="voc07", device="cpu")
    assert metrics["voc07_ap50"] == pytest.approx(records[-1]["voc07_ap50"], abs=1e-9)


def test_compile_option_wraps_the_model_and_checkpoints_stay_plain(tiny, tmp_path, monkeypatch):
    # Dynamo with the "eager" backend: the compile path without a C++ toolchain or minutes of inductor.
    calls = []
    real_compile = torch.compile

    def eager_compile(model, **kwargs):
        calls.append(type(model).__name__)
        return real_compile(model, backend="eager", **kwargs)

    monkeypatch.setattr(torch, "compile", eager_compile)
    cfg = tiny_cfg(epochs=1, compile=True, channels_last=True)
    summary = train(cfg, work_dir=tmp_path / "w", device="cpu")
    assert calls == ["TinyDet"]
    state = load_checkpoint(summary["last_checkpoint"])["model"]
    assert set(state) == set(TinyDet(2).state_dict())  # no "_orig_mod." prefixes
    # evaluation ran through the compiled model: it scored what the plain model loaded from the
    # saved checkpoint scores
    plain = evaluate(cfg, summary["last_checkpoint"], metric="voc07", device="cpu")
    assert summary["metrics"]["voc07_ap50"] == pytest.approx(plain["voc07_ap50"], abs=1e-9)
