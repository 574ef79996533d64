# BEiT-3 masked data modeling: the paper's recipe (arXiv 2208.10442 §2.2, Table 11).
# One objective on images, texts and image-text pairs drawn at every step; profiles (harness/profiles.py)
# scale it down for the CPU. Launch on real data with:
#   torchrun --nproc_per_node 8 -m harness.train configs/pretrain/mdm.py data.root=... (see README)
task = "pretrain_mdm"
model = "beit3_giant_patch14_224"
# The paper's layout (shared attention, VL-FFN in the top layers), as in VLMo's configs: every recipe and
# the no-pretraining baseline build this backbone; `harness run --ablation layout=released` switches all.
model_overrides = dict(init="beit", drop_path_rate=0.1, num_visual_tokens=8192, layout="paper")
data = dict(
    root="data/pretrain",
    images="imagenet21k/train",  # IN-21K, 14M images
    # English Wikipedia, BookCorpus, OpenWebText, CC-News, Stories (160GB), one document per line / {"text"}
    texts=["text/wikipedia.txt", "text/bookcorpus.txt", "text/openwebtext.jsonl", "text/ccnews.jsonl", "text/stories.jsonl"],
    pairs="pairs/*.tar",  # CC12M, CC3M, SBU, COCO, VG as WebDataset shards: 21M pairs
    tokenizer="beit3.spm",  # 64k SentencePiece
    visual_tokenizer=dict(type="vqkd", checkpoint="vqkd_encoder_base_decoder_3x768x12_clip-d5036aa7.pth"),
    batch_size=16,  # per GPU and stream: x 128 GPUs = 2048 images + 2048 texts + 2048 pairs (6144)
    mixture=(1, 1, 1),
    max_text_len=128,
    max_pair_text_len=64,
    text_mask_prob=0.15,  # text-only data
    pair_mask_prob=0.5,  # text of image-text pairs
    image_mask_ratio=0.4,  # block-wise
)
max_steps = 1_000_000
warmup_steps = 10_000
lr = 1e-3
min_lr = 1e-5
betas = (0.9, 0.98)
eps = 1e-6
weight_decay = 0.05
clip_grad = 3.0
precision = "bf16"
grad_checkpointing = True
ckpt_interval = 5_000
log_interval = 100
experiment = "beit3-pretrain"
profile = "paper"
