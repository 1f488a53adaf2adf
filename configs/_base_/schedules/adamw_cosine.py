# AdamW with a linear warm-up and cosine decay: converges in few epochs, for short CPU schedules.
_base_ = "sgd_cosine.py"
train = dict(
    epochs=30,
    batch_size=16,
    optimizer=dict(_delete_=True, type="adamw", lr=1e-3, weight_decay=5e-4, no_decay_norm_bias=True),
    scheduler=dict(type="cosine", warmup_epochs=1, warmup_start_factor=0.1, min_lr_factor=0.05),
    eval_interval=5,
)
