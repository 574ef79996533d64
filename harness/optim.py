"""AdamW parameter groups (weight-decay exclusions, layer-wise lr decay) and the lr schedule."""
from __future__ import annotations

import math

import torch
from torch import nn

from backbones import layer_id_for_lr_decay, no_weight_decay_names


def _no_weight_decay(name: str, param: torch.Tensor, exempt: set[str]) -> bool:
    # Biases and norms (1-d), position tables, cls token and logit scale are not decayed.
    return param.ndim <= 1 or name.endswith(".bias") or name in exempt or "embed_positions" in name


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float = 1.0,
    num_layers: int | None = None,
    head_lr_scale: float = 1.0,
) -> list[dict]:
    """Groups keyed by (decay?, layer id), each with an ``lr_scale`` the schedule multiplies in.

    Layer ids follow the official rule (embeddings 0, ``layers.i`` i+1, the rest L+1) and the scale
    is ``layer_decay ** (L + 1 - id)``. As the official code, ``head_lr_scale`` applies only when
    ``layer_decay == 1``, to names starting with ``head``.
    """
    if num_layers is None:
        num_layers = getattr(model, "get_num_layers", lambda: 0)() or _count_layers(model)
    exempt = no_weight_decay_names(model) | set(getattr(model, "no_weight_decay", lambda: set())())
    groups: dict[tuple[bool, int], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not _no_weight_decay(name, param, exempt)
        layer_id = layer_id_for_lr_decay(name, num_layers)
        scale = layer_decay ** (num_layers + 1 - layer_id)
        if layer_decay == 1.0 and head_lr_scale != 1.0 and name.startswith("head"):
            scale, layer_id = head_lr_scale, -1
        group = groups.setdefault((decay, layer_id), {
            "params": [], "names": [], "weight_decay": weight_decay if decay else 0.0, "lr_scale": scale,
        })
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def _count_layers(model: nn.Module) -> int:
    ids = {layer_id_for_lr_decay(name, 10**6) for name, _ in model.named_parameters()}
    return max((i for i in ids if i < 10**6 + 1), default=0)


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple, eps: float,
                    layer_decay: float = 1.0, head_lr_scale: float = 1.0) -> torch.optim.AdamW:
    groups = param_groups(model, weight_decay, layer_decay, head_lr_scale=head_lr_scale)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    optimizer_groups = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    return torch.optim.AdamW(optimizer_groups, lr=lr, betas=tuple(betas), eps=eps)


def lr_at(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup from 0 (as the official code) for ``warmup_steps``, then cosine to ``min_lr``."""
    if step < warmup_steps:
        return lr * step / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_scale", 1.0)


class WarmupCosineSchedule:
    """The learning rate of every optimizer step (``lr_at``), applied to each group times its ``lr_scale``.

    Its state -- the step it is at and the curve's parameters -- goes into every checkpoint; resuming
    under another curve is refused, since the rest of the run would follow a schedule it never had.

    Args:
        optimizer: the optimizer whose groups it sets.
        lr: peak learning rate, reached after ``warmup_steps``.
        min_lr: the cosine's floor, reached at ``max_steps``.
        warmup_steps: linear warmup from 0.
        max_steps: the run's length in optimizer steps.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, lr: float, min_lr: float, warmup_steps: int, max_steps: int):
        self.optimizer = optimizer
        self.curve = {"lr": float(lr), "min_lr": float(min_lr), "warmup_steps": int(warmup_steps),
                      "max_steps": int(max_steps)}
        self.step_count = 0

    @property
    def lr(self) -> float:
        """The base learning rate of the next optimizer step."""
        return lr_at(self.step_count, **self.curve)

    def apply(self) -> float:
        """Set the groups' learning rates for the next optimizer step; returns its base rate."""
        set_lr(self.optimizer, self.lr)
        return self.lr

    def step(self) -> None:
        self.step_count += 1

    def state_dict(self) -> dict:
        return {"step": self.step_count, **self.curve}

    def load_state_dict(self, state: dict) -> None:
        saved = {k: state.get(k) for k in self.curve}
        if saved != self.curve:
            differ = ", ".join(f"{k}: saved {saved[k]!r} vs now {v!r}" for k, v in self.curve.items() if saved[k] != v)
            raise ValueError(f"the saved lr schedule is another one ({differ})")
        self.step_count = int(state["step"])
