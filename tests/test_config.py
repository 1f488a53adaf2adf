"""Python config files: _base_ inheritance, _delete_, overrides, references, JSON dump."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from detkit.config import apply_overrides, dump_config, load_config, merge, parse_value
from detkit.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def cfg_tree(tmp_path):
    write(tmp_path / "_base_/model.py", """
        model = dict(type="yolov1", backbone=dict(type="resnet18", frozen_stages=1, norm_eval=True),
                     head=dict(type="yolov1", grid_size=7))
    """)
    write(tmp_path / "_base_/sched.py", """
        train = dict(epochs=10, optimizer=dict(type="sgd", lr=0.01, momentum=0.9))
    """)
    return tmp_path


def test_base_merge_is_deep_and_child_wins(cfg_tree):
    path = write(cfg_tree / "exp.py", """
        _base_ = ["_base_/model.py", "_base_/sched.py"]
        model = dict(backbone=dict(type="resnet50"))
        train = dict(epochs=3)
    """)
    cfg = load_config(path)
    assert cfg["model"]["backbone"] == {"type": "resnet50", "frozen_stages": 1, "norm_eval": True}
    assert cfg["model"]["head"] == {"type": "yolov1", "grid_size": 7}
    assert cfg["train"] == {"epochs": 3, "optimizer": {"type": "sgd", "lr": 0.01, "momentum": 0.9}}


def test_delete_replaces_instead_of_merging(cfg_tree):
    path = write(cfg_tree / "exp.py", """
        _base_ = "_base_/model.py"
        model = dict(backbone=dict(_delete_=True, type="lenet5"))
    """)
    cfg = load_config(path)
    assert cfg["model"]["backbone"] == {"type": "lenet5"}


def test_base_paths_are_relative_to_the_file_and_cycles_are_reported(tmp_path):
    write(tmp_path / "a.py", "_base_ = 'b.py'\nx = 1\n")
    write(tmp_path / "b.py", "_base_ = 'a.py'\ny = 2\n")
    with pytest.raises(ConfigError, match="_base_ cycle"):
        load_config(tmp_path / "a.py")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.py")


def test_overrides_parse_literals_and_reach_nested_keys(cfg_tree):
    path = write(cfg_tree / "exp.py", "_base_ = ['_base_/model.py', '_base_/sched.py']\n")
    cfg = load_config(path, ["train.epochs=12", "model.backbone.type=resnet50", "train.optimizer.lr=1e-3",
                             "model.head.grid_size=(5)", "+train.note=hello world"])
    assert cfg["train"]["epochs"] == 12 and isinstance(cfg["train"]["epochs"], int)
    assert cfg["model"]["backbone"]["type"] == "resnet50"
    assert cfg["train"]["optimizer"]["lr"] == pytest.approx(1e-3)
    assert cfg["model"]["head"]["grid_size"] == 5
    assert cfg["train"]["note"] == "hello world"
    assert parse_value("[1, 2]") == [1, 2] and parse_value("None") is None and parse_value("abc") == "abc"


def test_override_of_missing_key_is_an_error_with_suggestion(cfg_tree):
    path = write(cfg_tree / "exp.py", "_base_ = '_base_/model.py'\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, ["model.backbone.frozen_stage=2"])
    msg = str(err.value)
    assert "'frozen_stage' is not a key of model.backbone" in msg
    assert "Did you mean 'frozen_stages'" in msg and "+model.backbone.frozen_stage" in msg
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config(path, ["model.backbone.type"])


def test_override_into_a_section_that_is_off_turns_it_on():
    """`--set train.ema.decay=0.98` on a config whose train.ema is None (off, the default) sets that
    key and leaves the others to the component's defaults, instead of refusing a None."""
    from detkit.engine.ema import EMAHook
    from detkit.schema import SECTION_DEFAULTS, fill_defaults, resolve_train_config

    out = apply_overrides({"train": {"epochs": 3}}, ["train.ema.decay=0.98"], defaults=SECTION_DEFAULTS)
    assert out["train"]["ema"] == {"decay": 0.98}
    hook = EMAHook(**fill_defaults(out, "detection")["train"]["ema"])
    assert hook.decay == 0.98 and hook.tau == 2000.0
    # an explicit None in the config is off as well
    assert apply_overrides({"train": {"ema": None}}, ["train.ema.tau=20"])["train"]["ema"] == {"tau": 20}
    # a misspelt key of such a section is still refused by name, where the run's config is checked
    typo = apply_overrides({"train": {}}, ["train.ema.decy=0.9"], defaults=SECTION_DEFAULTS)
    with pytest.raises(ConfigError, match=r"train\.ema.*decy"):
        resolve_train_config(fill_defaults(typo, "detection")["train"])


def test_override_list_items_by_index():
    cfg = {"data": {"augment": [{"type": "HorizontalFlip", "p": 0.5}]}}
    out = apply_overrides(cfg, ["data.augment.0.p=0.1"])
    assert out["data"]["augment"][0]["p"] == 0.1
    assert cfg["data"]["augment"][0]["p"] == 0.5  # the input is not mutated
    with pytest.raises(ConfigError, match="'3' is not an index of data.augment"):
        apply_overrides(cfg, ["data.augment.3.p=0.1"])


def test_references_are_resolved_after_overrides(tmp_path):
    path = write(tmp_path / "exp.py", """
        data = dict(root="data/a", train=dict(root="${data.root}", ann="${data.root}/train.json"),
                    size=448, val=dict(size="${data.size}"))
    """)
    cfg = load_config(path, ["data.root=/elsewhere"])
    # One override reaches every place that uses the value (the mmengine pitfall this avoids).
    assert cfg["data"]["train"]["root"] == "/elsewhere"
    assert cfg["data"]["train"]["ann"] == "/elsewhere/train.json"
    assert cfg["data"]["val"]["size"] == 448  # whole-string references keep their type
    bad = write(tmp_path / "bad.py", "data = dict(root='${data.nope}')\n")
    with pytest.raises(ConfigError, match="refers to a key that does not exist"):
        load_config(bad)


def test_top_level_typo_of_a_section_is_an_error(tmp_path):
    path = write(tmp_path / "exp.py", "trian = dict(epochs=3)\n")
    with pytest.raises(ConfigError, match="'trian' looks like a typo of 'train'"):
        load_config(path)


def test_configs_hold_plain_data_only(tmp_path):
    path = write(tmp_path / "exp.py", "model = dict(fn=object())\n")
    with pytest.raises(ConfigError, match="model.fn: configs hold plain data"):
        load_config(path)
    # Imports and helper functions are allowed and simply not part of the config.
    ok = write(tmp_path / "ok.py", "import os\ndef helper(x):\n    return x * 2\nmodel = dict(depth=helper(9))\n")
    assert load_config(ok) == {"model": {"depth": 18}}


def test_dump_is_json_and_reloads_without_executing_code(tmp_path, cfg_tree):
    path = write(cfg_tree / "exp.py", "_base_ = ['_base_/model.py', '_base_/sched.py']\nextra = (1, 2)\n")
    cfg = load_config(path)
    out = tmp_path / "resolved.json"
    dump_config(cfg, out)
    assert json.loads(out.read_text()) == cfg
    assert load_config(out) == cfg
    assert cfg["extra"] == [1, 2]  # tuples become lists so the dump round-trips


def test_merge_does_not_alias_inputs():
    base = {"a": {"b": [1, 2]}}
    out = merge(base, {"a": {"c": 1}})
    out["a"]["b"].append(3)
    assert base == {"a": {"b": [1, 2]}}


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.py")))
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert {"model", "data", "train"} <= set(cfg)
    assert isinstance(cfg["data"]["train"], dict) and "type" in cfg["data"]["train"]


def test_delete_inside_a_base_fragment_replaces_the_earlier_base(cfg_tree):
    # A plugin ships a fragment that swaps the backbone; it is loaded on its own before being merged.
    write(cfg_tree / "_base_/other_backbone.py", "model = dict(backbone=dict(_delete_=True, type='lite'))\n")
    path = write(cfg_tree / "exp.py", "_base_ = ['_base_/model.py', '_base_/other_backbone.py']\n")
    cfg = load_config(path)
    assert cfg["model"]["backbone"] == {"type": "lite"}
    assert cfg["model"]["head"] == {"type": "yolov1", "grid_size": 7}
    # A marker with nothing to replace is simply dropped from the result.
    alone = load_config(cfg_tree / "_base_/other_backbone.py")
    assert alone == {"model": {"backbone": {"type": "lite"}}}
