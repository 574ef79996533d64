# BEiT-3 vision backbone + ViTDet simple feature pyramid + Mask R-CNN (mmdet 3.3.0).
# Adapted from mmdet's projects/ViTDet/configs/vitdet_mask-rcnn_vit-b-mae_lsj-100e.py (not in the
# wheel): a plain ViT at stride 16 with window attention in most blocks and global attention in a few,
# SimpleFPN, 2-conv RPN, 4conv1fc box head and mask head with LayerNorm (LN2d). Base-size defaults
# (ViTDet-B); the leaf configs set the size.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']

custom_imports = dict(imports=['backbones.mm'], allow_failed_imports=False)

backbone_norm_cfg = dict(type='LN2d', requires_grad=True)
model = dict(
    backbone=dict(
        _delete_=True,
        type='BEiT3ViT',
        layout='released',
        img_size=1024,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        out_indices=(11, ),
        drop_path_rate=0.1,
        window_size=14,
        window_block_indexes=(0, 1, 3, 4, 6, 7, 9, 10),  # blocks 2, 5, 8, 11 attend globally
        use_rel_pos=True,
        with_cls_token=False),  # windows partition the patch grid; ViTDet drops the cls token
    neck=dict(
        _delete_=True,
        type='SimpleFPN',
        backbone_channel=768,
        in_channels=[192, 384, 768, 768],
        out_channels=256,
        num_outs=5,
        norm_cfg=backbone_norm_cfg),
    rpn_head=dict(num_convs=2),
    roi_head=dict(
        bbox_head=dict(
            type='Shared4Conv1FCBBoxHead',
            conv_out_channels=256,
            norm_cfg=backbone_norm_cfg),
        mask_head=dict(norm_cfg=backbone_norm_cfg)))
