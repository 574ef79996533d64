# VLMo-style staged pretraining (arXiv 2111.02358; unilm/vlmo) on the same backbone and data as
# configs/pretrain/mdm.py, so that the two recipes are compared on equal terms. The stage files set
# the stream, the trainable parameters and the stage's hyper-parameters.
task = "pretrain_vlmo"
model = "beit3_giant_patch14_224"
model_overrides = dict(init="beit", drop_path_rate=0.1, num_visual_tokens=8192, layout="paper")  # as mdm.py
data = dict(
    root="data/pretrain",
    images="imagenet21k/train",
    texts=["text/wikipedia.txt", "text/bookcorpus.txt", "text/openwebtext.jsonl", "text/ccnews.jsonl", "text/stories.jsonl"],
    pairs="pairs/*.tar",
    tokenizer="beit3.spm",
    visual_tokenizer=dict(type="vqkd", checkpoint="vqkd_encoder_base_decoder_3x768x12_clip-d5036aa7.pth"),
    batch_size=16,
    max_text_len=128,
    max_pair_text_len=64,
    text_mask_prob=0.15,
    pair_mask_prob=0.15,  # VLMo's MLM on pairs masks 15%
    image_mask_ratio=0.4,
)
betas = (0.9, 0.98)
eps = 1e-6
clip_grad = 3.0
precision = "bf16"
grad_checkpointing = True
ckpt_interval = 5_000
log_interval = 100
experiment = "beit3-pretrain"
profile = "paper"
