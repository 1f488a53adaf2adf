# The classic R-CNN's own settings (Girshick et al. 2014 and its released code), merged over an rcnn
# config (backbone, proposals, head): the detector type, the paper's fine-tuning sample and loss,
# the SVM and box-regression stages, the test-time threshold. See docs/rcnn_classic.md.
model = dict(
    type="rcnn_classic",
    # Fine-tuning trains the softmax classifier only, as in the paper (box regression is stage 4).
    loss=dict(box_weight=0.0),
    # 32 foreground (IoU >= 0.5) + 96 background (IoU < 0.5) regions per 128 (num_samples x batch_size).
    fg_fraction=0.25,
    fg_iou=0.5,
    bg_iou=(0.0, 0.5),
    # SVM margins are the scores, unbounded: no threshold. The released code (rcnn_test.m) keeps the
    # 100 best boxes per class and image whatever their score; max_per_image=100 does that here.
    # Per-class NMS at IoU 0.3 (rcnn_test.m), whatever the rcnn config it is merged over uses.
    postprocessor=dict(iou_threshold=0.3, score_threshold=-1e9, max_per_image=100),
    scoring="svm",
    box_regression="ridge",
    svm_layer="fc7",
    bbox_layer="pool5",
    feature_norm=20.0,
    feature_dtype="float16",
    neg_iou=0.3,
    # rcnn_train.m: C = 0.001, bias feature 10, positives' loss x2, hard above -1.0001, evict below -1.2.
    svm=dict(C=0.001, bias_mult=10.0, pos_weight=2.0, hard_threshold=-1.0001, evict_threshold=-1.2,
             retrain_limit=2000, initial_negatives=1000, max_passes=5),
    # rcnn_train_bbox_regressor.m: lambda = 1000 on pool5, proposals with IoU > 0.6.
    bbox_reg=dict(lam=1000.0, min_iou=0.6),
)
# The evaluation after fine-tuning is the softmax head's; the final one (all variants) follows the
# stages. A best checkpoint of the loop would hold no SVMs.
eval = dict(save_best=None)
