# R-CNN (Fast R-CNN style roi mode) on the synthetic shapes data set at a small input, sized to train
# a few hundred iterations in a few minutes on a 2-core CPU (no pretrained weights needed).
#   detkit data make-shapes data/shapes --num 600 --seed 0
#   detkit train configs/rcnn_shapes.py
# The original R-CNN (crop + warp every proposal through the backbone): --set model.head.mode=warp
# (several times slower per image; tools/benchmarks/rcnn.py measures it).
_base_ = ["_base_/models/rcnn_resnet18.py", "_base_/datasets/shapes.py", "_base_/schedules/sgd_cosine.py"]

image_size = 128

model = dict(
    # ResNet-18 up to layer2: stride 8, 128 channels -> a 16x16 map at 128 px, fine enough for shapes
    # of 15..58 px; layers 3 and 4 would cost more than they help at this size.
    backbone=dict(out_indices=(1,)),
    # The shapes are about square (rotated, stretched at most 1.25x) and span 12%..45% of the image:
    # five square scales, 1470 windows, every object has a window with IoU >= 0.6 (0.85 of them >= 0.7).
    proposals=dict(scales=(0.13, 0.18, 0.25, 0.35, 0.48), aspect_ratios=(1.0,), step=0.25, max_proposals=1500),
    head=dict(pool_size=5, hidden_dim=256, warp_size=64, context=4, warp_chunk=256),
    postprocessor=dict(score_threshold=0.05),
    num_samples=64,
    max_proposals_train=1500,
    max_proposals_test=1500,
)

data = dict(
    # Sliding windows follow the input image, so augmentation is free; a flip is enough here.
    train=dict(transforms=dict(_delete_=True, size=image_size, augment=[dict(type="HorizontalFlip", p=0.5)])),
    val=dict(transforms=dict(size=image_size)),
)

train = dict(
    epochs=5,  # 60 iterations per epoch with the 480 training images of `make-shapes --num 600`
    batch_size=8,
    num_workers=2,
    optimizer=dict(_delete_=True, type="adamw", lr=1e-3, weight_decay=1e-4, no_decay_norm_bias=True),
    scheduler=dict(type="cosine", warmup_epochs=0.5, warmup_start_factor=0.1, min_lr_factor=0.05),
    eval_interval=5,
)
eval = dict(metric=["voc07", "voc", "coco"], batch_size=16, save_best="voc07_ap50")
