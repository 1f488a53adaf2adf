"""The course's R-CNN as designed (Girshick et al., CVPR 2014, and its released code): a fine-tuned
CNN describes every proposal, one linear SVM per class scores it, a class-specific ridge regressor
corrects its box, then per-class NMS.

Registered as ``rcnn_classic``. It *is* an ``rcnn`` (same backbone, proposals, region classifier,
sampler and fine-tuning loss) plus the parts fitted after fine-tuning, held as buffers so that a
checkpoint stores them as plain tensors (``torch.load(weights_only=True)``)::

    svm_weight [C, D_svm], svm_bias [C], svm_scale, svm_trained      (stage 3, models/svm.py)
    bbox_beta [C, D_box + 1, 4], bbox_mu [C, 4], bbox_t_inv [C, 4, 4],
    bbox_scale, bbox_trained                                          (stage 4, models/box_ridge.py)

``detkit train`` runs the four stages in order (:mod:`detkit.engine.rcnn_classic`, resumable):

1. fine-tuning: the ordinary training loop on ``rcnn``'s loss (the paper: softmax only, so the classic
   configs set ``loss.box_weight=0``), 32 foreground + 96 background regions per 128;
2. features of every proposal (and ground-truth box) of every training image, cached on disk;
3. the SVMs, with hard-negative mining, on the ``svm_layer`` features (the paper's fc7);
4. the box regressors on the ``bbox_layer`` features (the paper's pool5) of proposals with IoU > 0.6.

Layers (``svm_layer``, ``bbox_layer``): ``pool5`` is the region feature the head reads (warp mode:
the backbone's map of the warped crop, averaged or pooled to a grid and flattened; roi mode: the
roi-pooled map), ``fc6``, ``fc7`` the head's fully-connected layers after their ReLU. With AlexNet
and ``head.warp_pool="grid"``, ``pool_size=6``, these are the paper's layers; with another backbone
they are its equivalents. Before the SVMs and regressors, features are multiplied by a constant that
gives the training features a mean L2 norm of ``feature_norm`` (20, ``rcnn_scale_features.m``).

Test time (:meth:`score_regions`, then the postprocessor): every proposal is scored by every SVM
(``z = w . (s x) + b``, the raw margin is the detection score), every proposal's box is corrected by
each class's regressor, and the postprocessor applies per-class NMS (0.3) and keeps the
``max_per_image`` best (100; the configs set no score threshold, as the released code keeps the 100
best boxes per class and image whatever their margin). The
released code applies NMS to the *regressed* boxes (``rcnn_test_bbox_regressor.m`` regresses the
top-scoring boxes, ``imdb_eval_voc.m`` then runs NMS 0.3), which is what this does.

``scoring`` (``"svm"`` or ``"softmax"``: the fine-tuned head's probabilities) and ``box_regression``
(``"ridge"``, ``"head"``: the fine-tuned head's deltas, or ``"none"``) select what test time uses, so
one checkpoint gives every row of the paper's comparison (``--set model.scoring=softmax``). Before
stage 3 (4) has run, ``svm`` (``ridge``) falls back to ``softmax`` (``none``) with a warning: the
evaluation during fine-tuning is the softmax head's.

The export contract is ``rcnn``'s: :meth:`score_regions` takes the proposals and returns the class
boxes and scores before the postprocessor.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from detkit.errors import ConfigError
from detkit.models.box_ridge import PAPER_BOX_CODER, predict_deltas
from detkit.models.detectors.rcnn import RCNN, proposal_boxes
from detkit.models.heads.region_classifier import POOL_LAYER
from detkit.models.svm import SVMOptions
from detkit.ops.boxes import clip_boxes
from detkit.registry import Spec

__all__ = ["RCNNClassic", "BoxRegressionOptions", "SCORINGS", "BOX_REGRESSIONS", "NO_SVM_BIAS"]

logger = logging.getLogger(__name__)

SCORINGS = ("svm", "softmax")
# A class without positive examples has no SVM (train_svms gives it bias -inf: it never fires).
# Checkpoints hold finite values only (a non-finite one means a diverged model and is refused), so
# the bias is stored as this stand-in, and test time turns that class's scores into -inf again.
NO_SVM_BIAS = torch.finfo(torch.float32).min
BOX_REGRESSIONS = ("ridge", "head", "none")
FEATURE_DTYPES = ("float16", "float32")


class BoxRegressionOptions:
    """Stage 4's settings (the released code's ``rcnn_train_bbox_regressor.m`` defaults)."""

    def __init__(self, lam: float = 1000.0, min_iou: float = 0.6):
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam > 0:
            raise ConfigError(f"model.bbox_reg.lam must be a number > 0, got {lam!r}")
        if not 0.0 <= float(min_iou) < 1.0:
            raise ConfigError(f"model.bbox_reg.min_iou must lie in [0, 1), got {min_iou!r}")
        self.lam = float(lam)
        self.min_iou = float(min_iou)

    @classmethod
    def from_config(cls, cfg: Mapping | None) -> BoxRegressionOptions:
        cfg = dict(cfg or {})
        known = set(inspect.signature(cls).parameters)
        for key in cfg:
            if key not in known:
                raise ConfigError(f"model.bbox_reg.{key}: unknown option; the options are {', '.join(sorted(known))}")
        return cls(**cfg)

    def as_dict(self) -> dict:
        return {"lam": self.lam, "min_iou": self.min_iou}


class RCNNClassic(RCNN):
    """R-CNN with SVMs and ridge box regression (see the module docstring).

    Args (besides ``rcnn``'s):
        scoring: ``"svm"`` or ``"softmax"``.
        box_regression: ``"ridge"``, ``"head"`` or ``"none"``.
        svm_layer: the features the SVMs read (``"fc7"``).
        bbox_layer: the features the box regressors read (``"pool5"``).
        feature_norm: mean L2 norm the features are scaled to (20).
        feature_dtype: how stage 2 stores features on disk (``"float16"`` halves the cache).
        svm: :class:`~detkit.models.svm.SVMOptions` as a dict (C, bias_mult, pos_weight, ...).
        bbox_reg: ``dict(lam=1000, min_iou=0.6)``.
        neg_iou: a region is a negative of class c below this IoU with every c object (0.3).
    """

    # Run by `detkit train` after the loop (detkit.engine.stages).
    training_stages = "detkit.engine.rcnn_classic:classic_stages"

    def __init__(self, backbone: Spec, head: Spec, loss: Spec, postprocessor: Spec, proposals: Spec,
                 num_classes: int, class_names: Sequence[str] | None = None, *, scoring: str = "svm",
                 box_regression: str = "ridge", svm_layer: str = "fc7", bbox_layer: str = POOL_LAYER,
                 feature_norm: float = 20.0, feature_dtype: str = "float16", svm: Mapping | None = None,
                 bbox_reg: Mapping | None = None, neg_iou: float = 0.3, **rcnn_options):
        super().__init__(backbone, head, loss, postprocessor, proposals, num_classes, class_names, **rcnn_options)
        self.scoring = scoring
        self.box_regression = box_regression
        self._check_modes()
        layers = self.head.layer_names()
        for name, value in (("svm_layer", svm_layer), ("bbox_layer", bbox_layer)):
            if value not in layers:
                raise ConfigError(f"model.{name}: '{value}' is not a layer of the head; it has {', '.join(layers)} "
                                  f"(head.num_fc sets how many fully-connected layers there are)")
        if not float(feature_norm) > 0:
            raise ConfigError(f"model.feature_norm must be > 0, got {feature_norm!r}")
        if feature_dtype not in FEATURE_DTYPES:
            raise ConfigError(f"model.feature_dtype must be one of {', '.join(FEATURE_DTYPES)}, got {feature_dtype!r}")
        if not 0.0 < float(neg_iou) <= 1.0:
            raise ConfigError(f"model.neg_iou must lie in (0, 1], got {neg_iou!r}")
        self.svm_layer, self.bbox_layer = svm_layer, bbox_layer
        self.feature_norm = float(feature_norm)
        self.feature_dtype = feature_dtype
        self.neg_iou = float(neg_iou)
        self.svm_options = SVMOptions.from_config(svm)
        self.bbox_options = BoxRegressionOptions.from_config(bbox_reg)

        c, d_svm, d_box = num_classes, self.head.layer_dim(svm_layer), self.head.layer_dim(bbox_layer)
        self.register_buffer("svm_weight", torch.zeros(c, d_svm))
        self.register_buffer("svm_bias", torch.zeros(c))
        self.register_buffer("svm_scale", torch.tensor(1.0))
        self.register_buffer("svm_trained", torch.tensor(False))
        self.register_buffer("bbox_beta", torch.zeros(c, d_box + 1, 4))
        self.register_buffer("bbox_mu", torch.zeros(c, 4))
        self.register_buffer("bbox_t_inv", torch.eye(4).repeat(c, 1, 1))
        self.register_buffer("bbox_scale", torch.tensor(1.0))
        self.register_buffer("bbox_trained", torch.tensor(False))
        self._warned: set[str] = set()
        # The two flags as Python bools, read by test time: a branch on a buffer's value is data-
        # dependent control flow, which torch.export (ONNX export) cannot trace. Kept in step with the
        # buffers by set_svms / set_box_regressors and after every load_state_dict.
        self._ready = {"svm": False, "ridge": False}
        self.register_load_state_dict_post_hook(lambda module, _: module._sync_ready())

    def _check_modes(self) -> None:
        if self.scoring not in SCORINGS:
            raise ConfigError(f"model.scoring must be one of {', '.join(SCORINGS)}, got {self.scoring!r}")
        if self.box_regression not in BOX_REGRESSIONS:
            raise ConfigError(f"model.box_regression must be one of {', '.join(BOX_REGRESSIONS)}, "
                              f"got {self.box_regression!r}")

    def extra_repr(self) -> str:
        return (f"scoring={self.scoring!r}, box_regression={self.box_regression!r}, svm_layer={self.svm_layer!r}, "
                f"bbox_layer={self.bbox_layer!r}, svm_trained={bool(self.svm_trained)}, "
                f"bbox_trained={bool(self.bbox_trained)}")

    # -- what the stages fill in -------------------------------------------------------------------
    def set_svms(self, weight: Tensor, bias: Tensor, scale: float) -> None:
        """Install the SVMs of stage 3 (``[C, D]``, ``[C]``; ``scale`` multiplies the features; a bias of
        ``-inf`` marks a class without an SVM, stored as :data:`NO_SVM_BIAS`)."""
        bias = torch.as_tensor(bias, dtype=self.svm_bias.dtype)
        self.svm_weight.copy_(torch.as_tensor(weight))
        self.svm_bias.copy_(torch.where(torch.isneginf(bias), torch.full_like(bias, NO_SVM_BIAS), bias))
        self.svm_scale.fill_(float(scale))
        self.svm_trained.fill_(True)
        self._sync_ready()

    def set_box_regressors(self, beta: Tensor, mu: Tensor, t_inv: Tensor, scale: float) -> None:
        """Install the ridge regressors of stage 4 (``[C, D + 1, 4]``, ``[C, 4]``, ``[C, 4, 4]``)."""
        self.bbox_beta.copy_(torch.as_tensor(beta))
        self.bbox_mu.copy_(torch.as_tensor(mu))
        self.bbox_t_inv.copy_(torch.as_tensor(t_inv))
        self.bbox_scale.fill_(float(scale))
        self.bbox_trained.fill_(True)
        self._sync_ready()

    def _sync_ready(self) -> None:
        self._ready = {"svm": bool(self.svm_trained), "ridge": bool(self.bbox_trained)}

    def network_state(self) -> dict[str, Tensor]:
        """The fine-tuned network's weights (what stage 1 produced; the stages' inputs)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(("svm_", "bbox_"))}

    # -- features ------------------------------------------------------------------------------
    def region_layers(self, images: Tensor, regions: Sequence[Tensor], names: Sequence[str]) -> dict[str, Tensor]:
        """The activations ``names`` (``pool5``, ``fc6``, ``fc7``) of every region of all images."""
        return self.head.layer_features(self.region_features(images, regions), names)

    # -- test time -----------------------------------------------------------------------------
    def effective_modes(self, scoring: str | None = None, box_regression: str | None = None) -> tuple[str, str]:
        """``(scoring, box_regression)`` as test time will use them: what was asked, except that the
        SVMs / regressors fall back to ``softmax`` / ``none`` until their stage has run."""
        scoring = scoring or self.scoring
        box_regression = box_regression or self.box_regression
        if scoring == "svm" and not self._ready["svm"]:
            self._warn_once("svm", "rcnn_classic: the SVMs are not trained yet (stage 3); scoring with the "
                                   "fine-tuned softmax head")
            scoring = "softmax"
        if box_regression == "ridge" and not self._ready["ridge"]:
            self._warn_once("ridge", "rcnn_classic: the box regressors are not trained yet (stage 4); "
                                     "boxes are the proposals")
            box_regression = "none"
        return scoring, box_regression

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)

    def score_regions(self, images: Tensor, proposals: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        self._check_modes()  # the attributes may have been changed since construction
        [result] = self.score_variants(images, proposals, [(self.scoring, self.box_regression)])
        return result

    def score_variants(self, images: Tensor, proposals: Sequence[Tensor],
                       variants: Sequence[tuple[str, str]]) -> list[tuple[Tensor, Tensor]]:
        """:meth:`score_regions` for several ``(scoring, box_regression)`` pairs at the cost of one:
        the network runs once. Returns ``(boxes [R, C, 4], scores [R, C])`` per variant."""
        variants = [self.effective_modes(*v) for v in variants]
        needed = {self.svm_layer for s, _ in variants if s == "svm"}
        needed |= {self.bbox_layer for _, b in variants if b == "ridge"}
        region = self.region_features(images, proposals)
        layers = self.head.layer_features(region, sorted(needed)) if needed else {}
        head_out = self.head.predict(region) if any(s == "softmax" or b == "head" for s, b in variants) else None
        boxes = proposal_boxes(proposals).float()
        image_size = (images.shape[-2], images.shape[-1])
        out = []
        for scoring, box_regression in variants:
            if scoring == "svm":
                scores = (layers[self.svm_layer].float() * self.svm_scale) @ self.svm_weight.T + self.svm_bias
                scores = scores.masked_fill(self.svm_bias == NO_SVM_BIAS, -torch.inf)  # never fires
            else:
                scores = torch.softmax(head_out[0].float(), dim=-1)[:, 1:]
            out.append((self._class_boxes(box_regression, boxes, layers, head_out, image_size), scores))
        return out

    def _class_boxes(self, box_regression: str, boxes: Tensor, layers: Mapping[str, Tensor], head_out,
                     image_size: tuple[int, int]) -> Tensor:
        r, c = boxes.shape[0], self.num_classes
        if box_regression == "none":
            class_boxes = boxes.unsqueeze(1).expand(r, c, 4)
        elif box_regression == "head":
            class_boxes = self.head.box_coder.decode(head_out[1].float().reshape(r, c, 4), boxes)
        else:
            x = layers[self.bbox_layer].float() * self.bbox_scale
            # [C, R, 4]: each class's regressor on every region (one batched product).
            deltas = predict_deltas(x.unsqueeze(0), self.bbox_beta, self.bbox_mu.unsqueeze(1), self.bbox_t_inv)
            class_boxes = PAPER_BOX_CODER.decode(deltas.transpose(0, 1), boxes)
        return clip_boxes(class_boxes, image_size)

    @torch.no_grad()
    def detect_variants(self, images: Tensor, metas: Sequence[Mapping | None] | None,
                        variants: Sequence[tuple[str, str]]) -> list[list[dict]]:
        """Detections (original pixels where ``metas`` allow) for each variant, the network run once:
        how stage 5 evaluates softmax, SVM and SVM + box regression side by side."""
        self.check_inputs(images, None, metas)
        proposals = self.generate_proposals(images, metas, self.max_proposals_test)
        counts = [len(p) for p in proposals]
        out = []
        for boxes, scores in self.score_variants(images, proposals, variants):
            detections = self.postprocessor(list(boxes.split(counts)), list(scores.split(counts)))
            out.append(self.map_to_original(detections, metas))
        return out


def _merged_signature() -> inspect.Signature:
    # The registry checks config keys against the factory's signature (with suggestions for typos);
    # RCNNClassic passes rcnn's own options through **rcnn_options, so its signature lists both.
    own = [p for p in inspect.signature(RCNNClassic.__init__).parameters.values()
           if p.name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
    names = {p.name for p in own}
    inherited = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                 for p in inspect.signature(RCNN.__init__).parameters.values()
                 if p.name not in names and p.name != "self"]
    return inspect.Signature(own + inherited)


RCNNClassic.__signature__ = _merged_signature()
