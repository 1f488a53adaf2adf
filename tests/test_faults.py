"""Fault injection (issue 16): what an unlucky user does to a run, and what detkit guarantees then.

Each test drives one fault through the CLI (or the public API where the fault needs a hook) and
asserts a clear one-line error or the documented recovery, and that no earlier result was lost:
damaged checkpoint bytes, a diverging model, earlier runs in the work dir, a damaged ``last.pth`` on
``--resume``, ``kill -9`` during a save, read-only folders and a full disk, same-stem inference
inputs, files that are not checkpoints, ``--unsafe-load``, broken configs, non-UTF-8 file names,
``load_from`` with other classes, checkpoint file modes. docs/training.md "What detkit guarantees"
names these tests.

The detector and data set are the tiny in-process ones of test_trainer.py; a real training run is
killed in a subprocess, and the file-system faults run in a subprocess with a private mount
namespace (read-only bind mounts, a small tmpfs) when the tests run as root, or with chmod otherwise.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_runner import tiny_cfg
from test_trainer import TinyDataset, TinyDet

from detkit import checkpoint as ckpt_io
from detkit import registry
from detkit.checkpoint import load_checkpoint, save_checkpoint
from detkit.cli import main
from detkit.engine.hooks import CheckpointHook
from detkit.engine.run_logging import run_logging
from detkit.engine.runner import train
from detkit.engine.trainer import NonFiniteLossError
from detkit.errors import CheckpointError, DataError

TESTS = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------------
# Components and helpers
# ----------------------------------------------------------------------------------------------


class NanGradDet(TinyDet):
    """TinyDet whose ``probe`` parameter gets a NaN gradient (sqrt' at 0 times 0) in training call
    number ``nan_grad_call`` while every loss stays finite: weights go NaN behind the loss guard."""

    def __init__(self, num_classes, class_names=None, nan_grad_call: int = 4):
        super().__init__(num_classes, class_names)
        self.probe = torch.nn.Parameter(torch.zeros(()))
        self.nan_grad_call, self.calls = nan_grad_call, 0

    def forward(self, images, targets=None, metas=None):
        out = super().forward(images, targets, metas)
        if self.training:
            self.calls += 1
            hit = self.calls == self.nan_grad_call
            out["loss_probe"] = torch.sqrt(self.probe * 0.0) if hit else (self.probe * 0.0).detach()
        return out


class BadNameDataset(TinyDataset):
    """Sample 3 is an unreadable image whose file name is not UTF-8 (Latin-1 bytes on a Linux disk)."""

    BAD = os.fsdecode(b"/data/caf\xe9 \xff.jpg")

    def __getitem__(self, index):
        if index == 3:
            raise DataError(f"{self.BAD}: cannot decode the image")
        return super().__getitem__(index)


class BrightnessDet(torch.nn.Module):
    """Infers one box per image scored by the image's mean brightness: outputs tell images apart."""

    def __init__(self, num_classes, class_names=None):
        super().__init__()
        self.num_classes = num_classes
        self.gain = torch.nn.Parameter(torch.ones(()))

    def forward(self, images, targets=None, metas=None):
        out = []
        for i, image in enumerate(images):
            h, w = image.shape[-2:]
            boxes = torch.tensor([[w * 0.25, h * 0.25, w * 0.75, h * 0.75]])
            if metas is not None:
                from detkit.structures import boxes_to_original

                boxes = boxes_to_original(boxes, metas[i])
            out.append({"boxes": boxes, "scores": (image.mean() * self.gain).reshape(1).detach(),
                        "labels": torch.tensor([0])})
        return out


class Marker:
    """A class a pickled checkpoint refers to (any user object needs pickle)."""


COMPONENTS = [("detectors", "fault_det", TinyDet), ("datasets", "fault_ds", TinyDataset),
              ("detectors", "fault_nan_grad_det", NanGradDet), ("datasets", "fault_bad_name_ds", BadNameDataset),
              ("detectors", "fault_brightness_det", BrightnessDet)]


@contextmanager
def registered():
    handles = [registry.register(group, name, obj) for group, name, obj in COMPONENTS]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@pytest.fixture(scope="module", autouse=True)
def components():
    with registered():
        yield


def fault_cfg(epochs=3, **train):
    cfg = tiny_cfg(epochs=epochs, keep_last=3, **train)
    cfg["model"] = {"type": "fault_det"}
    cfg["data"]["train"]["type"] = cfg["data"]["val"]["type"] = "fault_ds"
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text("".join(f"{key} = {value!r}\n" for key, value in cfg.items()), encoding="utf-8")
    return path


@pytest.fixture
def config(tmp_path) -> Path:
    return write_config(tmp_path / "fault_cfg.py", fault_cfg())


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def train_cli(config, work, *args):
    return cli("train", config, "--work-dir", work, "--device", "cpu", *args)


def error_line(result, *fragments) -> str:
    """The one ``error:`` line of a failed command (exit 2, no traceback), holding ``fragments``."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


def same_state(a: Path, b: Path) -> None:
    """Two checkpoints hold bit-identical weights, optimiser state and progress."""
    x, y = load_checkpoint(a), load_checkpoint(b)
    assert (x["epoch"], x["iter"], x["best_metric"]) == (y["epoch"], y["iter"], y["best_metric"])
    for key, value in x["model"].items():
        assert torch.equal(value, y["model"][key]), key
    for index, state in x["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], y["optimizer"]["state"][index]["momentum_buffer"])


def file_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name)


def flip_bytes_of(path: Path, tensor: torch.Tensor) -> None:
    """Damage, in place, the bytes of ``tensor`` stored inside the zip archive ``path``."""
    data = tensor.numpy().tobytes()
    with zipfile.ZipFile(path) as archive:
        (info,) = [i for i in archive.infolist() if "/data/" in i.filename and archive.read(i) == data]
    with open(path, "r+b") as handle:
        handle.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", handle.read(4))
        where = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        handle.seek(where)
        chunk = handle.read(4)
        handle.seek(where)
        handle.write(bytes(b ^ 0x5A for b in chunk))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run: what every interrupted-and-resumed run must equal, bit for bit."""
    root = tmp_path_factory.mktemp("straight")
    result = train_cli(write_config(root / "fault_cfg.py", fault_cfg()), root / "run")
    assert result.exit_code == 0, result.output
    return root / "run"


# ----------------------------------------------------------------------------------------------
# 1. checksums
# ----------------------------------------------------------------------------------------------


def test_damaged_weights_fail_the_checksum_instead_of_scoring_zero(config, tmp_path):
    work = tmp_path / "w"
    assert train_cli(config, work, "--epochs", "1").exit_code == 0
    good = load_checkpoint(work / "last.pth")
    assert good["checksum"].startswith("sha256:")
    damaged = tmp_path / "damaged.pth"
    shutil.copyfile(work / "last.pth", damaged)
    flip_bytes_of(damaged, good["model"]["head.weight"])

    # torch reads the damaged file without a word: this is how eval used to report mAP 0.0000
    raw = torch.load(damaged, weights_only=True)
    assert not torch.equal(raw["model"]["head.weight"], good["model"]["head.weight"])

    error_line(cli("eval", config, damaged, "--device", "cpu"), damaged, "checksum mismatch")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(damaged)
    assert cli("eval", config, work / "last.pth", "--device", "cpu").exit_code == 0  # the original is fine


def test_checkpoint_without_checksum_still_loads_and_says_so_once(tmp_path, caplog):
    state = {"format": "detkit-checkpoint", "version": 1, "model": TinyDet(2).state_dict(),
             "class_names": ["a", "b"]}
    torch.save(state, tmp_path / "old.pth")  # as detkit wrote checkpoints before checksums
    with caplog.at_level(logging.WARNING, logger="detkit"):
        for _ in range(3):
            loaded = load_checkpoint(tmp_path / "old.pth")
    assert torch.equal(loaded["model"]["head.weight"], state["model"]["head.weight"])
    notes = [r.message for r in caplog.records if "without checksums" in r.message]
    assert len(notes) == 1 and "old.pth" in notes[0]
    # re-saving adds one, and a loaded checkpoint's stale checksum is never reused
    save_checkpoint(tmp_path / "new.pth", {**loaded, "class_names": ["x", "y"]})
    assert load_checkpoint(tmp_path / "new.pth")["checksum"] == ckpt_io.state_checksum(
        load_checkpoint(tmp_path / "new.pth"))


# ----------------------------------------------------------------------------------------------
# 2. non-finite models
# ----------------------------------------------------------------------------------------------


def test_diverging_batchnorm_statistics_stop_the_run_under_raise(config, tmp_path):
    # lr 1e6: at some iteration the BN running variance overflows to inf while the loss, computed
    # with batch statistics, is still finite
    work = tmp_path / "w"
    result = train_cli(config, work, "--set", "train.optimizer.lr=1e6", "train.grad_clip=None",
                       "train.scheduler={'type': 'constant'}")
    line = error_line(result, "non-finite model statistics ('norm.running_var' became inf)", "image ids")
    assert "last good checkpoint" in line or "no checkpoint had been written yet" in line
    for path in work.glob("*.pth"):  # whatever was saved before is finite and loads
        load_checkpoint(path)


def test_diverging_batchnorm_statistics_are_skipped_under_skip(config, tmp_path):
    work = tmp_path / "w"
    result = train_cli(config, work, "--set", "train.optimizer.lr=1e6", "train.grad_clip=None",
                       "train.scheduler={'type': 'constant'}", "train.nan_policy=skip")
    log = (work / "train.log").read_text()
    assert "skipped batch with non-finite model statistics ('norm.running_var' became inf)" in log
    assert list(work.glob("*.pth"))
    for path in work.glob("*.pth"):  # nothing non-finite was saved: every checkpoint loads and evaluates
        assert ckpt_io.first_non_finite(load_checkpoint(path)["model"]) is None
    if result.exit_code == 0:
        assert cli("eval", config, work / "last.pth", "--device", "cpu").exit_code == 0
    else:  # later batches may all diverge: then the run says so and stops
        error_line(result, "training has diverged")


@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_nan_weights_behind_a_finite_loss_are_never_saved(tmp_path, policy):
    cfg = fault_cfg(epochs=2, grad_clip=None, nan_policy=policy, eval_interval=0)
    cfg["model"] = {"type": "fault_nan_grad_det", "nan_grad_call": 6}  # the last step of epoch 2
    work = tmp_path / "w"
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, work_dir=work, device="cpu")
    msg = str(info.value)
    assert "after epoch 2: the model's 'probe' holds NaN values" in msg and "nothing of this epoch" in msg
    assert f"the last good checkpoint is {work / 'last.pth'}" in msg
    assert load_checkpoint(work / "last.pth")["epoch"] == 1  # the last good one, intact
    assert sorted(p.name for p in work.glob("*.pth")) == ["epoch_1.pth", "last.pth"]


def test_non_finite_checkpoints_are_refused_by_eval_infer_and_save(config, tmp_path):
    model = TinyDet(2)
    model.norm.running_var[2] = float("nan")
    path = tmp_path / "diverged.pth"  # as detkit saved diverged runs before this check
    torch.save({"format": "detkit-checkpoint", "version": 1, "model": model.state_dict(),
                "class_names": ["a", "b"]}, path)
    error_line(cli("eval", config, path, "--device", "cpu"), path, "'norm.running_var' holds NaN")
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), np.zeros((20, 20, 3), np.uint8))
    error_line(cli("infer", config, path, image, "--out", tmp_path / "out", "--device", "cpu"),
               path, "not finite")
    with pytest.raises(CheckpointError, match="not writing .*again.pth: the model's 'norm.running_var' holds NaN"):
        save_checkpoint(tmp_path / "again.pth", {"model": model.state_dict()})
    assert not (tmp_path / "again.pth").exists()


# ----------------------------------------------------------------------------------------------
# 3. earlier runs are moved aside, whatever they left
# ----------------------------------------------------------------------------------------------


def test_an_earlier_run_without_last_pth_is_moved_aside_whole(config, tmp_path):
    work = tmp_path / "w"
    assert train_cli(config, work).exit_code == 0
    (work / "last.pth").unlink()  # e.g. deleted to save space; epoch_N, best, metrics, log remain
    earlier = file_digests(work)
    assert {"metrics.jsonl", "train.log", "config.json", "epoch_3.pth", "best_voc07_ap50.pth"} <= set(earlier)

    result = train_cli(config, work, "--epochs", "2", "--seed", "9")
    assert result.exit_code == 0, result.output
    (previous,) = (work / "previous").iterdir()
    assert file_digests(previous) == earlier  # every file of the earlier run, byte for byte
    assert "already held a run; moved it to" in result.output
    # the new run's own files are complete and its own
    assert sorted(p.name for p in work.glob("epoch_*.pth")) == ["epoch_1.pth", "epoch_2.pth"]
    assert [json.loads(line)["epoch"] for line in (work / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["type"] == "epoch"] == [1, 2]
    assert "seed 9" in (work / "train.log").read_text() and "seed 3" not in (work / "train.log").read_text()


def test_a_run_killed_before_its_first_checkpoint_is_moved_aside_on_resume(config, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "train.log").write_text("an earlier attempt\n")
    (work / "metrics.jsonl").write_text('{"type": "train", "epoch": 1, "iter": 1, "loss": 1.0}\n')
    result = train_cli(config, work, "--resume", "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert "no checkpoint" in result.output and "starting from scratch" in result.output
    (previous,) = (work / "previous").iterdir()
    assert (previous / "train.log").read_text() == "an earlier attempt\n"
    assert (previous / "metrics.jsonl").read_text().startswith('{"type": "train"')


def test_a_folder_with_other_files_only_is_left_alone(config, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    assert train_cli(config, work, "--epochs", "1").exit_code == 0
    assert (work / "notes.txt").read_text() == "mine" and not (work / "previous").exists()


# ----------------------------------------------------------------------------------------------
# 4. --resume past a damaged last.pth;  5. kill -9 during a save
# ----------------------------------------------------------------------------------------------


def test_resume_falls_back_past_damaged_checkpoints_and_ends_like_an_uninterrupted_run(
        config, tmp_path, straight_run):
    work = tmp_path / "w"
    assert train_cli(config, work).exit_code == 0
    # last.pth and epoch_3.pth are one file (a hard link): damaging one damages both
    flip_bytes_of(work / "last.pth", load_checkpoint(work / "last.pth")["model"]["head.weight"])
    result = train_cli(config, work, "--resume")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if "--resume:" in line]
    assert len(warning) == 1 and "last.pth: checksum mismatch" in warning[0]
    assert f"resuming from {work / 'epoch_2.pth'} instead" in warning[0]
    same_state(work / "last.pth", straight_run / "last.pth")

    for path in work.glob("*.pth"):
        path.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    error_line(train_cli(config, work, "--resume"), "--resume: no readable checkpoint in", "last.pth:",
               "epoch_1.pth:")


KILL_CHILD = """
import io, os, sys, time
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads({threads})
import test_faults
from detkit.cli import main

real_save, calls = torch.save, []

def save_then_hang(obj, f, *args, **kwargs):
    calls.append(1)
    if len(calls) == {kill_at}:  # half of the checkpoint on disk, then wait for SIGKILL
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        open({marker!r}, "w").close()
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)

torch.save = save_then_hang
with test_faults.registered():
    main(["train", {config!r}, "--work-dir", {work!r}, "--device", "cpu"])
"""


def test_kill_9_during_a_checkpoint_save_then_resume_equals_the_uninterrupted_run(
        config, tmp_path, straight_run):
    work, marker = tmp_path / "w", tmp_path / "hanging"
    script = KILL_CHILD.format(tests=str(TESTS), threads=torch.get_num_threads(), kill_at=3,
                               marker=str(marker), config=str(config), work=str(work))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the training subprocess never reached its third save"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid-write of epoch 3's last.pth
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert load_checkpoint(work / "last.pth")["epoch"] == 2  # the atomic save kept the previous one
    (stale,) = temp_files(work)
    assert stale.startswith(".last.pth.")

    result = train_cli(config, work, "--resume")
    assert result.exit_code == 0, result.output
    assert f"removed 1 temporary file(s) an interrupted save left in {work}: {stale}" in result.output
    assert temp_files(work) == []
    same_state(work / "last.pth", straight_run / "last.pth")
    records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (straight_run / "metrics.jsonl").read_text().splitlines()]
    keys = ("type", "epoch", "iter", "lr", "loss", "voc07_ap50")
    assert [[r.get(k) for k in keys] for r in records] == [[r.get(k) for k in keys] for r in expected]


# ----------------------------------------------------------------------------------------------
# 6. file-system errors
# ----------------------------------------------------------------------------------------------


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written (as on a full disk)."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def test_full_disk_during_a_save_is_one_line_and_keeps_the_previous_checkpoint(config, tmp_path, monkeypatch):
    real_create, created = ckpt_io.create_new_file, []

    def create(path):
        created.append(path)
        handle = real_create(path)
        return _FullDisk(handle, room=1000) if len(created) == 2 else handle  # epoch 2's save

    monkeypatch.setattr(ckpt_io, "create_new_file", create)
    work = tmp_path / "w"
    result = train_cli(config, work)
    error_line(result, f"cannot write {work / 'last.pth'}: No space left on device",
               "the previous last.pth is unchanged")
    assert "unexpected pos" not in result.output
    assert load_checkpoint(work / "last.pth")["epoch"] == 1 and temp_files(work) == []


def test_full_disk_while_writing_config_json_is_one_line_and_leaves_no_partial_file(config, tmp_path, monkeypatch):
    real_write_text = Path.write_text

    def write_text(self, data, *args, **kwargs):
        if self.name.startswith(".config.json"):  # config.json's temporary file: the disk is full
            real_write_text(self, data[:10], *args, **kwargs)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    work = tmp_path / "w"
    result = train_cli(config, work)
    error_line(result, f"cannot write {work / 'config.json'}: No space left on device")
    assert not (work / "config.json").exists() and temp_files(work) == []


def test_a_log_file_that_cannot_be_written_any_more_is_reported_once(tmp_path, capfd):
    class FullDiskStream:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

        def close(self):
            pass

    log = logging.getLogger("detkit")
    with run_logging(tmp_path):
        (handler,) = [h for h in log.handlers if isinstance(h, logging.FileHandler)]
        handler.stream.close()
        handler.stream = FullDiskStream()
        for i in range(3):
            log.info("line %d", i)
    err = capfd.readouterr().err
    assert err.count(f"cannot write {tmp_path / 'train.log'}: No space left on device") == 1
    assert "Logging error" not in err and "line 2" in err  # the console still gets every line


def test_full_disk_while_logging_metrics_is_one_line_and_keeps_the_checkpoints(config, tmp_path, monkeypatch):
    from detkit.engine import hooks

    real_open = hooks._open_metrics

    def open_metrics(path, keep_until_iter):
        return _FullDisk(real_open(path, keep_until_iter), room=2500)  # fills up during epoch 2

    monkeypatch.setattr(hooks, "_open_metrics", open_metrics)
    work = tmp_path / "w"
    result = train_cli(config, work)
    error_line(result, f"cannot write {work / 'metrics.jsonl'}: No space left on device")
    assert load_checkpoint(work / "last.pth")["epoch"] >= 1


def _fs_child(root: str, mode: str) -> None:
    """Run in a subprocess (see test_file_system_errors_*): real read-only folders and a real full
    disk; prints what it observed as one JSON line."""
    root_dir = Path(root)
    observed = {}

    def make_read_only(path: Path) -> None:
        if mode == "mount":  # a read-only bind mount: refuses even root
            subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        else:
            path.chmod(0o555)

    def fill_disk(path: Path) -> None:
        with open(path, "wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC

    @contextmanager
    def before_checkpoint_of_epoch(epoch, action):
        real = CheckpointHook.after_epoch

        def after_epoch(self, trainer):
            if trainer.epochs_done == epoch:
                action()
            real(self, trainer)

        CheckpointHook.after_epoch = after_epoch
        try:
            yield
        finally:
            CheckpointHook.after_epoch = real

    def outcome(result, work: Path) -> dict:
        return {"code": result.exit_code, "output": result.output, "work": str(work),
                "files": sorted(p.name for p in work.iterdir()) if work.is_dir() else None,
                "last_epoch": load_checkpoint(work / "last.pth")["epoch"] if (work / "last.pth").is_file()
                else None}

    config = write_config(root_dir / "fs_cfg.py", fault_cfg(epochs=2, eval_interval=0))
    with registered():
        work = root_dir / "read_only_run"
        assert train_cli(config, work, "--epochs", "1").exit_code == 0
        before = file_digests(work)
        make_read_only(work)
        observed["read_only"] = {**outcome(train_cli(config, work), work),
                                 "unchanged": file_digests(work) == before}

        parent = root_dir / "read_only_parent"
        parent.mkdir()
        make_read_only(parent)
        observed["parent"] = outcome(train_cli(config, parent / "new"), parent / "new")

        work = root_dir / "mid_run"
        with before_checkpoint_of_epoch(2, lambda: make_read_only(root_dir / "mid_run")):
            observed["mid_run"] = outcome(train_cli(config, work), work)

        if mode == "mount":
            disk = root_dir / "small_disk"
            disk.mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
            work = disk / "run"
            with before_checkpoint_of_epoch(2, lambda: fill_disk(disk / "filler")):
                observed["full_disk"] = outcome(train_cli(config, work), work)
    print("OBSERVED " + json.dumps(observed))


@pytest.fixture(scope="module")
def fs_faults(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("fs")
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_faults; test_faults._fs_child"
    if os.geteuid() == 0:  # root ignores permission bits: use read-only mounts in a private namespace
        if not shutil.which("unshare"):
            pytest.skip("running as root without unshare(1): cannot make a folder read-only")
        command = ["unshare", "--user", "--map-root-user", "--mount", sys.executable, "-c",
                   f"{code}({str(root)!r}, 'mount')"]
    else:
        command = [sys.executable, "-c", f"{code}({str(root)!r}, 'chmod')"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "unshare" in proc.stderr and "OBSERVED" not in proc.stdout:
        pytest.skip(f"no private mount namespace here: {proc.stderr.strip()}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("OBSERVED ")]
    assert proc.returncode == 0 and lines, proc.stdout + proc.stderr
    if os.geteuid() != 0:
        for folder in root.rglob("*"):  # let pytest clean up
            if folder.is_dir():
                folder.chmod(0o755)
    return json.loads(lines[0][len("OBSERVED "):])


class _Result:
    def __init__(self, observed):
        self.exit_code, self.output, self.exception = observed["code"], observed["output"], None


REASONS = ("Read-only file system", "Permission denied")


def _assert_reason(line: str, reasons=REASONS) -> None:
    assert any(reason in line for reason in reasons), line


def test_file_system_errors_read_only_work_dir(fs_faults):
    seen = fs_faults["read_only"]
    _assert_reason(error_line(_Result(seen), f"cannot write to the work dir {seen['work']}"))
    assert seen["unchanged"] and seen["last_epoch"] == 1  # the earlier run is intact


def test_file_system_errors_unwritable_parent(fs_faults):
    seen = fs_faults["parent"]
    _assert_reason(error_line(_Result(seen), seen["work"]))


def test_file_system_errors_work_dir_made_read_only_mid_run(fs_faults):
    seen = fs_faults["mid_run"]
    line = error_line(_Result(seen), f"cannot write {seen['work']}/last.pth",
                      "the previous last.pth is unchanged")
    _assert_reason(line)
    assert seen["last_epoch"] == 1 and "epoch_1.pth" in seen["files"]
    assert not [name for name in seen["files"] if name.endswith(".tmp")]


def test_file_system_errors_real_full_disk(fs_faults):
    if "full_disk" not in fs_faults:
        pytest.skip("a small tmpfs needs a private mount namespace (root + unshare)")
    seen = fs_faults["full_disk"]
    error_line(_Result(seen), f"cannot write {seen['work']}/last.pth: No space left on device",
               "the previous last.pth is unchanged")
    assert "unexpected pos" not in seen["output"]
    assert seen["last_epoch"] == 1 and not [name for name in seen["files"] if name.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------
# 7. same-stem inference inputs
# ----------------------------------------------------------------------------------------------


def test_same_stem_inputs_never_overwrite_each_others_outputs(tmp_path):
    cfg = {"model": {"type": "fault_brightness_det"},
           "data": {"classes": ["a"], "val": {"type": "voc", "root": "unused", "transforms": {"size": 32}}}}
    config = write_config(tmp_path / "bright.py", cfg)
    ckpt = save_checkpoint(tmp_path / "b.pth", {"model": BrightnessDet(1).state_dict(), "class_names": ["a"]})
    folder = tmp_path / "images"
    folder.mkdir()
    cv2.imwrite(str(folder / "x.jpg"), np.full((40, 60, 3), 40, np.uint8))
    cv2.imwrite(str(folder / "x.png"), np.full((40, 60, 3), 200, np.uint8))
    cv2.imwrite(str(folder / "X_2.png"), np.full((40, 60, 3), 120, np.uint8))  # takes x_2 on a Mac
    out = tmp_path / "out"
    result = cli("infer", config, ckpt, folder, "--out", out, "--save-txt", "--save-json", "--conf", "0",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    scores = {p.name: float(p.read_text().split()[-1]) for p in (out / "labels").iterdir()}
    # sorted input order: X_2.png, x.jpg, x.png; each image's own score (its brightness)
    assert scores == {"X_2.txt": pytest.approx(120 / 255, abs=1e-4), "x.txt": pytest.approx(40 / 255, abs=1e-4),
                      "x_3.txt": pytest.approx(200 / 255, abs=1e-4)}
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".jpg", ".png")) == ["X_2.png", "x.jpg", "x_3.png"]
    records = json.loads((out / "predictions.json").read_text())
    assert sorted(r["image_id"] for r in records) == [0, 1, 2]


# ----------------------------------------------------------------------------------------------
# 8. files that are not checkpoints;  9. --unsafe-load
# ----------------------------------------------------------------------------------------------


def _not_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    random_bytes = bytes([0x17]) + np.random.RandomState(0).bytes(4095)
    np.savez(folder / "arrays.npz", w=np.zeros(3))
    header = b'{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    files = {
        "random": (folder / "random.pth", random_bytes, "neither a zip archive"),
        "text": (folder / "text.pth", b"model weights are on the shared drive\n", "a text file"),
        "npz": (folder / "arrays.npz", None, "a zip archive without data.pkl"),
        "safetensors": (folder / "w.safetensors", struct.pack("<Q", len(header)) + header + b"\0" * 4,
                        "a safetensors file"),
        "truncated": (folder / "half.pth", None, "truncated or corrupt"),
    }
    whole = save_checkpoint(folder / "whole.pth", {"model": TinyDet(2).state_dict(), "class_names": ["a", "b"]})
    (folder / "half.pth").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    torch.save({"hello": "world"}, folder / "dict.pth")
    files["not_weights"] = (folder / "dict.pth", None, "neither a detkit checkpoint nor a model state dict")
    for path, data, _ in files.values():
        if data is not None:
            path.write_bytes(data)
    return {k: (p, msg) for k, (p, _, msg) in files.items()}


def test_files_that_are_not_checkpoints_get_the_right_advice(config, tmp_path):
    for kind, (path, message) in _not_checkpoints(tmp_path).items():
        line = error_line(cli("eval", config, path, "--device", "cpu"), path, message)
        assert "--unsafe-load" not in line, kind  # never advise disabling the safety check here


def test_pickled_checkpoints_are_refused_and_unsafe_load_warns_every_time(config, tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"format": "detkit-checkpoint", "version": 1, "model": TinyDet(2).state_dict(),
                "class_names": ["a", "b"], "note": Marker()}, path)
    error_line(cli("eval", config, path, "--device", "cpu"), path, "pickled Python objects",
               "Marker", "--unsafe-load")
    for _ in range(2):
        result = cli("eval", config, path, "--device", "cpu", "--unsafe-load")
        assert result.exit_code == 0, result.output
        assert result.output.count("loading with --unsafe-load: unpickling it runs code") == 1


# ----------------------------------------------------------------------------------------------
# 10. configs;  11. non-UTF-8 file names
# ----------------------------------------------------------------------------------------------


def test_a_config_calling_sys_exit_and_a_non_utf8_json_config_are_errors(tmp_path):
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\nmodel = dict(type='fault_det')\nsys.exit(0)\n")
    error_line(cli("train", exits, "--work-dir", tmp_path / "w"), exits, "called sys.exit(0)")
    assert not (tmp_path / "w").exists()
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('{"model": {"type": "caf\u00e9"}}'.encode("latin-1"))
    error_line(cli("config", "show", latin1), latin1, "not UTF-8 text (byte 0xe9 at offset 23)")


def test_non_utf8_file_names_are_logged_with_escapes(config, tmp_path):
    cfg = fault_cfg(epochs=1, eval_interval=0, bad_sample="skip")
    cfg["data"]["train"]["type"] = "fault_bad_name_ds"
    work = tmp_path / "w"
    result = train_cli(write_config(tmp_path / "bad_name.py", cfg), work)
    assert result.exit_code == 0, result.output
    assert "Logging error" not in result.output
    log = (work / "train.log").read_text(encoding="utf-8")
    assert "/data/caf\\xe9 \\xff.jpg: cannot decode the image" in log
    assert "training finished" in log  # the log went on after that line


def test_run_logging_writes_surrogates_as_escapes(tmp_path, capfd):
    with run_logging(tmp_path):
        logging.getLogger("detkit").warning("skipping %s", Path(os.fsdecode(b"/x/\xff.png")))
        logging.getLogger("detkit").info("still logging")
    log = (tmp_path / "train.log").read_text(encoding="utf-8")
    assert "skipping /x/\\xff.png" in log and "still logging" in log
    assert "Logging error" not in capfd.readouterr().err


# ----------------------------------------------------------------------------------------------
# 12. load_from with other classes;  13. file modes
# ----------------------------------------------------------------------------------------------


def test_load_from_compares_class_names_in_order(config, tmp_path):
    assert train_cli(config, tmp_path / "first", "--epochs", "1").exit_code == 0
    weights = tmp_path / "first" / "last.pth"
    reordered = fault_cfg(epochs=1, eval_interval=0, load_from=str(weights))
    reordered["data"]["classes"] = ["b", "a"]
    error_line(train_cli(write_config(tmp_path / "reordered.py", reordered), tmp_path / "second"),
               f"train.load_from {weights} has classes ['a', 'b'] but the training data has ['b', 'a']",
               "model.backbone.pretrained")
    same = fault_cfg(epochs=1, eval_interval=0, load_from=str(weights))
    result = train_cli(write_config(tmp_path / "same.py", same), tmp_path / "third")
    assert result.exit_code == 0 and f"initial weights from {weights}" in result.output


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_checkpoints_follow_the_umask_like_every_other_output(config, tmp_path, umask):
    old = os.umask(umask)
    try:
        result = train_cli(config, tmp_path / "w", "--epochs", "1")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "w").iterdir() if p.is_file()}
    expected = 0o666 & ~umask
    assert modes["last.pth"] == modes["epoch_1.pth"] == modes["config.json"] == modes["train.log"] == expected


def test_every_guarantee_in_the_docs_names_a_test_that_exists():
    import re

    text = (TESTS.parent / "docs" / "training.md").read_text(encoding="utf-8")
    section = text.split("## What detkit guarantees", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(test_\w+\*?)`", section))
    defined = {name for module in ("test_faults.py", "test_runner.py", "test_kfold.py")
               for name in re.findall(r"^def (test_\w+)", (TESTS / module).read_text(), re.M)}
    assert len(named) >= 15
    for name in named:
        assert any(d.startswith(name[:-1]) if name.endswith("*") else d == name for d in defined), name
