"""Backbones: parameters, GFLOPs and CPU speed at 448×448, and the facts of each backbone.

    python tools/bench.py backbones [--quick] [--size 448] [--runs 10] [--names resnet18,vgg16]
                                    [--threads N] [--out docs/backbones.md | --no-doc]

For every backbone detkit registers (random weights, eval mode, batch 1):

* parameters of the trunk (classifier removed);
* GFLOPs of one forward at ``size``×``size``, counted with ``torch.utils.flop_counter.FlopCounterMode``:
  convolutions and matrix products only, one multiply-add = 2 FLOPs (BatchNorm, ReLU and pooling are
  not counted);
* images/s: warm-up, then the median of ``--runs`` timed forwards (``--quick``: 1 warm-up, 3 runs);
* reference, in the same run: torchvision's own network, its trunk called directly (``features``, or
  conv1 ... layer4), timed interleaved with detkit's backbone; the ratio (median of the per-run
  speed ratios) shows what detkit's stage plumbing costs (1.00 = nothing). Only the nets torchvision
  defines under the same name have a reference (not LeNet-5, NiN, the darknets, the course variants).

Writes ``docs/backbones.md`` (unless ``--no-doc``): the table, the command, torch version and threads.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DOC = REPO_ROOT / "docs" / "backbones.md"
# Table order: each family, its course variant next to it; names not listed here come last.
ORDER = (
    "lenet5", "lenet5_bn_d2l", "alexnet", "alexnet_d2l", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn",
    "nin", "googlenet", "googlenet_d2l", "resnet18", "resnet18_d2l", "resnet34", "resnet50",
    "mobilenet_v2", "darknet_yolov1", "darknet_yolov1_tiny",
)
TORCHVISION = ("alexnet", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "googlenet", "resnet18", "resnet34",
               "resnet50", "mobilenet_v2")


def builtin_names() -> list[str]:
    """Every backbone detkit itself registers (plugins excluded), in table order."""
    from detkit import registry

    names = [c.name for c in registry.components("backbones", load=False) if c.distribution == "detkit"]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def _torchvision_trunk(name: str):
    """torchvision's network for ``name`` and a function running its trunk, or None."""
    import torchvision

    if name not in TORCHVISION:
        return None
    models = torchvision.models
    if name.startswith("resnet"):
        net = getattr(models, name)(weights=None).eval()

        def trunk(x):
            x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
            return net.layer4(net.layer3(net.layer2(net.layer1(x))))

        return trunk
    if name == "googlenet":
        net = models.googlenet(weights=None, aux_logits=False, init_weights=True).eval()
        order = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b",
                 "maxpool3", "inception4a", "inception4b", "inception4c", "inception4d",
                 "inception4e", "maxpool4", "inception5a", "inception5b"]

        def trunk(x):
            for child in order:
                x = getattr(net, child)(x)
            return x

        return trunk
    return getattr(models, name)(weights=None).eval().features  # alexnet, vgg*, mobilenet_v2


def _flops(fn, x) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn(x)
    return counter.get_total_flops()


def _time_interleaved(fns: list, x, warmup: int, runs: int) -> list[list[float]]:
    """Seconds per call of each function, run after run; the functions alternate so that changes
    of machine load hit all of them alike."""
    import torch

    times = [[] for _ in fns]
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns:
                fn(x)
        for _ in range(runs):
            for i, fn in enumerate(fns):
                start = time.perf_counter()
                fn(x)
                times[i].append(time.perf_counter() - start)
    return times


def measure(name: str, size: int, warmup: int, runs: int) -> dict:
    import torch

    from detkit import registry

    backbone = registry.build("backbones", dict(type=name)).eval()
    x = torch.rand(1, 3, size, size)
    reference = _torchvision_trunk(name)
    fns = [backbone] + ([reference] if reference is not None else [])
    times = _time_interleaved(fns, x, warmup, runs)
    # detkit / torchvision speed: the median of per-run ratios; each pair ran back to back, so this
    # is far less sensitive to other jobs on the machine than a ratio of two medians.
    ratio = statistics.median(r / o for o, r in zip(*times)) if reference is not None else None
    channels = backbone.out_channels_list
    all_stages = registry.build("backbones", dict(type=name, out_indices=list(range(backbone.num_stages))))
    return dict(
        name=name,
        params=sum(p.numel() for p in backbone.parameters()),
        gflops=_flops(backbone, x) / 1e9,
        ips=1.0 / statistics.median(times[0]),
        ref_ips=1.0 / statistics.median(times[1]) if reference is not None else None,
        ratio=ratio,
        out_channels=channels[-1],
        stride=backbone.stride,
        map_size=backbone.feature_sizes(size)[-1],
        stage_channels=all_stages.out_channels_list,
        stage_strides=all_stages.strides,
        min_size=backbone.min_input_size,
        mean=backbone.pixel_mean,
        std=backbone.pixel_std,
        weights=_published(backbone),
    )


def _published(backbone) -> str | None:
    """The weights ``pretrained="imagenet"`` loads (torchvision's DEFAULT), or None."""
    if backbone.layout.published_weights is None:
        return None
    from torchvision.models import get_model_weights

    return get_model_weights(backbone.layout.published_weights).DEFAULT.name


def _speed_table(rows: list[dict], size: int) -> list[str]:
    lines = [
        f"| backbone | params (M) | GFLOPs @{size} | images/s @{size} | torchvision trunk images/s "
        "| detkit / torchvision |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ref = f"{r['ref_ips']:.2f}" if r["ref_ips"] else "—"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else "—"
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.2f} | {r['gflops']:.2f} | {r['ips']:.2f} | {ref} "
            f"| {ratio} |"
        )
    return lines


def _facts_table(rows: list[dict], size: int) -> list[str]:
    lines = [
        f"| backbone | out_channels | stride | map @{size} | stage channels (out_indices 0..) "
        "| stage strides | min_input_size | pixel_mean / pixel_std | `pretrained=\"imagenet\"` loads |",
        "|---|---:|---:|---:|---|---|---:|---|---|",
    ]
    for r in rows:
        stats = "ImageNet" if r["mean"] == (0.485, 0.456, 0.406) else f"{r['mean']} / {r['std']}"
        h, w = r["map_size"]
        lines.append(
            f"| {r['name']} | {r['out_channels']} | {r['stride']} | {h}×{w} | "
            f"{', '.join(map(str, r['stage_channels']))} | {', '.join(map(str, r['stage_strides']))} | "
            f"{r['min_size']} | {stats} | {r['weights'] or '—'} |"
        )
    return lines


_DOC_INTRO = """\
# Backbones

<!-- Generated by tools/benchmarks/backbones.py; edit the template there, not this file. -->

Every backbone is a classification network with its classifier removed (`detkit/models/backbones/`,
one file per family, shared behaviour in `base.py`). Build one with
`detkit.registry.build("backbones", dict(type="resnet18", ...))`; in a config:
`backbone=dict(type="resnet18", pretrained="imagenet", frozen_stages=1)`.

Torchvision's definitions are used where torchvision has the network (AlexNet, VGG, GoogLeNet,
ResNet, MobileNetV2), with torchvision's module names, so torchvision's weights load unchanged
(the classifier's keys are dropped). LeNet-5 and NiN are written in detkit; their docstrings say
where they differ from the papers (padding so maps are exactly H/stride; LeNet's classic tanh +
average pooling by default, `activation="relu", pool="max"` for the modern variant).

**YOLOv1's networks** (`darknet.py`): `darknet_yolov1` is the paper's Figure 3, the 20 layers it
pre-trains on ImageNet (`depth=20`, default; 1024 channels at stride 32) or all 24 convolutional
layers (`depth=24`, stride 64); `darknet_yolov1_tiny` is Fast YOLO's 9-layer network (darknet's
`yolo-tiny.cfg`). Leaky ReLU 0.1, no batch-norm as in the paper (`norm=True`: darknet's cfg, batch-norm
after every conv), RGB in 0..1 without normalisation as darknet. The paper's detection head is
`YOLOv1Head` with `num_convs=4, conv_channels=1024, conv_strides=(1, 2, 1, 1), norm=False,
activation="linear"` (`configs/_base_/models/yolov1_darknet.py`, recipe `configs/yolov1_darknet_voc.py`).

**The course's variants** (`*_d2l`, next to their families): the nets as d2l.ai's code (which the
course follows) builds them, where torchvision's differ; their map sizes are the book's layer tables
(tested in `tests/test_course_nets.py`):

| name | the course's net | differs from the detkit / torchvision net by |
|---|---|---|
| `lenet5_bn_d2l` | BN-LeNet | batch-norm after both convs, sigmoid, unpadded convs (28 → 24 → 12 → 8 → 4), no C5 |
| `alexnet_d2l` | AlexNet | the paper's 96/256/384/384/256 channels (torchvision: 64/192/384/256/256), first conv padded by 1, `lrn=True`: the paper's local response normalisation after conv1 and conv2 (`lrn=False`: d2l's code exactly) |
| `googlenet_d2l` | GoogLeNet | real 5×5 convs in the third inception branch (torchvision: 3×3), no batch-norm, d2l's block layout (stages `b2`…`b5`) |
| `resnet18_d2l` | ResNet-18 | d2l's residual block (biases, 1×1 shortcut without BN); `stem="small"` (default, `d2l.resnet18`: 3×3/1 conv, no max-pool, stride 8) or `stem="imagenet"` (7×7/2 conv + max-pool, stride 32) |

They are initialised as the book does (Xavier-uniform) and have no published weights.

## Options (every backbone)

| option | meaning |
|---|---|
| `pretrained` | `"imagenet"` (or `"DEFAULT"`): torchvision's recommended ImageNet weights for the network; a member of its weights enum (`"IMAGENET1K_V1"`, `"ResNet50_Weights.IMAGENET1K_V2"`). Taken from the torch hub cache (`$TORCH_HOME/hub/checkpoints/`, the file torchvision itself uses), downloaded there once with a progress bar and a SHA-256 check when missing; offline, a cached file is enough. Nets without published weights (last column below) say so. Anything else is the path of a local weights file: a torchvision state dict (also wrapped under `"model"`/`"state_dict"`, or with DDP's `module.` prefix) or a detkit checkpoint (its `backbone.*` keys), read with `torch.load(weights_only=True)`. |
| `strict` | `True` (default): keys missing from the file, unexpected keys and shape mismatches are one error listing them; `False`: one logged warning, those keys skipped. A file of which nothing fits is always an error. |
| `in_channels` | input channels (1 for grey images). The first conv is adapted: 3-channel weights are summed for 1 channel, repeated and rescaled for other counts (timm's rule); `pixel_mean`/`pixel_std` then have one value per channel. Detectors take `in_channels=1` backbones with the usual RGB data: they convert it to grey themselves (ITU-R 601 luma, as PIL's `"L"`). |
| `frozen_stages` | `-1` none, `0` the stem, `i` the stem and the first `i` stages: `requires_grad=False` and eval mode (BatchNorm statistics frozen). |
| `norm_eval` | keep every BatchNorm in eval mode while training (statistics frozen, affine parameters still train). |
| `out_indices` | stage indices: `forward` returns a list of maps described by `out_channels_list` and `strides`; stages after the last requested one are not run. |

Attributes: `out_channels`, `stride` (last returned map), `pixel_mean`, `pixel_std` (0..1 scale; the
detector normalises with them), `min_input_size` (smaller inputs are a `ValueError` naming the
backbone), `feature_sizes(input_size)` (exact map sizes, computed on the meta device: use it rather
than `H // stride`, valid padding (AlexNet, BN-LeNet) loses cells).
"""


def write_doc(
    path: Path, rows: list[dict], size: int, command: str, env: str, load: tuple[float, float]
) -> None:
    text = [_DOC_INTRO, "## Stages and input statistics", ""]
    text += _facts_table(rows, size)
    text += [
        "",
        "GoogLeNet's 0.5 / 0.5 statistics are what torchvision's GoogLeNet weights expect (torchvision",
        "applies them through `transform_input=True`). LeNet-5 uses [-1, 1] inputs (zero-centred, for tanh);",
        "NiN and the course variants have no standard weights and use their family's statistics; the",
        "darknets take darknet's raw 0..1 pixels. The last column is the torchvision weights",
        "`pretrained=\"imagenet\"` loads (torchvision's `DEFAULT`).",
        "",
        f"## Size and CPU speed at {size}×{size}",
        "",
        f"Measured with `{command}` ({env}).",
        "",
        "GFLOPs: `torch.utils.flop_counter.FlopCounterMode`, convolutions and matrix products only, one",
        "multiply-add counted as 2 FLOPs. images/s: batch 1, eval mode, `torch.no_grad()`, median of the",
        "timed runs after warm-up. Reference: torchvision's own network (random weights), its trunk called",
        "directly, timed interleaved with detkit's backbone in the same run; detkit / torchvision is the",
        "median of the per-run speed ratios.",
        "",
        f"Load average (1 min) on this {os.cpu_count()}-core machine: {load[0]:.1f} at the start, "
        f"{load[1]:.1f} at the end."
        + (
            " Other jobs shared the CPU while this ran, so absolute images/s are noisy and lower than"
            " on an idle machine; the ratio column is the robust figure."
            if max(load) > 0.5 * (os.cpu_count() or 1)
            else ""
        ),
        "",
    ]
    text += _speed_table(rows, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text) + "\n")


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on Windows
        return float("nan")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str]) -> list[tuple[str, str]]:
    parser = argparse.ArgumentParser(prog="bench.py backbones", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 3 timed runs per backbone")
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--runs", type=int, default=None, help="timed runs (default 10, 3 with --quick)")
    parser.add_argument("--names", default=None, help="comma-separated backbone names (default: all built-in)")
    parser.add_argument("--out", type=Path, default=DEFAULT_DOC, help="markdown file to write")
    parser.add_argument("--no-doc", action="store_true", help="print only, do not write the markdown file")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    runs = args.runs or (3 if args.quick else 10)
    warmup = 1 if args.quick else 2
    names = [n.strip() for n in args.names.split(",") if n.strip()] if args.names else builtin_names()
    env = (
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {_cpu_name()}, "
        f"Python {platform.python_version()}"
    )
    print(f"backbones at {args.size}x{args.size}, batch 1, {warmup} warm-up + {runs} runs; {env}", flush=True)

    load_start = _load_average()
    rows = []
    for name in names:
        row = measure(name, args.size, warmup, runs)
        rows.append(row)
        ref = f"{row['ref_ips']:.2f}" if row["ref_ips"] else "-"
        print(
            f"  {name:13s} {row['params'] / 1e6:7.2f} M params  {row['gflops']:7.2f} GFLOPs  "
            f"{row['ips']:7.2f} img/s  (torchvision trunk {ref})",
            flush=True,
        )
    print()
    print("\n".join(_speed_table(rows, args.size)))
    if not args.no_doc:
        command = "python tools/bench.py backbones " + " ".join(argv)
        write_doc(args.out, rows, args.size, command.strip(), env, (load_start, _load_average()))
        print(f"\nwrote {args.out}")
    ratios = [r["ratio"] for r in rows if r["ratio"]]
    if not ratios:
        return []
    return [("the stage plumbing vs torchvision's own trunk (speed ratio, 1.00 = no cost; "
             "[docs/backbones.md](docs/backbones.md))", f"{min(ratios):.2f}–{max(ratios):.2f}×")]


if __name__ == "__main__":
    main(sys.argv[1:])
