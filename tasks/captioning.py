"""Image captioning (COCO Karpathy, NoCaps): unilm ``BEiT3ForCaptioning`` and its recipe.

The model is BEiT-3 as a uni-directional decoder over ``[image tokens, caption tokens]``
(``modeling_finetune.py``): image tokens attend to all image tokens and to no text, caption token
``i`` attends to all image tokens and to caption tokens ``0..i`` (itself included). Fine-tuning is
masked language modelling under that mask: ``mask_caption_tokens`` corrupts 60-70% of each caption
(``CaptioningDataset._masking_on_text_tokens``), ``mlm_head`` runs only at the masked positions and
``BertCaptioningLoss`` (``utils.py``) scores them.

Decoding (``CaptioningHandler.eval_batch``) predicts each next token at a trailing ``[MASK]``: the
first step feeds the image and ``[BOS, MASK]``; every later step feeds ``[previous token, MASK]``
alone, with the image and earlier caption tokens held in the KV cache (torchscale's
``incremental_state``), text positions ``cur_len, cur_len + 1`` and the last two rows of the
attention mask. After each step the cache is reordered by beam and the ``[MASK]``'s key/value is
dropped, so the cache only ever holds real tokens. :func:`generate` reproduces that beam search;
``use_cache=False`` recomputes the whole sequence at every step instead and yields the same
captions.

>>> model = tasks.build_model("captioning", "beit3_base_patch16_480")
>>> ids = generate(model, images, tokenizer)                 # (B, 32) token ids, beam 3
>>> captions = tokenizer.batch_decode(ids, skip_special_tokens=True)

Training and evaluation on the Karpathy COCO layout (or a benchmark world):
``build_data(data_config, model=, seed=, rank=, world_size=)`` gives the trainer's batches
(:func:`collate_train`'s keys plus ``global_step``, the optimizer step the loss's drop-worst schedule
reads), :func:`training_step` the ``BertCaptioningLoss``, ``evaluate(model, data_config, split="val" |
"test")`` beam search (3 beams, length penalty 0.6, KV cache) scored by the COCO caption metrics
against the Karpathy references. ``data_config`` keys (:data:`DATA_DEFAULTS`): ``root`` (official
``data_path`` with ``train2014/``, ``val2014/`` and the Karpathy file, or a world directory),
``annotation`` (``dataset_coco.json``), ``tokenizer``, ``split``, ``batch_size`` (per rank),
``img_size`` (default the model's), ``max_len`` (``num_max_bpe_tokens``), ``mask_prob``, ``randaug``,
``quirks``, ``num_workers``, ``grad_accum_steps`` (the trainer's, for ``global_step``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from backbones import BEiT3Backbone
from tasks.finetune_data import (
    ImagesFrom,
    DataRoot,
    FinetuneData,
    check_not_empty,
    check_text_fits,
    eval_batches,
    first_items,
    load_text_tokenizer,
    merge_config,
    model_img_size,
    resolve_root,
    shuffled_image_sources,
)
from tasks.heads import (
    TaskModel,
    check_quirks,
    create_task_backbone,
    init_head_weights,
    select_positions,
    transform_is_train,
)
from tasks.spec import EvalResult, MetricSpec, TaskSpec, giant_recipe

__all__ = [
    "CAPTIONING_RECIPES",
    "DATA_DEFAULTS",
    "BEiT3ForCaptioning",
    "BertCaptioningLoss",
    "SpecialTokens",
    "build_data",
    "build_eval_dataset",
    "captioning_attention_mask",
    "captioning_loss",
    "collate_eval",
    "collate_train",
    "decode_captions",
    "evaluate",
    "evaluate_captions",
    "generate",
    "mask_caption_tokens",
    "predict_captions",
    "score_predictions",
    "training_step",
]

POSITION_OFFSET = 2  # fairseq: the first text token sits at position 2 of the text table
TOP_CANDIDATES_PER_BEAM = 3  # CaptioningHandler's TOPN_PER_BEAM
FIRST_RANDOM_ID = 3  # random replacements are drawn from [3, vocab_size): never <s>, <pad>, </s>

# Fine-tuning recipes. "base"/"large": unilm beit3/get_started/get_started_for_captioning.md plus the
# defaults of run_beit3_finetuning.py; "giant": paper Table 13 (arXiv 2208.10442v2). Batch sizes are
# totals (8 GPUs x 32 in get_started).
_RELEASED_COMMON = dict(
    img_size=480,
    batch_size=256,
    layer_decay=1.0,
    epochs=10,
    warmup_epochs=1,
    drop_path=0.1,
    weight_decay=0.05,
    randaug=True,
    num_max_bpe_tokens=32,
    mask_prob=0.7,  # --captioning_mask_prob 0.7 in get_started (the argparse default is 0.6)
    label_smoothing=0.1,
    drop_worst_ratio=0.2,
    drop_worst_after=12000,
    num_beams=3,
    length_penalty=0.6,
    opt="adamw",
    opt_betas=(0.9, 0.999),
    opt_eps=1e-8,
    min_lr=1e-6,
    checkpoint="beit3_{size}_patch16_224.pth (pretrained, not ITC)",
    source="unilm beit3/get_started/get_started_for_captioning.md + run_beit3_finetuning.py defaults",
)
CAPTIONING_RECIPES: dict[str, dict[str, Any]] = {
    "base": dict(_RELEASED_COMMON, model="beit3_base_patch16_480", lr=4e-5, nocaps_lr=1e-5),
    "large": dict(_RELEASED_COMMON, model="beit3_large_patch16_480", lr=8e-6, nocaps_lr=8e-6),
    "giant": dict(
        model="beit3_giant_patch14_224",
        img_size=392,
        batch_size=256,
        lr=8e-6,
        steps=16000,
        warmup_steps=1600,
        weight_decay=0.01,
        drop_path=0.3,
        mask_prob=0.6,
        label_smoothing=0.1,
        num_beams=3,
        opt="adamw",
        source="paper Table 13 (COCO captioning, BEiT-3 giant)",
    ),
}


# ------------------------------------------------------------------------------------------- model
def captioning_attention_mask(num_image_tokens: int, text_len: int, device: torch.device | None = None) -> torch.Tensor:
    """The official ``uni_mask``: a (I+T, I+T) long tensor, 1 where a query may *not* see a key.

    Image queries see every image key and no text key; text query ``i`` sees every image key and
    text keys ``0..i``. Long (not bool) because torchscale turns set entries into -1e8 with
    ``masked_fill`` on the mask itself.
    """
    total = num_image_tokens + text_len
    allowed = torch.zeros(total, total, dtype=torch.long, device=device)
    allowed[:, :num_image_tokens] = 1
    allowed[num_image_tokens:, num_image_tokens:] = torch.tril(
        torch.ones(text_len, text_len, dtype=torch.long, device=device)
    )
    return 1 - allowed


class BEiT3ForCaptioning(TaskModel):
    """unilm ``BEiT3ForCaptioning``: the encoder as ``beit3`` plus ``mlm_head`` Linear(D, vocab).

    Args:
        backbone: a released- or paper-layout model from ``backbones.create_model``.
    """

    def __init__(self, backbone: BEiT3Backbone):
        super().__init__(backbone)
        self.patch_size = self.config.patch_size
        self.max_text_positions = self.config.max_text_positions
        self.mlm_head = nn.Linear(self.config.embed_dim, self.config.vocab_size)
        self.mlm_head.apply(init_head_weights)

    @property
    def max_text_tokens(self) -> int:
        """Longest caption (``<s>`` and ``</s>`` included) the text position table can hold."""
        return self.max_text_positions - POSITION_OFFSET

    def _num_image_tokens(self, image: torch.Tensor | None, text_len: int, num_new: int,
                          incremental_state: dict | None) -> int:
        if image is not None:
            return (image.shape[-2] // self.patch_size) * (image.shape[-1] // self.patch_size) + 1
        # A decoding step without the image: the cache holds the image tokens and the earlier text.
        cached = incremental_state[0]["prev_key"].shape[2]
        return cached - (text_len - num_new)

    def forward(
        self,
        image: torch.Tensor | None,
        text_ids: torch.Tensor,
        padding_mask: torch.Tensor | None,
        language_masked_pos: torch.Tensor | None,
        text_len: int | None = None,
        incremental_state: dict[int, dict[str, Any]] | None = None,
        num_masked: int | None = None,
    ) -> tuple[torch.Tensor, dict[int, dict[str, Any]] | None]:
        """Logits of the caption tokens (all, or only those at ``language_masked_pos``).

        Args:
            image: (B, 3, H, W), or ``None`` for a decoding step after the first (the image is in
                ``incremental_state`` then).
            text_ids: (B, T) caption ids; in a decoding step the last ``T`` tokens of the caption.
            padding_mask: (B, T), 1 on pad tokens (ignored in decoding steps, as the official).
            language_masked_pos: (B, T) positions whose logits are returned; ``None`` for all.
            num_masked: the number of True ``language_masked_pos`` when the host knows it (the batch's
                ``num_masked``): the positions are then selected without a device read.
            text_len: caption length so far (``T`` unless decoding without the image).
            incremental_state: the KV cache, ``{layer: {"prev_key", "prev_value"}}``; filled in place.

        Returns:
            ``(logits, incremental_state)``: logits (M, vocab) at the M masked positions, or
            (B, T, vocab) when ``language_masked_pos`` is ``None``.
        """
        num_new = text_ids.shape[1]
        text_len = num_new if text_len is None else int(text_len)
        if image is not None and text_len != num_new:
            raise ValueError(f"text_len={text_len} but text_ids has {num_new} tokens; with the image the "
                             "whole caption is fed, so text_len must equal text_ids.size(1)")
        if image is None and (not incremental_state or "prev_key" not in incremental_state.get(0, {})):
            raise ValueError("image=None is a decoding step after the first: pass the incremental_state "
                             "that the first step (with the image) filled")
        if text_len > self.max_text_tokens:
            raise ValueError(
                f"caption of {text_len} tokens does not fit the text position table of "
                f"{self.max_text_positions} rows (positions start at {POSITION_OFFSET}, so at most "
                f"{self.max_text_tokens} tokens including <s> and </s>): truncate captions to "
                f"{self.max_text_tokens} tokens (e.g. tokenizer(texts, max_len={self.max_text_tokens}))"
            )
        num_image_tokens = self._num_image_tokens(image, text_len, num_new, incremental_state)
        attn_mask = captioning_attention_mask(num_image_tokens, text_len, text_ids.device)

        if incremental_state is not None:
            for index in range(self.get_num_layers()):
                incremental_state.setdefault(index, {})

        positions = None
        if image is None:
            # The last num_new caption tokens: their mask rows and text positions. For the official
            # step of two tokens this is uni_mask[-2:] and arange(text_len, text_len + 2).
            attn_mask = attn_mask[-num_new:]
            padding_mask = None
            first = text_len - num_new + POSITION_OFFSET
            positions = torch.arange(first, first + num_new, device=text_ids.device).unsqueeze(0)

        out = self.beit3(
            textual_tokens=text_ids,
            visual_tokens=image,
            text_padding_position=padding_mask,
            attn_mask=attn_mask,
            incremental_state=incremental_state,
            positions=positions,
        )
        text_feats = out["encoder_out"] if image is None else out["encoder_out"][:, num_image_tokens:]
        if language_masked_pos is not None:
            text_feats = select_positions(text_feats, language_masked_pos, num_masked)
        return self.mlm_head(text_feats), incremental_state


def build_captioning_model(model_name: str, **overrides: Any) -> BEiT3ForCaptioning:
    """``BEiT3ForCaptioning`` on ``backbones.create_model(model_name, **overrides)`` (final LN kept)."""
    return BEiT3ForCaptioning(create_task_backbone(model_name, {}, overrides))


# ---------------------------------------------------------------------------------------- training
def mask_caption_tokens(
    text_ids: torch.Tensor,
    padding_mask: torch.Tensor,
    *,
    mask_prob: float = 0.6,
    mask_id: int,
    vocab_size: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt captions for training, as ``CaptioningDataset._masking_on_text_tokens``.

    Per row with ``n`` real tokens (``<s> ... </s>``; ``padding_mask == 0``), ``max(1, min(int(n * p
    + 0.5), n - 1))`` distinct positions are drawn uniformly from ``1..n-1``: ``<s>`` is never masked,
    ``</s>`` can be. Each becomes ``mask_id`` with probability 0.8, stays with 0.1, and becomes a
    uniform random id in ``[3, vocab_size)`` with 0.1.

    Args:
        text_ids: (B, L) ``<s> ids </s> <pad>...`` rows (``TextTokenizer(texts, max_len)``).
        padding_mask: (B, L), 1 on pad positions.
        mask_prob: the official ``--captioning_mask_prob`` (argparse default 0.6, recipe 0.7).
        mask_id: id of ``<mask>``.
        vocab_size: the *tokenizer's* vocabulary size (``XLMRobertaTokenizer.vocab_size``, 64002 for
            ``beit3.spm``; like the official the range includes ``mask_id``).
        generator: CPU ``torch.Generator``, the only source of randomness.

    Returns:
        ``(masked_tokens, language_masked_pos)``: the corrupted ids and the bool (B, L) positions.
    """
    if text_ids.ndim != 2 or padding_mask.shape != text_ids.shape:
        raise ValueError(f"text_ids and padding_mask must both be (B, L); got {tuple(text_ids.shape)} "
                         f"and {tuple(padding_mask.shape)}")
    if not 0.0 < mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
    if vocab_size <= FIRST_RANDOM_ID:
        raise ValueError(f"vocab_size must exceed {FIRST_RANDOM_ID} (random ids come from [3, vocab_size))")
    ids = text_ids.detach().cpu().long()
    lengths = (padding_mask.detach().cpu() == 0).sum(dim=1)
    short = (lengths < 2).nonzero().flatten().tolist()
    if short:
        raise ValueError(f"rows {short} have fewer than 2 real tokens; a caption row is <s> ... </s>")
    num_masked = [max(1, min(int(n * mask_prob + 0.5), n - 1)) for n in lengths.tolist()]

    # A uniform subset of 1..n-1 per row: the smallest random scores among the allowed positions.
    index = torch.arange(ids.shape[1])
    allowed = (index >= 1) & (index.unsqueeze(0) < lengths.unsqueeze(1))
    scores = torch.rand(ids.shape, generator=generator).masked_fill(~allowed, 2.0)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    masked = ranks < torch.tensor(num_masked).unsqueeze(1)

    action = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(FIRST_RANDOM_ID, vocab_size, ids.shape, generator=generator)
    corrupted = ids.clone()
    corrupted[masked & (action < 0.8)] = mask_id
    use_random = masked & (action >= 0.9)
    corrupted[use_random] = random_ids[use_random]
    return corrupted.to(text_ids.device), masked.to(text_ids.device)


class BertCaptioningLoss(nn.Module):
    """unilm ``utils.BertCaptioningLoss``: label-smoothed KL, worst tokens dropped late in training.

    Per masked token: ``KL(q || softmax(logits))`` summed over classes, with ``q = 1 - eps`` on the
    target and ``eps / (C - 1)`` on each of the other ``C - 1`` classes (``C`` = logits width, 64010
    for the released models). Once ``iteration > drop_worst_after`` only the ``int(N * (1 -
    drop_worst_ratio))`` smallest token losses are kept. Then the mean.

    Args:
        label_smoothing: ``eps``.
        drop_worst_ratio: fraction of the largest token losses dropped.
        drop_worst_after: iteration after which dropping starts (strictly after, as the official).
    """

    def __init__(self, label_smoothing: float = 0.1, drop_worst_ratio: float = 0.2, drop_worst_after: int = 12000):
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0 or not 0.0 <= drop_worst_ratio < 1.0:
            raise ValueError(f"label_smoothing and drop_worst_ratio must be in [0, 1); got "
                             f"{label_smoothing} and {drop_worst_ratio}")
        self.label_smoothing = label_smoothing
        self.drop_worst_ratio = drop_worst_ratio
        self.drop_worst_after = drop_worst_after

    def token_losses(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-token smoothed KL, shape (N,)."""
        num_classes = logits.shape[1]
        eps = self.label_smoothing
        smoothed = torch.full_like(logits, eps / (num_classes - 1), dtype=torch.float32)
        smoothed.scatter_(1, target.view(-1, 1), 1.0 - eps)
        log_probs = F.log_softmax(logits.float(), dim=1)
        return F.kl_div(log_probs, smoothed, reduction="none").sum(dim=1)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, iteration: int) -> torch.Tensor:
        if logits.ndim != 2 or target.shape != logits.shape[:1]:
            raise ValueError(f"logits must be (N, classes) and target (N,); got {tuple(logits.shape)} "
                             f"and {tuple(target.shape)}")
        if logits.shape[0] == 0:
            raise ValueError("no masked tokens in the batch: every caption row needs at least one")
        loss = self.token_losses(logits, target)
        if self.drop_worst_ratio > 0 and iteration > self.drop_worst_after:
            # The official keeps int(N * (1 - ratio)), which is 0 (a NaN mean) for N == 1; keep >= 1.
            keep = max(1, int(loss.shape[0] * (1 - self.drop_worst_ratio)))
            loss = torch.topk(loss, k=keep, largest=False).values
        return loss.mean()


def collate_train(
    items: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    *,
    generator: torch.Generator,
    max_len: int = 32,
    mask_prob: float = 0.6,
) -> dict[str, torch.Tensor]:
    """Training batch from caption rows (``KarpathyCaptions(..., task="captioning")`` items).

    Each item needs ``image`` (a transformed (3, H, W) tensor), ``text`` (the raw caption) and
    ``image_id``. Captions are cut to ``max_len`` tokens with ``<s>``/``</s>`` (``tokenizer(texts,
    max_len)``) and corrupted by :func:`mask_caption_tokens`. Returns the official batch keys
    ``image, language_tokens, masked_tokens, language_masked_pos, padding_mask, image_id``, plus
    ``num_masked`` (a Python int: the masked positions, counted on the host).
    """
    if not items:
        raise ValueError("collate_train got an empty batch")
    missing = [i for i, item in enumerate(items) if item.get("text") is None]
    if missing:
        raise ValueError(f"items {missing[:5]} have no caption text (an evaluation split?); training needs "
                         "the train split, where every row holds one caption")
    encoded = tokenizer([item["text"] for item in items], max_len=max_len)
    masked_tokens, masked_pos = mask_caption_tokens(
        encoded["text_ids"], encoded["padding_mask"], mask_prob=mask_prob, mask_id=tokenizer.mask_id,
        vocab_size=tokenizer.vocab_size, generator=generator,
    )
    return {
        "image": torch.stack([item["image"] for item in items]),
        "language_tokens": encoded["text_ids"],
        "masked_tokens": masked_tokens,
        "language_masked_pos": masked_pos,
        "padding_mask": encoded["padding_mask"],
        "image_id": torch.tensor([int(item["image_id"]) for item in items]),
        "num_masked": int(masked_pos.sum()),  # on the host: the model selects without a device read
    }


def captioning_loss(
    model: BEiT3ForCaptioning, batch: Mapping[str, torch.Tensor], criterion: BertCaptioningLoss, global_step: int
) -> dict[str, torch.Tensor]:
    """``CaptioningHandler.train_batch``: the loss and the accuracy at the masked positions."""
    logits, _ = model(
        image=batch["image"],
        text_ids=batch["masked_tokens"],
        padding_mask=batch["padding_mask"],
        language_masked_pos=batch["language_masked_pos"],
        num_masked=batch.get("num_masked"),
    )
    labels = select_positions(batch["language_tokens"], batch["language_masked_pos"], batch.get("num_masked"))
    acc = (logits.argmax(dim=-1) == labels).float().sum() / batch["language_masked_pos"].sum()
    return {"loss": criterion(logits, labels, global_step), "acc": acc}


# ---------------------------------------------------------------------------------------- decoding
@dataclass(frozen=True)
class SpecialTokens:
    """The ids decoding needs (``TextTokenizer``: bos 0, pad 1, eos 2, mask ``len(spm) + 1``)."""

    bos: int
    eos: int
    mask: int
    pad: int

    @classmethod
    def of(cls, source: Any) -> "SpecialTokens":
        """From a ``SpecialTokens``, a mapping ``{bos, eos, mask, pad}`` or a tokenizer (``bos_id``, ...)."""
        if isinstance(source, SpecialTokens):
            return source
        names = ("bos", "eos", "mask", "pad")
        if isinstance(source, Mapping):
            missing = [n for n in names if n not in source]
            if missing:
                raise KeyError(f"special token ids {missing} missing from {dict(source)}; give bos, eos, mask, pad")
            return cls(**{n: int(source[n]) for n in names})
        missing = [f"{n}_id" for n in names if not hasattr(source, f"{n}_id")]
        if missing:
            raise TypeError(f"{type(source).__name__} has no {missing}; pass a TextTokenizer, a SpecialTokens "
                            "or a mapping {bos, eos, mask, pad}")
        return cls(**{n: int(getattr(source, f"{n}_id")) for n in names})


class _BestHypothesis:
    """unilm ``BeamHypotheses`` with ``num_keep_best=1`` and ``early_stopping=False``."""

    def __init__(self, max_len: int, length_penalty: float):
        self.max_length = max_len - 1  # the official ignores <s> here
        self.length_penalty = length_penalty
        self.score: float | None = None
        self.words: list[int] = []

    def add(self, words: list[int], sum_logprobs: float, length: int) -> None:
        score = sum_logprobs / length**self.length_penalty
        if self.score is None or score > self.score:
            self.score, self.words = score, words

    def is_done(self, best_sum_logprobs: float) -> bool:
        # Nothing still on the beam can beat the kept hypothesis, even at the longest length.
        return self.score is not None and self.score >= best_sum_logprobs / self.max_length**self.length_penalty


def _reorder_cache(state: dict[int, dict[str, Any]], rows: torch.Tensor, drop_last: bool) -> None:
    for layer_state in state.values():
        for key, value in layer_state.items():
            if isinstance(value, torch.Tensor):
                value = value.index_select(0, rows)
                layer_state[key] = value[:, :, :-1] if drop_last else value


@torch.no_grad()
def generate(
    model: BEiT3ForCaptioning,
    images: torch.Tensor,
    tokenizer_ids: Any,
    num_beams: int = 3,
    max_len: int = 32,
    length_penalty: float = 0.6,
    use_cache: bool = True,
    return_scores: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, list[float]]:
    """Beam search as unilm ``CaptioningHandler.eval_batch``.

    Each step takes the top ``3 * num_beams`` (beam, word) pairs by summed log-probability; in that
    order an ``</s>`` (or any word at the last step, ``cur_len + 1 == max_len``) closes a hypothesis
    ``<s> w_1 .. w_k`` scored ``sum log p / (k + 2) ** length_penalty`` (the official length counts
    ``<s>`` and the ``</s>`` slot), the others refill the beams until ``num_beams`` are taken. A caption
    is final once no beam can beat its best hypothesis (``BeamHypotheses.is_done`` with
    ``early_stopping=False``); the best hypothesis is returned.

    Two deliberate differences that change no caption: the first step encodes each image once and
    copies the cache to the beams (the official encodes it ``num_beams`` times), and the step at
    ``cur_len == max_len``, which can no longer add a hypothesis, is skipped.

    Args:
        model: a :class:`BEiT3ForCaptioning` (run in eval mode here; its mode is restored).
        images: (B, 3, H, W).
        tokenizer_ids: a ``TextTokenizer``, :class:`SpecialTokens` or ``{bos, eos, mask, pad}``.
        num_beams: beams per image (1 = the official procedure with one beam).
        max_len: ``num_max_bpe_tokens``; captions hold at most ``max_len - 3`` words.
        length_penalty: exponent of the length normalisation.
        use_cache: ``True``: the official incremental decoding with the KV cache. ``False``: recompute
            image + ``[<s>, w_1 .. w_k, MASK]`` from scratch at every step (slow; for checking).
        return_scores: also return each caption's normalised score.

    Returns:
        (B, max_len) long ids ``<s> w_1 .. w_k </s> <pad>...``; decode with :func:`decode_captions`.
        With ``return_scores``: ``(ids, scores)``.
    """
    special = SpecialTokens.of(tokenizer_ids)
    if images.ndim != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError("no images to caption (empty batch)")
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if max_len < 3:
        raise ValueError(f"max_len must be >= 3 (<s>, one word, </s>), got {max_len}")
    # The last step feeds text positions up to max_len; the table has rows 0..max_text_positions-1.
    if max_len > model.max_text_positions - 1:
        raise ValueError(
            f"max_len={max_len} needs text position {max_len}, but the text position table has "
            f"{model.max_text_positions} rows: use max_len <= {model.max_text_positions - 1}"
        )
    vocab_size = model.mlm_head.out_features
    for name in ("bos", "mask", "pad"):
        if not 0 <= getattr(special, name) < vocab_size:
            raise ValueError(f"{name} id {getattr(special, name)} is outside the model vocabulary [0, {vocab_size})")

    was_training = model.training
    model.eval()
    try:
        ids, scores = _beam_search(model, images, special, num_beams, max_len, length_penalty, use_cache)
    finally:
        model.train(was_training)
    return (ids, scores) if return_scores else ids


def _beam_search(
    model: BEiT3ForCaptioning,
    images: torch.Tensor,
    special: SpecialTokens,
    num_beams: int,
    max_len: int,
    length_penalty: float,
    use_cache: bool,
) -> tuple[torch.Tensor, list[float]]:
    device = images.device
    batch_size, beams = images.shape[0], num_beams
    rows_total = batch_size * beams

    # Step 1 (cur_len 2): image + [<s>, MASK], once per image; the beams start as copies.
    state: dict[int, dict[str, Any]] | None = {} if use_cache else None
    first_ids = torch.tensor([[special.bos, special.mask]], device=device).expand(batch_size, 2)
    at_mask = torch.tensor([[False, True]], device=device)
    logits, _ = model(images, first_ids, torch.zeros_like(first_ids), at_mask.expand(batch_size, 2),
                      text_len=2, incremental_state=state)
    log_probs = F.log_softmax(logits.float(), dim=-1).repeat_interleave(beams, dim=0)
    if state is not None:
        expand = torch.arange(batch_size, device=device).repeat_interleave(beams)
        _reorder_cache(state, expand, drop_last=False)
    beam_images = None if use_cache else images.repeat_interleave(beams, dim=0)

    # decoding_results: <s> then MASK placeholders; position cur_len-1 gets the word chosen at cur_len.
    sequences = torch.full((rows_total, max_len), special.mask, dtype=torch.long, device=device)
    sequences[:, 0] = special.bos
    beam_scores = torch.zeros(batch_size, beams, device=device)
    beam_scores[:, 1:] = -1e9  # only the first beam is live at the first step
    beam_scores = beam_scores.view(-1)
    best = [_BestHypothesis(max_len, length_penalty) for _ in range(batch_size)]
    done = [False] * batch_size
    vocab_size = log_probs.shape[1]
    num_candidates = TOP_CANDIDATES_PER_BEAM * beams

    for cur_len in range(2, max_len):
        if cur_len > 2:
            if use_cache:
                step_ids = torch.stack([sequences[:, cur_len - 2], sequences[:, cur_len - 1]], dim=1)
                logits, _ = model(None, step_ids, None, at_mask.expand(rows_total, 2),
                                  text_len=cur_len, incremental_state=state)
            else:
                step_ids = sequences[:, :cur_len]
                last = torch.zeros_like(step_ids, dtype=torch.bool)
                last[:, -1] = True
                logits, _ = model(beam_images, step_ids, torch.zeros_like(step_ids), last)
            log_probs = F.log_softmax(logits.float(), dim=-1)

        totals = (log_probs + beam_scores[:, None]).view(batch_size, beams * vocab_size)
        top_scores, top_index = torch.topk(totals, num_candidates, dim=1, largest=True, sorted=True)
        top_scores, top_index = top_scores.tolist(), top_index.tolist()
        closing = cur_len + 1 == max_len

        next_scores: list[float] = []
        next_words: list[int] = []
        next_rows: list[int] = []
        for b in range(batch_size):
            done[b] = done[b] or best[b].is_done(max(top_scores[b]))
            chosen: list[tuple[float, int, int]] = []
            if not done[b]:
                for score, index in zip(top_scores[b], top_index[b]):
                    beam, word = divmod(index, vocab_size)
                    row = b * beams + beam
                    if word == special.eos or closing:
                        # The hypothesis is <s> + the words so far; the closing word itself is not kept.
                        best[b].add(sequences[row, 1 : cur_len - 1].tolist(), score, cur_len)
                    else:
                        chosen.append((score, word, row))
                    if len(chosen) == beams:
                        break
            if not chosen:  # finished caption (or last step): keep its rows, their outputs are unused
                chosen = [(0.0, special.pad, b * beams + j) for j in range(beams)]
            next_scores += [c[0] for c in chosen]
            next_words += [c[1] for c in chosen]
            next_rows += [c[2] for c in chosen]

        if closing or all(done):
            break
        rows = torch.tensor(next_rows, device=device)
        beam_scores = torch.tensor(next_scores, dtype=beam_scores.dtype, device=device)
        sequences = sequences[rows]
        sequences[:, cur_len - 1] = torch.tensor(next_words, device=device)
        if state is not None:
            _reorder_cache(state, rows, drop_last=True)  # drop the MASK's key/value

    out = torch.full((batch_size, max_len), special.pad, dtype=torch.long, device=device)
    scores = []
    for b, hyp in enumerate(best):
        tokens = [special.bos, *hyp.words, special.eos]
        out[b, : len(tokens)] = torch.tensor(tokens, device=device)
        scores.append(float(hyp.score))
    return out, scores


def decode_captions(ids: torch.Tensor, tokenizer: Any) -> list[str]:
    """Caption strings of :func:`generate` ids: ``tokenizer.batch_decode(ids, skip_special_tokens=True)``."""
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


# -------------------------------------------------------------------------------------- evaluation
def collate_eval(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Evaluation batch ``{image, image_id}`` from caption-split items (one row per image)."""
    if not items:
        raise ValueError("collate_eval got an empty batch")
    return {
        "image": torch.stack([item["image"] for item in items]),
        "image_id": torch.tensor([int(item["image_id"]) for item in items]),
    }


def predict_captions(
    model: BEiT3ForCaptioning,
    batches: Iterable[Mapping[str, Any]],
    tokenizer: Any,
    *,
    num_beams: int = 3,
    max_len: int = 32,
    length_penalty: float = 0.6,
    use_cache: bool = True,
    device: torch.device | str | None = None,
) -> dict[int, str]:
    """Caption every image of an evaluation split: ``{image_id: caption}``.

    Args:
        batches: e.g. a DataLoader over ``KarpathyCaptions(split="test", task="captioning")`` with
            :func:`collate_eval`; each batch holds ``image`` (B, 3, H, W) and ``image_id`` (B,).
        tokenizer: the ``TextTokenizer`` (special ids and decoding).
        device: where to move the images (default: the model's device).

    Raises:
        ValueError: the split is empty, or an image id repeats.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    predictions: dict[int, str] = {}
    for batch in batches:
        images = batch["image"].to(device)
        image_ids = [int(i) for i in batch["image_id"]]
        if len(image_ids) != images.shape[0]:
            raise ValueError(f"batch has {images.shape[0]} images but {len(image_ids)} image ids")
        ids = generate(model, images, tokenizer, num_beams=num_beams, max_len=max_len,
                       length_penalty=length_penalty, use_cache=use_cache)
        for image_id, caption in zip(image_ids, decode_captions(ids.cpu(), tokenizer)):
            if image_id in predictions:
                raise ValueError(f"image id {image_id} appears twice in the evaluation split; an evaluation "
                                 "split holds one row per image")
            predictions[image_id] = caption
    if not predictions:
        raise ValueError("empty evaluation split: no images to caption (check the split name, the annotation "
                         "file and the image root)")
    return predictions


def evaluate_captions(
    model: BEiT3ForCaptioning,
    batches: Iterable[Mapping[str, Any]],
    tokenizer: Any,
    references: Mapping[int, Sequence[str]],
    **generate_kwargs: Any,
) -> tuple[dict[str, Any], dict[int, str]]:
    """Predict captions and score them against ``references`` (``KarpathyCaptions.gt_captions()``).

    Returns:
        ``(scores, predictions)``; scores from :func:`tasks.metrics.captioning.caption_scores`.
    """
    from tasks.metrics.captioning import caption_scores

    predictions = predict_captions(model, batches, tokenizer, **generate_kwargs)
    return caption_scores(predictions, references), predictions


# --------------------------------------------------------------------------- training and evaluation
DATA_DEFAULTS: dict[str, Any] = {
    "root": None,  # official data_path (train2014/, val2014/, dataset_coco.json), or a benchmark-world directory
    "annotation": "dataset_coco.json",  # Karpathy file, relative to the data root
    "tokenizer": None,  # SentencePiece .model, relative to root; default: the world's
    "split": "train",  # train (Karpathy train + restval) | val | test
    "batch_size": 16,  # per rank (the recipes' batch_size is the total)
    "img_size": None,  # default: the model's input size
    "max_len": 32,  # num_max_bpe_tokens
    "mask_prob": 0.7,  # get_started's --captioning_mask_prob (argparse default 0.6)
    "randaug": True,
    "augment": "official",  # official | label_safe (synthetic profiles; tasks.data.transforms)
    "quirks": "fixed",
    "num_workers": 0,
    "skip_bad": False,  # skip (and count, data.num_skipped) malformed records instead of raising
    "shuffle_images": None,  # control: a seed permutes the split's images among its items (texts kept)
    "grad_accum_steps": 1,  # the trainer's: global_step counts optimizer steps
}


def _prepare(data_config: Mapping[str, Any], model: BEiT3ForCaptioning):
    cfg = merge_config(data_config, DATA_DEFAULTS, "captioning")
    check_quirks(cfg["quirks"])
    root = resolve_root(cfg, "coco_karpathy")
    tokenizer = load_text_tokenizer(cfg["tokenizer"], root)
    check_text_fits(model, tokenizer, cfg["max_len"])
    cfg["img_size"] = model_img_size(model, cfg["img_size"])
    return cfg, root, tokenizer


def _captions(cfg: Mapping[str, Any], root: DataRoot, split: str, transform_split: str):
    from tasks.data.karpathy import KarpathyCaptions
    from tasks.data.transforms import build_vl_transform

    transform = build_vl_transform(transform_is_train(transform_split, cfg["quirks"]), cfg["img_size"], cfg["randaug"],
                                   augment=cfg["augment"])
    return KarpathyCaptions(root.file(cfg["annotation"]), root.data, split, task="captioning", transform=transform,
                            skip_bad=cfg["skip_bad"])


def _collate(items: Sequence[Mapping[str, Any]], generator: torch.Generator, *, tokenizer: Any, max_len: int,
             mask_prob: float) -> dict[str, torch.Tensor]:
    return collate_train(items, tokenizer, generator=generator, max_len=max_len, mask_prob=mask_prob)


def build_data(data_config: dict, *, model: BEiT3ForCaptioning, seed: int, rank: int = 0,
               world_size: int = 1) -> FinetuneData:
    """Training batches (:class:`tasks.finetune_data.FinetuneData`) of ``data_config`` (:data:`DATA_DEFAULTS`):
    one row per caption (official), masked by :func:`mask_caption_tokens` with the step's generator.

    Raises:
        ValueError: ``max_len`` exceeds the model's text position table, or the tokenizer its vocabulary.
    """
    cfg, root, tokenizer = _prepare(data_config, model)
    if cfg["split"] != "train":
        raise ValueError(f"captioning trains on the Karpathy train split (train + restval), not {cfg['split']!r}")
    batch_collate = partial(_collate, tokenizer=tokenizer, max_len=cfg["max_len"], mask_prob=cfg["mask_prob"])
    return FinetuneData(
        _captions(cfg, root, "train", "train"), batch_collate, batch_size=cfg["batch_size"], seed=seed, rank=rank,
        world_size=world_size, num_workers=cfg["num_workers"], step_key="global_step",
        steps_per_update=cfg["grad_accum_steps"], name="captioning train",
    )


def training_step(
    model: BEiT3ForCaptioning,
    batch: Mapping[str, Any],
    label_smoothing: float = 0.1,
    drop_worst_ratio: float = 0.2,
    drop_worst_after: int = 12000,
) -> dict[str, torch.Tensor]:
    """Official ``CaptioningHandler.train_batch`` with ``BertCaptioningLoss`` at ``batch["global_step"]``;
    the loss settings (recipe defaults) come through the trainer's ``forward_kwargs``."""
    criterion = BertCaptioningLoss(label_smoothing, drop_worst_ratio, drop_worst_after)
    return captioning_loss(model, batch, criterion, int(batch["global_step"]))


def build_eval_dataset(data_config: Mapping[str, Any], split: str, *, model: BEiT3ForCaptioning):
    """The Karpathy reader :func:`evaluate` captions (one row per image), with the split's transform."""
    cfg, root, _ = _prepare(data_config, model)
    return _captions(cfg, root, split, split)


def evaluate(
    model: BEiT3ForCaptioning,
    data_config: Mapping[str, Any],
    *,
    split: str = "test",
    limit: int | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    num_beams: int = 3,
    length_penalty: float = 0.6,
    use_cache: bool = True,
    out_path: str | os.PathLike | None = None,
    **score_kwargs: Any,
) -> EvalResult:
    """Caption every image of a Karpathy split (the first ``limit`` with a limit; :func:`generate`: beams,
    length penalty, KV cache, at most ``max_len`` tokens) and score against its reference captions
    (:func:`score_predictions`).

    Args:
        out_path: write the predictions as ``[{"image_id", "caption"}]`` (the official result file).
        score_kwargs: ``caption_scores`` options (``ptb_tokenize``, ``meteor``, ``spice``).

    Returns:
        Metrics ``BLEU-1`` .. ``BLEU-4``, ``METEOR``, ``ROUGE-L``, ``CIDEr``, ``SPICE`` (pycocoevalcap's
        scale; a metric that could not run is left out) and ``num_images``; one row per image.

    Raises:
        EmptySplitError: the split has no images.
    """
    from tasks.data.karpathy import read_karpathy

    cfg, root, tokenizer = _prepare(data_config, model)
    records, _ = read_karpathy(root.file(cfg["annotation"]), split)
    check_not_empty(len(records), split, "images")
    dataset = _captions(cfg, root, split, split)
    if cfg["shuffle_images"] is not None:
        dataset = ImagesFrom(dataset, shuffled_image_sources([row["image_path"] for row in dataset.rows],
                                                             cfg["shuffle_images"]))
    predictions = predict_captions(
        model, eval_batches(dataset, collate_eval, batch_size, indices=first_items(len(dataset), limit)), tokenizer,
        num_beams=num_beams, max_len=cfg["max_len"], length_penalty=length_penalty, use_cache=use_cache, device=device,
    )
    if out_path is not None:
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump([{"image_id": i, "caption": c} for i, c in predictions.items()], f)
    references = dataset.gt_captions()
    return score_predictions(predictions, {i: references[i] for i in predictions}, **score_kwargs)


def score_predictions(predictions: Mapping[int, str], references: Mapping[int, Sequence[str]],
                      **score_kwargs: Any) -> EvalResult:
    """One row per image (``item_id`` = ``cluster_id`` = its id, the caption as ``prediction``) with the
    per-image scores of :func:`tasks.metrics.captioning.score_captions`; CIDEr, ROUGE-L and SPICE
    aggregate as their means, BLEU and METEOR as the corpus scores (their per-image columns are an
    approximation, ``exact=False`` in :data:`SPEC`)."""
    from tasks.metrics.captioning import score_captions

    scores, per_image = score_captions(predictions, references, **score_kwargs)
    ids = [str(i) for i in per_image["image_id"]]
    items = pd.DataFrame({"item_id": ids, "cluster_id": ids,
                          "prediction": [predictions[i] for i in per_image["image_id"]]})
    items = pd.concat([items, per_image.drop(columns="image_id").reset_index(drop=True)], axis=1)
    metrics = {name: float(value) for name, value in scores.items() if isinstance(value, (int, float))}
    return EvalResult({**metrics, **SPEC.aggregate(items), "num_images": float(len(items))}, items)


# The constant-caption baseline's candidates (the most frequent train captions) and the train images
# it is fitted on (the split's first ones): enough to pick the best of a small world's few templates.
CONSTANT_CAPTION_CANDIDATES = 50
CONSTANT_CAPTION_FIT_IMAGES = 500


def caption_words(caption: str) -> str:
    """A reference caption as a prediction would read: lower case, no full stops or commas."""
    return " ".join(caption.lower().replace(".", " ").replace(",", " ").split())


def constant_caption_baseline(data_config: Mapping[str, Any], *, split: str = "test",
                              **score_kwargs: Any) -> EvalResult:
    """The best constant caption: of the most frequent train captions, the one with the highest CIDEr
    when it is the prediction for every fitted train image; predicted for every image of ``split`` and
    scored as :func:`evaluate` scores (no image, no model)."""
    from collections import Counter

    from pycocoevalcap.cider.cider import Cider

    from tasks.data.karpathy import gt_captions

    cfg = merge_config(data_config, DATA_DEFAULTS, "captioning")
    annotation = resolve_root(cfg, "coco_karpathy").file(cfg["annotation"])
    train = gt_captions(annotation, "train")
    check_not_empty(len(train), "train", "images")

    frequent = Counter(caption_words(c) for captions in train.values() for c in captions)
    candidates = [c for c, _ in frequent.most_common(CONSTANT_CAPTION_CANDIDATES)]
    fit = dict(list(train.items())[:CONSTANT_CAPTION_FIT_IMAGES])
    refs = {i: [caption_words(c) for c in captions] for i, captions in fit.items()}
    cider = [Cider().compute_score(refs, {i: [candidate] for i in fit})[0] for candidate in candidates]
    best = candidates[max(range(len(candidates)), key=cider.__getitem__)]
    references = gt_captions(annotation, split)
    check_not_empty(len(references), split, "images")
    return score_predictions({i: best for i in references}, references, **score_kwargs)


SPEC = TaskSpec(
    name="captioning",
    build_model=build_captioning_model,
    build_data=build_data,
    recipes={"base": CAPTIONING_RECIPES["base"], "large": CAPTIONING_RECIPES["large"],
             "giant": giant_recipe(CAPTIONING_RECIPES["base"], CAPTIONING_RECIPES["giant"])},
    data_defaults=DATA_DEFAULTS,
    eval_splits=("test",),
    # pycocoevalcap's fractions, shown x100 as the paper prints them. CIDEr, ROUGE-L and SPICE are means
    # of per-image scores; BLEU is a corpus statistic and METEOR aggregates its own way, so their
    # per-image values are an approximation.
    metrics=(
        *(MetricSpec(f"BLEU-{n}", scale=100.0, item_column=f"BLEU-{n}", exact=False) for n in range(1, 5)),
        MetricSpec("METEOR", scale=100.0, item_column="METEOR", exact=False),
        MetricSpec("ROUGE-L", scale=100.0, item_column="ROUGE-L"),
        MetricSpec("CIDEr", scale=100.0, primary=True, item_column="CIDEr"),
        MetricSpec("SPICE", scale=100.0, item_column="SPICE"),
    ),
    build_eval=build_eval_dataset,
    evaluate=evaluate,
    training_step=training_step,
    text_baseline=constant_caption_baseline,
)
