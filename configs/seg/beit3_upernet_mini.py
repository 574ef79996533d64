# CPU-sized UperNet + Feature2Pyramid on the benchmark world's ADE20K-style set (harness `mini`/`smoke`
# profiles): the tiny BEiT-3 (192 wide, 4 blocks, all global, cls token kept), 128^2 crops, 64-channel
# heads, BN instead of SyncBN, whole-image inference. The architecture follows
# configs/seg/_base_/beit3_upernet.py; `harness.dense` swaps in other backbone sizes.
_base_ = [
    './_base_/beit3_upernet.py',
    './_base_/world_ade20k.py',
    './_base_/schedule_mini.py',
]

crop_size = (128, 128)
num_classes = 6
norm_cfg = dict(type='BN', requires_grad=True)
data_preprocessor = dict(size=crop_size, test_cfg=dict(size_divisor=16))
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        img_size=128,
        embed_dim=192,
        depth=4,
        num_heads=3,
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1),
    neck=dict(embed_dim=192, norm_cfg=norm_cfg),
    decode_head=dict(
        in_channels=[192, 192, 192, 192],
        channels=64,
        num_classes=num_classes,
        norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=192, channels=32, num_classes=num_classes, norm_cfg=norm_cfg),
    test_cfg=dict(mode='whole'))
