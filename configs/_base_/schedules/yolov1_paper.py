# The YOLOv1 paper's schedule shape (135 epochs, batch 64, momentum 0.9, decay 5e-4): the learning
# rate rises from 1e-3 to 1e-2 over the first epochs, stays for 75 epochs, then 1e-3 for 30 and 1e-4 for 30.
_base_ = "sgd_cosine.py"
train = dict(
    epochs=135,
    batch_size=64,
    optimizer=dict(type="sgd", lr=1e-2, momentum=0.9, weight_decay=5e-4),
    scheduler=dict(_delete_=True, type="yolov1", warmup_epochs=5, warmup_start_factor=0.1,
                   milestones=[80, 110], gamma=0.1),
)
