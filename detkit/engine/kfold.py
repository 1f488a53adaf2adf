"""``detkit kfold``: train and evaluate a recipe on K folds of its data, report mean ± std per metric.

A score on one validation split of 40 images moves by several AP points with the split; a recipe
chosen on it does not carry over. :func:`kfold` pools ``data.train`` and ``data.val``, deals the
images into K folds by seed (:mod:`detkit.data.folds`), and for each fold trains the config with that
fold as the validation set and the others as training data, then scores the **final** weights
(``last.pth``: the fold's best checkpoint is chosen on those same images and would be optimistic)
with ``detkit eval``'s code, box-fit diagnostics included. The run directory::

    kfold.json             the plan: folds, seed, the pooled image keys, their fold, the resolved config
    fold_<k>/              a normal `detkit train` run dir (config.json, train.log, last.pth, ...) plus
      data/                the fold's id lists (VOC) or annotation files (COCO)
      eval_metrics.json    `detkit eval` metrics of last.pth on the fold's validation images
      diagnostics.json     box-fit diagnostics of the same evaluation
      fold_result.json     the fold's headline metrics, diagnostics summary, times, load average
    summary.json           every metric's per-fold values, mean and std; times

Resumable per fold: a fold with ``fold_result.json`` is not redone, a fold with a checkpoint resumes
from it (exactly, see :mod:`detkit.engine.runner`; a damaged or missing ``last.pth`` falls back to the
newest readable ``epoch_N.pth``), a fold stopped before its first checkpoint has its partial files
moved to ``fold_<k>/previous/`` and starts again. Running again with another config, seed or fold
count into the same directory is refused (the plan would not match; execution settings such as
``train.num_workers`` may change, :data:`EXECUTION_KEYS`); ``folds_to_run`` runs a subset
(a cheap screen on some folds, completed later by running the others). ``weights_from`` re-scores
another run's fold weights with this config's test-time settings (NMS threshold, score threshold,
proposals at test) without training again.

``std`` is the sample standard deviation over the folds (``numpy.std(values, ddof=1)``): the spread
one should expect from one fold to the next, not the (smaller) error of the mean.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from detkit.config import SECTIONS, config_name
from detkit.errors import ConfigError
from detkit.evaluation.names import FOLD_KEYS
from detkit.jsonio import to_jsonable, write_json
from detkit.schema import SECTION_DEFAULTS, resolve_config

__all__ = ["kfold", "summarize_folds", "format_summary", "PLAN_FILE", "SUMMARY_FILE", "FOLD_RESULT_FILE"]

logger = logging.getLogger("detkit")

PLAN_FILE = "kfold.json"
SUMMARY_FILE = "summary.json"
FOLD_RESULT_FILE = "fold_result.json"
VARIANT_ROWS = ("voc07_ap50", "coco_ap", "coco_ap75")  # printed per variant by format_summary
# diagnostics carried into the fold results and the summary (see detkit.evaluation.diagnostics)
DIAGNOSTIC_KEYS = ("iou_median", "iou_q1", "iou_q3", "iou_ge_75", "width_ratio_median", "height_ratio_median",
                   "width_size_slope", "height_size_slope",
                   "center_offset_abs_x_median", "center_offset_abs_y_median", "recall_at_conf",
                   "localization_misses_fraction", "missed_fraction", "grouped_objects_fraction")


def kfold(cfg: Mapping, *, folds: int = 5, seed: int = 0, out=None, config_path=None, device=None,
          folds_to_run: Sequence[int] | None = None, extra_hooks: Sequence = (), command: str | None = None,
          weights_from=None) -> dict:
    """Run the k-fold protocol (see the module docstring); returns the summary dict. ``command``: the
    command line that reproduces the run, kept in the summary (the CLI passes it). ``weights_from``:
    another k-fold directory of the same folds whose trained weights are evaluated with this config
    instead of training (test-time settings: NMS, score threshold, proposals at test)."""
    from detkit.data.folds import assign_folds, build_pool
    from detkit.engine.runner import train

    cfg = resolve_config(cfg)
    if out is None:
        name = config_name(config_path) if config_path else "run"
        out = Path("work_dirs") / f"{name}_kfold{folds}"
    out = Path(out)
    pool = build_pool(cfg)
    parts = assign_folds(len(pool), folds, seed)
    which = _check_folds_to_run(folds_to_run, folds)
    plan = {"folds": folds, "seed": seed, "pool": pool.keys,
            "fold_of": _fold_of(parts, len(pool)), "config": cfg,
            "weights_from": None if weights_from is None else str(Path(weights_from).resolve())}
    if weights_from is not None:
        _check_same_folds(Path(weights_from), plan)
    _check_or_write_plan(out / PLAN_FILE, plan)
    if pool.duplicates:
        logger.warning("k-fold: %d image(s) listed in both data.train and data.val were pooled once",
                       pool.duplicates)
    logger.info("k-fold: %d images in %d folds (seed %d), sizes %s; running fold(s) %s into %s", len(pool),
                folds, seed, [len(p) for p in parts], ", ".join(map(str, which)), out.resolve())

    results = []
    for k in range(folds):
        fold_dir = out / f"fold_{k}"
        done = fold_dir / FOLD_RESULT_FILE
        if done.is_file():
            result = json.loads(done.read_text(encoding="utf-8"))
            if not result.get("train_seconds_from_epochs"):
                # a result written before the epoch records were summed: a resumed fold's time
                # was its last part only
                trained_in = fold_dir if weights_from is None else Path(weights_from) / f"fold_{k}"
                seconds = _epoch_seconds(trained_in)
                if seconds is not None:
                    result.update(train_seconds=seconds, train_seconds_from_epochs=True)
            results.append(result)
            if k in which:
                logger.info("k-fold: fold %d is done already (%s)", k, done)
            continue
        if k not in which:
            continue
        source = None if weights_from is None else Path(weights_from) / f"fold_{k}"
        resume = None if source is not None else _resume_or_set_aside(fold_dir, k)
        # written after any earlier partial run was moved aside, so the data lists stay where the
        # fold's config points
        entries = pool.write_fold(parts, k, fold_dir / "data")
        fold_cfg = copy.deepcopy(cfg)
        fold_cfg["data"]["train"], fold_cfg["data"]["val"] = entries["train"], entries["val"]
        result = _run_fold(fold_cfg, fold_dir, k, device, train, extra_hooks, source, resume)
        result.update(fold=k, num_train=int(len(pool) - len(parts[k])), num_val=int(len(parts[k])))
        write_json(done, result)
        results.append(result)
    results.sort(key=lambda r: r["fold"])
    summary = summarize_folds(results, folds=folds, seed=seed, num_images=len(pool),
                              config=str(config_path) if config_path else None, command=command)
    write_json(out / SUMMARY_FILE, summary)
    print(format_summary(summary), flush=True)
    logger.info("k-fold summary written to %s", out / SUMMARY_FILE)
    return summary


def _check_folds_to_run(folds_to_run, folds: int) -> list[int]:
    if folds_to_run is None or len(folds_to_run) == 0:
        return list(range(folds))
    which = sorted(set(int(k) for k in folds_to_run))
    bad = [k for k in which if not 0 <= k < folds]
    if bad:
        raise ConfigError(f"--fold {bad[0]}: folds are numbered 0..{folds - 1}")
    return which


def _fold_of(parts, n: int) -> list[int]:
    fold_of = np.empty(n, np.int64)
    for k, part in enumerate(parts):
        fold_of[part] = k
    return fold_of.tolist()


def _check_or_write_plan(path: Path, plan: dict) -> None:
    """A directory holds one k-fold experiment: refuse to mix folds of another plan into it."""
    plan = json.loads(json.dumps(to_jsonable(plan)))
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        changed = [key for key in ("folds", "seed", "pool", "fold_of", "weights_from") if old.get(key) != plan[key]]
        if _comparable(old.get("config")) != _comparable(plan["config"]):
            changed.append("config")
        if changed:
            hint = (_config_difference(_comparable(old.get("config")), _comparable(plan["config"]))
                    if "config" in changed else "")
            raise ConfigError(f"{path.parent} holds a k-fold run with another {', '.join(changed)}{hint}; "
                              "use another --out (or delete that directory) to start a new one")
        return
    write_json(path, plan)


# How a run executes, not what it trains: a fold may be resumed with other values (fewer loader
# workers on a machine short of memory, say) and is still a run of the same recipe.
EXECUTION_KEYS = {"train": ("num_workers", "log_interval", "eval_interval", "checkpoint_interval", "keep_last",
                            "channels_last"),
                  "eval": ("batch_size", "num_workers")}


def _comparable(cfg):
    """The config without execution keys (:data:`EXECUTION_KEYS`) and without ``train`` / ``eval``
    keys at their defaults: a key a newer detkit adds (at its default, which keeps the old
    behaviour) must not make an earlier run look like another one."""
    if not isinstance(cfg, Mapping):
        return cfg
    # only the sections: top-level helper names of a config file (an image_size, a data_root found
    # from the file's own path) are not part of what runs
    out = {key: value for key, value in cfg.items() if key in SECTIONS}
    for section, defaults in SECTION_DEFAULTS.items():
        if isinstance(out.get(section), Mapping):
            out[section] = {k: v for k, v in out[section].items()
                            if k not in EXECUTION_KEYS[section]
                            and not (k in defaults and json.loads(json.dumps(defaults[k])) == v)}
    return out


def _check_same_folds(source: Path, plan: dict) -> None:
    """``--weights-from`` must name a k-fold run over the same images in the same folds."""
    path = source / PLAN_FILE
    if not path.is_file():
        raise ConfigError(f"--weights-from {source}: not a k-fold run directory (no {PLAN_FILE})")
    old = json.loads(path.read_text(encoding="utf-8"))
    changed = [key for key in ("folds", "seed", "pool", "fold_of") if old.get(key) != plan[key]]
    if changed:
        raise ConfigError(f"--weights-from {source}: its folds differ ({', '.join(changed)}); its weights "
                          "were trained on other images")


def _config_difference(old, new, prefix: str = "") -> str:
    """The first dotted key whose value differs (for the error message)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in list(old) + [k for k in new if k not in old]:
            found = _config_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if found:
                return found
        return ""
    return f" (first difference: {prefix.rstrip('.')} was {old!r}, now {new!r})" if old != new else ""


def _resume_or_set_aside(fold_dir: Path, k: int) -> str | None:
    """``"auto"`` when the fold has a checkpoint to continue from (``last.pth``, else the newest
    ``epoch_N.pth``: the trainer's resume falls back past a damaged file). A fold stopped before its
    first checkpoint left only logs: they are moved to ``fold_<k>/previous/`` here, as ``detkit train``
    would, but before the fold's data lists are written (the trainer would move those too)."""
    from detkit.engine.workdir import archive_previous_run, holds_a_run, resume_candidates

    if resume_candidates(fold_dir):
        return "auto"
    if holds_a_run(fold_dir):
        logger.warning("k-fold: fold %d stopped before its first checkpoint; its files were moved to %s",
                       k, archive_previous_run(fold_dir))
    return None


def _run_fold(cfg: dict, fold_dir: Path, k: int, device, train, extra_hooks, source: Path | None,
              resume: str | None) -> dict:
    from detkit.evaluation.run import evaluate

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if source is None:
        logger.info("k-fold: fold %d %s", k, "resumes" if resume else "starts")
        start = time.perf_counter()
        summary = train(cfg, work_dir=fold_dir, resume=resume, device=device, extra_hooks=extra_hooks)
        wall, epochs = time.perf_counter() - start, summary["epochs"]
        # a resumed fold's wall time covers its last part only; the epoch records cover every part
        train_seconds = _epoch_seconds(fold_dir)
        train_seconds = wall if train_seconds is None else train_seconds
        checkpoint = summary["last_checkpoint"] or fold_dir / "last.pth"
    else:
        trained = source / FOLD_RESULT_FILE
        if not trained.is_file():
            raise ConfigError(f"--weights-from: fold {k} of {source.parent} is not finished (no {trained.name})")
        trained = json.loads(trained.read_text(encoding="utf-8"))
        train_seconds, epochs, checkpoint = trained["train_seconds"], trained["epochs"], source / "last.pth"
        train_seconds = _epoch_seconds(source) or train_seconds
        logger.info("k-fold: fold %d evaluates the weights of %s", k, checkpoint)
    # Stages fitted after the loop (rcnn_classic: features, SVMs, box regressors, and the few seconds
    # of its evaluate stage) are part of what `detkit train` takes: training time.
    from detkit.engine.stages import stage_seconds

    stages = stage_seconds(fold_dir if source is None else source)
    train_seconds += sum(stages.values())
    start = time.perf_counter()
    metrics = evaluate(cfg, checkpoint, metric="all", device=device, metrics_out=fold_dir / "eval_metrics.json",
                       diagnostics_out=fold_dir / "diagnostics.json")
    eval_seconds = time.perf_counter() - start
    diagnostics = json.loads((fold_dir / "diagnostics.json").read_text(encoding="utf-8"))
    result = {
        "metrics": {key: metrics.get(key) for key in FOLD_KEYS},
        "diagnostics": {key: diagnostics.get("summary", {}).get(key) for key in DIAGNOSTIC_KEYS},
        "epochs": epochs,
        "stage_seconds": stages,
        # the epochs' own times summed over every part of a resumed fold (startup, evaluation and
        # the lost part of an interrupted epoch left out); with weights_from: the source fold's
        "train_seconds": train_seconds,
        "train_seconds_from_epochs": _epoch_seconds(fold_dir if source is None else source) is not None,
        "eval_seconds": eval_seconds,
        "resumed": resume is not None,
        # the machine may be shared: the load average says how far these times are from an idle one
        "load_average": [load_before, os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
    }
    if source is None and (variants := _variant_metrics(fold_dir)):
        result["variants"] = variants
    return result


def _variant_metrics(run_dir: Path) -> dict[str, dict]:
    """The classic R-CNN's variants scored side by side on the fold's validation images by its
    ``evaluate`` stage (``classic_metrics.json``: softmax, SVMs, SVMs + box regression; written when
    ``train.eval_interval > 0``), headline metrics only. Empty for other detectors. The fold's own
    ``metrics`` stay those of ``detkit eval`` on ``last.pth`` (the last variant)."""
    from detkit.engine.rcnn_classic import METRICS_FILE

    path = run_dir / METRICS_FILE
    if not path.is_file():
        return {}
    variants = json.loads(path.read_text(encoding="utf-8")).get("variants") or {}
    return {name: {key: (entry.get("metrics") or {}).get(key) for key in FOLD_KEYS}
            for name, entry in variants.items()}


def _epoch_seconds(fold_dir: Path) -> float | None:
    """Training time of the fold from its ``metrics.jsonl`` epoch records: the sum of
    ``epoch_time_s`` over its epochs (an epoch recorded twice, by a run that was resumed from an
    earlier checkpoint, counts once: its last record). ``None`` without usable records."""
    path = fold_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    times = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line a killed run left half-written
            continue
        if isinstance(record, dict) and record.get("type") == "epoch" and "epoch_time_s" in record:
            times[record["epoch"]] = record["epoch_time_s"]
    values = [float(v) for v in times.values() if isinstance(v, (int, float))]
    if not values or len(values) != len(times) or not all(math.isfinite(v) for v in values):
        return None
    return float(sum(values))


def _mean_std(values: list) -> dict:
    x = np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    finite = x[np.isfinite(x)]
    mean = float(np.mean(finite)) if finite.size else float("nan")
    std = float(np.std(finite, ddof=1)) if finite.size > 1 else float("nan")
    return {"mean": mean, "std": std, "values": x.tolist()}


def summarize_folds(results: Sequence[Mapping], *, folds: int, seed: int, num_images: int,
                    config: str | None = None, command: str | None = None) -> dict:
    """Mean and sample std (ddof=1) over the folds of every metric and diagnostic in ``results``."""
    return {
        "config": config,
        "command": command,
        "git": _git_revision(),
        "folds": folds,
        "seed": seed,
        "num_images": num_images,
        "folds_done": [int(r["fold"]) for r in results],
        "metrics": {key: _mean_std([r["metrics"].get(key) for r in results]) for key in FOLD_KEYS},
        "diagnostics": {key: _mean_std([(r.get("diagnostics") or {}).get(key) for r in results])
                        for key in DIAGNOSTIC_KEYS},
        "train_minutes": _mean_std([r["train_seconds"] / 60 for r in results]),
        **({"variants": _variant_summary(results)} if any(r.get("variants") for r in results) else {}),
        "resumed_folds": [int(r["fold"]) for r in results if r.get("resumed")],
        "load_average": [r.get("load_average") for r in results],
    }


def _variant_summary(results: Sequence[Mapping]) -> dict[str, dict]:
    """Per variant (classic R-CNN) and metric, mean and std over the folds; a fold without the
    variant counts as missing (nan), not as zero."""
    names = list(dict.fromkeys(name for r in results for name in (r.get("variants") or {})))
    return {name: {key: _mean_std([((r.get("variants") or {}).get(name) or {}).get(key) for r in results])
                   for key in FOLD_KEYS} for name in names}


def _git_revision(root: Path | None = None) -> str | None:
    """The detkit commit the summary was written with (``+dirty`` with uncommitted changes), if known:
    only when detkit runs from a git checkout of its own. A copy of the code inside some other
    repository (an installed wheel in a project's venv, a code snapshot in a work dir) would
    otherwise report that repository's commit."""
    import subprocess

    root = Path(__file__).resolve().parents[2] if root is None else Path(root)
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root.resolve():
            return None
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _fmt(value: float, digits: int = 3) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_summary(summary: Mapping) -> str:
    """The summary as a table: one row per metric, mean ± std, then the per-fold values."""
    done = summary["folds_done"]
    lines = [f"k-fold: {len(done)} of {summary['folds']} folds done (seed {summary['seed']}, "
             f"{summary['num_images']} images); std = sample std over folds"]
    rows = [(key, summary["metrics"][key]) for key in FOLD_KEYS]
    rows += [(key, summary["diagnostics"][key]) for key in DIAGNOSTIC_KEYS]
    rows.append(("train minutes", summary["train_minutes"]))
    # the classic R-CNN's variants, on the same folds: what the SVMs and the box regression add
    rows += [(f"{name}: {key}", variant[key]) for name, variant in (summary.get("variants") or {}).items()
             for key in VARIANT_ROWS]
    width = max(len(name) for name, _ in rows)
    header = f"{'metric'.ljust(width)}  {'mean ± std':>15}  " + "  ".join(f"fold {k}".rjust(6) for k in done)
    lines += [header, "-" * len(header)]
    for name, stat in rows:
        cells = "  ".join(_fmt(v).rjust(6) for v in stat["values"])
        lines.append(f"{name.ljust(width)}  {(_fmt(stat['mean']) + ' ± ' + _fmt(stat['std'])):>15}  {cells}")
    return "\n".join(lines)
