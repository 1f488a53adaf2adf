"""The Trainer loop and its hooks: loss summation, accumulation, clipping, NaN guard, hook order,
logging, checkpoint files and plots.

Also defines the tiny detector and data set that test_runner.py / test_distributed.py / the train
benchmark register in-process (``TinyDet``, ``TinyDataset``): they honour the contracts of
docs/architecture.md (targets with meta, detections mapped to original pixels when metas are given).
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from detkit.engine.hooks import CheckpointHook, Hook, IterTimerHook, LoggerHook, PlotHook
from detkit.engine.trainer import NonFiniteLossError, Trainer
from detkit.errors import ConfigError
from detkit.schema import resolve_train_config
from detkit.structures import boxes_to_original


# ----------------------------------------------------------------------------------------------
# Tiny components shared by the engine tests
# ----------------------------------------------------------------------------------------------


class TinyDet(nn.Module):
    """Regresses one box per image (sigmoid cx, cy, w, h) and classifies it.

    Training: ``loss_box`` (L1 to the first ground-truth box, normalised by the input size),
    ``loss_cls`` (cross-entropy) and a statistic ``stat_num_gt`` that must be logged, not summed.
    Eval: one detection per class (the regressed box, scored by the class probability).
    ``nan_ids``: image ids whose presence in a batch makes the loss NaN (to test the NaN guard).
    """

    def __init__(self, num_classes: int, class_names=None, width: int = 8, dropout: float = 0.2,
                 batch_norm: bool = True, nan_ids=()):
        super().__init__()
        self.num_classes, self.class_names = num_classes, class_names
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width) if batch_norm else nn.Identity()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, 4 + num_classes)
        self.nan_ids = set(nan_ids)

    def forward(self, images, targets=None, metas=None):
        n, _, h, w = images.shape
        feats = torch.relu(self.norm(self.conv(images))).mean(dim=(2, 3))
        out = self.head(self.drop(feats))
        cxcywh = torch.sigmoid(out[:, :4].float())
        scale = images.new_tensor([w, h, w, h]).float()
        boxes = torch.cat([cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1) * scale
        logits = out[:, 4:].float()
        if self.training:
            gt_boxes = torch.stack([t["boxes"][0] for t in targets])
            gt_labels = torch.stack([t["labels"][0] for t in targets])
            loss_box = (boxes / scale - gt_boxes / scale).abs().mean()
            loss_cls = nn.functional.cross_entropy(logits, gt_labels)
            if any(t.get("image_id") in self.nan_ids for t in targets):
                loss_box = loss_box * float("nan")
            return {"loss_box": loss_box, "loss_cls": loss_cls,
                    "stat_num_gt": torch.tensor(float(sum(len(t["boxes"]) for t in targets)))}
        probs = logits.softmax(-1)
        dets = []
        for i in range(n):
            b = boxes[i : i + 1].repeat(self.num_classes, 1)
            if metas is not None:
                b = boxes_to_original(b, metas[i])
            dets.append({"boxes": b, "scores": probs[i], "labels": torch.arange(self.num_classes)})
        return dets


class TinyDataset(torch.utils.data.Dataset):
    """Coloured rectangles on noise. Original images are ``orig`` (H0, W0); samples are resized to
    ``size`` x ``size`` (meta records the scale). ``augment``: random horizontal flip (torch RNG) and
    brightness (numpy RNG), so shuffling *and* augmentation randomness reach the model."""

    def __init__(self, classes=("a", "b"), num: int = 8, size: int = 32, orig=(40, 48),
                 augment: bool = False, id_offset: int = 100):
        self.classes = tuple(classes)
        self.num, self.size, self.orig, self.augment, self.id_offset = num, size, tuple(orig), augment, id_offset

    def __len__(self):
        return self.num

    def original(self, index: int):
        """(image uint8 HWC, boxes [1,4] original pixels, label) of sample ``index``."""
        rng = np.random.RandomState(index)
        h0, w0 = self.orig
        image = rng.randint(0, 60, size=(h0, w0, 3)).astype(np.uint8)
        label = index % len(self.classes)
        x1, y1 = rng.randint(0, w0 // 2), rng.randint(0, h0 // 2)
        x2, y2 = x1 + rng.randint(8, w0 // 2), y1 + rng.randint(8, h0 // 2)
        image[y1:y2, x1:x2, label] = 220
        return image, np.array([[x1, y1, x2, y2]], np.float32), label

    def __getitem__(self, index: int):
        image, boxes, label = self.original(index)
        h0, w0 = self.orig
        s = self.size
        rows = (np.arange(s) * h0 / s).astype(int)
        cols = (np.arange(s) * w0 / s).astype(int)
        image = image[rows][:, cols].astype(np.float32) / 255.0
        sx, sy = s / w0, s / h0
        boxes = boxes * np.array([sx, sy, sx, sy], np.float32)
        if self.augment:
            image = image * np.random.uniform(0.8, 1.2)
            if torch.rand(()) < 0.5:
                image = image[:, ::-1]
                boxes = np.stack([s - boxes[:, 2], boxes[:, 1], s - boxes[:, 0], boxes[:, 3]], 1)
        meta = {"orig_size": (h0, w0), "input_size": (s, s), "scale": (sx, sy), "pad": (0.0, 0.0),
                "file_name": f"{index}.png", "path": f"/nowhere/{index}.png"}
        target = {"boxes": torch.as_tensor(boxes, dtype=torch.float32),
                  "labels": torch.tensor([label], dtype=torch.int64),
                  "difficult": torch.zeros(1, dtype=torch.bool), "iscrowd": torch.zeros(1, dtype=torch.bool),
                  "image_id": self.id_offset + index, "meta": meta}
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).clamp(0, 1), target


def simple_collate(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def make_loader(dataset=None, batch_size=2, shuffle=False):
    dataset = dataset or TinyDataset(num=4)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=simple_collate)


def params_of(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Recorder(Hook):
    def __init__(self, name, log, priority=50):
        self.name, self.log, self.priority = name, log, priority

    def __getattribute__(self, item):
        if item in ("before_train", "after_train", "before_epoch", "after_epoch", "before_iter",
                    "after_iter", "after_backward"):
            return lambda trainer: self.log.append((self.name, item, trainer.epoch, trainer.iter))
        return object.__getattribute__(self, item)


# ----------------------------------------------------------------------------------------------
# One step: loss terms, accumulation, clipping
# ----------------------------------------------------------------------------------------------


class TwoTermDet(nn.Module):
    """Linear model with two loss terms and a statistic; the reference gradient is easy to compute."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))

    def losses(self, images):
        x = images.mean(dim=(2, 3))  # [N, 3]
        a = (x @ self.w).pow(2).mean()
        b = self.w.abs().sum() * 0.1
        return a, b

    def forward(self, images, targets=None):
        a, b = self.losses(images)
        return {"loss_a": a, "loss_b": b, "extra": torch.tensor(7.0)}


def test_step_sums_loss_terms_and_logs_stats_separately():
    torch.manual_seed(0)
    model = TwoTermDet()
    loader = make_loader()
    images, _ = next(iter(loader))
    ref = TwoTermDet()
    ref.load_state_dict(model.state_dict())
    a, b = ref.losses(images)
    (a + b).backward()
    expected = ref.w.detach() - 0.1 * ref.w.grad

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, opt, loader, max_epochs=1)
    trainer.run_step(next(iter(loader)))
    torch.testing.assert_close(model.w.detach(), expected)
    values = trainer.log_values
    a, b = float(a.detach()), float(b.detach())
    assert values["loss"] == pytest.approx(a + b)
    assert values["loss_a"] == pytest.approx(a) and values["loss_b"] == pytest.approx(b)
    assert values["extra"] == 7.0 and values["lr"] == 0.1


def test_gradient_accumulation_equals_one_step_on_the_mean_gradient():
    torch.manual_seed(0)
    data = TinyDataset(num=6)
    loader = make_loader(data, batch_size=2)
    batches = list(loader)
    model = TwoTermDet()
    start = model.w.detach().clone()

    def grad_of(images):
        ref = TwoTermDet()
        ref.w.data.copy_(start)
        a, b = ref.losses(images)
        (a + b).backward()
        return ref.w.grad

    # 3 batches, accumulate=2: step 1 on mean(g0, g1); the epoch's last window holds g2 alone.
    g = [grad_of(b[0]) for b in batches]
    expected_after_first = start - 0.1 * (g[0] + g[1]) / 2

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, opt, loader, max_epochs=1, accumulate=2)
    steps = []
    orig_step = opt.step
    opt.step = lambda *a, **k: (steps.append(trainer.inner_iter), orig_step(*a, **k))[1]
    trainer.inner_iter = 0
    trainer.run_step(batches[0])
    torch.testing.assert_close(model.w.detach(), start)  # no step yet
    trainer.inner_iter = 1
    trainer.run_step(batches[1])
    torch.testing.assert_close(model.w.detach(), expected_after_first)
    trainer.inner_iter = 2
    mid = model.w.detach().clone()
    ref = TwoTermDet()
    ref.w.data.copy_(mid)
    a, b = ref.losses(batches[2][0])
    (a + b).backward()
    trainer.run_step(batches[2])
    # the tail window has one batch: scaled by 1/1, not 1/2
    torch.testing.assert_close(model.w.detach(), mid - 0.1 * ref.w.grad)
    assert steps == [1, 2]


@pytest.mark.parametrize("key, value", [("nan_policy", "ignore"), ("accumulate", 0), ("grad_clip", -1.0),
                                        ("amp_dtype", "fp8")])
def test_trainer_arguments_fail_like_the_config_keys(key, value):
    # one schema: a Trainer built from Python rejects what a config would, with the same message
    with pytest.raises(ConfigError) as from_config:
        resolve_train_config({key: value})
    model = TinyDet(2)
    with pytest.raises(ConfigError) as from_trainer:
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), make_loader(), max_epochs=1, **{key: value})
    assert str(from_trainer.value) == str(from_config.value)


def test_grad_clip_limits_the_global_norm():
    model = TwoTermDet()
    model.w.data.mul_(100)  # huge gradient
    loader = make_loader()
    batch = next(iter(loader))
    ref = TwoTermDet()
    ref.load_state_dict(model.state_dict())
    a, b = ref.losses(batch[0])
    (a + b).backward()
    grad = ref.w.grad
    assert grad.norm() > 1.0
    expected = ref.w.detach() - 0.5 * grad * (1.0 / (grad.norm() + 1e-6))

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    trainer = Trainer(model, opt, loader, max_epochs=1, grad_clip=1.0)
    trainer.run_step(batch)
    torch.testing.assert_close(model.w.detach(), expected)
    assert trainer.log_values["grad_norm"] == pytest.approx(float(grad.norm()), rel=1e-5)


def test_detector_must_return_loss_terms():
    class NoLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1))

        def forward(self, images, targets=None):
            return {"total": self.p.sum()}

    model = NoLoss()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), make_loader(), max_epochs=1)
    with pytest.raises(TypeError, match="no 'loss_\\*' terms"):
        trainer.run_step(next(iter(make_loader())))


# ----------------------------------------------------------------------------------------------
# NaN guard
# ----------------------------------------------------------------------------------------------


def test_nan_loss_raises_naming_iteration_and_image_ids():
    torch.manual_seed(0)
    model = TinyDet(2, nan_ids={103})
    loader = make_loader(TinyDataset(num=6), batch_size=2)  # image ids 100..105; 103 in batch 2
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, max_epochs=1)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    msg = str(info.value)
    assert "iteration 1 " in msg and "batch 2/3" in msg
    assert "[102, 103]" in msg and "loss_box=nan" in msg


def test_nan_skip_drops_the_batch_counts_and_logs_it(caplog):
    torch.manual_seed(0)
    data = TinyDataset(num=4)
    # No BatchNorm: the skipped batch's forward pass would still update its running statistics.
    model = TinyDet(2, dropout=0.0, batch_norm=False, nan_ids={102, 103})
    reference = TinyDet(2, dropout=0.0, batch_norm=False)
    reference.load_state_dict(model.state_dict())
    loader = make_loader(data, batch_size=2)

    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, max_epochs=1,
                      nan_policy="skip")
    with caplog.at_level(logging.WARNING, logger="detkit"):
        trainer.train()
    assert trainer.skipped_batches == 1
    assert any("non-finite loss" in r.message and "[102, 103]" in r.message for r in caplog.records)
    # Same as training on the first batch only.
    ref_trainer = Trainer(reference, torch.optim.SGD(reference.parameters(), lr=0.1),
                          make_loader(torch.utils.data.Subset(data, [0, 1]), batch_size=2), max_epochs=1)
    ref_trainer.train()
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, msg=key)


def test_nan_skip_every_batch_means_divergence():
    model = TinyDet(2, nan_ids=set(range(100, 110)))
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), make_loader(), max_epochs=1,
                      nan_policy="skip")
    with pytest.raises(NonFiniteLossError, match="diverged"):
        trainer.train()


# ----------------------------------------------------------------------------------------------
# Hooks
# ----------------------------------------------------------------------------------------------


def test_hook_lifecycle_order_and_priority():
    torch.manual_seed(0)
    log = []
    hooks = [Recorder("late", log, priority=70), Recorder("early", log, priority=10),
             Recorder("mid", log, priority=50)]
    model = TinyDet(2)
    loader = make_loader(TinyDataset(num=4), batch_size=2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), loader, max_epochs=2, hooks=hooks)
    trainer.train()
    events = [(e, ep, it) for name, e, ep, it in log if name == "early"]
    expected = [("before_train", 0, 0)]
    for epoch in range(2):
        expected.append(("before_epoch", epoch, epoch * 2))
        for i in range(2):
            it = epoch * 2 + i
            expected += [("before_iter", epoch, it), ("after_backward", epoch, it), ("after_iter", epoch, it)]
        expected.append(("after_epoch", epoch, epoch * 2 + 2))
    expected.append(("after_train", 1, 4))
    assert events == expected
    # every event: priority order early(10) < mid(50) < late(70)
    names = [name for name, e, *_ in log if e == "before_iter"]
    assert names[:3] == ["early", "mid", "late"]
    assert trainer.epochs_done == 2 and trainer.iter == 4 and trainer.completed


def test_after_train_runs_when_training_fails():
    log = []
    model = TinyDet(2, nan_ids={100})
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), make_loader(), max_epochs=1,
                      hooks=[Recorder("r", log)])
    with pytest.raises(NonFiniteLossError):
        trainer.train()
    assert log[-1][1] == "after_train" and not trainer.completed


def test_non_hook_is_rejected():
    model = TinyDet(2)
    with pytest.raises(TypeError, match="is not a hook"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), make_loader(), max_epochs=1,
                hooks=[object()])


def test_channels_last_reaches_the_model():
    seen = []

    class Probe(TinyDet):
        def forward(self, images, targets=None):
            seen.append(images.is_contiguous(memory_format=torch.channels_last))
            return super().forward(images, targets)

    model = Probe(2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), make_loader(), max_epochs=1,
                      channels_last=True)
    trainer.train()
    assert seen and all(seen)


def test_amp_requested_on_cpu_is_disabled_with_one_warning(caplog):
    model = TinyDet(2)
    with caplog.at_level(logging.WARNING, logger="detkit"):
        trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), make_loader(), max_epochs=1,
                          amp=True, amp_dtype="fp16")
    assert not trainer.amp.enabled and not trainer.scaler.is_enabled()
    assert sum("amp=True is ignored on cpu" in r.message for r in caplog.records) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_amp_on_cuda_trains(dtype):
    torch.manual_seed(0)
    model = TinyDet(2).cuda()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), make_loader(), max_epochs=1,
                      device="cuda", amp=True, amp_dtype=dtype)
    assert trainer.amp.enabled and trainer.scaler.is_enabled() == (dtype == "fp16")
    trainer.train()
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# Logging, checkpoints, plots
# ----------------------------------------------------------------------------------------------


def test_logger_writes_windows_and_epoch_records(tmp_path, caplog):
    torch.manual_seed(0)
    model = TinyDet(2)
    loader = make_loader(TinyDataset(num=8), batch_size=2)  # 4 iterations per epoch
    metrics = tmp_path / "metrics.jsonl"

    class FakeEval(Hook):
        priority = 40

        def after_epoch(self, trainer):
            trainer.eval_metrics = {"voc07_ap50": 0.25 * trainer.epochs_done, "per_class": {"a": 0.1, "b": 0.2}}

    hooks = [FakeEval(), IterTimerHook(), LoggerHook(log_interval=3, metrics_file=metrics, progress_bar=False)]
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), loader, max_epochs=2, hooks=hooks)
    with caplog.at_level(logging.INFO, logger="detkit"):
        trainer.train()
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    # windows end at iterations 3 and 4 (the epoch's last) in each epoch, then one epoch record
    assert [(r["type"], r["epoch"], r["iter"]) for r in records] == [
        ("train", 1, 3), ("train", 1, 4), ("epoch", 1, 4),
        ("train", 2, 7), ("train", 2, 8), ("epoch", 2, 8)]
    first = records[0]
    assert {"loss", "loss_box", "loss_cls", "stat_num_gt", "lr", "time", "data_time", "img_per_s",
            "eta_s"} <= set(first)
    assert first["stat_num_gt"] == 2.0  # a statistic, averaged, not summed into the loss
    assert first["loss"] == pytest.approx(first["loss_box"] + first["loss_cls"], rel=1e-6)
    assert records[2]["voc07_ap50"] == 0.25 and records[5]["voc07_ap50"] == 0.5
    assert records[5]["per_class"] == {"a": 0.1, "b": 0.2}
    lines = [r.message for r in caplog.records if r.message.startswith("epoch [")]
    assert len(lines) == 4 and "loss_box" in lines[0] and "img/s" in lines[0] and "eta 0:00:0" in lines[0]


def test_progress_bar_shows_losses_lr_speed_and_eta(capsys):
    torch.manual_seed(0)
    model = TinyDet(2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), make_loader(), max_epochs=1,
                      hooks=[LoggerHook(log_interval=1, progress_bar=True), IterTimerHook()])
    trainer.train()
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "box " in err and "cls " in err
    assert "lr 1.00e-02" in err and "img/s" in err and "eta" in err


def test_checkpoint_hook_keeps_last_k_and_links_best(tmp_path):
    torch.manual_seed(0)
    model = TinyDet(2)
    scores = {1: 0.3, 2: 0.5, 3: 0.4, 4: 0.45}

    class FakeEval(Hook):
        priority = 40

        def after_epoch(self, trainer):
            trainer.eval_metrics = {"voc07_ap50": scores[trainer.epochs_done]}

    from detkit.checkpoint import load_checkpoint
    from detkit.engine.hooks import BestMetricHook

    saved_weights = {}

    class Snapshot(Hook):
        priority = 99

        def after_epoch(self, trainer):
            saved_weights[trainer.epochs_done] = params_of(model)

    hooks = [FakeEval(), BestMetricHook("voc07_ap50"), CheckpointHook(tmp_path, interval=1, keep_last=2),
             Snapshot()]
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), make_loader(), max_epochs=4,
                      hooks=hooks)
    trainer.train()
    names = sorted(p.name for p in tmp_path.glob("*.pth"))
    assert names == ["best_voc07_ap50.pth", "epoch_3.pth", "epoch_4.pth", "last.pth"]
    best = load_checkpoint(tmp_path / "best_voc07_ap50.pth")
    assert best["epoch"] == 2 and best["best_metric"] == 0.5 and best["best_metric_name"] == "voc07_ap50"
    for key, value in saved_weights[2].items():
        assert torch.equal(best["model"][key], value), key
    assert load_checkpoint(tmp_path / "epoch_3.pth")["epoch"] == 3
    last = load_checkpoint(tmp_path / "last.pth")
    assert last["epoch"] == 4 and last["best_metric"] == 0.5 and last["iter"] == 8
    assert trainer.best_checkpoint == tmp_path / "best_voc07_ap50.pth"


def test_plots_are_written_and_redrawn_each_epoch(tmp_path):
    torch.manual_seed(0)
    model = TinyDet(2)
    metrics = tmp_path / "metrics.jsonl"
    sizes = []

    class FakeEval(Hook):
        priority = 40

        def after_epoch(self, trainer):
            trainer.eval_metrics = {"voc07_ap50": 0.1 * trainer.epochs_done, "coco_ap": 0.05}

    class Watch(Hook):
        priority = 95

        def after_epoch(self, trainer):
            sizes.append({p.name: p.stat().st_mtime_ns for p in (tmp_path / "plots").glob("*.png")})

    hooks = [FakeEval(), LoggerHook(1, metrics, progress_bar=False), PlotHook(metrics, tmp_path / "plots"), Watch()]
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.05), make_loader(), max_epochs=2,
                      hooks=hooks)
    trainer.train()
    assert set(sizes[0]) == {"loss.png", "map.png", "lr.png"}
    assert all(sizes[1][k] > sizes[0][k] for k in sizes[0])  # rewritten after epoch 2
    import matplotlib.image

    for name in sizes[0]:
        img = matplotlib.image.imread(tmp_path / "plots" / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert img[..., :3].std() > 0.01  # not a blank canvas


def test_scheduler_hook_sets_lr_of_each_iteration():
    from detkit.engine.hooks import LRSchedulerHook
    from detkit.engine.optim import build_scheduler

    model = TinyDet(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = make_loader(TinyDataset(num=8), batch_size=2)
    sched = build_scheduler(opt, dict(type="step", milestones=[1], gamma=0.5, warmup_epochs=0.5,
                                      warmup_start_factor=0.2), epochs=2, iters_per_epoch=4)
    seen = []

    class LR(Hook):
        priority = 30

        def before_iter(self, trainer):
            seen.append(trainer.optimizer.param_groups[0]["lr"])

    trainer = Trainer(model, opt, loader, max_epochs=2, scheduler=sched, hooks=[LRSchedulerHook(), LR()])
    trainer.train()
    # warm-up over 2 iterations from 0.2 to 1, milestone at epoch 1 (iteration 4) halves it
    expected = [0.1 * 0.2, 0.1 * 0.6, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05]
    assert seen == pytest.approx(expected)
    assert not math.isnan(trainer.log_values["loss"])


def test_short_epoch_keeps_the_schedule_aligned(caplog):
    """A loader that yields fewer batches than len() (unreadable samples dropped) must not shift
    the iteration count of the next epochs."""

    class ShortLoader:
        def __init__(self, loader):
            self.loader = loader

        def __len__(self):
            return len(self.loader) + 1

        def __iter__(self):
            return iter(self.loader)

    model = TinyDet(2)
    starts = []

    class Starts(Hook):
        def before_epoch(self, trainer):
            starts.append(trainer.iter)

    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.01), ShortLoader(make_loader()),
                      max_epochs=2, accumulate=3, hooks=[Starts()])
    with caplog.at_level(logging.WARNING, logger="detkit"):
        trainer.train()
    assert starts == [0, 3] and trainer.iter == 6
    assert all(p.grad is None for p in model.parameters())  # the unfinished window was dropped
    assert any("yielded 2 of 3 batches" in r.message for r in caplog.records)
