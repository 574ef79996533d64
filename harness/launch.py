"""Launching a training run: config file and overrides, data roots, the batch split over ranks, epochs
turned into steps, and the MLflow run around ``harness.train.train``.

    python -m harness.launch CONFIG.py [key=value ...]    # the same as python -m harness.train
    torchrun --nproc_per_node 2 -m harness.launch CONFIG.py [key=value ...]
"""
from __future__ import annotations

import ast
import dataclasses
import math
import sys
from typing import Any

from .config import ConfigError, TrainConfig, load_train_config
from .distributed import process_group
from .train import TrainResult, train


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
    """``CONFIG.py [key=value ...]``: load, override, train; prints the final step and losses."""
    from . import train as trainer

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(trainer.__doc__)
        return 0 if args else 2
    cfg = load_train_config(args[0], parse_overrides(args[1:]))
    result = run_training(cfg)
    print(f"finished step {result.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.losses.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
