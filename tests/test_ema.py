"""EMA of the weights (detkit/engine/ema.py): the update rule against a hand-written recursion,
buffers copied, only real optimiser steps counted, checkpoints holding the average as ``model``,
evaluation on the average, and exact resume with EMA on."""

from __future__ import annotations

import math

import pytest
import torch
from test_runner import CrashAfterEpoch, read_jsonl, tiny, tiny_cfg  # noqa: F401 (fixture)
from test_trainer import TinyDataset, TinyDet, make_loader

from detkit.checkpoint import load_checkpoint
from detkit.engine.ema import EMAHook, ema_decay
from detkit.engine.hooks import Hook
from detkit.engine.runner import train
from detkit.engine.trainer import Trainer
from detkit.errors import ConfigError
from detkit.evaluation.run import evaluate


class Snapshots(Hook):
    """The model's parameters after every optimiser step (registered after the EMA hook's)."""

    priority = 6

    def __init__(self):
        self.taken = []

    def before_train(self, trainer):
        model = trainer.model
        trainer.optimizer.register_step_post_hook(
            lambda *_: self.taken.append({k: v.detach().clone() for k, v in model.named_parameters()}))


def test_update_follows_the_ramped_recursion_and_copies_buffers():
    torch.manual_seed(0)
    model = TinyDet(2)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    ema, snaps = EMAHook(decay=0.9, tau=3.0), Snapshots()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = Trainer(model, opt, make_loader(TinyDataset(num=8), batch_size=2), max_epochs=2,
                      hooks=[ema, snaps])
    trainer.train()

    assert ema.updates == len(snaps.taken) == 8
    expected = {k: v.double() for k, v in start.items()}
    for n, params in enumerate(snaps.taken, start=1):
        d = 0.9 * (1 - math.exp(-n / 3.0))
        assert ema_decay(n, 0.9, 3.0) == pytest.approx(d)
        expected = {k: d * expected[k] + (1 - d) * params[k].double() for k in expected}
    for name, value in ema.module.named_parameters():
        torch.testing.assert_close(value.double(), expected[name], rtol=1e-5, atol=1e-6)
        assert not torch.equal(value, dict(model.named_parameters())[name])  # really an average
    for name, value in ema.module.named_buffers():  # BatchNorm statistics are copied, not averaged
        assert torch.equal(value, dict(model.named_buffers())[name]), name
    assert trainer.eval_model is ema.module


def test_only_real_optimiser_steps_update_the_average():
    model = TinyDet(2)
    ema = EMAHook(decay=0.9, tau=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # 6 images in batches of 2: 3 iterations, accumulate=2 steps after iterations 2 and 3 (flush)
    trainer = Trainer(model, opt, make_loader(TinyDataset(num=6), batch_size=2), max_epochs=1,
                      hooks=[ema], accumulate=2)
    trainer.train()
    assert ema.updates == 2


@pytest.mark.parametrize("bad", [dict(decay=1.0), dict(decay=0), dict(tau=0), dict(decay=True)])
def test_bad_settings_are_config_errors(bad):
    with pytest.raises(ConfigError, match="train.ema"):
        EMAHook(**bad)


def test_unknown_ema_key_is_a_config_error(tiny, tmp_path):
    with pytest.raises(ConfigError, match="train.ema.decy: unknown key.*decay"):
        train(tiny_cfg(ema=dict(decy=0.9)), work_dir=tmp_path / "w", device="cpu")


def test_checkpoints_hold_the_average_and_evaluation_scores_it(tiny, tmp_path, monkeypatch):
    import detkit.evaluation.loop as loop

    scored = []
    real = loop.run_evaluation

    def recording(model, *args, **kwargs):
        scored.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(loop, "run_evaluation", recording)
    cfg = tiny_cfg(epochs=2, ema=dict(decay=0.8, tau=2.0))
    summary = train(cfg, work_dir=tmp_path / "w", device="cpu")
    last = load_checkpoint(summary["last_checkpoint"])
    assert last["ema"]["updates"] == 6 and last["ema"]["decay"] == 0.8 and last["ema"]["tau"] == 2.0
    averaged, trained = last["model"], last["ema"]["train_model"]
    assert set(averaged) == set(trained)
    assert any(not torch.equal(averaged[k], trained[k]) for k in averaged)
    # the evaluation after the last epoch scored the average, not the trained weights
    assert len(scored) == 2 and all(torch.equal(scored[-1][k], averaged[k]) for k in averaged)

    # detkit eval (like infer and export) loads `model`: the averaged weights
    monkeypatch.setattr(loop, "run_evaluation", real)
    evaluate(cfg, summary["last_checkpoint"], metric="voc07", device="cpu", results_out=tmp_path / "a.json")
    torch.save({"model": trained}, tmp_path / "trained.pth")
    evaluate(cfg, tmp_path / "trained.pth", metric="voc07", device="cpu", results_out=tmp_path / "t.json")
    assert (tmp_path / "a.json").read_text() != (tmp_path / "t.json").read_text()


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_ema_is_bit_identical(tiny, tmp_path, workers):
    cfg = tiny_cfg(num_workers=workers, epochs=2, ema=dict(decay=0.9, tau=2.0))
    train(cfg, work_dir=tmp_path / "straight", device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, work_dir=tmp_path / "resumed", device="cpu", extra_hooks=[CrashAfterEpoch(1)])
    assert load_checkpoint(tmp_path / "resumed" / "last.pth")["ema"]["updates"] == 3
    train(cfg, work_dir=tmp_path / "resumed", device="cpu", resume="auto")

    a = load_checkpoint(tmp_path / "straight" / "last.pth")
    b = load_checkpoint(tmp_path / "resumed" / "last.pth")
    assert a["ema"]["updates"] == b["ema"]["updates"] == 6
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"]["train_model"][key], b["ema"]["train_model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][index]["momentum_buffer"])
    ra, rb = (read_jsonl(tmp_path / d / "metrics.jsonl") for d in ("straight", "resumed"))
    keys = ("type", "epoch", "iter", "loss", "voc07_ap50")
    assert [tuple(r.get(k) for k in keys) for r in ra] == [tuple(r.get(k) for k in keys) for r in rb]


def test_resume_without_ema_continues_from_the_trained_weights(tiny, tmp_path, caplog):
    cfg = tiny_cfg(epochs=1, ema=dict(decay=0.9, tau=2.0))
    train(cfg, work_dir=tmp_path / "w", device="cpu")
    trained = load_checkpoint(tmp_path / "w" / "last.pth")["ema"]["train_model"]
    seen = {}

    class Grab(Hook):
        def before_train(self, trainer):
            seen.update({k: v.clone() for k, v in trainer.model.state_dict().items()})

    train(tiny_cfg(epochs=2, ema=None), work_dir=tmp_path / "w", device="cpu", resume="auto",
          extra_hooks=[Grab()])
    for key, value in trained.items():
        assert torch.equal(seen[key], value), key
    assert "continues from the trained (not averaged) weights" in caplog.text
