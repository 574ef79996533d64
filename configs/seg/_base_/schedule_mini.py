# A short iteration-based schedule for CPU runs on the benchmark world (the paper's shape, Table 15:
# linear warmup, then polynomial decay). `harness.dense` rescales begin/end and the intervals when a
# profile asks for another number of iterations.
_base_ = ['mmseg::_base_/default_runtime.py']

max_iters = 40
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

optim_wrapper = dict(
    type='OptimWrapper',
    constructor='BEiT3LayerDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.95),
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=4),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=4, end=max_iters),
]

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
