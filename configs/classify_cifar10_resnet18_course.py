# The course's ResNet-18 on CIFAR-10: d2l.resnet18 (resnet18_d2l, its small-image stem: conv 3x3/1 and
# no max-pool, so a 32x32 image reaches layer4 at 4x4; the book's Kaggle CIFAR-10 chapter uses this net)
# with global average pooling + fc. Recipe: the common CIFAR one rather than the book's (pad-4 random
# crops and flips, SGD momentum 0.9, lr 0.1, weight decay 5e-4, cosine over 30 epochs).
# Data: the python version of CIFAR-10 (data_batch_1..5, test_batch, batches.meta) in
# data/cifar-10-batches-py/ (or its parent folder); nothing is downloaded.
#   detkit classify train configs/classify_cifar10_resnet18_course.py
_base_ = ["_base_/schedules/sgd_cosine.py"]

model = dict(
    type="image_classifier",
    backbone=dict(type="resnet18_d2l", stem="small"),
    head=dict(type="cls_head"),  # global average pool + fc, as ResNet's own classifier
    loss=dict(type="cross_entropy"),
)
data = dict(
    classes=None,  # CIFAR-10's ten, from batches.meta
    train=dict(type="cifar10", root="data/cifar-10-batches-py", split="train",
               transforms=dict(size=32, augment=[
                   dict(type="PadIfNeeded", min_height=40, min_width=40, border_mode=0, fill=0),
                   dict(type="RandomCrop", height=32, width=32),
                   dict(type="HorizontalFlip", p=0.5),
               ])),
    val=dict(type="cifar10", root="${data.train.root}", split="test"),
)
train = dict(
    epochs=30, batch_size=128, num_workers=2,
    optimizer=dict(_delete_=True, type="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, no_decay_norm_bias=True),
    scheduler=dict(type="cosine", warmup_epochs=1, warmup_start_factor=0.1, min_lr_factor=0.0),
    grad_clip=None, eval_interval=1, log_interval=50,
)
eval = dict(metric="accuracy", save_best="top1", batch_size=512)
