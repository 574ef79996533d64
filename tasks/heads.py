"""Pieces shared by the fine-tuning task models (unilm ``beit3/modeling_finetune.py``, ``modeling_utils.py``).

- :class:`TaskModel`: the official ``BEiT3Wrapper`` -- holds the encoder as ``beit3`` so that every
  task model's state-dict keys carry the official ``beit3.`` prefix, plus ``get_num_layers``,
  ``no_weight_decay`` and activation checkpointing.
- :func:`create_task_backbone`: ``backbones.create_model`` with the task's default for
  ``normalize_output`` (the caller's overrides win).
- :func:`init_head_weights`: ``BEiT3Wrapper._init_weights`` (Linear truncated normal std .02 cut at
  ±.02, zero bias; LayerNorm 1/0), applied to the heads with ``module.apply``; :func:`scale_head_`
  is the ×0.001 rescale of the NLVR2 and ImageNet heads.
- :class:`Pooler` (VQA) and :class:`TwoLayerMLP` (NLVR2) with the official sub-module names.
- :func:`transform_is_train`: which image transform a split gets, with the ``quirks`` switch.
- :func:`select_positions`: ``x[positions]`` of a (B, T) bool mask, without a device read when the
  number of selected positions is given (the data pipeline counts its masks on the host).
"""
from __future__ import annotations

import fnmatch
from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import nn

import backbones
from backbones import (
    BEiT3Backbone,
    no_weight_decay_names,
)
from backbones.weight_init import init_linear_and_norm
from tasks.data.vqa import QUIRKS  # ("fixed", "official"): one definition for every reader and task

__all__ = [
    "QUIRKS",
    "Pooler",
    "TaskModel",
    "TwoLayerMLP",
    "check_quirks",
    "create_task_backbone",
    "init_head_weights",
    "scale_head_",
    "transform_is_train",
]

# Keys of a pretraining checkpoint that no fine-tuning model has (masked-language / masked-image heads).
# Heads of our pretraining models: BEiT-3 MDM (MLM, MIM) and VLMo (also ITC, VL-branch ITC, ITM).
PRETRAINING_HEADS = ("mlm_head.*", "mim_head.*", "itc_*", "itm_*", "logit_scale")


# unilm ``BEiT3Wrapper._init_weights``, the backbone's own init; use as ``head.apply(init_head_weights)``.
init_head_weights = init_linear_and_norm


@torch.no_grad()
def scale_head_(linear: nn.Module, scale: float = 0.001) -> None:
    """Multiply a Linear's weight and bias in place (the official ``init_scale`` of small heads)."""
    if isinstance(linear, nn.Linear):
        linear.weight.mul_(scale)
        if linear.bias is not None:
            linear.bias.mul_(scale)


def create_task_backbone(model_name: str, task_defaults: dict[str, Any], overrides: dict[str, Any]) -> BEiT3Backbone:
    """``backbones.create_model(model_name, **{**task_defaults, **overrides})``: the caller wins."""
    backbone = backbones.create_model(model_name, **{**task_defaults, **overrides})
    if not isinstance(backbone, BEiT3Backbone):
        raise TypeError(f"{model_name!r} is not a BEiT-3 backbone (got {type(backbone).__name__})")
    return backbone


class TaskModel(nn.Module):
    """Base of the task models: the official ``BEiT3Wrapper`` surface around our encoder.

    Args:
        backbone: a model from ``backbones.create_model``; its encoder becomes ``self.beit3``.
    """

    # fnmatch patterns of the task's own parameters (absent from a pretraining checkpoint).
    head_patterns: tuple[str, ...] = ()
    # Pretraining-checkpoint keys this task's heads start from where a checkpoint has them
    # (checkpoint key -> own key), e.g. the ITC projections and temperature of VLMo's stage 3.
    pretrained_heads: Mapping[str, str] = {}

    def __init__(self, backbone: BEiT3Backbone):
        super().__init__()
        self.config = backbone.config
        self.beit3 = backbone.beit3

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def get_num_layers(self) -> int:
        return self.config.depth

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.beit3.encoder.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Names exempt from weight decay besides biases and 1-d tensors (the official set, as present)."""
        return no_weight_decay_names(self)

    def pretrained_drop_patterns(self) -> tuple[str, ...]:
        """``drop`` for :func:`backbones.load_checkpoint` from a pretraining checkpoint (``beit3_*_224.pth``):
        its MLM/MIM heads, the final encoder LayerNorm when this model has none, and this task's heads
        (initialised here, as the official non-strict load leaves them)."""
        final_norm = () if self.config.normalize_output else ("beit3.encoder.layer_norm.*",)
        return PRETRAINING_HEADS + final_norm + self.head_patterns

    def pretrained_init(self, checkpoint_keys: Collection[str]) -> tuple[tuple[str, ...], dict[str, str]]:
        """``(drop, rename)`` for :func:`backbones.load_checkpoint` from a pretraining checkpoint holding
        ``checkpoint_keys``: the :attr:`pretrained_heads` it has are renamed and loaded, the rest of
        :meth:`pretrained_drop_patterns` is dropped (initialised here)."""
        rename = {source: own for source, own in self.pretrained_heads.items() if source in checkpoint_keys}
        drop = tuple(pattern for pattern in self.pretrained_drop_patterns()
                     if not any(fnmatch.fnmatchcase(own, pattern) for own in rename.values()))
        return drop, rename


class Pooler(nn.Module):
    """``tanh(dense(norm(x[:, 0])))``: the VQA pooler over the first token (the image CLS)."""

    def __init__(self, input_features: int, output_features: int, norm_layer: type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.norm = norm_layer(input_features)
        self.dense = nn.Linear(input_features, output_features)
        self.activation = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(self.norm(x[:, 0, :])))


class TwoLayerMLP(nn.Module):
    """``dense2(act(norm2(dense1(norm1(x)))))``: the NLVR2 head."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        out_features: int,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        norm_input: bool = True,
    ):
        super().__init__()
        self.norm1 = norm_layer(in_features) if norm_input else nn.Identity()
        self.dense1 = nn.Linear(in_features, hidden_features)
        self.norm2 = norm_layer(hidden_features)
        self.act = nn.GELU()
        self.dense2 = nn.Linear(hidden_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense2(self.act(self.norm2(self.dense1(self.norm1(x)))))


def check_quirks(quirks: str) -> str:
    """``"fixed"`` (default) corrects the official code's known slips; ``"official"`` reproduces them."""
    if quirks not in QUIRKS:
        raise ValueError(f"unknown quirks {quirks!r}; choose one of {', '.join(QUIRKS)}")
    return quirks


def transform_is_train(split: str, quirks: str = "fixed") -> bool:
    """Whether ``split`` gets the training augmentation.

    ``train`` always does and test splits never do. The official ``create_downstream_dataset`` builds
    the *validation* loader (the one that picks the best checkpoint) with ``is_train=True``, so its
    images get the training augmentation: ``quirks="official"`` reproduces that, ``"fixed"`` gives
    validation the evaluation transform.
    """
    check_quirks(quirks)
    if split == "train":
        return True
    if split in ("val", "validation", "dev"):
        return quirks == "official"
    return False


def select_positions(x: torch.Tensor, positions: torch.Tensor, count: int | None = None) -> torch.Tensor:
    """``x[positions]`` for a (B, T) bool ``positions`` and ``x`` of shape (B, T, ...), in the same
    (row-major) order. Boolean indexing must learn the output size from the device (a host sync per
    call on a GPU); with ``count`` (the number of True positions, known on the host) the indices come
    from ``nonzero_static`` and nothing waits. A wrong ``count`` would select wrong rows: pass the
    count of exactly this mask."""
    if count is None:
        return x[positions.to(torch.bool)]
    index = torch.nonzero_static(positions.reshape(-1).to(torch.bool), size=count).squeeze(1)
    return x.reshape(-1, *x.shape[2:]).index_select(0, index)

