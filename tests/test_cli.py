"""The detkit command line: version, plugins, config show, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from click.testing import CliRunner

import detkit
from detkit.cli import main


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
    assert json.loads(result.output) == {"model": {"type": "yolov1", "backbone": {"type": "resnet18"}},
                                         "train": {"epochs": 5}}


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
    assert json.loads(result.output) == {"train": {"epochs": 5, "lr": 0.5}, "model": {"depth": 1, "width": 2}}
    result = run("config", "show", str(cfg), "--set", "train.epochs=7", "--set", "model.depth=2")
    assert json.loads(result.output) == {"train": {"epochs": 7, "lr": 0.1}, "model": {"depth": 2}}
