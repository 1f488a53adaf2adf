# The embedded default job (`make demo`): YOLOv1 on the synthetic shapes data set.
#   detkit data make-shapes data/shapes --num 600 --seed 0
#   detkit train configs/yolov1_shapes.py
#
# Small enough for a 2-core CPU: a 112x112 input and the pretrained EfficientNet-Lite0 trunk cut
# after its stride-16 stage, whose 7x7 map is exactly the paper's S=7 grid. From scratch
# (--set "model.backbone={'type':'resnet18','out_indices':[2]}") the same schedule reaches only
# ~0.6 mAP@0.5: the class probabilities learn slowly without pretrained features.
_base_ = ["_base_/models/yolov1_lite0.py", "_base_/datasets/shapes.py", "_base_/schedules/adamw_cosine.py"]

image_size = 112

model = dict(backbone=dict(out_indices=[2]))
data = dict(
    train=dict(transforms=dict(size=image_size, preset="yolov1")),
    val=dict(transforms=dict(size=image_size)),
)
eval = dict(batch_size=32)
