"""Speed of our BEiT-3 backbone against torchscale's (the official implementation), in one process.

Same config, same weights, same inputs; the two models alternate round by round so drift of the
machine hits both. Reports the training-step (forward + backward) and inference throughput of each
and their ratio, checks the outputs are identical, and relates our achieved FLOP/s to this machine's
measured fp32 GEMM rate.

    python benchmarks/bench_backbone.py                       # base 224, image+text, batch 4
    python benchmarks/bench_backbone.py --batch 8 --rounds 5 --inputs image
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import backbones


def official_model(config: backbones.BEiT3Config) -> nn.Module:
    from torchscale.architecture.config import EncoderConfig
    from torchscale.model.BEiT3 import BEiT3

    args = EncoderConfig(
        img_size=config.img_size, patch_size=config.patch_size, vocab_size=config.vocab_size, multiway=True,
        layernorm_embedding=False, normalize_output=True, no_output_layer=True, drop_path_rate=0.0,
        encoder_embed_dim=config.embed_dim, encoder_attention_heads=config.num_heads,
        encoder_ffn_embed_dim=config.ffn_dim, encoder_layers=config.depth,
    )

    class Wrapper(nn.Module):  # unilm's BEiT3Wrapper: owns the beit3. prefix
        def __init__(self):
            super().__init__()
            self.beit3 = BEiT3(args)

        def forward(self, **kwargs):
            return self.beit3(**kwargs)

    return Wrapper()


def gemm_rate(rows: int = 4096, inner: int = 768, cols: int = 3072, trials: int = 5) -> float:
    """Best-of-N fp32 GEMM rate at the FFN's shape (tokens x D @ D x 4D), in FLOP/s."""
    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    a @ b
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        best = min(best, (time.perf_counter() - start) / 3)
    return 2 * rows * inner * cols / best


def forward_flops(config: backbones.BEiT3Config, batch: int, num_image: int, num_text: int) -> float:
    """Multiply-adds x2 of one forward: patch conv, q/k/v/out, attention, FFN (elementwise ops ignored)."""
    dim, ffn, tokens = config.embed_dim, config.ffn_dim, num_image + num_text
    conv = 2 * batch * config.num_patches * 3 * config.patch_size**2 * dim if num_image else 0
    per_layer = 2 * batch * tokens * (4 * dim * dim + 2 * dim * ffn) + 2 * 2 * batch * tokens * tokens * dim
    return conv + config.depth * per_layer


def make_inputs(config, batch: int, kind: str, text_len: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    inputs = {}
    if kind in ("image", "pair"):
        inputs["visual_tokens"] = torch.randn(batch, 3, *config.image_hw, generator=gen)
    if kind in ("text", "pair"):
        inputs["textual_tokens"] = torch.randint(3, config.vocab_size, (batch, text_len), generator=gen)
        padding = torch.zeros(batch, text_len, dtype=torch.long)
        padding[: batch // 2, text_len * 3 // 4 :] = 1
        inputs["text_padding_position"] = padding
    return inputs


def time_train_step(model: nn.Module, inputs: dict) -> float:
    start = time.perf_counter()
    out = model(**inputs)["encoder_out"]
    out.float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


@torch.no_grad()
def time_inference(model: nn.Module, inputs: dict) -> float:
    start = time.perf_counter()
    model(**inputs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="beit3_base_patch16_224")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--inputs", choices=["pair", "image", "text"], default="pair")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    ours = backbones.create_model(args.model)
    config = ours.config
    official = official_model(config)
    backbones.load_checkpoint(ours, official.state_dict())
    inputs = make_inputs(config, args.batch, args.inputs, args.text_len)

    ours.eval(), official.eval()
    with torch.no_grad():
        diff = (ours(**inputs)["encoder_out"] - official(**inputs)["encoder_out"]).abs().max().item()
    ours.train(), official.train()

    peak_before = gemm_rate()
    models = {"ours": ours, "torchscale": official}
    train = {name: [] for name in models}
    infer = {name: [] for name in models}
    for name, model in models.items():  # warm-up
        time_train_step(model, inputs)
        time_inference(model, inputs)
    for _ in range(args.rounds):
        for name, model in models.items():
            train[name].append(time_train_step(model, inputs))
        for name, model in models.items():
            model.eval()
            infer[name].append(time_inference(model, inputs))
            model.train()

    gemm = max(gemm_rate(), peak_before)
    num_image = config.num_patches + 1 if "visual_tokens" in inputs else 0
    num_text = args.text_len if "textual_tokens" in inputs else 0
    flops = forward_flops(config, args.batch, num_image, num_text)
    print(f"model {args.model} | inputs {args.inputs} | batch {args.batch} | tokens {num_image + num_text} | "
          f"threads {torch.get_num_threads()} | torch {torch.__version__}")
    print(f"max |ours - torchscale| on the same weights and inputs: {diff:.2e}")
    print(f"fp32 GEMM rate of this machine: {gemm / 1e9:.1f} GFLOP/s")
    print(f"{'':22s}{'ours':>12s}{'torchscale':>12s}{'ratio':>8s}")
    for label, times, work in (("train step (samples/s)", train, 3 * flops), ("inference (samples/s)", infer, flops)):
        ours_s, ts_s = statistics.median(times["ours"]), statistics.median(times["torchscale"])
        print(f"{label:22s}{args.batch / ours_s:12.2f}{args.batch / ts_s:12.2f}{ts_s / ours_s:7.2f}x")
        print(f"{'  achieved GFLOP/s':22s}{work / ours_s / 1e9:12.1f}{work / ts_s / 1e9:12.1f}"
              f"   (ours = {100 * work / ours_s / gemm:.0f}% of GEMM peak)")


if __name__ == "__main__":
    main()
