"""The entry-point registries: discovery, lazy import, errors with hints, plugin isolation, build()."""

from __future__ import annotations

import sys

import pytest

from detkit import registry
from detkit.errors import (
    ConfigError,
    DuplicateComponentError,
    PluginLoadError,
    RegistryError,
    UnknownComponentError,
)

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
    def __init__(self, backbone, scale: int = 1):
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


def test_defaults_are_dropped_for_factories_that_do_not_take_them_and_missing_required_is_named():
    with registry.register("backbones", "t_def", _Tiny), registry.register("detectors", "t_need", _SpecParent):
        assert registry.build("backbones", dict(type="t_def"), num_classes=3).depth == 3
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
