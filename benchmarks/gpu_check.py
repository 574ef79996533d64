"""One prepared GPU check (run on a lent GPU machine): parity, speed and memory against torchscale.

    python benchmarks/gpu_check.py [OUT_DIR]     # default results/benchmarks

1. parity: our base model vs torchscale's on the same weights and inputs, fp32 (TF32 off) and bf16;
2. speed: training step (fwd+bwd) and inference, bf16 autocast, alternating rounds, base 224,
   image+text pairs and image only; per-round times, FLOPs counted with torch.utils.flop_counter and
   model FLOPs utilisation (MFU) against the card's stated dense bf16 peak (PEAK_BF16_TFLOPS, named
   in the JSON; GPU_CHECK_PEAK_TFLOPS overrides it);
3. memory: peak memory of a training step with and without activation checkpointing;
4. the trainer on CUDA: a few steps of the toy task in bf16 and fp16 (GradScaler), with the host
   syncs of the loop counted by torch.cuda.set_sync_debug_mode("warn").
Writes OUT_DIR/gpu_check_<gpu>_torch<version>.json and prints a summary.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests" / "harness"), str(ROOT / ".gpu_deps")]

import backbones  # noqa: E402
from bench_backbone import counted_flops, make_inputs, official_model  # noqa: E402

import os  # noqa: E402

DEVICE = torch.device(os.environ.get("GPU_CHECK_DEVICE", "cuda"))  # "cpu" for a dry run of this script
SCALE = int(os.environ.get("GPU_CHECK_BATCH_DIVISOR", "1"))
# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "A100": 312.0}


def peak_tflops(gpu: str) -> tuple[float | None, str]:
    if os.environ.get("GPU_CHECK_PEAK_TFLOPS"):
        return float(os.environ["GPU_CHECK_PEAK_TFLOPS"]), "GPU_CHECK_PEAK_TFLOPS"
    for name, peak in PEAK_BF16_TFLOPS.items():
        if name in gpu:
            return peak, f"{name} dense bf16 data-sheet peak"
    return None, "unknown card: set GPU_CHECK_PEAK_TFLOPS"


def to_device(inputs):
    return {k: v.to(DEVICE) for k, v in inputs.items()}


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, *args):
    sync()
    start = time.perf_counter()
    fn(*args)
    sync()
    return time.perf_counter() - start


def train_step(model, inputs, dtype=torch.bfloat16):
    with torch.autocast(DEVICE.type, dtype=dtype):
        out = model(**inputs)["encoder_out"]
    out.float().pow(2).mean().backward()
    model.zero_grad(set_to_none=True)


@torch.no_grad()
def infer(model, inputs, dtype=torch.bfloat16):
    with torch.autocast(DEVICE.type, dtype=dtype):
        model(**inputs)


def parity(ours, official, config):
    ours.eval(), official.eval()
    inputs = to_device(make_inputs(config, max(1, 8 // SCALE), "pair", 64))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        ref = official(**inputs)["encoder_out"].float()
        fp32 = (ours(**inputs)["encoder_out"].float() - ref).abs().max().item()
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            ours_bf16 = ours(**inputs)["encoder_out"].float()
            official_bf16 = official(**inputs)["encoder_out"].float()
    ours.train(), official.train()
    return {
        "fp32_max_abs_diff": fp32,
        "bf16_ours_vs_fp32_max_abs": (ours_bf16 - ref).abs().max().item(),
        "bf16_torchscale_vs_fp32_max_abs": (official_bf16 - ref).abs().max().item(),
        "output_abs_mean": ref.abs().mean().item(),
    }


def speed(ours, official, config, kind, batch, peak, rounds=5):
    batch, rounds = max(1, batch // SCALE), (rounds if SCALE == 1 else 1)
    inputs = to_device(make_inputs(config, batch, kind, 64))
    models = {"ours": ours, "torchscale": official}
    for model in models.values():
        for _ in range(2):
            train_step(model, inputs)
            infer(model, inputs)
    train = {n: [] for n in models}
    inference = {n: [] for n in models}
    for round_index in range(rounds):
        order = list(models) if round_index % 2 == 0 else list(reversed(models))
        for name in order:
            train[name].append(timed(train_step, models[name], inputs))
        for name in order:
            inference[name].append(timed(infer, models[name], inputs))
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        flops = {"train": counted_flops(ours, inputs, True), "inference": counted_flops(ours.eval(), inputs, False)}
    ours.train()
    out = {"inputs": kind, "batch": batch, "seconds_per_round": {"train": train, "inference": inference}}
    for label, times in (("train", train), ("inference", inference)):
        ours_s, ts_s = statistics.median(times["ours"]), statistics.median(times["torchscale"])
        ratios = [t / o for o, t in zip(times["ours"], times["torchscale"])]
        out[label] = {
            "ours_samples_per_s": batch / ours_s, "torchscale_samples_per_s": batch / ts_s,
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "flops": flops[label], "ours_tflops": flops[label] / ours_s / 1e12,
            "torchscale_tflops": flops[label] / ts_s / 1e12,
        }
        if peak:
            out[label]["ours_mfu"] = flops[label] / ours_s / 1e12 / peak
            out[label]["torchscale_mfu"] = flops[label] / ts_s / 1e12 / peak
    return out


def memory(config, batch):
    inputs = to_device(make_inputs(config, batch, "pair", 64))
    peaks = {}
    for name, ckpt in (("ours", False), ("ours_checkpointing", True)):
        model = backbones.create_model("beit3_base_patch16_224", grad_checkpointing=ckpt).to(DEVICE).train()
        train_step(model, inputs)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        train_step(model, inputs)
        peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**30
        del model
        torch.cuda.empty_cache()
    official = official_model(config).to(DEVICE).train()
    train_step(official, inputs)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    train_step(official, inputs)
    peaks["torchscale"] = (torch.cuda.max_memory_allocated() - base) / 2**30
    del official
    torch.cuda.empty_cache()
    peaks["reduction_by_checkpointing"] = peaks["ours"] / peaks["ours_checkpointing"]
    peaks["batch"] = batch
    return peaks


def trainer_on_cuda(out_dir: Path):
    import warnings

    from harness.distributed import init_distributed
    from toy_training import run

    info = init_distributed()
    results = {}
    for precision in ("bf16", "fp16"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if DEVICE.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            try:
                result = run(out_dir / precision, 6, info=info, precision=precision, log_interval=3)
            finally:
                if DEVICE.type == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
        # includes model init, checkpointing and fp16's GradScaler.step; 6 steps, 2 of them logged
        results[precision] = {"step": result.step, "loss": result.losses.get("loss"), "host_syncs_in_run": len(syncs)}
    return results


def main():
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "results" / "benchmarks")
    out_dir.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "cpu (dry run)"
    peak, peak_source = peak_tflops(gpu)
    report = {"torch": torch.__version__, "gpu": gpu, "peak_bf16_tflops": peak, "peak_source": peak_source}
    torch.manual_seed(0)
    ours = backbones.create_model("beit3_base_patch16_224").to(DEVICE)
    config = ours.config
    official = official_model(config).to(DEVICE)
    backbones.load_checkpoint(ours, {k: v.cpu() for k, v in official.state_dict().items()})
    report["parity"] = parity(ours, official, config)
    print("parity", report["parity"], flush=True)
    torch.backends.cuda.matmul.allow_tf32 = True
    report["speed"] = [speed(ours, official, config, "pair", 64, peak), speed(ours, official, config, "image", 128, peak)]
    for row in report["speed"]:
        print("speed", {k: v for k, v in row.items() if k != "seconds_per_round"}, flush=True)
    del ours, official
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
        report["memory_gib"] = memory(config, 64)
        print("memory", report["memory_gib"], flush=True)
    report["trainer"] = trainer_on_cuda(Path(tempfile.mkdtemp(prefix="gpu_check_trainer_")))
    print("trainer", report["trainer"], flush=True)
    slug = "".join(c if c.isalnum() else "_" for c in gpu).strip("_")
    path = out_dir / f"gpu_check_{slug}_torch{torch.__version__.split('+')[0]}.json"
    path.write_text(json.dumps(report, indent=2))
    print("raw numbers:", path)


if __name__ == "__main__":
    main()
