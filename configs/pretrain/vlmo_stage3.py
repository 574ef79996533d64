# VLMo stage 3: image-text pretraining of everything with ITC (gathered across ranks), ITM with hard
# negatives from the ITC similarities, and MLM; VL-FFN in the top layers (task_mlm_itm_itc_*).
_base_ = ["_base_/vlmo.py"]
trainable = "stage3"
forward_kwargs = dict(stage=3)
data = dict(stage=3)
max_steps = 200_000
warmup_steps = 2_500
lr = 2e-4
weight_decay = 0.01
