"""The stages of the classic R-CNN after fine-tuning (``rcnn_classic``; the detector is in
:mod:`detkit.models.detectors.rcnn_classic`, the stage machinery in :mod:`detkit.engine.stages`).

``detkit train`` runs stage 1 (fine-tuning) as the ordinary training loop, then these, each resumable:

* ``features`` (stage 2): every training image, *without* augmentation, through the fine-tuned
  network: its proposals (the ``max_proposals_train`` the generator ranks first) and its ground-truth
  boxes, each with the SVM layer's features (fc7), the IoU with every class's objects, and, for the
  regions with IoU > ``bbox_reg.min_iou`` with a training object, the box layer's features (pool5) and
  the paper's regression targets. Written per image to ``<work dir>/features/train/`` (see
  :mod:`detkit.engine.feature_cache`; ``model.feature_dtype`` float16 halves it), with a progress bar;
  an interrupted run continues with the images still missing.
* ``svm`` (stage 3): features scaled to a mean norm of 20 (measured on up to 200 regions of up to 200
  images, as ``rcnn_feature_stats.m``), positives = the ground-truth boxes (without ``difficult`` /
  ``iscrowd`` ones when the model skips them), negatives = every region (ground truth of other classes
  included) with IoU < ``neg_iou`` (0.3) with every object of the class; one SVM per class with
  hard-negative mining (:func:`detkit.models.svm.train_svms`). Its log records go to the summary.
* ``bbox_reg`` (stage 4): per class, ridge regression from the scaled box-layer features of the
  regions with IoU > 0.6 (ground-truth boxes included, as in the released code) to their targets.
* ``evaluate``: the validation split (when the config has one and ``train.eval_interval > 0``) scored
  once per variant: the fine-tuned softmax head (without box regression; with the head's own box
  deltas too when the fine-tuning trained them), the SVMs, the SVMs with box regression, from one pass
  of the network. Written to ``classic_metrics.json``; the final model's metrics also to
  ``eval_metrics.json`` (what ``detkit eval --metrics-out`` writes).

The result is ``last.pth``: the fine-tuned network with the SVMs and regressors as tensors.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from collections.abc import Iterator

import numpy as np
import torch

from detkit.engine.feature_cache import FeatureCache
from detkit.engine.run_logging import stderr_is_terminal
from detkit.engine.stages import Stage, StageContext, network_fingerprint
from detkit.jsonio import write_json
from detkit.models.box_ridge import PAPER_BOX_CODER, RidgeFit, fit_ridge
from detkit.models.svm import feature_scale, train_svms
from detkit.ops.boxes import box_iou

__all__ = ["classic_stages", "VARIANTS", "METRICS_FILE", "unaugmented_split"]

logger = logging.getLogger("detkit")

# Regions per image and images whose feature norms set the scale (rcnn_feature_stats.m).
NORM_SAMPLE_REGIONS = 200
NORM_SAMPLE_IMAGES = 200
METRICS_FILE = "classic_metrics.json"  # the evaluate stage's scores of every variant (read by detkit kfold)
# Evaluated side by side by the evaluate stage: name -> (scoring, box_regression).
VARIANTS = {
    "softmax": ("softmax", "none"),
    "softmax_head_boxes": ("softmax", "head"),
    "svm": ("svm", "none"),
    "svm_bbox_reg": ("svm", "ridge"),
}


def classic_stages(context: StageContext) -> list[Stage]:
    """Stages 2-4 and the evaluation, in order (the ``training_stages`` of ``rcnn_classic``)."""
    return [Stage("features", extract_features), Stage("svm", train_svm_stage),
            Stage("bbox_reg", train_box_regression_stage), Stage("evaluate", evaluate_stage)]


def unaugmented_split(cfg: dict, split: str) -> dict:
    """``cfg`` with ``data.<split>`` stripped of augmentation (``augment`` and ``preset``): features
    are extracted from the images themselves, as the proposals were computed."""
    cfg = copy.deepcopy(cfg)
    transforms = cfg["data"][split].get("transforms")
    if isinstance(transforms, dict):
        transforms.pop("augment", None)
        transforms.pop("preset", None)
    return cfg


# ----------------------------------------------------------------------------------------------
# Stage 2: features
# ----------------------------------------------------------------------------------------------


def _feature_cache(context: StageContext, dataset=None) -> FeatureCache:
    model, cfg = context.model, context.cfg
    if dataset is None:
        dataset = _train_set(cfg)
    ids = [_image_key(dataset, i) for i in range(len(dataset))]
    header = {
        "layers": {"svm": [model.svm_layer, model.head.layer_dim(model.svm_layer)],
                   "bbox": [model.bbox_layer, model.head.layer_dim(model.bbox_layer)]},
        "dtype": model.feature_dtype,
        "network": network_fingerprint(model),
        "proposals": {"config": cfg["model"].get("proposals"), "max": model.max_proposals_train,
                      "min_size": model.min_proposal_size},
        "transforms": cfg["data"]["train"].get("transforms"),
        "bbox_min_iou": model.bbox_options.min_iou,
        "skip": [model.skip_difficult, model.skip_crowd],
        "images": ids,
    }
    return FeatureCache(context.work_dir / "features" / "train", header, len(dataset))


def _image_key(dataset, index: int) -> str:
    # The image behind each entry: a changed data set (or order) must not reuse another image's entry.
    try:
        annotation = dataset.load_annotation(index)
        return f"{annotation.image_id}:{annotation.file_name}"
    except (AttributeError, NotImplementedError):
        return str(index)


def _train_set(cfg: dict):
    from detkit.data.builder import build_dataset

    return build_dataset(unaugmented_split(cfg, "train"), "train")


def _flags(target: dict, model, n: int) -> torch.Tensor:
    flagged = torch.zeros(n, dtype=torch.bool)
    for key, skip in (("difficult", model.skip_difficult), ("iscrowd", model.skip_crowd)):
        if skip and target.get(key) is not None:
            flagged |= torch.as_tensor(target[key]).reshape(-1).bool().cpu()
    return flagged


@torch.no_grad()
def image_record(model, image: torch.Tensor, target: dict, seed: int) -> dict[str, np.ndarray]:
    """Stage 2's entry for one image ``[1, 3, H, W]`` (module docstring): regions = ground-truth
    boxes first, then the proposals."""
    device = image.device
    gt_boxes = target["boxes"].to(device, torch.float32).reshape(-1, 4)
    gt_labels = target["labels"].cpu().reshape(-1)
    valid = (gt_boxes[:, 2] > gt_boxes[:, 0]) & (gt_boxes[:, 3] > gt_boxes[:, 1])
    gt_boxes, gt_labels = gt_boxes[valid], gt_labels[valid.cpu()]
    flagged = _flags(target, model, len(valid))[valid.cpu()]
    meta = dict(target.get("meta") or {})
    meta.setdefault("image_id", target.get("image_id"))
    [proposals] = model.generate_proposals(image, [meta], model.max_proposals_train)
    regions = torch.cat((gt_boxes, proposals))
    k, r, c = len(gt_boxes), len(regions), model.num_classes

    iou = torch.nan_to_num(box_iou(regions, gt_boxes)).cpu() if k else torch.zeros(r, 0)
    overlap = torch.zeros(r, c)
    for cls in gt_labels.unique().tolist():
        overlap[:, cls] = iou[:, gt_labels == cls].amax(dim=1)
    # Box regression: each region's best training object (flagged ones left out).
    training = ~flagged
    best_iou, best = (iou[:, training].max(dim=1) if bool(training.any())
                      else (torch.zeros(r), torch.zeros(r, dtype=torch.long)))
    bbox_rows = torch.nonzero(best_iou > model.bbox_options.min_iou).flatten()
    targets_of = gt_boxes.cpu()[training][best[bbox_rows]]

    layers = model.region_layers(image, [regions], sorted({model.svm_layer, model.bbox_layer}))
    dtype = np.float16 if model.feature_dtype == "float16" else np.float32
    box_features = layers[model.bbox_layer].float().cpu()
    # Norms of a random sample of every region's box features: the scale of stage 4 is measured on all
    # regions (as rcnn_feature_stats.m does), although only the overlapping ones are stored.
    sample = torch.randperm(r, generator=torch.Generator().manual_seed(seed))[:NORM_SAMPLE_REGIONS]
    labels = torch.full((r,), -1, dtype=torch.long)
    labels[:k] = gt_labels
    positive = torch.zeros(r, dtype=torch.bool)
    positive[:k] = ~flagged
    return {
        "regions": regions.cpu().numpy().astype(np.float32),
        "gt_labels": labels.numpy(),  # class of a ground-truth row, -1 for proposals
        "positive": positive.numpy(),
        "overlap": overlap.numpy().astype(np.float32),  # [R, C]: IoU with the class's nearest object
        "svm_features": layers[model.svm_layer].float().cpu().numpy().astype(dtype),
        "bbox_rows": bbox_rows.numpy(),
        "bbox_features": box_features[bbox_rows].numpy().astype(dtype),
        "bbox_targets": PAPER_BOX_CODER.encode(regions.cpu()[bbox_rows], targets_of).numpy().astype(np.float32),
        "bbox_labels": gt_labels[training][best[bbox_rows]].numpy(),
        "bbox_norms": box_features[sample].norm(dim=1).numpy().astype(np.float32),
    }


def extract_features(context: StageContext) -> dict:
    from detkit.data.loader import build_dataloader

    model, device = context.model, context.device
    dataset = _train_set(context.cfg)
    cache = _feature_cache(context, dataset).open()
    todo = cache.missing()
    logger.info("features: %d of %d training images to compute (%s, %s; %s)", len(todo), len(dataset),
                model.svm_layer, model.bbox_layer, cache.root)
    tcfg = context.cfg["train"]
    loader = build_dataloader(torch.utils.data.Subset(dataset, todo), batch_size=1, shuffle=False,
                              num_workers=tcfg["num_workers"], persistent_workers=False,
                              bad_sample=tcfg["bad_sample"])
    was_training = model.training
    model.eval()
    regions = 0
    start = time.perf_counter()
    with _progress(len(todo), "stage 2: features") as bar:
        for index, (images, targets) in zip(todo, loader):
            record = image_record(model, images.to(device), targets[0], seed=index)
            cache.write(index, record)
            regions += len(record["regions"])
            bar.update(1)
    model.train(was_training)
    took = time.perf_counter() - start
    if todo:
        logger.info("features: %d images, %d regions in %.1f s (%.2f s/image)", len(todo), regions, took,
                    took / len(todo))
    return {"images": len(dataset), "computed": len(todo), "regions_computed": regions,
            "cache_bytes": cache.nbytes(), "cache": str(cache.root)}


class _progress:
    """A tqdm bar on a terminal; otherwise a log line every 10% (for train.log and nohup runs)."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.done, self.next_report = total, desc, 0, 0.1
        self.bar = None
        if stderr_is_terminal():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)
        self.start = time.perf_counter()

    def __enter__(self):
        return self

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.total and self.done / self.total >= self.next_report - 1e-9:
            took = time.perf_counter() - self.start
            logger.info("%s: %d/%d (%.0f s, ETA %.0f s)", self.desc, self.done, self.total, took,
                        took / self.done * (self.total - self.done))
            self.next_report += 0.1

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def _complete_cache(context: StageContext) -> FeatureCache:
    cache = _feature_cache(context).open()
    missing = cache.missing()
    if missing:
        raise RuntimeError(f"{cache.root}: {len(missing)} feature entries are missing after the features stage")
    return cache


def _norm_scale(cache: FeatureCache, norms_of, target: float) -> float:
    images = np.random.default_rng(0).permutation(cache.num_items)[:NORM_SAMPLE_IMAGES]
    return feature_scale(np.concatenate([norms_of(cache.read(int(i)), int(i)) for i in images]), target)


# ----------------------------------------------------------------------------------------------
# Stage 3: SVMs
# ----------------------------------------------------------------------------------------------


def train_svm_stage(context: StageContext) -> dict:
    model = context.model
    cache = _complete_cache(context)

    def svm_norms(entry, index):
        features = entry["svm_features"].astype(np.float32)
        rows = np.random.default_rng(index).permutation(len(features))[:NORM_SAMPLE_REGIONS]
        return np.linalg.norm(features[rows], axis=1)

    scale = _norm_scale(cache, svm_norms, model.feature_norm)
    num_classes = model.num_classes
    positives: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    for i in range(cache.num_items):
        entry = cache.read(i)
        for c in range(num_classes):
            rows = entry["positive"] & (entry["gt_labels"] == c)
            if rows.any():
                positives[c].append(entry["svm_features"][rows].astype(np.float32) * scale)
    dim = model.svm_weight.shape[1]
    positives_c = [np.concatenate(p) if p else np.zeros((0, dim), np.float32) for p in positives]
    for name, p in zip(model.class_names, positives_c):
        logger.info("SVM %s: %d positive examples", name, len(p))

    def negatives() -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        for i in range(cache.num_items):
            entry = cache.read(i)
            yield i, entry["svm_features"].astype(np.float32) * scale, entry["overlap"] < model.neg_iou

    result = train_svms(positives_c, negatives, model.svm_options, class_names=model.class_names)
    model.set_svms(torch.from_numpy(result.weight), torch.from_numpy(result.bias), scale)
    return {"layer": model.svm_layer, "feature_scale": scale, "positives": [len(p) for p in positives_c],
            "trained": result.trained.tolist(), "options": model.svm_options.as_dict(), "rounds": result.history}


# ----------------------------------------------------------------------------------------------
# Stage 4: box regression
# ----------------------------------------------------------------------------------------------


def train_box_regression_stage(context: StageContext) -> dict:
    model = context.model
    cache = _complete_cache(context)
    scale = _norm_scale(cache, lambda entry, index: entry["bbox_norms"], model.feature_norm)
    features, targets, labels = [], [], []
    for i in range(cache.num_items):
        entry = cache.read(i)
        features.append(entry["bbox_features"].astype(np.float32))
        targets.append(entry["bbox_targets"])
        labels.append(entry["bbox_labels"])
    x = torch.from_numpy(np.concatenate(features)).double() * scale
    y = torch.from_numpy(np.concatenate(targets)).double()
    labels_t = torch.from_numpy(np.concatenate(labels))
    dim = model.bbox_beta.shape[1] - 1
    fits, summary = [], []
    for c, name in enumerate(model.class_names):
        rows = labels_t == c
        fit = fit_ridge(x[rows], y[rows], model.bbox_options.lam) if bool(rows.any()) else RidgeFit.identity(dim)
        fits.append(fit)
        residual = _mean_squared(x[rows], y[rows], fit)
        summary.append({"class": name, "samples": int(rows.sum()), "target_mse": residual[0],
                        "residual_mse": residual[1]})
        logger.info("box regression %s: %d samples, mean squared target %.4f -> residual %.4f", name,
                    int(rows.sum()), residual[0], residual[1])
    model.set_box_regressors(torch.stack([f.beta for f in fits]).float(), torch.stack([f.mu for f in fits]).float(),
                             torch.stack([f.t_inv for f in fits]).float(), scale)
    return {"layer": model.bbox_layer, "feature_scale": scale, "options": model.bbox_options.as_dict(),
            "classes": summary}


def _mean_squared(x: torch.Tensor, y: torch.Tensor, fit: RidgeFit) -> tuple[float, float]:
    from detkit.models.box_ridge import predict_deltas

    if len(x) == 0:
        return float("nan"), float("nan")
    predicted = predict_deltas(x, fit.beta, fit.mu, fit.t_inv)
    return float((y ** 2).mean()), float(((predicted - y) ** 2).mean())


# ----------------------------------------------------------------------------------------------
# Evaluation of the variants
# ----------------------------------------------------------------------------------------------


def evaluate_stage(context: StageContext) -> dict:
    from detkit.data.builder import build_dataset
    from detkit.data.loader import build_dataloader
    from detkit.evaluation.builder import build_evaluators
    from detkit.evaluation.loop import coco_options, original_targets
    from detkit.evaluation.table import format_table
    from detkit.schema import resolve_eval_config

    cfg, model = context.cfg, context.model
    if "val" not in (cfg.get("data") or {}) or cfg["train"]["eval_interval"] <= 0:
        logger.info("evaluate: no validation split (or train.eval_interval=0); skipped")
        return {}
    ecfg = resolve_eval_config(cfg.get("eval"), cfg["train"])
    dataset = build_dataset(cfg, "val")
    loader = build_dataloader(dataset, batch_size=ecfg["batch_size"], shuffle=False,
                              num_workers=ecfg["num_workers"], persistent_workers=False,
                              bad_sample=cfg["train"]["bad_sample"])
    names = [n for n in VARIANTS if n != "softmax_head_boxes" or getattr(model.loss, "box_weight", 0) > 0]
    evaluators = {n: build_evaluators(ecfg["metric"], model.class_names, coco_options=coco_options(dataset))
                  for n in names}
    for evaluator in evaluators.values():
        evaluator.reset()
    was_training = model.training
    model.eval()
    with _progress(len(loader), "evaluate variants") as bar:
        for images, targets in loader:
            outputs = model.detect_variants(images.to(context.device), [t.get("meta") for t in targets],
                                            [VARIANTS[n] for n in names])
            truth = original_targets(targets)
            for name, detections in zip(names, outputs):
                evaluators[name].update([{k: v.cpu() for k, v in d.items()} for d in detections], truth)
            bar.update(1)
    model.train(was_training)
    metrics = {name: evaluators[name].compute() for name in names}
    for name in names:
        logger.info("evaluation (%s: scoring=%s, box_regression=%s):\n%s", name, *VARIANTS[name],
                    format_table(metrics[name]))
    final = "svm_bbox_reg"
    write_json(context.work_dir / METRICS_FILE, {
        "variants": {n: {"scoring": VARIANTS[n][0], "box_regression": VARIANTS[n][1], "metrics": metrics[n]}
                     for n in names},
        "stage_seconds": dict(context.seconds),
        "stage_cpu_seconds": dict(context.cpu_seconds),
    })
    write_json(context.work_dir / "eval_metrics.json", metrics[final])
    return {name: {k: v for k, v in metrics[name].items() if isinstance(v, (int, float))} for name in names}
