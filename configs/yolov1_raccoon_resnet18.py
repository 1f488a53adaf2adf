# YOLOv1 on the raccoon photos with a ResNet-18 trunk trained from scratch (no pretrained weights):
# the same recipe as yolov1_raccoon_lite0.py, to show what ImageNet pretraining is worth.
#   detkit train configs/yolov1_raccoon_resnet18.py
_base_ = ["yolov1_raccoon_lite0.py"]

model = dict(backbone=dict(_delete_=True, type="resnet18", frozen_stages=-1))
