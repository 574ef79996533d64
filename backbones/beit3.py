"""BEiT-3: the Multiway Transformer of "Image as a Foreign Language" (Wang et al., arXiv 2208.10442).

One encoder for images, texts and image-text pairs, in two layouts chosen by name:

- ``released`` -- the layout of the official code and checkpoints (torchscale ``BEiT3`` + unilm
  ``beit3``). Every encoder module has a vision copy ``A`` and a language copy ``B``: the q/k/v/out
  projections, the sub-LN inside attention, both pre-LayerNorms, the FFN and the final LayerNorm.
  Only the softmax attention over the concatenated sequence is shared, and there is no VL-FFN.
  State-dict keys and shapes equal the official ``beit3.*`` keys.
- ``paper`` -- the layout of the paper (Table 2): shared attention (projections and LayerNorms), a
  V-FFN and an L-FFN in every layer, and a VL-FFN that *all* tokens of an image-text input go through
  in the top ``vl_ffn_layers`` layers (VLMo's routing).

Blocks are pre-LN with Magneto sub-LN (``inner_attn_ln`` before ``out_proj``, ``ffn_layernorm``
before ``fc2``), absolute learned positions with the fairseq offset of 2, LayerNorm eps 1e-5, exact
GELU. Sequences are batch-first; an image-text input is ``[cls, patches..., text...]`` and
``multiway_split_position`` (image-token count; -1 image only; 0 text only) is passed down explicitly
rather than stored on modules between calls, as torchscale does.

Checked against torchscale 0.3.0 (`tests/backbones/test_parity_torchscale.py`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ._registry import register_model
from .weight_init import INIT_STD, init_linear_and_norm

LAYOUTS = ("released", "paper")
INIT_SCHEMES = ("official", "beit")
# Rows of the vision position table before the patch grid: two unused fairseq rows + the cls token.
NUM_POS_EXTRA_ROWS = 3
POSITION_OFFSET = 2  # fairseq convention: the first token of each modality sits at position 2
OFFICIAL_MASK_VALUE = -1e8  # what torchscale adds for attn_mask entries that are set


# --------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class BEiT3Config:
    """Architecture of one BEiT-3 encoder. Build with ``create_model``; fields are its overrides."""

    img_size: int | tuple[int, int] = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    ffn_dim: int = 3072
    vocab_size: int = 64010
    max_text_positions: int = 1024
    layout: str = "released"
    vl_ffn_layers: int = 0  # paper layout: number of top layers with a VL-FFN
    drop_path_rate: float = 0.0
    layernorm_eps: float = 1e-5
    normalize_output: bool = True  # final encoder LayerNorm (off for the official VQA/ImageNet models)
    dynamic_img_size: bool = False  # interpolate the position table at forward time for other sizes
    grad_checkpointing: bool = False
    fused_attn: bool = True  # F.scaled_dot_product_attention; False = explicit softmax (the oracle)
    init: str = "official"

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")
        if self.init not in INIT_SCHEMES:
            raise ValueError(f"unknown init {self.init!r}; choose one of {', '.join(INIT_SCHEMES)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        height, width = self.image_hw
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"img_size {height}x{width} is not divisible by patch_size {self.patch_size}; "
                f"use a multiple of {self.patch_size}"
            )
        if self.layout == "released" and self.vl_ffn_layers:
            raise ValueError(
                "vl_ffn_layers is a paper-layout option: the released layout has no VL-FFN "
                "(build with layout='paper')"
            )
        if not 0 <= self.vl_ffn_layers <= self.depth:
            raise ValueError(f"vl_ffn_layers must be in [0, depth={self.depth}], got {self.vl_ffn_layers}")

    @property
    def image_hw(self) -> tuple[int, int]:
        size = self.img_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def grid_size(self) -> tuple[int, int]:
        height, width = self.image_hw
        return height // self.patch_size, width // self.patch_size

    @property
    def num_patches(self) -> int:
        rows, cols = self.grid_size
        return rows * cols

    @property
    def multiway_attention(self) -> bool:
        return self.layout == "released"


# -------------------------------------------------------------------------------------------- helpers
def resize_vision_pos_table(
    table: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int] | None = None
) -> torch.Tensor:
    """Bicubically resize the patch rows of a vision position table, keeping the first 3 rows.

    As ``unilm/beit3/utils.py::load_model_and_may_interpolate``: rows 0-1 (fairseq) and 2 (cls) are
    kept as they are; the grid rows are interpolated with ``align_corners=False``.
    """
    num_grid_rows = table.shape[0] - NUM_POS_EXTRA_ROWS
    if old_grid is None:
        side = math.isqrt(num_grid_rows)
        if side * side != num_grid_rows:
            raise ValueError(
                f"position table has {table.shape[0]} rows: {num_grid_rows} grid rows are not a square grid; "
                "pass old_grid=(rows, cols)"
            )
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return table
    extra, grid = table[:NUM_POS_EXTRA_ROWS], table[NUM_POS_EXTRA_ROWS:]
    grid = grid.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid = grid.to(table.dtype).permute(0, 2, 3, 1).reshape(new_grid[0] * new_grid[1], -1)
    return torch.cat([extra, grid], dim=0)


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample (timm semantics: survivors are scaled by 1/keep_prob)."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x * x.new_empty(shape).bernoulli_(keep_prob).div_(keep_prob)


class DropPath(nn.Module):
    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


def segments(split_position: int, use_vl: bool = False) -> list[tuple[str, slice]]:
    """Which expert handles which part of the sequence: [(branch name, sequence slice), ...]."""
    if use_vl:
        return [("VL", slice(None))]
    if split_position == -1:
        return [("A", slice(None))]
    if split_position == 0:
        return [("B", slice(None))]
    return [("A", slice(0, split_position)), ("B", slice(split_position, None))]


def apply_by_segment(
    fn: Callable[[str, torch.Tensor], torch.Tensor], x: torch.Tensor, split_position: int, use_vl: bool = False
) -> torch.Tensor:
    parts = [fn(branch, x[:, span]) for branch, span in segments(split_position, use_vl)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class Multiway(nn.Module):
    """Modality experts of one module: ``A`` (vision), ``B`` (language), optional ``VL`` (pairs).

    The routing is an argument of ``forward``: ``split_position`` tokens go to ``A``, the rest to
    ``B``; ``use_vl`` sends every token to ``VL``.
    """

    def __init__(self, A: nn.Module, B: nn.Module, VL: nn.Module | None = None):
        super().__init__()
        self.A = A
        self.B = B
        if VL is not None:
            self.VL = VL

    @classmethod
    def of(cls, make: Callable[[], nn.Module], with_vl: bool = False) -> "Multiway":
        return cls(make(), make(), make() if with_vl else None)

    def forward(self, x: torch.Tensor, split_position: int, use_vl: bool = False) -> torch.Tensor:
        return apply_by_segment(lambda branch, part: getattr(self, branch)(part), x, split_position, use_vl)


def route(module: nn.Module, x: torch.Tensor, split_position: int) -> torch.Tensor:
    """Apply a module that is either Multiway (per-modality) or shared."""
    if isinstance(module, Multiway):
        return module(x, split_position)
    return module(x)


def expert(module: nn.Module, branch: str) -> nn.Module:
    """The ``branch`` expert of a Multiway module; a shared module serves every branch."""
    return getattr(module, branch) if isinstance(module, Multiway) else module


# A sequence as its modality streams: [(branch, (B, T_branch, D)), ...] in sequence order. The encoder
# keeps the streams apart between layers, so per-modality modules run on contiguous tensors and only
# attention sees the joined sequence; slicing and re-joining the whole sequence around every
# Multiway module cost copies (forward) and zero-filled slice gradients (backward).
Streams = list[tuple[str, torch.Tensor]]


def to_streams(x: torch.Tensor, split_position: int) -> Streams:
    parts = segments(split_position)
    if len(parts) == 1:
        return [(parts[0][0], x)]
    image, text = torch.split(x, [split_position, x.shape[1] - split_position], dim=1)
    return [("A", image.contiguous()), ("B", text.contiguous())]


def join_streams(streams: Streams) -> torch.Tensor:
    return streams[0][1] if len(streams) == 1 else torch.cat([x for _, x in streams], dim=1)


def split_like(x: torch.Tensor, streams: Streams) -> list[torch.Tensor]:
    """Split a joined (B, T, ...) tensor back into the streams' lengths (views)."""
    if len(streams) == 1:
        return [x]
    return list(torch.split(x, [part.shape[1] for _, part in streams], dim=1))


# ------------------------------------------------------------------------------------------ layers
class FeedForward(nn.Module):
    """fc1 -> exact GELU (in fp32) -> sub-LN -> fc2, as torchscale's FeedForwardNetwork with subln."""

    def __init__(self, embed_dim: int, ffn_dim: int, eps: float):
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.ffn_layernorm = nn.LayerNorm(ffn_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.fc1(x)
        hidden = F.gelu(hidden.float()).type_as(hidden)
        return self.fc2(self.ffn_layernorm(hidden))


class MultiheadAttention(nn.Module):
    """Self-attention with sub-LN; projections per modality (released) or shared (paper).

    ``incremental_state`` is the caller's per-layer cache dict (torchscale's format): ``prev_key`` and
    ``prev_value`` of shape (B, heads, T, head_dim) are read, extended and written back.
    """

    def __init__(self, embed_dim: int, num_heads: int, eps: float, multiway: bool, fused: bool = True):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.fused = fused

        def per_modality(make: Callable[[], nn.Module]) -> nn.Module:
            return Multiway.of(make) if multiway else make()

        # Registration order follows torchscale so state-dict order matches too.
        self.k_proj = per_modality(lambda: nn.Linear(embed_dim, embed_dim))
        self.v_proj = per_modality(lambda: nn.Linear(embed_dim, embed_dim))
        self.q_proj = per_modality(lambda: nn.Linear(embed_dim, embed_dim))
        self.out_proj = per_modality(lambda: nn.Linear(embed_dim, embed_dim))
        self.inner_attn_ln = per_modality(lambda: nn.LayerNorm(embed_dim, eps=eps))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        split_position: int,
        attn_bias: torch.Tensor | None = None,
        incremental_state: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        return join_streams(self.forward_streams(to_streams(x, split_position), attn_bias, incremental_state))

    def forward_streams(
        self, streams: Streams, attn_bias: torch.Tensor | None = None, incremental_state: dict[str, Any] | None = None
    ) -> Streams:
        def project(module: nn.Module) -> torch.Tensor:
            return self._heads(join_streams([(b, expert(module, b)(x)) for b, x in streams]))

        q, k, v = project(self.q_proj), project(self.k_proj), project(self.v_proj)
        batch, length = q.shape[0], q.shape[2]
        if incremental_state is not None:
            if "prev_key" in incremental_state:
                k = torch.cat([incremental_state["prev_key"], k], dim=2)
                v = torch.cat([incremental_state["prev_value"], v], dim=2)
            incremental_state["prev_key"] = k
            incremental_state["prev_value"] = v

        if self.fused:
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        else:
            attn = attention_reference(q, k, v, attn_bias)
        attn = attn.transpose(1, 2).reshape(batch, length, self.embed_dim)
        return [
            (b, expert(self.out_proj, b)(expert(self.inner_attn_ln, b)(part)))
            for (b, _), part in zip(streams, split_like(attn, streams))
        ]


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_bias: torch.Tensor | None
) -> torch.Tensor:
    """The explicit attention of torchscale (scaled q, logits, additive mask, fp32 softmax)."""
    logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if attn_bias is not None:
        if attn_bias.dtype == torch.bool:
            logits = logits.masked_fill(~attn_bias, float("-inf"))
        else:
            logits = logits + attn_bias
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32).type_as(logits)
    return probs @ v


class EncoderLayer(nn.Module):
    """Pre-LN block: x + DropPath(Attn(LN(x))), then h + DropPath(FFN_expert(LN_expert(h)))."""

    def __init__(self, config: BEiT3Config, index: int):
        super().__init__()
        dim, eps = config.embed_dim, config.layernorm_eps
        multiway = config.multiway_attention
        self.has_vl = config.layout == "paper" and index >= config.depth - config.vl_ffn_layers

        self.self_attn = MultiheadAttention(dim, config.num_heads, eps, multiway, config.fused_attn)
        self.self_attn_layer_norm = Multiway.of(lambda: nn.LayerNorm(dim, eps=eps)) if multiway else nn.LayerNorm(dim, eps=eps)
        rate = config.drop_path_rate * index / (config.depth - 1) if config.depth > 1 else 0.0
        self.drop_path = DropPath(rate) if rate > 0 else nn.Identity()
        self.ffn = Multiway.of(lambda: FeedForward(dim, config.ffn_dim, eps), with_vl=self.has_vl)
        self.final_layer_norm = Multiway.of(lambda: nn.LayerNorm(dim, eps=eps), with_vl=self.has_vl)

    def _expert(self, branch: str, h: torch.Tensor) -> torch.Tensor:
        return getattr(self.ffn, branch)(getattr(self.final_layer_norm, branch)(h))

    def _drop_path(self, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """One stochastic-depth draw per sample, shared by the streams (as for the joined sequence)."""
        if not isinstance(self.drop_path, DropPath) or not self.training or self.drop_path.drop_prob == 0.0:
            return parts
        keep_prob = 1.0 - self.drop_path.drop_prob
        scale = parts[0].new_empty((parts[0].shape[0], 1, 1)).bernoulli_(keep_prob).div_(keep_prob)
        return [part * scale for part in parts]

    def forward(
        self,
        x: torch.Tensor | Streams,
        split_position: int | None = None,
        attn_bias: torch.Tensor | None = None,
        incremental_state: dict[str, Any] | None = None,
        use_vl: bool = False,
    ) -> torch.Tensor | Streams:
        """``x`` joined (split at ``split_position``) returns joined; modality streams return streams.

        The encoder passes streams through ``__call__``, not ``forward_streams``, so that module hooks
        (FSDP's unsharding of the layer's parameters) run.
        """
        if isinstance(x, list):
            return self.forward_streams(x, attn_bias, incremental_state, use_vl)
        streams = self.forward_streams(to_streams(x, split_position), attn_bias, incremental_state, use_vl)
        return join_streams(streams)

    def forward_streams(
        self,
        streams: Streams,
        attn_bias: torch.Tensor | None = None,
        incremental_state: dict[str, Any] | None = None,
        use_vl: bool = False,
    ) -> Streams:
        normed = [(b, expert(self.self_attn_layer_norm, b)(x)) for b, x in streams]
        attn = self._drop_path([a for _, a in self.self_attn.forward_streams(normed, attn_bias, incremental_state)])
        h = [(b, x + a) for (b, x), a in zip(streams, attn)]
        if use_vl and self.has_vl:  # every token through the VL-FFN: on the joined sequence
            joined = join_streams(h)
            (out,) = self._drop_path([self._expert("VL", joined)])
            return list(zip([b for b, _ in h], split_like(joined + out, h)))
        out = self._drop_path([self._expert(b, x) for b, x in h])
        return [(b, x + o) for (b, x), o in zip(h, out)]


class VisionEmbedding(nn.Module):
    """Patchify with a strided conv, optionally replace masked patches by ``mask_token``, prepend cls."""

    def __init__(self, config: BEiT3Config):
        super().__init__()
        self.image_hw = config.image_hw
        self.grid_size = config.grid_size
        self.num_patches = config.num_patches
        self.dynamic_img_size = config.dynamic_img_size
        self.proj = nn.Conv2d(config.in_chans, config.embed_dim, kernel_size=config.patch_size, stride=config.patch_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.embed_dim))

    def forward(self, images: torch.Tensor, masked_position: torch.Tensor | None = None) -> torch.Tensor:
        height, width = images.shape[-2:]
        if (height, width) != self.image_hw and not self.dynamic_img_size:
            raise ValueError(
                f"image size {height}x{width} does not match the model's img_size "
                f"{self.image_hw[0]}x{self.image_hw[1]} (its position table covers a "
                f"{self.grid_size[0]}x{self.grid_size[1]} patch grid). Build the model with "
                f"img_size={height} and load the checkpoint with load_checkpoint(..., interpolate_pos=True), "
                "or build it with dynamic_img_size=True to interpolate at run time."
            )
        x = self.proj(images).flatten(2).transpose(1, 2)
        if masked_position is not None:
            weight = masked_position.unsqueeze(-1).type_as(x)
            x = x * (1 - weight) + self.mask_token * weight
        return torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)


class Encoder(nn.Module):
    def __init__(self, config: BEiT3Config):
        super().__init__()
        self.config = config
        self.grad_checkpointing = config.grad_checkpointing
        dim = config.embed_dim
        self.embed_positions = Multiway(
            nn.Embedding(config.num_patches + NUM_POS_EXTRA_ROWS, dim), nn.Embedding(config.max_text_positions, dim)
        )
        self.layers = nn.ModuleList(EncoderLayer(config, i) for i in range(config.depth))
        if not config.normalize_output:
            self.layer_norm = None
        elif config.multiway_attention:
            self.layer_norm = Multiway.of(lambda: nn.LayerNorm(dim, eps=config.layernorm_eps))
        else:
            self.layer_norm = nn.LayerNorm(dim, eps=config.layernorm_eps)

    def _vision_positions(self, ids: torch.Tensor, num_tokens: int) -> torch.Tensor:
        table = self.embed_positions.A.weight
        if num_tokens != table.shape[0] - 2 and self.config.dynamic_img_size:
            # Grid of the current input, known only from the token count: assume a square grid.
            side = math.isqrt(num_tokens - 1)
            if side * side != num_tokens - 1:
                raise ValueError(f"dynamic_img_size needs a square patch grid, got {num_tokens - 1} patches")
            table = resize_vision_pos_table(table, (side, side), self.config.grid_size)
        return F.embedding(ids, table)

    def position_embeddings(
        self, length: int, split_position: int, positions: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor:
        """Per-modality learned positions; each modality starts at position 2 in its own table."""
        parts = []
        for branch, span in segments(split_position):
            num_tokens = len(range(length)[span])
            ids = positions if positions is not None else torch.arange(
                POSITION_OFFSET, num_tokens + POSITION_OFFSET, device=device
            ).unsqueeze(0)
            if branch == "A":
                parts.append(self._vision_positions(ids, num_tokens))
            else:
                limit = self.embed_positions.B.num_embeddings
                # Without explicit positions the last one is known on the host: no read from the device.
                last = int(ids.max()) if positions is not None else num_tokens + POSITION_OFFSET - 1
                if last >= limit:
                    raise ValueError(
                        f"text of {num_tokens} tokens (position {last}) does not fit the text position "
                        f"table of {limit} rows (positions start at {POSITION_OFFSET}, so at most "
                        f"{limit - POSITION_OFFSET} tokens): truncate the text"
                    )
                parts.append(self.embed_positions.B(ids))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def forward(
        self,
        token_embeddings: torch.Tensor,
        split_position: int,
        padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        incremental_state: dict[int, dict[str, Any]] | None = None,
        positions: torch.Tensor | None = None,
        return_all_hiddens: bool = False,
    ) -> dict[str, Any]:
        batch, length, _ = token_embeddings.shape
        x = token_embeddings + self.position_embeddings(length, split_position, positions, token_embeddings.device)
        if padding_mask is not None:
            x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
        # As torchscale: padding is ignored while decoding with a cache.
        attn_bias = build_attn_bias(attn_mask, padding_mask if incremental_state is None else None, x.dtype)

        states = [x] if return_all_hiddens else []
        streams = to_streams(x, split_position)
        for index, layer in enumerate(self.layers):
            layer_state = None
            use_vl = 0 < split_position < length
            if incremental_state is not None:
                layer_state = incremental_state.setdefault(index, {})
                if layer.has_vl:  # a decoding step of an image-text input keeps using the VL-FFN
                    use_vl = layer_state.setdefault("vl_input", use_vl)
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                streams = torch.utils.checkpoint.checkpoint(
                    layer, streams, None, attn_bias, layer_state, use_vl, use_reentrant=False
                )
            else:
                streams = layer(streams, None, attn_bias, layer_state, use_vl)
            if return_all_hiddens:
                states.append(join_streams(streams))

        if self.layer_norm is not None:
            streams = [(b, expert(self.layer_norm, b)(x)) for b, x in streams]
        x = join_streams(streams)
        return {
            "encoder_out": x,
            "encoder_embedding": token_embeddings,
            "encoder_padding_mask": padding_mask,
            "encoder_states": states,
            "l_aux": [None] * len(self.layers),
        }


def build_attn_bias(
    attn_mask: torch.Tensor | None, padding_mask: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor | None:
    """The mask for ``scaled_dot_product_attention``, with torchscale's semantics.

    ``attn_mask`` (L, S) or (B, L, S): any non-zero entry blocks that query/key pair (torchscale adds
    -1e8 there). ``padding_mask`` (B, S): 1/True on padded keys, which get -inf. Without an
    ``attn_mask`` a boolean mask is returned so SDPA can keep its fused kernels.
    """
    if attn_mask is None and padding_mask is None:
        return None
    if attn_mask is None:
        return ~padding_mask.to(torch.bool)[:, None, None, :]
    blocked = attn_mask.to(torch.bool)
    bias = torch.zeros(blocked.shape, dtype=dtype, device=blocked.device)
    bias = bias.masked_fill(blocked, max(OFFICIAL_MASK_VALUE, torch.finfo(dtype).min))
    bias = bias.unsqueeze(1) if bias.dim() == 3 else bias  # (B, L, S) -> (B, 1, L, S)
    if padding_mask is not None:
        bias = bias.masked_fill(padding_mask.to(torch.bool)[:, None, None, :], float("-inf"))
    return bias


# --------------------------------------------------------------------------------------------- model
class BEiT3(nn.Module):
    """The Multiway Transformer; forward is a drop-in for torchscale's ``BEiT3.forward``."""

    def __init__(self, config: BEiT3Config):
        super().__init__()
        self.config = config
        self.text_embed = nn.Embedding(config.vocab_size, config.embed_dim)
        self.vision_embed = VisionEmbedding(config)
        self.encoder = Encoder(config)

    def forward(
        self,
        textual_tokens: torch.Tensor | None = None,
        visual_tokens: torch.Tensor | None = None,
        text_padding_position: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        vision_masked_position: torch.Tensor | None = None,
        incremental_state: dict[int, dict[str, Any]] | None = None,
        positions: torch.Tensor | None = None,
        return_all_hiddens: bool = False,
    ) -> dict[str, Any]:
        """Encode images (B,3,H,W), texts (B,L) or both (image tokens first).

        Returns torchscale's dict: ``encoder_out`` (B, tokens, D), ``encoder_embedding``,
        ``encoder_padding_mask``, ``encoder_states`` (with ``return_all_hiddens``), ``l_aux`` and
        ``multiway_split_position`` (-1 image only, 0 text only, else the number of image tokens).
        """
        if textual_tokens is None and visual_tokens is None:
            raise ValueError("BEiT3.forward needs textual_tokens, visual_tokens or both")
        if textual_tokens is None:
            x = self.vision_embed(visual_tokens, vision_masked_position)
            padding_mask, split_position = None, -1
        elif visual_tokens is None:
            x = self.text_embed(textual_tokens)
            padding_mask, split_position = text_padding_position, 0
        else:
            image = self.vision_embed(visual_tokens, vision_masked_position)
            split_position = image.shape[1]
            x = torch.cat([image, self.text_embed(textual_tokens)], dim=1)
            padding_mask = None
            if text_padding_position is not None:
                image_pad = torch.zeros(image.shape[:2], dtype=torch.bool, device=image.device)
                padding_mask = torch.cat([image_pad, text_padding_position.to(torch.bool)], dim=1)
        out = self.encoder(
            x,
            split_position,
            padding_mask=padding_mask,
            attn_mask=attn_mask,
            incremental_state=incremental_state,
            positions=positions,
            return_all_hiddens=return_all_hiddens,
        )
        out["multiway_split_position"] = split_position
        return out


class BEiT3Backbone(nn.Module):
    """``create_model``'s product: holds the encoder as ``beit3`` so keys carry the official prefix."""

    def __init__(self, config: BEiT3Config):
        super().__init__()
        self.config = config
        self.beit3 = BEiT3(config)
        init_weights(self.beit3, config.init)

    def forward(self, **kwargs: Any) -> dict[str, Any]:
        return self.beit3(**kwargs)

    def get_num_layers(self) -> int:
        return self.config.depth

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.beit3.encoder.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return no_weight_decay_names(self)


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Parameters the official recipe exempts from weight decay, besides biases and 1-d weights."""
    exempt_suffixes = ("embed_positions.A.weight", "vision_embed.cls_token", "logit_scale")
    return {name for name, _ in model.named_parameters() if name.endswith(exempt_suffixes)}


def layer_id_for_lr_decay(name: str, num_layers: int) -> int:
    """Official layer-wise lr decay id: embeddings 0, ``layers.i`` i+1, everything else num_layers+1."""
    if "embed" in name:
        return 0
    marker = "encoder.layers."
    if marker in name:
        return int(name.split(marker, 1)[1].split(".", 1)[0]) + 1
    return num_layers + 1


# -------------------------------------------------------------------------------------------- init
def init_weights(model: BEiT3, scheme: str) -> None:
    """``official``: unilm's finetuning init -- every Linear truncated normal std .02 cut at ±.02, zero
    bias, LayerNorm 1/0; embeddings and the patch conv keep torchscale's defaults (text N(0, D^-1/2),
    positions N(0, 1), cls/mask tokens 0).
    ``beit``: the paper's init (footnote 4) -- the same Linear/LayerNorm init, embeddings and tokens
    truncated normal ±.02, then the output projections (attention ``out_proj`` and FFN ``fc2``) of
    layer l (1-based) divided by sqrt(2 l).
    """
    std = INIT_STD
    model.apply(init_linear_and_norm)
    with torch.no_grad():
        if scheme == "official":
            nn.init.normal_(model.text_embed.weight, mean=0.0, std=model.config.embed_dim**-0.5)
            nn.init.normal_(model.encoder.embed_positions.A.weight)
            nn.init.normal_(model.encoder.embed_positions.B.weight)
        else:
            for tensor in (
                model.text_embed.weight,
                model.encoder.embed_positions.A.weight,
                model.encoder.embed_positions.B.weight,
                model.vision_embed.cls_token,
                model.vision_embed.mask_token,
            ):
                nn.init.trunc_normal_(tensor, std=std, a=-std, b=std)
            for index, layer in enumerate(model.encoder.layers, start=1):
                scale = math.sqrt(2.0 * index)
                for name, param in layer.named_parameters():
                    if name.endswith(("out_proj.weight", "out_proj.A.weight", "out_proj.B.weight", "fc2.weight")):
                        param.div_(scale)


# ---------------------------------------------------------------------------------- registered models
_CONFIG_FIELDS = {field.name for field in dataclasses.fields(BEiT3Config)}
_OVERRIDES = sorted(_CONFIG_FIELDS | {"mlp_ratio"})


def _create_beit3(defaults: dict[str, Any], overrides: dict[str, Any]) -> BEiT3Backbone:
    unknown = sorted(set(overrides) - set(_OVERRIDES))
    if unknown:
        raise TypeError(f"unknown override(s) {', '.join(unknown)}; valid: {', '.join(_OVERRIDES)}")
    settings = {**defaults, **overrides}
    default_vl_layers = settings.pop("default_vl_ffn_layers")
    mlp_ratio = settings.pop("mlp_ratio")
    if "ffn_dim" not in overrides:
        settings["ffn_dim"] = round(settings["embed_dim"] * mlp_ratio)
    layout = settings.setdefault("layout", "released")
    if layout == "paper" and "vl_ffn_layers" not in overrides:
        settings["vl_ffn_layers"] = min(default_vl_layers, settings["depth"])
    return BEiT3Backbone(BEiT3Config(**settings))


def _size(embed_dim: int, depth: int, num_heads: int, mlp_ratio: float, vl_layers: int) -> dict[str, Any]:
    return dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, default_vl_ffn_layers=vl_layers)


# VL-FFN layer counts for the paper layout follow VLMo (base 2, large 3) and the paper (giant 3).
_TINY = _size(192, 4, 3, 4.0, 1)
_BASE = _size(768, 12, 12, 4.0, 2)
_LARGE = _size(1024, 24, 16, 4.0, 3)
_GIANT = _size(1408, 40, 16, 6144 / 1408, 3)


@register_model
def beit3_tiny_patch16_224(**kwargs: Any) -> BEiT3Backbone:
    """A small released-layout model for tests and the CPU profiles (not an official size)."""
    return _create_beit3(dict(_TINY, img_size=224, patch_size=16), kwargs)


@register_model
def beit3_base_patch16_224(**kwargs: Any) -> BEiT3Backbone:
    return _create_beit3(dict(_BASE, img_size=224, patch_size=16), kwargs)


@register_model
def beit3_base_patch16_384(**kwargs: Any) -> BEiT3Backbone:
    return _create_beit3(dict(_BASE, img_size=384, patch_size=16), kwargs)


@register_model
def beit3_base_patch16_480(**kwargs: Any) -> BEiT3Backbone:
    return _create_beit3(dict(_BASE, img_size=480, patch_size=16), kwargs)


@register_model
def beit3_base_patch16_768(**kwargs: Any) -> BEiT3Backbone:
    return _create_beit3(dict(_BASE, img_size=768, patch_size=16), kwargs)


@register_model
def beit3_large_patch16_224(**kwargs: Any) -> BEiT3Backbone:
    return _create_beit3(dict(_LARGE, img_size=224, patch_size=16), kwargs)


@register_model
def beit3_large_patch16_384(**kwargs: Any) -> BEiT3Backbone:
    return _create_beit3(dict(_LARGE, img_size=384, patch_size=16), kwargs)


@register_model
def beit3_large_patch16_480(**kwargs: Any) -> BEiT3Backbone:
    return _create_beit3(dict(_LARGE, img_size=480, patch_size=16), kwargs)


@register_model
def beit3_large_patch16_768(**kwargs: Any) -> BEiT3Backbone:
    return _create_beit3(dict(_LARGE, img_size=768, patch_size=16), kwargs)


@register_model
def beit3_giant_patch14_224(**kwargs: Any) -> BEiT3Backbone:
    """The paper's model (Table 2): paper layout, VL-FFN in the top 3 layers. No weights were released."""
    return _create_beit3(dict(_GIANT, img_size=224, patch_size=14, layout="paper"), kwargs)
