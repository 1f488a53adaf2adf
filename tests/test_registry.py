"""The entry-point registries: discovery, lazy import, errors with hints, plugin isolation, build()."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

from detkit import registry
from detkit.errors import (
    ConfigError,
    DuplicateComponentError,
    PluginLoadError,
    RegistryError,
    UnknownComponentError,
)

REPO = Path(__file__).resolve().parents[1]

TINY_MODULE = """
class Tiny:
    def __init__(self, depth: int = 3, width: float = 1.0):
        self.depth, self.width = depth, width

class Parent:
    def __init__(self, backbone, scale: int = 1):
        self.backbone, self.scale = backbone, scale
"""


def test_builtin_groups_are_declared_as_entry_points():
    # detkit registers its own components exactly like a plugin: through its setup.cfg entry points.
    infos = registry.components(load=False)
    by_group = {}
    for info in infos:
        by_group.setdefault(info.group, set()).add(info.name)
        if info.name in ("resnet18", "yolov1", "batched_nms", "voc"):
            assert info.distribution == "detkit"
    assert {"resnet18", "lenet5", "mobilenet_v2"} <= by_group["backbones"]
    assert "batched_nms" in by_group["postprocessors"]
    assert {"voc", "coco", "shapes"} <= by_group["datasets"]
    assert registry.available("backbones") == sorted(registry.available("backbones"))


def test_listing_imports_nothing(fake_dist):
    fake_dist("acme-det", {"detkit.backbones": {"acme_tiny": "acme_lazy.nets:Tiny"}},
              modules={"acme_lazy/nets.py": TINY_MODULE})
    assert "acme_tiny" in registry.available("backbones")
    registry.components("backbones", load=False)
    assert "acme_lazy.nets" not in sys.modules
    built = registry.build("backbones", dict(type="acme_tiny", depth=5))
    assert "acme_lazy.nets" in sys.modules
    assert built.depth == 5


def test_unknown_name_suggests_closest_and_lists_available():
    with pytest.raises(UnknownComponentError) as err:
        registry.build("backbones", dict(type="resnet19"), path="model.backbone")
    msg = str(err.value)
    assert "model.backbone.type" in msg
    assert "'resnet18'" in msg and "Did you mean" in msg
    assert "Available backbones:" in msg and "mobilenet_v2" in msg


def test_unknown_group_is_reported():
    with pytest.raises(RegistryError, match="Did you mean 'backbones'"):
        registry.available("backbone")


def test_same_name_from_two_distributions_names_both(fake_dist):
    fake_dist("acme-one", {"detkit.heads": {"dup_head": "acme_one.m:Tiny"}}, modules={"acme_one/m.py": TINY_MODULE})
    fake_dist("acme-two", {"detkit.heads": {"dup_head": "acme_two.m:Tiny"}}, modules={"acme_two/m.py": TINY_MODULE})
    with pytest.raises(DuplicateComponentError) as err:
        registry.get("heads", "dup_head")
    assert "acme-one" in str(err.value) and "acme-two" in str(err.value)
    statuses = {(i.distribution, i.status) for i in registry.components("heads") if i.name == "dup_head"}
    assert statuses == {("acme-one", "conflict"), ("acme-two", "conflict")}


def test_broken_plugin_only_breaks_its_own_names(fake_dist):
    fake_dist("broken-det", {"detkit.backbones": {"broken_net": "broken_mod.nets:Net"},
                             "detkit.heads": {"fine_head": "broken_fine.m:Tiny"}},
              modules={"broken_mod/nets.py": "raise RuntimeError('plugin bug at import')\n",
                       "broken_fine/m.py": TINY_MODULE})
    with pytest.raises(PluginLoadError) as err:
        registry.get("backbones", "broken_net")
    assert "broken-det" in str(err.value) and "plugin bug at import" in str(err.value)
    # Its other name, and detkit's own components, keep working.
    assert registry.build("heads", dict(type="fine_head")).depth == 3
    infos = {i.name: i for i in registry.components("backbones")}
    assert infos["broken_net"].status == "failed"
    assert "plugin bug at import" in infos["broken_net"].error


def test_disable_plugins_env_hides_a_distribution(fake_dist, monkeypatch):
    fake_dist("acme-hidden", {"detkit.losses": {"hidden_loss": "acme_hidden.m:Tiny"}},
              modules={"acme_hidden/m.py": TINY_MODULE})
    assert "hidden_loss" in registry.available("losses")
    monkeypatch.setenv("DETKIT_DISABLE_PLUGINS", "acme_hidden, something-else")
    registry.refresh()
    assert "hidden_loss" not in registry.available("losses")
    with pytest.raises(UnknownComponentError, match="DETKIT_DISABLE_PLUGINS disables"):
        registry.get("losses", "hidden_loss")
    assert any(i.status == "disabled" for i in registry.components("losses") if i.name == "hidden_loss")


def test_detkit_itself_cannot_be_disabled(monkeypatch):
    monkeypatch.setenv("DETKIT_DISABLE_PLUGINS", "detkit")
    registry.refresh()
    try:
        assert "resnet18" in registry.available("backbones")
    finally:
        monkeypatch.delenv("DETKIT_DISABLE_PLUGINS")
        registry.refresh()


class _Tiny:
    def __init__(self, depth: int = 3, width: float = 1.0):
        self.depth, self.width = depth, width


class _Parent:
    # The annotation makes ``backbone`` a nested component, built before the call.
    def __init__(self, backbone: registry.Component["backbones"], scale: int = 1):
        self.backbone, self.scale = backbone, scale


class _SpecParent:
    def __init__(self, backbone: registry.Spec, num_classes: int):
        self.backbone = backbone.build(width=float(num_classes))


def test_register_in_process_forms_and_cleanup():
    with registry.register("backbones", "t_ctx", _Tiny):
        assert registry.build("backbones", dict(type="t_ctx")).depth == 3
    assert "t_ctx" not in registry.available("backbones")

    handle = registry.register("backbones", "t_handle", _Tiny)
    assert "t_handle" in registry.available("backbones")
    handle.remove()
    assert "t_handle" not in registry.available("backbones")

    @registry.register("backbones", "t_deco")
    class Deco(_Tiny):
        pass

    try:
        assert isinstance(registry.build("backbones", dict(type="t_deco")), Deco)
    finally:
        registry.unregister("backbones", "t_deco")


def test_register_refuses_to_shadow_without_override():
    with pytest.raises(RegistryError, match="override=True"):
        registry.register("backbones", "resnet18", _Tiny)
    with registry.register("backbones", "resnet18", _Tiny, override=True):
        assert isinstance(registry.build("backbones", dict(type="resnet18")), _Tiny)
    assert registry.get("backbones", "resnet18") is not _Tiny


def test_build_checks_arguments_with_dotted_path_and_suggestion():
    with registry.register("backbones", "t_args", _Tiny):
        with pytest.raises(ConfigError) as err:
            registry.build("backbones", dict(type="t_args", depht=50), path="model.backbone")
    msg = str(err.value)
    assert msg.startswith("model.backbone.depht:")
    assert "Did you mean 'depth'?" in msg and "width" in msg


def test_nested_child_is_validated_before_anything_is_built():
    built = []

    class Recording(_Tiny):
        def __init__(self, depth: int = 3, width: float = 1.0):
            built.append((depth, width))
            super().__init__(depth, width)

    with registry.register("backbones", "t_rec", Recording), registry.register("detectors", "t_parent", _Parent):
        with pytest.raises(ConfigError, match=r"model\.backbone\.wdth: .*Did you mean 'width'"):
            registry.build("detectors", dict(type="t_parent", backbone=dict(type="t_rec", wdth=2)), path="model")
        assert built == []  # the typo was found before the child was constructed
        parent = registry.build("detectors", dict(type="t_parent", backbone=dict(type="t_rec", depth=7)))
    assert isinstance(parent.backbone, Recording) and parent.backbone.depth == 7


def test_spec_annotation_hands_child_over_unbuilt_with_defaults():
    with registry.register("backbones", "t_spec_child", _Tiny), \
            registry.register("detectors", "t_spec_parent", _SpecParent):
        parent = registry.build("detectors", dict(type="t_spec_parent", backbone=dict(type="t_spec_child")),
                                num_classes=4)
        assert parent.backbone.width == 4.0
        # A value set in the config wins over the parent's default.
        parent = registry.build("detectors", dict(type="t_spec_parent", backbone=dict(type="t_spec_child", width=9.0)),
                                num_classes=4)
        assert parent.backbone.width == 9.0


def test_a_default_the_factory_does_not_take_is_an_error_and_missing_required_is_named():
    with registry.register("backbones", "t_def", _Tiny), registry.register("detectors", "t_need", _SpecParent):
        # Was silently dropped before issue 14; now an error naming the factory and the parameter.
        with pytest.raises(ConfigError, match=r"backbone 't_def' \(.*_Tiny\) has no parameter 'num_classes'"):
            registry.build("backbones", dict(type="t_def"), num_classes=3)
        with pytest.raises(ConfigError, match="model: detector 't_need' needs 'num_classes'"):
            registry.build("detectors", dict(type="t_need", backbone=dict(type="t_def")), path="model")


def test_build_rejects_config_without_type_and_passes_objects_through():
    with pytest.raises(ConfigError, match="model.head: missing 'type'"):
        registry.build("heads", dict(in_channels=3), path="model.head")
    obj = object()
    assert registry.build("heads", obj) is obj


def test_factory_value_errors_are_reported_with_the_path():
    class Picky:
        def __init__(self, size: int = 1):
            if size < 1:
                raise ValueError("size must be positive")

    with registry.register("heads", "t_picky", Picky):
        with pytest.raises(ConfigError, match=r"model.head: building head 't_picky' failed: size must be positive"):
            registry.build("heads", dict(type="t_picky", size=0), path="model.head")


# -- nesting is declared by annotations, never by a parameter's name (issue 14) --------------------

PLUGIN_PARENTS = """
from __future__ import annotations   # every annotation below is a string until resolved

from typing import TYPE_CHECKING, Optional

from detkit.registry import Spec

if TYPE_CHECKING:
    from some_package_that_is_not_installed import Thing


class OptionalParent:
    def __init__(self, head: Optional[Spec] = None, num_classes: int = 1):
        self.head = None if head is None else head.build(num_classes=num_classes)
        self.head_spec = head


class PipeParent:
    def __init__(self, extra: Spec["heads"] | None = None, thing: Thing | None = None):
        self.extra, self.thing = extra, thing


class UnresolvableSpec:
    def __init__(self, head: Spec | Thing = None):
        self.head = head
"""

PLUGIN_LOSSES = """
class NClassesLoss:
    def __init__(self, n_classes: int = 1, weight: float = 1.0):
        self.n_classes = n_classes

class KwargsLoss:
    def __init__(self, weight: float = 1.0, **kwargs):
        self.num_classes = kwargs["num_classes"]
"""


class _Heads:
    def __init__(self, num_classes: int = 1, depth: int = 1):
        self.num_classes, self.depth = num_classes, depth


def test_a_parameter_named_like_a_component_is_plain_data_unless_annotated():
    class TakesDicts:  # 'loss' and 'head' here are settings, not components
        def __init__(self, loss: dict | None = None, head=None):
            self.loss, self.head = loss, head

    with registry.register("datasets", "t_plain", TakesDicts):
        built = registry.build("datasets", dict(type="t_plain", loss=dict(type="not_a_loss", w=2),
                                                head=dict(type="no_such_head")))
    assert built.loss == {"type": "not_a_loss", "w": 2} and built.head == {"type": "no_such_head"}


def test_optional_spec_and_pipe_none_annotations_in_a_plugin_module(fake_dist):
    fake_dist("acme-parents", {"detkit.detectors": {"acme_optional": "acme_parents.m:OptionalParent",
                                                   "acme_pipe": "acme_parents.m:PipeParent"}},
              modules={"acme_parents/m.py": PLUGIN_PARENTS})
    with registry.register("heads", "t_heads", _Heads):
        # Optional[Spec] (a string annotation): handed over unbuilt, built by the parent with its default
        parent = registry.build("detectors", dict(type="acme_optional", head=dict(type="t_heads", depth=2),
                                                  num_classes=5))
        assert isinstance(parent.head_spec, registry.Spec) and parent.head_spec.path == "detector.head"
        assert (parent.head.num_classes, parent.head.depth) == (5, 2)
        # validated before anything is built, with the dotted path
        with pytest.raises(ConfigError, match=r"model\.head\.dpth: .*Did you mean 'depth'"):
            registry.build("detectors", dict(type="acme_optional", head=dict(type="t_heads", dpth=2)),
                           path="model")
        assert registry.build("detectors", dict(type="acme_optional")).head is None
        # Spec["heads"] | None on a parameter whose name says nothing; the other parameter's
        # annotation names a class imported under TYPE_CHECKING only and is simply not a component.
        pipe = registry.build("detectors", dict(type="acme_pipe", extra=dict(type="t_heads"),
                                                thing=dict(type="t_heads")))
        assert isinstance(pipe.extra, registry.Spec) and pipe.extra.group == "heads"
        assert pipe.thing == {"type": "t_heads"}


def test_unresolvable_or_groupless_component_annotations_are_errors_naming_the_parameter(fake_dist):
    fake_dist("acme-bad", {"detkit.detectors": {"acme_unresolvable": "acme_bad.m:UnresolvableSpec"}},
              modules={"acme_bad/m.py": PLUGIN_PARENTS})
    with pytest.raises(RegistryError, match=r"acme_unresolvable.*parameter 'head' cannot be evaluated"):
        registry.build("detectors", dict(type="acme_unresolvable"))

    class Groupless:
        def __init__(self, refiner: registry.Spec = None):
            self.refiner = refiner

    with registry.register("detectors", "t_groupless", Groupless):
        with pytest.raises(RegistryError, match=r"parameter 'refiner' is annotated Spec without a group.*"
                                                r"Spec\['<group>'\]"):
            registry.build("detectors", dict(type="t_groupless"))
    with pytest.raises(RegistryError, match="unknown component group 'head'"):
        registry.Spec["head"]


def test_component_annotation_builds_the_child_and_requires_a_type():
    class Wrapper:
        def __init__(self, dataset: registry.Component["datasets"] | None = None, repeat: int = 1):
            self.dataset = dataset

    with registry.register("datasets", "t_inner", _Tiny), registry.register("datasets", "t_wrap", Wrapper):
        wrapped = registry.build("datasets", dict(type="t_wrap", dataset=dict(type="t_inner", depth=4)))
        assert isinstance(wrapped.dataset, _Tiny) and wrapped.dataset.depth == 4
        with pytest.raises(ConfigError, match=r"data\.train\.dataset: missing 'type'"):
            registry.build("datasets", dict(type="t_wrap", dataset=dict(depth=4)), path="data.train")


def test_a_plugin_loss_without_num_classes_fails_naming_factory_and_parameter(fake_dist):
    from detkit.models.builder import build_detector

    fake_dist("acme-losses", {"detkit.losses": {"acme_n_loss": "acme_losses.m:NClassesLoss",
                                               "acme_kw_loss": "acme_losses.m:KwargsLoss"}},
              modules={"acme_losses/m.py": PLUGIN_LOSSES})
    model = dict(type="yolov1", backbone=dict(type="lenet5"), head=dict(type="yolov1", mode="conv", grid_size=2),
                 postprocessor=dict(type="batched_nms"))
    with pytest.raises(ConfigError) as err:
        build_detector(dict(model, loss=dict(type="acme_n_loss")), ["a", "b", "c"])
    msg = str(err.value)
    assert msg.startswith("model.loss: loss 'acme_n_loss' (acme_losses.m:NClassesLoss) has no parameter "
                          "'num_classes'")
    assert "Is its parameter 'n_classes' meant to be 'num_classes'?" in msg
    # a factory that takes **kwargs accepts what the detector passes
    built = build_detector(dict(model, loss=dict(type="acme_kw_loss")), ["a", "b", "c"])
    assert built.loss.num_classes == 3


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.py")))
def test_every_shipped_config_builds_its_model_and_validates_its_data(name):
    # Nesting and the values detectors pass to their children (in_channels, num_classes, stride)
    # must hold for every recipe, plugins' components included. On the meta device: no weights.
    import torch

    from detkit.config import load_config
    from detkit.tasks import task_of_config

    cfg = load_config(REPO / "configs" / name)
    classes = cfg["data"].get("classes") or ["a", "b"]
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loading pretrained files into meta tensors is a no-op
        model = task_of_config(cfg).build_model(cfg["model"], classes)  # a detector or a classifier
    assert model.num_classes == len(classes) and model.head.num_classes == len(classes)
    for split in ("train", "val"):
        spec = registry.Spec("datasets", cfg["data"][split], f"data.{split}")
        assert spec.accepts("classes")  # what data/builder.py passes to every dataset
