# YOLOv1 on Pascal VOC 07+12 trainval, evaluated on VOC2007 test: 448x448 input, 7x7 grid, 2 boxes
# per cell, ResNet-18 trunk, the paper's schedule shape (135 epochs, batch 64, warm-up then steps).
_base_ = ["_base_/models/yolov1_resnet18.py", "_base_/datasets/voc.py", "_base_/schedules/yolov1_paper.py"]
# Not the paper's (which the schedule follows): gradients clipped at norm 10, as in the other SGD
# recipes, a guard for this ResNet-18 variant's ImageNet-trained trunk and lighter head.
train = dict(grad_clip=10.0)
