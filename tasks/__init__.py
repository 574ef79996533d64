"""Tasks: one file per task (its heads, loss, data, metric, recipes), one registry.

>>> import tasks
>>> tasks.list_tasks()
>>> spec = tasks.get_task("vqav2")
>>> model = spec.build_model("beit3_base_patch16_480", num_classes=3129)

Every module of this package that defines ``SPEC`` (a :class:`tasks.spec.TaskSpec`) is a task; the
modules are found and imported on the first registry use, so ``import tasks`` stays light and adding
a task is adding its file. ``build_model``, ``build_data``, ``training_step`` and
``configure_trainable`` are doors over the spec, kept for the trainer.
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from types import ModuleType
from typing import Any

from torch import nn

from tasks.spec import EvalResult, MetricSpec, TaskSpec

__all__ = ["EvalResult", "MetricSpec", "TaskSpec", "UnknownTaskError", "build_data", "build_model",
           "configure_trainable", "get_task", "list_tasks", "task_module", "training_step"]

# Modules of the package that hold shared code, not a task (skipped by discovery).
_SHARED_MODULES = frozenset({"spec", "finetune_data", "heads", "distributed", "pretrain_data"})
_REGISTRY: dict[str, tuple[TaskSpec, ModuleType]] = {}


class UnknownTaskError(ValueError):
    pass


def _registry() -> dict[str, tuple[TaskSpec, ModuleType]]:
    if not _REGISTRY:
        found = {}
        for info in pkgutil.iter_modules(__path__):
            if info.ispkg or info.name in _SHARED_MODULES or info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            spec = getattr(module, "SPEC", None)
            if not isinstance(spec, TaskSpec):
                continue
            if spec.name in found:
                raise KeyError(f"task {spec.name!r} is defined twice: {found[spec.name][1].__name__} and {module.__name__}")
            found[spec.name] = (spec, module)
        _REGISTRY.update(found)
    return _REGISTRY


def list_tasks() -> list[str]:
    """Every task's name, sorted."""
    return sorted(_registry())


def _entry(task: str) -> tuple[TaskSpec, ModuleType]:
    registry = _registry()
    if task not in registry:
        close = difflib.get_close_matches(task, registry, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownTaskError(f"unknown task {task!r}.{hint} Known tasks: {', '.join(sorted(registry))}")
    return registry[task]


def get_task(task: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``task``.

    Raises:
        UnknownTaskError: no such task (close names suggested).
    """
    return _entry(task)[0]


def task_module(task: str) -> ModuleType:
    """The module that defines ``task`` (for its docstring and task-specific helpers)."""
    return _entry(task)[1]


def build_model(task: str, model_name: str, **overrides: Any) -> nn.Module:
    """Build the model of ``task`` on the backbone ``model_name`` (``backbones.list_models()``)."""
    return get_task(task).build_model(model_name, **overrides)


def build_data(task: str, data_config: dict, **kwargs: Any):
    """The task's training batches: ``spec.build_data(data_config, model=, seed=, rank=, world_size=)``."""
    return get_task(task).build_data(data_config, **kwargs)


def configure_trainable(task: str, model: nn.Module, selection: str) -> list[str]:
    """Freeze all but a named selection of parameters (e.g. a VLMo stage); returns the trainable names."""
    spec = get_task(task)
    if spec.configure_trainable is None:
        raise ValueError(f"task {task!r} has no trainable selections (asked for {selection!r}); drop 'trainable'")
    return spec.configure_trainable(model, selection)


def training_step(task: str, forward_kwargs: dict | None = None):
    """``fn(model, batch) -> {"loss", ...}`` for the trainer: the task's ``training_step`` if it has one
    (tasks whose official forward returns logits), else ``model(batch, **forward_kwargs)``."""
    step = get_task(task).training_step
    kwargs = dict(forward_kwargs or {})
    if step is not None:
        return lambda model, batch: step(model, batch, **kwargs)
    return lambda model, batch: model(batch, **kwargs)
