# YOLOv1 on COCO 2017 (train2017 -> val2017): 448x448 input, 7x7 grid, 2 boxes per cell (7x7x90 for
# the 80 classes), ResNet-18 trunk, the paper's schedule shape.
_base_ = ["_base_/models/yolov1_resnet18.py", "_base_/datasets/coco.py", "_base_/schedules/yolov1_paper.py"]
# Not the paper's (which the schedule follows): gradients clipped at norm 10, as in the other SGD
# recipes, a guard for this ResNet-18 variant's ImageNet-trained trunk and lighter head.
train = dict(grad_clip=10.0)

eval = dict(metric=["coco"], save_best="coco_ap")
