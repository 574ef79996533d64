# Table 16's hyperparameters with ViTDet's Mask R-CNN head instead of the paper's Cascade Mask R-CNN
# (ViTDet's own comparison point); what differs from the paper: _base_/paper_giant_vitdet.py.
_base_ = [
    './_base_/beit3_vitdet_mask-rcnn.py',
    './_base_/paper_giant_vitdet.py',
]

model = dict(
    data_preprocessor=dict(
        pad_size_divisor=32,
        batch_augments=[dict(type='BatchFixedSizePad', size={{_base_.image_size}}, pad_mask=True)]),
    backbone={{_base_.giant_backbone}},
    neck={{_base_.giant_neck}})
