# LeNet-5 on Fashion-MNIST, the course's first CNN (d2l.ai, "Convolutional Neural Networks (LeNet)"):
# 28x28 grey images, the LeNet trunk with its fully connected classifier, 10 epochs of batch 256.
# Data: the four IDX files (gz or not) of Fashion-MNIST in data/fashion-mnist/ (or torchvision's
# data/FashionMNIST/raw/ layout); nothing is downloaded.
#   detkit classify train configs/classify_fashion_mnist_lenet.py
# Differences from the book: detkit's lenet5 pads its convs (the map stays 7x7 at C5 and is averaged
# before F6; the book flattens a 16x5x5 map into a 120-unit layer), tanh instead of sigmoid and SGD with
# momentum at lr 0.05 (the book runs plain SGD at lr 0.9 for its sigmoid net).
_base_ = ["_base_/schedules/sgd_cosine.py"]

model = dict(
    type="image_classifier",
    backbone=dict(type="lenet5", in_channels=1, activation="tanh", pool="avg"),
    head=dict(type="cls_head", pool_size=1, hidden_dims=[84], activation="tanh"),  # F6 (84) -> output
    loss=dict(type="cross_entropy"),
)
data = dict(
    classes=None,  # Fashion-MNIST's ten: T-shirt/top, Trouser, ..., Ankle boot
    train=dict(type="fashion_mnist", root="data/fashion-mnist", split="train"),
    val=dict(type="fashion_mnist", root="${data.train.root}", split="test"),
)
train = dict(
    epochs=10, batch_size=256, num_workers=2,
    optimizer=dict(_delete_=True, type="sgd", lr=0.05, momentum=0.9, weight_decay=0.0),
    scheduler=dict(_delete_=True, type="constant"), grad_clip=None, eval_interval=1, log_interval=50,
)
eval = dict(metric="accuracy", save_best="top1", batch_size=512)
