"""``detkit infer``: run a trained detector on images, folders, globs, videos or a webcam.

Three stages overlap so the CPU/GPU is not idle while files are decoded or written: a reader thread
decodes the source ahead (OpenCV releases the GIL), the main thread batches, preprocesses and runs the
model, and a writer thread draws and encodes results. Outputs go to a fresh folder
(``runs/infer/exp``, ``exp2``, ...) unless ``--exist-ok``: nothing is silently overwritten.

Outputs:
* annotated images with the input's file name; annotated video with the input's name and extension
  (``.mp4`` when the input's codec cannot be written here). Inputs sharing a stem (``x.jpg`` and
  ``x.png``, or two ``x.jpg`` of a recursive glob) never overwrite each other's outputs: the later
  one's are named ``x_2.png`` / ``labels/x_2.txt`` (:func:`unique_output_name`)
* ``--save-json``: ``predictions.json`` in COCO results format (``image_id``, ``category_id``,
  ``bbox`` xywh, ``score``) plus ``file_name`` and ``category_name``; for videos also
  ``<video>.jsonl`` with one line of detections per frame
* ``--save-txt``: ``labels/<image stem>.txt``, one line per box: ``class_id cx cy w h score``
  (normalised to 0..1, as ultralytics writes with ``save_conf``)
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detkit.errors import ConfigError, DataError
from detkit.evaluation.coco import to_coco_results
from detkit.inference import DEFAULT_CONF
from detkit.jsonio import write_json

log = logging.getLogger(__name__)

_DONE = object()


@dataclass
class InferResult:
    out_dir: Path
    images: int = 0
    frames: int = 0
    detections: int = 0
    outputs: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"results in {self.out_dir}"]
        done = f"{self.images} image(s)" if self.images else f"{self.frames} frame(s)"
        rate = (self.images or self.frames) / self.seconds if self.seconds > 0 else 0.0
        lines.append(f"{done}, {self.detections} detection(s), {rate:.1f} img/s")
        for path in self.outputs:
            lines.append(f"  wrote {path}")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s):")
            lines += [f"  {p}: {why}" for p, why in self.skipped[:20]]
            if len(self.skipped) > 20:
                lines.append(f"  ... and {len(self.skipped) - 20} more")
        if self.error:
            lines.append(f"stopped early: {self.error}")
        return "\n".join(lines)


def resolve_out_dir(out_dir: str | None, exist_ok: bool) -> Path:
    """``runs/infer/exp`` by default; an existing folder gets an incrementing suffix unless exist_ok."""
    base = Path(out_dir) if out_dir else Path("runs/infer/exp")
    if exist_ok or not base.exists():
        base.mkdir(parents=True, exist_ok=True)
        return base
    n = 2
    while True:
        candidate = base.with_name(f"{base.name}{n}")
        try:
            candidate.mkdir(parents=True, exist_ok=False)  # atomic claim: two runs never share a folder
            return candidate
        except FileExistsError:
            n += 1


def parse_class_filter(classes: str | Sequence | None, class_names: Sequence[str]) -> set[int] | None:
    """``"cat,dog"`` or ``"0,3"`` → label indices; an unknown name is an error listing the classes."""
    if classes is None or classes == "":
        return None
    items = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else list(classes)
    keep = set()
    for item in items:
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            idx = int(item)
            if not 0 <= idx < len(class_names):
                raise ConfigError(f"--classes: {idx} is not a class index (0..{len(class_names) - 1})")
            keep.add(idx)
        elif item in class_names:
            keep.add(class_names.index(item))
        else:
            raise ConfigError(f"--classes: unknown class '{item}'; classes are: {', '.join(class_names)}")
    return keep


def _filter(det, keep: set[int] | None):
    if keep is None:
        return det
    import torch

    return det.select(torch.isin(det.labels, torch.tensor(sorted(keep), dtype=det.labels.dtype)))


def _prefetch(iterable, size: int) -> Iterator:
    """Iterate ``iterable`` in a background thread, ``size`` items ahead."""
    q: queue.Queue = queue.Queue(maxsize=max(1, size))
    failure: list[BaseException] = []

    def work():
        try:
            for item in iterable:
                q.put(item)
        except BaseException as exc:  # handed to the consumer, re-raised there
            failure.append(exc)
        finally:
            q.put(_DONE)

    thread = threading.Thread(target=work, name="detkit-reader", daemon=True)
    thread.start()
    while True:
        item = q.get()
        if item is _DONE:
            break
        yield item
    thread.join()
    if failure:
        raise failure[0]


class _BackgroundWriter:
    """Runs write jobs in order on one thread; the first failure is re-raised on close()."""

    def __init__(self, depth: int = 16):
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._work, name="detkit-writer", daemon=True)
        self.thread.start()

    def _work(self):
        while True:
            job = self.q.get()
            if job is _DONE:
                return
            if self.failure is None:
                try:
                    job()
                except BaseException as exc:
                    self.failure = exc

    def submit(self, job):
        if self.failure is not None:
            raise self.failure
        self.q.put(job)

    def close(self):
        self.q.put(_DONE)
        self.thread.join()
        if self.failure is not None:
            raise self.failure


def _batches(frames: Iterator, size: int) -> Iterator[list]:
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _coco_records(det, image_id: int, file_name: str, class_names, cat_ids) -> list[dict]:
    # rounded to 1/100 px and 1e-5: a file for people and tools, not for re-scoring to the last digit
    return to_coco_results([det.to_dict()], [image_id], cat_ids or None, class_names=class_names,
                           file_names=[file_name], decimals=(2, 5))


def _txt_lines(det, width: int, height: int) -> str:
    lines = []
    for (x1, y1, x2, y2), score, label in zip(det.boxes.tolist(), det.scores.tolist(), det.labels.tolist()):
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        lines.append(f"{label} {cx:.6f} {cy:.6f} {(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f} {score:.5f}")
    return "\n".join(lines) + ("\n" if lines else "")


def unique_output_name(name: str, used: set[str]) -> str:
    """The output name of an input image: its own name unless an earlier input's outputs took the
    stem (``x.jpg`` and ``x.png`` both make ``labels/x.txt``; two ``x.jpg`` of a recursive glob),
    then ``<stem>_2<suffix>``, ``_3``... Stems are compared case-insensitively, as macOS and Windows
    file systems do. ``used`` collects the stems taken."""
    stem, suffix = Path(name).stem, Path(name).suffix
    out, n = name, 2
    while Path(out).stem.lower() in used:
        out = f"{stem}_{n}{suffix}"
        n += 1
    used.add(Path(out).stem.lower())
    return out


def _imwrite(path: Path, rgb: np.ndarray) -> None:
    import cv2

    ok, buf = cv2.imencode(path.suffix if path.suffix else ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise DataError(f"{path}: OpenCV could not encode the annotated image")
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(buf.tobytes())
    os.replace(tmp, path)


def open_video_writer(path: Path, fps: float, size: tuple[int, int]):
    """An OpenCV writer for ``path`` (codec by extension); falls back to ``.mp4``/mp4v. Returns (writer, path)."""
    import cv2

    fourcc_by_ext = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
    attempts = []
    if path.suffix.lower() in fourcc_by_ext:
        attempts.append((path, fourcc_by_ext[path.suffix.lower()]))
    if path.suffix.lower() != ".mp4":
        attempts.append((path.with_suffix(".mp4"), "mp4v"))
    attempts.append((path.with_suffix(".avi"), "MJPG"))
    for candidate, code in attempts:
        writer = cv2.VideoWriter(str(candidate), cv2.VideoWriter_fourcc(*code), fps, size)
        if writer.isOpened():
            if candidate != path:
                log.warning("cannot write %s with this OpenCV build; writing %s instead", path.name, candidate.name)
            return writer, candidate
        writer.release()
    raise DataError(f"{path}: no video codec available to write the annotated video (tried mp4v, MJPG)")


def _show(window: str, rgb: np.ndarray) -> bool:
    """Show a frame; returns False (and says why once) when there is no display or no GUI support."""
    import cv2

    try:
        cv2.imshow(window, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        cv2.waitKey(1)
        return True
    except cv2.error:
        log.warning("--show: this OpenCV build has no GUI support (opencv-python-headless) or there is no "
                    "display; results are still saved")
        return False


def infer(cfg, checkpoint, source: str, *, conf=DEFAULT_CONF, iou=None, max_det=None, classes=None, device=None,
          batch_size: int = 8, out_dir=None, exist_ok=False, save_vis=True, save_json=False, save_txt=False,
          show=False, unsafe_load=False, predictor=None, progress: bool | None = None,
          overrides=()) -> InferResult:
    """Run the model file ``checkpoint`` (with ``cfg`` instead of its own config, if not ``None``) on
    ``source`` and write the requested outputs. Returns an :class:`InferResult`."""
    import sys

    from tqdm import tqdm

    from detkit.inference.predictor import Predictor
    from detkit.inference.sources import open_source

    if batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    if predictor is None:
        args = (checkpoint,) if cfg is None else (cfg, checkpoint)
        predictor = Predictor(*args, device=device, conf=conf, iou=iou, max_det=max_det, unsafe_load=unsafe_load,
                              overrides=overrides)
    class_names = predictor.class_names
    keep = parse_class_filter(classes, class_names)
    cat_ids = predictor.cfg.get("infer", {}).get("cat_ids") if isinstance(predictor.cfg.get("infer"), dict) else None

    src = open_source(source, max_pixels=predictor.max_image_pixels)  # fails clearly before an output folder exists
    out = resolve_out_dir(out_dir, exist_ok)
    result = InferResult(out_dir=out)
    is_video = src.kind in ("video", "webcam")
    if progress is None:
        progress = sys.stderr.isatty()

    writer = _BackgroundWriter()
    records: list[dict] = []
    video_writer = None
    video_path = None
    jsonl = None
    used_names: set[str] = set()
    show_ok = show
    start = time.perf_counter()
    bar = tqdm(total=len(src) or None, unit="frame" if is_video else "img", disable=not progress,
               dynamic_ncols=True)
    try:
        if is_video:
            if save_vis:
                name = Path(str(src.target)).name if src.kind == "video" else f"{src.name}.mp4"
                video_writer, video_path = open_video_writer(out / name, src.fps, (src.width, src.height))
            if save_json:
                jsonl = open(out / f"{src.name}.jsonl", "w")
        for batch in _batches(_prefetch(iter(src), 2 * batch_size), batch_size):
            detections = predictor.predict([f.image for f in batch])
            for frame, det in zip(batch, detections):
                det = _filter(det, keep)
                result.detections += len(det)
                if is_video:
                    result.frames += 1
                else:
                    result.images += 1
                if save_json and not is_video:
                    records += _coco_records(det, frame.index, frame.name, class_names, cat_ids)
                if jsonl is not None:
                    line = {"frame": frame.index, "detections": _coco_records(det, frame.index, frame.name,
                                                                              class_names, cat_ids)}
                    writer.submit(lambda f=jsonl, s=json.dumps(line): f.write(s + "\n"))
                out_name = frame.name if is_video else unique_output_name(frame.name, used_names)
                if save_txt:
                    h, w = frame.image.shape[:2]
                    (out / "labels").mkdir(exist_ok=True)
                    txt_path = out / "labels" / f"{Path(out_name).stem}.txt"
                    writer.submit(lambda p=txt_path, t=_txt_lines(det, w, h): p.write_text(t))
                if save_vis or show_ok:
                    def job(det=det, out_name=out_name):
                        drawn = det.plot()
                        if video_writer is not None:
                            import cv2

                            video_writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                        elif save_vis:
                            _imwrite(out / out_name, drawn)
                        return drawn

                    if show_ok:
                        show_ok = _show("detkit", job())
                    else:
                        writer.submit(job)
                bar.update(1)
            elapsed = time.perf_counter() - start
            bar.set_postfix(fps=f"{(result.images + result.frames) / max(elapsed, 1e-9):.1f}")
    except KeyboardInterrupt:
        result.error = "interrupted by the user"
    finally:
        bar.close()
        writer.close()  # drains pending writes, so partial outputs are complete files
        if video_writer is not None:
            video_writer.release()
            result.outputs.append(str(video_path))
        if jsonl is not None:
            jsonl.close()
            result.outputs.append(str(out / f"{src.name}.jsonl"))
    result.seconds = time.perf_counter() - start
    result.skipped = list(src.skipped)
    if is_video and getattr(src, "error", None):
        result.error = src.error
    if save_json and not is_video:
        result.outputs.append(str(write_json(out / "predictions.json", records, indent=None)))
    if save_vis and not is_video:
        result.outputs.append(f"{result.images} annotated image(s) in {out}")
    if save_txt:
        result.outputs.append(f"labels in {out / 'labels'}")
    return result
