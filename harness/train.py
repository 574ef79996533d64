"""The trainer: one loop for pretraining and finetuning, read top to bottom.

    python -m harness.train CONFIG.py [key=value ...]                      # one process
    torchrun --nproc_per_node 2 -m harness.train CONFIG.py [key=value ...]  # DDP: gloo on CPU, nccl on GPU
    python -m harness.train CONFIG.py resume=true                          # continue from the latest checkpoint

A ``step_fn(model, batch)`` (by default ``model(batch, **forward_kwargs)``; tasks whose official
forward returns logits supply their own, ``tasks.training_step``) returns a dict with a scalar ``loss``
and scalar logs; a data object gives ``next_batch()`` and ``state_dict()``/``load_state_dict()`` (its position), so
that a run killed at any step and resumed ends bit-identical to an uninterrupted run.
"""
from __future__ import annotations

import ast
import dataclasses
import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import nn

from .checkpointing import (
    ResumeError,
    export_weights,
    latest_checkpoint,
    load_checkpoint_file,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import ConfigError, TrainConfig, load_train_config, train_config_hash
from .distributed import DistInfo, process_group
from .optim import build_optimizer, lr_at, set_lr
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


def wrap_parallel(model: nn.Module, cfg: TrainConfig, info: DistInfo) -> nn.Module:
    if not info.enabled:
        return model
    if cfg.parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        from backbones.beit3 import EncoderLayer

        for module in model.modules():
            if isinstance(module, EncoderLayer):
                fully_shard(module)
        fully_shard(model)
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=cfg.ddp_find_unused_parameters
    )


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: TrainConfig, info: DistInfo):
    """Unsharded model and optimizer state (FSDP gathers to every rank; rank 0 writes)."""
    if info.enabled and cfg.parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return unwrap(model).state_dict(), optimizer.state_dict()


def load_full_state(model, optimizer, model_state, optim_state, cfg: TrainConfig, info: DistInfo) -> None:
    if info.enabled and cfg.parallel == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True))
        return
    unwrap(model).load_state_dict(model_state)
    optimizer.load_state_dict(optim_state)


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
    chash = train_config_hash(cfg)
    torch.manual_seed(cfg.seed + info.rank)

    # ---- model, optimizer, scaler
    model.to(device)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(model)
    model = wrap_parallel(model, cfg, info)  # before the optimizer: FSDP replaces the parameters
    optimizer = build_optimizer(unwrap(model), cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps, cfg.layer_decay, cfg.head_lr_scale)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    # ---- resume from the latest checkpoint of this run, or start (possibly from init_from weights)
    step, resumed_from = 0, 0
    latest = latest_checkpoint(cfg.out_dir) if cfg.resume else None
    if latest is not None:
        ckpt = load_checkpoint_file(latest)
        if ckpt.get("config_hash") != chash:
            raise ResumeError(
                f"{latest} was written by a run with config hash {ckpt.get('config_hash')}, this run's is {chash}: "
                f"it belongs to another config. Use another out_dir, or resume with the config stored in the checkpoint."
            )
        load_full_state(model, optimizer, ckpt["model"], ckpt["optimizer"], cfg, info)
        scaler.load_state_dict(ckpt["scaler"])
        data.load_state_dict(ckpt["data"])
        set_rng_state(ckpt["rng"][min(info.rank, len(ckpt["rng"]) - 1)])
        step = resumed_from = ckpt["step"]
    elif cfg.init_from:
        from backbones import load_checkpoint

        load_checkpoint(unwrap(model), cfg.init_from, drop=cfg.init_drop)

    # ---- the loop
    progress = None
    if info.is_main and cfg.progress:
        from tqdm import tqdm

        progress = tqdm(total=cfg.max_steps, initial=step, desc=cfg.run_name or cfg.task, dynamic_ncols=True, file=sys.stderr)
    window = LogWindow(device)
    logged: dict[str, float] = {}
    window_samples, window_start = 0, time.perf_counter()
    run_start, samples_seen, last_ckpt, weights = time.perf_counter(), 0, "", ""
    model.train()
    while step < cfg.max_steps:
        lr = lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)
        set_lr(optimizer, lr)

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
            model_state, optim_state = full_state(model, optimizer, cfg, info)
            rngs = gather_rng_states(info)
            if info.is_main:
                if step == cfg.max_steps:
                    weights = str(export_weights(cfg.out_dir, model_state))
                last_ckpt = str(save_checkpoint(cfg.out_dir, step, {
                    "model": model_state, "optimizer": optim_state, "scheduler": {"step": step},
                    "scaler": scaler.state_dict(), "step": step, "rng": rngs, "data": data.state_dict(),
                    "config": cfg.to_dict(), "config_hash": chash,
                    "git_commit": _git_commit(), "mlflow_run_id": getattr(tracker, "run_id", ""),
                }, cfg.keep_last))
        if progress is not None:
            progress.update(1)

    if progress is not None:
        progress.close()
    wall = time.perf_counter() - run_start
    return TrainResult(
        step=step, losses={k: v for k, v in logged.items() if k != "lr"}, wall_time_s=wall,
        samples_per_s=samples_seen / max(wall, 1e-9), samples_seen=samples_seen, checkpoint=last_ckpt,
        weights=weights, resumed_from_step=resumed_from,
    )


def gather_rng_states(info: DistInfo) -> list[dict[str, Any]]:
    """Every rank's RNG state (drop path and augmentation differ per rank), gathered on all ranks."""
    state = rng_state()
    if not info.enabled:
        return [state]
    import torch.distributed as dist

    states: list[Any] = [None] * info.world_size
    dist.all_gather_object(states, state)
    return states


def _git_commit() -> str:
    from .gitinfo import git_commit

    return git_commit() or "unknown"


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are Python literals when they parse as such, else strings."""
    overrides = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"override {pair!r} is not key=value")
        try:
            overrides[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            overrides[key] = {"true": True, "false": False}.get(raw.lower(), raw)
    return overrides


def resolve_data_root(data: dict[str, Any]) -> dict[str, Any]:
    """``root: "world:<profile>"`` names the benchmark world, built on first use (``harness.world``)."""
    root = data.get("root", "")
    if isinstance(root, str) and root.startswith("world:"):
        from .world import ensure_world

        return {**data, "root": str(ensure_world(root.split(":", 1)[1]))}
    return data


def per_rank_batch_size(cfg: TrainConfig, world_size: int) -> int:
    """``data.batch_size``, or the share of ``global_batch_size`` of one rank and accumulation step."""
    if not cfg.global_batch_size:
        return int(cfg.data.get("batch_size", 0))
    share, rest = divmod(cfg.global_batch_size, world_size * cfg.grad_accum_steps)
    if rest or not share:
        raise ConfigError(
            f"{cfg.run_name or cfg.task}: global_batch_size {cfg.global_batch_size} does not split over "
            f"{world_size} rank(s) x {cfg.grad_accum_steps} accumulation step(s); change --nproc or grad_accum_steps"
        )
    return share


def schedule_for_data(cfg: TrainConfig, data: Any, world_size: int) -> TrainConfig:
    """``cfg`` with max_steps/warmup_steps from ``epochs``/``warmup_epochs`` over the data's size.

    A map-style source knows its batches per epoch; a streamed one (WebDataset pairs) needs
    ``data.num_samples``. Without ``epochs`` the config is returned as is.
    """
    if not cfg.epochs:
        return cfg
    batches = getattr(data, "batches_per_epoch", None)
    if batches is None:
        samples = cfg.data.get("num_samples")
        if not samples:
            raise ConfigError(
                f"{cfg.run_name or cfg.task}: epochs={cfg.epochs} over a streamed data set of unknown size; "
                "set data.num_samples (the number of training samples) or max_steps instead of epochs"
            )
        batches = math.ceil(int(samples) / (per_rank_batch_size(cfg, world_size) * world_size))
    steps_per_epoch = max(1, math.ceil(batches / cfg.grad_accum_steps))
    return dataclasses.replace(cfg, max_steps=math.ceil(cfg.epochs * steps_per_epoch),
                               warmup_steps=round(cfg.warmup_epochs * steps_per_epoch))


def run_training(cfg: TrainConfig) -> TrainResult:
    """Build the task's model and data, open the MLflow run, train; the run ends FAILED on errors.

    The MLflow run records ``cfg`` as given (its hash finds the run again); training uses the
    schedule derived from the data (``schedule_for_data``).
    """
    import tasks

    from .tracking import start_run

    with process_group() as info:
        model = tasks.build_model(cfg.task, cfg.model, **cfg.model_overrides)
        data_config = resolve_data_root(cfg.data)
        if cfg.global_batch_size:
            data_config = {**data_config, "batch_size": per_rank_batch_size(cfg, info.world_size)}
        data = tasks.build_data(cfg.task, data_config, model=model, seed=cfg.seed, rank=info.rank, world_size=info.world_size)
        scheduled = schedule_for_data(cfg, data, info.world_size)
        if cfg.trainable:
            tasks.configure_trainable(cfg.task, model, cfg.trainable)
        step_fn = tasks.training_step(cfg.task, cfg.forward_kwargs)
        if not info.is_main:
            return train(scheduled, model, data, info=info, step_fn=step_fn)
        # The run records the semantic config, so its config_hash tag is train_config_hash(cfg), the
        # key under which finished runs are found and reused; where it is stored goes into tags.
        tags = {"profile": cfg.profile, "seed": str(cfg.seed), "task": cfg.task, "model": cfg.model,
                "world_size": str(info.world_size), "out_dir": cfg.out_dir, "init_from": cfg.init_from}
        with start_run(cfg.experiment, cfg.run_name or cfg.task, cfg.semantic_dict(), tags,
                       parent_run_id=cfg.parent_run_id or None) as tracker:
            result = train(scheduled, model, data, info=info, tracker=tracker, step_fn=step_fn)
            final = {f"final.{k}": v for k, v in result.losses.items()}
            final.update({"wall_time_s": result.wall_time_s, "samples_per_s_overall": result.samples_per_s})
            final.update({f"data.{k}": float(v) * (1 if k == "steps" else info.world_size)
                          for k, v in getattr(data, "stats", dict)().items()
                          if isinstance(v, (int, float))})
            tracker.log_metrics(final, step=result.step)
            tracker.set_tags({"final_step": str(result.step), "checkpoint": result.weights,
                              "resume_checkpoint": result.checkpoint,
                              "resumed_from_step": str(result.resumed_from_step)})
            return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    cfg = load_train_config(args[0], parse_overrides(args[1:]))
    result = run_training(cfg)
    print(f"finished step {result.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.losses.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
