# Swap a detector's backbone for ImageNet-pretrained EfficientNet-Lite0 (detkit-efficientnet-lite).
# Use it as the last _base_ of your config, after the recipe it modifies:
#     from detkit_efficientnet_lite import config_path
#     _base_ = ["yolov1_raccoon.py", config_path("backbone_efficientnet_lite0.py")]
# It sets the keys detkit's backbones share (type, pretrained, frozen_stages, norm_eval), so it replaces a
# recipe backbone; _delete_ drops any other key the previous backbone had (out_indices=..., etc.).
model = dict(
    backbone=dict(
        _delete_=True,
        type="efficientnet_lite0",
        pretrained=True,
        frozen_stages=0,   # keep the stem as trained on ImageNet
        norm_eval=True,    # detection batches are too small for good BatchNorm statistics
    ),
)
