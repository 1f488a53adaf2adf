# The embedded default job (`make demo`): YOLOv1 on the synthetic shapes data set at a reduced input
# size, small enough to train on a 2-core CPU in a few minutes.
#   detkit data make-shapes data/shapes --num 600 --seed 0
#   detkit train configs/yolov1_shapes.py
_base_ = ["_base_/datasets/shapes.py", "_base_/schedules/sgd_cosine.py"]

image_size = 224

model = dict(
    type="yolov1",
    backbone=dict(type="resnet18", frozen_stages=-1),
    head=dict(type="yolov1", grid_size=7, num_boxes=2, mode="conv"),
    loss=dict(type="yolov1_loss", lambda_coord=5.0, lambda_noobj=0.5),
    postprocessor=dict(type="batched_nms", iou_threshold=0.5, score_threshold=0.05, max_per_image=100),
)

data = dict(
    train=dict(transforms=dict(size=image_size, preset="yolov1")),
    val=dict(transforms=dict(size=image_size)),
)

train = dict(
    epochs=20,
    batch_size=16,
    num_workers=2,
    optimizer=dict(_delete_=True, type="adamw", lr=1e-3, weight_decay=5e-4, no_decay_norm_bias=True),
    scheduler=dict(type="cosine", warmup_epochs=1, warmup_start_factor=0.1, min_lr_factor=0.05),
    eval_interval=5,
)
eval = dict(metric=["voc07", "voc", "coco"], batch_size=32, save_best="voc07_ap50")
