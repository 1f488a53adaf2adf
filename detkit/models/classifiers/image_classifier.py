"""An image classifier on a detkit backbone: what ``detkit classify`` trains.

``ImageClassifier(backbone, head=dict(type="cls_head"), loss=dict(type="cross_entropy"))`` shares
the backbone, normalisation and image checks with the detectors (:class:`~detkit.models.base.BackboneModel`),
so its checkpoint's ``backbone.*`` weights are a detector's ``backbone.pretrained`` as they are.

Call contract, ``forward(images, targets=None, metas=None)``, the detectors' (so the trainer and the
evaluation loop need nothing of their own):

* ``images``: float ``[N, C, H, W]`` in 0..1 (RGB, or grey for an ``in_channels=1`` backbone, which
  also takes RGB and converts it to luma);
* ``targets`` (training mode only, required there): one dict per image with ``label`` (an int64
  scalar tensor or int, ``0..C-1``); ``image_id`` and ``meta`` name the image in errors;
* ``metas``: accepted and unused (the evaluation loop passes them to every model).

Training mode returns the loss dict (``loss_cls`` and the batch's ``stat_accuracy``); eval mode one
dict per image: ``scores`` (FloatTensor ``[C]``, softmax probabilities) and ``labels`` (int64 scalar,
the top-1 class). :meth:`logits` gives the raw ``[N, C]`` logits (for export or your own use).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from detkit import registry
from detkit.errors import ConfigError, DataError
from detkit.models.base import BackboneModel, is_tracing
from detkit.models.detectors.base import image_name
from detkit.registry import Spec

__all__ = ["ImageClassifier"]


class ImageClassifier(BackboneModel):
    """Backbone + classification head + loss (see the module docstring).

    Args:
        backbone: backbone config or module.
        head: head config, built with ``in_channels=backbone.out_channels`` and ``num_classes``
            (default: global average pool + linear, ``dict(type="cls_head")``).
        loss: loss config, built with ``num_classes`` (default ``dict(type="cross_entropy")``).
        num_classes, class_names: injected by the builder from the class list.
    """

    def __init__(self, backbone: Spec, head: Spec | None = None, loss: Spec | None = None, *,
                 num_classes: int, class_names: Sequence[str] | None = None):
        super().__init__(backbone, num_classes, class_names)
        self.head = registry.build("heads", head if head is not None else {"type": "cls_head"},
                                   path="model.head", in_channels=self.backbone.out_channels,
                                   num_classes=num_classes)
        self.loss = registry.build("losses", loss if loss is not None else {"type": "cross_entropy"},
                                   path="model.loss", num_classes=num_classes)
        for name in ("head", "loss"):
            found = getattr(getattr(self, name), "num_classes", num_classes)
            if found != num_classes:
                raise ConfigError(f"model.{name}: it expects {found} classes but the data has {num_classes}; "
                                  f"leave num_classes out of its config (it follows the class list)")

    def logits(self, images: Tensor) -> Tensor:
        """``[N, C]`` class logits of images 0..1."""
        return self.head(self.features(images))

    def forward(self, images: Tensor, targets: Sequence[Mapping] | None = None,
                metas: Sequence[Mapping | None] | None = None):
        self.check_images(images)
        if self.training:
            labels = self._labels(targets, images)
            return self.loss(self.logits(images), labels)
        if targets is not None:
            raise ValueError("ImageClassifier in eval mode takes no targets")
        scores = self.logits(images).float().softmax(dim=1)
        labels = scores.argmax(dim=1)
        return [{"scores": s, "labels": c} for s, c in zip(scores, labels)]

    def _labels(self, targets, images: Tensor) -> Tensor:
        """The targets' labels as one int64 tensor on the images' device, checked."""
        if targets is None:
            raise ValueError("ImageClassifier in training mode needs targets (call model.eval() to predict)")
        if isinstance(targets, Mapping) or not isinstance(targets, Sequence):
            raise TypeError(f"targets must be a list with one dict per image, got {type(targets).__name__}")
        if not is_tracing() and len(targets) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(targets)} targets")
        values = []
        for i, target in enumerate(targets):
            label = target.get("label") if isinstance(target, Mapping) else None
            if label is None:
                raise ValueError(f"targets[{i}] must be a dict with a 'label' (the image's class index)")
            values.append(torch.as_tensor(label, dtype=torch.int64).reshape(()).to(images.device))
        labels = torch.stack(values)
        if not is_tracing():
            bad = ((labels < 0) | (labels >= self.num_classes)).nonzero().flatten()
            if bad.numel():
                i = int(bad[0])
                name = image_name(targets[i].get("meta"), i)
                raise DataError(f"targets[{i}]['label'] must lie in 0..{self.num_classes - 1}, found "
                                f"{int(labels[i])} (image {name})")
        return labels
