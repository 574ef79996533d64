"""The trainer: one loop for pretraining and finetuning, read top to bottom.

    python -m harness.train CONFIG.py [key=value ...]                      # one process
    torchrun --nproc_per_node 2 -m harness.train CONFIG.py [key=value ...]  # DDP: gloo on CPU, nccl on GPU
    python -m harness.train CONFIG.py resume=true                          # continue from the latest checkpoint

The command line, data roots, batch split and MLflow run are ``harness.launch``'s; DDP/FSDP wrapping
is ``harness.distributed``'s, the checkpoint payload and resume checks ``harness.checkpointing``'s.
A ``step_fn(model, batch)`` (by default ``model(batch, **forward_kwargs)``; tasks whose official
forward returns logits supply their own, ``tasks.training_step``) returns a dict with a scalar ``loss``
and scalar logs; a data object gives ``next_batch()`` and ``state_dict()``/``load_state_dict()`` (its position), so
that a run killed at any step and resumed ends bit-identical to an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import nn

from .checkpointing import (
    export_weights,
    latest_checkpoint,
    restore_training_state,
    resume_checkpoint,
    rng_state,
    save_checkpoint,
    training_state,
)
from .config import TrainConfig, run_identity, train_config_hash
from .distributed import DistInfo, full_state, gather_objects, unwrap, wrap_parallel
from .optim import WarmupCosineSchedule, build_optimizer
from .seeding import seed_everything
from .step_log import LogWindow


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became inf/NaN; the last good checkpoint is kept."""


class BatchSource(Protocol):
    def next_batch(self) -> dict[str, Any]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    step: int
    losses: dict[str, float] = field(default_factory=dict)  # the last logged averages
    wall_time_s: float = 0.0
    samples_per_s: float = 0.0
    samples_seen: int = 0
    checkpoint: str = ""  # the last resume checkpoint (full training state)
    weights: str = ""  # the exported final weights, {'model': state_dict}: what derived runs load
    resumed_from_step: int = 0


def count_samples(batch: dict[str, Any], data: Any) -> int:
    """Samples in one batch: the data object's own count if it has one, else the first tensor's rows."""
    per_batch = getattr(data, "samples_per_batch", None)
    if per_batch:
        return int(per_batch)
    first = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
    return int(first.shape[0]) if first is not None else 0


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def enable_grad_checkpointing(model: nn.Module) -> None:
    from backbones.beit3 import Encoder

    for module in model.modules():
        if isinstance(module, Encoder):
            module.grad_checkpointing = True


def autocast_context(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise RuntimeError("precision=bf16 but this GPU does not support bfloat16; use fp16 or fp32")
    return torch.autocast(device_type=device.type, dtype=dtype)


def train(
    cfg: TrainConfig,
    model: nn.Module,
    data: BatchSource,
    *,
    info: DistInfo | None = None,
    tracker: Any = None,
    step_fn: Callable[[nn.Module, dict[str, Any]], dict[str, torch.Tensor]] | None = None,
) -> TrainResult:
    """Train ``model`` on ``data`` for ``cfg.max_steps`` optimizer steps; returns what Table 3 reports."""
    info = info or DistInfo()
    device = info.device
    chash, identity = train_config_hash(cfg), run_identity(cfg)
    seed_everything(cfg.seed, info.rank)  # drop path and other in-model draws, per rank

    # ---- model, optimizer, scaler
    model.to(device)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model)
    # before the optimizer: FSDP replaces the parameters
    model = wrap_parallel(model, cfg.parallel, info, cfg.ddp_find_unused_parameters)
    optimizer = build_optimizer(unwrap(model), cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps, cfg.layer_decay, cfg.head_lr_scale)
    schedule = WarmupCosineSchedule(optimizer, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    # ---- resume from the latest checkpoint of this run, or start (possibly from init_from weights)
    # The earlier lives of the run: its last logged averages, wall time and samples, summed on.
    step, resumed_from, logged, earlier_wall, earlier_samples = 0, 0, {}, 0.0, 0
    ckpt = resume_checkpoint(cfg.out_dir, identity) if cfg.resume else None
    if ckpt is not None:
        step = resumed_from = restore_training_state(ckpt, model=model, optimizer=optimizer, scheduler=schedule,
                                                     scaler=scaler, data=data, parallel=cfg.parallel, info=info)
        logged, earlier_wall, earlier_samples = dict(ckpt["logged"]), ckpt["wall_time_s"], ckpt["samples_seen"]
        del ckpt
    elif cfg.init_from:
        from backbones import load_checkpoint

        load_checkpoint(unwrap(model), cfg.init_from, drop=cfg.init_drop, rename=cfg.init_rename)

    # ---- the loop
    progress = None
    if info.is_main and cfg.progress:
        from tqdm import tqdm

        progress = tqdm(total=cfg.max_steps, initial=step, desc=cfg.run_name or cfg.task, dynamic_ncols=True, file=sys.stderr)
    window = LogWindow(device)
    window_samples, window_start = 0, time.perf_counter()
    run_start, samples_seen, last_ckpt, weights = time.perf_counter(), 0, "", ""
    model.train()
    while step < cfg.max_steps:
        lr = schedule.apply()

        # forward/backward over micro-batches; DDP syncs gradients only on the last one
        for micro in range(cfg.grad_accum_steps):
            batch = to_device(data.next_batch(), device)
            window_samples += count_samples(batch, data) * info.world_size
            last_micro = micro == cfg.grad_accum_steps - 1
            sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
            with sync, autocast_context(cfg.precision, device):
                out = step_fn(model, batch) if step_fn is not None else model(batch, **cfg.forward_kwargs)
                loss = out["loss"] / cfg.grad_accum_steps
            window.add_outputs(out, loss, cfg.grad_accum_steps, step + 1)  # checked on the device, read at the log step
            scaler.scale(loss).backward()

        # clip, step, zero
        scaler.unscale_(optimizer)
        params = [p for p in model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad if cfg.clip_grad > 0 else math.inf)
        # With fp16 loss scaling an overflow is routine: the scaler skips the step and lowers the scale.
        window.add_grad_norm(grad_norm, step + 1, must_be_finite=not scaler.is_enabled())
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        step += 1

        # The host reads the device (one sync) only here: a non-finite loss or gradient norm since the
        # last read stops the run before its state is logged or saved; the last good checkpoint is kept.
        log_due = step % cfg.log_interval == 0 or step == cfg.max_steps
        if log_due or step % cfg.ckpt_interval == 0:
            averages, bad_step = window.read(info)
            if bad_step is not None:
                raise NonFiniteLossError(
                    f"non-finite loss or gradient norm at step {bad_step} (stopped at step {step}); the last good "
                    f"checkpoint ({latest_checkpoint(cfg.out_dir) or 'none'}) is kept"
                )

        # log: averages over the window, lr and throughput
        if log_due:
            elapsed = time.perf_counter() - window_start
            logged = dict(averages)
            logged.update(lr=lr, samples_per_s=window_samples / max(elapsed, 1e-9))
            samples_seen += window_samples
            if tracker is not None and info.is_main:
                tracker.log_metrics(logged, step=step)
            if progress is not None:
                progress.set_postfix(loss=f"{logged['loss']:.4f}", lr=f"{lr:.2e}", sps=f"{logged['samples_per_s']:.1f}")
            window, window_samples, window_start = LogWindow(device), 0, time.perf_counter()

        # save: atomically, every ckpt_interval steps and at the end
        if step % cfg.ckpt_interval == 0 or step == cfg.max_steps:
            model_state, optim_state = full_state(model, optimizer, cfg.parallel, info)
            rngs = gather_objects(rng_state(), info)
            if info.is_main:
                if step == cfg.max_steps:
                    weights = str(export_weights(cfg.out_dir, model_state))
                last_ckpt = str(save_checkpoint(cfg.out_dir, step, training_state(
                    step=step, model=model_state, optimizer=optim_state, scheduler=schedule.state_dict(),
                    scaler=scaler.state_dict(), rng=rngs, data=data.state_dict(), config=cfg.to_dict(),
                    config_hash=chash, run_identity=identity, git_commit=_git_commit(),
                    mlflow_run_id=getattr(tracker, "run_id", ""), logged=logged,
                    wall_time_s=earlier_wall + time.perf_counter() - run_start,
                    samples_seen=earlier_samples + samples_seen + window_samples,
                ), cfg.keep_last))
        if progress is not None:
            progress.update(1)

    if progress is not None:
        progress.close()
    if step == cfg.max_steps and resumed_from == cfg.max_steps:
        # Resumed at its final step (killed between the last checkpoint and the end of the run):
        # the final weights are exported again from that checkpoint, so the run never ends without them.
        model_state, _ = full_state(model, optimizer, cfg.parallel, info)
        if info.is_main:
            weights = str(export_weights(cfg.out_dir, model_state))
            last_ckpt = str(latest_checkpoint(cfg.out_dir) or "")
    wall = earlier_wall + time.perf_counter() - run_start
    samples_seen += earlier_samples
    return TrainResult(
        step=step, losses={k: v for k, v in logged.items() if k != "lr"}, wall_time_s=wall,
        samples_per_s=samples_seen / max(wall, 1e-9), samples_seen=samples_seen, checkpoint=last_ckpt,
        weights=weights, resumed_from_step=resumed_from,
    )


def _git_commit() -> str:
    from .gitinfo import git_commit

    return git_commit() or "unknown"


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.train CONFIG.py [key=value ...]``: the launcher's command line."""
    from .launch import main as launch_main

    return launch_main(argv)


if __name__ == "__main__":
    sys.exit(main())
