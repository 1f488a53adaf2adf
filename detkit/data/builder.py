"""Build datasets from the ``data`` section of a config, with the one class list it states.

Layout::

    data = dict(
        classes=None,          # stated once here; None = the dataset's own (VOC's 20, COCO's file)
        train=dict(type='voc', root=..., split='train', transforms=dict(...)),
        val=dict(type='voc', root=..., split='val', transforms=dict(...)),
    )
"""

from __future__ import annotations

from collections.abc import Sequence

from detkit import registry
from detkit.errors import ConfigError


def build_dataset(cfg: dict, split: str):
    """Build the dataset of ``cfg['data'][split]`` with the shared class list injected."""
    data = cfg.get("data")
    if not isinstance(data, dict):
        raise ConfigError("config has no 'data' section")
    if split not in data or not isinstance(data[split], dict):
        splits = [k for k, v in data.items() if isinstance(v, dict) and "type" in v]
        raise ConfigError(f"data.{split}: no such split in the config; it defines: {', '.join(splits) or 'none'}")
    defaults = {}
    if data.get("classes"):
        defaults["classes"] = tuple(data["classes"])
    return registry.build("datasets", data[split], path=f"data.{split}", **defaults)


def check_same_classes(a: Sequence[str], b: Sequence[str], what_a: str, what_b: str, *,
                       hint: str = "set data.classes to the same list") -> None:
    """Two class lists that must agree, order included (training vs validation data, a checkpoint vs
    the data); ``hint`` is the advice in the error."""
    if tuple(a) != tuple(b):
        raise ConfigError(f"{what_a} has classes {list(a)} but {what_b} has {list(b)}; labels would not "
                          f"match ({hint})")
