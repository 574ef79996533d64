# VLMo stage 2: text-only masked language modeling with attention and V-FFN frozen; trains the L-FFN,
# text embeddings and the MLM head (vlmo/run.py, task_textmlm_base: lr 2e-4, 200k steps, 2.5k warmup).
_base_ = ["_base_/vlmo.py"]
trainable = "stage2"
forward_kwargs = dict(stage=2)
data = dict(stage=2)
max_steps = 200_000
warmup_steps = 2_500
lr = 2e-4
weight_decay = 0.01
