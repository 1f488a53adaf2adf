"""Deployment: the checkpoint alone is enough, the Result API, `detkit export` and the runtimes.

Two tiny detectors (YOLOv1 and R-CNN on a ResNet-18 stem, 64 px) are trained for a few iterations
on shapes images the test generates, so their detections are few and well separated (a random
network scores every candidate alike, and parity would hinge on which near-equal score is cut at
`max_per_image`). Every runtime (checkpoint, ONNX Runtime, TorchScript) must return the same
detections: same labels, boxes and scores within 1e-4 after matching; `detkit eval` of the ONNX file
must give the checkpoint's mAP within 0.001; batch 1 and batch 8 must agree.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from detkit import Predictor
from detkit.checkpoint import load_checkpoint, save_checkpoint
from detkit.cli import main
from detkit.config import load_config
from detkit.errors import CheckpointError, ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4

onnxruntime = pytest.importorskip("onnxruntime", reason="the deploy extra (onnx, onnxruntime) is not installed")


# ----------------------------------------------------------------------------------------------
# fixtures: data, two trained detectors, their exports
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from detkit.data.shapes import make_shapes

    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, num=16, size=80, val_fraction=0.5, workers=1)
    return root


def _train(kind: str, shapes: Path, out: Path, extra=()) -> Path:
    from detkit.engine.runner import train

    config = REPO / "configs" / f"{kind}_shapes.py"
    # Trained (and evaluated) on the 8 validation images: a few iterations give a detector whose
    # detections are few and confident, which is what parity needs (see the module docstring).
    cfg = load_config(config, [
        f"data.train.root={shapes}", "data.train.split=val", "data.train.transforms.size=64",
        "data.val.transforms.size=64", "model.backbone={'type': 'resnet18', 'out_indices': [0]}",
        "train.batch_size=4", "train.num_workers=0", "train.log_interval=1", "train.eval_interval=0",
        "eval.num_workers=0", "eval.batch_size=4", *extra])
    torch.manual_seed(0)
    return Path(train(cfg, work_dir=out, device="cpu")["last_checkpoint"])


@pytest.fixture(scope="module")
def yolo(shapes, tmp_path_factory):
    # score_threshold 0.05 and room for every detection: no candidate is cut at max_per_image, where
    # near-equal scores could fall either side in two runtimes. Box voting on (as the raccoon recipe
    # has it), so every YOLOv1 export below is compared with voting in its graph or its runtime.
    return _train("yolov1", shapes, tmp_path_factory.mktemp("yolo"), [
        "model.head.grid_size=8", "data.train.transforms.preset=None", "train.epochs=6", "train.optimizer.lr=0.003",
        "model.postprocessor.score_threshold=0.05", "model.postprocessor.max_per_image=300",
        "+model.postprocessor.merge_iou=0.6"])


@pytest.fixture(scope="module")
def rcnn(shapes, tmp_path_factory):
    """A random R-CNN (fixed seed) whose classifier layer is re-drawn 50x wider than its
    initialisation, so the scores spread out instead of all sitting at 1/(C+1); training it to that
    point takes minutes on a CPU."""
    from detkit.models.builder import build_detector

    cfg = load_config(REPO / "configs" / "rcnn_shapes.py", [
        f"data.train.root={shapes}", "data.train.transforms.size=64", "data.val.transforms.size=64",
        "model.backbone={'type': 'resnet18', 'out_indices': [0]}", "model.max_proposals_test=150",
        "model.proposals.max_proposals=150", "model.postprocessor.max_per_image=300", "eval.num_workers=0"])
    torch.manual_seed(0)
    model = build_detector(cfg["model"], ["circle", "square", "triangle", "star", "cross"])
    torch.nn.init.normal_(model.head.cls_score.weight, std=0.5)
    torch.nn.init.normal_(model.head.bbox_pred.weight, std=0.05)
    path = tmp_path_factory.mktemp("rcnn") / "last.pth"
    (path.parent / "config.json").write_text(json.dumps(cfg))
    return save_checkpoint(path, {"model": model.state_dict(), "class_names": list(model.class_names), "config": cfg})


@pytest.fixture(scope="module")
def rcnn_classic(shapes, tmp_path_factory):
    """The classic R-CNN on the same network: random SVMs on fc7 and ridge regressors on pool5
    (fixed seed) installed as stages 3 and 4 would, so the export must carry them: its graph scores
    the given proposals with the SVM margins and regresses them with the ridge boxes. The margins
    are spread widely and cut at 0 (the object side), so no detection hinges on a near-tie."""
    from detkit.models.builder import build_detector

    cfg = load_config(REPO / "configs" / "rcnn_shapes.py", [
        f"data.train.root={shapes}", "data.train.transforms.size=64", "data.val.transforms.size=64",
        "model.backbone={'type': 'resnet18', 'out_indices': [0]}", "model.max_proposals_test=150",
        "model.proposals.max_proposals=150", "model.postprocessor.max_per_image=300", "eval.num_workers=0",
        "model.type=rcnn_classic", "model.loss.box_weight=0.0", "model.postprocessor.score_threshold=0.0"])
    torch.manual_seed(0)
    model = build_detector(cfg["model"], ["circle", "square", "triangle", "star", "cross"])
    g = torch.Generator().manual_seed(1)
    c, d_svm, d_box = model.num_classes, model.svm_weight.shape[1], model.bbox_beta.shape[1] - 1
    model.set_svms(torch.randn(c, d_svm, generator=g), torch.randn(c, generator=g) - 1.0, 0.5)
    model.set_box_regressors(torch.randn(c, d_box + 1, 4, generator=g) * 0.002, torch.randn(c, 4, generator=g) * 0.05,
                             torch.eye(4).repeat(c, 1, 1) * 0.3, 1.0)
    path = tmp_path_factory.mktemp("rcnn_classic") / "last.pth"
    (path.parent / "config.json").write_text(json.dumps(cfg))
    return save_checkpoint(path, {"model": model.state_dict(), "class_names": list(model.class_names), "config": cfg})


@pytest.fixture(scope="module")
def exports(yolo, rcnn, rcnn_classic):
    """Every export the parity tests compare, written once: {(detector, format): path}."""
    from detkit.deploy.export import export

    out = {}
    for name, ckpt in (("yolov1", yolo), ("rcnn", rcnn), ("rcnn_classic", rcnn_classic)):
        out[name, "onnx"] = export(ckpt, "onnx", dynamic_batch=True)
        out[name, "torchscript"] = export(ckpt, "torchscript", dynamic_batch=True)
    out["yolov1", "onnx-fixed"] = export(yolo, "onnx", yolo.with_name("fixed.onnx"))
    out["yolov1", "onnx-raw"] = export(yolo, "onnx", yolo.with_name("raw.onnx"), nms=False, dynamic_batch=True)
    return out


@pytest.fixture(scope="module")
def val_images(shapes):
    from detkit.data.io import read_image

    paths = sorted((shapes / "JPEGImages").glob("*"))
    val_ids = (shapes / "ImageSets" / "Main" / "val.txt").read_text().split()
    return [read_image(p) for p in paths if p.stem in val_ids]


def assert_same_detections(got, expected, tol=TOL):
    """Per image: the same number of detections, each matched to one of the same label whose box
    and score are within ``tol``."""
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert len(g) == len(e), f"image {i}: {len(g)} vs {len(e)} detections"
        unmatched = list(range(len(g)))
        for box, score, label in zip(e.boxes, e.scores, e.labels.tolist()):
            candidates = [j for j in unmatched if int(g.labels[j]) == label]
            assert candidates, f"image {i}: no detection of label {label} left to match"
            j = min(candidates, key=lambda j: float((g.boxes[j] - box).abs().max()))
            assert float((g.boxes[j] - box).abs().max()) <= tol, f"image {i}: box {g.boxes[j]} vs {box}"
            assert abs(float(g.scores[j]) - float(score)) <= tol, f"image {i}: score {g.scores[j]} vs {score}"
            unmatched.remove(j)


# ----------------------------------------------------------------------------------------------
# the in-graph postprocessor
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"class_agnostic": True}, {"pre_nms_topk": 7}, {"max_per_image": 5},
                                     {"merge_iou": 0.3, "max_per_image": 5}])
@pytest.mark.parametrize("per_class", [False, True])
def test_padded_nms_keeps_what_batched_nms_keeps(options, per_class):
    from detkit.deploy.graphs import PaddedBatchedNMS
    from detkit.ops.postprocess import BatchedNMS

    generator = torch.Generator().manual_seed(3)
    n, m, c = 3, 40, 4
    centres = torch.rand(n, m, *((c,) if per_class else ()), 2, generator=generator) * 80
    sizes = 8 + torch.rand(centres.shape, generator=generator) * 30
    boxes = torch.cat((centres - sizes / 2, centres + sizes / 2), dim=-1)
    scores = torch.rand(n, m, c, generator=generator)
    eager = BatchedNMS(iou_threshold=0.4, score_threshold=0.3, **{"max_per_image": 20, **options})
    expected = eager(boxes, scores)
    rows = n * m
    image_of_row = torch.arange(n).repeat_interleave(m)
    out_boxes, out_scores, out_labels, counts = PaddedBatchedNMS.from_postprocessor(eager)(
        boxes.reshape(rows, *boxes.shape[2:]), scores.reshape(rows, c), image_of_row, n)
    assert out_boxes.shape == (n, eager.max_per_image, 4) and out_labels.dtype == torch.int64
    for i, det in enumerate(expected):
        k = int(counts[i])
        assert k == len(det["scores"]) > 0
        torch.testing.assert_close(out_scores[i, :k], det["scores"], rtol=0, atol=0)
        # voted boxes: the same sums, in another kernel's order of additions
        tol = {"rtol": 1e-6, "atol": 1e-5} if "merge_iou" in options else {"rtol": 0, "atol": 0}
        torch.testing.assert_close(out_boxes[i, :k], det["boxes"], **tol)
        assert out_labels[i, :k].tolist() == det["labels"].tolist()
        assert (out_labels[i, k:] == -1).all() and (out_scores[i, k:] == 0).all()


# ----------------------------------------------------------------------------------------------
# the checkpoint is enough
# ----------------------------------------------------------------------------------------------


def test_the_checkpoint_alone_runs_predictor_infer_and_eval(yolo, shapes, val_images, tmp_path):
    from detkit.evaluation.run import evaluate

    config = json.loads((yolo.parent / "config.json").read_text())
    # conf 0.1: this briefly trained detector scores below the default 0.25
    alone, with_config = Predictor(yolo, device="cpu", conf=0.1), Predictor(config, yolo, device="cpu", conf=0.1)
    results = alone(val_images)
    assert sum(len(r) for r in results) > 0
    assert_same_detections(results, with_config(val_images), tol=0)
    assert alone.class_names == ("circle", "square", "triangle", "star", "cross")

    runner = CliRunner()
    folder = shapes / "JPEGImages"
    done = runner.invoke(main, ["infer", str(yolo), str(folder), "--out", str(tmp_path / "a"), "--device", "cpu",
                                "--save-json", "--conf", "0.1"])
    assert done.exit_code == 0, done.output
    assert "16 image(s)" in done.output
    records = json.loads((tmp_path / "a" / "predictions.json").read_text())
    assert len(records) > 0 and min(r["score"] for r in records) >= 0.1
    three = runner.invoke(main, ["infer", str(yolo.parent / "config.json"), str(yolo), str(folder),
                                 "--out", str(tmp_path / "b"), "--device", "cpu", "--save-json", "--conf", "0.1"])
    assert three.exit_code == 0, three.output
    assert json.loads((tmp_path / "b" / "predictions.json").read_text()) == records

    metrics = evaluate(None, yolo, metric="voc07", device="cpu")
    assert metrics["voc07_ap50"] > 0.1  # a detector worth comparing runtimes on
    assert evaluate(config, yolo, metric="voc07", device="cpu")["voc07_ap50"] == metrics["voc07_ap50"]
    # --data takes another config's data section (here the same data, by path)
    data_cfg = tmp_path / "data.py"
    data_cfg.write_text(f"data = {config['data']!r}\n")
    assert evaluate(None, yolo, metric="voc07", device="cpu", data=data_cfg)["voc07_ap50"] == metrics["voc07_ap50"]
    out = runner.invoke(main, ["eval", str(yolo), "--metric", "voc07", "--device", "cpu", "--metrics-out",
                               str(tmp_path / "m.json")])
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "m.json").read_text())["voc07_ap50"] == pytest.approx(metrics["voc07_ap50"])


def test_a_config_that_does_not_fit_is_one_short_line(yolo, tmp_path):
    config = json.loads((yolo.parent / "config.json").read_text())
    other_backbone = json.loads(json.dumps(config))
    other_backbone["model"]["backbone"]["type"] = "resnet34"
    with pytest.raises(ConfigError) as err:
        Predictor(other_backbone, yolo, device="cpu")
    message = str(err.value)
    assert len(message) < 300 and "\n" not in message
    assert "model.backbone.type is 'resnet34' in the config, 'resnet18' in the checkpoint" in message

    boxes = json.loads(json.dumps(config))
    boxes["model"]["head"]["num_boxes"] = 3
    boxes["model"]["postprocessor"]["iou_threshold"] = 0.3  # differs too, but shapes no weight
    with pytest.raises(ConfigError, match=r"model.head.num_boxes is 3 in the config, 2 in the checkpoint\. ") as err:
        Predictor(boxes, yolo, device="cpu")
    assert len(str(err.value)) < 300 and "postprocessor" not in str(err.value)

    classes = json.loads(json.dumps(config))
    classes["data"]["classes"] = ["circle", "square", "triangle"]
    with pytest.raises(ConfigError, match="has 5 classes but the config's data.classes has 3") as err:
        Predictor(classes, yolo, device="cpu")
    assert len(str(err.value)) < 300

    # A plain state dict stores no config: the misfit is counted, not listed key by key.
    plain = tmp_path / "plain.pth"
    torch.save(load_checkpoint(yolo)["model"], plain)
    with pytest.raises(CheckpointError, match="stores no config"):
        Predictor(plain, device="cpu")
    other_backbone["data"]["classes"] = list(config["data"].get("classes") or Predictor(yolo).class_names)
    with pytest.raises(ConfigError, match=r"weights do not fit the model the config builds \(96 missing tensors\)") as err:
        Predictor(other_backbone, plain, device="cpu")
    assert len(str(err.value)) < 300

    # On the command line: one line, exit status 2.
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(other_backbone))
    out = CliRunner().invoke(main, ["eval", str(path), str(yolo), "--device", "cpu"])
    assert out.exit_code == 2 and out.output.count("\n") == 1 and "error:" in out.output


# ----------------------------------------------------------------------------------------------
# the Result API
# ----------------------------------------------------------------------------------------------


def test_results_from_every_kind_of_image_and_clear_errors(yolo, val_images, tmp_path):
    from PIL import Image

    from detkit.draw import draw_detections
    from detkit.inference import DEFAULT_CONF

    assert Predictor(yolo, device="cpu").conf == DEFAULT_CONF == 0.25
    predictor = Predictor(yolo, device="cpu", conf=0.1)  # this briefly trained detector scores below 0.25
    assert next(p for p in main.commands["infer"].params if p.name == "conf").default == DEFAULT_CONF

    image = val_images[0]
    path = tmp_path / "img.png"
    Image.fromarray(image).save(path)
    [reference] = predictor(image)
    assert len(reference) > 0 and bool((reference.scores >= 0.1).all())
    chw = torch.from_numpy(image).permute(2, 0, 1)
    for other in (path, str(path), Image.fromarray(image), chw, chw.float() / 255):
        [result] = predictor(other)
        assert_same_detections([result], [reference], tol=0)
    [from_path] = predictor(path)
    assert from_path.path == str(path)

    assert reference.names == [predictor.class_names[i] for i in reference.labels.tolist()]
    assert reference.boxes.dtype == torch.float32 and reference.labels.dtype == torch.int64
    records = json.loads(reference.to_json())
    assert [r["name"] for r in records] == reference.names
    assert records[0]["box"] == pytest.approx(reference.boxes[0].tolist(), abs=0.01)
    assert records[0]["score"] == pytest.approx(float(reference.scores[0]), abs=1e-5)
    drawn = reference.plot()
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert not np.array_equal(drawn, image)
    assert np.array_equal(drawn, draw_detections(image, reference.to_dict(), predictor.class_names))
    assert len(predictor(image)[0].select(reference.labels == reference.labels[0])) >= 1

    for bad, what in ((np.zeros((8, 8), np.uint8), "ndarray (8, 8) uint8"), (np.zeros((8, 8, 3), np.float32), "float32"),
                      (torch.rand(3, 8, 8) * 4, "values in 0..1"), (42, "got int")):
        with pytest.raises(DataError, match="uint8 RGB arrays|0..1") as err:
            predictor(bad)
        assert what in str(err.value)


# ----------------------------------------------------------------------------------------------
# export: files, metadata, sizes
# ----------------------------------------------------------------------------------------------


def test_stripped_checkpoint_is_small_and_loads_everywhere(yolo, shapes, val_images, tmp_path):
    from detkit.checkpoint import read_state_dict
    from detkit.evaluation.run import evaluate

    # Size: against a training checkpoint whose every weight has optimiser state (SGD with momentum,
    # the smallest state there is; the fixture's ResNet keeps untrained layers past out_indices).
    trained = _train("yolov1", shapes, tmp_path / "lenet", [
        "model.backbone={'type': 'lenet5'}", "train.epochs=1",
        "train.optimizer={'type': 'sgd', 'lr': 0.001, 'momentum': 0.9}"])
    out = CliRunner().invoke(main, ["export", str(trained), "--format", "pth", "--out", str(tmp_path / "s.pth")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "s.pth").stat().st_size <= 0.4 * trained.stat().st_size

    out = CliRunner().invoke(main, ["export", str(yolo), "--format", "pth", "--out", str(tmp_path / "d.pth")])
    assert out.exit_code == 0, out.output
    stripped = tmp_path / "d.pth"
    ckpt = load_checkpoint(stripped)
    assert {"optimizer", "scheduler", "scaler", "rng"}.isdisjoint(ckpt)
    assert ckpt["config"] == load_checkpoint(yolo)["config"] and ckpt["meta"]["stripped"] is True
    # float16 weights: the detections move by far less than a pixel or a score percent
    assert_same_detections(Predictor(stripped, device="cpu", conf=0.1)(val_images),
                           Predictor(yolo, device="cpu", conf=0.1)(val_images), tol=2e-2)
    exact = CliRunner().invoke(main, ["export", str(yolo), "--format", "pth", "--no-half", "--out",
                                      str(tmp_path / "f.pth")])
    assert exact.exit_code == 0, exact.output
    assert_same_detections(Predictor(tmp_path / "f.pth", device="cpu", conf=None)(val_images),
                           Predictor(yolo, device="cpu", conf=None)(val_images), tol=0)
    assert evaluate(None, tmp_path / "f.pth", metric="voc07", device="cpu")["voc07_ap50"] == \
        evaluate(None, yolo, metric="voc07", device="cpu")["voc07_ap50"]
    assert read_state_dict(stripped, submodule="backbone")  # a backbone's `pretrained` reads it too


def test_export_metadata_holds_the_runtime_contract(exports, yolo):
    import onnx

    from detkit.deploy.metadata import INFO_FILE, DeployInfo

    props = {p.key: json.loads(p.value) for p in onnx.load(str(exports["yolov1", "onnx"])).metadata_props}
    config = load_checkpoint(yolo)["config"]
    assert props["names"] == ["circle", "square", "triangle", "star", "cross"]
    assert props["input_size"] == [64, 64] and props["resize"] == "stretch" and props["pad_value"] == 114
    assert props["mean"] == pytest.approx([0.485, 0.456, 0.406]) and props["std"] == pytest.approx([0.229, 0.224, 0.225])
    post = config["model"]["postprocessor"]
    assert (props["score_threshold"], props["iou_threshold"], props["max_detections"],
            props["merge_iou"]) == (post["score_threshold"], post["iou_threshold"], post["max_per_image"], 0.6)
    assert props["nms"] is True and props["dynamic_batch"] is True and props["detector"] == "yolov1"
    assert props["outputs"] == ["boxes", "scores", "labels", "num_detections"] and props["config"] == config

    extra = {INFO_FILE: ""}
    torch.jit.load(str(exports["rcnn", "torchscript"]), _extra_files=extra)
    info = json.loads(extra[INFO_FILE])
    assert info["inputs"] == ["images", "rois"] and info["detector"] == "rcnn"
    assert info["merge_iou"] is None  # no voting in the R-CNN config
    # Files exported before merge_iou was recorded (no such key) still load, as "no voting".
    raw = {p.key: p.value for p in onnx.load(str(exports["yolov1", "onnx"])).metadata_props if p.key != "merge_iou"}
    assert DeployInfo.from_strings(raw, "old.onnx").merge_iou is None
    assert info["proposals"]["max_proposals"] == 150 and info["proposals"]["config"]["type"] == "sliding_window"
    assert json.loads(props["detkit_format"] if isinstance(props["detkit_format"], str) else "1") == 1


# ----------------------------------------------------------------------------------------------
# parity
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("detector", ["yolov1", "rcnn", "rcnn_classic"])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_models_return_the_checkpoints_detections(detector, fmt, exports, yolo, rcnn, rcnn_classic,
                                                           val_images):
    ckpt = {"yolov1": yolo, "rcnn": rcnn, "rcnn_classic": rcnn_classic}[detector]
    reference = Predictor(ckpt, device="cpu", conf=None)(val_images)
    assert sum(len(r) for r in reference) >= len(val_images)
    exported = Predictor(exports[detector, fmt], device="cpu", conf=None)
    assert exported.class_names == Predictor(ckpt, device="cpu").class_names
    batched = exported(val_images)  # batch 8
    assert_same_detections(batched, reference)
    one_by_one = [exported(image)[0] for image in val_images]  # batch 1
    assert_same_detections(one_by_one, batched)


def test_fixed_batch_and_raw_candidate_exports(exports, yolo, val_images):
    reference = Predictor(yolo, device="cpu", conf=None)(val_images)
    # A batch-1 graph serves a batch of 8 one image at a time; the raw candidates go through the
    # stored postprocessor; both give the checkpoint's detections.
    assert_same_detections(Predictor(exports["yolov1", "onnx-fixed"], device="cpu", conf=None)(val_images), reference)
    assert_same_detections(Predictor(exports["yolov1", "onnx-raw"], device="cpu", conf=None)(val_images), reference)
    # conf filters all of them alike (a graph with NMS inside: after it).
    some = Predictor(yolo, device="cpu", conf=0.1)(val_images)
    assert 0 < sum(len(r) for r in some) < sum(len(r) for r in reference)
    assert_same_detections(Predictor(exports["yolov1", "onnx"], device="cpu", conf=0.1)(val_images), some)
    # ... and conf only filters: with box voting, a threshold raised to conf before NMS would vote
    # with fewer candidates and move the boxes (the graph above votes with all of them).
    assert_same_detections(some, [r.filter(0.1) for r in reference])
    assert_same_detections(Predictor(exports["yolov1", "onnx-raw"], device="cpu", conf=0.1)(val_images), some)


def test_conf_lowers_but_never_raises_the_threshold_of_a_filtering_caller():
    from detkit.deploy.backends import postprocessor_overrides

    cfg = {"model": {"postprocessor": {"type": "batched_nms", "score_threshold": 0.01, "merge_iou": 0.6}}}
    post = lambda conf, **kw: postprocessor_overrides(cfg, conf, **kw)["model"]["postprocessor"]["score_threshold"]
    assert post(0.25, conf_is_filter=True) == 0.01 and post(0.001, conf_is_filter=True) == 0.001
    assert post(0.25) == 0.25  # export's --conf: the graph's own threshold
    assert cfg["model"]["postprocessor"]["score_threshold"] == 0.01  # the input is not modified
    # A config that leaves the threshold to the class default is not raised either (BatchedNMS: 0.05,
    # the soft_nms plugin's: 0.001, read from their signatures); an unknown type is left for the build.
    from detkit.registry import get

    for name in ("batched_nms", "soft_nms"):
        default = inspect.signature(get("postprocessors", name)).parameters["score_threshold"].default
        bare = {"model": {"postprocessor": {"type": name}}}
        assert postprocessor_overrides(bare, 0.5, conf_is_filter=True)["model"]["postprocessor"]["score_threshold"] \
            == default < 0.5
        assert postprocessor_overrides(bare, 0.5)["model"]["postprocessor"]["score_threshold"] == 0.5
    unknown = {"model": {"postprocessor": {"type": "no_such_postprocessor"}}}
    assert "score_threshold" not in postprocessor_overrides(unknown, 0.5, conf_is_filter=True)["model"]["postprocessor"]


@pytest.mark.parametrize("detector", ["yolov1", "rcnn", "rcnn_classic"])
def test_eval_of_the_onnx_file_gives_the_checkpoints_map(detector, exports, yolo, rcnn, rcnn_classic, tmp_path):
    ckpt = {"yolov1": yolo, "rcnn": rcnn, "rcnn_classic": rcnn_classic}[detector]
    runner = CliRunner()
    config = ckpt.parent / "config.json"
    for name, model, extra in (("ckpt", ckpt, []), ("onnx", exports[detector, "onnx"], ["--data", str(config)])):
        out = runner.invoke(main, ["eval", str(model), "--metric", "all", "--device", "cpu", "--batch-size", "8",
                                   "--metrics-out", str(tmp_path / f"{name}.json"), *extra])
        assert out.exit_code == 0, out.output
    ours, theirs = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("onnx", "ckpt"))
    assert theirs["voc07_ap50"] > 0
    for key in ("voc07_ap50", "voc_ap50", "coco_ap", "coco_ap50"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-3), key


def test_the_readme_onnxruntime_script_reproduces_detkit(exports, yolo, val_images, tmp_path):
    from PIL import Image

    path = tmp_path / "photo.png"
    Image.fromarray(val_images[1]).save(path)
    script = REPO / "examples" / "onnx_infer.py"
    body = script.read_text().split('"""')[-1]  # after the module docstring
    code = [line for line in body.splitlines() if line.strip() and not line.lstrip().startswith(("#", "import", "from"))]
    assert len(code) <= 10, code  # the README's "10-line script", imports aside
    readme = (REPO / "README.md").read_text()
    assert f"```python\n{script.read_text().strip()}\n```" in readme  # the README shows this very file
    done = subprocess.run([sys.executable, str(script), str(exports["yolov1", "onnx"]), str(path), "0.1"],
                          capture_output=True, text=True, timeout=120, check=True)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    [expected] = Predictor(exports["yolov1", "onnx"], device="cpu", conf=0.1)(path)
    [eager] = Predictor(yolo, device="cpu", conf=0.1)(path)
    assert len(lines) == len(expected) == len(eager) > 0
    assert [line["name"] for line in lines] == expected.names == eager.names
    got = torch.tensor([line["box"] for line in lines])
    assert float((got - expected.boxes).abs().max()) <= TOL
    assert float((got - eager.boxes).abs().max()) <= TOL
    assert [line["score"] for line in lines] == pytest.approx(eager.scores.tolist(), abs=TOL)


# ----------------------------------------------------------------------------------------------
# bad files, missing runtime, options that cannot apply
# ----------------------------------------------------------------------------------------------


def test_corrupt_foreign_and_unrunnable_model_files_are_clear_errors(exports, tmp_path, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(exports["yolov1", "onnx"].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="corrupt.onnx: not a loadable ONNX model"):
        Predictor(corrupt, device="cpu")

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    with pytest.raises(CheckpointError, match="foreign.onnx: not a detkit export"):
        Predictor(foreign, device="cpu")

    broken = tmp_path / "broken.torchscript"
    with zipfile.ZipFile(exports["yolov1", "torchscript"]) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            if not item.filename.endswith("constants.pkl") and "/data/" not in item.filename:
                dst.writestr(item, src.read(item))
            elif item.filename.endswith("constants.pkl"):
                dst.writestr(item, b"garbage")
    with pytest.raises(CheckpointError, match="broken.torchscript: not a loadable TorchScript model"):
        Predictor(broken, device="cpu")

    with pytest.raises(ConfigError, match="NMS is inside the graph with --iou 0.5; re-export with --iou 0.3"):
        Predictor(exports["yolov1", "onnx"], device="cpu", iou=0.3)
    with pytest.raises(ConfigError, match="carries its own config"):
        Predictor({"model": {}}, exports["yolov1", "onnx"], device="cpu")

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    out = CliRunner().invoke(main, ["infer", str(exports["yolov1", "onnx"]), str(tmp_path), "--device", "cpu"])
    assert out.exit_code == 2
    assert out.output.strip() == "error: running .onnx models needs onnxruntime: pip install 'detkit[deploy]'"


def test_export_refuses_what_it_cannot_export(yolo, tmp_path):
    from detkit.deploy.export import export

    with pytest.raises(ConfigError, match="transforms.size"):
        export(yolo, "torchscript", tmp_path / "x.pt", overrides=["data.val.transforms.size=None"])
    with pytest.raises(ConfigError, match="no graph version; export with --no-nms"):
        export(yolo, "torchscript", tmp_path / "x.pt", overrides=["model.postprocessor={'type': 'soft_nms'}"])
    with pytest.raises(ConfigError, match="--int8 applies to --format onnx"):
        export(yolo, "torchscript", int8=True)
    assert not list(tmp_path.iterdir())  # nothing half-written


# ----------------------------------------------------------------------------------------------
# CUDA
# ----------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_models_on_cuda(fmt, exports, yolo, val_images):
    reference = Predictor(yolo, device="cuda", conf=None)(val_images)
    assert_same_detections(Predictor(exports["yolov1", fmt], device="cuda", conf=None)(val_images), reference,
                           tol=1e-3)
