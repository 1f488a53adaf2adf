# YOLOv1 as the paper builds it (Redmon et al. 2016, Figure 3): the 20 convolutional layers the paper
# pre-trains on ImageNet as the backbone (14x14x1024 at 448), then, with random initialisation, the
# four 3x3 convs of 1024 channels it adds for detection (the second with stride 2: 7x7x1024), FC 4096
# -> leaky ReLU -> dropout 0.5 -> FC 7x7x30 (S=7, B=2, C=20), a linear last layer, leaky ReLU (slope
# 0.1) after every other layer and no batch-norm. The layers are documented (and where darknet's cfg
# differs: batch-norm, a locally connected layer, 3 boxes) in detkit/models/backbones/darknet.py.
model = dict(
    type="yolov1",
    # pretrained: no ImageNet weights of this network exist in PyTorch form; pass the path of your own
    # pre-trained backbone (a detkit checkpoint or state dict). norm=True is darknet's cfg (batch-norm
    # after every conv), far easier to train from scratch, but not the paper.
    backbone=dict(type="darknet_yolov1", depth=20, norm=False, pretrained=None),
    head=dict(
        type="yolov1",
        grid_size=7,
        num_boxes=2,
        mode="fc",
        num_convs=4,
        conv_channels=1024,
        conv_strides=[1, 2, 1, 1],
        norm=False,
        hidden_dim=4096,
        dropout=0.5,
        activation="linear",
        negative_slope=0.1,
    ),
    loss=dict(type="yolov1_loss", lambda_coord=5.0, lambda_noobj=0.5, lambda_obj=1.0, lambda_cls=1.0,
              rescore=True),
    # The paper gives no thresholds; a low score threshold keeps the detections mAP still credits.
    postprocessor=dict(type="batched_nms", iou_threshold=0.5, score_threshold=0.01, max_per_image=100),
)
