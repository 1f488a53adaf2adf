# The YOLOv1 paper's schedule (section 2.2): batch 64, momentum 0.9, decay 5e-4; "for the first
# epochs we slowly raise the learning rate from 1e-3 to 1e-2 ... We continue training with 1e-2 for
# 75 epochs, then 1e-3 for 30 epochs, and finally 1e-4 for 30 epochs": 75 + 30 + 30 = the paper's
# 135 epochs, so the warm-up (5 epochs, linear, 1e-3 -> 1e-2; the paper gives no length) is counted
# in the 75 epochs at 1e-2. Milestones [75, 105]: 75 epochs at 1e-2, 30 at 1e-3, 30 at 1e-4.
#
# Set here rather than inherited from sgd_cosine.py, so nothing the paper did not do slips in:
# * grad_clip=None: neither the paper nor darknet clips gradients (sgd_cosine.py clips at 10).
# * no_decay_norm_bias=True: the paper's "decay of 0.0005" as darknet, which trained its models,
#   applies it: to conv and FC weights only, never to biases or batch-norm scales (darknet's
#   update_convolutional_layer / update_connected_layer decay l.weights alone).
_base_ = "sgd_cosine.py"
train = dict(
    epochs=135,
    batch_size=64,
    optimizer=dict(type="sgd", lr=1e-2, momentum=0.9, weight_decay=5e-4, no_decay_norm_bias=True),
    scheduler=dict(_delete_=True, type="yolov1", warmup_epochs=5, warmup_start_factor=0.1,
                   milestones=[75, 105], gamma=0.1),
    grad_clip=None,
)
