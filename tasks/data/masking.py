"""Masking for BEiT-3 masked data modelling: block-wise image masking and BERT-style text masking.

Paper defaults (BEiT-3 §2.3 / Table 11): 15% of the tokens of text-only data, 50% of the text tokens of
image-text pairs, 40% of the image patches with BEiT's block-wise masking. Every function takes its
random generator explicitly.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "IMAGE_MASK_RATIO",
    "PAIR_MASK_PROB",
    "TEXT_ONLY_MASK_PROB",
    "BlockMaskGenerator",
    "mask_text",
]

TEXT_ONLY_MASK_PROB = 0.15
PAIR_MASK_PROB = 0.5
IMAGE_MASK_RATIO = 0.4
IGNORE_INDEX = -100


class BlockMaskGenerator:
    """BEiT block-wise masking with an exact number of masked patches (the BEiT-v2 variant).

    Rectangular blocks are added until ``num_masking_patches`` patches are masked: each block has an
    area drawn uniformly in ``[min_num_patches, min(max_num_patches, remaining)]`` and an aspect ratio
    ``h / w`` drawn log-uniformly in ``[min_aspect, max_aspect]``, is placed uniformly, and is accepted
    if it adds between 1 and ``remaining`` new patches (overlap with earlier blocks is allowed); up to
    10 tries per block. As in BEiT a block must be strictly smaller than the grid in both directions.
    When no block can be added any more, the remaining patches are masked uniformly at random (as the
    BEiT-v2 generator does), so the count is always exact, but the mask is then not purely a union of
    rectangles.

    Small grids: ``min_num_patches`` is clamped to ``max_num_patches`` and both to the target count, so
    e.g. a 4x4 grid with 6 target patches draws block areas in ``[1, 6]`` instead of failing on the
    default minimum of 16 (BEiT's ``uniform(16, 6)`` would draw areas above the remaining count, which
    it then rejects, and fall back to random patches).

    Args:
        input_size: patch grid ``(height, width)`` or one int for a square grid.
        num_masking_patches: patches to mask; ``None`` uses ``round(mask_ratio * height * width)``
            (78 of 196 for 40% of 14x14; BEiT's scripts use 75).
        mask_ratio: fraction used when ``num_masking_patches`` is ``None``.
        min_num_patches: minimum block area (BEiT: 16).
        max_num_patches: maximum block area (``None``: the target count).
        min_aspect: minimum block aspect ratio ``h / w`` (BEiT: 0.3).
        max_aspect: maximum aspect ratio (``None``: ``1 / min_aspect``).
    """

    def __init__(self, input_size: int | tuple[int, int] = (14, 14), num_masking_patches: int | None = None,
                 mask_ratio: float = IMAGE_MASK_RATIO, min_num_patches: int = 16,
                 max_num_patches: int | None = None, min_aspect: float = 0.3, max_aspect: float | None = None):
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        self.height, self.width = (int(s) for s in input_size)
        if self.height < 1 or self.width < 1:
            raise ValueError(f"input_size must be positive, got {input_size}")
        self.num_patches = self.height * self.width
        if num_masking_patches is None:
            if not 0.0 <= mask_ratio <= 1.0:
                raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
            num_masking_patches = round(mask_ratio * self.num_patches)
        if not 0 <= num_masking_patches <= self.num_patches:
            raise ValueError(f"num_masking_patches {num_masking_patches} outside [0, {self.num_patches}]")
        self.num_masking_patches = int(num_masking_patches)
        self.max_num_patches = self.num_masking_patches if max_num_patches is None else int(max_num_patches)
        self.max_num_patches = max(1, min(self.max_num_patches, self.num_masking_patches))
        self.min_num_patches = max(1, min(int(min_num_patches), self.max_num_patches))
        if min_aspect <= 0:
            raise ValueError(f"min_aspect must be > 0, got {min_aspect}")
        max_aspect = max_aspect or 1.0 / min_aspect
        self.aspect_range = (min(min_aspect, max_aspect), max(min_aspect, max_aspect))
        self.log_aspect = (math.log(self.aspect_range[0]), math.log(self.aspect_range[1]))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(grid={self.height}x{self.width}, num_masking_patches="
            f"{self.num_masking_patches}, block_area=[{self.min_num_patches}, {self.max_num_patches}], "
            f"aspect=[{self.aspect_range[0]:.3f}, {self.aspect_range[1]:.3f}])"
        )

    def add_block(self, mask: np.ndarray, max_new: int, rng: np.random.Generator) -> int:
        """Try (up to 10 times) to add one block adding 1..``max_new`` patches; returns how many it added."""
        low = min(self.min_num_patches, max_new)
        for _ in range(10):
            area = rng.uniform(low, max_new)
            aspect = math.exp(rng.uniform(*self.log_aspect))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if not (0 < h < self.height and 0 < w < self.width):
                continue
            top = int(rng.integers(0, self.height - h + 1))
            left = int(rng.integers(0, self.width - w + 1))
            window = mask[top : top + h, left : left + w]
            new = h * w - int(window.sum())
            if 0 < new <= max_new:
                window[...] = True
                return new
        return 0

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """A boolean ``(height, width)`` mask with exactly ``num_masking_patches`` True entries."""
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < self.num_masking_patches:
            added = self.add_block(mask, min(self.num_masking_patches - count, self.max_num_patches), rng)
            if added == 0:
                break
            count += added
        if count < self.num_masking_patches:
            free = np.flatnonzero(~mask)
            extra = rng.choice(free, self.num_masking_patches - count, replace=False)
            mask.flat[extra] = True
        return mask


def mask_text(
    text_ids: torch.Tensor,
    padding_mask: torch.Tensor | None,
    *,
    mask_prob: float,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
    special_ids: tuple[int, ...] = (0, 1, 2),
    min_masked: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT-style masking of text tokens for masked language modelling.

    Per row, the candidates are the positions that are not padding (``padding_mask == 0``) and whose id
    is not in ``special_ids``. With the default ``(0, 1, 2)`` neither ``<s>``, ``<pad>`` nor ``</s>`` is
    ever masked (BERT practice for pretraining MLM: the sentence boundaries carry no content to predict);
    pass ``special_ids=(0, 1)`` to allow ``</s>`` to be masked, as the official BEiT-3 captioning
    fine-tuning does (there predicting ``</s>`` teaches the model where to stop); keep the ``<s>`` and
    ``<pad>`` ids in ``special_ids`` in any case. Of ``n`` candidates,
    ``max(min_masked, round(n * mask_prob))`` (Python's half-to-even ``round``, as in the official
    code; at most ``n``; none when ``n == 0``) are chosen uniformly without replacement. Each chosen
    position independently becomes ``mask_id`` with probability 0.8, a random id with probability 0.1
    (uniform over ``[0, vocab_size)`` minus ``special_ids`` and ``mask_id``), and is left unchanged
    otherwise.

    Args:
        text_ids: ``LongTensor[B, L]``.
        padding_mask: ``[B, L]``, 1 on pad positions (the BEiT-3 convention), or ``None``.
        mask_prob: fraction of candidate tokens to mask (see ``TEXT_ONLY_MASK_PROB``, ``PAIR_MASK_PROB``).
        mask_id: id of ``<mask>``.
        vocab_size: size of the id space, including ``mask_id``.
        generator: source of all randomness (a CPU ``torch.Generator``).
        special_ids: ids that are never masked and never used as random replacements.
        min_masked: minimum number of masked tokens per row that has candidates.

    Returns:
        ``(input_ids, labels, masked_positions)``: the corrupted ids, the original ids at masked positions
        and -100 elsewhere, and the bool mask of chosen positions.
    """
    if text_ids.ndim != 2:
        raise ValueError(f"text_ids must be [B, L], got shape {tuple(text_ids.shape)}")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if padding_mask is not None and padding_mask.shape != text_ids.shape:
        raise ValueError(f"padding_mask shape {tuple(padding_mask.shape)} != text_ids {tuple(text_ids.shape)}")
    excluded = sorted({int(i) for i in special_ids} | {int(mask_id)})
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[[i for i in excluded if 0 <= i < vocab_size]] = False
    replacement_ids = allowed.nonzero().flatten()
    if len(replacement_ids) == 0:
        raise ValueError(f"no ids left for random replacement in vocab_size {vocab_size} minus {excluded}")

    device = text_ids.device
    ids = text_ids.detach().cpu().long()
    candidates = ~torch.isin(ids, torch.tensor(list(special_ids), dtype=torch.long))
    if padding_mask is not None:
        candidates &= padding_mask.detach().cpu() == 0
    num_candidates = candidates.sum(dim=1)
    num_masked = torch.tensor(
        [min(n, max(min_masked, round(n * mask_prob))) if n > 0 else 0 for n in num_candidates.tolist()]
    )
    # Uniform choice without replacement, vectorised: rank random scores among each row's candidates.
    scores = torch.rand(ids.shape, generator=generator).masked_fill(~candidates, 2.0)
    ranks = scores.argsort(dim=1, stable=True).argsort(dim=1)
    masked = ranks < num_masked.unsqueeze(1)

    action = torch.rand(ids.shape, generator=generator)
    random_ids = replacement_ids[torch.randint(len(replacement_ids), ids.shape, generator=generator)]
    inputs = ids.clone()
    inputs[masked & (action < 0.8)] = mask_id
    use_random = masked & (action >= 0.8) & (action < 0.9)
    inputs[use_random] = random_ids[use_random]
    labels = torch.where(masked, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs.to(device), labels.to(device), masked.to(device)
