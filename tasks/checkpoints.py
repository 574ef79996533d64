"""Which task model a checkpoint holds, read from its keys and shapes, and that model rebuilt from it.

The official finetuned checkpoints (and the harness's own exports, ``{'model': state_dict}`` with the
same names) differ only in their heads; :data:`HEAD_LAYOUTS` lists each head's deciding keys and the
tasks that can score it. ``build_model_for_checkpoint`` reads the encoder's architecture
(:func:`backbones.inspect_checkpoint.inspect_backbone`) and the head's sizes, builds the task model and
loads the checkpoint strictly (no position-table resizing: the model takes the checkpoint's own
resolution, the one it was finetuned at).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import tasks
from backbones import CheckpointError, load_checkpoint
from backbones.inspect_checkpoint import BackboneArchitecture, inspect_backbone


@dataclass(frozen=True)
class HeadLayout:
    """The head of one kind of task checkpoint.

    Args:
        name: the layout's name (``vqav2``, ``retrieval``, ...).
        keys: the keys that must all be present (they decide the layout).
        tasks: the registry tasks that score a model of this layout, with the build options each needs.
        absent: keys that must not be present (a pretraining checkpoint also has ``mlm_head``).
    """

    name: str
    keys: tuple[str, ...]
    tasks: Mapping[str, Mapping[str, Any]]
    absent: tuple[str, ...] = ()

    def matches(self, state_dict: Mapping[str, torch.Tensor]) -> bool:
        return all(k in state_dict for k in self.keys) and not any(k in state_dict for k in self.absent)


HEAD_LAYOUTS: tuple[HeadLayout, ...] = (
    HeadLayout("vqav2", ("pooler.dense.weight", "head.3.weight"), {"vqav2": {}}),
    HeadLayout("nlvr2", ("head.dense1.weight", "head.dense2.weight"), {"nlvr2": {}}),
    HeadLayout("imagenet", ("fc_norm.weight", "head.weight"), {"imagenet": {"classifier": "linear"}}),
    # The dual encoder: retrieval finetunes, the released *_itc checkpoints, and ImageNet's class-name
    # retrieval classifier (the paper's), which has the same keys.
    HeadLayout("retrieval", ("vision_head.weight", "language_head.weight", "logit_scale"),
               {"retrieval": {}, "imagenet": {"classifier": "retrieval"}}),
    HeadLayout("captioning", ("mlm_head.weight", "mlm_head.bias"), {"captioning": {}}, absent=("mim_head.weight",)),
    HeadLayout("pretraining", ("mlm_head.weight", "mim_head.weight"), {}),
)
# The keys that tell layouts apart, named in errors.
DECIDING_KEYS = tuple(dict.fromkeys(k for layout in HEAD_LAYOUTS for k in layout.keys + layout.absent))


@dataclass(frozen=True)
class CheckpointModel:
    """A task model rebuilt from a checkpoint, with what was read to build it."""

    model: nn.Module
    task: str
    layout: str
    model_name: str
    model_overrides: dict[str, Any]
    architecture: BackboneArchitecture
    build_options: dict[str, Any] = field(default_factory=dict)


def identify_head(state_dict: Mapping[str, torch.Tensor]) -> HeadLayout | None:
    """The head layout of a state dict, or None for a bare encoder / unknown head."""
    return next((layout for layout in HEAD_LAYOUTS if layout.matches(state_dict)), None)


def _present(state_dict: Mapping[str, torch.Tensor]) -> str:
    found = [k for k in DECIDING_KEYS if k in state_dict]
    return ", ".join(found) if found else "none of " + ", ".join(DECIDING_KEYS)


def check_task(state_dict: Mapping[str, torch.Tensor], task: str, name: str = "the checkpoint") -> HeadLayout:
    """The head layout of ``state_dict`` if ``task`` can score it.

    Raises:
        CheckpointError: (one line) another task's checkpoint, a pretraining checkpoint or an unknown
            head, naming the keys that decided it.
    """
    layout = identify_head(state_dict)
    if layout is None:
        if not any(k.startswith("beit3.") for k in state_dict):
            raise CheckpointError(f"{name} is no BEiT-3 checkpoint: no beit3.* keys (first keys: "
                                  f"{', '.join(list(state_dict)[:5]) or 'none'})")
        raise CheckpointError(f"{name} has no task head the harness knows (head keys found: {_present(state_dict)}); "
                              f"a {task} checkpoint has {', '.join(_layouts_of(task))}")
    if task not in layout.tasks:
        if not layout.tasks:
            raise CheckpointError(f"{name} is a pretraining checkpoint (keys {', '.join(layout.keys)}), not a finetuned "
                                  f"{task} model: finetune it first (init_from it with python -m harness.train)")
        raise CheckpointError(f"{name} is a {layout.name} checkpoint (keys {', '.join(layout.keys)}), not a {task} one "
                              f"(which has {', '.join(_layouts_of(task))}); evaluate it as: {', '.join(layout.tasks)}")
    return layout


def _layouts_of(task: str) -> list[str]:
    return [" + ".join(layout.keys) for layout in HEAD_LAYOUTS if task in layout.tasks]


def _head_options(layout: HeadLayout, state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    if layout.name == "vqav2":
        return {"num_classes": int(state_dict["head.3.weight"].shape[0])}
    if layout.name == "nlvr2":
        return {"num_classes": int(state_dict["head.dense2.weight"].shape[0])}
    if layout.name == "imagenet":
        return {"num_classes": int(state_dict["head.weight"].shape[0])}
    return {}


def build_model_for_checkpoint(
    state_dict: Mapping[str, torch.Tensor], task: str, *, num_heads: int | None = None, name: str = "the checkpoint"
) -> CheckpointModel:
    """The ``task`` model that ``state_dict`` holds, built to its tensors' sizes and loaded strictly.

    Args:
        task: a registry task (``tasks.list_tasks()``).
        num_heads: attention heads (not recorded in a state dict); default 64-dimensional heads.
        name: how errors name the checkpoint (its path).

    Raises:
        CheckpointError: another task's or an unknown layout (one line, the deciding keys named), or
            tensors that do not fit the rebuilt model.
    """
    layout = check_task(state_dict, task, name)
    architecture = inspect_backbone(state_dict)
    options = {**layout.tasks[task], **_head_options(layout, state_dict)}
    overrides = architecture.model_overrides(num_heads)
    model_name = architecture.model_name()
    model = tasks.build_model(task, model_name, **overrides, **options)
    load_checkpoint(model, dict(state_dict), interpolate_pos=False)
    model.eval()
    return CheckpointModel(model, task, layout.name, model_name, overrides, architecture, options)
