"""Build datasets from the ``data`` section of a config, verified and ready to train on.

Layout::

    data = dict(
        classes=None,          # stated once here; None = the dataset's own (VOC's 20, COCO's file)
        train=dict(type='voc', root=..., split='train', transforms=dict(...)),
        val=dict(type='voc', root=..., split='val', transforms=dict(...)),
        verify=True,           # check every sample once when the data set is built (see below)
        max_image_pixels=None, # refuse larger images; None: Pillow's limit (89.5M), 0: no limit
    )

:func:`build_dataset` builds the split's data set, then runs the verification pass of
:mod:`detkit.data.verify` over it: unusable samples (missing or undecodable image, a decompression
bomb over the pixel limit, an unusable annotation) are excluded and logged with their count and
list; restored truncated JPEGs are counted. A training split without a single box is a warning (the
model would learn that there is nothing to detect), a split with no usable sample an error.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from detkit import registry
from detkit.errors import ConfigError, DataError

__all__ = ["build_dataset", "data_max_pixels", "check_same_classes"]

logger = logging.getLogger(__name__)


def data_max_pixels(cfg: dict) -> int | None:
    """``data.max_image_pixels`` of the config (None when unset: the reader's default applies)."""
    value = (cfg.get("data") or {}).get("max_image_pixels")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"data.max_image_pixels: expected a number of pixels >= 0 (0: no limit), got {value!r}")
    return value


def build_dataset(cfg: dict, split: str, *, verify: bool | None = None):
    """Build the dataset of ``cfg['data'][split]`` with the shared class list injected, then verify it.

    ``verify`` overrides ``data.verify`` (default True); ``check-data`` builds with ``verify=False``
    and runs the pass itself to print the full report.
    """
    data = cfg.get("data")
    if not isinstance(data, dict):
        raise ConfigError("config has no 'data' section")
    if split not in data or not isinstance(data[split], dict):
        splits = [k for k, v in data.items() if isinstance(v, dict) and "type" in v]
        raise ConfigError(f"data.{split}: no such split in the config; it defines: {', '.join(splits) or 'none'}")
    defaults = {}
    if data.get("classes"):
        defaults["classes"] = tuple(data["classes"])
    dataset = registry.build("datasets", data[split], path=f"data.{split}", **defaults)
    max_pixels = data_max_pixels(cfg)
    if max_pixels is not None:
        dataset.max_image_pixels = max_pixels
    if verify is None:
        verify = data.get("verify", True)
    if verify:
        from detkit.data.verify import can_verify

        if can_verify(dataset):
            verify_and_exclude(dataset, f"data.{split}", training=split == "train")
        else:
            logger.debug("data.%s: %s has no image files to verify", split, type(dataset).__name__)
    return dataset


def verify_and_exclude(dataset, name: str, *, training: bool = False, **options):
    """Run the verification pass, log it, drop the unusable samples; returns the report."""
    from detkit.data.verify import log_report, verify_dataset

    report = verify_dataset(dataset, name=name, **options)
    log_report(report)
    excluded = [c.index for c in report.excluded]
    if excluded and len(excluded) == len(dataset):
        raise DataError(f"{name}: none of its {len(dataset)} samples is usable; first problem: "
                        f"{report.excluded[0].message}")
    if excluded:
        try:
            dataset.exclude(excluded)
        except NotImplementedError as exc:
            logger.warning("%s: %s; the %d unusable samples stay in and train.bad_sample decides", name, exc,
                           len(excluded))
    if training and report.num_boxes == 0:
        logger.warning("%s: the training data has no boxes at all (%d images, all negatives): the model can "
                       "only learn that there is nothing to detect. Check the class names (data.classes) and "
                       "the annotation files (`detkit check-data`)", name, len(dataset))
    dataset.verification = report
    return report


def check_same_classes(a: Sequence[str], b: Sequence[str], what_a: str, what_b: str, *,
                       hint: str = "set data.classes to the same list") -> None:
    """Two class lists that must agree, order included (training vs validation data, a checkpoint vs
    the data); ``hint`` is the advice in the error."""
    if tuple(a) != tuple(b):
        raise ConfigError(f"{what_a} has classes {list(a)} but {what_b} has {list(b)}; labels would not "
                          f"match ({hint})")
