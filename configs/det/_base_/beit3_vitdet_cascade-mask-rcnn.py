# BEiT-3 vision backbone + ViTDet simple feature pyramid + Cascade Mask R-CNN: the paper's detection
# head (Section 3.2: "we follow ViTDet ... Cascade Mask R-CNN"). Three box stages with 4conv1fc heads
# and LayerNorm, as ViTDet's cascade models; base-size defaults, the leaf configs set the size.
_base_ = ['mmdet::_base_/models/cascade-mask-rcnn_r50_fpn.py']

custom_imports = dict(imports=['backbones.mm'], allow_failed_imports=False)

backbone_norm_cfg = dict(type='LN2d', requires_grad=True)
num_classes = 80


def _stage(stds):
    return dict(
        type='Shared4Conv1FCBBoxHead',
        in_channels=256,
        conv_out_channels=256,
        fc_out_channels=1024,
        roi_feat_size=7,
        num_classes=num_classes,
        norm_cfg=backbone_norm_cfg,
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[0., 0., 0., 0.],
            target_stds=stds),
        reg_class_agnostic=True,
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='SmoothL1Loss', beta=1.0, loss_weight=1.0))


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
        window_block_indexes=(0, 1, 3, 4, 6, 7, 9, 10),
        use_rel_pos=True,
        with_cls_token=False),
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
        bbox_head=[
            _stage([0.1, 0.1, 0.2, 0.2]),
            _stage([0.05, 0.05, 0.1, 0.1]),
            _stage([0.033, 0.033, 0.067, 0.067]),
        ],
        mask_head=dict(norm_cfg=backbone_norm_cfg, num_classes=num_classes)))
