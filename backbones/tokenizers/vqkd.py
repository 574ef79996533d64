"""BEiT-v2 VQ-KD visual tokenizer (tokenizer form), state-dict compatible with the released checkpoint.

This is a re-implementation of the *tokenizer* built by ``vqkd_encoder_base_decoder_3x768x12_clip(
as_tokenzer=True)`` in microsoft/unilm ``beit2/modeling_vqkd.py``: the CLIP teacher and its scaling
layer are absent, everything else (encoder, quantizer, decoder and their task layers) is present under
the official names so that the released ``.pth`` loads with ``strict=True``.

Code path (``get_codebook_indices``), as in the official ``VQKD.get_tokens``:

1. images in ``[0, 1]`` (``ToTensor()``) -> ``x * 255 / 127.5 - 1``;
2. encoder ViT-B/16 (``q_bias``/``v_bias`` attention, no layer scale, ``norm`` = Identity because of
   mean pooling) -> patch tokens (cls dropped) -> ``encoder.fc_norm`` (LayerNorm eps 1e-6);
3. ``encode_task_layer`` (Linear D->D, Tanh, Linear D->32) in fp32 (autocast off);
4. l2-normalise; the nearest codebook row by ``|z|^2 + |e|^2 - 2 z.e`` (rows are stored l2-normalised,
   so this is the highest cosine similarity) -> ``LongTensor[B, num_patches]`` in row-major patch order.

Unlike the official ``NormEMAVectorQuantizer.forward``, which in eval mode still updates its
``cluster_size`` buffer by EMA (and would run k-means on the first batch if ``initted`` were 0), this
module never writes to its buffers when computing codes.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VQKDTokenizer", "VQKDCheckpointError", "load_vqkd_checkpoint"]

_DROPPED_PREFIXES = ("teacher", "scaling", "loss")


class VQKDCheckpointError(ValueError):
    """A VQ-KD checkpoint does not match the tokenizer's state dict (lists every offending key)."""


class _Attention(nn.Module):
    """BEiT attention: bias-free qkv projection plus separate q/v biases (k has none)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(batch, seq, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(batch, seq, dim))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = _Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VQKDViT(nn.Module):
    """The ViT used as VQ-KD encoder and decoder (BEiT-v2 ``VisionTransformer`` with mean pooling, no head).

    Returns the fc_norm-ed patch tokens ``[B, N, D]`` (the cls token is dropped before the norm).

    Args:
        img_size: input side in pixels (square inputs).
        patch_size: patch side in pixels.
        in_chans: input channels (3 for the encoder, ``code_dim`` for the decoder).
        embed_dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / ``embed_dim``.
    """

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int, depth: int,
                 num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size, self.patch_size = img_size, patch_size
        self.grid_size = img_size // patch_size
        self.patch_embed = _PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size**2 + 1, embed_dim))
        self.blocks = nn.ModuleList(_Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"expected inputs of {self.img_size}x{self.img_size}, got {tuple(x.shape[-2:])} "
                "(resize the images; position embeddings are not interpolated)"
            )
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.fc_norm(x[:, 1:])


class _EmbeddingEMA(nn.Module):
    """Codebook storage with the official names: weight / cluster_size / embed_avg (frozen) + initted."""

    def __init__(self, num_codes: int, code_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_codes, code_dim), requires_grad=False)
        self.cluster_size = nn.Parameter(torch.zeros(num_codes), requires_grad=False)
        self.embed_avg = nn.Parameter(torch.zeros(num_codes, code_dim), requires_grad=False)
        self.register_buffer("initted", torch.zeros(1))


class NormEMAVectorQuantizer(nn.Module):
    """Read-only form of BEiT-v2's quantizer: l2-normalised inputs, nearest codebook row.

    The EMA statistics (``cluster_size``, ``embedding.cluster_size``, ``embedding.embed_avg``) are kept
    only so that checkpoints load strictly; they are never updated here.
    """

    def __init__(self, num_codes: int, code_dim: int):
        super().__init__()
        self.num_codes, self.code_dim = num_codes, code_dim
        self.embedding = _EmbeddingEMA(num_codes, code_dim)
        self.register_buffer("cluster_size", torch.zeros(num_codes))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Indices ``[...]`` of the nearest codes for features ``z`` of shape ``[..., code_dim]``."""
        z = F.normalize(z.float(), p=2, dim=-1).reshape(-1, self.code_dim)
        codebook = self.embedding.weight.float()
        dist = z.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2 * z @ codebook.t()
        return dist.argmin(dim=1)


class VQKDTokenizer(nn.Module):
    """BEiT-v2 VQ-KD tokenizer; the defaults are ``vqkd_encoder_base_decoder_3x768x12_clip``.

    Args:
        img_size: image side in pixels.
        patch_size: encoder patch side (the code grid is ``img_size // patch_size`` squared).
        embed_dim: encoder (and decoder) width.
        depth: encoder blocks.
        num_heads: encoder (and decoder) attention heads.
        mlp_ratio: MLP width ratio of both ViTs.
        num_codes: codebook size.
        code_dim: codebook vector size.
        decoder_depth: decoder blocks (3 in the released tokenizer).
        decoder_out_dim: output width of ``decode_task_layer`` (512 = CLIP ViT-B/16 feature size).
        seed: seed of the random initialisation (used only when not built on the meta device; a
            checkpoint normally overwrites everything).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, num_codes: int = 8192, code_dim: int = 32,
                 decoder_depth: int = 3, decoder_out_dim: int = 512, seed: int = 0):
        super().__init__()
        self.patch_size = patch_size
        self.num_codes = num_codes
        self.encoder = VQKDViT(img_size, patch_size, 3, embed_dim, depth, num_heads, mlp_ratio)
        self.grid_size = self.encoder.grid_size
        self.decoder = VQKDViT(self.grid_size, 1, code_dim, embed_dim, decoder_depth, num_heads, mlp_ratio)
        self.quantize = NormEMAVectorQuantizer(num_codes, code_dim)
        self.encode_task_layer = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.Tanh(), nn.Linear(embed_dim, code_dim)
        )
        self.decode_task_layer = nn.Sequential(
            nn.Linear(embed_dim, embed_dim), nn.Tanh(), nn.Linear(embed_dim, decoder_out_dim)
        )
        if not self.quantize.embedding.weight.is_meta:
            self.reset_parameters(torch.Generator().manual_seed(seed))
        self.requires_grad_(False)
        self.eval()

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """BEiT-style init (trunc-normal std 0.02, zero biases) and a random l2-normalised codebook."""
        for name, param in self.named_parameters():
            if name.startswith("quantize."):
                continue
            if param.ndim == 1 and ("norm" in name) and name.endswith("weight"):
                param.fill_(1.0)
            elif param.ndim == 1:
                param.zero_()
            else:
                nn.init.trunc_normal_(param, std=0.02, a=-0.04, b=0.04, generator=generator)
        codebook = F.normalize(torch.randn(self.quantize.embedding.weight.shape, generator=generator), dim=-1)
        self.quantize.embedding.weight.copy_(codebook)
        self.quantize.embedding.embed_avg.copy_(codebook)
        self.quantize.embedding.cluster_size.zero_()
        self.quantize.embedding.initted.fill_(1.0)
        self.quantize.cluster_size.zero_()

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """``[0, 1]`` images (``ToTensor()``) -> ``[-1, 1]``, with the official arithmetic (x*255/127.5-1).

        The official code multiplies by 255 only ``if data.max() <= 1``; here inputs must be in
        ``[0, 1]`` and anything else is an error rather than a silent guess.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"expected float images in [0, 1] (ToTensor()), got dtype {images.dtype}")
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            raise ValueError(f"expected images in [0, 1] (ToTensor()), got values in [{lo:.3f}, {hi:.3f}]")
        return images * 255.0 / 127.5 - 1.0

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """l2-normalised quantizer inputs ``[B, num_patches, code_dim]`` (fp32) for ``[0, 1]`` images."""
        features = self.encoder(self.preprocess(images).to(self.encoder.cls_token.dtype))
        with torch.autocast(device_type=features.device.type, enabled=False):
            z = self.encode_task_layer(features.to(self.encode_task_layer[-1].weight.dtype))
        return F.normalize(z.float(), p=2, dim=-1)

    @torch.no_grad()
    def get_codebook_indices(self, images: torch.Tensor) -> torch.Tensor:
        """Visual-token ids ``LongTensor[B, num_patches]`` (row-major patch order) of ``[0, 1]`` images."""
        z = self.encode(images)
        return self.quantize(z).view(z.shape[0], -1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.get_codebook_indices(images)

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Decoder path used in VQ-KD training: code ids ``[B, N]`` -> predicted teacher features ``[B, N, out]``."""
        codes = self.quantize.embedding.weight[indices]  # [B, N, C]
        side = math.isqrt(indices.shape[1])
        if side * side != indices.shape[1]:
            raise ValueError(f"expected a square grid of codes, got {indices.shape[1]}")
        grid = codes.transpose(1, 2).reshape(indices.shape[0], -1, side, side)
        return self.decode_task_layer(self.decoder(grid))


def _describe(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_vqkd_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", **cfg) -> VQKDTokenizer:
    """Load a VQ-KD tokenizer checkpoint strictly, as the official ``as_tokenzer=True`` builder does.

    The file may hold ``{'model': state_dict}``, ``{'state_dict': state_dict}`` or a raw state dict;
    keys starting with ``teacher``, ``scaling`` or ``loss`` (training-only) are dropped. It is read with
    ``torch.load(weights_only=True)``. The model is built on the meta device and the tensors are
    assigned, so no time is spent on a random init. Parameters are cast to fp32.

    Args:
        path: checkpoint file.
        map_location: where the tensors are loaded.
        **cfg: :class:`VQKDTokenizer` arguments (defaults: the released base tokenizer).

    Raises:
        FileNotFoundError: no such file.
        VQKDCheckpointError: unreadable file, or missing / unexpected / shape-mismatched keys (all listed),
            or a codebook that was never initialised.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VQ-KD checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling errors have no common base class
        raise VQKDCheckpointError(f"cannot read VQ-KD checkpoint {path}: {err}") from err
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        state = checkpoint["model"]
    elif isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        state = checkpoint["state_dict"]
    elif isinstance(checkpoint, dict):
        state = checkpoint
    else:
        raise VQKDCheckpointError(f"{path} holds a {type(checkpoint).__name__}, expected a state dict")
    state = {k: v for k, v in state.items() if not k.startswith(_DROPPED_PREFIXES)}

    with torch.device("meta"):
        model = VQKDTokenizer(**cfg)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (checkpoint {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}, "
        f"model {tuple(expected[k].shape)})"
        for k, v in state.items()
        if k in expected and (not isinstance(v, torch.Tensor) or v.shape != expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing: {_describe(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected: {_describe(unexpected)}")
        if mismatched:
            problems.append(f"{len(mismatched)} with the wrong shape: {_describe(mismatched)}")
        raise VQKDCheckpointError(
            f"{path} does not match VQKDTokenizer({cfg or 'base config'}): " + "; ".join(problems)
            + ". Check the tokenizer config (img_size, embed_dim, depth, num_codes, ...) against the file."
        )
    model.load_state_dict(state, strict=True, assign=True)
    model = model.float().requires_grad_(False).eval()
    if not bool(model.quantize.embedding.initted.item()):
        raise VQKDCheckpointError(
            f"{path}: quantize.embedding.initted is 0, i.e. the codebook was never initialised "
            "(the official quantizer would run k-means on the first batch); use a trained tokenizer"
        )
    return model
