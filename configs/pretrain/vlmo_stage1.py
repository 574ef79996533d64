# VLMo stage 1: image-only masked image modeling trains the vision embedding, attention and V-FFN
# (BEiT pretraining; VLMo itself starts from a BEiT checkpoint).
_base_ = ["_base_/vlmo.py"]
trainable = "stage1"
forward_kwargs = dict(stage=1)
data = dict(stage=1)
max_steps = 200_000
warmup_steps = 10_000
lr = 1.5e-3
weight_decay = 0.05
