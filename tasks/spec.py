"""The task contract (lm-evaluation-harness style): one typed spec per task, one registry.

A task module (one file under ``tasks/``) defines ``SPEC = TaskSpec(...)``; ``tasks.get_task(name)``
returns it and ``tasks.list_tasks()`` lists every task the package holds (modules are discovered,
not listed). Evaluation returns an :class:`EvalResult`: the aggregate metrics and a per-item frame
with one row per evaluated item, from which the exact aggregates are computed
(:func:`aggregate_items`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pandas as pd

# Columns every per-item frame carries; each metric adds the column its ``item_column`` names.
ITEM_COLUMNS = ("item_id", "cluster_id", "prediction")
# Model sizes a recipe table may name; smaller sizes (``tiny``) take the base recipe, which profiles scale.
RECIPE_SIZES = ("base", "large", "giant")


@dataclass(frozen=True)
class MetricSpec:
    """One metric of a task.

    Args:
        name: the key of the metric in :attr:`EvalResult.metrics` (e.g. ``vqa_accuracy``).
        scale: multiplier from the stored value to the displayed one (100 for a fraction shown in %).
        higher_is_better: the metric's direction.
        primary: the metric a table leads with (one per task).
        item_column: the per-item frame's column whose mean is this metric (before ``scale``), or
            ``None`` for a metric that has no per-item form.
        exact: whether that mean equals the official aggregate (``False``: a stated per-item
            approximation, e.g. per-image BLEU against corpus BLEU).
        ndigits: the official aggregate's rounding (VQA reports ``round(100 * mean, 2)``), or ``None``.
    """

    name: str
    scale: float = 1.0
    higher_is_better: bool = True
    primary: bool = False
    item_column: str | None = None
    exact: bool = True
    ndigits: int | None = None


@dataclass
class EvalResult:
    """What one evaluation of one split returns.

    Args:
        metrics: aggregate metrics in stored units (``MetricSpec.scale`` not applied).
        items: one row per evaluated item: ``item_id``, ``cluster_id``, ``prediction`` and the
            per-item score columns of the task's metrics.
    """

    metrics: dict[str, float]
    items: pd.DataFrame


def aggregate_items(metrics: tuple[MetricSpec, ...], items: pd.DataFrame) -> dict[str, float]:
    """The exact metrics as means of their item columns (rows without a value, e.g. the other
    direction of a retrieval frame, are left out), rounded as the official scorer rounds."""
    out: dict[str, float] = {}
    for metric in metrics:
        if not metric.exact or metric.item_column is None or metric.item_column not in items:
            continue
        values = items[metric.item_column].dropna()
        if values.empty:
            continue
        mean = float(values.mean())
        out[metric.name] = round(mean, metric.ndigits) if metric.ndigits is not None else mean
    return out


@dataclass(frozen=True)
class TaskSpec:
    """Everything the harness knows of one task; no per-task branch lives outside the task's file.

    Args:
        name: the registry name (``vqav2``, ``nlvr2``, ...).
        recipes: the official finetuning recipe per model size (``base``, ``large``, ``giant``; the
            giant one complete, the paper's values over the base recipe's remaining fields).
        data_defaults: the data config keys the task reads, with their defaults.
        eval_splits: the splits the task is scored on (the world and the real data name them alike).
        metrics: the task's metrics; exactly one is ``primary`` (none for pretraining tasks).
        build_model: ``(model_name, **overrides) -> nn.Module``.
        build_data: ``(data_config, *, model, seed, rank, world_size) -> batch source``.
        build_eval: ``(data_config, split, *, model) -> dataset`` of the items :attr:`evaluate` scores.
        evaluate: ``(model, data_config, *, split, limit=None, batch_size=..., device=...) -> EvalResult``.
        training_step: ``(model, batch, **forward_kwargs) -> {"loss", ...}`` for tasks whose model
            returns logits; ``None``: the model's forward returns that dict.
        configure_trainable: ``(model, selection) -> trainable names`` (e.g. a VLMo stage), or ``None``.
        variant_recipes: ``(variant) -> {size: recipe}`` for data variants with recipes of their own
            (retrieval's Flickr30K and the ITC stage), ``None`` where the variant does not change it.
        head_overrides: ``(data_config, *, model_overrides, synthetic, official) -> overrides`` of the
            head sizes the task takes from its data (a world's answer or class count; the official
            ones on real data), ``None`` where the head does not depend on the data.
        text_baseline: ``(data_config, *, split) -> EvalResult`` of the strongest blind baseline the task
            fits on its train split (no image, no model), scored like ``evaluate`` on ``split``; ``None``
            where the task has none.
    """

    name: str
    build_model: Callable[..., Any]
    build_data: Callable[..., Any]
    recipes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    data_defaults: Mapping[str, Any] = field(default_factory=dict)
    eval_splits: tuple[str, ...] = ()
    metrics: tuple[MetricSpec, ...] = ()
    build_eval: Callable[..., Any] | None = None
    evaluate: Callable[..., EvalResult] | None = None
    training_step: Callable[..., Any] | None = None
    configure_trainable: Callable[..., Any] | None = None
    variant_recipes: Callable[[Mapping[str, Any]], Mapping[str, Mapping[str, Any]] | None] | None = None
    head_overrides: Callable[..., dict[str, Any]] | None = None
    text_baseline: Callable[..., EvalResult] | None = None

    def __post_init__(self) -> None:
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(f"task {self.name!r}: metric names repeat: {names}")
        primaries = [m.name for m in self.metrics if m.primary]
        if self.metrics and len(primaries) != 1:
            raise ValueError(f"task {self.name!r} needs exactly one primary metric, has {primaries or 'none'}")
        if self.evaluate is not None and not (self.metrics and self.eval_splits):
            raise ValueError(f"task {self.name!r} evaluates, so it needs metrics and eval_splits")

    @property
    def finetunes(self) -> bool:
        """Whether the task is scored (a finetuning task) rather than only trained (pretraining)."""
        return self.evaluate is not None

    def metric(self, name: str) -> MetricSpec:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(f"task {self.name!r} has no metric {name!r} (its metrics: {[m.name for m in self.metrics]})")

    @property
    def primary_metric(self) -> MetricSpec:
        return next(m for m in self.metrics if m.primary)

    def recipe(self, size: str = "base", variant: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The official recipe of a ``size`` model (sizes below base take base's) for ``variant``."""
        table = self.variant_recipes(variant or {}) if self.variant_recipes is not None else None
        table = self.recipes if table is None else table
        if not table:
            raise KeyError(f"task {self.name!r} has no official finetuning recipe")
        return dict(table[size] if size in table else table["base"])

    def aggregate(self, items: pd.DataFrame) -> dict[str, float]:
        """The task's exact metrics computed from a per-item frame (see :func:`aggregate_items`)."""
        return aggregate_items(self.metrics, items)


def giant_recipe(base: Mapping[str, Any], paper: Mapping[str, Any]) -> dict[str, Any]:
    """The paper's giant recipe over the base recipe's remaining fields (head lr multiplier, text
    length, RandAugment); a schedule the paper gives in steps drops the base's epochs."""
    merged = dict(base)
    if "steps" in paper:
        merged = {k: v for k, v in merged.items() if k not in ("epochs", "warmup_epochs")}
    return {**merged, **paper}

