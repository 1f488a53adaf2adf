# R-CNN-family detector on Pascal VOC 07+12 trainval, evaluated on VOC2007 test: Fast R-CNN's
# minibatch sampling, loss and NMS 0.3, ResNet-18 C4 trunk, 448x448 input.
#
# Proposals: selective search, as in the papers (plugin: pip install -e plugins/detkit-selective-search).
# Its boxes are cached on disk per image content, so the training pipeline keeps only the horizontal
# flip (Fast R-CNN's one augmentation): each image exists in two versions, both cached after they
# are first seen. Precompute the cache before training to avoid the first-epoch cost
# (detkit_selective_search.precompute). Without the plugin, use the base's sliding windows:
#   --set model.proposals.type=sliding_window  (and drop the selective-search keys below), or
#   proposals from a file: model.proposals=dict(type="precomputed", path="voc_ss.npz").
_base_ = ["_base_/models/rcnn_resnet18.py", "_base_/datasets/voc.py", "_base_/schedules/sgd_cosine.py"]

model = dict(
    proposals=dict(_delete_=True, type="selective_search", mode="fast", max_proposals=2000),
    head=dict(mode="roi"),
)

data = dict(
    train=dict(transforms=dict(_delete_=True, size=448, augment=[dict(type="HorizontalFlip", p=0.5)])),
    val=dict(transforms=dict(size=448)),
)

# Fast R-CNN: SGD, lr 1e-3 for 30k of 40k iterations at 2 images per batch (with ImageNet weights).
train = dict(
    epochs=16,
    batch_size=4,
    optimizer=dict(type="sgd", lr=0.005, momentum=0.9, weight_decay=1e-4, no_decay_norm_bias=True),
    scheduler=dict(_delete_=True, type="step", warmup_epochs=0.5, warmup_start_factor=0.1,
                   milestones=[12], gamma=0.1),
)
eval = dict(metric=["voc07", "voc", "coco"], batch_size=4, save_best="voc07_ap50")
