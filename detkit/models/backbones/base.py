"""What every detkit backbone shares: the stage layout, pretrained loading, freezing, norm_eval,
input-channel adaptation, the minimum-size check and multi-level outputs.

A family file builds the network (torchvision's definition where torchvision has it), hands its
trunk modules to :class:`Backbone` under their original names (so torchvision state dicts load
unchanged) and describes them with a :class:`Layout`:

* the **stem**: the modules before the first stage (``frozen_stages=0`` freezes it);
* the **stages**: ``out_indices`` index them (``0`` is the first stage after the stem) and
  ``frozen_stages=i`` freezes the stem and the first ``i`` stages;
* ``first_conv``: the convolution that sees the image (adapted for ``in_channels``);
* ``classifier_keys``: state-dict prefixes of the removed classifier, dropped without comment
  when loading a full classification checkpoint.

The modules stay where the original network had them (``layer1``, ``features.4``) and a stage
only lists their names; the forward pass looks them up each time, so swapping a submodule
(``SyncBatchNorm.convert_sync_batchnorm``) keeps working.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from dataclasses import dataclass, field
from itertools import chain

import torch
from torch import Tensor, nn

from detkit.checkpoint import read_state_dict
from detkit.errors import CheckpointError, ConfigError
from detkit.models.backbones.weights import pretrained_source

__all__ = [
    "backbone_factory",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "Layout",
    "LoadReport",
    "Stage",
    "adapt_input_conv_weight",
    "sequential_names",
]

logger = logging.getLogger(__name__)

# torchvision's ImageNet statistics (0..1 scale): what its pretrained weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Keys longer than this many are summarised as "(+N more)" in load messages.
_MAX_KEYS_SHOWN = 12


@dataclass(frozen=True)
class Stage:
    """A run of trunk modules, executed in order.

    ``modules`` are dotted paths inside the backbone (``"layer1"``, ``"features.4"``);
    ``channels`` and ``stride`` describe the stage's output (stride = total downsampling).
    """

    modules: tuple[str, ...]
    channels: int
    stride: int


@dataclass(frozen=True)
class Layout:
    """How a family's trunk is cut into stem and stages, and what its weights expect."""

    stem: Stage
    stages: tuple[Stage, ...]
    first_conv: str
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    min_input_size: int
    classifier_keys: tuple[str, ...] = ()
    # The torchvision network (a ``torchvision.models.get_model_weights`` name) whose published
    # weights this trunk loads unchanged; None when there are none (see ``weights.py``).
    published_weights: str | None = None


def sequential_names(prefix: str, start: int, stop: int) -> tuple[str, ...]:
    """Paths of ``prefix[start:stop]`` in an ``nn.Sequential``: ``("features.0", "features.1", ...)``."""
    return tuple(f"{prefix}.{i}" for i in range(start, stop))


@dataclass
class LoadReport:
    """What :meth:`Backbone.load_pretrained` did with each key of the file."""

    path: str
    loaded: list[str] = field(default_factory=list)
    dropped_classifier: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # first conv summed / repeated to in_channels
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        lines = []
        if self.missing:
            lines.append(f"  {len(self.missing)} missing from the file: {_key_list(self.missing)}")
        if self.unexpected:
            lines.append(f"  {len(self.unexpected)} unexpected in the file: {_key_list(self.unexpected)}")
        if self.mismatched:
            shown = [
                f"{key} (file {list(src)} vs model {list(dst)})"
                for key, src, dst in self.mismatched[:_MAX_KEYS_SHOWN]
            ]
            more = len(self.mismatched) - len(shown)
            lines.append(
                f"  {len(self.mismatched)} with a different shape: {', '.join(shown)}"
                + (f" (+{more} more)" if more > 0 else "")
            )
        return "\n".join(lines)


def _key_list(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    more = len(keys) - _MAX_KEYS_SHOWN
    return shown + (f" (+{more} more)" if more > 0 else "")


def adapt_input_conv_weight(weight: Tensor, in_channels: int) -> Tensor:
    """Convert a first-conv weight ``[O, C, k, k]`` to ``in_channels`` input channels.

    One channel: the sum over the input channels, so a grey image gives exactly the response
    the original conv gives to that image replicated to C channels. Other counts: the channels
    are repeated cyclically and scaled by ``C / in_channels`` (timm's ``adapt_input_conv``), which
    keeps the response to an input whose channels are all equal.
    """
    source = weight.shape[1]
    if in_channels == source:
        return weight
    w = weight.float()
    if in_channels == 1:
        w = w.sum(dim=1, keepdim=True)
    else:
        repeats = math.ceil(in_channels / source)
        w = w.repeat(1, repeats, 1, 1)[:, :in_channels] * (source / in_channels)
    return w.to(weight.dtype)


class Backbone(nn.Module):
    """A classification network with its classifier removed, as a detection backbone.

    Args:
        name: the registered name (used in messages).
        modules: the trunk modules, registered under these names in this order.
        layout: stem, stages and facts about the weights (see :class:`Layout`).
        pretrained: path of a local weights file (a torchvision state dict or a detkit
            checkpoint), or the name of torchvision's published weights for this network
            (``"imagenet"``, ``"IMAGENET1K_V1"``...; fetched into the torch hub cache, see
            :mod:`detkit.models.backbones.weights`).
        strict: missing/unexpected keys and shape mismatches are errors; with ``False`` they
            are logged and skipped. A file of which nothing matches is always an error.
        in_channels: input channels; the first conv is adapted (see
            :func:`adapt_input_conv_weight`; the same rule converts 3-channel pretrained weights).
        frozen_stages: ``-1`` none; ``0`` the stem; ``i`` the stem and the first ``i`` stages.
            Frozen parameters get ``requires_grad=False`` and frozen modules stay in eval mode.
        norm_eval: keep every BatchNorm in eval mode (running statistics frozen) during training;
            their affine parameters still train unless frozen.
        out_indices: stage indices to return (negative counts from the end); ``forward`` then
            returns a list of maps, described by ``out_channels_list`` and ``strides``. Stages after
            the last requested one are not run.

    Attributes: ``out_channels``, ``stride`` (of the last returned map), ``out_channels_list``,
    ``strides`` (one entry per returned map), ``pixel_mean``, ``pixel_std`` (one value per input
    channel, 0..1 scale), ``min_input_size``, ``in_channels``, ``num_stages``.
    """

    def __init__(
        self,
        name: str,
        modules: Mapping[str, nn.Module],
        layout: Layout,
        *,
        pretrained: str | os.PathLike | None = None,
        strict: bool = True,
        in_channels: int = 3,
        frozen_stages: int = -1,
        norm_eval: bool = False,
        out_indices: Sequence[int] | None = None,
    ):
        super().__init__()
        self.name = name
        for module_name, module in modules.items():
            self.add_module(module_name, module)
        self.layout = layout
        self.num_stages = len(layout.stages)
        self._check_layout()

        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ConfigError(
                f"backbone '{name}': in_channels must be a positive integer, got {in_channels!r}"
            )
        self.in_channels = in_channels
        self.out_indices = self._normalise_out_indices(out_indices)
        self.frozen_stages = self._check_frozen_stages(frozen_stages)
        self.norm_eval = bool(norm_eval)

        returned = self.out_indices if self.out_indices is not None else (self.num_stages - 1,)
        self.out_channels_list = [layout.stages[i].channels for i in returned]
        self.strides = [layout.stages[i].stride for i in returned]
        self.out_channels = self.out_channels_list[-1]
        self.stride = self.strides[-1]
        self._last_stage = returned[-1]
        self.pixel_mean = _per_channel(layout.pixel_mean, in_channels)
        self.pixel_std = _per_channel(layout.pixel_std, in_channels)
        self.min_input_size = layout.min_input_size

        self._adapt_first_conv(in_channels)
        if pretrained is not None:
            # A published name ("imagenet") becomes its file in the torch hub cache; a path stays.
            pretrained = pretrained_source(name, layout.published_weights, pretrained)
            self.load_pretrained(pretrained, strict=strict)
        self._freeze()
        self.train()  # applies the eval-mode rules of frozen stages and norm_eval

    # -- construction helpers ------------------------------------------------------------------
    def _check_layout(self) -> None:
        """Every trunk module is listed in exactly one stage and every listed path exists: a
        module left out would silently never run (and its weights never load)."""
        paths = [p for part in (self.layout.stem, *self.layout.stages) for p in part.modules]
        for path in paths:
            try:
                self.get_submodule(path)
            except AttributeError as exc:
                raise RuntimeError(f"backbone '{self.name}': layout names missing module '{path}'") from exc
        covered = tuple(p + "." for p in paths)
        stray = [k for k in self.state_dict() if not k.startswith(covered)]
        if stray or len(set(paths)) != len(paths):
            raise RuntimeError(f"backbone '{self.name}': layout does not cover {stray} exactly once")

    def _normalise_out_indices(self, out_indices) -> tuple[int, ...] | None:
        if out_indices is None:
            return None
        if isinstance(out_indices, int):
            out_indices = (out_indices,)
        n = self.num_stages
        try:
            indices = tuple(int(i) + n if int(i) < 0 else int(i) for i in out_indices)
        except (TypeError, ValueError):
            indices = ()
        if not indices or any(not 0 <= i < n for i in indices) or list(indices) != sorted(set(indices)):
            raise ConfigError(
                f"backbone '{self.name}': out_indices must be increasing stage indices in "
                f"0..{n - 1} (stages: {self._describe_stages()}), got {out_indices!r}"
            )
        return indices

    def _check_frozen_stages(self, frozen_stages) -> int:
        if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or not (
            -1 <= frozen_stages <= self.num_stages
        ):
            raise ConfigError(
                f"backbone '{self.name}': frozen_stages must be -1 (none), 0 (stem) or 1.."
                f"{self.num_stages} (stem + that many stages), got {frozen_stages!r}"
            )
        return frozen_stages

    def _describe_stages(self) -> str:
        return ", ".join(
            f"{i}: {s.channels} ch stride {s.stride}" for i, s in enumerate(self.layout.stages)
        )

    def _adapt_first_conv(self, in_channels: int) -> None:
        """Replace the first conv by one taking ``in_channels``; its initial weights are the
        original ones adapted by the same rule as pretrained weights."""
        conv = self.get_submodule(self.layout.first_conv)
        if conv.in_channels == in_channels:
            return
        if conv.groups != 1:
            raise RuntimeError(f"backbone '{self.name}': cannot adapt a grouped first conv")
        new = nn.Conv2d(
            in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode,
            device=conv.weight.device, dtype=conv.weight.dtype,
        )
        with torch.no_grad():
            new.weight.copy_(adapt_input_conv_weight(conv.weight, in_channels))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        parent_path, _, attr = self.layout.first_conv.rpartition(".")
        setattr(self.get_submodule(parent_path) if parent_path else self, attr, new)

    def _frozen_paths(self) -> list[str]:
        if self.frozen_stages < 0:
            return []
        parts = (self.layout.stem, *self.layout.stages[: self.frozen_stages])
        return [path for part in parts for path in part.modules]

    def _freeze(self) -> None:
        for path in self._frozen_paths():
            for param in self.get_submodule(path).parameters():
                param.requires_grad_(False)

    # -- pretrained weights ------------------------------------------------------------------
    def load_pretrained(self, path: str | os.PathLike, *, strict: bool = True) -> LoadReport:
        """Load a local weights file (see :func:`detkit.checkpoint.read_state_dict` for the accepted
        formats).

        The removed classifier's keys are dropped silently. A 3-channel first conv is adapted to
        ``in_channels``. Other missing/unexpected keys and shape mismatches raise one
        :class:`CheckpointError` listing them all (``strict=True``) or are logged as one warning and
        skipped (``strict=False``).
        """
        state = read_state_dict(path, submodule="backbone")
        own = self.state_dict()
        report = LoadReport(str(path))
        accepted: dict[str, Tensor] = {}
        first_conv_weight = self.layout.first_conv + ".weight"
        for key, value in state.items():
            if key.startswith(self.layout.classifier_keys) and key not in own:
                report.dropped_classifier.append(key)
            elif key not in own:
                report.unexpected.append(key)
            elif value.shape == own[key].shape:
                accepted[key] = value
            elif key == first_conv_weight and _differs_only_in_input_channels(value, own[key]):
                accepted[key] = adapt_input_conv_weight(value, own[key].shape[1])
                report.adapted.append(key)
            else:
                report.mismatched.append((key, tuple(value.shape), tuple(own[key].shape)))
        # A missing BatchNorm batch counter is harmless (old torchvision files lack it).
        mismatched_keys = {k for k, _, _ in report.mismatched}
        report.missing = [
            k for k in own
            if k not in state and k not in mismatched_keys and not k.endswith("num_batches_tracked")
        ]
        report.loaded = list(accepted)

        if not accepted:
            raise CheckpointError(
                f"{path}: none of its {len(state)} tensors fit backbone '{self.name}' "
                f"(is it a checkpoint of another network?)\n{report.problems()}"
            )
        if not report.clean:
            message = f"{path}: weights do not match backbone '{self.name}':\n{report.problems()}"
            if strict:
                raise CheckpointError(message + "\nPass strict=False to load the matching tensors anyway.")
            logger.warning("%s\nLoaded the %d matching tensors; the rest keep their initial values.",
                           message, len(accepted))
        self.load_state_dict(accepted, strict=False)
        logger.info(
            "backbone '%s': loaded %d tensors from %s (%d classifier keys dropped%s)",
            self.name, len(accepted), path, len(report.dropped_classifier),
            f", first conv adapted to {self.in_channels} channels" if report.adapted else "",
        )
        return report

    # -- modes -------------------------------------------------------------------------------
    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for path in self._frozen_paths():
                self.get_submodule(path).eval()
            if self.norm_eval:
                for module in self.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        self._check_input(x)
        return self._forward_features(x)

    def _check_input(self, x: Tensor) -> None:
        # Cheap checks that turn a conv's shape error deep inside the trunk into a clear one.
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"backbone '{self.name}' expects images [N, {self.in_channels}, H, W], got "
                f"{list(x.shape)}"
                + (" (build it with in_channels=... to change that)" if x.dim() == 4 else "")
            )
        h, w = x.shape[-2:]
        if h < self.min_input_size or w < self.min_input_size:
            raise ValueError(
                f"backbone '{self.name}' needs inputs of at least {self.min_input_size}x"
                f"{self.min_input_size} pixels to produce a feature map, got {h}x{w}"
            )

    def _forward_features(self, x: Tensor) -> Tensor | list[Tensor]:
        for path in self.layout.stem.modules:
            x = self.get_submodule(path)(x)
        outputs = []
        for index in range(self._last_stage + 1):
            for path in self.layout.stages[index].modules:
                x = self.get_submodule(path)(x)
            if self.out_indices is not None and index in self.out_indices:
                outputs.append(x)
        return outputs if self.out_indices is not None else x

    def feature_sizes(self, input_size: int | Sequence[int]) -> list[tuple[int, int]]:
        """``(h, w)`` of each map ``forward`` returns for an ``input_size`` (int or (H, W)) image.

        Computed by running the network on the meta device (shapes only, no arithmetic, no
        copy of the weights), so it is exact for every family, padding rules included.
        """
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        tensors = {
            name: torch.empty_like(t, device="meta")
            for name, t in chain(self.named_parameters(), self.named_buffers())
        }
        # Batch 2: BatchNorm in training mode refuses a single value per channel.
        x = torch.empty(2, self.in_channels, h, w, device="meta")
        with torch.no_grad():
            out = torch.func.functional_call(self, tensors, (x,))
        maps = out if isinstance(out, list) else [out]
        return [(int(m.shape[-2]), int(m.shape[-1])) for m in maps]

    def extra_repr(self) -> str:
        parts = [f"name={self.name!r}", f"out_channels={self.out_channels}", f"stride={self.stride}"]
        if self.out_indices is not None:
            parts.append(f"out_indices={self.out_indices}")
        if self.in_channels != 3:
            parts.append(f"in_channels={self.in_channels}")
        if self.frozen_stages >= 0:
            parts.append(f"frozen_stages={self.frozen_stages}")
        if self.norm_eval:
            parts.append("norm_eval=True")
        return ", ".join(parts)


def _differs_only_in_input_channels(src: Tensor, dst: Tensor) -> bool:
    return (
        src.dim() == 4 and dst.dim() == 4 and src.shape[0] == dst.shape[0] and src.shape[2:] == dst.shape[2:]
    )


def _per_channel(values: tuple[float, ...], in_channels: int) -> tuple[float, ...]:
    """Normalisation statistics for ``in_channels`` inputs: the channel average for one (grey)
    channel, the values repeated cyclically otherwise (matching the first-conv adaptation)."""
    if in_channels == len(values):
        return tuple(values)
    if in_channels == 1:
        return (sum(values) / len(values),)
    return tuple(values[i % len(values)] for i in range(in_channels))


def _factory_options(
    *,
    pretrained: str | os.PathLike | None = None,
    strict: bool = True,
    in_channels: int = 3,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    out_indices: Sequence[int] | None = None,
) -> Backbone:
    """The keyword options every built-in backbone factory takes (see :class:`Backbone`)."""


FACTORY_SIGNATURE = inspect.signature(_factory_options)


def backbone_factory(name: str, build: Callable[..., tuple[Mapping[str, nn.Module], Layout]], doc: str,
                     module: str, **net_options: Any) -> Callable[..., Backbone]:
    """A registry factory ``name(*, <net options>, pretrained, strict, in_channels, frozen_stages,
    norm_eval, out_indices) -> Backbone`` around ``build(**net_options) -> (modules, layout)``.

    The shared options are declared once (``FACTORY_SIGNATURE``) instead of once per net; a net's own
    options (LeNet-5's ``activation``) are given as ``net_options`` with their defaults and passed to
    ``build``. The factory exposes all of them as its signature, so the registry checks config keys
    against them and an unknown option is a ``TypeError`` as with a plain ``def``.
    """
    own = [inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default)
           for key, default in net_options.items()]
    signature = FACTORY_SIGNATURE.replace(parameters=own + list(FACTORY_SIGNATURE.parameters.values()))

    def factory(**options) -> Backbone:
        bound = signature.bind(**options)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        modules, layout = build(**{key: arguments.pop(key) for key in net_options})
        return Backbone(name, modules, layout, **arguments)

    factory.__name__ = factory.__qualname__ = name
    factory.__module__ = module
    factory.__doc__ = doc
    factory.__signature__ = signature
    return factory
