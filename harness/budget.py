"""Equal compute as equal FLOPs: what one optimizer step costs, and how many steps each recipe gets.

**Counting.** The FLOPs of one optimizer step are counted with ``torch.utils.flop_counter.FlopCounterMode``
around the task's forward *and* backward on one batch (every forward pass the objective makes: VLMo's
stage 3 encodes images and texts for ITC, re-runs the VL-FFN layers, makes three ITM passes and an MLM
pass), times ``grad_accum_steps``. As in MFU reporting, matmuls, convolutions and attention count and
elementwise ops do not; parameters a stage freezes get no weight gradient, so frozen stages are cheaper
to train; activation checkpointing's recomputation is not counted (model FLOPs, not hardware FLOPs);
the visual tokenizer that makes the MIM targets is data preparation and is not counted.

- **On a benchmark world** (``smoke``, ``mini``): the real model on the first real batch of the run's
  data (seed 0), exactly.
- **On the real data sets** (``paper``), which need not be on this machine and whose models must not be
  allocated here: a *proxy*. Every counted op of the model multiplies a token count by two of the
  widths ``D`` (embed_dim), ``F`` (ffn_dim) and fixed sizes (vocabulary, codebook, 3·patch², sequence
  length), so with ``D`` and ``F`` scaled by one factor ``s`` the step costs ``A·s² + B·s``, and every
  encoder layer below the VL-FFN layers costs the same, so ``A`` and ``B`` are affine in the depth. Four
  counts of narrow, shallow copies (two widths x two depths, same vocabulary, image size, text lengths,
  VL-FFN layers, frozen parameters) give the full model's count exactly. The batch is the *expected*
  batch of the config: one block of each stream with texts filling their maximum length (an upper bound:
  captions are shorter) and ``round(p·n)`` masked positions; the proxy runs two samples per stream (VLMo's
  hard negatives need two) and scales linearly to the batch size, which under-counts the B x B
  contrastive similarities by less than 1e-6 of the step.

Counts are cached in memory and in ``$BEIT3_FLOPS_CACHE`` (default ``runs/flop_counts/``) (JSON, keyed by what the count
depends on: task, model, architecture, data shapes, stage), so planning never retrains or recounts.

**Budgets** (``harness run --ablation budget=...``; the reference is BEiT-3's MDM as the profile scales it):

- ``flops`` (default): each recipe's stages take the recipe's own step ratios (VLMo: 200k : 200k : 200k),
  scaled by one factor so that the recipe's total pretraining FLOPs equal the reference's within the
  profile's ``budget_tolerance`` (5%; steps are integers, so ``smoke``'s four MDM steps match looser).
- ``samples``: every stage runs the reference's steps (one stream per VLMo stage, three per MDM step:
  the same samples in total) -- what the harness called "equal compute" before.
- ``steps``: the recipe's optimizer steps in total equal the reference's.

Every stage keeps its recipe's own learning rates, scaled by the factor the profile applies to MDM's
(``profile lr / configs/pretrain/mdm.py lr``; the same for ``min_lr``); warmup is the profile's fraction
of each stage (the stage's own fraction on ``paper``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Sequence

import torch

from .config import TrainConfig, load_train_config
from .gitinfo import PACKAGE_ROOT
from .seeding import seed_everything
from .tracking import config_hash

BUDGETS = ("flops", "samples", "steps")
DEFAULT_BUDGET = "flops"
REFERENCE_RECIPE = "beit3"
REFERENCE_CONFIG = PACKAGE_ROOT / "configs" / "pretrain" / "mdm.py"
# The stated accelerator for GPU-hours: an H100 SXM's dense BF16 peak, at the utilisation large
# transformer pretraining typically reaches.
PEAK_FLOPS_PER_S = 989e12
PEAK_NAME = "H100 SXM dense BF16 peak"
UTILISATION = 0.40
# Keys of a TrainConfig that a step's FLOPs depend on (schedule, seed and bookkeeping do not).
_COUNT_KEYS = ("task", "model", "model_overrides", "data", "forward_kwargs", "trainable", "grad_accum_steps")
_NOT_COUNTED_OVERRIDES = ("init", "drop_path_rate")  # initial values and drop path: no FLOPs
_PROXY_SAMPLES = 2
_COUNTS: dict[str, "StepCost"] = {}


class BudgetError(ValueError):
    """A recipe whose steps cannot match the reference's compute within the tolerance."""


@dataclass(frozen=True)
class StepCost:
    """What one optimizer step of one rank costs: ``flops`` and ``samples``; ``method`` is ``exact``
    (the real model on a real batch) or ``proxy`` (see the module docstring)."""

    flops: int
    samples: int
    method: str


@dataclass(frozen=True)
class RunCost:
    """One planned training run: what Table 3 and ``--dry-run`` print for it."""

    recipe: str
    seed: int
    stage: str
    run_name: str
    config_hash: str
    optimizer_steps: int
    samples: int
    flops: int
    method: str
    wall_time_s: float | None = None


# ----------------------------------------------------------------------------- counting
def count_key(cfg: TrainConfig) -> str:
    """The hash of what one step's FLOPs depend on."""
    values = {key: getattr(cfg, key) for key in _COUNT_KEYS}
    values["model_overrides"] = {k: v for k, v in cfg.model_overrides.items() if k not in _NOT_COUNTED_OVERRIDES}
    return config_hash({**values, "counter": 1})


def _cache_dir() -> Path:
    # Not under $BEIT3_RUNS_DIR: a count depends only on its key, so every store on a machine shares it.
    return Path(os.environ.get("BEIT3_FLOPS_CACHE", PACKAGE_ROOT / "runs" / "flop_counts"))


def step_cost(cfg: TrainConfig) -> StepCost:
    """The FLOPs and samples of one optimizer step of one rank of ``cfg`` (cached)."""
    key = count_key(cfg)
    if key in _COUNTS:
        return _COUNTS[key]
    path = _cache_dir() / f"{key}.json"
    if path.is_file():
        cost = StepCost(**{k: v for k, v in json.loads(path.read_text()).items() if k in ("flops", "samples", "method")})
    else:
        cost = _count_on_world(cfg) if _on_world(cfg) else _count_by_proxy(cfg)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**dataclasses.asdict(cost), "task": cfg.task, "model": cfg.model,
                                   "torch": torch.__version__}, indent=1))
        os.replace(tmp, path)
    _COUNTS[key] = cost
    return cost


def _on_world(cfg: TrainConfig) -> bool:
    root = cfg.data.get("root", "")
    return isinstance(root, str) and root.startswith("world:")


def step_flops(model: torch.nn.Module, batch: dict[str, Any], step_fn) -> int:
    """FLOPs of ``step_fn(model, batch)["loss"].backward()`` (``FlopCounterMode``); gradients are left unset."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        step_fn(model, batch)["loss"].backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _count_on_world(cfg: TrainConfig) -> StepCost:
    import tasks

    from .launch import resolve_data_root
    from .train import count_samples

    seed_everything(0)
    model = tasks.build_model(cfg.task, cfg.model, **cfg.model_overrides)
    if cfg.trainable:
        tasks.configure_trainable(cfg.task, model, cfg.trainable)
    data = tasks.build_data(cfg.task, resolve_data_root(cfg.data), model=model, seed=0)
    batch = data.next_batch()
    flops = step_flops(model, batch, tasks.training_step(cfg.task, cfg.forward_kwargs))
    return StepCost(flops * cfg.grad_accum_steps, count_samples(batch, data) * cfg.grad_accum_steps, "exact")


def _streams(cfg: TrainConfig) -> dict[str, int]:
    """Samples per stream of one step of a pretraining config."""
    from tasks.pretrain_data import DATA_DEFAULTS, STREAMS

    data = {**DATA_DEFAULTS, **cfg.data}
    if cfg.task == "pretrain_vlmo":
        from tasks.pretrain_vlmo import STAGE_STREAMS

        wanted = STAGE_STREAMS[int(str(data.get("stage", 3)).removeprefix("stage"))]
    else:
        wanted = tuple(data.get("streams") or STREAMS)
    size = data["batch_size"]
    if isinstance(size, dict):
        return {s: int(size.get(s, 0)) for s in wanted}
    return {s: int(size) * int(m) for s, m in zip(STREAMS, data["mixture"]) if s in wanted}


def expected_batch(cfg: TrainConfig, backbone_config: Any, samples: int) -> dict[str, torch.Tensor]:
    """``samples`` of each stream of ``cfg`` with the config's shapes: texts at full length, ``round(p·n)``
    masked text tokens and image patches (see the module docstring)."""
    from tasks.pretrain_data import DATA_DEFAULTS
    from tasks.pretrain_mdm import IGNORE_INDEX

    data = {**DATA_DEFAULTS, **cfg.data}
    height, width = backbone_config.image_hw
    patches = backbone_config.grid_size[0] * backbone_config.grid_size[1]
    token = 5  # any ordinary (non-special) id

    def text(length: int, prob: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = torch.full((samples, length), token, dtype=torch.long)
        labels = torch.full((samples, length), IGNORE_INDEX, dtype=torch.long)
        labels[:, 1:1 + round(prob * (length - 2))] = token  # <s> and </s> are never masked
        return ids, torch.zeros(samples, length, dtype=torch.long), labels

    def image_mask(ratio: float) -> torch.Tensor:
        mask = torch.zeros(samples, patches, dtype=torch.bool)
        mask[:, :round(ratio * patches)] = True
        return mask

    batch: dict[str, torch.Tensor] = {"model_seed": torch.tensor(0)}
    streams = _streams(cfg)
    if "image" in streams:
        batch.update(image=torch.zeros(samples, 3, height, width), image_mask=image_mask(data["image_mask_ratio"]),
                     image_codes=torch.zeros(samples, patches, dtype=torch.long))
    if "text" in streams:
        ids, padding, labels = text(data["max_text_len"], data["text_mask_prob"])
        batch.update(text_ids=ids, text_padding_mask=padding, text_labels=labels)
    if "pair" in streams:
        ids, padding, labels = text(data["max_pair_text_len"], data["pair_mask_prob"])
        batch.update(pair_image=torch.zeros(samples, 3, height, width), pair_text_ids=ids,
                     pair_padding_mask=padding, pair_text_labels=labels)
        if data["pair_image_mask_ratio"] > 0:
            batch.update(pair_image_mask=image_mask(data["pair_image_mask_ratio"]),
                         pair_image_codes=torch.zeros(samples, patches, dtype=torch.long))
    return batch


def _proxy_sizes(embed_dim: int, ffn_dim: int, num_heads: int) -> tuple[Fraction, Fraction]:
    """Two width factors ``s < 1`` with ``s·D`` and ``s·F`` integers and ``s·D`` divisible by the heads."""
    unit = math.gcd(embed_dim, ffn_dim)
    step = num_heads // math.gcd(num_heads, embed_dim // unit)
    return Fraction(step, unit), Fraction(2 * step, unit)


def _count_by_proxy(cfg: TrainConfig) -> StepCost:
    """The module docstring's proxy: four narrow, shallow copies on the expected batch, extrapolated."""
    import tasks

    with torch.device("meta"):
        full = tasks.build_model(cfg.task, cfg.model, **cfg.model_overrides).config
    streams = _streams(cfg)
    if cfg.task not in ("pretrain_mdm", "pretrain_vlmo"):
        raise NotImplementedError(f"{cfg.run_name or cfg.task}: FLOPs off a benchmark world are counted for the "
                                  "pretraining tasks only (their expected batch follows from the config)")
    if len(set(streams.values())) != 1:
        raise NotImplementedError(f"{cfg.run_name}: the proxy needs one batch size for every stream, got {streams}")
    depths = (full.vl_ffn_layers + 1, full.vl_ffn_layers + 2)
    widths = _proxy_sizes(full.embed_dim, full.ffn_dim, full.num_heads)
    if widths[1] >= 1 or depths[1] >= full.depth:
        raise NotImplementedError(f"{cfg.model} is small enough to count on a benchmark world; the proxy is for large models")
    step_fn = tasks.training_step(cfg.task, cfg.forward_kwargs)
    counts: dict[tuple[int, Fraction], int] = {}
    for depth in depths:
        for s in widths:
            overrides = {**cfg.model_overrides, "depth": depth, "embed_dim": int(s * full.embed_dim),
                         "ffn_dim": int(s * full.ffn_dim), "vl_ffn_layers": full.vl_ffn_layers,
                         "layout": full.layout, "img_size": full.img_size, "vocab_size": full.vocab_size}
            seed_everything(0)
            model = tasks.build_model(cfg.task, cfg.model, **overrides)
            if cfg.trainable:
                tasks.configure_trainable(cfg.task, model, cfg.trainable)
            counts[depth, s] = step_flops(model, expected_batch(cfg, model.config, _PROXY_SAMPLES), step_fn)
    # flops(depth, s) = A(depth)·s² + B(depth)·s, with A and B affine in the depth.
    coefficients = {}
    s1, s2 = widths
    for depth in depths:
        f1, f2 = Fraction(counts[depth, s1]), Fraction(counts[depth, s2])
        a = (f2 / s2 - f1 / s1) / (s2 - s1)
        coefficients[depth] = (a, f1 / s1 - a * s1)
    (a1, b1), (a2, b2) = coefficients[depths[0]], coefficients[depths[1]]
    extra = full.depth - depths[0]
    per_sample = (a1 + (a2 - a1) * extra) + (b1 + (b2 - b1) * extra)
    per_stream = next(iter(streams.values()))
    flops = round(per_sample * Fraction(per_stream, _PROXY_SAMPLES)) * cfg.grad_accum_steps
    return StepCost(flops, sum(streams.values()) * cfg.grad_accum_steps, "proxy")


# ----------------------------------------------------------------------------- budgets
def run_cost(cfg: TrainConfig, world_size: int = 1) -> tuple[int, int, str]:
    """``(samples, flops, method)`` of the whole run ``cfg`` on ``world_size`` ranks."""
    cost = step_cost(cfg)
    return cost.samples * cfg.max_steps * world_size, cost.flops * cfg.max_steps * world_size, cost.method


def budget_of(ablation: Sequence[tuple[str, Any]]) -> str:
    return dict(ablation).get("budget", DEFAULT_BUDGET)


def schedule_recipe(recipe: str, stages: list[TrainConfig], own: list[TrainConfig], profile: Any,
                    reference: list[TrainConfig], budget: str = DEFAULT_BUDGET) -> list[TrainConfig]:
    """``stages`` of ``recipe`` (scaled by ``profile``, ablated) with their schedules set by ``budget``.

    Args:
        stages: the recipe's configs as the profile and the ablation made them.
        own: the same stages as their config files write them (their own steps, lr, warmup).
        profile: the profile (``pretrain`` overrides, ``budget_tolerance``).
        reference: the reference recipe's (BEiT-3 MDM) scaled configs: the budget to match.
        budget: ``flops``, ``samples`` or ``steps``.

    Raises:
        BudgetError: the integer steps miss the reference's FLOPs by more than the profile's tolerance.
    """
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    scaled = profile.pretrain
    mdm_own = load_train_config(REFERENCE_CONFIG)
    lr_factor = reference[0].lr / mdm_own.lr
    min_lr_factor = reference[0].min_lr / mdm_own.min_lr
    ratios = [cfg.max_steps for cfg in own]
    if recipe == REFERENCE_RECIPE:
        steps = [cfg.max_steps for cfg in stages]
    else:
        if budget == "steps":
            weights, target = [1] * len(stages), sum(c.max_steps for c in reference)
        elif budget == "samples":
            weights = [step_cost(c).samples for c in stages]
            target = sum(step_cost(c).samples * c.max_steps for c in reference)
        else:
            weights = [step_cost(c).flops for c in stages]
            target = sum(step_cost(c).flops * c.max_steps for c in reference)
        factor = target / sum(r * w for r, w in zip(ratios, weights))
        steps = [max(1, round(factor * r)) for r in ratios]
    out = []
    for cfg, own_cfg, n in zip(stages, own, steps):
        if recipe == REFERENCE_RECIPE:  # the reference keeps the schedule the profile (and ablation) gave it
            out.append(dataclasses.replace(cfg, lr=own_cfg.lr * lr_factor, min_lr=own_cfg.min_lr * min_lr_factor))
            continue
        if "warmup_steps" in scaled:
            warmup = round(n * scaled["warmup_steps"] / scaled["max_steps"])
        else:
            warmup = round(n * own_cfg.warmup_steps / own_cfg.max_steps)
        if "ckpt_interval" in scaled:
            ckpt = max(1, round(n * cfg.ckpt_interval / cfg.max_steps))
        else:
            ckpt = min(own_cfg.ckpt_interval, n)
        out.append(dataclasses.replace(cfg, max_steps=n, warmup_steps=min(warmup, n), ckpt_interval=ckpt,
                                       lr=own_cfg.lr * lr_factor, min_lr=own_cfg.min_lr * min_lr_factor))
    if budget == "flops" and recipe != REFERENCE_RECIPE:
        check_flops(recipe, out, reference, profile)
    return out


def check_flops(recipe: str, stages: list[TrainConfig], reference: list[TrainConfig], profile: Any) -> float:
    """The ratio of ``recipe``'s pretraining FLOPs to the reference's; raises BudgetError beyond the tolerance."""
    ratio = sum(step_cost(c).flops * c.max_steps for c in stages) / sum(step_cost(c).flops * c.max_steps for c in reference)
    tolerance = profile.budget_tolerance
    if abs(ratio - 1) > tolerance:
        raise BudgetError(
            f"profile {profile.name}: {recipe}'s stages ({', '.join(str(c.max_steps) for c in stages)} steps) give "
            f"{ratio:.3f}x the FLOPs of {REFERENCE_RECIPE}'s {sum(c.max_steps for c in reference)} steps, beyond the "
            f"profile's budget_tolerance {tolerance}: give the profile more pretraining steps (max_steps)"
        )
    return ratio


def gpu_hours(flops: float, utilisation: float = UTILISATION, peak: float = PEAK_FLOPS_PER_S) -> float:
    """Accelerator-hours that ``flops`` take at ``utilisation`` of ``peak`` FLOP/s."""
    return flops / (peak * utilisation) / 3600.0


def plan_costs(profile: Any, seeds: int, recipes: Sequence[str], ablation: Sequence[tuple[str, Any]] = (),
               world_size: int = 1, tracking_uri: str | None = None) -> list[RunCost]:
    """Every pretraining run of ``recipes`` x ``seeds``: recipe, seed, stage, optimizer steps, samples and
    FLOPs (on ``world_size`` ranks), and with ``tracking_uri`` the wall time of its FINISHED MLflow run."""
    from .config import train_config_hash
    from .experiments import RECIPES, recipe_configs
    from .tracking import find_finished_run

    costs = []
    for recipe in (r for r in RECIPES if r in recipes):
        for seed in range(seeds):
            for cfg in recipe_configs(recipe, profile, seed, tuple(ablation)):
                samples, flops, method = run_cost(cfg, world_size)
                wall = None
                if tracking_uri is not None:
                    run = find_finished_run(cfg.experiment, train_config_hash(cfg), tracking_uri=tracking_uri)
                    wall = None if run is None else run.data.metrics.get("wall_time_s")
                stage = cfg.trainable or "mdm"
                costs.append(RunCost(recipe, seed, stage, cfg.run_name, train_config_hash(cfg), cfg.max_steps,
                                     samples, flops, method, wall))
    return costs
