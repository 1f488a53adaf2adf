# Classifier pre-training on the synthetic shapes: ResNet-18 cut after layer2 (stride 8, 128 channels),
# the trunk configs/yolov1_shapes_resnet18.py detects with, trained with a global-pool + linear head
# on single-shape crops of the same generator (other scenes: seed 1, the detection set uses seed 0).
#   detkit data make-shapes data/shapes_cls --mode classification --num 6000 --seed 1 --size 48
#   detkit classify train configs/classify_shapes_resnet18.py
#   detkit classify eval configs/classify_shapes_resnet18.py work_dirs/classify_shapes_resnet18/best_top1.pth \
#       --confusion-out confusion.png
# Its checkpoint is the detector's backbone (model.backbone.pretrained=.../best_top1.pth): README,
# "Pre-training a backbone as a classifier". The crops are 48 px with 15% context per side, so a shape
# is ~37 px, the middle of the detector's 13..50 px at its 112 px input.
_base_ = ["_base_/schedules/adamw_cosine.py"]

image_size = 48

model = dict(
    type="image_classifier",
    backbone=dict(type="resnet18", out_indices=[1]),
    head=dict(type="cls_head"),  # global average pool + linear
    loss=dict(type="cross_entropy"),
)
data = dict(
    classes=None,  # the folder names: circle, cross, square, star, triangle
    # The detector's augmentation (random scale / translation, HSV gains, flip) on the crops.
    train=dict(type="image_folder", root="data/shapes_cls/train", transforms=dict(size=image_size, preset="yolov1")),
    val=dict(type="image_folder", root="data/shapes_cls/val", transforms=dict(size=image_size)),
)
train = dict(epochs=5, batch_size=64, eval_interval=1, log_interval=25)
eval = dict(metric="accuracy", save_best="top1", batch_size=128)
