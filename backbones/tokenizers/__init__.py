"""Tokenizers of BEiT-3: the SentencePiece text tokenizer and the visual tokenizers for MIM targets.

Text: :class:`TextTokenizer` reproduces ``XLMRobertaTokenizer(beit3.spm)`` ids (fairseq layout:
``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>``=len(spm)+1); :func:`train_sentencepiece` trains
a model with the same layout for small runs.

Vision: the paper's masked-image-modelling targets are the codes of the BEiT-v2 VQ-KD tokenizer
(:class:`VQKDTokenizer`, loaded strictly from the released checkpoint by :func:`load_vqkd_checkpoint`).
Those weights cannot be downloaded here, and training VQ-KD needs a CLIP teacher, so the small profiles
use :class:`PatchCodebookTokenizer`, a k-means codebook over patch pixels that is fitted on CPU in minutes.
Both expose ``get_codebook_indices(images) -> LongTensor[B, num_patches]`` for ``[0, 1]`` images,
``num_codes`` and ``patch_size``, so :func:`build_visual_tokenizer` can return either.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from .codebook import PatchCodebookTokenizer
from .text import TextTokenizer, train_sentencepiece
from .vqkd import VQKDCheckpointError, VQKDTokenizer, load_vqkd_checkpoint

__all__ = [
    "PatchCodebookTokenizer",
    "TextTokenizer",
    "VQKDCheckpointError",
    "VQKDTokenizer",
    "VISUAL_TOKENIZER_TYPES",
    "build_visual_tokenizer",
    "load_vqkd_checkpoint",
    "train_sentencepiece",
]

VISUAL_TOKENIZER_TYPES = ("vqkd", "codebook")


def build_visual_tokenizer(cfg: Mapping) -> nn.Module:
    """Build a visual tokenizer from a config dict.

    ``{"type": "vqkd", "checkpoint": path, **VQKDTokenizer kwargs}`` loads a VQ-KD checkpoint strictly;
    ``{"type": "codebook", "path": path}`` loads a fitted :class:`PatchCodebookTokenizer`. An optional
    ``"map_location"`` is passed to the loader. The result is in eval mode.

    Raises:
        KeyError: ``type`` or the path key is missing.
        ValueError: unknown ``type`` (the message lists the known ones) or unknown extra keys.
    """
    if "type" not in cfg:
        raise KeyError(f"visual tokenizer config {dict(cfg)} has no 'type'; known types: {VISUAL_TOKENIZER_TYPES}")
    options = {k: v for k, v in cfg.items() if k != "type"}
    kind = cfg["type"]
    if kind == "vqkd":
        if "checkpoint" not in options:
            raise KeyError("visual tokenizer config of type 'vqkd' needs 'checkpoint': path to the .pth file")
        checkpoint = Path(options.pop("checkpoint"))
        return load_vqkd_checkpoint(checkpoint, **options)
    if kind == "codebook":
        if "path" not in options:
            raise KeyError("visual tokenizer config of type 'codebook' needs 'path': a PatchCodebookTokenizer file")
        path = Path(options.pop("path"))
        map_location = options.pop("map_location", "cpu")
        if options:
            raise ValueError(f"unknown keys for a 'codebook' visual tokenizer: {sorted(options)}")
        return PatchCodebookTokenizer.load(path, map_location=map_location).eval()
    raise ValueError(f"unknown visual tokenizer type {kind!r}; known types: {VISUAL_TOKENIZER_TYPES}")
