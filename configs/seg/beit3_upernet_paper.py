# Table 15's ADE20K hyperparameters with mmseg's UperNet head (the BEiT/BEiT-2 comparison point) on the
# giant; the paper's head is Mask2Former (beit3_mask2former_paper.py). See _base_/paper_giant_ade.py.
_base_ = [
    './_base_/beit3_upernet.py',
    './_base_/paper_giant_ade.py',
]

model = dict(
    data_preprocessor={{_base_.giant_data_preprocessor}},
    backbone={{_base_.giant_backbone}},
    neck=dict(embed_dim=1408),
    decode_head=dict(in_channels=[1408, 1408, 1408, 1408], channels=1024),
    auxiliary_head=dict(in_channels=1408),
    test_cfg=dict(mode='slide', crop_size=(896, 896), stride=(597, 597)))
