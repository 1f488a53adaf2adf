# YOLOv1 as in the paper (Redmon et al., "You Only Look Once: Unified, Real-Time Object Detection",
# CVPR 2016), on Pascal VOC 2007+2012 trainval, evaluated on VOC2007 test (the paper's 63.4 mAP).
# What follows the paper: the network of Figure 3 (24 convs with 1x1 reductions, leaky ReLU 0.1,
# FC 4096, dropout 0.5, linear 7x7x30 output, no batch-norm), 448x448 input, the sum-squared loss with
# lambda_coord=5, lambda_noobj=0.5 and square-rooted sizes, batch 64, momentum 0.9, decay 5e-4,
# 135 epochs (75 at 1e-2 after a warm-up from 1e-3, 30 at 1e-3, 30 at 1e-4), random scaling and
# translation of up to 20% and exposure / saturation changes of up to 1.5x in HSV (transforms preset
# "yolov1"), no gradient clipping.
#
# Every remaining difference from the paper:
# 1. No ImageNet pre-training. The paper trains the first 20 layers (+ average pooling + FC) on
#    ImageNet-1k at 224x224 for about a week (88% top-5) before detection; no such weights exist in
#    PyTorch form, so the backbone starts from random weights unless model.backbone.pretrained points
#    at a pre-trained backbone of your own. Expect far less than 63.4 mAP from scratch.
# 2. Warm-up length: the paper says "the first epochs"; here 5 epochs, linear, counted in the 75 epochs
#    at 1e-2 (so that 75 + 30 + 30 is the paper's 135).
# 3. Horizontal flips (p=0.5) are added to the augmentation, as darknet does; the paper names only
#    scaling, translation, exposure and saturation. Scaling keeps the aspect ratio (darknet's jitter
#    crops each side independently).
# 4. Weight decay applies to weights, not to biases (there is no batch-norm): darknet's rule, which
#    the paper's "decay of 0.0005" does not spell out.
# 5. Initialisation (unspecified in the paper): darknet's N(0, 2/fan_in) for the backbone convs,
#    Kaiming for the head's convs, N(0, 0.01) and zero bias for the last FC layer.
# 6. Difficult objects are left out of training (as darknet's VOC labels); the paper does not say.
# 7. Detection: NMS at IoU 0.5, scores >= 0.01, at most 100 per image; the paper gives no thresholds.
#    Evaluation: the VOC07 11-point AP at IoU 0.5 ("voc07"), the metric of the paper's VOC 2007 table.
# 8. Inputs are RGB in 0..1 without mean subtraction (darknet's; the paper does not say).
_base_ = ["_base_/models/yolov1_darknet.py", "_base_/datasets/voc.py", "_base_/schedules/yolov1_paper.py"]
