"""What a BEiT-3 checkpoint holds, read from its tensors: the encoder's architecture.

``inspect_backbone`` reads embed dim, depth, FFN size, patch size, resolution (from the vision
position table), vocabulary, text positions, layout (released Multiway attention or the paper's
shared attention with VL-FFN layers) and whether the final encoder LayerNorm is there. The number of
attention heads is the one architecture fact a state dict does not hold: the released sizes use
64-dimensional heads (base 12, large 16), which is the default. ``parse_release_name`` reads the
official file names (``beit3_base_patch16_480_vqa.pth``), which only cross-check the tensors.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointError

ENCODER_PREFIX = "beit3."
OFFICIAL_HEAD_DIM = 64  # base 768/12, large 1024/16
NUM_POS_EXTRA_ROWS = 3  # two fairseq rows + the CLS token
SIZES = {"base": (768, 12), "large": (1024, 24)}  # name -> (embed_dim, depth) of the released models
RELEASE_NAME = re.compile(
    r"^beit3_(?P<size>base|large)(?:_(?P<variant>indomain|itc))?_patch(?P<patch>\d+)_(?P<img>\d+)"
    r"(?:_(?P<suffix>[a-z0-9_]+?))?\.pth?$"
)


@dataclass(frozen=True)
class BackboneArchitecture:
    """The encoder a checkpoint holds, as ``backbones.create_model`` overrides (``model_overrides``)."""

    embed_dim: int
    depth: int
    ffn_dim: int
    patch_size: int
    img_size: int
    vocab_size: int
    max_text_positions: int
    layout: str
    vl_ffn_layers: int
    normalize_output: bool

    @property
    def size_name(self) -> str | None:
        """``base``/``large`` when embed dim and depth are a released size's, else None."""
        for name, dims in SIZES.items():
            if (self.embed_dim, self.depth) == dims:
                return name
        return None

    def model_name(self) -> str:
        """The registry name of this size and resolution (``beit3_base_patch16_480``); other sizes are
        built as ``beit3_base_patch16_224`` with every field overridden."""
        size = self.size_name or "base"
        return f"beit3_{size}_patch16_224" if self.size_name is None else f"beit3_{size}_patch{self.patch_size}_{self.img_size}"

    def model_overrides(self, num_heads: int | None = None) -> dict:
        """``create_model`` overrides that rebuild this encoder; ``num_heads`` defaults to 64-dim heads.

        Raises:
            CheckpointError: no ``num_heads`` given and the embed dim is not a multiple of 64.
        """
        if num_heads is None:
            if self.embed_dim % OFFICIAL_HEAD_DIM:
                raise CheckpointError(
                    f"the checkpoint's embed dim {self.embed_dim} is not a multiple of {OFFICIAL_HEAD_DIM} (the released "
                    "head size) and a state dict does not record the number of attention heads: give num_heads"
                )
            num_heads = self.embed_dim // OFFICIAL_HEAD_DIM
        overrides = asdict(self)
        if self.layout == "released":
            overrides.pop("vl_ffn_layers")
        return {**overrides, "num_heads": int(num_heads)}


def _layer_indices(keys: list[str], prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
    return sorted({int(m.group(1)) for key in keys if (m := pattern.match(key))})


def _tensor(state_dict: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in state_dict:
        raise CheckpointError(f"no BEiT-3 encoder: key {key!r} ({what}) is missing")
    return state_dict[key]


def inspect_backbone(state_dict: Mapping[str, torch.Tensor], prefix: str = ENCODER_PREFIX) -> BackboneArchitecture:
    """The architecture of the encoder under ``prefix`` (official task models: ``beit3.``).

    Raises:
        CheckpointError: a key the architecture is read from is missing or has an odd shape; the
            message names it.
    """
    keys = list(state_dict)
    embed = _tensor(state_dict, f"{prefix}text_embed.weight", "text embedding")
    proj = _tensor(state_dict, f"{prefix}vision_embed.proj.weight", "patch embedding")
    vision_pos = _tensor(state_dict, f"{prefix}encoder.embed_positions.A.weight", "vision position table")
    text_pos = _tensor(state_dict, f"{prefix}encoder.embed_positions.B.weight", "text position table")
    layers = _layer_indices(keys, prefix)
    if not layers or layers != list(range(len(layers))):
        raise CheckpointError(f"no BEiT-3 encoder layers {prefix}encoder.layers.<i>.* numbered from 0 (found {layers})")
    first = f"{prefix}encoder.layers.0."
    if f"{first}self_attn.q_proj.A.weight" in state_dict:
        layout = "released"
    elif f"{first}self_attn.q_proj.weight" in state_dict:
        layout = "paper"
    else:
        raise CheckpointError(f"no attention projection {first}self_attn.q_proj.A.weight (released layout) or "
                              f"{first}self_attn.q_proj.weight (paper layout)")
    fc1 = _tensor(state_dict, f"{first}ffn.A.fc1.weight", "vision FFN")
    patches = vision_pos.shape[0] - NUM_POS_EXTRA_ROWS
    side = math.isqrt(max(patches, 0))
    if patches <= 0 or side * side != patches:
        raise CheckpointError(f"{prefix}encoder.embed_positions.A.weight has {vision_pos.shape[0]} rows: not a square "
                              f"patch grid plus {NUM_POS_EXTRA_ROWS} rows")
    vl_layers = sum(f"{prefix}encoder.layers.{i}.ffn.VL.fc1.weight" in state_dict for i in layers)
    return BackboneArchitecture(
        embed_dim=int(embed.shape[1]),
        depth=len(layers),
        ffn_dim=int(fc1.shape[0]),
        patch_size=int(proj.shape[-1]),
        img_size=side * int(proj.shape[-1]),
        vocab_size=int(embed.shape[0]),
        max_text_positions=int(text_pos.shape[0]),
        layout=layout,
        vl_ffn_layers=vl_layers,
        normalize_output=any(key.startswith(f"{prefix}encoder.layer_norm.") for key in keys),
    )


def parse_release_name(path: str | Path) -> dict | None:
    """``{size, variant, patch_size, img_size, suffix}`` of an official file name, else None.

    >>> parse_release_name("beit3_large_patch16_384_f30k_retrieval.pth")["suffix"]
    'f30k_retrieval'
    """
    match = RELEASE_NAME.match(Path(path).name)
    if match is None:
        return None
    return {"size": match["size"], "variant": match["variant"] or "", "patch_size": int(match["patch"]),
            "img_size": int(match["img"]), "suffix": match["suffix"] or ""}


def name_mismatches(path: str | Path, architecture: BackboneArchitecture) -> list[str]:
    """Where an official file name disagrees with the tensors (empty for agreement or other names)."""
    named = parse_release_name(path)
    if named is None:
        return []
    found = []
    if architecture.size_name != named["size"]:
        found.append(f"the name says {named['size']}, the tensors hold embed dim {architecture.embed_dim} x "
                     f"{architecture.depth} layers")
    if architecture.patch_size != named["patch_size"] or architecture.img_size != named["img_size"]:
        found.append(f"the name says patch {named['patch_size']} at {named['img_size']}px, the tensors patch "
                     f"{architecture.patch_size} at {architecture.img_size}px")
    return found
