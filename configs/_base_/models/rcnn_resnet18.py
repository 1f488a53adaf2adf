# R-CNN-family detector (Girshick et al. 2014 / Fast R-CNN 2015) on a ResNet-18 trunk cut after
# layer3 (stride 16, 256 channels: the "C4" feature map of Faster R-CNN's ResNet variant, at the
# stride of Fast R-CNN's VGG16 conv5_3). num_classes is not stated: it follows the data's class list.
# Components: detkit/models/detectors/rcnn.py, heads/region_classifier.py, losses/region_loss.py,
# models/sampler.py, models/proposals/.
model = dict(
    type="rcnn",
    # pretrained: "imagenet" (torchvision's ImageNet weights, fetched once into the torch hub cache)
    # or the path of a local weights file; None trains from scratch. R-CNN fine-tunes an ImageNet
    # network: set it for real training.
    backbone=dict(type="resnet18", pretrained=None, out_indices=(2,)),
    # sliding_window needs nothing per image; selective_search (plugin detkit-selective-search) and
    # precomputed (proposals read from a file) are the papers' choices.
    proposals=dict(type="sliding_window", scales=(0.12, 0.18, 0.27, 0.4, 0.6, 0.9),
                   aspect_ratios=(0.5, 1.0, 2.0), step=0.25, max_proposals=2000),
    head=dict(
        type="region_classifier",
        mode="roi",  # "warp": crop + warp every proposal and run the backbone on it (original R-CNN)
        pool_size=7,  # roi mode: roi_align to 7x7 (Fast R-CNN)
        sampling_ratio=2,
        warp_size=224,  # warp mode: crop side (R-CNN: 227) ...
        context=16,  # ... with 16 px of context around the box
        warp_chunk=128,
        hidden_dim=1024,
        num_fc=2,
        dropout=0.0,
        box_weights=(10.0, 10.0, 5.0, 5.0),
    ),
    loss=dict(type="region_loss", beta=1.0, cls_weight=1.0, box_weight=1.0),
    # R-CNN's NMS threshold (0.3); a low score threshold keeps what mAP still credits.
    postprocessor=dict(type="batched_nms", iou_threshold=0.3, score_threshold=0.01, max_per_image=100),
    # Fast R-CNN's minibatch: 128 regions per image, 25% foreground (IoU >= 0.5), background IoU in
    # [0.1, 0.5), topped up from [0, 0.1) when an image has too few (bg_fallback).
    num_samples=128,
    fg_fraction=0.25,
    fg_iou=0.5,
    bg_iou=(0.1, 0.5),
    bg_fallback=True,
    max_proposals_train=2000,
    max_proposals_test=1000,
    min_proposal_size=2.0,
)
