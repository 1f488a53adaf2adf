"""Experiment trackers (train.loggers): what TensorBoard, MLflow and W&B hold after a run, read back
with each tool's own reader, equals metrics.jsonl; a missing package is a warning; bad names are
config errors. One tiny training run (2 epochs, in-process detector) feeds every tracker."""

from __future__ import annotations

import json
import logging
import math
import struct
import sys

import pytest
from test_runner import read_jsonl, tiny_cfg
from test_trainer import TinyDataset, TinyDet

from detkit import registry
from detkit.engine.loggers import MLflowTracker, TrackerSet, build_trackers, record_scalars
from detkit.errors import ConfigError
from detkit.schema import resolve_train_config


def installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


HAS_WANDB = installed("wandb")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run logging to every installed tracker (W&B offline)."""
    from detkit.engine.runner import train

    work = tmp_path_factory.mktemp("tracked") / "run"
    loggers = ["tensorboard", "mlflow"] + ([{"type": "wandb", "mode": "offline"}] if HAS_WANDB else [])
    with registry.register("detectors", "tiny_test_det", TinyDet), \
            registry.register("datasets", "tiny_test_ds", TinyDataset), \
            pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("WANDB_SILENT", "true")
        train(tiny_cfg(metric=("voc07", "coco"), loggers=loggers), work_dir=work, device="cpu")
    return work


def expected(work):
    """``{(tag, step): value}`` of every scalar the trackers should hold, from metrics.jsonl."""
    out = {}
    for record in read_jsonl(work / "metrics.jsonl"):
        kind, step, scalars = record_scalars(record)
        out.update({(f"{kind}/{k}", step): v for k, v in scalars.items()})
    return out


def test_mlflow_run_equals_metrics_jsonl(run):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlruns' / 'mlflow.db'}")
    (mlrun,) = client.search_runs([client.get_experiment_by_name("detkit").experiment_id])
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "run"
    want = expected(run)
    got = {}
    for key in mlrun.data.metrics:
        got.update({(key, m.step): m.value for m in client.get_metric_history(mlrun.info.run_id, key)})
    assert got == pytest.approx(want)
    assert ("epoch/voc07_ap50", 2) in got and ("epoch/per_class/a", 1) in got and ("train/loss", 6) in got
    # params: the resolved config, flattened
    config = json.loads((run / "config.json").read_text())
    assert mlrun.data.params["train.optimizer.lr"] == str(config["train"]["optimizer"]["lr"])
    assert mlrun.data.params["data.classes"] == "['a', 'b']"
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"plots", "config.json", "metrics.jsonl"} <= artifacts
    plots = {a.path for a in client.list_artifacts(mlrun.info.run_id, "plots")}
    assert {"plots/loss.png", "plots/map.png", "plots/pr_curve.png", "plots/confusion_matrix.png"} <= plots
    # the artifacts live beside the store, in the work dir
    assert (run / "mlruns" / "artifacts").is_dir()


def test_tensorboard_scalars_equal_metrics_jsonl(run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    got = {(tag, e.step): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}
    want = expected(run)
    assert set(got) == set(want)
    for key, value in want.items():  # TensorBoard stores float32
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key
    assert "plots/confusion_matrix" in acc.Tags()["images"]


def read_wandb_records(path):
    """The records of an offline W&B run file: a LevelDB-style log (7-byte file header, 32 KiB
    blocks of records with a 7-byte crc / length / type header), each a wandb ``Record`` protobuf."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer too small for a header: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            pos += block - pos % block if pos % block else 0
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed (optional: pip install 'detkit[wandb]')")
def test_wandb_offline_run_equals_metrics_jsonl(run):
    (run_file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    got = {}
    images = set()
    for record in read_wandb_records(run_file):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        step = row.get("epoch/epoch", row.get("_step"))
        for key, value in row.items():
            if key.startswith(("train/", "epoch/")) and key != "epoch/epoch" and not isinstance(value, dict):
                got[(key, step if key.startswith("epoch/") else row["_step"])] = value
            elif key.startswith("plots/"):  # an image: plots/<name>/{_type, path, ...}
                images.add("/".join(key.split("/")[:2]))
    want = expected(run)
    assert got == pytest.approx(want)
    assert {"plots/pr_curve", "plots/confusion_matrix", "plots/loss"} <= images


# ----------------------------------------------------------------------------------------------
# Missing packages, broken trackers, config checks
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,module", [("mlflow", "mlflow"), ("tensorboard", "torch.utils.tensorboard"),
                                         ("wandb", "wandb")])
def test_a_missing_package_is_a_warning(name, module, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with caplog.at_level(logging.WARNING, logger="detkit"):
        trackers = build_trackers([name, "mlflow" if name != "mlflow" else "tensorboard"], tmp_path)
    assert [t.name for t in trackers] == ["mlflow" if name != "mlflow" else "tensorboard"]
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{name} is requested but cannot be imported" in warning.getMessage()
    assert f"detkit[{name}]" in warning.getMessage()


def test_a_tracker_that_cannot_start_is_dropped_with_a_warning(tmp_path, caplog):
    pytest.importorskip("mlflow")
    trackers = TrackerSet([MLflowTracker(tmp_path, {}, tracking_uri="nosuchscheme://nowhere")])
    with caplog.at_level(logging.WARNING, logger="detkit"):
        trackers.start()
        trackers.log_record({"type": "epoch", "epoch": 1, "iter": 3, "loss": 1.0})
        trackers.finish(success=True)
    assert trackers.trackers == []
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "mlflow logger cannot start" in warning.getMessage()


def test_a_failed_tensorboard_write_is_one_warning_not_a_thread_traceback(tmp_path, monkeypatch, caplog):
    """TensorBoard writes on a background thread; when a write fails (here: its folder replaced by a
    file; in real life a full or read-only disk) that thread's exception must not reach the console
    as a traceback: the tracker is dropped with one warning and the process's hook is restored."""
    pytest.importorskip("tensorboard")
    import shutil
    import threading

    from detkit.engine.loggers import TensorBoardTracker

    printed = []
    monkeypatch.setattr(threading, "excepthook", printed.append)  # what would print the traceback
    trackers = TrackerSet([TensorBoardTracker(tmp_path, {})])
    trackers.start()
    shutil.rmtree(tmp_path / "tensorboard")
    (tmp_path / "tensorboard").write_text("not a folder any more")
    with caplog.at_level(logging.WARNING, logger="detkit"):
        for epoch in (1, 2, 3):
            trackers.log_record({"type": "epoch", "epoch": epoch, "iter": epoch, "loss": 1.0})
        trackers.finish(success=True)
    assert trackers.trackers == []
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "tensorboard logger failed" in warning.getMessage() and "Not a directory" in warning.getMessage()
    assert printed == [] and threading.excepthook == printed.append


def test_loggers_key_is_checked():
    assert resolve_train_config({})["loggers"] == ["tensorboard"]
    assert resolve_train_config({"loggers": []})["loggers"] == []
    with pytest.raises(ConfigError, match=r"train.loggers.1: unknown logger 'mlflw'.*Did you mean 'mlflow'"):
        resolve_train_config({"loggers": ["tensorboard", "mlflw"]})
    with pytest.raises(ConfigError, match=r"train.loggers.0.tracking_url: unknown option .*'tracking_uri'"):
        resolve_train_config({"loggers": [{"type": "mlflow", "tracking_url": "x"}]})
    with pytest.raises(ConfigError, match="expected a list"):
        resolve_train_config({"loggers": "mlflow"})


def test_record_scalars_flattens_per_class_and_skips_non_numbers():
    kind, step, scalars = record_scalars({"type": "epoch", "epoch": 3, "iter": 30, "loss": 0.5, "voc07_ap50": 0.7,
                                          "per_class": {"a": 0.6, "b": math.nan}, "note": "x", "flag": True})
    assert (kind, step) == ("epoch", 3)
    assert scalars == {"loss": 0.5, "voc07_ap50": 0.7, "per_class/a": 0.6}
