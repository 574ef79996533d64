# Table 7's recipe: BEiT-3 giant, ViTDet-style backbone, simple pyramid, Cascade Mask R-CNN, soft-NMS,
# COCO at 1280^2 with Table 16's hyperparameters (what differs from the paper: _base_/paper_giant_vitdet.py).
_base_ = [
    './_base_/beit3_vitdet_cascade-mask-rcnn.py',
    './_base_/paper_giant_vitdet.py',
]

model = dict(
    data_preprocessor=dict(
        pad_size_divisor=32,
        batch_augments=[dict(type='BatchFixedSizePad', size={{_base_.image_size}}, pad_mask=True)]),
    backbone={{_base_.giant_backbone}},
    neck={{_base_.giant_neck}},
    test_cfg=dict(rcnn=dict(nms=dict(type='soft_nms', iou_threshold=0.5))))
