# The course's R-CNN as in the paper: AlexNet (torchvision's), selective search (fast mode, ~2000
# boxes), warped 224 px crops with 16 px of context, pool5 -> fc6 (4096) -> fc7 (4096), fine-tuned on
# VOC 07+12 trainval, per-class SVMs on fc7 with hard-negative mining, ridge box regression on pool5,
# NMS 0.3. Evaluated on VOC2007 test.
#   detkit train configs/rcnn_classic_voc_alexnet.py --set model.backbone.pretrained=/path/alexnet-owt-7be5be79.pth
# The paper starts from ImageNet weights: give torchvision's AlexNet file (nothing is downloaded).
# Stage 2 caches fc7 (float16) for ~2000 regions of ~16.5k images: about 270 GB of disk at 4096
# values each (the paper's pool5 cache was ~200 GB); use model.max_proposals_train or a subset to
# try it first. Selective search: plugin detkit-selective-search (precompute its cache first).
_base_ = ["rcnn_voc.py", "_base_/models/rcnn_classic.py"]

model = dict(
    backbone=dict(_delete_=True, type="alexnet", pretrained=None),
    proposals=dict(_delete_=True, type="selective_search", mode="fast", max_proposals=2000),
    head=dict(
        mode="warp",
        warp_size=224,  # torchvision's AlexNet input (the paper's Caffe net: 227)
        warp_pool="grid",
        pool_size=6,  # AlexNet's pool5 is 256 x 6 x 6 at 224 px: flattened as is (9216 values)
        context=16,
        warp_chunk=128,
        hidden_dim=4096,
        num_fc=2,
        dropout=0.5,
    ),
    num_samples=64,  # x 2 images per batch = 128 regions
    max_proposals_train=2000,
    max_proposals_test=2000,
    svm=dict(max_passes=1),  # the paper's single pass of hard-negative mining
)
# The paper: SGD at lr 0.001 (a tenth of pre-training's), momentum 0.9, 40k iterations of 128 regions.
train = dict(
    epochs=8,
    batch_size=2,
    optimizer=dict(_delete_=True, type="sgd", lr=0.001, momentum=0.9, weight_decay=5e-4, no_decay_norm_bias=True),
    scheduler=dict(_delete_=True, type="step", warmup_epochs=0.1, warmup_start_factor=0.1, milestones=[6], gamma=0.1),
    eval_interval=8,
)
