"""Shared fixtures: fake installed distributions, the raccoon data set, slow-test gating, a private cache."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# ../shared next to the repository; DETKIT_TEST_RACCOON points elsewhere (e.g. from a git worktree).
RACCOON_ROOT = Path(os.environ.get("DETKIT_TEST_RACCOON") or REPO_ROOT.parent / "shared" / "datasets" / "raccoon")
_CACHE = None


def pytest_configure(config):
    # Tests never read or write the user's verification cache, and never depend on where the user
    # keeps data sets or which pixel limit they set (subprocesses inherit these too).
    global _CACHE
    _CACHE = tempfile.mkdtemp(prefix="detkit-test-cache-")
    os.environ["DETKIT_CACHE_DIR"] = _CACHE
    os.environ.pop("DETKIT_DATA", None)
    os.environ.pop("DETKIT_MAX_IMAGE_PIXELS", None)


def pytest_unconfigure(config):
    if _CACHE:
        shutil.rmtree(_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    # Slow tests (long training) run only when asked: `DETKIT_SLOW=1 make test`.
    if os.environ.get("DETKIT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set DETKIT_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def raccoon_root() -> Path:
    """The real raccoon VOC data set, read in place; the test is skipped when it is absent."""
    if not (RACCOON_ROOT / "Annotations").is_dir():
        pytest.skip(f"raccoon data set not found at {RACCOON_ROOT}")
    return RACCOON_ROOT


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """Create installed-looking distributions on a temporary sys.path entry.

    ``fake_dist("acme-det", {"detkit.backbones": {"tiny": "acme_det.nets:Tiny"}}, modules={"acme_det/nets.py": src})``
    writes ``acme_det-1.0.dist-info`` with METADATA and entry_points.txt, plus the given module files, and refreshes
    the registries. Everything is undone after the test.
    """
    from detkit import registry

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))

    def make(name: str, entry_points: dict, modules: dict | None = None, version: str = "1.0"):
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = []
        for group, eps in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{ep_name} = {target}" for ep_name, target in eps.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for rel, source in (modules or {}).items():
            path = site / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.parent != site and not (path.parent / "__init__.py").exists():
                (path.parent / "__init__.py").write_text("")
            path.write_text(textwrap.dedent(source))
        registry.refresh()
        return info

    yield make
    for mod in [m for m in sys.modules if m.startswith(("acme", "fake_", "broken_"))]:
        sys.modules.pop(mod, None)
    monkeypatch.undo()
    registry.refresh()


@pytest.fixture
def torch_hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache: ``TORCH_HOME`` in a temporary folder; returns its ``hub/checkpoints``
    folder, where torch.hub (and torchvision's weights API) keep downloaded weights.

    Downloads are limited to 127.0.0.1 while it is active: a test that would reach the internet (a
    wrong cache file name, say) fails at once instead.
    """
    from urllib.parse import urlparse

    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    assert checkpoints.parent == tmp_path / "torch" / "hub", "torch.hub.set_dir() overrides TORCH_HOME"
    checkpoints.mkdir(parents=True)
    download = torch.hub.download_url_to_file

    def local_only(url, *args, **kwargs):
        assert urlparse(url).hostname == "127.0.0.1", f"a test tried to download {url}"
        return download(url, *args, **kwargs)

    monkeypatch.setattr(torch.hub, "download_url_to_file", local_only)
    return checkpoints
