"""Tasks: one file per task (its heads, loss, data, metric, recipe defaults), one door in.

>>> import tasks
>>> model = tasks.build_model("vqav2", "beit3_base_patch16_480", num_classes=3129)
>>> tasks.list_tasks()

Each task module registers a builder with ``@register_task(name)``; ``build_model`` creates the
backbone with ``backbones.create_model(model_name, **backbone_overrides)`` and wraps it in the task's
head(s), keeping the official class's forward arguments and state-dict names.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from torch import nn

from backbones.suggest import did_you_mean

_TASK_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
# Task name -> module that registers it (imported on first use, so `import tasks` stays light).
_TASK_MODULES = {
    "vqav2": "tasks.vqav2",
    "nlvr2": "tasks.nlvr2",
    "captioning": "tasks.captioning",
    "retrieval": "tasks.retrieval",
    "imagenet": "tasks.imagenet",
    "pretrain_mdm": "tasks.pretrain_mdm",
    "pretrain_vlmo": "tasks.pretrain_vlmo",
}


class UnknownTaskError(ValueError):
    pass


def register_task(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _TASK_BUILDERS:
            raise KeyError(f"task {name!r} is registered twice")
        _TASK_BUILDERS[name] = builder
        return builder

    return decorator


def list_tasks() -> list[str]:
    return sorted(_TASK_MODULES)


def build_model(task: str, model_name: str, **overrides: Any) -> nn.Module:
    """Build the model of ``task`` on the backbone ``model_name`` (``backbones.list_models()``)."""
    if task not in _TASK_MODULES:
        raise UnknownTaskError(f"unknown task {task!r}{did_you_mean(task, _TASK_MODULES)}. Known tasks: {', '.join(list_tasks())}")
    if task not in _TASK_BUILDERS:
        importlib.import_module(_TASK_MODULES[task])
    return _TASK_BUILDERS[task](model_name, **overrides)


def task_module(task: str):
    """The module of ``task`` (imported on first use)."""
    if task not in _TASK_MODULES:
        build_model(task, "")  # raises UnknownTaskError with close names
    return importlib.import_module(_TASK_MODULES[task])


def build_data(task: str, data_config: dict, **kwargs: Any):
    """The task's training batches: ``module.build_data(data_config, model=, seed=, rank=, world_size=)``."""
    return task_module(task).build_data(data_config, **kwargs)


def configure_trainable(task: str, model: nn.Module, selection: str) -> list[str]:
    """Freeze all but a named selection of parameters (e.g. a VLMo stage); returns the trainable names."""
    return task_module(task).configure_trainable(model, selection)


def training_step(task: str, forward_kwargs: dict | None = None):
    """``fn(model, batch) -> {"loss", ...}`` for the trainer: the task's ``training_step`` if it has one
    (tasks whose official forward returns logits), else ``model(batch, **forward_kwargs)``."""
    module = task_module(task)
    kwargs = dict(forward_kwargs or {})
    if hasattr(module, "training_step"):
        return lambda model, batch: module.training_step(model, batch, **kwargs)
    return lambda model, batch: model(batch, **kwargs)
