"""Published ImageNet weights for backbones: ``pretrained="imagenet"`` (or a torchvision weights name)
resolved through torchvision's weights API to a file in the torch hub cache, downloaded once.

Names accepted by a backbone's ``pretrained`` option (anything else is the path of a local file):

* ``"imagenet"`` or ``"DEFAULT"``: torchvision's recommended ImageNet weights for the network
  (``<Model>_Weights.DEFAULT``: ``IMAGENET1K_V2`` for ResNet-50 and MobileNetV2, ``IMAGENET1K_V1``
  for the others);
* a member of the network's weights enum, bare or qualified: ``"IMAGENET1K_V1"``,
  ``"ResNet50_Weights.IMAGENET1K_V2"`` (``torchvision.models.get_weight`` spelling).

A family declares which torchvision network its trunk is (``Layout.published_weights``); only those
trunks (torchvision's definitions, torchvision's module names) take these weights. Course variants,
LeNet, NiN and YOLOv1's darknet have none: asking for them is a :class:`ConfigError` saying so.

The file is torch.hub's: ``<torch.hub.get_dir()>/checkpoints/<file name of the weights URL>``
(``$TORCH_HOME/hub``, by default ``~/.cache/torch/hub``), the very file
``torchvision.models.resnet18(weights="DEFAULT")`` uses, so weights already fetched by torchvision are
reused and a cached file needs no network. A missing file is downloaded with torch.hub's own
downloader (``download_url_to_file``: progress bar, written to a temporary file and renamed when
complete) and checked against the SHA-256 prefix in its name (torchvision names its files
``<model>-<first hex digits of the SHA-256>.pth``); a failed or corrupt download leaves nothing in
the cache and is one :class:`CheckpointError` line naming the URL and the cache path.

Why a file and not ``Weights.get_state_dict()``: that call downloads to the same place and then
``torch.load``-s the file itself; handing detkit the file instead keeps one reader of weight files
(``weights_only=True``, errors naming the file, classifier keys dropped, every other key checked by
``Backbone.load_pretrained``).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from urllib.parse import urlparse

from detkit.errors import CheckpointError, ConfigError

__all__ = ["is_published_name", "resolve_weights", "cached_file", "fetch", "pretrained_source"]

logger = logging.getLogger(__name__)

DEFAULT_NAMES = ("imagenet", "DEFAULT")
# "IMAGENET1K_V1" or "ResNet50_Weights.IMAGENET1K_V1": torchvision's enum member names are upper case.
_ENUM_NAME = re.compile(r"(?:[A-Za-z0-9_]+_Weights\.)?[A-Z][A-Z0-9_]*")
# What every torchvision family in detkit is set up for (GoogLeNet's 0.5 / 0.5 statistics included:
# they replace the transform_input step torchvision applies to these same ImageNet-normalised inputs).
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def is_published_name(value) -> bool:
    """Whether ``pretrained=value`` names published weights rather than a local file."""
    return isinstance(value, str) and (value in DEFAULT_NAMES or bool(_ENUM_NAME.fullmatch(value)))


def resolve_weights(backbone: str, model: str | None, name: str):
    """The torchvision weights enum member that ``name`` means for ``backbone`` (whose trunk is
    torchvision's ``model``, or None when no weights are published for it)."""
    if model is None:
        raise ConfigError(
            f"backbone '{backbone}': pretrained={name!r} asks for published ImageNet weights, but "
            f"torchvision publishes none for this network; pass pretrained=PATH of a weights file "
            f"(a state dict or a detkit checkpoint) instead"
        )
    from torchvision.models import get_model_weights

    enum = get_model_weights(model)
    usable = [m.name for m in enum if _expects_imagenet_statistics(m)]
    choices = ", ".join(usable + [f"DEFAULT (= {enum.DEFAULT.name})"])
    qualifier, _, member = ("DEFAULT" if name == "imagenet" else name).rpartition(".")
    if qualifier and qualifier != enum.__name__:
        raise ConfigError(
            f"backbone '{backbone}': pretrained={name!r} names {qualifier} weights, but this network "
            f"takes {enum.__name__} ({choices})"
        )
    try:
        weights = enum[member]
    except KeyError:
        raise ConfigError(
            f"backbone '{backbone}': {enum.__name__} has no {member!r}; use 'imagenet' or one of: {choices}"
        ) from None
    if weights.name not in usable:
        transform = weights.transforms()
        raise ConfigError(
            f"backbone '{backbone}': {weights!r} expects inputs normalised with mean "
            f"{tuple(transform.mean)} and std {tuple(transform.std)}, not the ImageNet statistics the "
            f"backbone normalises with; use one of: {choices}"
        )
    return weights


def _expects_imagenet_statistics(weights) -> bool:
    transform = weights.transforms()
    return all(abs(a - b) < 1e-6 for got, want in zip((transform.mean, transform.std), _IMAGENET_STATS)
               for a, b in zip(got, want))


def cached_file(weights) -> Path:
    """Where torch.hub keeps the file of ``weights`` (a torchvision weights enum member)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def fetch(backbone: str, weights) -> Path:
    """The cached file of ``weights``, downloaded first (progress bar, SHA-256 prefix check) when missing."""
    import torch.hub

    path = cached_file(weights)
    if path.is_file():
        return path
    match = torch.hub.HASH_REGEX.search(path.name)
    logger.info("backbone '%s': downloading %r from %s to %s", backbone, weights, weights.url, path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        hash_prefix = match.group(1) if match else None
        torch.hub.download_url_to_file(weights.url, str(path), hash_prefix, progress=True)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError, a bad checksum RuntimeError
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"backbone '{backbone}': {weights!r} is not in the torch hub cache ({path}) and downloading "
            f"{weights.url} failed ({type(exc).__name__}: {reason}); connect to the internet once, put "
            f"the file at that path, or pass pretrained=PATH of a local copy"
        ) from exc
    return path


def pretrained_source(backbone: str, model: str | None, pretrained) -> str | os.PathLike:
    """What a backbone loads for its ``pretrained`` option: a published name becomes the cached (if
    need be, downloaded) file; a path is returned unchanged."""
    if isinstance(pretrained, bool) or not isinstance(pretrained, (str, os.PathLike)):
        raise ConfigError(
            f"backbone '{backbone}': pretrained must be 'imagenet', a torchvision weights name such as "
            f"'IMAGENET1K_V1', or the path of a local weights file, got {pretrained!r}"
        )
    if is_published_name(pretrained):
        return fetch(backbone, resolve_weights(backbone, model, pretrained))
    return pretrained
