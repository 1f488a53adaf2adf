"""The evaluation loop: a model over a data set's loader, scored by an evaluator.

Used during training (the EvalHook of ``detkit train`` / ``detkit classify train``) and by ``detkit
eval`` / ``detkit classify eval``; both get the same numbers for the same weights. The model gets each
image's meta (``forward(images, metas=...)``, the data sets put the ``image_id`` in it too), so a
detector's detections come back in original-image pixels, and they are compared with the ground truth
mapped back to original pixels (:func:`original_targets`, the default ``ground_truth``; a classifier's
task passes its own, see :mod:`detkit.tasks`). Under DDP every rank scores its shard
(:func:`build_eval_loader`: contiguous, no padding) and rank 0 gathers and computes.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence

import torch

from detkit.engine import dist as dist_utils
from detkit.engine.run_logging import stderr_is_terminal
from detkit.structures import boxes_to_original

__all__ = ["run_evaluation", "original_targets", "build_eval_loader", "coco_options"]


def original_targets(targets: Sequence[Mapping]) -> list[dict]:
    """Ground truth in original-image pixels (the loader's boxes are in model-input pixels)."""
    out = []
    for t in targets:
        boxes = t["boxes"]
        if "meta" in t and t["meta"] is not None:
            boxes = boxes_to_original(boxes.float(), t["meta"])
        item = {"boxes": boxes.cpu(), "labels": t["labels"].cpu(), "image_id": t.get("image_id")}
        for key in ("difficult", "iscrowd"):
            if t.get(key) is not None:
                item[key] = t[key].cpu()
        out.append(item)
    return out


def _eval_module(model: torch.nn.Module) -> torch.nn.Module:
    # DDP's forward would broadcast buffers and expect a backward; evaluation uses the module itself.
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


@torch.inference_mode()
def run_evaluation(model: torch.nn.Module, loader, evaluator, device: torch.device | str, *,
                   amp=None, channels_last: bool = False, progress: bool | None = None,
                   desc: str = "eval", ground_truth: Callable = original_targets) -> dict | None:
    """Run ``model`` in eval mode over ``loader`` and score it with ``evaluator``, which compares the
    model's outputs with ``ground_truth(targets)``.

    Returns the metrics on rank 0 and ``None`` on the other ranks; afterwards rank 0's ``evaluator``
    holds every image (for results files). The model's train/eval mode is restored. ``amp``: the
    trainer's :class:`~detkit.engine.optim.AmpSettings` (autocast as in training).
    """
    device = torch.device(device)
    module = _eval_module(model)
    was_training = module.training
    module.eval()
    evaluator.reset()
    show_bar = (stderr_is_terminal() if progress is None else progress) and dist_utils.is_main_process()
    bar = None
    if show_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(loader), desc=desc, file=sys.stderr, dynamic_ncols=True, leave=False)
    try:
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=getattr(amp, "dtype", torch.bfloat16),
                                enabled=bool(getattr(amp, "enabled", False))):
                detections = module(images, metas=[t.get("meta") for t in targets])
            detections = [{k: v.detach().float().cpu() if k != "labels" else v.detach().cpu()
                           for k, v in d.items() if k in ("boxes", "scores", "labels")} for d in detections]
            evaluator.update(detections, ground_truth(targets))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        module.train(was_training)
    if dist_utils.is_distributed():
        states = dist_utils.gather_to_main(evaluator.state())
        if not dist_utils.is_main_process():
            return None
        evaluator.load_states(states)
    return evaluator.compute()


def build_eval_loader(dataset, batch_size: int, num_workers: int, bad_sample: str = "raise"):
    """The loader evaluation reads: in data set order; under DDP this rank's contiguous shard."""
    from detkit.data.loader import DetectionDataLoader, build_dataloader

    if dist_utils.is_distributed():
        # Contiguous shards without padding: every image is evaluated once.
        return DetectionDataLoader(dataset, bad_sample=bad_sample, batch_size=batch_size,
                                   sampler=dist_utils.ShardSampler(len(dataset)), num_workers=num_workers,
                                   pin_memory=torch.cuda.is_available())
    return build_dataloader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            persistent_workers=False, bad_sample=bad_sample)


def coco_options(dataset) -> dict:
    """COCOEvaluator options of ``dataset``: its real COCO category ids, when it has them."""
    cat_ids = getattr(dataset, "cat_ids", None)
    return {"cat_ids": list(cat_ids)} if cat_ids else {}
