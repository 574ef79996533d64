# BEiT-3 vision backbone + mmseg's Feature2Pyramid + UperNet (+ FCN auxiliary head), as mmseg's
# _base_/models/upernet_beit.py: four stride-16 maps from blocks out_indices, rescaled x4, x2, x1, x0.5.
# Base-size defaults (out_indices 3, 5, 7, 11 as mmseg's BEiT-B); the leaf configs set the size.
_base_ = ['mmseg::_base_/models/upernet_beit.py']

custom_imports = dict(imports=['backbones.mm'], allow_failed_imports=False)

norm_cfg = dict(type='SyncBN', requires_grad=True)
model = dict(
    backbone=dict(
        _delete_=True,
        type='BEiT3ViT',
        layout='released',
        img_size=512,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        out_indices=(3, 5, 7, 11),
        drop_path_rate=0.1,
        with_cls_token=True),  # global attention everywhere: the cls token stays, as in pretraining
    neck=dict(embed_dim=768, rescales=[4, 2, 1, 0.5], norm_cfg=norm_cfg),
    decode_head=dict(in_channels=[768, 768, 768, 768], in_index=[0, 1, 2, 3], norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=768, in_index=2, norm_cfg=norm_cfg))
