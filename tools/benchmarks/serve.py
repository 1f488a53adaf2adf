"""`detkit serve` with dynamic batching vs without: throughput and latency over HTTP, in one run.

The 448 x 448 YOLOv1 + ResNet-18 (configs/yolov1_voc.py's model, 20 classes; random initialisation
with a fixed seed: speed needs no trained weights) is served on 127.0.0.1 twice at once --
``--max-batch 1`` (every request its own forward pass) and ``--max-batch 8`` -- and each server is
loaded at concurrency 1, 4 and 16 by client threads that post 640x480 JPEGs (raw bytes,
``Content-Type: image/jpeg``) and wait for each answer. Only one server is loaded at a time (the other
idles), and the two take turns level by level, ``--repeats`` times in alternating order, so a change in
the machine's load hits both alike; each keeps its best run. Per level: completed requests per second,
the p50 and p99 latency the clients saw, the mean batch size (from the answers) and errors. The ratio
printed is the batched server's throughput over the unbatched one's at the same concurrency.
``--models onnx`` serves the ONNX export (``detkit export --dynamic-batch``) the same way.

Bounded in count and time: ``--requests`` per client and level (at least 12 requests a level), and no
new request after ``--seconds`` of a level. Loopback only.

    python tools/bench.py serve [--models checkpoint,onnx] [--threads N] [--requests 4] [--repeats 2]
        [--seconds 150] [--max-wait-ms 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.export import MODELS, REPO, VOC_CLASSES, _checkpoint

CONCURRENCY = (1, 4, 16)
BATCHES = (1, 8)


def _jpegs(count: int) -> list[bytes]:
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    return [cv2.imencode(".jpg", cv2.GaussianBlur(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8), (9, 9), 3))[1]
            .tobytes() for _ in range(count)]


def _load(url: str, images: list[bytes], concurrency: int, count: int, seconds: float) -> dict:
    """``count`` requests from ``concurrency`` client threads (none sent after ``seconds``)."""
    import httpx
    import numpy as np

    jobs, lock = iter(range(count)), threading.Lock()
    latencies, sizes, errors = [], [], []
    deadline = time.monotonic() + seconds

    def client():
        with httpx.Client(timeout=600) as http:
            while True:
                with lock:
                    n = next(jobs, None)
                if n is None or time.monotonic() > deadline:
                    return
                start = time.perf_counter()
                response = http.post(url, content=images[n % len(images)], headers={"Content-Type": "image/jpeg"})
                latency = time.perf_counter() - start
                with lock:
                    if response.status_code == 200:
                        latencies.append(latency)
                        sizes.append(response.json()["batch_size"])
                    else:
                        errors.append(response.status_code)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    return {"throughput": len(latencies) / elapsed, "p50": float(np.percentile(latencies, 50)) if latencies else 0.0,
            "p99": float(np.percentile(latencies, 99)) if latencies else 0.0, "done": len(latencies),
            "batch": float(np.mean(sizes)) if sizes else 0.0, "errors": len(errors)}


def bench_model(name: str, path: Path, args, images: list[bytes], loads: list[float]) -> dict:
    """The best of ``args.repeats`` runs per (max_batch, concurrency), the servers taking turns."""
    import contextlib

    from detkit.serve.launch import ServerProcess

    results, errors = {}, 0
    with contextlib.ExitStack() as stack:
        urls = {}
        for max_batch in BATCHES:
            options = ["--device", "cpu", "--max-batch", str(max_batch), "--max-wait-ms", str(args.max_wait_ms)]
            if args.threads:
                options += ["--threads", str(args.threads)]
            server = stack.enter_context(ServerProcess(path, *options, timeout=600))
            urls[max_batch] = f"{server.url}/v1/detect"
            _load(urls[max_batch], images, max_batch, 2 * max_batch, args.seconds)  # warm-up: every batch size
        for concurrency in CONCURRENCY:
            count = max(12, args.requests * concurrency)
            for repeat in range(args.repeats):
                for max_batch in BATCHES if repeat % 2 == 0 else BATCHES[::-1]:
                    loads.append(os.getloadavg()[0])
                    r = _load(urls[max_batch], images, concurrency, count, args.seconds)
                    errors += r["errors"]
                    best = results.get((max_batch, concurrency))
                    if best is None or r["throughput"] > best["throughput"]:
                        results[max_batch, concurrency] = r
                    print(f"[{name}] --max-batch {max_batch} concurrency {concurrency:>2} run {repeat + 1}: "
                          f"{r['throughput']:.2f} img/s, p50 {r['p50'] * 1000:.0f} ms, p99 {r['p99'] * 1000:.0f} ms, "
                          f"mean batch {r['batch']:.1f}, {r['done']} done, {r['errors']} errors "
                          f"(load average {loads[-1]:.1f})", flush=True)
    return {"best": results, "errors": errors}


def main(argv: list[str]):
    parser = argparse.ArgumentParser(prog="bench.py serve")
    parser.add_argument("--models", default="checkpoint", help="checkpoint and/or onnx, comma-separated")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of the server (default: torch's)")
    parser.add_argument("--requests", type=int, default=4, help="requests per client thread and level")
    parser.add_argument("--repeats", type=int, default=2, help="runs per server and level (the best is kept)")
    parser.add_argument("--seconds", type=float, default=150, help="no new request after this long in a level")
    parser.add_argument("--max-wait-ms", type=float, default=10)
    args = parser.parse_args(argv)

    loads = [os.getloadavg()[0]]
    images = _jpegs(8)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = _checkpoint(REPO / MODELS["voc448"], Path(tmp) / "voc448.pth", VOC_CLASSES)
        for name in args.models.split(","):
            if name == "onnx":
                from detkit.deploy.export import export

                path = export(ckpt, "onnx", Path(tmp) / "voc448.onnx", dynamic_batch=True)
            elif name == "checkpoint":
                path = ckpt
            else:
                raise SystemExit(f"--models: unknown model kind {name!r} (checkpoint, onnx)")
            results[name] = bench_model(name, path, args, images, loads)
    loads.append(os.getloadavg()[0])

    lines = ["| model | concurrency | --max-batch 1 | --max-batch 8 | mean batch | throughput ratio |",
             "|---|---|---|---|---|---|"]
    rows = []
    for name, measured in results.items():
        r = measured["best"]
        for c in CONCURRENCY:
            one, eight = r[1, c], r[8, c]
            cell = lambda x: f"{x['throughput']:.2f} img/s, p50 {x['p50']:.2f} s, p99 {x['p99']:.2f} s"  # noqa: E731
            lines.append(f"| voc448 {name} | {c} | {cell(one)} | {cell(eight)} | {eight['batch']:.1f} | "
                         f"{eight['throughput'] / one['throughput']:.2f}x |")
        errors = measured["errors"]
        rows.append((f"`detkit serve` 448 YOLOv1 + ResNet-18 ({name}), 640x480 JPEGs over loopback HTTP: "
                     f"throughput with `--max-batch 8` vs `--max-batch 1`",
                     ", ".join(f"concurrency {c}: {r[8, c]['throughput'] / r[1, c]['throughput']:.2f}x" for c in CONCURRENCY)
                     + f" ({r[8, 16]['throughput']:.2f} vs {r[1, 16]['throughput']:.2f} img/s at 16; {errors} errors)"))
    table = "\n".join(lines)
    print(table)
    note = (f"best of {args.repeats} runs per cell; 1-minute load average {loads[0]:.1f} at the start, "
            f"{min(loads):.1f} to {max(loads):.1f} during the runs, {loads[-1]:.1f} at the end")
    if max(loads) > 2 * (os.cpu_count() or 1):
        note += ": the CPU was shared with other jobs, so absolute speeds are low and noisy"
    print(note)
    return {"rows": rows, "section": "serve-bench", "table": table, "note": note}
