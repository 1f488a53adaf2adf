"""Third-party plugins seen from detkit's side: listing, disabling, conflicts, broken-plugin isolation.

The three example packages under plugins/ are installed by `make install` like any user would install
them (`pip install ./plugins/<name>`). The misbehaving packages are real packages too: built and
installed by pip into a temporary --target folder that a fixture puts on sys.path for one test.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from detkit import registry
from stand_ins import require_component
from detkit.cli import main
from detkit.errors import DuplicateComponentError, PluginLoadError, UnknownComponentError

# (group, name, distribution) of the example plugins in plugins/.
EXAMPLE_PLUGINS = [
    ("backbones", "efficientnet_lite0", "detkit-efficientnet-lite"),
    ("proposals", "selective_search", "detkit-selective-search"),
    ("postprocessors", "soft_nms", "detkit-soft-nms"),
]


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{distribution} is not installed: `make install` installs every plugins/*/ package")


def _rows(output: str) -> list[list[str]]:
    """Table rows of `detkit plugins` (error lines, indented with '->', are skipped)."""
    return [line.split() for line in output.splitlines()[1:] if line and not line.startswith(" ")]


def _write_package(root: Path, dist: str, entry_points: dict, modules: dict) -> Path:
    """A real, pip-installable package: setup.cfg with entry points, pyproject.toml, modules."""
    src = root / dist
    lines = ["[metadata]", f"name = {dist}", "version = 0.3.1", "", "[options]", "packages = find:", "",
             "[options.entry_points]"]
    for group, eps in entry_points.items():
        lines.append(f"{group} =")
        lines += [f"    {name} = {target}" for name, target in eps.items()]
    (src).mkdir(parents=True)
    (src / "setup.cfg").write_text("\n".join(lines) + "\n")
    (src / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=61"]\n'
                                        'build-backend = "setuptools.build_meta"\n')
    for rel, code in modules.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(textwrap.dedent(code))
    return src


TINY_HEAD = """
class Head:
    def __init__(self, width: int = 4):
        self.width = width
"""


@pytest.fixture(scope="module")
def misbehaving_site(tmp_path_factory) -> Path:
    """pip-install three small packages into a --target folder (not yet on sys.path):

    * detkit-broken-demo: its backbone module raises at import; its head module is fine;
    * detkit-dup-one / detkit-dup-two: both register the head 'dup_head';
    * detkit-dup-two also registers 'soft_nms', which detkit-soft-nms already provides.
    """
    root = tmp_path_factory.mktemp("plugin_src")
    sources = [
        _write_package(root, "detkit-broken-demo",
                       {"detkit.backbones": {"broken_demo_net": "detkit_broken_demo.nets:Net"},
                        "detkit.heads": {"broken_demo_head": "detkit_broken_demo.heads:Head"}},
                       {"detkit_broken_demo/nets.py": "raise RuntimeError('deliberately broken plugin')\n",
                        "detkit_broken_demo/heads.py": TINY_HEAD}),
        _write_package(root, "detkit-dup-one", {"detkit.heads": {"dup_head": "detkit_dup_one.m:Head"}},
                       {"detkit_dup_one/m.py": TINY_HEAD}),
        _write_package(root, "detkit-dup-two",
                       {"detkit.heads": {"dup_head": "detkit_dup_two.m:Head"},
                        "detkit.postprocessors": {"soft_nms": "detkit_dup_two.m:Head"}},
                       {"detkit_dup_two/m.py": TINY_HEAD}),
    ]
    target = tmp_path_factory.mktemp("plugin_site")
    # Offline and quick: no index, no build isolation (the venv's setuptools builds them).
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-build-isolation",
           "--disable-pip-version-check", "--no-cache-dir", "--target", str(target), *map(str, sources)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return target


@pytest.fixture
def with_misbehaving_plugins(misbehaving_site, monkeypatch):
    """Put the misbehaving packages on sys.path for one test; undo everything afterwards."""
    monkeypatch.syspath_prepend(str(misbehaving_site))
    registry.refresh()
    yield misbehaving_site
    monkeypatch.undo()
    for name in [m for m in sys.modules if m.startswith(("detkit_broken_demo", "detkit_dup_"))]:
        del sys.modules[name]
    registry.refresh()


@pytest.fixture
def fresh_registry():
    """Refresh the registries after the test (it changes DETKIT_DISABLE_PLUGINS)."""
    yield
    registry.refresh()


# ----------------------------------------------------------------------------------------------
def test_cli_lists_every_example_plugin_with_distribution_version_and_status():
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0, result.output
    rows = {(r[0], r[1]): r for r in _rows(result.stdout)}
    for group, name, dist in EXAMPLE_PLUGINS:
        assert rows.get((group, name)) == [group, name, dist, _version(dist), "ok"], rows.get((group, name))
    # The built-ins come from detkit itself, through the same mechanism.
    assert rows[("backbones", "resnet18")][2] == "detkit"


def test_listing_imports_no_plugin_module():
    # In a fresh interpreter: listing reads metadata only; building imports exactly what it needs.
    code = textwrap.dedent("""
        import sys
        from detkit import registry
        infos = registry.components(load=False)
        print(sorted({i.distribution for i in infos}))
        print(any(m.startswith(("detkit_soft_nms", "detkit_selective_search", "detkit_efficientnet_lite"))
                  for m in sys.modules))
        registry.build("proposals", dict(type="selective_search", cache=False))
        print("detkit_selective_search.selective_search" in sys.modules,
              "detkit_soft_nms.postprocessor" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    dists, imported_by_listing, after_build = proc.stdout.strip().splitlines()
    for _, _, dist in EXAMPLE_PLUGINS:
        assert repr(dist) in dists
    assert imported_by_listing == "False"
    assert after_build == "True False"


def test_console_script_lists_plugins_out_of_process():
    script = Path(sys.executable).with_name("detkit")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "detkit"]
    # The proposals group: loading its one plugin imports no torch, so this stays quick.
    proc = subprocess.run([*command, "plugins", "--group", "proposals"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)
    version = _version("detkit-selective-search")
    assert ["proposals", "selective_search", "detkit-selective-search", version, "ok"] in rows
    assert {r[2] for r in rows} == {"detkit", "detkit-selective-search"}
    assert all(r[4] == "ok" for r in rows)


def test_a_broken_plugin_breaks_only_its_own_names(with_misbehaving_plugins):
    with pytest.raises(PluginLoadError) as err:
        registry.build("backbones", dict(type="broken_demo_net"), path="model.backbone")
    message = str(err.value)
    assert "model.backbone" in message and "'detkit-broken-demo' 0.3.1" in message
    assert "RuntimeError: deliberately broken plugin" in message
    # Its other module, another plugin and detkit's own components still build.
    assert registry.build("heads", dict(type="broken_demo_head", width=7)).width == 7
    assert registry.build("backbones", dict(type="efficientnet_lite0")).out_channels == 1280
    assert registry.build("backbones", dict(type="resnet18")).out_channels == 512

    result = CliRunner().invoke(main, ["plugins", "--group", "backbones"])
    assert result.exit_code == 0, result.output  # listing survives a broken plugin
    rows = {r[1]: r for r in _rows(result.stdout)}
    assert rows["broken_demo_net"] == ["backbones", "broken_demo_net", "detkit-broken-demo", "0.3.1", "failed"]
    assert rows["efficientnet_lite0"][4] == "ok" and rows["resnet18"][4] == "ok"
    assert "-> RuntimeError: deliberately broken plugin" in result.stdout
    assert "1 component(s) unusable" in result.stderr


def test_the_same_name_from_two_distributions_names_both(with_misbehaving_plugins):
    with pytest.raises(DuplicateComponentError) as err:
        registry.build("heads", dict(type="dup_head"))
    assert "'detkit-dup-one'" in str(err.value) and "'detkit-dup-two'" in str(err.value)
    # A clash with an installed plugin: soft_nms is now provided twice.
    with pytest.raises(DuplicateComponentError) as err:
        registry.build("postprocessors", dict(type="soft_nms"), path="model.postprocessor")
    assert "'detkit-soft-nms'" in str(err.value) and "'detkit-dup-two'" in str(err.value)
    statuses = {(i.name, i.distribution): i.status for i in registry.components("postprocessors")}
    assert statuses[("soft_nms", "detkit-soft-nms")] == statuses[("soft_nms", "detkit-dup-two")] == "conflict"


def test_disabling_the_intruder_resolves_the_conflict(with_misbehaving_plugins, monkeypatch, fresh_registry):
    monkeypatch.setenv("DETKIT_DISABLE_PLUGINS", "detkit_dup_two")  # normalised like pip names
    registry.refresh()
    assert type(registry.build("postprocessors", dict(type="soft_nms"))).__name__ == "SoftNMS"
    assert registry.build("heads", dict(type="dup_head")).width == 4  # detkit-dup-one's, now alone


def test_disable_plugins_hides_an_installed_plugin(monkeypatch, fresh_registry):
    monkeypatch.setenv("DETKIT_DISABLE_PLUGINS", "detkit-soft-nms, detkit-selective-search")
    registry.refresh()
    assert "soft_nms" not in registry.available("postprocessors")
    assert "selective_search" not in registry.available("proposals")
    with pytest.raises(UnknownComponentError) as err:
        registry.build("postprocessors", dict(type="soft_nms"), path="model.postprocessor")
    assert "It is provided by detkit-soft-nms, which DETKIT_DISABLE_PLUGINS disables" in str(err.value)
    assert "efficientnet_lite0" in registry.available("backbones")  # the others stay

    result = CliRunner().invoke(main, ["plugins", "--group", "postprocessors"],
                                env={"DETKIT_DISABLE_PLUGINS": "detkit-soft-nms"})
    assert result.exit_code == 0, result.output
    rows = {r[1]: r for r in _rows(result.stdout)}
    assert rows["soft_nms"][2:] == ["detkit-soft-nms", _version("detkit-soft-nms"), "disabled"]


def test_plugins_come_back_when_the_variable_is_cleared(monkeypatch, fresh_registry):
    monkeypatch.setenv("DETKIT_DISABLE_PLUGINS", "detkit-soft-nms")
    registry.refresh()
    assert "soft_nms" not in registry.available("postprocessors")
    monkeypatch.delenv("DETKIT_DISABLE_PLUGINS")
    registry.refresh()
    assert "soft_nms" in registry.available("postprocessors")


def test_debug_variable_shows_the_traceback_of_a_plugin_error(with_misbehaving_plugins):
    # `detkit config show` does not build models, so use a tiny script through the CLI's error wrapper:
    # the friendly one-line message by default, the full traceback with DETKIT_DEBUG=1.
    code = ("from detkit import registry\n"
            "from detkit.cli import _friendly_errors\n"
            "_friendly_errors(lambda: registry.build('backbones', dict(type='broken_demo_net')))()\n")
    env = {**os.environ, "PYTHONPATH": str(with_misbehaving_plugins)}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert quiet.returncode == 2
    assert quiet.stderr.startswith("error: ")
    assert "backbone 'broken_demo_net' from distribution 'detkit-broken-demo' 0.3.1 failed to load" in quiet.stderr
    assert "Traceback" not in quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**env, "DETKIT_DEBUG": "1"})
    assert loud.returncode != 0 and "Traceback" in loud.stderr
    assert "detkit_broken_demo/nets.py" in loud.stderr  # the plugin's own line is visible


def test_plugin_components_compose_with_a_core_detector():
    # Two plugins inside detkit's own YOLOv1: a backbone from one package, the postprocessor from another.
    # yolov1 is detkit's own and the plugins are installed by `make install`: a missing name means a
    # broken registry, so this fails rather than skips
    require_component("detectors", "yolov1")
    require_component("backbones", "efficientnet_lite0", "detkit-efficientnet-lite")
    require_component("postprocessors", "soft_nms", "detkit-soft-nms")
    import torch

    from detkit.models.builder import build_detector

    model = build_detector(
        dict(type="yolov1",
             backbone=dict(type="efficientnet_lite0", pretrained=True, frozen_stages=1, norm_eval=True),
             head=dict(type="yolov1", grid_size=3, num_boxes=2, mode="conv"),
             loss=dict(type="yolov1_loss"),
             postprocessor=dict(type="soft_nms", method="linear", score_threshold=0.0, max_per_image=5)),
        ["raccoon", "badger"])
    assert model.backbone.out_channels == 1280
    assert tuple(model.pixel_mean.flatten().tolist()) == pytest.approx(model.backbone.pixel_mean)
    images = torch.rand(2, 3, 96, 96)
    targets = [dict(boxes=torch.tensor([[10.0, 20.0, 60.0, 80.0]]), labels=torch.tensor([0])),
               dict(boxes=torch.tensor([[30.0, 5.0, 90.0, 50.0]]), labels=torch.tensor([1]))]
    model.train()
    losses = model(images, targets)
    total = sum(v for k, v in losses.items() if k.startswith("loss"))
    total.backward()
    assert torch.isfinite(total)
    assert model.backbone._conv_head.weight.grad is not None  # trainable part of the plugin backbone
    assert model.backbone._conv_stem.weight.grad is None  # frozen by frozen_stages
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert [len(d["scores"]) for d in detections] == [5, 5]
    assert all(int(d["labels"].max()) <= 1 for d in detections)
