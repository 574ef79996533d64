# A short iteration-based schedule for CPU runs on the benchmark world (ViTDet's shape: linear warmup,
# then x0.1 steps at ~89% and ~96% of training). `harness.dense` rescales begin/end/milestones and the
# val/checkpoint intervals when a profile asks for another number of iterations.
_base_ = ['mmdet::_base_/default_runtime.py']

max_iters = 40
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# Plain OptimWrapper: AmpOptimWrapper asserts a GPU.
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='BEiT3LayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9),
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.1))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=4),
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters, milestones=[36, 39], gamma=0.1),
]

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(type='LogProcessor', window_size=10, by_epoch=False)
randomness = dict(seed=0)
auto_scale_lr = dict(enable=False, base_batch_size=64)
