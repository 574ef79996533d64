"""Speed of our BEiT-3 backbone against torchscale's (the official implementation), in one process.

Same config, same weights, same inputs; the two models alternate round by round so drift of the
machine hits both. Reports the training-step (forward + backward) and inference throughput of each
and their ratio, checks the outputs are identical, and relates our achieved FLOP/s to this machine's
measured fp32 GEMM rate.

    python benchmarks/bench_backbone.py                       # base 224, image+text, batch 4
    python benchmarks/bench_backbone.py --batch 8 --rounds 5 --inputs image
    python benchmarks/bench_backbone.py --batch 1 2 4 8 --inputs image pair   # every pair, one summary

Prints the machine, thread count, torch/torchscale versions and the load average (a 1-min load above
the thread count means other processes shared the CPU); the ratio is the median of per-round ratios
with its min-max; FLOPs are counted with ``torch.utils.flop_counter``; the GEMM rate is measured
on the model's own linear-layer shapes. Raw per-round times go to ``--out`` (JSON).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten

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


def _sdpa_flops(query, key, value, *args, **kwargs) -> int:
    batch, heads, length, dim = query
    return 2 * 2 * batch * heads * length * key[2] * dim


def _sdpa_backward_flops(grad_out, query, key, value, *args, **kwargs) -> int:
    return 5 * _sdpa_flops(query, key, value) // 2


# torch's counter knows the GPU attention kernels but not the CPU flash kernel SDPA uses here.
CPU_ATTENTION_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flops,
}


def counted_flops(model: nn.Module, inputs: dict, train: bool) -> int:
    """FLOPs of one forward (+ backward when ``train``), counted with torch.utils.flop_counter."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        with torch.set_grad_enabled(train):
            out = model(**inputs)["encoder_out"]
            if train:
                out.float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def linear_gemm_shapes(config: backbones.BEiT3Config, batch: int, num_image: int, num_text: int, train: bool):
    """(M, K, N) of every linear-layer GEMM of one step: per modality q/k/v/out (D->D), fc1, fc2;
    for training also the two backward GEMMs of each (grad input M x N @ N x K, grad weight K x M @ M x N)."""
    dim, ffn = config.embed_dim, config.ffn_dim
    shapes = []
    for tokens in (batch * num_image, batch * num_text):
        if not tokens:
            continue
        for k, n in [(dim, dim)] * 4 + [(dim, ffn), (ffn, dim)]:
            shapes.append((tokens, k, n))
            if train:
                shapes += [(tokens, n, k), (k, tokens, n)]
    return shapes * config.depth


def gemm_rate(shapes, trials: int = 3) -> float:
    """fp32 FLOP/s of the given GEMMs run back to back (best of ``trials``)."""
    distinct = {shape: shapes.count(shape) for shape in dict.fromkeys(shapes)}
    total_flops, total_time = 0.0, 0.0
    for (m, k, n), count in distinct.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(trials))
        total_flops += count * 2 * m * k * n
        total_time += count * best
    return total_flops / total_time


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        torchscale = importlib.metadata.version("torchscale")
    except importlib.metadata.PackageNotFoundError:
        torchscale = "not installed"
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "torchscale": torchscale, "python": platform.python_version()}


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


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="beit3_base_patch16_224")
    parser.add_argument("--batch", type=int, nargs="+", default=[4])
    parser.add_argument("--text-len", type=int, default=64)
    parser.add_argument("--inputs", choices=["pair", "image", "text"], nargs="+", default=["pair"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--out", default="", help="raw JSON of one setting (default "
                        "results/benchmarks/bench_backbone_<inputs>_b<batch>.json, one file per setting)")
    args = parser.parse_args()
    settings = [(inputs, batch) for inputs in args.inputs for batch in args.batch]
    if args.out and len(settings) > 1:
        parser.error("--out names the file of one setting; give one --batch and one --inputs, or leave it out")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = backbones.create_model(args.model)
    official = official_model(ours.config)
    backbones.load_checkpoint(ours, official.state_dict())
    summaries = [(inputs, batch, measure(ours, official, args, inputs, batch)) for inputs, batch in settings]
    if len(summaries) > 1:
        print("\nsummary: ours / torchscale (median of rounds, min-max); share of the GEMM rate, ours vs torchscale")
        for inputs, batch, summary in summaries:
            train, infer = summary["train"], summary["inference"]
            print(f"  {inputs:5s} batch {batch}: train {train['ratio']['median']:.2f}x "
                  f"({train['ratio']['min']:.2f}-{train['ratio']['max']:.2f}), "
                  f"{100 * train['ours_share_of_gemm_rate']:.0f}% vs {100 * train['torchscale_share_of_gemm_rate']:.0f}%"
                  f" | inference {infer['ratio']['median']:.2f}x ({infer['ratio']['min']:.2f}-{infer['ratio']['max']:.2f})"
                  f" | max diff {summary['max_abs_diff']:.1e}")


def measure(ours: nn.Module, official: nn.Module, args: argparse.Namespace, input_kind: str, batch: int) -> dict:
    """One setting: both models alternating for ``args.rounds`` rounds; prints it, writes its JSON."""
    load_before = os.getloadavg()[0]
    config = ours.config
    inputs = make_inputs(config, batch, input_kind, args.text_len)

    ours.eval(), official.eval()
    with torch.no_grad():
        diff = (ours(**inputs)["encoder_out"] - official(**inputs)["encoder_out"]).abs().max().item()
    ours.train(), official.train()
    flops = {"train": counted_flops(ours, inputs, True), "inference": counted_flops(ours.eval(), inputs, False)}
    ours.train()
    num_image = config.num_patches + 1 if "visual_tokens" in inputs else 0
    num_text = args.text_len if "textual_tokens" in inputs else 0
    gemm = {kind: gemm_rate(linear_gemm_shapes(config, batch, num_image, num_text, kind == "train"))
            for kind in ("train", "inference")}

    models = {"ours": ours, "torchscale": official}
    times = {kind: {name: [] for name in models} for kind in ("train", "inference")}
    for name, model in models.items():  # warm-up
        time_train_step(model, inputs)
        time_inference(model, inputs)
    for round_index in range(args.rounds):
        order = list(models) if round_index % 2 == 0 else list(reversed(models))  # neither always goes first
        for name in order:
            times["train"][name].append(time_train_step(models[name], inputs))
        for name in order:
            models[name].eval()
            times["inference"][name].append(time_inference(models[name], inputs))
            models[name].train()
    load_after = os.getloadavg()[0]
    # Best of a measurement before and one after the rounds: another job's burst must not lower the peak.
    gemm = {kind: max(rate, gemm_rate(linear_gemm_shapes(config, batch, num_image, num_text, kind == "train")))
            for kind, rate in gemm.items()}

    info = machine()
    print(f"machine: {info['cpu']} | {info['logical_cores']} logical cores | threads {info['threads']} | "
          f"torch {info['torch']} | torchscale {info['torchscale']}")
    print(f"load average (1 min) before/after: {load_before:.1f}/{load_after:.1f} "
          f"({'shared' if max(load_before, load_after) > info['threads'] + 0.5 else 'no other load seen'})")
    print(f"model {args.model} | inputs {input_kind} | batch {batch} | tokens {num_image + num_text} | "
          f"rounds {args.rounds}")
    print(f"max |ours - torchscale| on the same weights and inputs: {diff:.2e}")
    summary = {}
    print(f"{'':24s}{'ours':>10s}{'torchscale':>12s}{'ratio (median, min-max)':>26s}{'% of GEMM rate':>16s}")
    for kind in ("train", "inference"):
        ours_t, ts_t = times[kind]["ours"], times[kind]["torchscale"]
        ratios = [t / o for o, t in zip(ours_t, ts_t)]
        ours_rate = flops[kind] / statistics.median(ours_t)
        ts_rate = flops[kind] / statistics.median(ts_t)
        summary[kind] = {
            "ours_samples_per_s": batch / statistics.median(ours_t),
            "torchscale_samples_per_s": batch / statistics.median(ts_t),
            "ratio": spread(ratios), "flops": flops[kind], "gemm_rate_flops": gemm[kind],
            "ours_share_of_gemm_rate": ours_rate / gemm[kind], "torchscale_share_of_gemm_rate": ts_rate / gemm[kind],
        }
        r = summary[kind]["ratio"]
        print(f"{kind + ' (samples/s)':24s}{summary[kind]['ours_samples_per_s']:10.2f}"
              f"{summary[kind]['torchscale_samples_per_s']:12.2f}"
              f"{r['median']:11.2f}x ({r['min']:.2f}-{r['max']:.2f})"
              f"{100 * ours_rate / gemm[kind]:9.0f}% vs{100 * ts_rate / gemm[kind]:4.0f}%")
    print(f"GEMM rate at the model's linear shapes: train {gemm['train'] / 1e9:.1f}, inference "
          f"{gemm['inference'] / 1e9:.1f} GFLOP/s; FLOPs per step: train {flops['train'] / 1e9:.1f}, "
          f"inference {flops['inference'] / 1e9:.1f} GFLOP")

    out = Path(args.out or f"results/benchmarks/bench_backbone_{input_kind}_b{batch}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": info, "load_average_1min": [load_before, load_after],
        "settings": {**{k: v for k, v in vars(args).items() if k not in ("out", "batch", "inputs")},
                     "batch": batch, "inputs": input_kind}, "tokens": num_image + num_text,
        "max_abs_diff": diff, "seconds_per_round": times, "summary": summary,
    }, indent=2))
    print(f"raw numbers: {out}")
    return {**summary, "max_abs_diff": diff}


if __name__ == "__main__":
    main()
