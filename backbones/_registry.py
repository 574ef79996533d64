"""timm-style model registry: ``@register_model`` entry functions, ``create_model``, ``list_models``."""
from __future__ import annotations

import fnmatch
from typing import Any, Callable

from torch import nn

from .suggest import did_you_mean

_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered; the message lists close names."""


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    name = fn.__name__
    if name in _MODEL_ENTRYPOINTS:
        raise KeyError(f"model {name!r} is registered twice")
    _MODEL_ENTRYPOINTS[name] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching an fnmatch pattern, sorted."""
    return sorted(fnmatch.filter(_MODEL_ENTRYPOINTS, pattern))


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model; ``overrides`` replace its configuration fields.

    Example: ``create_model("beit3_base_patch16_224", layout="paper", drop_path_rate=0.1)``.
    """
    if name not in _MODEL_ENTRYPOINTS:
        raise UnknownModelError(
            f"unknown model {name!r}{did_you_mean(name, _MODEL_ENTRYPOINTS, n=5)}. Known models: {', '.join(list_models())}"
        )
    return _MODEL_ENTRYPOINTS[name](**overrides)
