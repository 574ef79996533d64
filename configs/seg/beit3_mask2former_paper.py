# Table 8's recipe as far as it runs here: BEiT-3 giant + Mask2Former on ADE20K at 896^2 with Table 15's
# hyperparameters; Feature2Pyramid replaces the paper's ViT-Adapter. See _base_/paper_giant_ade.py.
_base_ = [
    './_base_/beit3_mask2former.py',
    './_base_/paper_giant_ade.py',
]

model = dict(
    data_preprocessor={{_base_.giant_data_preprocessor}},
    backbone={{_base_.giant_backbone}},
    neck=dict(embed_dim=1408),
    decode_head=dict(in_channels=[1408, 1408, 1408, 1408]),
    test_cfg=dict(mode='slide', crop_size=(896, 896), stride=(597, 597)))
