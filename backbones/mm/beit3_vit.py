"""BEiT-3's vision branch as a plain, ViTDet-style backbone for mmdet and mmseg.

Images go through what BEiT-3 runs for an image-only input: the patch conv, the cls token, the
vision position table (with its fairseq offset of 2) and, in every layer, the vision route -- in the
released layout the ``A`` experts of the Multiway attention, LayerNorms and FFN; in the paper layout
the shared attention and the V-FFN (``ffn.A``). The blocks are built from ``backbones.beit3``'s own
modules (``MultiheadAttention`` without Multiway, ``FeedForward``, ``DropPath``), so with window
attention off the per-block outputs equal ``BEiT3(visual_tokens=...)['encoder_states']``.

Dense-prediction additions (ViTDet, Li et al. 2022):

- window attention (non-overlapping ``window_size`` windows, zero padding) in the blocks
  ``window_block_indexes``, global attention in the others; the cls token has no window, so a
  model with windowed blocks drops it (``with_cls_token=False``), as ViTDet does;
- optional decomposed relative position biases (``use_rel_pos``), new and zero-initialised;
- the position table is resized bicubically to ``img_size`` when a checkpoint is loaded and to the
  input's patch grid at forward time for any other size; a checkpoint of another patch size (the
  giant's 14 in a stride-16 detector) has its patch embedding resampled (FlexiViT pseudo-inverse);
- multi-level outputs: one ``B x C x H/p x W/p`` map per ``out_indices`` entry (mmseg: four, for
  ``Feature2Pyramid``; mmdet: the last block, for ``SimpleFPN``);
- drop path and activation checkpointing (``with_cp``).

``init_cfg=dict(type='Pretrained', checkpoint=PATH)`` loads BEiT-3 checkpoints -- official
(``{'model': {'beit3.*'}}``), paper layout, our trainer's pretraining checkpoints (heads such as
``mlm_head``/``mim_head`` are dropped and reported) -- see ``remap_beit3_state_dict``.
"""
from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import nn

from backbones.beit3 import (
    NUM_POS_EXTRA_ROWS,
    BEiT3Config,
    DropPath,
    FeedForward,
    MultiheadAttention,
    attention_reference,
    resize_vision_pos_table,
)
from backbones.checkpoint import CheckpointError, read_state_dict
from backbones.weight_init import INIT_STD, init_linear_and_norm

from .compat import safe_torch_load

__all__ = [
    "TASK_HEAD_PATTERNS",
    "BEiT3ViT",
    "KeyMapReport",
    "load_beit3_checkpoint_state",
    "remap_beit3_state_dict",
]

# Keys of our task / pretraining models outside the backbone: dropped when a backbone is loaded.
TASK_HEAD_PATTERNS = (
    r"mlm_head\.", r"mim_head\.", r"itm_head\.", r"itm_pooler\.", r"itc_", r"(?:\w+_)?logit_scale$",
    r"vision_head\.", r"language_head\.", r"pooler\.", r"head\.", r"fc_norm\.",
)
_TASK_HEAD_RX = re.compile("^(?:" + "|".join(TASK_HEAD_PATTERNS) + ")")
# Parameters a BEiT-3 checkpoint cannot have: ViTDet's relative position biases.
NEW_PARAMETER_RX = re.compile(r"^blocks\.\d+\.self_attn\.rel_pos_[hw]$")


# ------------------------------------------------------------------------------------ geometry
def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * windows, window_size**2, C), zero-padding H and W up to the window size."""
    batch, height, width, channels = x.shape
    pad_h = (window_size - height % window_size) % window_size
    pad_w = (window_size - width % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = height + pad_h, width + pad_w
    x = x.view(batch, hp // window_size, window_size, wp // window_size, window_size, channels)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, channels)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of ``window_partition``: (B * windows, window_size**2, C) -> (B, H, W, C)."""
    hp, wp = padded_hw
    height, width = hw
    batch = windows.shape[0] // (hp * wp // window_size // window_size)
    x = windows.view(batch, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, hp, wp, -1)
    return x[:, :height, :width].contiguous()


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative positions of a q_size x k_size pair of axes, linearly resizing the table if needed
    (ViTDet / SAM ``get_rel_pos``)."""
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        table = rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1)
        resized = F.interpolate(table, size=max_rel_dist, mode="linear")
        rel_pos = resized.reshape(-1, max_rel_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative.long()]


def decomposed_rel_pos_bias(
    q: torch.Tensor, hw: tuple[int, int], rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor
) -> torch.Tensor:
    """ViTDet's decomposed relative position bias for queries ``q`` (B, heads, H*W, d): (B, heads, HW, HW)."""
    height, width = hw
    rh = get_rel_pos(height, height, rel_pos_h)
    rw = get_rel_pos(width, width, rel_pos_w)
    batch, heads, _, dim = q.shape
    r_q = q.reshape(batch * heads, height, width, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    bias = rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
    return bias.reshape(batch, heads, height * width, height * width)


# ------------------------------------------------------------------------------------ modules
class VisionAttention(MultiheadAttention):
    """``backbones.beit3.MultiheadAttention`` with one set of projections (the vision route) and,
    optionally, ViTDet's decomposed relative position bias over a ``rel_pos_size`` grid.

    Args:
        embed_dim: model width.
        num_heads: attention heads.
        eps: LayerNorm eps of the sub-LN.
        rel_pos_size: (H, W) of the grid the relative tables are sized for; None: no relative bias.
        fused: ``F.scaled_dot_product_attention`` (True) or the explicit softmax.
    """

    def __init__(self, embed_dim: int, num_heads: int, eps: float,
                 rel_pos_size: tuple[int, int] | None = None, fused: bool = True):
        super().__init__(embed_dim, num_heads, eps, multiway=False, fused=fused)
        self.use_rel_pos = rel_pos_size is not None
        if self.use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_pos_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_pos_size[1] - 1, self.head_dim))

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, hw: tuple[int, int], num_prefix: int = 0
    ) -> torch.Tensor:
        """x: (B, num_prefix + H*W, D); the prefix (cls) tokens get no relative bias."""
        batch, length, _ = x.shape
        q = self._heads(self.q_proj(x))
        k = self._heads(self.k_proj(x))
        v = self._heads(self.v_proj(x))
        bias = None
        if self.use_rel_pos:
            bias = decomposed_rel_pos_bias(q[:, :, num_prefix:], hw, self.rel_pos_h, self.rel_pos_w)
            if num_prefix:
                bias = F.pad(bias, (num_prefix, 0, num_prefix, 0))
            bias = bias.to(q.dtype)
        if self.fused:
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            attn = attention_reference(q, k, v, bias)
        attn = attn.transpose(1, 2).reshape(batch, length, self.embed_dim)
        return self.out_proj(self.inner_attn_ln(attn))


class VisionBlock(nn.Module):
    """One BEiT-3 encoder layer on the vision route, with optional window attention.

    x + DropPath(Attn(LN(x))), then h + DropPath(FFN(LN(h))) -- ``backbones.beit3.EncoderLayer`` for
    an image-only input. Parameter names are the official ones without the ``A`` level.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, eps: float, drop_path: float,
                 window_size: int, rel_pos_size: tuple[int, int] | None, fused: bool):
        super().__init__()
        self.window_size = window_size
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.self_attn = VisionAttention(dim, num_heads, eps, rel_pos_size, fused)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.final_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn = FeedForward(dim, ffn_dim, eps)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], num_prefix: int) -> torch.Tensor:
        h = self.self_attn_layer_norm(x)
        if self.window_size:
            batch, _, dim = h.shape
            windows, padded_hw = window_partition(h.view(batch, hw[0], hw[1], dim), self.window_size)
            windows = self.self_attn(windows, (self.window_size, self.window_size))
            h = window_unpartition(windows, self.window_size, padded_hw, hw).view(batch, hw[0] * hw[1], dim)
        else:
            h = self.self_attn(h, hw, num_prefix)
        x = x + self.drop_path(h)
        return x + self.drop_path(self.ffn(self.final_layer_norm(x)))


# ------------------------------------------------------------------------------------ backbone
@MODELS.register_module()
class BEiT3ViT(BaseModule):
    """BEiT-3's vision encoder as a multi-level ViT backbone (ViTDet-style).

    Args:
        img_size: training input size (int or (H, W)); the position table is sized for it.
        patch_size: patch size (16 for the released models, 14 for the paper's giant); a checkpoint
            of another patch size has its patch embedding resampled at load (FlexiViT, timm).
        in_channels: image channels.
        embed_dim: width.
        depth: number of blocks.
        num_heads: attention heads.
        ffn_dim: FFN hidden width (default ``4 * embed_dim``).
        layout: ``'released'`` (Multiway attention; the checkpoint's ``A`` experts are loaded) or
            ``'paper'`` (shared attention + V-FFN). Decides which checkpoint keys are expected.
        out_indices: blocks whose outputs are returned, as ``B x C x H/p x W/p`` maps.
        drop_path_rate: stochastic depth of the last block (linear in depth from 0).
        layernorm_eps: LayerNorm eps (BEiT-3: 1e-5).
        window_size: side of the attention windows of the blocks in ``window_block_indexes``.
        window_block_indexes: blocks with window attention; the others attend globally.
        use_rel_pos: add ViTDet's decomposed relative position biases (new, zero-initialised).
        with_cls_token: keep BEiT-3's cls token in the sequence (needs all blocks global).
        final_norm: apply the encoder's final LayerNorm to the last block's output when returned.
        with_cp: activation checkpointing of every block while training.
        fused_attn: ``scaled_dot_product_attention`` (True) or the explicit softmax.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH)`` loads a BEiT-3 checkpoint.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_channels: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        ffn_dim: int | None = None,
        layout: str = "released",
        out_indices: Sequence[int] = (3, 5, 7, 11),
        drop_path_rate: float = 0.0,
        layernorm_eps: float = 1e-5,
        window_size: int = 0,
        window_block_indexes: Sequence[int] = (),
        use_rel_pos: bool = False,
        with_cls_token: bool = True,
        final_norm: bool = False,
        with_cp: bool = False,
        fused_attn: bool = True,
        init_cfg: dict | None = None,
    ):
        super().__init__(init_cfg=init_cfg)
        if isinstance(img_size, Sequence):
            img_size = tuple(int(s) for s in img_size)
        # BEiT3Config checks the layout, the head split and the patch divisibility for us.
        self.config = BEiT3Config(
            img_size=img_size, patch_size=patch_size, in_chans=in_channels, embed_dim=embed_dim, depth=depth,
            num_heads=num_heads, ffn_dim=ffn_dim or 4 * embed_dim, layout=layout, drop_path_rate=drop_path_rate,
            layernorm_eps=layernorm_eps, fused_attn=fused_attn,
        )
        self.out_indices = tuple(int(i) for i in out_indices)
        bad = [i for i in self.out_indices if not 0 <= i < depth]
        if bad or not self.out_indices:
            raise ValueError(f"out_indices {list(out_indices)} must be non-empty block indexes in [0, {depth - 1}]")
        windowed = sorted({int(i) for i in window_block_indexes}) if window_size else []
        bad = [i for i in windowed if not 0 <= i < depth]
        if bad:
            raise ValueError(f"window_block_indexes {bad} are not blocks of a depth-{depth} model")
        if window_size < 0:
            raise ValueError(f"window_size must be >= 0 (0: global attention everywhere), got {window_size}")
        if windowed and with_cls_token:
            raise ValueError(
                f"blocks {windowed} use window attention, which partitions the patch grid: the cls token "
                "has no window. Set with_cls_token=False (ViTDet drops it) or window_size=0."
            )
        self.layout = layout
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.grid_size = self.config.grid_size
        self.window_size = window_size
        self.window_block_indexes = tuple(windowed)
        self.use_rel_pos = use_rel_pos
        self.with_cls_token = with_cls_token
        self.final_norm = final_norm
        self.with_cp = with_cp

        self.patch_embed = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # BEiT-3's vision position table: 2 fairseq rows, the cls row, then the patch grid.
        self.pos_embed = nn.Parameter(torch.zeros(NUM_POS_EXTRA_ROWS + self.config.num_patches, embed_dim))
        blocks = []
        for i in range(depth):
            win = window_size if i in windowed else 0
            rel_size = None
            if use_rel_pos:
                rel_size = (win, win) if win else self.grid_size
            rate = drop_path_rate * i / (depth - 1) if depth > 1 else 0.0
            blocks.append(VisionBlock(embed_dim, num_heads, self.config.ffn_dim, layernorm_eps, rate, win,
                                      rel_size, fused_attn))
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(embed_dim, eps=layernorm_eps) if final_norm else None
        self._init_random()

    # --------------------------------------------------------------------------------- init
    def _init_random(self) -> None:
        """unilm's finetuning init: Linear truncated normal std .02 (cut at ±.02), zero bias,
        LayerNorm 1/0; position table, cls token truncated normal .02; relative tables zero."""
        std = INIT_STD
        self.apply(init_linear_and_norm)
        nn.init.trunc_normal_(self.pos_embed, std=std, a=-std, b=std)
        nn.init.trunc_normal_(self.cls_token, std=std, a=-std, b=std)

    def init_weights(self) -> None:
        """Load the ``Pretrained`` checkpoint of ``init_cfg`` through the BEiT-3 key map; other
        ``init_cfg`` types go to mmengine."""
        if isinstance(self.init_cfg, Mapping) and self.init_cfg.get("type") == "Pretrained":
            unknown = sorted(set(self.init_cfg) - {"type", "checkpoint"})
            if unknown:
                raise ValueError(
                    f"BEiT3ViT init_cfg: unsupported key(s) {unknown}; give type='Pretrained', checkpoint=PATH"
                )
            self.load_pretrained(self.init_cfg["checkpoint"])
            self._is_init = True
            return
        super().init_weights()

    def load_pretrained(self, source: str | os.PathLike | Mapping[str, torch.Tensor]) -> KeyMapReport:
        """Load a BEiT-3 checkpoint (file or state dict) into this backbone; returns what was mapped.

        Raises:
            FileNotFoundError: the file does not exist.
            CheckpointError: the checkpoint does not fit (names every offending key and shape).
        """
        name = str(source) if isinstance(source, (str, os.PathLike)) else "the given state dict"
        state = load_beit3_checkpoint_state(source)
        mapped, report = remap_beit3_state_dict(state, self, name)
        self.load_state_dict(mapped, strict=False)
        print_log(f"BEiT3ViT: loaded {name}: {report.summary()}", logger="current")
        return report

    # --------------------------------------------------------------------------------- forward
    def _positions(self, grid: tuple[int, int]) -> torch.Tensor:
        table = self.pos_embed
        if tuple(grid) != tuple(self.grid_size):
            table = resize_vision_pos_table(table, grid, self.grid_size)
        return table

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """images (B, C, H, W), H and W multiples of the patch size -> one (B, D, H/p, W/p) map per
        ``out_indices`` entry."""
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"input of {height}x{width} is not divisible by the patch size {self.patch_size}: pad it "
                f"(e.g. data_preprocessor pad_size_divisor / size_divisor = a multiple of {self.patch_size})"
            )
        x = self.patch_embed(images)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)
        table = self._positions(grid)
        # Token t of an image-only input sits at position t + 2 (fairseq offset): cls -> row 2.
        x = x + table[NUM_POS_EXTRA_ROWS:].unsqueeze(0)
        num_prefix = 0
        if self.with_cls_token:
            cls = (self.cls_token + table[NUM_POS_EXTRA_ROWS - 1]).expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1)
            num_prefix = 1

        maps: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.blocks):
            if self.with_cp and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, grid, num_prefix, use_reentrant=False)
            else:
                x = block(x, grid, num_prefix)
            if index in self.out_indices:
                out = x
                if self.norm is not None and index == self.depth - 1:
                    out = self.norm(out)
                out = out[:, num_prefix:].transpose(1, 2).reshape(x.shape[0], self.embed_dim, *grid)
                maps[index] = out.contiguous()
        return tuple(maps[i] for i in self.out_indices)

    def get_num_layers(self) -> int:
        return self.depth

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"} | {
            name for name, _ in self.named_parameters() if name.endswith(("rel_pos_h", "rel_pos_w"))
        }


# ------------------------------------------------------------------------------------ checkpoints
@dataclass
class KeyMapReport:
    """What ``remap_beit3_state_dict`` did with a checkpoint's keys."""

    loaded: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    missing: list[str] = field(default_factory=list)  # new parameters (rel-pos) left at their init
    resized_pos: tuple[tuple[int, int], tuple[int, int]] | None = None
    resampled_patch: tuple[int, int] | None = None  # (checkpoint kernel, model kernel)

    def summary(self) -> str:
        parts = [f"{self.loaded} tensors loaded"]
        if self.dropped:
            parts.append("dropped " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.dropped.items())))
        if self.missing:
            parts.append(f"{len(self.missing)} new parameters kept at init ({', '.join(self.missing[:4])}"
                         + (", ..." if len(self.missing) > 4 else "") + ")")
        if self.resized_pos:
            (a, b), (c, d) = self.resized_pos
            parts.append(f"position table resized {a}x{b} -> {c}x{d}")
        if self.resampled_patch:
            a, b = self.resampled_patch
            parts.append(f"patch embedding resampled {a}x{a} -> {b}x{b}")
        return "; ".join(parts)


def load_beit3_checkpoint_state(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint file or mapping: ``{'model': ...}`` (official and our
    exports), ``{'module': ...}``, ``{'state_dict': ...}`` or raw; our trainer's step checkpoints
    (numpy RNG state beside the weights) load too. Always ``weights_only``."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"BEiT-3 checkpoint {path} does not exist")
        try:
            obj = safe_torch_load(str(path))
        except Exception as err:  # UnpicklingError, RuntimeError (zip), EOFError: all "cannot read"
            raise CheckpointError(
                f"checkpoint {path} cannot be read with torch.load(weights_only=True): {err}"
            ) from err
        return read_state_dict(_unwrap(obj, str(path)))
    return read_state_dict(_unwrap(source, "the given state dict"))


def _unwrap(obj: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint {name} holds a {type(obj).__name__}, not a state dict")
    for key in ("model", "module", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            return obj[key]
    return obj


def _layer_rules(layout: str) -> list[tuple[re.Pattern, str | None]]:
    """(pattern on the key after ``encoder.layers.N.``, replacement or None = drop as the text/VL branch)."""
    attn_a = r"\.A" if layout == "released" else ""
    rules = [
        (rf"^self_attn\.(q_proj|k_proj|v_proj|out_proj|inner_attn_ln){attn_a}\.(weight|bias)$", r"self_attn.\1.\2"),
        (rf"^self_attn_layer_norm{attn_a}\.(weight|bias)$", r"self_attn_layer_norm.\1"),
        (r"^ffn\.A\.(fc1|fc2|ffn_layernorm)\.(weight|bias)$", r"ffn.\1.\2"),
        (r"^final_layer_norm\.A\.(weight|bias)$", r"final_layer_norm.\1"),
        (r"^(?:ffn|final_layer_norm)\.(?:B|VL)\.", None),
    ]
    if layout == "released":
        text_attention = r"^(?:self_attn\.(?:q_proj|k_proj|v_proj|out_proj|inner_attn_ln)|self_attn_layer_norm)\.B\."
        rules.append((text_attention, None))
    return [(re.compile(p), r) for p, r in rules]


def _map_key(key: str, layout: str, final_norm: bool) -> tuple[str | None, str]:
    """Backbone key for a BEiT-3 key (``beit3.`` already stripped), or None with the reason."""
    simple = {
        "vision_embed.proj.weight": "patch_embed.weight",
        "vision_embed.proj.bias": "patch_embed.bias",
        "vision_embed.cls_token": "cls_token",
        "encoder.embed_positions.A.weight": "pos_embed",
    }
    if key in simple:
        return simple[key], ""
    if key.startswith(("text_embed.", "encoder.embed_positions.B.")):
        return None, "text-branch"
    if key == "vision_embed.mask_token":
        return None, "mask-token"
    match = re.match(r"^encoder\.layers\.(\d+)\.(.+)$", key)
    if match:
        for pattern, replacement in _layer_rules(layout):
            if pattern.match(match.group(2)):
                if replacement is None:
                    return None, "text/VL-expert"
                return f"blocks.{match.group(1)}." + pattern.sub(replacement, match.group(2)), ""
        return None, "unmapped"
    norm = re.match(r"^encoder\.layer_norm\.(?:(A|B)\.)?(weight|bias)$", key)
    if norm and (norm.group(1) == "A" if layout == "released" else norm.group(1) is None):
        return (f"norm.{norm.group(2)}", "") if final_norm else (None, "final-norm (final_norm=False)")
    if norm and norm.group(1) == "B":
        return None, "text-branch"
    return None, "unmapped"


def _describe_layout(keys: Sequence[str]) -> str:
    if any(re.search(r"\.self_attn\.q_proj\.A\.", k) for k in keys):
        return "released"
    if any(re.search(r"\.self_attn\.q_proj\.weight$", k) for k in keys):
        return "paper"
    return "unknown"


def remap_beit3_state_dict(
    state: Mapping[str, torch.Tensor], model: BEiT3ViT, name: str = "the checkpoint"
) -> tuple[dict[str, torch.Tensor], KeyMapReport]:
    """Map a BEiT-3 state dict onto ``model``'s keys; a pure function of its inputs.

    Everything up to the first ``beit3.`` is stripped (``beit3.``, ``module.beit3.``,
    ``backbone.beit3.``). Dropped on purpose and counted: the text branch (``text_embed``,
    ``embed_positions.B``, every ``.B.``), ``VL`` experts, ``mask_token``, the final LayerNorm unless
    ``final_norm``, and our task/pretraining heads outside ``beit3.`` (``mlm_head``, ``mim_head``,
    ``itc_*``, ``itm_*``, ``logit_scale``, ``head``, ...). The ``A`` level is removed; the position
    table is resized to the model's grid. Only the new relative position tables may be missing.

    Raises:
        CheckpointError: the checkpoint has no BEiT-3 keys, keys that map nowhere, misses backbone
            keys, or has tensors of other shapes; the message lists them (at most 20 of each).
    """
    report = KeyMapReport()
    mapped: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    beit3_keys = [k for k in state if "beit3." in k]
    if not beit3_keys:
        sample = ", ".join(list(state)[:8])
        raise CheckpointError(
            f"{name} holds no BEiT-3 weights (no 'beit3.*' keys); its keys look like: {sample}. "
            "Pass a BEiT-3 checkpoint ({'model': {'beit3.…'}}: official, paper layout or our trainer's)."
        )
    for key, value in state.items():
        if "beit3." not in key:
            if _TASK_HEAD_RX.match(key):
                report.dropped["task-head"] += 1
            else:
                unexpected.append(key)
            continue
        inner = key.split("beit3.", 1)[1]
        target, reason = _map_key(inner, model.layout, model.final_norm)
        if target is None:
            if reason == "unmapped":
                unexpected.append(key)
            else:
                report.dropped[reason] += 1
            continue
        mapped[target] = value

    own = model.state_dict()
    patch = mapped.get("patch_embed.weight")
    if patch is not None and patch.shape[:2] == own["patch_embed.weight"].shape[:2] \
            and patch.shape[-1] != model.patch_size and patch.shape[-1] == patch.shape[-2]:
        # Another patch size (the giant's 14 in a stride-16 detector, so that the pyramid keeps
        # mmdet's strides 4-64): FlexiViT's pseudo-inverse resampling (timm) keeps the embedding's
        # response to a resized patch.
        from timm.layers import resample_patch_embed

        mapped["patch_embed.weight"] = resample_patch_embed(patch, [model.patch_size, model.patch_size])
        report.resampled_patch = (patch.shape[-1], model.patch_size)
    if "pos_embed" in mapped and mapped["pos_embed"].shape[-1] == own["pos_embed"].shape[-1]:
        table = mapped["pos_embed"]
        rows = table.shape[0] - NUM_POS_EXTRA_ROWS
        side = math.isqrt(rows)
        if side * side != rows:
            raise CheckpointError(
                f"{name}: the vision position table has {table.shape[0]} rows, not 3 + a square grid"
            )
        if (side, side) != tuple(model.grid_size):
            mapped["pos_embed"] = resize_vision_pos_table(table, model.grid_size, (side, side))
            report.resized_pos = ((side, side), tuple(model.grid_size))

    missing = [k for k in own if k not in mapped and not NEW_PARAMETER_RX.match(k)]
    mismatched = [(k, tuple(own[k].shape), tuple(v.shape)) for k, v in mapped.items()
                  if k in own and tuple(own[k].shape) != tuple(v.shape)]
    extra = [k for k in mapped if k not in own]  # e.g. more layers in the checkpoint than the model
    if missing or unexpected or mismatched or extra:
        found_layout = _describe_layout(list(state))
        lines = [f"{name} does not fit BEiT3ViT(layout={model.layout!r}, embed_dim={model.embed_dim}, "
                 f"depth={model.depth}) (checkpoint layout: {found_layout}):"]
        if found_layout not in ("unknown", model.layout):
            lines.append(
                f"the checkpoint is in the {found_layout} layout: build the backbone with layout={found_layout!r}"
            )
        if missing:
            lines.append(f"{len(missing)} backbone key(s) missing from the checkpoint: {', '.join(missing[:20])}")
        if unexpected:
            lines.append(f"{len(unexpected)} checkpoint key(s) that map to nothing: {', '.join(unexpected[:20])}")
        if extra:
            lines.append(f"{len(extra)} checkpoint key(s) beyond the model (more layers?): {', '.join(extra[:20])}")
        if mismatched:
            lines.append(f"{len(mismatched)} shape mismatch(es) (backbone key: expected, found): " + "; ".join(
                f"{k}: {list(a)} vs {list(b)}" for k, a, b in mismatched[:20]))
        lines.append("Check the backbone's layout/embed_dim/depth/patch_size against the checkpoint's model.")
        raise CheckpointError("\n".join(lines))
    report.loaded = len(mapped)
    report.missing = [k for k in own if k not in mapped]
    return mapped, report
