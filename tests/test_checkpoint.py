"""Checkpoints: weights-only safety, atomic writes, corrupt/unsafe/plain files, RNG round trips."""

from __future__ import annotations

import os
import pickle
import random
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from detkit import checkpoint as ck
from detkit.checkpoint import (
    get_rng_state,
    is_full_checkpoint,
    link_or_copy,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
    set_rng_state,
)
from detkit.errors import CheckpointError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)


class NotAllowed:
    """Any user class: torch.load(weights_only=True) must refuse to unpickle it."""

    def __init__(self):
        self.value = 3


def full_state():
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    model.fc(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt, {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": {"last_iter": 3},
        "scaler": None, "epoch": 1, "iter": 10, "best_metric": 0.5, "best_metric_name": "voc07_ap50",
        "rng": get_rng_state(), "class_names": ["cat", "dog"], "config": {"train": {"epochs": 2}},
        "meta": ck.checkpoint_meta(),
    }


def test_checkpoint_round_trip_is_weights_only_loadable(tmp_path):
    model, opt, state = full_state()
    path = save_checkpoint(tmp_path / "a.pth", state)
    # The file itself loads with plain torch.load(weights_only=True): nothing pickled.
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "detkit-checkpoint" and raw["version"] == 1
    assert raw["class_names"] == ["cat", "dog"] and raw["config"] == {"train": {"epochs": 2}}
    for key, value in model.state_dict().items():
        assert torch.equal(raw["model"][key], value)
    assert raw["optimizer"]["state"][4]["momentum_buffer"].shape == model.fc.weight.shape  # fc.weight
    loaded = load_checkpoint(path)
    assert is_full_checkpoint(loaded) and loaded["epoch"] == 1 and loaded["best_metric"] == 0.5
    opt2 = torch.optim.SGD(Net().parameters(), lr=0.1, momentum=0.9, nesterov=True)
    opt2.load_state_dict(loaded["optimizer"])
    assert opt2.param_groups[0]["nesterov"] is True


def test_save_refuses_objects_that_need_pickle(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint\.extra\.obj: a .*NotAllowed"):
        save_checkpoint(tmp_path / "x.pth", {"model": {}, "extra": {"obj": NotAllowed()}})
    with pytest.raises(CheckpointError, match=r"checkpoint\.rng: .*ndarray"):
        save_checkpoint(tmp_path / "x.pth", {"model": {}, "rng": np.zeros(3)})
    with pytest.raises(CheckpointError, match="TorchVersion"):
        save_checkpoint(tmp_path / "x.pth", {"model": {}, "version_info": torch.__version__})
    assert not list(tmp_path.iterdir())  # nothing written


def test_crash_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    _, _, state = full_state()
    path = save_checkpoint(tmp_path / "last.pth", state)
    before = path.read_bytes()
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crashing_save)
    state["epoch"] = 2
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, state)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temporaries left


def test_save_writes_a_temporary_in_the_same_folder_then_renames(tmp_path, monkeypatch):
    calls = []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("replace", str(a), str(b))), real_replace(a, b))[1])
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(("fsync",)), real_fsync(fd))[1])
    save_checkpoint(tmp_path / "sub" / "m.pth", {"model": {"w": torch.ones(2)}})
    kinds = [c[0] for c in calls]
    assert kinds == ["fsync", "replace", "fsync"]  # file data, rename, folder entry
    _, src, dst = calls[1]
    assert os.path.dirname(src) == str(tmp_path / "sub") and dst == str(tmp_path / "sub" / "m.pth")


def test_unsafe_checkpoint_is_refused_unless_allowed(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"format": "detkit-checkpoint", "version": 1, "model": Net().state_dict(),
                "extra": NotAllowed()}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and "--unsafe-load" in msg and "NotAllowed" in msg
    loaded = load_checkpoint(path, unsafe=True)
    assert isinstance(loaded["extra"], NotAllowed)


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "garbage", "folder"])
def test_unreadable_files_name_the_path(tmp_path, damage):
    good = save_checkpoint(tmp_path / "good.pth", {"model": Net().state_dict()})
    path = tmp_path / "bad.pth"
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all" * 50)
    elif damage == "folder":
        path.mkdir()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_plain_state_dicts_are_model_weights_only(tmp_path):
    net = Net()
    sd = net.state_dict()
    cases = {
        "plain.pth": sd,
        "mmdet.pth": {"state_dict": sd, "meta": {"epoch": 3}},
        "ddp.pth": {f"module.{k}": v for k, v in sd.items()},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        loaded = load_checkpoint(tmp_path / name)
        assert loaded["format"] == "state-dict" and not is_full_checkpoint(loaded), name
        assert loaded["class_names"] is None
        assert set(loaded["model"]) == set(sd), name
        fresh = Net()
        load_model_weights(fresh, loaded)
        for key, value in sd.items():
            assert torch.equal(fresh.state_dict()[key], value)
    torch.save({"hello": "world"}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="neither a detkit checkpoint nor a model state dict"):
        load_checkpoint(tmp_path / "other.pth")


def test_newer_checkpoint_version_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "v9.pth", {"format": "detkit-checkpoint", "version": 9, "model": {}})
    with pytest.raises(CheckpointError, match="version 9 is newer"):
        load_checkpoint(path)


def test_weight_mismatch_lists_keys():
    class Other(Net):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 5)
            self.extra = nn.Linear(2, 2)

    with pytest.raises(CheckpointError) as info:
        load_model_weights(Net(), {"model": Other().state_dict()}, source="x.pth")
    msg = str(info.value)
    assert "x.pth" in msg and "fc.weight (5, 4) vs model (2, 4)" in msg and "unexpected: extra.weight" in msg


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)
    save_checkpoint(tmp_path / "rng.pth", {"model": {}, "rng": get_rng_state()})
    expected = (torch.rand(5), np.random.rand(5), np.random.normal(), [random.random() for _ in range(5)],
                random.gauss(0, 1))
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.pth")["rng"])
    got = (torch.rand(5), np.random.rand(5), np.random.normal(), [random.random() for _ in range(5)],
           random.gauss(0, 1))
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1]) and got[2] == expected[2]
    assert got[3] == expected[3] and got[4] == expected[4]


def test_link_or_copy_keeps_old_content_when_source_is_replaced(tmp_path):
    a = save_checkpoint(tmp_path / "last.pth", {"model": {"w": torch.zeros(1)}})
    link_or_copy(a, tmp_path / "epoch_1.pth")
    save_checkpoint(a, {"model": {"w": torch.ones(1)}})
    assert load_checkpoint(tmp_path / "epoch_1.pth")["model"]["w"].item() == 0.0
    assert load_checkpoint(a)["model"]["w"].item() == 1.0


def test_pickle_errors_other_than_weights_only_are_corruption(tmp_path, monkeypatch):
    path = tmp_path / "c.pth"
    path.write_bytes(b"PK\x03\x04" + b"x" * 10)  # looks like a zip, so torch.load gets to read it

    def fail(*a, **k):
        raise pickle.UnpicklingError("invalid load key, 'x'.")

    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        load_checkpoint(path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(zipfile.BadZipFile("bad")))
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
