# The course's R-CNN (Girshick et al. 2014) on the raccoon photos: the same backbone, selective-search
# proposals and input size as configs/rcnn_raccoon_lite0.py (today's softmax rcnn), then the paper's
# stages. One command runs them all, each resumable with --resume:
#   detkit train configs/rcnn_classic_raccoon.py
# 1 fine-tuning on warped proposals (classification only, 32 foreground + 96 background per 128),
# 2 fc7 / pool5 features of every proposal of every training image (cached under the work dir),
# 3 one linear SVM per class with hard-negative mining, 4 ridge box regression, then the evaluation of
# softmax vs SVM vs SVM + box regression (classic_metrics.json). The result, last.pth, is what
# `detkit eval` / `detkit infer` take. On a CPU the warped crops are the cost (one backbone pass per
# proposal); rcnn_classic_raccoon_shared.py pools them from one feature map per image instead.
# The detector and what differs from the paper: detkit/models/detectors/rcnn_classic.py, docs/rcnn_classic.md.
_base_ = ["rcnn_raccoon_lite0.py", "_base_/models/rcnn_classic.py"]

model = dict(
    head=dict(
        mode="warp",
        # The paper warps to the network's input, 227 px for AlexNet. The Lite0 trunk takes any size;
        # 112 px keeps the per-crop cost at a quarter of 224 px, and its 7 x 7 stride-16 map is the
        # pool5 grid ("grid": flattened, 112 x 7 x 7 = 5488 values -> fc6 -> fc7).
        warp_size=112,
        warp_pool="grid",
        pool_size=7,
        context=8,  # the paper's 16 px of context at 227, scaled to 112
        warp_chunk=64,
        hidden_dim=1024,
        num_fc=2,
        dropout=0.5,  # fc6 / fc7 dropout, as the paper's network
    ),
    num_samples=32,  # x 4 images per batch = 128 regions
)
train = dict(epochs=12, eval_interval=12)
