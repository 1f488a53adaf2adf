"""Per-class linear SVMs trained with hard-negative mining: R-CNN's detectors (Girshick et al., CVPR
2014, section 2.3 and appendix B; the released code's ``rcnn_train.m``).

One SVM per class decides "this class" vs "not this class" from a region's CNN feature. The solver
is scikit-learn's :class:`~sklearn.svm.LinearSVC`, i.e. liblinear, which the paper's code called
with ``-s 3`` (L2-regularised L1-loss, dual), ``-c C -w1 pos_weight -B bias_mult``::

    min_w,b  0.5 * (|w|^2 + (b / bias_mult)^2) + C * pos_weight * sum_pos max(0, 1 - z) + C * sum_neg max(0, 1 + z)

with ``z = w . x + b`` (liblinear regularises the bias through a constant feature ``bias_mult``).
That objective, split into its three terms, is what every retraining logs.

**Data.** Positives are given up front (R-CNN: the ground-truth boxes only). Negatives come from
``source()``, an iterable over chunks (one image each in R-CNN) of ``(chunk_id, features [n, D],
negative [n, C])`` where ``negative[:, c]`` marks the rows that may serve as negatives of class c
(R-CNN: IoU < 0.3 with every instance of c). Features are used as given (R-CNN scales them to a mean
norm of 20 first, :func:`feature_scale`).

**Hard-negative mining** (the released code's ``rcnn_train.m``, with its thresholds):

1. Before a class has a model, every negative of the chunks read so far enters its cache (the paper:
   those of the first image) until the cache holds ``initial_negatives``; then it is trained.
2. From then on a chunk's rows are scored and the negatives with ``z > hard_threshold`` (-1.0001:
   inside the margin or wrong) that are not in the cache already are added.
3. A class is retrained when more than ``retrain_limit`` (2000) negatives were added since its last
   training, and at the end of every pass over the data; after each training the easy negatives
   (``z < evict_threshold``, -1.2) leave the cache, so it stays small.
4. The paper makes one pass. We repeat passes until one adds no negative to any class (the mined set
   has stopped growing: every negative of the data set is then outside the margin of the final
   model, or in its cache) or ``max_passes`` is reached, which the log says.

:func:`train_svms` returns the weights, the biases and one record per training (class, pass,
negatives in the cache, hard negatives added since the previous training, objective and its terms,
negatives evicted).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from detkit.errors import ConfigError, DataError

__all__ = ["SVMOptions", "SVMResult", "train_svms", "svm_objective", "feature_scale"]

logger = logging.getLogger(__name__)

# One chunk of candidate negatives: (chunk id, features [n, D], negative mask [n, C]).
Chunk = tuple[int, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class SVMOptions:
    """The SVM stage's settings; defaults are the released R-CNN code's (``rcnn_train.m``)."""

    C: float = 1e-3  # svm_C
    bias_mult: float = 10.0  # liblinear -B: the constant feature that carries the bias
    pos_weight: float = 2.0  # liblinear -w1: cost factor of the positives' hinge loss
    hard_threshold: float = -1.0001  # a negative scoring above this is hard
    evict_threshold: float = -1.2  # a cached negative scoring below this is dropped after training
    retrain_limit: int = 2000  # retrain once more than this many negatives were added
    initial_negatives: int = 1000  # negatives collected before a class's first training
    max_passes: int = 5  # passes over the data (the paper: 1); stops earlier once nothing is added
    tol: float = 1e-4  # liblinear stopping tolerance (scikit-learn's default)
    max_iter: int = 10000  # liblinear iterations per training

    @classmethod
    def from_config(cls, cfg: Mapping | None, path: str = "model.svm") -> SVMOptions:
        """Options from a config dict; an unknown key or a bad value is a ConfigError naming it."""
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        for key in cfg:
            if key not in known:
                raise ConfigError(f"{path}.{key}: unknown option; the SVM options are {', '.join(sorted(known))}")
        options = cls(**cfg)
        for name in ("C", "bias_mult", "pos_weight", "tol"):
            value = getattr(options, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{path}.{name} must be a number > 0, got {value!r}")
        for name in ("retrain_limit", "initial_negatives", "max_passes", "max_iter"):
            value = getattr(options, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{path}.{name} must be a positive integer, got {value!r}")
        if not options.evict_threshold <= options.hard_threshold:
            raise ConfigError(f"{path}: evict_threshold ({options.evict_threshold}) must not exceed "
                              f"hard_threshold ({options.hard_threshold}), or mined negatives would be evicted "
                              f"and found again forever")
        return options

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SVMResult:
    """Weights ``[C, D]`` and biases ``[C]`` (float32; a class that could not be trained has zero
    weights and bias ``-inf``: it never fires), ``trained [C]`` and the training log."""

    weight: np.ndarray
    bias: np.ndarray
    trained: np.ndarray
    history: list[dict]


def feature_scale(norms: np.ndarray, target_norm: float = 20.0) -> float:
    """The factor that gives features of these L2 ``norms`` a mean norm of ``target_norm`` (R-CNN's
    ``rcnn_scale_features``: 20, so the same C suits pool5, fc6 and fc7 features alike)."""
    mean = float(np.mean(norms)) if len(norms) else 0.0
    if not mean > 0:
        raise DataError("the region features are all zero: nothing for the SVMs or regressors to learn from "
                        "(was the network fine-tuned?)")
    return target_norm / mean


def svm_objective(w: np.ndarray, b: float, pos_scores: np.ndarray, neg_scores: np.ndarray,
                  options: SVMOptions) -> dict[str, float]:
    """The liblinear objective the SVM minimises (module docstring), with its three terms."""
    pos = options.C * options.pos_weight * float(np.maximum(0.0, 1.0 - pos_scores).sum())
    neg = options.C * float(np.maximum(0.0, 1.0 + neg_scores).sum())
    reg = 0.5 * float(np.dot(w, w)) + 0.5 * (b / options.bias_mult) ** 2
    return {"objective": pos + neg + reg, "pos_loss": pos, "neg_loss": neg, "reg_loss": reg}


def _fit(positives: np.ndarray, negatives: np.ndarray, options: SVMOptions, name: str) -> tuple[np.ndarray, float]:
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.svm import LinearSVC
    except ImportError as exc:
        raise ConfigError("the SVM stage of rcnn_classic needs scikit-learn: pip install 'detkit[classic]' "
                          "(or pip install scikit-learn)") from exc

    x = np.concatenate((positives, negatives)).astype(np.float64, copy=False)
    y = np.concatenate((np.ones(len(positives)), -np.ones(len(negatives))))
    svm = LinearSVC(C=options.C, loss="hinge", dual=True, class_weight={1: options.pos_weight, -1: 1.0},
                    fit_intercept=True, intercept_scaling=options.bias_mult, tol=options.tol,
                    max_iter=options.max_iter, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        svm.fit(x, y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        logger.warning("SVM %s: liblinear did not converge in %d iterations (raise model.svm.max_iter)",
                       name, options.max_iter)
    # classes_ is [-1, 1]: coef_ scores the positive class.
    return svm.coef_[0].astype(np.float32), float(svm.intercept_[0])


class _ClassCache:
    """One class's training set: its positives and the negatives mined so far (keyed by chunk, row)."""

    def __init__(self, positives: np.ndarray):
        self.positives = positives
        self.features = np.zeros((0, positives.shape[1]), np.float32)
        self.keys = np.zeros(0, np.int64)
        self.key_set: set[int] = set()
        self.added = 0  # since the last training
        self.trained = False

    def add(self, features: np.ndarray, keys: np.ndarray) -> int:
        fresh = np.array([k not in self.key_set for k in keys.tolist()], dtype=bool)
        if fresh.any():
            self.features = np.concatenate((self.features, features[fresh]))
            self.keys = np.concatenate((self.keys, keys[fresh]))
            self.key_set.update(keys[fresh].tolist())
            self.added += int(fresh.sum())
        return int(fresh.sum())

    def evict(self, keep: np.ndarray) -> int:
        dropped = int((~keep).sum())
        if dropped:
            self.key_set.difference_update(self.keys[~keep].tolist())
            self.features, self.keys = self.features[keep], self.keys[keep]
        return dropped


def train_svms(
    positives: Sequence[np.ndarray],
    source: Callable[[], Iterable[Chunk]],
    options: SVMOptions = SVMOptions(),
    *,
    class_names: Sequence[str] | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> SVMResult:
    """Train one SVM per class with hard-negative mining (module docstring).

    Args:
        positives: per class, its positive features ``[P_c, D]`` (float32).
        source: called once per pass; yields ``(chunk_id, features [n, D], negative [n, C])``.
        options: :class:`SVMOptions`.
        class_names: for the log.
        on_record: called with every training's record (also logged).
    """
    num_classes = len(positives)
    dim = positives[0].shape[1] if num_classes else 0
    names = list(class_names) if class_names is not None else [f"class_{c}" for c in range(num_classes)]
    caches = [_ClassCache(np.ascontiguousarray(p, dtype=np.float32).reshape(-1, dim)) for p in positives]
    weight = np.zeros((num_classes, dim), np.float32)
    bias = np.zeros(num_classes, np.float32)
    active = [len(c.positives) > 0 for c in caches]
    for c in range(num_classes):
        if not active[c]:
            logger.warning("SVM %s: no positive examples in the training data; the class is never detected", names[c])
    history: list[dict] = []
    pass_index = 0

    def retrain(c: int) -> None:
        cache = caches[c]
        if len(cache.features) == 0:
            raise DataError(f"SVM {names[c]}: no negative examples (regions overlapping no {names[c]} "
                            f"by 0.3 IoU or more) in the training data")
        w, b = _fit(cache.positives, cache.features, options, names[c])
        weight[c], bias[c] = w, b
        pos_scores = cache.positives @ w + b
        neg_scores = cache.features @ w + b
        record = {"class": names[c], "pass": pass_index + 1, "negatives_in_cache": len(cache.features),
                  "hard_negatives_added": cache.added,
                  **svm_objective(w, b, pos_scores, neg_scores, options)}
        record["evicted"] = cache.evict(neg_scores >= options.evict_threshold)
        record["positive_support_vectors"] = int((pos_scores < 1 + 1e-6).sum())
        cache.added, cache.trained = 0, True
        history.append(record)
        logger.info("SVM %s, pass %d: %d negatives in cache (+%d hard), objective %.4f = %.4f (pos) + %.4f (neg) "
                    "+ %.4f (reg); %d easy negatives evicted", names[c], record["pass"],
                    record["negatives_in_cache"], record["hard_negatives_added"], record["objective"],
                    record["pos_loss"], record["neg_loss"], record["reg_loss"], record["evicted"])
        if on_record is not None:
            on_record(record)

    for pass_index in range(options.max_passes):
        added_this_pass = 0
        for chunk_id, features, negative in source():
            features = np.asarray(features, dtype=np.float32)
            negative = np.asarray(negative, dtype=bool).reshape(len(features), num_classes)
            if len(features) == 0:
                continue
            scores = features @ weight.T + bias  # [n, C], one product for every class
            keys = (np.int64(chunk_id) << 32) + np.arange(len(features), dtype=np.int64)
            for c in range(num_classes):
                if not active[c]:
                    continue
                cache = caches[c]
                candidate = negative[:, c] if not cache.trained else negative[:, c] & (scores[:, c] > options.hard_threshold)
                if candidate.any():
                    added_this_pass += cache.add(features[candidate], keys[candidate])
                if (not cache.trained and len(cache.features) >= options.initial_negatives) or \
                        cache.added > options.retrain_limit:
                    retrain(c)
                    scores[:, c] = features @ weight[c] + bias[c]
        for c in range(num_classes):
            if active[c] and (caches[c].added or not caches[c].trained):
                retrain(c)
        logger.info("hard-negative mining, pass %d: %d negatives added", pass_index + 1, added_this_pass)
        if added_this_pass == 0:
            break
    else:
        logger.warning("hard-negative mining stopped after model.svm.max_passes=%d passes while the last pass "
                       "still added negatives", options.max_passes)
    trained = np.array([c.trained for c in caches], dtype=bool)
    bias[~trained] = -math.inf
    return SVMResult(weight=weight, bias=bias, trained=trained, history=history)
