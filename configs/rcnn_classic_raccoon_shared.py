# The classic R-CNN with SPP-net's shortcut for CPUs: every proposal's features are roi-pooled from
# one feature map per image (7 x 7 x 112 = the same 5488-value pool5 as the warped variant) instead
# of one backbone pass per warped crop. Fine-tuning, SVMs, box regression and evaluation are those of
# rcnn_classic_raccoon.py.
#   detkit train configs/rcnn_classic_raccoon_shared.py
_base_ = ["rcnn_classic_raccoon.py"]

model = dict(head=dict(mode="roi", pool_size=7, sampling_ratio=2))
