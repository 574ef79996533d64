# CPU-sized Mask2Former + Feature2Pyramid on the benchmark world's ADE20K-style set: the tiny BEiT-3,
# 128^2 crops, a 64-wide head (pixel decoder with 2 deformable-attention layers over 3 levels, 3
# decoder layers, 20 queries), 3136 sampled points per mask. Runs on CPU: mmcv's
# MultiScaleDeformableAttention falls back to its pure-PyTorch path off CUDA.
_base_ = [
    './_base_/beit3_mask2former.py',
    './_base_/world_ade20k.py',
    './_base_/schedule_mini.py',
]

crop_size = (128, 128)
num_classes = 6
head_channels = 64
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
    neck=dict(embed_dim=192, norm_cfg=dict(type='BN', requires_grad=True)),
    decode_head=dict(
        in_channels=[192, 192, 192, 192],
        feat_channels=head_channels,
        out_channels=head_channels,
        num_classes=num_classes,
        num_queries=20,
        pixel_decoder=dict(
            norm_cfg=dict(type='GN', num_groups=8),
            encoder=dict(
                num_layers=2,
                layer_cfg=dict(
                    self_attn_cfg=dict(embed_dims=head_channels, num_heads=4),
                    ffn_cfg=dict(embed_dims=head_channels, feedforward_channels=256))),
            positional_encoding=dict(num_feats=head_channels // 2)),
        positional_encoding=dict(num_feats=head_channels // 2),
        transformer_decoder=dict(
            num_layers=3,
            layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=head_channels, num_heads=4),
                cross_attn_cfg=dict(embed_dims=head_channels, num_heads=4),
                ffn_cfg=dict(embed_dims=head_channels, feedforward_channels=256))),
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1]),
        train_cfg=dict(num_points=3136)),
    test_cfg=dict(mode='whole'))
