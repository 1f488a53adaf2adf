"""The detkit command line: version, plugins, config show, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from click.testing import CliRunner

import detkit
from detkit.cli import main
from detkit.schema import EVAL_DEFAULTS, EVAL_KEYS, TRAIN_DEFAULTS, TRAIN_KEYS, resolve_config


def run(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env)


def test_version():
    result = run("--version")
    assert result.exit_code == 0
    assert detkit.__version__ in result.output


def test_plugins_lists_builtin_groups_without_loading():
    result = run("plugins", "--no-load")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["GROUP", "NAME", "DISTRIBUTION", "VERSION", "STATUS"]
    groups = {line.split()[0] for line in lines[1:] if line and not line.startswith(" ")}
    assert {"backbones", "heads", "losses", "postprocessors", "detectors", "datasets"} <= groups
    assert any(line.split()[:3] == ["backbones", "resnet18", "detkit"] for line in lines)


def test_plugins_filters_by_group():
    result = run("plugins", "--group", "postprocessors")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line and not line.startswith(" ")]
    assert rows and all(r[0] == "postprocessors" for r in rows)


def test_config_show_prints_resolved_json(tmp_path):
    cfg = tmp_path / "exp.py"
    cfg.write_text(textwrap.dedent("""
        model = dict(type="yolov1", backbone=dict(type="resnet18"))
        train = dict(epochs=3)
    """))
    result = run("config", "show", str(cfg), "--set", "train.epochs=5")
    assert result.exit_code == 0, result.output
    # the config a run uses: what the file says, the override, and every train / eval default
    assert json.loads(result.output) == {"model": {"type": "yolov1", "backbone": {"type": "resnet18"}},
                                         "train": {**TRAIN_DEFAULTS, "epochs": 5}, "eval": EVAL_DEFAULTS}


def test_bad_override_is_one_clear_line_not_a_traceback(tmp_path):
    cfg = tmp_path / "exp.py"
    cfg.write_text("train = dict(epochs=3)\n")
    result = run("config", "show", str(cfg), "--set", "train.epoch=5")
    assert result.exit_code == 2
    assert "error: --set train.epoch: 'epoch' is not a key of train. Did you mean 'epochs'?" in result.output
    assert "Traceback" not in result.output


def test_console_script_runs_out_of_process():
    proc = subprocess.run([sys.executable, "-m", "detkit", "plugins", "--no-load", "--group", "datasets"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "voc" in proc.stdout and "coco" in proc.stdout


def test_set_takes_several_overrides_like_cfg_options(tmp_path):
    cfg = tmp_path / "exp.py"
    cfg.write_text("train = dict(epochs=3, lr=0.1)\nmodel = dict(depth=1)\n")
    result = run("config", "show", "--set", "train.epochs=5", "train.lr=0.5", "+model.width=2", str(cfg))
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"train": {**TRAIN_DEFAULTS, "epochs": 5, "lr": 0.5},
                                         "model": {"depth": 1, "width": 2}, "eval": EVAL_DEFAULTS}
    result = run("config", "show", str(cfg), "--set", "train.epochs=7", "--set", "model.depth=2")
    assert json.loads(result.output) == {"train": {**TRAIN_DEFAULTS, "epochs": 7, "lr": 0.1},
                                         "model": {"depth": 2}, "eval": EVAL_DEFAULTS}


# A valid value other than the default for every train / eval key: a key added to the schema
# without one here fails the test below, so it cannot escape --set.
OTHER_VALUES = {
    "train": dict(epochs=3, batch_size=4, num_workers=0, seed=7, optimizer=dict(type="adamw", lr=1e-3),
                  scheduler=dict(type="cosine"), grad_clip=5.0, accumulate=2, amp=True, amp_dtype="fp16",
                  channels_last=True, compile=True, sync_bn=True, log_interval=1, checkpoint_interval=2,
                  keep_last=-1, eval_interval=0, nan_policy="skip", load_from="init.pth", bad_sample="skip",
                  find_unused_parameters=True, loggers=["mlflow", {"type": "wandb", "mode": "offline"}],
                  ema=dict(decay=0.99, tau=50.0), multi_scale=dict(scale=[0.5, 1.5], divisor=16, interval=2)),
    "eval": dict(metric=["coco"], batch_size=2, num_workers=1, save_best="coco_ap", plots=False,
                 plot_score_thr=0.5, plot_iou_thr=0.75),
}


def test_every_key_with_a_default_is_overridable_and_shown(tmp_path):
    # (issue 14: `--set train.bad_sample=skip` was refused although the key is documented)
    cfg = tmp_path / "exp.py"
    cfg.write_text("model = dict(type='yolov1')\ntrain = dict(epochs=12)\n")
    shown = json.loads(run("config", "show", str(cfg)).output)
    assert shown["train"] == TRAIN_DEFAULTS and shown["eval"] == EVAL_DEFAULTS

    assert set(OTHER_VALUES["train"]) == set(TRAIN_KEYS) and set(OTHER_VALUES["eval"]) == set(EVAL_KEYS)
    overrides = [f"{section}.{key}={value!r}" for section, values in OTHER_VALUES.items()
                 for key, value in values.items()]
    result = run("config", "show", str(cfg), "--set", *overrides)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    for section, values in OTHER_VALUES.items():
        defaults = {"train": TRAIN_DEFAULTS, "eval": EVAL_DEFAULTS}[section]
        for key, value in values.items():
            assert value != defaults[key] and shown[section][key] == value, (section, key)
    resolve_config(shown)  # and they are values a run accepts

    # a default dict is overridden key by key (the rest of the default stays)
    shown = json.loads(run("config", "show", str(cfg), "--set", "train.optimizer.lr=0.5").output)
    assert shown["train"]["optimizer"] == {**TRAIN_DEFAULTS["optimizer"], "lr": 0.5}
    # a typo is still refused, with the key it probably meant
    result = run("config", "show", str(cfg), "--set", "train.bad_sampel=skip")
    assert result.exit_code == 2 and "Did you mean 'bad_sample'?" in result.output
