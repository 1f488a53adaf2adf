"""The ``detkit`` command line.

Each command parses its options and calls one function of the subsystem that does the work, so the
same thing is available from Python. Errors a user can fix (:class:`detkit.errors.DetkitError`) are
printed as one message and exit with status 2; set ``DETKIT_DEBUG=1`` to see their traceback.
"""

from __future__ import annotations

import functools
import os
import re
import sys

import click

from detkit import __version__
from detkit.inference import DEFAULT_CONF


def _friendly_errors(func):
    """Print DetkitError as a one-line message (exit 2) instead of a traceback; so too a file-system
    error of the machine (permission denied, read-only or full disk) that names its file."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from detkit.errors import DetkitError
        from detkit.fileio import ENVIRONMENT_ERRNOS

        try:
            return func(*args, **kwargs)
        except DetkitError as exc:
            if os.environ.get("DETKIT_DEBUG"):
                raise
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)
        except OSError as exc:
            if os.environ.get("DETKIT_DEBUG") or exc.errno not in ENVIRONMENT_ERRNOS or not exc.filename:
                raise
            click.secho(f"error: {exc.filename}: {exc.strerror}", fg="red", err=True)
            sys.exit(2)

    return wrapper


def _load(config, overrides):
    from detkit.config import load_config

    return load_config(config, overrides)


set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override config values by dotted path: --set a.b=1 c=2 (or repeat --set); +KEY=VALUE adds a key.",
)


unsafe_load_option = click.option(
    "--unsafe-load", is_flag=True,
    help="Allow a checkpoint that stores pickled Python objects. Loading it runs code from the file: only "
         "for files you trust (a warning is printed every time).",
)


_OVERRIDE = re.compile(r"^\+?[A-Za-z_][\w.\-]*=")


def expand_set_options(args: list[str]) -> list[str]:
    """``--set a=1 b=2`` → ``--set a=1 --set b=2`` (the mmdetection ``--cfg-options`` habit).

    After ``--set``, every following word of the form ``key=value`` is another override; the first
    word that is not (an option, a config path, a source) ends the list.
    """
    out, i = [], 0
    while i < len(args):
        out.append(args[i])
        if args[i] == "--set":
            if i + 1 < len(args):
                out.append(args[i + 1])
                i += 2
            else:
                i += 1
            while i < len(args) and _OVERRIDE.match(args[i]):
                out += ["--set", args[i]]
                i += 1
            continue
        i += 1
    return out


class _DetkitGroup(click.Group):
    def parse_args(self, ctx, args):
        return super().parse_args(ctx, expand_set_options(list(args)))


@click.group(cls=_DetkitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="detkit")
def main():
    """detkit: plugin-based object detection on PyTorch."""


# ----------------------------------------------------------------------------------------------
@main.command()
@click.option("--group", type=str, default=None, help="Only this group (backbones, heads, ...).")
@click.option("--no-load", is_flag=True, help="List names without importing any component.")
@_friendly_errors
def plugins(group, no_load):
    """List every registered component: group, name, distribution, version and load status."""
    from detkit import registry

    rows = registry.components(group, load=not no_load)
    header = ("GROUP", "NAME", "DISTRIBUTION", "VERSION", "STATUS")
    table = [(r.group, r.name, r.distribution, r.version, r.status) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *table)] if table else []
    if not table:
        click.echo("no components registered")
        return
    click.echo("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row, info in zip(table, rows):
        line = "  ".join(str(x).ljust(w) for x, w in zip(row, widths))
        colour = {"ok": None, "failed": "red", "conflict": "red", "disabled": "yellow"}.get(info.status)
        click.secho(line.rstrip(), fg=colour)
        if info.error:
            click.secho(f"    -> {info.error}", fg=colour)
    failed = sum(r.status in ("failed", "conflict") for r in rows)
    if failed:
        click.secho(f"{failed} component(s) unusable; the others work normally.", fg="yellow", err=True)


# ----------------------------------------------------------------------------------------------
@main.group()
def config():
    """Inspect config files."""


@config.command("show")
@click.argument("config_file", type=click.Path(dir_okay=False))
@set_option
@_friendly_errors
def config_show(config_file, overrides):
    """Print the config a run uses as JSON: bases merged, overrides applied, defaults filled in."""
    from detkit.config import dump_config
    from detkit.schema import fill_defaults
    from detkit.tasks import task_of_config

    cfg = _load(config_file, overrides)
    click.echo(dump_config(fill_defaults(cfg, task_of_config(cfg).name)))


# ----------------------------------------------------------------------------------------------
def _stack(*decorators):
    """Options shared by two commands (``train`` and ``classify train``...), declared once."""

    def apply(func):
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


_train_options = _stack(
    click.argument("config_file", type=click.Path(dir_okay=False)),
    click.option("--work-dir", type=click.Path(file_okay=False), default=None,
                 help="Run directory (default work_dirs/<config name>)."),
    set_option,
    click.option("--resume", is_flag=False, flag_value="auto", default=None, metavar="[PATH]",
                 help="Resume from PATH, or from the latest checkpoint of the work dir when no PATH."),
    click.option("--seed", type=int, default=None, help="Random seed (overrides train.seed)."),
    click.option("--deterministic", is_flag=True, help="Use deterministic algorithms (slower)."),
    click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    click.option("--amp/--no-amp", default=None, help="Mixed precision on CUDA (overrides train.amp)."),
    click.option("--epochs", type=int, default=None, help="Number of epochs (overrides train.epochs)."),
    unsafe_load_option,
    click.option("--launcher", type=click.Choice(["none", "torchrun"]), default="none",
                 help="torchrun: join the process group that torchrun set up (also auto-detected)."),
    _friendly_errors,
)


def _run_train(task_name, config_file, overrides, **options):
    from detkit.engine.runner import train as run_train
    from detkit.tasks import TASKS

    cfg = _load(config_file, overrides)
    run_train(cfg, config_path=config_file, task=TASKS[task_name], **options)


@main.command()
@_train_options
def train(config_file, overrides, **options):
    """Train the detector described by CONFIG_FILE."""
    _run_train("detection", config_file, overrides, **options)


_eval_options = _stack(
    click.argument("args", nargs=-1, required=True, metavar="[CONFIG] MODEL"),
    click.option("--data", "data_config", type=click.Path(dir_okay=False), default=None,
                 help="A config whose data section to evaluate on (default: the model's own config)."),
    click.option("--split", default="val", show_default=True, help="Which data split to evaluate."),
    click.option("--metrics-out", type=click.Path(dir_okay=False), default=None,
                 help="Write the metrics as JSON here."),
    click.option("--device", default=None),
    click.option("--batch-size", type=int, default=None),
    unsafe_load_option,
    set_option,
    _friendly_errors,
)


def _run_eval(task_name, args, overrides, data_config, **options):
    """``[CONFIG] MODEL``: CONFIG replaces the config a checkpoint stores (``--set`` then applies to
    it), else ``--set`` changes the stored one."""
    from detkit.evaluation.run import evaluate
    from detkit.tasks import TASKS

    command = "detkit classify eval" if task_name == "classification" else "detkit eval"
    config_file, model = _split_model_args(args, (), f"{command} [CONFIG] MODEL [--data CONFIG]")
    cfg = _load(config_file, overrides) if config_file else None
    evaluate(cfg, model, task=TASKS[task_name], data=data_config,
             overrides=() if config_file else overrides, **options)


def _split_model_args(args: tuple[str, ...], tail: tuple[str, ...], usage: str) -> tuple[str | None, str, ...]:
    """``[CONFIG] MODEL <tail...>`` -> ``(config or None, model, *tail)``: the config is optional,
    a checkpoint stores its own and an exported model carries it."""
    from detkit.errors import ConfigError

    if len(args) == len(tail) + 1:
        return (None, *args)
    if len(args) == len(tail) + 2:
        return tuple(args)
    raise ConfigError(f"usage: {usage} (got {len(args)} argument(s))")


@main.command("eval")
@click.option("--metric", type=click.Choice(["voc07", "voc", "coco", "all"]), default="all",
              show_default=True)
@click.option("--out", "results_out", type=click.Path(dir_okay=False), default=None,
              help="Write the detections in COCO results JSON format here.")
@_eval_options
def eval_cmd(args, overrides, data_config, **options):
    """Evaluate MODEL (a checkpoint, .onnx or TorchScript file) on a split of its data and print VOC /
    COCO metrics. CONFIG replaces the config a checkpoint stores; --data CONFIG takes only the data."""
    _run_eval("detection", args, overrides, data_config, **options)


# ----------------------------------------------------------------------------------------------
@main.group()
def classify():
    """Image classification on the same backbones, trainer and checkpoints (backbone pre-training)."""


@classify.command("train")
@_train_options
def classify_train(config_file, overrides, **options):
    """Train the classifier described by CONFIG_FILE (ImageFolder, CIFAR or MNIST data).

    Its checkpoint holds backbone weights a detector loads: --set model.backbone.pretrained=PATH."""
    _run_train("classification", config_file, overrides, **options)


@classify.command("eval")
@click.option("--confusion-out", type=click.Path(dir_okay=False), default=None,
              help="Draw the confusion matrix into this PNG file.")
@_eval_options
def classify_eval(args, overrides, data_config, **options):
    """Evaluate a classifier MODEL (checkpoint) on a split: top-1 / top-5 accuracy and a per-class
    table. CONFIG replaces the config the checkpoint stores."""
    _run_eval("classification", args, overrides, data_config, **options)


@main.command()
@click.argument("args", nargs=-1, required=True, metavar="[CONFIG] MODEL SOURCE")
@click.option("--conf", type=float, default=DEFAULT_CONF, show_default=True,
              help="Keep (draw, save) detections scoring at least this. Evaluation keeps the config's low "
                   "model.postprocessor.score_threshold, which mAP needs; 0 keeps everything the model returns.")
@click.option("--iou", type=float, default=None, help="NMS IoU threshold.")
@click.option("--max-det", type=int, default=None, help="Maximum detections per image.")
@click.option("--classes", default=None, help="Keep only these classes (comma-separated names or ids).")
@click.option("--device", default=None)
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder (default runs/infer/expN).")
@click.option("--exist-ok", is_flag=True, help="Reuse an existing output folder.")
@click.option("--save-vis/--no-save-vis", default=True, help="Write annotated images/videos.")
@click.option("--save-json", is_flag=True, help="Write predictions.json (COCO results format).")
@click.option("--save-txt", is_flag=True, help="Write one .txt per image, one line per box.")
@click.option("--show", is_flag=True, help="Show results in a window (needs a display).")
@unsafe_load_option
@set_option
@_friendly_errors
def infer(args, conf, iou, max_det, classes, device, batch_size, out_dir, exist_ok, save_vis, save_json,
          save_txt, show, unsafe_load, overrides):
    """Run MODEL (a checkpoint, .onnx or TorchScript file) on SOURCE: an image, a folder, a glob, a video
    file or a webcam index. CONFIG (optional) replaces the config a checkpoint stores."""
    from detkit.inference.run import infer as run_infer

    config_file, model, source = _split_model_args(args, ("SOURCE",), "detkit infer [CONFIG] MODEL SOURCE")
    cfg = _load(config_file, overrides) if config_file else None
    result = run_infer(cfg, model, source, conf=conf, iou=iou, max_det=max_det, classes=classes,
                       device=device, batch_size=batch_size, out_dir=out_dir, exist_ok=exist_ok,
                       save_vis=save_vis, save_json=save_json, save_txt=save_txt, show=show,
                       unsafe_load=unsafe_load, overrides=() if config_file else overrides)
    click.echo(result.summary())
    if result.error:  # outputs written so far are complete files; the exit status says it stopped early
        sys.exit(1)


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript", "pth"]), default="onnx",
              show_default=True, help="onnx / torchscript: the graph with its metadata; pth: a stripped checkpoint.")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Output file (default: beside CHECKPOINT, <stem>.onnx / .torchscript / _deploy.pth).")
@click.option("--dynamic-batch", is_flag=True, help="Any batch size (default: batch 1).")
@click.option("--no-nms", is_flag=True, help="Export the raw candidates (boxes, per-class scores) without NMS.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="Use this config instead of the one the checkpoint stores.")
@click.option("--conf", type=float, default=None,
              help="In-graph score threshold (default: the config's postprocessor value).")
@click.option("--iou", type=float, default=None, help="In-graph NMS IoU threshold.")
@click.option("--max-det", type=int, default=None, help="Detections per image (the outputs' fixed size).")
@click.option("--half/--no-half", default=True, show_default=True, help="pth: store weights as float16.")
@click.option("--int8", is_flag=True, help="onnx, yolov1: int8 weights and activations (ONNX Runtime static "
              "quantisation calibrated on the config's validation images); see README Deploy for its speed and mAP.")
@unsafe_load_option
@set_option
@_friendly_errors
def export(checkpoint, fmt, out, dynamic_batch, no_nms, config_file, conf, iou, max_det, half, int8, unsafe_load,
           overrides):
    """Export CHECKPOINT for deployment: ONNX or TorchScript (YOLOv1 whole, with NMS; R-CNN's region
    scoring with the proposals as an input), or a stripped checkpoint (weights, config, class names)."""
    from detkit.deploy.export import export as run_export

    path = run_export(checkpoint, fmt, out, config=config_file, dynamic_batch=dynamic_batch, nms=not no_nms,
                      conf=conf, iou=iou, max_det=max_det, half=half, int8=int8, unsafe_load=unsafe_load,
                      overrides=overrides)
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


@main.command("check-data")
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.option("--split", type=click.Choice(["train", "val", "test", "all"]), default="all",
              show_default=True)
@click.option("--workers", type=int, default=None, help="Parallel readers (default: CPU count).")
@click.option("--no-cache", is_flag=True, help="Decode every image again (ignore the verification cache).")
@set_option
@_friendly_errors
def check_data(config_file, split, workers, no_cache, overrides):
    """Read every sample of the config's data once and report counts and problems.

    Runs the verification pass training runs when it builds the data (same report); exit status 1
    when a sample would be excluded from training or a split cannot be built.
    """
    from detkit.data.check import check_data as run_check

    cfg = _load(config_file, overrides)
    fatal = run_check(cfg, split=split, workers=workers, cache=not no_cache)
    sys.exit(1 if fatal else 0)


# ----------------------------------------------------------------------------------------------
@main.group()
def data():
    """Data set tools: download, synthetic data, conversion, browsing."""


@data.command("make-shapes")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--mode", type=click.Choice(["detection", "classification"]), default="detection",
              show_default=True, help="classification: single-shape crops in ImageFolder layout.")
@click.option("--num", type=int, default=500, show_default=True, help="Images (crops) in total.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", type=int, default=None,
              help="Image side in pixels (default: 256 for detection, 64 for classification crops).")
@click.option("--val-fraction", type=float, default=0.2, show_default=True)
@_friendly_errors
def make_shapes(out, mode, num, seed, size, val_fraction):
    """Write a synthetic shapes data set to OUT: VOC layout plus COCO JSON, or classification crops."""
    from detkit.data.shapes import make_shapes as run_make

    summary = run_make(out, num=num, seed=seed, size=size, val_fraction=val_fraction, mode=mode)
    click.echo(summary)


@data.command("voc2coco")
@click.argument("root", type=click.Path(file_okay=False, exists=True))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--split", default="train", show_default=True)
@click.option("--classes", default=None, help="Comma-separated class names (default: VOC's 20).")
@_friendly_errors
def voc2coco(root, out, split, classes):
    """Convert a VOC-layout split to a COCO annotation JSON."""
    from detkit.data.convert import voc_to_coco

    names = [c.strip() for c in classes.split(",")] if classes else None
    click.echo(voc_to_coco(root, out, split=split, classes=names))


@data.command("convert")
@click.argument("src", type=click.Path(exists=True))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--to", "to", type=click.Choice(["voc", "coco", "yolo"]), required=True, help="Layout to write.")
@click.option("--from", "src_format", type=click.Choice(["voc", "coco", "yolo"]), default=None,
              help="Layout of SRC (default: recognised from its files).")
@click.option("--split", "splits", multiple=True, help="Splits to convert (repeat; default: train and val).")
@click.option("--classes", default=None, help="Comma-separated class names (default: the source's own).")
@click.option("--img-dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Image folder of a COCO JSON given as SRC.")
@click.option("--images", type=click.Choice(["link", "copy", "symlink"]), default="link", show_default=True,
              help="How images get into OUT (link: hard link, copied when that is impossible).")
@_friendly_errors
def data_convert(src, out, to, src_format, splits, classes, img_dir, images):
    """Convert the data set SRC (VOC folder, COCO folder or JSON, YOLO data.yaml) to another layout in OUT."""
    from detkit.data.convert import convert

    names = [c.strip() for c in classes.split(",")] if classes else None
    click.echo(convert(src, out, to=to, src_format=src_format, splits=splits or ("train", "val"), classes=names,
                       img_dir=img_dir, images=images))


@data.command("get")
@click.argument("name", required=False)
@click.option("--dir", "dest", type=click.Path(file_okay=False), default=None,
              help="Data folder to fill (default: $DETKIT_DATA, else data/ of this clone).")
@click.option("--list", "show_list", is_flag=True, help="List the known data sets.")
@click.option("--mirror", default=None, metavar="URL", help="Fetch each file as URL/<file name> instead.")
@click.option("--keep-archives", is_flag=True, help="Keep the downloaded archives (in DIR/.downloads/).")
@click.option("--force", is_flag=True, help="Fetch again even if the data set is in place.")
@_friendly_errors
def data_get(name, dest, show_list, mirror, keep_archives, force):
    """Download the public data set NAME, check it and lay it out the way detkit reads it."""
    from detkit.data.fetch import fetch, format_table

    if show_list or not name:
        click.echo(format_table())
        return
    click.echo(fetch(name, dest, mirror=mirror, keep_archives=keep_archives, force=force))


@data.command("show")
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.option("--split", default="train", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/browse",
              show_default=True)
@click.option("--num", type=int, default=20, show_default=True)
@click.option("--transformed", is_flag=True, help="Draw samples after the training transforms.")
@set_option
@_friendly_errors
def data_show(config_file, split, out_dir, num, transformed, overrides):
    """Write images of a split with their ground-truth boxes drawn."""
    from detkit.data.browse import browse

    cfg = _load(config_file, overrides)
    click.echo(browse(cfg, split=split, out_dir=out_dir, num=num, transformed=transformed))


if __name__ == "__main__":
    main()
