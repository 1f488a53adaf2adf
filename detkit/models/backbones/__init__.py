"""Backbones: classification networks with their classifier removed.

One file per family (``lenet``, ``alexnet``, ``vgg``, ``nin``, ``googlenet``, ``resnet``,
``mobilenet``, ``darknet`` for YOLOv1's networks; the course's ``*_d2l`` variants live with their
family, ``d2l`` holds what they share) plus ``base`` (the shared
:class:`~detkit.models.backbones.base.Backbone`: pretrained loading, freezing, norm_eval,
input-channel adaptation, multi-level outputs) and ``weights`` (``pretrained="imagenet"``:
torchvision's published weights through the torch hub cache). They are registered as
entry points (``detkit.backbones``) and built with
``detkit.registry.build("backbones", dict(type="resnet18", ...))``.

Importing this package imports nothing heavy: family modules (and torchvision's model definitions)
load when a backbone is first built. ``Backbone`` is available here lazily.
"""

__all__ = ["Backbone"]


def __getattr__(name):
    if name == "Backbone":
        from detkit.models.backbones.base import Backbone

        return Backbone
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
