"""Pretraining speed and memory, measured (never a timed test).

1. For each recipe of the ``mini`` profile (BEiT-3 MDM; VLMo stages 1-3): samples/s of the data
   pipeline alone (``next_batch``: decoding, augmentation, tokenization, masking, visual-tokenizer
   codes) against samples/s of a full training step of the tiny model (forward, backward, AdamW), and
   their ratio: the loader keeps up when the ratio is above 1.
2. Peak memory of a training step with and without activation checkpointing at the base config
   (image+text pairs at 224, 64 text tokens), each in a fresh subprocess: peak RSS growth on CPU.

    python benchmarks/bench_pretrain.py                 # both parts
    python benchmarks/bench_pretrain.py --part speed --steps 10
    python benchmarks/bench_pretrain.py --part memory --batch 8
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def speed(steps: int) -> None:
    import tasks
    from harness.experiments import recipe_configs
    from harness.optim import build_optimizer
    from harness.profiles import get_profile
    from harness.launch import resolve_data_root

    profile = get_profile("mini")
    configs = recipe_configs("beit3", profile) + recipe_configs("vlmo", profile)
    print(f"profile mini | threads {torch.get_num_threads()} | {steps} steps each after 2 warm-up steps")
    print(f"{'run':24s}{'samples/step':>14s}{'loader samples/s':>18s}{'train samples/s':>17s}{'loader/train':>14s}")
    for cfg in configs:
        model = tasks.build_model(cfg.task, cfg.model, **cfg.model_overrides)
        if cfg.trainable:
            tasks.configure_trainable(cfg.task, model, cfg.trainable)
        data = tasks.build_data(cfg.task, resolve_data_root(cfg.data), model=model, seed=0)
        step_fn = tasks.training_step(cfg.task, cfg.forward_kwargs)
        optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps)
        per_step = data.samples_per_batch
        for _ in range(2):
            data.next_batch()
        start = time.perf_counter()
        batches = [data.next_batch() for _ in range(steps)]
        loader = steps * per_step / (time.perf_counter() - start)
        model.train()
        step_fn(model, batches[0])["loss"].backward()
        optimizer.zero_grad(set_to_none=True)
        start = time.perf_counter()
        for batch in batches:
            step_fn(model, batch)["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        train = steps * per_step / (time.perf_counter() - start)
        print(f"{cfg.run_name:24s}{per_step:14d}{loader:18.1f}{train:17.1f}{loader / train:13.1f}x")


def _memory_child(checkpointing: bool, batch: int) -> None:
    import backbones

    model = backbones.create_model("beit3_base_patch16_224", grad_checkpointing=checkpointing).train()
    gen = torch.Generator().manual_seed(0)
    inputs = dict(
        visual_tokens=torch.randn(batch, 3, 224, 224, generator=gen),
        textual_tokens=torch.randint(3, 64000, (batch, 64), generator=gen),
    )
    # Weights and their gradients exist before the measured step (as in training after step 1).
    for param in model.parameters():
        param.grad = torch.zeros_like(param)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model(**inputs)["encoder_out"].pow(2).mean().backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"activation_peak_mib": (after - before) / 1024, "total_peak_mib": after / 1024}))


def memory(batch: int) -> None:
    results = {}
    for checkpointing in (False, True):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(int(checkpointing)), "--batch", str(batch)],
                             check=True, capture_output=True, text=True).stdout
        results[checkpointing] = json.loads(out.strip().splitlines()[-1])
    plain, ckpt = results[False], results[True]
    print(f"base 224, image+64-token pairs, batch {batch}, one training step on CPU (peak RSS growth):")
    print(f"  without activation checkpointing: {plain['activation_peak_mib']:8.0f} MiB (process peak {plain['total_peak_mib']:.0f} MiB)")
    print(f"  with activation checkpointing:    {ckpt['activation_peak_mib']:8.0f} MiB (process peak {ckpt['total_peak_mib']:.0f} MiB)")
    print(f"  activation memory {plain['activation_peak_mib'] / max(ckpt['activation_peak_mib'], 1):.1f}x lower with checkpointing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["speed", "memory", "both"], default="both")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--memory-child", type=int, choices=[0, 1], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        _memory_child(bool(args.memory_child), args.batch)
        return
    if args.part in ("speed", "both"):
        speed(args.steps)
    if args.part in ("memory", "both"):
        memory(args.batch)


if __name__ == "__main__":
    main()
