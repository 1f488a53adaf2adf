"""The classic R-CNN (``rcnn_classic``): SVMs with hard-negative mining, ridge box regression, the
detector's test-time scoring, the feature cache, and the staged training run with its resume.

References: scikit-learn's ``LinearSVC`` on *all* negatives (exact hard-negative mining reaches its
solution) and ``Ridge`` on the bias-augmented features, torchvision's ``BoxCoder`` at weights
(1, 1, 1, 1) for the paper's targets, hand-computed SVM scores and box decoding for the detector,
separate forward passes for the one-pass variant scoring, ``detkit eval`` for the stage evaluation.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder

from detkit import registry
from detkit.checkpoint import load_checkpoint
from detkit.config import load_config
from detkit.engine import rcnn_classic as stages_module
from detkit.engine.feature_cache import FeatureCache
from detkit.engine.runner import train
from detkit.errors import ConfigError, DataError
from detkit.evaluation.run import evaluate
from detkit.models.box_ridge import PAPER_BOX_CODER, fit_ridge, predict_deltas
from detkit.models.builder import build_detector
from detkit.models.heads.region_classifier import RegionClassifierHead
from detkit.models.svm import SVMOptions, svm_objective, train_svms
from detkit.ops.boxes import box_iou
from detkit.structures import check_detections
from stand_ins import TinyBackbone

REPO = Path(__file__).resolve().parents[1]
sklearn = pytest.importorskip("sklearn", reason="the classic R-CNN's SVMs need scikit-learn (extra 'classic')")


# ----------------------------------------------------------------------------------------------
# Hard-negative mining
# ----------------------------------------------------------------------------------------------


def mining_problem(seed=0):
    """Positives around +3 on axis 0; 20 chunks of negatives: the first chunk only far, easy ones
    (around -6), later chunks also a few hard ones close to the boundary (around -0.5)."""
    rng = np.random.default_rng(seed)
    dim = 6
    positives = rng.normal(0, 0.3, (40, dim)).astype(np.float32)
    positives[:, 0] += 3.0
    chunks = []
    for i in range(20):
        easy = rng.normal(0, 0.3, (60, dim))
        easy[:, 0] -= 6.0
        hard = rng.normal(0, 0.3, (0 if i == 0 else 3, dim))
        hard[:, 0] -= 0.5
        features = np.concatenate((easy, hard)).astype(np.float32)
        chunks.append((i, features, np.ones((len(features), 1), bool)))
    return positives, chunks


def test_hard_negative_mining_grows_the_set_then_stops_and_reaches_the_full_data_svm():
    from sklearn.svm import LinearSVC

    positives, chunks = mining_problem()
    options = SVMOptions(C=1.0, initial_negatives=50, retrain_limit=20, tol=1e-6, max_iter=100000)
    passes = []
    result = train_svms([positives], lambda: (passes.append(1), iter(chunks))[1], options, class_names=["obj"])
    history = result.history

    # The first training sees only the first chunk's easy negatives; mining adds the hard ones.
    assert history[0]["negatives_in_cache"] == 60 and history[0]["hard_negatives_added"] == 60
    added = [r["hard_negatives_added"] for r in history[1:]]
    assert added and all(a > 0 for a in added)  # every later training follows newly mined negatives
    mined = history[-1]["negatives_in_cache"] + sum(r["evicted"] for r in history[:-1])
    assert mined > 60  # the set grew beyond the first chunk
    # The mined set stopped growing: the last pass added nothing and mining ended there.
    assert len(passes) < options.max_passes and passes
    assert {r["pass"] for r in history} <= set(range(1, len(passes)))
    # Easy negatives were evicted again (cache kept small) and never came back.
    assert sum(r["evicted"] for r in history) >= 50

    # The final SVM separates every example of the whole data set...
    w, b = result.weight[0], result.bias[0]
    all_negatives = np.concatenate([c[1] for c in chunks])
    assert (positives @ w + b > 0).all() and (all_negatives @ w + b < 0).all()
    # ...and is the SVM trained on all negatives at once: the negatives left out score below -1, so
    # they add nothing to the objective (the reason hard-negative mining is exact).
    full = LinearSVC(C=1.0, loss="hinge", dual=True, class_weight={1: 2.0, -1: 1.0}, intercept_scaling=10.0,
                     tol=1e-6, max_iter=100000, random_state=0)
    full.fit(np.concatenate((positives, all_negatives)).astype(np.float64),
             np.concatenate((np.ones(len(positives)), -np.ones(len(all_negatives)))))
    np.testing.assert_allclose(w, full.coef_[0], atol=2e-3)
    assert b == pytest.approx(full.intercept_[0], abs=2e-3)
    ours = svm_objective(w, b, positives @ w + b, all_negatives @ w + b, options)["objective"]
    theirs = svm_objective(full.coef_[0], full.intercept_[0], positives @ full.coef_[0] + full.intercept_[0],
                           all_negatives @ full.coef_[0] + full.intercept_[0], options)["objective"]
    assert ours == pytest.approx(theirs, rel=1e-3)
    # The objective logged on the final cache is the objective on the whole data set.
    assert history[-1]["objective"] == pytest.approx(ours, rel=1e-5)


def test_svm_objective_is_liblinears_with_the_bias_feature():
    w, b = np.array([1.0, -2.0]), 3.0
    options = SVMOptions(C=0.5, pos_weight=2.0, bias_mult=10.0)
    pos, neg = np.array([0.5, 2.0]), np.array([-0.5, -3.0])
    terms = svm_objective(w, b, pos, neg, options)
    assert terms["pos_loss"] == pytest.approx(0.5 * 2.0 * 0.5)
    assert terms["neg_loss"] == pytest.approx(0.5 * 0.5)
    assert terms["reg_loss"] == pytest.approx(0.5 * 5.0 + 0.5 * 0.3 ** 2)
    assert terms["objective"] == pytest.approx(terms["pos_loss"] + terms["neg_loss"] + terms["reg_loss"])


def test_classes_without_positives_never_fire_and_bad_options_are_named():
    positives, chunks = mining_problem()
    negative = [(i, f, np.concatenate((m, m), axis=1)) for i, f, m in chunks]
    result = train_svms([positives, np.zeros((0, positives.shape[1]), np.float32)], lambda: iter(negative),
                        SVMOptions(C=1.0, initial_negatives=50))
    assert result.trained.tolist() == [True, False] and result.bias[1] == -math.inf
    with pytest.raises(DataError, match="no negative examples"):
        train_svms([positives], lambda: iter([(0, positives[:2], np.zeros((2, 1), bool))]), SVMOptions())
    with pytest.raises(ConfigError, match=r"model.svm.C must be a number > 0"):
        SVMOptions.from_config({"C": 0})
    with pytest.raises(ConfigError, match=r"model.svm.bias: unknown option"):
        SVMOptions.from_config({"bias": 1})
    with pytest.raises(ConfigError, match="evict_threshold"):
        SVMOptions.from_config({"evict_threshold": 0.0})


# ----------------------------------------------------------------------------------------------
# Ridge box regression
# ----------------------------------------------------------------------------------------------


def random_pairs(n, generator):
    xy = torch.rand(n, 2, generator=generator) * 200
    wh = torch.rand(n, 2, generator=generator) * 80 + 8
    proposals = torch.cat((xy, xy + wh), dim=1)
    gt = proposals + (torch.rand(n, 4, generator=generator) - 0.5) * 12
    gt[:, 2:] = torch.maximum(gt[:, 2:], gt[:, :2] + 2)
    return proposals.double(), gt.double()


def test_paper_targets_and_decoding_round_trip_against_torchvisions_box_coder():
    proposals, gt = random_pairs(500, torch.Generator().manual_seed(0))
    reference = TorchvisionBoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    targets = PAPER_BOX_CODER.encode(proposals, gt)
    torch.testing.assert_close(targets, reference.encode_single(gt, proposals), rtol=0, atol=1e-12)
    torch.testing.assert_close(PAPER_BOX_CODER.decode(targets, proposals), gt, rtol=0, atol=1e-9)
    torch.testing.assert_close(reference.decode_single(targets, proposals), gt, rtol=0, atol=1e-9)
    # The paper's formulas, written out: dx = (Gx - Px) / Pw, dw = log(Gw / Pw).
    pw, gw = proposals[:, 2] - proposals[:, 0], gt[:, 2] - gt[:, 0]
    px, gx = proposals[:, 0] + pw / 2, gt[:, 0] + gw / 2
    torch.testing.assert_close(targets[:, 0], (gx - px) / pw)
    torch.testing.assert_close(targets[:, 2], torch.log(gw / pw))


def test_ridge_fit_is_sklearns_ridge_on_whitened_targets_in_both_solver_forms():
    from sklearn.linear_model import Ridge

    g = torch.Generator().manual_seed(1)
    proposals, gt = random_pairs(300, g)
    targets = PAPER_BOX_CODER.encode(proposals, gt)
    for dim in (20, 600):  # fewer features than samples (primal), more (dual)
        features = torch.randn(300, dim, generator=g, dtype=torch.float64)
        fit = fit_ridge(features, targets, lam=1000.0)
        whitened = (targets - fit.mu) @ torch.linalg.inv(fit.t_inv)
        augmented = torch.cat((features, torch.ones(300, 1, dtype=torch.float64)), dim=1)
        reference = Ridge(alpha=1000.0, fit_intercept=False, solver="cholesky").fit(augmented.numpy(), whitened.numpy())
        np.testing.assert_allclose(fit.beta.numpy(), reference.coef_.T, rtol=1e-6, atol=1e-9)
        # The released code's whitening: covariance V diag(d) V^T becomes V diag(d / (d + 0.001)) V^T.
        centred = targets - targets.mean(dim=0)
        d, v = torch.linalg.eigh(centred.T @ centred / 300)
        torch.testing.assert_close(whitened.T @ whitened / 300, v @ torch.diag(d / (d + 1e-3)) @ v.T)


def test_ridge_regressor_learns_boxes_from_features_that_determine_them():
    g = torch.Generator().manual_seed(2)
    proposals, gt = random_pairs(400, g)
    targets = PAPER_BOX_CODER.encode(proposals, gt)
    mixing = torch.randn(4, 32, generator=g, dtype=torch.float64)
    features = targets @ mixing + 0.001 * torch.randn(400, 32, generator=g, dtype=torch.float64)
    fit = fit_ridge(features * 100, targets, lam=1e-3)  # large features: regularisation negligible
    boxes = PAPER_BOX_CODER.decode(predict_deltas(features * 100, fit.beta, fit.mu, fit.t_inv), proposals)
    assert float((boxes - gt).abs().max()) < 0.5
    # Batched over classes as the detector applies it: class c's regressor on every region.
    beta, mu, t_inv = (torch.stack((t, t)) for t in (fit.beta, fit.mu, fit.t_inv))
    batched = predict_deltas((features * 100).unsqueeze(0), beta, mu.unsqueeze(1), t_inv)
    torch.testing.assert_close(batched[1], predict_deltas(features * 100, fit.beta, fit.mu, fit.t_inv))


# ----------------------------------------------------------------------------------------------
# The head's layers and the detector
# ----------------------------------------------------------------------------------------------


def test_grid_warp_pool_is_the_flattened_pooled_crop_map_and_layers_are_the_fc_activations():
    torch.manual_seed(0)
    backbone = TinyBackbone(8)
    head = RegionClassifierHead(8, 2, mode="warp", warp_size=32, warp_pool="grid", pool_size=2, context=0,
                                hidden_dim=16, dropout=0.5).eval()
    images = torch.rand(1, 3, 64, 64)
    boxes = [torch.tensor([[0.0, 0.0, 32.0, 32.0], [16.0, 8.0, 60.0, 40.0]])]
    region = head.region_features(images, boxes, backbone=backbone)
    crops = head.warp(images, torch.cat((torch.zeros(2, 1), boxes[0]), dim=1))
    expected = torch.nn.functional.adaptive_avg_pool2d(backbone(crops), 2).flatten(1)
    torch.testing.assert_close(region, expected)
    assert head.layer_names() == ("pool5", "fc6", "fc7") and head.layer_dim("pool5") == 32
    layers = head.layer_features(region, ["pool5", "fc6", "fc7"])
    fc6, fc7 = head.fc[0], head.fc[3]
    torch.testing.assert_close(layers["fc6"], torch.relu(fc6(region)))
    torch.testing.assert_close(layers["fc7"], torch.relu(fc7(layers["fc6"])))
    torch.testing.assert_close(layers["fc7"], head.fc(region))  # what the classifier reads, in eval mode
    with pytest.raises(ConfigError, match="fc8: not a layer"):
        head.layer_features(region, ["fc8"])


@pytest.fixture
def tiny_classic():
    with registry.register("backbones", "tiny_classic_backbone", TinyBackbone):
        yield


def classic_cfg(mode="roi", **extra):
    return {"type": "rcnn_classic", "backbone": {"type": "tiny_classic_backbone"},
            "proposals": {"type": "sliding_window", "scales": (0.25, 0.4, 0.6), "aspect_ratios": (1.0,),
                          "step": 0.3, "max_proposals": 60},
            "head": {"type": "region_classifier", "mode": mode, "pool_size": 2, "hidden_dim": 16, "warp_size": 32,
                     "context": 4, "warp_pool": "grid"},
            "loss": {"type": "region_loss", "box_weight": 0.0},
            "postprocessor": {"type": "batched_nms", "iou_threshold": 0.3, "score_threshold": -1.0},
            "num_samples": 16, "bg_iou": (0.0, 0.5), **extra}


def install_random_stages(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = model.num_classes
    model.set_svms(torch.randn(model.svm_weight.shape, generator=g), torch.randn(c, generator=g), 0.7)
    d = model.bbox_beta.shape[1] - 1
    model.set_box_regressors(torch.randn(c, d + 1, 4, generator=g) * 0.01, torch.randn(c, 4, generator=g) * 0.05,
                             torch.eye(4).repeat(c, 1, 1) * 0.5, 1.3)


@pytest.mark.parametrize("mode", ["roi", "warp"])
def test_svm_scores_and_ridge_boxes_are_computed_as_the_paper_says(tiny_classic, mode):
    torch.manual_seed(0)
    model = build_detector(classic_cfg(mode), ["a", "b"]).eval()
    install_random_stages(model)
    images = torch.rand(1, 3, 64, 64)
    proposals = [torch.tensor([[4.0, 4.0, 40.0, 44.0], [20.0, 10.0, 60.0, 50.0], [0.0, 30.0, 30.0, 64.0]])]
    boxes, scores = model.score_regions(images, proposals)
    with torch.no_grad():
        layers = model.region_layers(images, proposals, ["fc7", "pool5"])
    expected_scores = (layers["fc7"] * 0.7) @ model.svm_weight.T + model.svm_bias
    torch.testing.assert_close(scores, expected_scores)
    for c in range(2):
        deltas = (layers["pool5"] * 1.3) @ model.bbox_beta[c, :-1] + model.bbox_beta[c, -1]
        deltas = deltas @ model.bbox_t_inv[c] + model.bbox_mu[c]
        expected = PAPER_BOX_CODER.decode(deltas, proposals[0]).clamp(0, 64)
        torch.testing.assert_close(boxes[:, c], expected, atol=1e-4, rtol=1e-5)
    # detect(): the postprocessor on these: margins > -1, NMS 0.3 per class on the *regressed* boxes
    # (torchvision's batched_nms is the reference).
    [det] = model.detect(images, proposals)
    check_detections([det])
    rows, classes = torch.nonzero(scores > -1, as_tuple=True)
    keep = torchvision.ops.batched_nms(boxes[rows, classes], scores[rows, classes], classes, 0.3)
    order = torch.argsort(det["scores"], descending=True)
    torch.testing.assert_close(det["scores"][order], scores[rows, classes][keep])
    torch.testing.assert_close(det["boxes"][order], boxes[rows, classes][keep])
    assert det["labels"][order].tolist() == classes[keep].tolist()


def test_one_pass_variants_equal_separate_forward_passes_and_untrained_stages_fall_back(tiny_classic, caplog):
    torch.manual_seed(0)
    model = build_detector(classic_cfg(), ["a", "b"]).eval()
    images = torch.rand(2, 3, 64, 64)
    metas = [{"orig_size": (32, 32), "scale": (2.0, 2.0), "pad": (0.0, 0.0)}, None]
    # Before stages 3-4: SVM / ridge fall back to the softmax head and the proposals, with a warning.
    with caplog.at_level("WARNING"):
        untrained = model(images, metas=metas)
    assert "SVMs are not trained yet" in caplog.text
    model.scoring, model.box_regression = "softmax", "none"
    softmax = model(images, metas=metas)
    for a, b in zip(untrained, softmax):
        torch.testing.assert_close(a["scores"], b["scores"])

    install_random_stages(model)
    variants = [("softmax", "none"), ("softmax", "head"), ("svm", "none"), ("svm", "ridge")]
    together = model.detect_variants(images, metas, variants)
    for (scoring, box_regression), detections in zip(variants, together):
        model.scoring, model.box_regression = scoring, box_regression
        for a, b in zip(detections, model(images, metas=metas)):
            torch.testing.assert_close(a["boxes"], b["boxes"])
            torch.testing.assert_close(a["scores"], b["scores"])
            assert torch.equal(a["labels"], b["labels"])
    model.scoring = "linear"
    with pytest.raises(ConfigError, match="model.scoring must be one of svm, softmax"):
        model(images)


def test_config_errors_name_the_key(tiny_classic):
    with pytest.raises(ConfigError, match="model.svm_layer: 'fc9' is not a layer"):
        build_detector(classic_cfg(svm_layer="fc9"), ["a"])
    with pytest.raises(ConfigError, match=r"model.svm.Cee: unknown option"):
        build_detector(classic_cfg(svm={"Cee": 1.0}), ["a"])
    with pytest.raises(ConfigError, match=r"model.bbox_reg.min_iou must lie in"):
        build_detector(classic_cfg(bbox_reg={"min_iou": 1.5}), ["a"])
    # rcnn's own options pass through and are checked against the merged signature (with a suggestion).
    with pytest.raises(ConfigError, match=r"model.num_sample: unknown argument.*Did you mean 'num_samples'"):
        build_detector(classic_cfg(num_sample=8), ["a"])
    assert build_detector(classic_cfg(num_samples=8), ["a"]).sampler.num_samples == 8


def test_checkpoint_holds_the_svms_and_regressors_as_tensors(tiny_classic, tmp_path):
    from detkit.checkpoint import load_model_weights, save_checkpoint

    model = build_detector(classic_cfg(), ["a", "b"])
    install_random_stages(model, seed=3)
    path = save_checkpoint(tmp_path / "m.pth", {"model": model.state_dict(), "class_names": ["a", "b"]})
    raw = torch.load(path, weights_only=True)
    for key in ("svm_weight", "svm_bias", "svm_scale", "bbox_beta", "bbox_mu", "bbox_t_inv", "bbox_scale"):
        assert isinstance(raw["model"][key], torch.Tensor)
    fresh = build_detector(classic_cfg(), ["a", "b"])
    load_model_weights(fresh, load_checkpoint(path))
    assert bool(fresh.svm_trained) and bool(fresh.bbox_trained)
    torch.testing.assert_close(fresh.svm_weight, model.svm_weight)

    # A class without an SVM (bias -inf from train_svms) is saved as a finite checkpoint (non-finite
    # weights are refused as a diverged model) and still never fires once loaded.
    model.set_svms(model.svm_weight * torch.tensor([[1.0], [0.0]]), torch.tensor([0.5, -math.inf]), 0.7)
    path = save_checkpoint(tmp_path / "untrained_class.pth", {"model": model.state_dict(), "class_names": ["a", "b"]})
    load_model_weights(fresh, load_checkpoint(path))
    assert bool(torch.isfinite(fresh.svm_bias).all())
    images, proposals = torch.rand(1, 3, 64, 64), [torch.tensor([[4.0, 4.0, 40.0, 44.0], [20.0, 10.0, 60.0, 50.0]])]
    _, scores = fresh.eval().score_regions(images, proposals)
    assert bool(torch.isfinite(scores[:, 0]).all()) and bool((scores[:, 1] == -math.inf).all())
    fresh.postprocessor.score_threshold = -1e30
    labels = fresh.detect(images, proposals)[0]["labels"].tolist()
    assert labels and set(labels) == {0}


# ----------------------------------------------------------------------------------------------
# Feature cache
# ----------------------------------------------------------------------------------------------


def test_feature_cache_entries_are_atomic_and_a_changed_header_starts_afresh(tmp_path, caplog):
    cache = FeatureCache(tmp_path / "c", {"network": "aaa", "layers": [1, 2]}, 3).open()
    assert cache.missing() == [0, 1, 2]
    cache.write(1, {"x": np.arange(4, dtype=np.float16)})
    assert cache.missing() == [0, 2] and not list((tmp_path / "c").glob("*.tmp"))
    np.testing.assert_array_equal(cache.read(1)["x"], np.arange(4, dtype=np.float16))
    # Reopened with the same header: entries kept (resume).
    assert FeatureCache(tmp_path / "c", {"network": "aaa", "layers": [1, 2]}, 3).open().missing() == [0, 2]
    # Another network: the stale entry goes.
    with caplog.at_level("WARNING"):
        other = FeatureCache(tmp_path / "c", {"network": "bbb", "layers": [1, 2]}, 3).open()
    assert other.missing() == [0, 1, 2] and "different network" in caplog.text
    cache.path(0).write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"000000.npz: unreadable feature cache entry"):
        cache.read(0)


# ----------------------------------------------------------------------------------------------
# The staged training run: detkit train, resume, detkit eval
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    from detkit.data.shapes import make_shapes

    root = tmp_path_factory.mktemp("classic_shapes")
    make_shapes(root, num=12, seed=0, size=48, val_fraction=0.34, workers=1)
    return root


def pipeline_cfg(root, mode="roi"):
    model = classic_cfg(mode, svm={"initial_negatives": 100, "retrain_limit": 200, "max_passes": 3})
    model["proposals"]["max_proposals"] = 40
    return {
        "model": model,
        "data": {"classes": ["circle", "square", "triangle", "star", "cross"],
                 "train": {"type": "shapes", "root": str(root), "split": "train",
                           "transforms": {"size": 48, "augment": [{"type": "HorizontalFlip", "p": 0.5}]}},
                 "val": {"type": "shapes", "root": str(root), "split": "val", "transforms": {"size": 48}}},
        "train": {"epochs": 1, "batch_size": 4, "num_workers": 0, "seed": 0, "log_interval": 1, "eval_interval": 1,
                  "optimizer": {"type": "adamw", "lr": 1e-3}},
        "eval": {"metric": ["voc07", "voc", "coco"], "batch_size": 4, "num_workers": 0, "save_best": None},
    }


class Interrupted(Exception):
    pass


def test_stages_run_after_fine_tuning_and_resume_where_they_stopped(tiny_classic, shapes_root, tmp_path, monkeypatch):
    cfg = pipeline_cfg(shapes_root)
    work = tmp_path / "run"
    real_record = stages_module.image_record
    calls = {"features": 0}

    def interrupted_record(model, image, target, seed):
        if calls["features"] == 3:
            raise Interrupted("stopped in stage 2")
        calls["features"] += 1
        return real_record(model, image, target, seed)

    # Interrupted in the middle of stage 2 (after 3 images): fine-tuning is saved, 3 entries cached.
    monkeypatch.setattr(stages_module, "image_record", interrupted_record)
    with pytest.raises(Interrupted):
        train(cfg, work_dir=work, device="cpu")
    assert load_checkpoint(work / "last.pth")["epoch"] == 1
    num_train = len(list((shapes_root / "ImageSets" / "Main").glob("train.txt"))[0].read_text().split())
    assert len(list((work / "features" / "train").glob("*.npz"))) == 3
    finetuned = load_checkpoint(work / "last.pth")["model"]

    # Resumed: the loop has nothing left, stage 2 computes only the missing images; then interrupted in stage 4.
    calls["features"] = -10**6
    monkeypatch.setattr(stages_module, "train_box_regression_stage",
                        lambda context: (_ for _ in ()).throw(Interrupted("stopped in stage 4")))
    with pytest.raises(Interrupted):
        train(cfg, work_dir=work, device="cpu", resume="auto")
    assert calls["features"] == -10**6 + num_train - 3
    state = json.loads((work / "stages.json").read_text())
    assert set(state["stages"]) == {"features", "svm"}
    # The loop's time is the sum of its timed epochs (a fine-tuning resumed in another process too).
    epochs = json.loads((work / "finetune_epochs.json").read_text())
    assert list(epochs) == ["1"] and 0 < epochs["1"][0]
    assert (state["finetune_seconds"], state["finetune_cpu_seconds"]) == tuple(epochs["1"])
    rounds = state["stages"]["svm"]["summary"]["rounds"]
    assert rounds and {"negatives_in_cache", "hard_negatives_added", "objective"} <= set(rounds[0])
    saved = load_checkpoint(work / "last.pth")["model"]
    assert bool(saved["svm_trained"]) and not bool(saved["bbox_trained"])
    torch.testing.assert_close(saved["backbone.body.0.weight"], finetuned["backbone.body.0.weight"])

    # Resumed again: features and SVMs are not redone, box regression and the evaluation run.
    monkeypatch.undo()
    monkeypatch.setattr(stages_module, "image_record", lambda *a, **k: pytest.fail("stage 2 ran again"))
    monkeypatch.setattr(stages_module, "train_svms", lambda *a, **k: pytest.fail("stage 3 ran again"))
    lines_before = len((work / "metrics.jsonl").read_text().splitlines())
    train(cfg, work_dir=work, device="cpu", resume="auto")
    assert not any(json.loads(line).get("type") == "train"
                   for line in (work / "metrics.jsonl").read_text().splitlines()[lines_before:])
    state = json.loads((work / "stages.json").read_text())
    assert list(state["stages"]) == ["features", "svm", "bbox_reg", "evaluate"]
    final = load_checkpoint(work / "last.pth")["model"]
    assert bool(final["svm_trained"]) and bool(final["bbox_trained"])
    torch.testing.assert_close(final["svm_weight"], saved["svm_weight"])

    # The result is a detector `detkit eval` builds and scores exactly as the evaluate stage did.
    monkeypatch.undo()
    report = json.loads((work / "classic_metrics.json").read_text())
    assert set(report["variants"]) == {"softmax", "svm", "svm_bbox_reg"}
    assert set(report["stage_seconds"]) == set(report["stage_cpu_seconds"]) == {"finetune", "features", "svm", "bbox_reg"}
    metrics = evaluate(cfg, work / "last.pth", metric=["voc07", "coco"], device="cpu")
    assert metrics["voc07_ap50"] == pytest.approx(report["variants"]["svm_bbox_reg"]["metrics"]["voc07_ap50"])
    assert metrics["coco_ap"] == pytest.approx(report["variants"]["svm_bbox_reg"]["metrics"]["coco_ap"])
    # `detkit infer` (Predictor) runs the same SVMs and regressors on an image file.
    from detkit.data.builder import build_dataset
    from detkit.inference.predictor import Predictor

    val = build_dataset(cfg, "val")
    image, target = val[0]
    # --conf -1: the config's own threshold on the SVM margins.
    [predicted] = Predictor(cfg, work / "last.pth", device="cpu", conf=-1.0).predict([str(val.image_path(0))])
    model = build_detector(cfg["model"], cfg["data"]["classes"])
    model.load_state_dict(final)
    [direct] = model.eval()(image[None], metas=[target["meta"]])
    assert len(direct["scores"]) > 0 and bool((direct["scores"] < 0).any())  # margins, not probabilities
    torch.testing.assert_close(predicted.scores, direct["scores"])
    torch.testing.assert_close(predicted.boxes, direct["boxes"], atol=1e-3, rtol=1e-4)

    softmax_cfg = json.loads(json.dumps(cfg))
    softmax_cfg["model"].update(scoring="softmax", box_regression="none")
    metrics = evaluate(softmax_cfg, work / "last.pth", metric=["voc07", "coco"], device="cpu")
    assert metrics["coco_ap"] == pytest.approx(report["variants"]["softmax"]["metrics"]["coco_ap"])

    # The README table's tool copies these numbers and times, one row per variant.
    tool = results_tool()
    tool.collect(work, command="detkit train tiny", data="tiny shapes", out_dir=tmp_path / "results")
    rows = tool.render(tmp_path / "results").splitlines()[2:]
    assert [row.split(" | ")[1] for row in rows] == ["softmax (fine-tuned head)", "SVMs", "SVMs + box regression"]
    for row, variant in zip(rows, ("softmax", "svm", "svm_bbox_reg")):
        values = report["variants"][variant]["metrics"]
        assert row.split(" | ")[2:6] == [f"{values[k]:.3f}" for k in ("voc07_ap50", "voc_ap50", "coco_ap", "coco_ap50")]
    total = sum(report["stage_seconds"].values()) / 60
    cpu = sum(report["stage_cpu_seconds"].values()) / 60
    assert rows[2].split(" | ")[-2:] == [f"{total:.1f} min", f"{cpu:.1f} min |"]


def test_kfold_keeps_each_variants_scores_per_fold_and_counts_the_stages_as_training(tiny_classic, shapes_root,
                                                                                      tmp_path):
    """`detkit kfold` of a classic config: every fold's softmax / SVM / SVM + box regression scores
    (the evaluate stage's) in its result and mean / std in the summary; the fold's own metrics are
    `detkit eval` of last.pth, which is the last variant; the stages' seconds count as training."""
    from detkit.engine.kfold import FOLD_RESULT_FILE, format_summary, kfold
    from detkit.evaluation.names import FOLD_KEYS

    out = tmp_path / "kf"
    summary = kfold(pipeline_cfg(shapes_root), folds=2, seed=0, out=out, device="cpu")
    assert summary["folds_done"] == [0, 1]
    for k in range(2):
        fold = out / f"fold_{k}"
        result = json.loads((fold / FOLD_RESULT_FILE).read_text())
        report = json.loads((fold / "classic_metrics.json").read_text())
        assert set(result["variants"]) == set(report["variants"]) == {"softmax", "svm", "svm_bbox_reg"}
        for name, entry in report["variants"].items():
            assert result["variants"][name] == {key: entry["metrics"].get(key) for key in FOLD_KEYS}
        for key in ("voc07_ap50", "coco_ap"):
            assert result["metrics"][key] == pytest.approx(result["variants"]["svm_bbox_reg"][key])
        stages = json.loads((fold / "stages.json").read_text())["stages"]
        assert set(result["stage_seconds"]) == set(stages) >= {"features", "svm", "bbox_reg"}
        epochs = [json.loads(line) for line in (fold / "metrics.jsonl").read_text().splitlines()]
        loop = sum(r["epoch_time_s"] for r in epochs if r.get("type") == "epoch")
        assert result["train_seconds"] == pytest.approx(loop + sum(s["seconds"] for s in stages.values()))
    for name in ("softmax", "svm", "svm_bbox_reg"):
        values = [json.loads((out / f"fold_{k}" / FOLD_RESULT_FILE).read_text())["variants"][name]["coco_ap"]
                  for k in range(2)]
        assert summary["variants"][name]["coco_ap"]["values"] == values
        assert summary["variants"][name]["coco_ap"]["mean"] == pytest.approx(np.mean(values))
        assert summary["variants"][name]["coco_ap"]["std"] == pytest.approx(np.std(values, ddof=1))
    assert "svm: coco_ap" in format_summary(summary)


def results_tool():
    spec = importlib.util.spec_from_file_location("rcnn_classic_results", REPO / "tools" / "rcnn_classic_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_table_is_what_the_tool_renders_from_the_committed_results():
    tool = results_tool()
    assert tool.readme_table(REPO / "README.md") == tool.render()
    for path in sorted(tool.RESULTS.glob("*.json")):
        result = json.loads(path.read_text())
        assert result["command"].startswith("detkit train configs/rcnn_classic_raccoon")
        assert {"softmax", "svm", "svm_bbox_reg"} <= set(result["variants"])


def test_feature_records_hold_what_the_svm_and_box_stages_need(tiny_classic, shapes_root):
    from detkit.data.builder import build_dataset

    cfg = pipeline_cfg(shapes_root)
    # Dense windows: some proposals overlap each object by more than 0.6.
    cfg["model"]["proposals"] = {"type": "sliding_window", "scales": (0.2, 0.3, 0.4, 0.5, 0.6),
                                 "aspect_ratios": (0.75, 1.0, 1.33), "step": 0.1, "max_proposals": None}
    cfg["model"]["max_proposals_train"] = 5000
    model = build_detector(cfg["model"], cfg["data"]["classes"]).eval()
    dataset = build_dataset(stages_module.unaugmented_split(cfg, "train"), "train")
    assert dataset.transforms.augmentation is None
    image, target = next(dataset[i] for i in range(len(dataset)) if len(dataset[i][1]["boxes"]) >= 2)
    record = stages_module.image_record(model, image[None], target, seed=0)
    k = len(target["boxes"])
    np.testing.assert_array_equal(record["regions"][:k], target["boxes"].numpy())
    np.testing.assert_array_equal(record["gt_labels"][:k], target["labels"].numpy())
    assert (record["gt_labels"][k:] == -1).all() and record["positive"][:k].all() and not record["positive"][k:].any()
    # overlap[:, c]: IoU with the nearest object of class c (1 for the ground-truth rows themselves).
    assert record["overlap"][np.arange(k), target["labels"].numpy()] == pytest.approx(1.0)
    assert record["svm_features"].dtype == np.float16 and record["svm_features"].shape[1] == 16
    rows = record["bbox_rows"]
    assert (record["overlap"][rows].max(axis=1) > 0.6).all() and set(range(k)) <= set(rows.tolist())
    # Targets take each region to its object: decoding them gives the ground-truth box back.
    decoded = PAPER_BOX_CODER.decode(torch.from_numpy(record["bbox_targets"]).double(),
                                     torch.from_numpy(record["regions"][rows]).double())
    gt = target["boxes"].double()
    assert len(rows) > k and float(box_iou(decoded, gt).max(dim=1).values.min()) > 0.999


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, classes", [("rcnn_classic_raccoon.py", ["raccoon"]),
                                           ("rcnn_classic_raccoon_shared.py", ["raccoon"]),
                                           ("rcnn_classic_voc_alexnet.py", [f"c{i}" for i in range(20)])])
def test_configs_state_the_papers_settings_and_build(name, classes):
    model_cfg = load_config(REPO / "configs" / name)["model"]
    assert model_cfg["type"] == "rcnn_classic"
    svm = model_cfg["svm"]
    assert (svm["C"], svm["bias_mult"], svm["pos_weight"], svm["hard_threshold"], svm["evict_threshold"]) == \
        (0.001, 10.0, 2.0, -1.0001, -1.2)
    assert model_cfg["bbox_reg"] == {"lam": 1000.0, "min_iou": 0.6} and model_cfg["neg_iou"] == 0.3
    assert (model_cfg["svm_layer"], model_cfg["bbox_layer"], model_cfg["feature_norm"]) == ("fc7", "pool5", 20.0)
    assert model_cfg["postprocessor"]["iou_threshold"] == 0.3 and model_cfg["loss"]["box_weight"] == 0.0
    assert (model_cfg["fg_fraction"], model_cfg["fg_iou"], tuple(model_cfg["bg_iou"])) == (0.25, 0.5, (0.0, 0.5))
    assert model_cfg["head"]["mode"] == ("roi" if "shared" in name else "warp")
    if "alexnet" in name:
        assert model_cfg["backbone"]["type"] == "alexnet"
        assert (model_cfg["head"]["pool_size"], model_cfg["head"]["hidden_dim"], model_cfg["head"]["context"]) == (6, 4096, 16)
    # The selective-search plugin may be absent; few windows keep the warped forward pass short.
    model_cfg["proposals"] = {"type": "sliding_window", "max_proposals": 8}
    if model_cfg["backbone"]["type"] == "efficientnet_lite0" and "efficientnet_lite0" not in registry.available("backbones"):
        pytest.skip("plugin detkit-efficientnet-lite is not installed")
    model = build_detector(model_cfg, classes).eval()
    if "alexnet" in name:
        assert model.head.layer_dim("pool5") == 256 * 6 * 6 and model.svm_weight.shape == (20, 4096)
        return  # a forward pass of warped AlexNet crops is a benchmark, not a test
    assert model.head.layer_dim("pool5") == 112 * 7 * 7
    check_detections(model(torch.rand(1, 3, 96, 96)))


def test_rcnn_classic_is_declared_as_a_detkit_entry_point():
    declared = {(info.group, info.name): info.target for info in registry.components(load=False)}
    assert declared[("detectors", "rcnn_classic")] == "detkit.models.detectors.rcnn_classic:RCNNClassic"
