# YOLOv1 (Redmon et al., 2016) on a ResNet-18 trunk instead of the paper's 20-layer darknet.
# The head has the paper's shape, lighter: 3x3 convs -> SxS grid -> FC 4096 -> dropout 0.5 -> FC
# S*S*(5B+C) (S=7, B=2: 7x7x30 for the 20 VOC classes), with two 256-channel convs, batch-norm and a
# sigmoid/softmax output (the paper's exact head: _base_/models/yolov1_darknet.py). num_classes is not stated here: it follows the data's
# class list. Per-cell layout and the output activation are documented in detkit/models/heads/yolov1.py.
model = dict(
    type="yolov1",
    # pretrained: "imagenet" (torchvision's ImageNet weights, fetched once into the torch hub cache)
    # or the path of a local weights file; None trains from scratch. The paper pretrains its trunk
    # on ImageNet: set it for real training.
    backbone=dict(type="resnet18", pretrained=None),
    head=dict(
        type="yolov1",
        grid_size=7,
        num_boxes=2,
        mode="fc",  # "conv" = the lighter convolutional head
        num_convs=2,
        conv_channels=256,  # the paper's 1024 would make the first FC layer 205M weights
        hidden_dim=4096,
        dropout=0.5,
        activation="sigmoid",  # "linear" = the paper's linear last layer
    ),
    loss=dict(type="yolov1_loss", lambda_coord=5.0, lambda_noobj=0.5, lambda_obj=1.0, lambda_cls=1.0),
    # A low score threshold keeps the low-confidence detections that mAP still credits.
    postprocessor=dict(type="batched_nms", iou_threshold=0.5, score_threshold=0.01, max_per_image=100),
)
