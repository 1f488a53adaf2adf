# The course's LeNet with batch normalisation on Fashion-MNIST (d2l.ai, "Batch Normalization", the
# BNLeNet): 28x28 grey images; the convolutional encoder is the backbone lenet5_bn_d2l (16x4x4 map) and
# the book's three dense layers are the head: flatten (pool_size=4 keeps the 4x4 map as it is), 120 ->
# BatchNorm -> sigmoid, 84 -> BatchNorm -> sigmoid, 10. The book's recipe: plain SGD at lr 0.1, batch
# 128, 10 epochs.
# Data: the four IDX files (gz or not) of Fashion-MNIST in data/fashion-mnist/ (or torchvision's
# data/FashionMNIST/raw/ layout); nothing is downloaded.
#   detkit classify train configs/classify_fashion_mnist_lenet.py
# Differences from the book: its images are scaled to 0..1 and not normalised, here (x - 0.5) / 0.5
# (the backbone's pixel statistics); PyTorch's default initialisation. The classic LeNet-5 is
# backbone=dict(type="lenet5", in_channels=1) with head hidden_dims=[84], activation="tanh".
_base_ = ["_base_/schedules/sgd_cosine.py"]

model = dict(
    type="image_classifier",
    backbone=dict(type="lenet5_bn_d2l", in_channels=1),
    head=dict(type="cls_head", pool_size=4, hidden_dims=[120, 84], norm=True, activation="sigmoid"),
    loss=dict(type="cross_entropy"),
)
data = dict(
    classes=None,  # Fashion-MNIST's ten: T-shirt/top, Trouser, ..., Ankle boot
    train=dict(type="fashion_mnist", root="data/fashion-mnist", split="train"),
    val=dict(type="fashion_mnist", root="${data.train.root}", split="test"),
)
train = dict(
    epochs=10, batch_size=128, num_workers=2,
    optimizer=dict(_delete_=True, type="sgd", lr=0.1, momentum=0.0, weight_decay=0.0),
    scheduler=dict(_delete_=True, type="constant"), grad_clip=None, eval_interval=1, log_interval=50,
)
eval = dict(metric="accuracy", save_best="top1", batch_size=512)
