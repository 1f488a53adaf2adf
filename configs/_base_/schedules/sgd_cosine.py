# SGD with momentum, linear warm-up then cosine decay. Keys are documented in docs/training.md.
train = dict(
    epochs=24,
    batch_size=16,
    num_workers=2,
    seed=0,
    optimizer=dict(type="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, no_decay_norm_bias=True),
    scheduler=dict(type="cosine", warmup_epochs=1, warmup_start_factor=0.1, min_lr_factor=0.01),
    grad_clip=10.0,
    accumulate=1,
    amp=False,
    amp_dtype="bf16",
    channels_last=False,
    compile=False,
    sync_bn=False,
    log_interval=10,
    checkpoint_interval=1,
    keep_last=3,
    eval_interval=1,
    nan_policy="raise",
)
eval = dict(metric=["voc07", "voc", "coco"], batch_size=16, num_workers=2, save_best="voc07_ap50")
