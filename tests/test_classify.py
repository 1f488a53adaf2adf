"""``detkit classify``: the classifier, its metrics, the shared trainer (exact resume), the CLI, and
the hand-off of its backbone to a detector as ``backbone.pretrained``.

References: scikit-learn's top_k_accuracy_score / confusion_matrix / recall_score /
precision_score / balanced_accuracy_score for the metrics, the classifier's own weights for the
hand-off, an uninterrupted run for resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import (balanced_accuracy_score, confusion_matrix, precision_score, recall_score,
                             top_k_accuracy_score)

from detkit import registry
from detkit.checkpoint import load_checkpoint
from detkit.cli import main
from detkit.config import load_config
from detkit.data.shapes import make_shapes
from detkit.engine.hooks import Hook
from detkit.engine.runner import train
from detkit.errors import ConfigError, DataError
from detkit.evaluation.classification import ClassificationEvaluator
from detkit.evaluation.run import evaluate
from detkit.models.builder import build_detector, build_model
from detkit.schema import resolve_config
from detkit.tasks import CLASSIFICATION, task_of_config

from test_runner import CrashAfterEpoch, read_jsonl

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------


def random_batch(rng, n, c):
    scores = rng.random((n, c))  # continuous: no ties, so every tie rule agrees
    labels = rng.integers(0, c, n)
    return scores, labels


def feed(evaluator, scores, labels, ids, batch=7):
    for start in range(0, len(labels), batch):
        sl = slice(start, start + batch)
        evaluator.update([{"scores": torch.tensor(s)} for s in scores[sl]],
                         [{"label": torch.tensor(int(y)), "image_id": int(i)} for y, i in zip(labels[sl], ids[sl])])


def test_accuracy_and_confusion_matrix_match_scikit_learn():
    rng = np.random.default_rng(0)
    c, n = 7, 200
    scores, labels = random_batch(rng, n, c)
    labels[labels == 6] = 5  # a class without images: its accuracy is NaN and left out of the mean
    ev = ClassificationEvaluator([f"c{i}" for i in range(c)])
    feed(ev, scores, labels, np.arange(n))
    m = ev.compute()
    every = np.arange(c)
    assert m["top1"] == pytest.approx(top_k_accuracy_score(labels, scores, k=1, labels=every))
    assert m["top5"] == pytest.approx(top_k_accuracy_score(labels, scores, k=5, labels=every))
    predicted = scores.argmax(1)
    assert m["confusion_matrix"] == confusion_matrix(labels, predicted, labels=every).tolist()
    present = [i for i in every if (labels == i).any()]
    recall = recall_score(labels, predicted, labels=present, average=None)
    assert [m["per_class"][f"c{i}"] for i in present] == pytest.approx(recall)
    assert np.isnan(m["per_class"]["c6"])
    precision = precision_score(labels, predicted, labels=every, average=None, zero_division=np.nan)
    assert [m["per_class_precision"][f"c{i}"] for i in every] == pytest.approx(precision, nan_ok=True)
    assert m["mean_class_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert m["num_images"] == n and m["per_class_stats"]["c5"]["num_gt"] == int((labels == 5).sum())


def test_top5_of_fewer_classes_is_one_and_ties_rank_the_lower_class_first():
    ev = ClassificationEvaluator(["a", "b", "c"])
    ev.update([{"scores": [0.5, 0.5, 0.0]}, {"scores": [0.2, 0.2, 0.2]}, {"scores": [0.1, 0.3, 0.3]}],
              [{"label": 1, "image_id": 0}, {"label": 0, "image_id": 1}, {"label": 2, "image_id": 2}])
    m = ev.compute()
    assert m["top1"] == pytest.approx(1 / 3) and m["top5"] == 1.0  # hand count: only image 1 is a top-1 hit
    assert m["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [0, 1, 0]]


def test_distributed_states_merge_to_the_single_process_result_and_repeats_count_once():
    rng = np.random.default_rng(1)
    scores, labels = random_batch(rng, 50, 4)
    whole = ClassificationEvaluator(list("abcd"))
    feed(whole, scores, labels, np.arange(50))
    ranks = [ClassificationEvaluator(list("abcd")) for _ in range(2)]
    feed(ranks[0], scores[:25], labels[:25], np.arange(25))
    feed(ranks[1], scores[24:], labels[24:], np.arange(24, 50))  # image 24 twice (DistributedSampler padding)
    ranks[0].load_states([r.state() for r in ranks])
    assert ranks[0].compute() == whole.compute()
    assert ranks[0].num_duplicates == 1
    with pytest.raises(DataError, match="label 4 is not in 0..3"):
        whole.update([{"scores": [0, 0, 0, 1]}], [{"label": 4, "image_id": 99}])


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


def classifier(backbone, classes=("a", "b", "c"), **model):
    return build_model({"type": "image_classifier", "backbone": backbone, **model}, list(classes),
                       group="classifiers")


def test_a_classifier_learns_a_batch_and_predicts_probabilities():
    torch.manual_seed(0)
    model = classifier({"type": "lenet5"}, head={"type": "cls_head", "hidden_dims": [32]})
    images = torch.rand(12, 3, 32, 32) * 0.3
    for i in range(12):  # class k: a bright patch in its own place
        k = i % 3
        images[i, k, 8 * k:8 * k + 12, 8 * k:8 * k + 12] += 0.7
    targets = [{"label": torch.tensor(i % 3), "image_id": i} for i in range(12)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        out = model(images, targets)
        assert set(out) == {"loss_cls", "stat_accuracy"}
        optimizer.zero_grad()
        out["loss_cls"].backward()
        optimizer.step()
        losses.append(float(out["loss_cls"].detach()))
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        predictions = model(images)
        logits = model.logits(images)
    scores = torch.stack([p["scores"] for p in predictions])
    torch.testing.assert_close(scores, logits.softmax(1))
    assert [int(p["labels"]) for p in predictions] == logits.argmax(1).tolist()
    assert (logits.argmax(1) == torch.arange(12) % 3).float().mean() > 0.9


def test_classifier_input_and_target_errors():
    model = classifier({"type": "lenet5"})
    with pytest.raises(ValueError, match="needs targets"):
        model(torch.rand(2, 3, 16, 16))
    with pytest.raises(DataError, match=r"targets\[1\]\['label'\] must lie in 0..2, found 3 \(image x.png\)"):
        model(torch.rand(2, 3, 16, 16), [{"label": 0}, {"label": 3, "meta": {"path": "x.png"}}])
    with pytest.raises(ValueError, match="scaled to 0..1"):
        model(torch.rand(2, 3, 16, 16) * 255, [{"label": 0}, {"label": 1}])
    with pytest.raises(ConfigError, match="model.head: it expects 4 classes but the data has 3"):
        classifier({"type": "lenet5"}, head={"type": "cls_head", "num_classes": 4})


def backbone_names():
    return sorted(registry.available("backbones"))


@pytest.mark.parametrize("name", backbone_names())
def test_every_registered_backbone_builds_as_a_classifier(name):
    torch.manual_seed(0)
    model = classifier({"type": name}, classes=[f"k{i}" for i in range(7)]).eval()
    size = max(model.min_input_size, 32)
    with torch.no_grad():
        logits = model.logits(torch.rand(2, 3, size, size))
        [first, _] = model(torch.rand(2, 3, size, size))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    assert first["scores"].shape == (7,) and float(first["scores"].sum()) == pytest.approx(1.0)
    assert model.head.fc.in_features == model.backbone.out_channels


def test_the_courses_fully_connected_classifiers():
    alexnet = classifier({"type": "alexnet"}, head={"type": "cls_head", "pool_size": 6, "hidden_dims": [64, 64],
                                                   "dropout": 0.5})
    assert [type(m).__name__ for m in alexnet.head.hidden] == ["Linear", "ReLU", "Dropout"] * 2
    assert alexnet.head.hidden[0].in_features == 256 * 6 * 6
    # the course's BN-LeNet (configs/classify_fashion_mnist_lenet.py): Flatten, 120, BN, sigmoid, 84, BN,
    # sigmoid, 10 on the encoder's 16x4x4 map of a 28x28 image
    cfg = load_config(REPO / "configs" / "classify_fashion_mnist_lenet.py")
    grey = build_model(cfg["model"], [f"k{i}" for i in range(10)], group="classifiers").eval()
    assert grey.backbone.feature_sizes(28) == [(4, 4)] and grey.backbone.in_channels == 1
    assert [type(m).__name__ for m in grey.head.hidden] == ["Linear", "BatchNorm1d", "Sigmoid"] * 2
    assert [grey.head.hidden[0].in_features, grey.head.hidden[0].out_features, grey.head.fc.in_features] == \
        [16 * 4 * 4, 120, 84]
    image = torch.rand(1, 1, 28, 28)
    with torch.no_grad():  # a grey backbone sees RGB as its luma: three equal channels give the grey image
        torch.testing.assert_close(grey.logits(image.repeat(1, 3, 1, 1)), grey.logits(image))
        assert grey.logits(image).shape == (1, 10)


# ----------------------------------------------------------------------------------------------
# Runs: the same trainer, checkpoints and resume as detection
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    root = tmp_path_factory.mktemp("crops")
    make_shapes(root, num=30, seed=5, size=24, val_fraction=0.3, mode="classification")
    return root


def classify_cfg(root, **train_overrides):
    train_cfg = dict(epochs=2, batch_size=8, num_workers=0, seed=3, log_interval=1, eval_interval=1,
                     optimizer=dict(type="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4),
                     scheduler=dict(type="cosine", warmup_epochs=0.5))
    train_cfg.update(train_overrides)
    return {
        "model": {"type": "image_classifier", "backbone": {"type": "lenet5", "activation": "relu"},
                  "head": {"type": "cls_head", "dropout": 0.2}},
        "data": {"classes": None,
                 "train": {"type": "image_folder", "root": str(root / "train"),
                           "transforms": {"size": 24, "augment": [{"type": "HorizontalFlip", "p": 0.5}]}},
                 "val": {"type": "image_folder", "root": str(root / "val"), "allow_empty": True,
                         "transforms": {"size": 24}}},
        "train": train_cfg,
        "eval": {"batch_size": 8, "num_workers": 0},  # metric and save_best: the classification defaults
    }


@pytest.mark.parametrize("workers", [0, 2])
def test_a_classifier_run_resumes_exactly_and_fills_its_run_directory(crops, tmp_path, workers):
    cfg = classify_cfg(crops, num_workers=workers)
    straight = train(cfg, work_dir=tmp_path / "straight", device="cpu", task=CLASSIFICATION)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, work_dir=tmp_path / "resumed", device="cpu", task=CLASSIFICATION,
              extra_hooks=[CrashAfterEpoch(1)])
    train(cfg, work_dir=tmp_path / "resumed", device="cpu", task=CLASSIFICATION, resume="auto")

    a, b = load_checkpoint(tmp_path / "straight/last.pth"), load_checkpoint(tmp_path / "resumed/last.pth")
    assert a["epoch"] == b["epoch"] == 2 and a["class_names"] == ["circle", "cross", "square", "star", "triangle"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    keys = ("type", "epoch", "iter", "lr", "loss", "loss_cls", "stat_accuracy", "top1", "top5")
    ra, rb = read_jsonl(tmp_path / "straight/metrics.jsonl"), read_jsonl(tmp_path / "resumed/metrics.jsonl")
    assert [tuple(r.get(k) for k in keys) for r in ra] == [tuple(r.get(k) for k in keys) for r in rb]

    epochs = [r for r in ra if r["type"] == "epoch"]
    assert all({"top1", "top5", "per_class", "loss_cls"} <= set(r) for r in epochs)
    assert straight["best_metric_name"] == "top1" and straight["best_checkpoint"].name == "best_top1.pth"
    assert sorted(p.name for p in (tmp_path / "straight/plots").iterdir()) == \
        ["accuracy.png", "confusion.png", "loss.png", "lr.png"]
    assert a["config"]["eval"]["metric"] == ["accuracy"]
    # detkit classify eval scores the checkpoint as the run's last evaluation did
    metrics = evaluate(cfg, straight["last_checkpoint"], device="cpu", task=CLASSIFICATION,
                       confusion_out=tmp_path / "cm.png")
    assert metrics["top1"] == pytest.approx(epochs[-1]["top1"]) and (tmp_path / "cm.png").stat().st_size > 0


def test_changing_the_seed_changes_a_classifier_run(crops, tmp_path):
    cfg = classify_cfg(crops, epochs=1, eval_interval=0)
    train(cfg, work_dir=tmp_path / "a", device="cpu", task=CLASSIFICATION)
    train(cfg, work_dir=tmp_path / "b", device="cpu", task=CLASSIFICATION, seed=4)
    a, b = load_checkpoint(tmp_path / "a/last.pth"), load_checkpoint(tmp_path / "b/last.pth")
    assert not torch.equal(a["model"]["head.fc.weight"], b["model"]["head.fc.weight"])


def test_the_classifiers_backbone_is_a_detectors_pretrained_backbone(crops, tmp_path):
    cfg = classify_cfg(crops, epochs=1, eval_interval=0)
    cfg["model"]["backbone"] = {"type": "resnet18", "out_indices": [1]}
    run = train(cfg, work_dir=tmp_path / "cls", device="cpu", task=CLASSIFICATION)
    trained = load_checkpoint(run["last_checkpoint"])["model"]
    detector_cfg = load_config(REPO / "configs" / "yolov1_shapes_resnet18.py",
                               [f"model.backbone.pretrained={run['last_checkpoint']}"])
    detector = build_detector(detector_cfg["model"], ["circle", "square"])
    own = detector.backbone.state_dict()
    backbone_keys = [k[len("backbone."):] for k in trained if k.startswith("backbone.")]
    assert sorted(own) == sorted(backbone_keys)
    for key in backbone_keys:
        assert torch.equal(own[key], trained[f"backbone.{key}"]), key
    fresh = build_detector({**detector_cfg["model"], "backbone": {"type": "resnet18", "out_indices": [1]}}, ["a"])
    assert not torch.equal(fresh.backbone.state_dict()["layer1.0.conv1.weight"], own["layer1.0.conv1.weight"])


def test_a_grey_classifiers_backbone_serves_an_rgb_detector(tmp_path):
    from detkit.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

    torch.manual_seed(0)
    grey = classifier({"type": "lenet5", "in_channels": 1})
    path = save_checkpoint(tmp_path / "grey.pth", {"format": CHECKPOINT_FORMAT, "model": grey.state_dict()})
    detector = build_detector({"type": "yolov1", "backbone": {"type": "lenet5", "pretrained": str(path)},
                               "head": {"type": "yolov1", "grid_size": 4, "mode": "conv", "num_convs": 1,
                                        "conv_channels": 8},
                               "loss": {"type": "yolov1_loss"}, "postprocessor": {"type": "batched_nms"}}, ["a"])
    # the first conv takes RGB: the grey kernel repeated over 3 channels and divided by 3, so an image
    # whose channels are equal gives the grey response; every other tensor is the classifier's
    torch.testing.assert_close(detector.backbone.c1.weight, grey.backbone.c1.weight.repeat(1, 3, 1, 1) / 3)
    assert torch.equal(detector.backbone.c3.weight, grey.backbone.c3.weight)
    image = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(detector.backbone.c1(image.repeat(1, 3, 1, 1)), grey.backbone.c1(image))


def test_cli_classify_train_and_eval(crops, tmp_path):
    config = tmp_path / "cls.py"
    config.write_text(f"cfg = {classify_cfg(crops, epochs=1)!r}\nmodel, data, train, eval = "
                      "cfg['model'], cfg['data'], cfg['train'], cfg['eval']\ndel cfg\n")
    runner = CliRunner()
    work = tmp_path / "w"
    result = runner.invoke(main, ["classify", "train", str(config), "--work-dir", str(work), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["classify", "eval", str(config), str(work / "best_top1.pth"), "--device", "cpu",
                                  "--metrics-out", str(tmp_path / "m.json"), "--confusion-out", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    assert "top1" in result.output and "precision" in result.output
    assert json.loads((tmp_path / "m.json").read_text())["num_images"] == 9 and (tmp_path / "c.png").is_file()
    # the wrong command for the data / the model is a one-line error saying which command to use
    result = runner.invoke(main, ["train", str(config), "--work-dir", str(tmp_path / "x"), "--device", "cpu"])
    assert result.exit_code == 2 and "classification data set" in result.output
    assert "detkit classify train" in result.output
    result = runner.invoke(main, ["data", "show", str(config), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "'ImageFolderDataset' is a classification data set" in result.output
    shown = runner.invoke(main, ["config", "show", str(config)])
    assert json.loads(shown.output)["eval"]["save_best"] == "top1"


def test_classification_config_checks():
    cfg = {"model": {"type": "image_classifier", "backbone": {"type": "lenet5"}}}
    assert task_of_config(cfg) is CLASSIFICATION
    resolved = resolve_config(cfg, task="classification")
    assert resolved["eval"]["metric"] == ["accuracy"] and resolved["eval"]["save_best"] == "top1"
    with pytest.raises(ConfigError, match="unknown metric 'voc07' for classification \\('voc07' is a detection metric\\)"):
        resolve_config({**cfg, "eval": {"metric": "voc07"}}, task="classification")
    with pytest.raises(ConfigError, match="eval.save_best: 'voc07_ap50' is not computed"):
        resolve_config({**cfg, "eval": {"save_best": "voc07_ap50"}}, task="classification")
    with pytest.raises(ConfigError, match="unknown metric 'accuracy' for detection"):
        resolve_config({**cfg, "eval": {"metric": "accuracy"}})
