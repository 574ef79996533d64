"""Reading official BEiT-3 checkpoints into our models, strictly.

``read_state_dict`` unwraps ``{'model': ...}`` / ``{'module': ...}`` / raw state dicts loaded with
``torch.load(weights_only=True)``; ``adapt_state_dict`` is the pure filter (drop keys the caller names,
resize the vision position table to the model's patch grid); ``load_checkpoint`` loads strictly and
fails with one error that names every missing and unexpected key and every shape mismatch.
"""
from __future__ import annotations

import fnmatch
import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .beit3 import BEiT3, resize_vision_pos_table

StateDict = dict[str, torch.Tensor]
WRAPPER_KEYS = ("model", "module", "state_dict")
VISION_POS_SUFFIX = "encoder.embed_positions.A.weight"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


@dataclass
class KeyReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        lines = []
        if self.missing:
            lines.append(f"{len(self.missing)} missing key(s) (in the model, not in the checkpoint):")
            lines += [f"  {key}" for key in self.missing]
        if self.unexpected:
            lines.append(f"{len(self.unexpected)} unexpected key(s) (in the checkpoint, not in the model):")
            lines += [f"  {key}" for key in self.unexpected]
        if self.mismatched:
            lines.append(f"{len(self.mismatched)} shape mismatch(es) (key: expected shape, found shape):")
            lines += [f"  {key}: expected {list(want)}, found {list(got)}" for key, want, got in self.mismatched]
        return "\n".join(lines)


def read_state_dict(source: str | os.PathLike | Mapping, model_key: str | None = None) -> StateDict:
    """Load a checkpoint file (or take a mapping) and return its state dict.

    Args:
        source: a ``.pth`` path or an already loaded mapping.
        model_key: the entry holding the weights (``model``, ``module``, ...); by default the first
            of ``model``, ``module``, ``state_dict`` present, else the mapping itself.
    """
    name = "<state dict>"
    if isinstance(source, (str, os.PathLike)):
        name = str(source)
        if not Path(source).is_file():
            raise FileNotFoundError(f"checkpoint {name} does not exist")
        try:
            obj = torch.load(source, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
            raise CheckpointError(
                f"checkpoint {name} cannot be read with torch.load(weights_only=True): {error}. "
                "Is it a complete PyTorch checkpoint of tensors?"
            ) from error
    else:
        obj = source
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {name} holds a {type(obj).__name__}, not a state dict")
    if model_key is not None:
        if model_key not in obj:
            raise CheckpointError(f"checkpoint {name} has no entry {model_key!r}; entries: {', '.join(map(str, obj))}")
        obj = obj[model_key]
    else:
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    bad = [key for key, value in obj.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise CheckpointError(f"checkpoint {name}: entries that are not tensors: {', '.join(map(str, bad[:20]))}")
    return dict(obj)


def adapt_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model: nn.Module,
    drop: Sequence[str] = (),
    interpolate_pos: bool = True,
) -> StateDict:
    """Pure filter: drop keys matching the ``drop`` fnmatch patterns, resize vision position tables.

    Args:
        drop: patterns of checkpoint keys to discard, e.g. ``("head.*",)`` to re-initialise a head,
            or ``("mlm_head.*", "mim_head.*")`` for a pretraining checkpoint loaded as a backbone.
        interpolate_pos: resize ``*encoder.embed_positions.A.weight`` bicubically to the model's patch
            grid (first 3 rows kept); when False a size change is reported as a shape mismatch.
    """
    out = {key: value for key, value in state_dict.items() if not _matches(key, drop)}
    if not interpolate_pos:
        return out
    for key, table in out.items():
        if not key.endswith(VISION_POS_SUFFIX):
            continue
        owner = _owner_beit3(model, key)
        if owner is None or table.shape[0] == owner.encoder.embed_positions.A.num_embeddings:
            continue
        out[key] = resize_vision_pos_table(table, owner.config.grid_size)
    return out


def _owner_beit3(model: nn.Module, key: str) -> BEiT3 | None:
    prefix = key[: -len(VISION_POS_SUFFIX)].rstrip(".")
    try:
        module = model.get_submodule(prefix) if prefix else model
    except AttributeError:
        return None
    return module if isinstance(module, BEiT3) else None


def compare_keys(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> KeyReport:
    expected = model.state_dict()
    report = KeyReport(
        missing=[key for key in expected if key not in state_dict],
        unexpected=[key for key in state_dict if key not in expected],
    )
    for key, value in state_dict.items():
        if key in expected and tuple(expected[key].shape) != tuple(value.shape):
            report.mismatched.append((key, tuple(expected[key].shape), tuple(value.shape)))
    return report


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def load_checkpoint(
    model: nn.Module,
    source: str | os.PathLike | Mapping,
    *,
    model_key: str | None = None,
    drop: Sequence[str] = (),
    interpolate_pos: bool = True,
    rename: Mapping[str, str] | None = None,
) -> nn.Module:
    """Load an official (or our own) checkpoint into ``model`` strictly.

    ``drop`` names keys (fnmatch patterns) that are not loaded: they are removed from the checkpoint,
    and the model's own matching keys keep their initialisation -- ``drop=["head.*"]`` re-initialises a
    head of another size, ``drop=["mlm_head.*", "mim_head.*"]`` loads a pretraining checkpoint as a
    backbone. Every other key must match exactly. ``rename`` maps checkpoint keys to the model's
    before ``drop`` applies: ``{"itc_vision_head.weight": "vision_head.weight"}`` starts a retrieval head
    from a pretraining head.

    Raises:
        CheckpointError: naming every missing/unexpected key and every shape mismatch.
    """
    state_dict = read_state_dict(source, model_key)
    if rename:
        absent = sorted(set(rename) - set(state_dict))
        if absent:
            raise CheckpointError(f"{source if isinstance(source, (str, os.PathLike)) else 'the given state dict'} "
                                  f"has no key(s) {', '.join(absent)} to rename; check rename=...")
        state_dict = {rename.get(key, key): value for key, value in state_dict.items()}
    state_dict = adapt_state_dict(state_dict, model, drop, interpolate_pos)
    report = compare_keys(model, state_dict)
    report.missing = [key for key in report.missing if not _matches(key, drop)]
    if not report.ok:
        name = str(source) if isinstance(source, (str, os.PathLike)) else "the given state dict"
        raise CheckpointError(
            f"{name} does not fit {type(model).__name__}:\n{report.describe()}\n"
            "Check the model name/size/img_size, pass drop=[...] for keys to re-initialise "
            "(e.g. drop=['head.*'] for a head of another size), or interpolate_pos=True for another image size."
        )
    model.load_state_dict(state_dict, strict=not drop)
    return model
