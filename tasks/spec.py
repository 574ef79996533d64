"""The task contract (lm-evaluation-harness style): one typed spec per task, one registry.

A task module defines ``SPEC = TaskSpec(...)`` and registers it with ``register(SPEC)``;
``tasks.get_task(name)`` returns it and ``tasks.list_tasks()`` lists every registered name.
Evaluation returns an :class:`EvalResult`: the aggregate metrics and a per-item frame with one row
per evaluated item, from which the aggregates are computed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import pandas as pd

# Columns every per-item frame carries; each metric adds the column its ``item_column`` names.
ITEM_COLUMNS = ("item_id", "cluster_id", "prediction")


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
    """

    name: str
    scale: float = 1.0
    higher_is_better: bool = True
    primary: bool = False
    item_column: str | None = None
    exact: bool = True


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


@dataclass(frozen=True)
class TaskSpec:
    """Everything the harness knows of one task; no per-task branch lives outside the task's file.

    Args:
        name: the registry name (``vqav2``, ``nlvr2``, ...).
        recipes: the official finetuning recipe per model size (``base``, ``large``, ``giant``).
        data_defaults: the data config keys the task reads, with their defaults.
        eval_splits: the splits the task is scored on (the world and the real data name them alike).
        metrics: the task's metrics; exactly one is ``primary`` (none for pretraining tasks).
        build_model: ``(model_name, **overrides) -> nn.Module``.
        build_data: ``(data_config, *, model, seed, rank, world_size) -> batch source``.
        build_eval: ``(data_config, split, *, model) -> dataset`` of the items :attr:`evaluate` scores.
        evaluate: ``(model, data_config, *, split, limit=None, batch_size=..., device=...) -> EvalResult``.
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

    def metric(self, name: str) -> MetricSpec:
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise KeyError(f"task {self.name!r} has no metric {name!r} (its metrics: {[m.name for m in self.metrics]})")

    @property
    def primary_metric(self) -> MetricSpec:
        return next(m for m in self.metrics if m.primary)
