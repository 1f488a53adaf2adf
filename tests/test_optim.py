"""Optimiser, parameter groups, LR schedules (against torch's own schedulers) and AMP settings."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from detkit.engine.optim import build_optimizer, build_scheduler, param_groups, resolve_amp
from detkit.errors import ConfigError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)              # weight decayed, bias not
        self.bn = nn.BatchNorm2d(4)                 # norm: neither decayed
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 2)
        self.ln = nn.LayerNorm(2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.shared = self.fc                       # the same parameters twice


def names(model, params):
    lookup = {id(p): n for n, p in model.named_parameters()}
    return sorted(lookup[id(p)] for p in params)


def test_no_decay_groups_hold_norms_and_biases():
    model = Net()
    groups = param_groups(model, 5e-4, no_decay_norm_bias=True)
    by_name = {g["name"]: g for g in groups}
    assert names(model, by_name["decay"]["params"]) == ["conv.weight", "fc.weight"]
    assert names(model, by_name["no_decay"]["params"]) == sorted(
        ["conv.bias", "bn.weight", "bn.bias", "gn.weight", "gn.bias", "fc.bias", "ln.weight", "ln.bias"])
    assert by_name["decay"]["weight_decay"] == 5e-4 and by_name["no_decay"]["weight_decay"] == 0.0
    one = param_groups(model, 5e-4, no_decay_norm_bias=False)
    assert len(one) == 1 and len(one[0]["params"]) == 10  # frozen excluded, shared counted once


def test_weight_decay_only_touches_the_decay_group():
    torch.manual_seed(0)
    model = Net()
    opt = build_optimizer(model, dict(type="sgd", lr=0.5, momentum=0.0, weight_decay=0.1,
                                      no_decay_norm_bias=True))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)  # only weight decay moves anything
    opt.step()
    for n, p in model.named_parameters():
        if n in ("conv.weight", "fc.weight"):
            torch.testing.assert_close(p.detach(), before[n] * (1 - 0.5 * 0.1))
        else:
            assert torch.equal(p.detach(), before[n]), n


def test_optimizer_options_reach_torch():
    model = Net()
    sgd = build_optimizer(model, dict(type="sgd", lr=0.01, momentum=0.8, nesterov=True, weight_decay=1e-4))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.8 and sgd.param_groups[0]["nesterov"] is True
    adamw = build_optimizer(model, dict(type="adamw", lr=1e-3, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.05))
    assert isinstance(adamw, torch.optim.AdamW)
    group = adamw.param_groups[0]
    assert group["betas"] == (0.8, 0.9) and group["eps"] == 1e-6 and group["weight_decay"] == 0.05


@pytest.mark.parametrize("cfg, message", [
    (dict(type="sgd", lr=0.1, momentun=0.9), r"train\.optimizer\.momentun: unknown key\. Did you mean 'momentum'"),
    (dict(type="sgdd", lr=0.1), r"train\.optimizer\.type: 'sgdd' is not one of sgd, adamw\. Did you mean 'sgd'"),
    (dict(type="adamw", lr=0.1, momentum=0.9), r"train\.optimizer\.momentum: unknown key"),
    (dict(type="sgd"), r"train\.optimizer\.lr: the learning rate is required"),
    (dict(type="sgd", lr=-1), r"train\.optimizer\.lr: must be > 0"),
])
def test_optimizer_config_errors(cfg, message):
    with pytest.raises(ConfigError, match=message):
        build_optimizer(Net(), cfg)


def lrs_of(scheduler, n):
    out = []
    for i in range(n):
        scheduler.set_iter(i)
        out.append(scheduler.get_last_lr()[0])
    return out


def torch_lrs(make, n, lr=0.1):
    """LRs of a torch scheduler stepped once per iteration (the reference)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    sched = make(opt)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def one_param_opt(lr=0.1):
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def test_cosine_matches_torch_cosine_annealing():
    total = 3 * 7
    ours = lrs_of(build_scheduler(one_param_opt(), dict(type="cosine", min_lr_factor=0.05), epochs=3,
                                  iters_per_epoch=7), total)
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total - 1, eta_min=0.1 * 0.05),
                    total)
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert ours[-1] == pytest.approx(0.005)


def test_step_with_warmup_matches_torch_chained_linear_and_multistep():
    ipe, epochs = 5, 6
    total = ipe * epochs
    cfg = dict(type="step", warmup_epochs=1.4, warmup_start_factor=0.25, milestones=[2, 4], gamma=0.3)
    ours = lrs_of(build_scheduler(one_param_opt(), cfg, epochs=epochs, iters_per_epoch=ipe), total)

    def make(o):
        warm = torch.optim.lr_scheduler.LinearLR(o, start_factor=0.25, end_factor=1.0, total_iters=7)
        steps = torch.optim.lr_scheduler.MultiStepLR(o, milestones=[2 * ipe, 4 * ipe], gamma=0.3)
        return torch.optim.lr_scheduler.ChainedScheduler([warm, steps])

    assert ours == pytest.approx(torch_lrs(make, total), rel=1e-9)


def test_yolov1_schedule_is_the_papers():
    """135 epochs: 1e-3 rising to 1e-2 over 5 epochs, 1e-2 until epoch 75 (75 epochs at 1e-2, the
    warm-up included), then 1e-3 for 30 epochs and 1e-4 for the last 30."""
    ipe = 4
    sched = build_scheduler(one_param_opt(lr=1e-2), dict(type="yolov1"), epochs=135, iters_per_epoch=ipe)

    def lr_at(epoch, inner=0):
        sched.set_iter(int(epoch * ipe + inner))
        return sched.get_last_lr()[0]

    assert lr_at(0) == pytest.approx(1e-3)
    assert lr_at(2.5) == pytest.approx(1e-3 + (1e-2 - 1e-3) * 0.5)
    assert lr_at(5) == pytest.approx(1e-2)
    assert lr_at(74, ipe - 1) == pytest.approx(1e-2)
    assert lr_at(75) == pytest.approx(1e-3) and lr_at(104, ipe - 1) == pytest.approx(1e-3)
    assert lr_at(105) == pytest.approx(1e-4) and lr_at(134, ipe - 1) == pytest.approx(1e-4)
    # Iterations per phase over the whole run (the warm-up's first iteration is also at 1e-3, so the
    # phases are told apart by position): the paper's 75 / 30 / 30 epochs.
    lrs = []
    for it in range(135 * ipe):
        sched.set_iter(it)
        lrs.append(sched.get_last_lr()[0])
    first_drop = next(i for i in range(5 * ipe, len(lrs)) if lrs[i] < 5e-3)
    second_drop = next(i for i in range(first_drop, len(lrs)) if lrs[i] < 5e-4)
    assert (first_drop, second_drop - first_drop, len(lrs) - second_drop) == (75 * ipe, 30 * ipe, 30 * ipe)


def test_schedule_config_errors_and_warnings(caplog):
    opt = one_param_opt()
    with pytest.raises(ConfigError, match=r"train\.scheduler\.milestone: unknown key\. Did you mean 'milestones'"):
        build_scheduler(opt, dict(type="step", milestone=[3]), epochs=4, iters_per_epoch=2)
    with pytest.raises(ConfigError, match=r"train\.scheduler\.min_lr_factor: unknown key"):
        build_scheduler(opt, dict(type="step", min_lr_factor=0.1), epochs=4, iters_per_epoch=2)
    with pytest.raises(ConfigError, match=r"train\.scheduler\.type: 'cosin' .* Did you mean 'cosine'"):
        build_scheduler(opt, dict(type="cosin"), epochs=4, iters_per_epoch=2)
    with pytest.raises(ConfigError, match="increasing list"):
        build_scheduler(opt, dict(type="step", milestones=[3, 1]), epochs=4, iters_per_epoch=2)
    with caplog.at_level(logging.WARNING, logger="detkit"):
        build_scheduler(opt, dict(type="yolov1"), epochs=10, iters_per_epoch=2)
    assert any("[75, 105] are at or beyond train.epochs=10" in r.message for r in caplog.records)


def test_scheduler_state_resumes_at_the_saved_iteration():
    opt = one_param_opt()
    sched = build_scheduler(opt, dict(type="cosine", warmup_epochs=1), epochs=4, iters_per_epoch=5)
    sched.set_iter(13)
    state = sched.state_dict()
    assert all(isinstance(v, (int, float, list, dict)) for v in state.values())
    opt2 = one_param_opt()
    sched2 = build_scheduler(opt2, dict(type="cosine", warmup_epochs=1), epochs=4, iters_per_epoch=5)
    sched2.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_amp_settings(caplog):
    with caplog.at_level(logging.WARNING, logger="detkit"):
        cpu = resolve_amp(True, "bf16", "cpu")
    assert not cpu.enabled and not cpu.use_scaler
    assert sum("ignored on cpu" in r.message for r in caplog.records) == 1
    off = resolve_amp(False, "fp16", "cpu")
    assert off.dtype is torch.float16 and not off.enabled
    with pytest.raises(ConfigError, match="amp_dtype: 'fp8'"):
        resolve_amp(True, "fp8", "cpu")
    if torch.cuda.is_available():
        fp16 = resolve_amp(True, "fp16", "cuda")
        assert fp16.enabled and fp16.use_scaler
