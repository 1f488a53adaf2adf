"""Exported models vs eager PyTorch: images/s of the same detector, on the same images, in the same run.

For each model -- the demo (configs/yolov1_shapes.py) and YOLOv1 + ResNet-18 at 448 x 448
(configs/yolov1_voc.py's model, 20 classes) -- the suite exports ONNX and TorchScript with a dynamic
batch and times the whole detector (normalisation, network, decoding, NMS; input: preprocessed
tensors) through :func:`detkit.deploy.backends.load_model`, at batch 1 and 8:

* eager PyTorch (the checkpoint), TorchScript, ONNX Runtime (CPU provider, all graph optimisations);
* bf16 autocast of the eager model, and ONNX Runtime with int8 weights and activations (static QDQ
  quantisation of every Conv / MatMul / Gemm, calibrated on the images);
* the exported file sizes next to a training checkpoint and the stripped one.

Speed needs no trained weights (random initialisation, fixed seed). The accuracy cost of bf16 and int8
does: ``--checkpoint`` names a trained demo checkpoint (``detkit train configs/yolov1_shapes.py --set
train.epochs=3``) whose stored config names its shapes validation set; its VOC07 AP50 is measured
eager, with bf16 autocast, and through the int8 ONNX file.

    python tools/bench.py export [--checkpoint work_dirs/yolov1_shapes/last.pth] [--images 16] [--repeats 3]
        [--models demo,voc448] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODELS = {"demo": "configs/yolov1_shapes.py", "voc448": "configs/yolov1_voc.py"}


def _checkpoint(config: Path, out: Path, class_names) -> Path:
    import torch

    from detkit.checkpoint import save_checkpoint
    from detkit.config import load_config
    from detkit.models.builder import build_detector

    cfg = load_config(config)
    torch.manual_seed(0)
    model = build_detector(cfg["model"], class_names)
    return save_checkpoint(out, {"model": model.state_dict(), "class_names": list(class_names), "config": cfg})


def _time(model, batches, repeats: int, bf16: bool = False) -> float:
    """Best images/s over ``repeats`` passes (after one warm-up pass)."""
    import torch

    best = float("inf")
    count = sum(b.shape[0] for b in batches)
    for r in range(repeats + 1):
        start = time.perf_counter()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for batch in batches:
                model(batch)
        if r:
            best = min(best, time.perf_counter() - start)
    return count / best


def _images(count: int, size) -> list:
    import torch

    generator = torch.Generator().manual_seed(0)
    return [torch.rand(3, *size, generator=generator) for _ in range(count)]


def _map(model_path, data_config, *, bf16: bool = False) -> float:
    import torch

    from detkit.data.builder import build_dataset
    from detkit.deploy.backends import load_model
    from detkit.deploy.loading import with_data
    from detkit.evaluation.builder import build_evaluators
    from detkit.evaluation.loop import build_eval_loader, run_evaluation

    loaded = load_model(model_path, device="cpu", conf=None)
    cfg = with_data(loaded.cfg, data_config)
    dataset = build_dataset(cfg, "val")
    loader = build_eval_loader(dataset, 8, 0, "raise")
    amp = types.SimpleNamespace(enabled=bf16, dtype=torch.bfloat16)
    metrics = run_evaluation(loaded.model, loader, build_evaluators("voc07", loaded.class_names), "cpu",
                             amp=amp, progress=False)
    return metrics["voc07_ap50"]


def _calibration(images, size):
    return [img.unsqueeze(0) for img in images[:16]]


def bench_model(name: str, ckpt: Path, tmp: Path, args) -> dict:
    from detkit.deploy.backends import load_model
    from detkit.deploy.export import export
    from detkit.inference.predictor import eval_transforms

    files = {"checkpoint": ckpt}
    start = time.perf_counter()
    files["onnx"] = export(ckpt, "onnx", tmp / f"{name}.onnx", dynamic_batch=True)
    files["torchscript"] = export(ckpt, "torchscript", tmp / f"{name}.torchscript", dynamic_batch=True)
    files["pth (stripped)"] = export(ckpt, "pth", tmp / f"{name}_deploy.pth")
    loaded = load_model(ckpt, device="cpu", conf=None)
    size = eval_transforms(loaded.cfg)["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    images = _images(args.images, size)
    if name in args.int8_models.split(","):
        files["onnx int8"] = export(ckpt, "onnx", tmp / f"{name}_int8.onnx", dynamic_batch=True, int8=True,
                                    calibration=images[:8])
    print(f"[{name}] exported in {time.perf_counter() - start:.0f} s; input {size[0]}x{size[1]}, "
          f"{args.images} images", flush=True)
    runtimes = {"eager": loaded.model, "torchscript": load_model(files["torchscript"], device="cpu", conf=None).model,
                "onnxruntime": load_model(files["onnx"], device="cpu", conf=None, threads=args.threads).model,
                **({"onnxruntime int8": load_model(files["onnx int8"], device="cpu", conf=None, threads=args.threads).model}
                   if "onnx int8" in files else {})}
    speed = {}
    import torch

    for batch_size in (1, 8):
        batches = [torch.stack(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
        for runtime, model in runtimes.items():
            speed[runtime, batch_size] = _time(model, batches, args.repeats)
        speed["eager bf16", batch_size] = _time(loaded.model, batches, args.repeats, bf16=True)
        print(f"[{name}] batch {batch_size}: " + ", ".join(f"{r} {v:.1f}" for (r, b), v in speed.items()
                                                          if b == batch_size) + " img/s", flush=True)
    return {"speed": speed, "sizes": {k: Path(v).stat().st_size for k, v in files.items()}, "files": files}


def main(argv: list[str]):
    import torch

    parser = argparse.ArgumentParser(prog="bench.py export")
    parser.add_argument("--checkpoint", default=None, help="trained demo checkpoint for the bf16 / int8 mAP cost")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="demo,voc448")
    parser.add_argument("--int8-models", default="demo,voc448",
                        help="models to quantise too (calibrating the 281 MB voc448 graph is slow on a busy CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and ONNX Runtime threads (default: torch's and ORT's own, one per core)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = ["circle", "square", "triangle", "star", "cross"]
    voc = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
           "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    results, rows = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models.split(","):
            ckpt = (Path(args.checkpoint) if name == "demo" and args.checkpoint
                    else _checkpoint(REPO / MODELS[name], tmp / f"{name}.pth", shapes if name == "demo" else voc))
            results[name] = bench_model(name, ckpt, tmp, args)
        accuracy = None
        if args.checkpoint and "demo" in results:
            files = results["demo"]["files"]
            accuracy = {"eager": _map(files["checkpoint"], None), "eager bf16": _map(files["checkpoint"], None, bf16=True),
                        "onnxruntime": _map(files["onnx"], None), "onnxruntime int8": _map(files["onnx int8"], None)}
            print("[demo] VOC07 AP50: " + ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items()), flush=True)

    table = _table(results, accuracy)
    print(table)
    for name, result in results.items():
        s = result["speed"]
        rows.append((f"{name} ({MODELS[name]}): ONNX Runtime / TorchScript / bf16 / int8 vs eager PyTorch",
                     "; ".join(f"batch {b}: " + ", ".join(f"{s[r, b] / s['eager', b]:.2f}x" if (r, b) in s else "-"
                                                          for r in ("onnxruntime", "torchscript", "eager bf16",
                                                                    "onnxruntime int8"))
                               for b in (1, 8))))
    return {"rows": rows, "section": "export-bench", "table": table}


def _table(results: dict, accuracy: dict | None) -> str:
    runtimes = ("eager", "torchscript", "onnxruntime", "eager bf16", "onnxruntime int8")
    lines = ["| model | batch | " + " | ".join(runtimes) + " |", "|---|---|" + "---|" * len(runtimes)]
    for name, result in results.items():
        s = result["speed"]
        for b in (1, 8):
            cells = [f"{s[r, b]:.1f} img/s" + ("" if r == "eager" else f" ({s[r, b] / s['eager', b]:.2f}x)")
                     if (r, b) in s else "not run" for r in runtimes]
            lines.append(f"| {name} | {b} | " + " | ".join(cells) + " |")
    if accuracy:
        base = accuracy["eager"]
        lines.append("| demo, VOC07 AP50 (shapes val) | | " + " | ".join(
            f"{accuracy[r]:.4f}" + ("" if r == "eager" else f" ({accuracy[r] - base:+.4f})") if r in accuracy else "-"
            for r in runtimes) + " |")
    lines += ["", "| model | checkpoint given | pth (stripped) | onnx | torchscript | onnx int8 |",
              "|---|---|---|---|---|---|"]
    for name, result in results.items():
        mb = {k: f"{v / 1e6:.1f} MB" for k, v in result["sizes"].items()}
        lines.append(f"| {name} | {mb['checkpoint']} | {mb['pth (stripped)']} | {mb['onnx']} | {mb['torchscript']} "
                     f"| {mb.get('onnx int8', 'not run')} |")
    return "\n".join(lines)
