# The shapes detector (configs/yolov1_shapes.py: same data, input, head and optimiser) on a backbone
# without ImageNet weights: ResNet-18 cut after layer2 (stride 8: a 14x14 grid at 112 px), trained from
# scratch, or from the classifier configs/classify_shapes_resnet18.py pre-trained on shape crops:
#   detkit train configs/yolov1_shapes_resnet18.py --work-dir work_dirs/yolov1_shapes_resnet18_scratch
#   detkit train configs/yolov1_shapes_resnet18.py --work-dir work_dirs/yolov1_shapes_resnet18_pretrained \
#       --set model.backbone.pretrained=work_dirs/classify_shapes_resnet18/best_top1.pth
# The two runs differ only in the backbone's initial weights (BatchNorm trains in both). 12 epochs
# instead of 30 (the cosine schedule shortened, evaluated every 4 epochs), so that the comparison runs
# in well under an hour per detector on 2 shared CPUs.
_base_ = ["yolov1_shapes.py"]

model = dict(backbone=dict(_delete_=True, type="resnet18", out_indices=[1], pretrained=None))
train = dict(epochs=12, eval_interval=4)
