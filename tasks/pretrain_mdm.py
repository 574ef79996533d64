"""BEiT-3 pretraining: masked data modeling over images, texts and image-text pairs (paper §2.2, Table 11).

One objective, one shared Multiway Transformer: masked patches are predicted as visual tokens
(BEiT-v2 VQ-KD codes, or any tokenizer with ``get_codebook_indices``), masked text tokens as text
ids. Each step may hold any subset of three streams (``tasks.pretrain_data`` builds them):

- **images** -- ``image`` (B,3,H,W) float, ``image_mask`` (B,N) bool (block-wise, 40%),
  ``image_codes`` (B,N) long: MIM cross-entropy at the masked patches, which enter the encoder as
  the mask token (``vision_masked_position``);
- **texts** -- ``text_ids`` (B,L) long, already corrupted; ``text_padding_mask`` (B,L), 1 = pad;
  ``text_labels`` (B,L) long, the original id where masked (15%), -100 elsewhere: MLM cross-entropy;
- **pairs** -- ``pair_image``, ``pair_text_ids``, ``pair_padding_mask``, ``pair_text_labels`` (50% of
  the text masked), optionally ``pair_image_mask`` + ``pair_image_codes``: MLM (and MIM) on the
  image-text input, image tokens first.

Choices the paper leaves open (documented, configurable where it matters):

- **Pairs mask only their text** (50%, Table 11) and keep the image whole by default: the heavy text
  masking is what forces the model to read the image. A batch that also carries ``pair_image_mask``
  and ``pair_image_codes`` (``PretrainingData(pair_image_mask_ratio=...)``, default 0) adds a pair
  MIM term, ``pair_mim_loss``.
- **Loss** = the sum of the present objectives' mean cross-entropies (each stream's CE averaged over
  its own masked tokens), so every stream weighs the same whatever its token count; the paper's
  "single MDM objective" gives no weights.
- **Heads**: one ``mlm_head`` Linear(D, vocab) shared by texts and pairs, one ``mim_head``
  Linear(D, num_visual_tokens) (BEiT-v2's ``lm_head``), truncated normal std .02, zero bias. They run
  only on the gathered masked positions (BEiT-v2's ``lm_head(x[bool_masked_pos])``), never on the
  whole sequence.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backbones import BEiT3Backbone
from tasks.heads import TaskModel, create_task_backbone, init_head_weights, select_positions
from tasks.pretrain_data import DATA_DEFAULTS as PRETRAINING_DATA_DEFAULTS
from tasks.spec import TaskSpec

__all__ = ["BEiT3ForMaskedDataModeling", "IGNORE_INDEX", "masked_prediction"]

IGNORE_INDEX = -100
DEFAULT_NUM_VISUAL_TOKENS = 8192  # BEiT-v2 VQ-KD codebook


def masked_prediction(
    head: nn.Module, features: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor,
    count: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Cross-entropy and accuracy of ``head`` at the selected positions only.

    Args:
        head: maps (M, D) features to (M, classes) logits.
        features: (B, T, D) encoder outputs.
        positions: (B, T) bool, the positions to predict.
        targets: (B, T) long targets (read only at ``positions``).
        count: the number of True ``positions`` when the host knows it (the batch's ``num_masked``):
            the selection then never waits for the device (:func:`tasks.heads.select_positions`).

    Returns:
        ``(mean CE, accuracy, number of predicted positions)``. With no position selected the loss
        is a zero that stays connected to the graph (so distributed training sees every parameter)
        and the accuracy is NaN.
    """
    if positions.shape != features.shape[:2] or targets.shape != positions.shape:
        raise ValueError(
            f"positions {tuple(positions.shape)} and targets {tuple(targets.shape)} must both be "
            f"{tuple(features.shape[:2])} (batch, tokens)"
        )
    selected = select_positions(features, positions, count)  # gather first: the head never sees unmasked positions
    logits = head(selected)
    labels = select_positions(targets, positions, count)
    if labels.numel() == 0:
        return logits.sum() * 0.0, torch.full((), float("nan"), device=features.device), 0
    loss = F.cross_entropy(logits.float(), labels)
    accuracy = (logits.detach().argmax(dim=-1) == labels).float().mean()
    return loss, accuracy, labels.numel()


def _check_keys(batch: dict[str, torch.Tensor], stream: str, keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in batch]
    if missing:
        raise KeyError(f"the {stream} stream of the batch lacks {', '.join(missing)}; it needs {', '.join(keys)}")


class BEiT3ForMaskedDataModeling(TaskModel):
    """BEiT-3 with the masked-data-modeling heads: ``beit3``, ``mlm_head``, ``mim_head``.

    Args:
        backbone: a ``backbones.create_model`` product; its encoder becomes ``self.beit3``.
        num_visual_tokens: size of the visual tokenizer's codebook (MIM classes).
    """

    IMAGE_KEYS = ("image", "image_mask", "image_codes")
    TEXT_KEYS = ("text_ids", "text_padding_mask", "text_labels")
    PAIR_KEYS = ("pair_image", "pair_text_ids", "pair_padding_mask", "pair_text_labels")

    def __init__(self, backbone: BEiT3Backbone, num_visual_tokens: int = DEFAULT_NUM_VISUAL_TOKENS):
        super().__init__(backbone)
        if num_visual_tokens < 1:
            raise ValueError(f"num_visual_tokens must be >= 1, got {num_visual_tokens}")
        dim = self.config.embed_dim
        self.num_visual_tokens = num_visual_tokens
        self.mlm_head = nn.Linear(dim, self.config.vocab_size)
        self.mim_head = nn.Linear(dim, num_visual_tokens)
        self.mlm_head.apply(init_head_weights)
        self.mim_head.apply(init_head_weights)

    # -- the three streams ------------------------------------------------------------------------
    def image_mim(self, image: torch.Tensor, image_mask: torch.Tensor, image_codes: torch.Tensor,
                  count: int | None = None):
        """MIM on images: masked patches become the mask token; predict their codes (``count``: the
        number of masked patches, when the host knows it)."""
        out = self.beit3(visual_tokens=image, vision_masked_position=image_mask)
        patches = out["encoder_out"][:, 1:]  # drop the cls token
        return masked_prediction(self.mim_head, patches, image_mask, image_codes, count)

    def text_mlm(self, text_ids: torch.Tensor, padding_mask: torch.Tensor, labels: torch.Tensor,
                 count: int | None = None):
        """MLM on texts: ``text_ids`` are already corrupted; predict ``labels`` where != -100."""
        out = self.beit3(textual_tokens=text_ids, text_padding_position=padding_mask)
        return masked_prediction(self.mlm_head, out["encoder_out"], labels != IGNORE_INDEX, labels, count)

    def pair_mdm(
        self,
        image: torch.Tensor,
        text_ids: torch.Tensor,
        padding_mask: torch.Tensor,
        labels: torch.Tensor,
        image_mask: torch.Tensor | None = None,
        image_codes: torch.Tensor | None = None,
        text_count: int | None = None,
        image_count: int | None = None,
    ):
        """MLM (and optionally MIM) on image-text pairs, image tokens first as the official layout."""
        out = self.beit3(
            textual_tokens=text_ids, visual_tokens=image, text_padding_position=padding_mask,
            vision_masked_position=image_mask,
        )
        x, split = out["encoder_out"], out["multiway_split_position"]
        mlm = masked_prediction(self.mlm_head, x[:, split:], labels != IGNORE_INDEX, labels, text_count)
        mim = None
        if image_mask is not None:
            if image_codes is None:
                raise KeyError("masked image modeling needs the visual-token targets (image_codes / pair_image_codes)")
            mim = masked_prediction(self.mim_head, x[:, 1:split], image_mask, image_codes, image_count)
        return mlm, mim

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Loss and logs of one step over the streams present in ``batch``.

        Returns:
            ``loss`` (sum of the present objectives' mean CE) and detached scalars ``mim_loss``,
            ``mlm_loss``, ``pair_mlm_loss`` (``pair_mim_loss``), their ``*_acc`` and the number of
            predicted positions ``*_count``, for the streams present.
        """
        terms: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}
        counts = batch.get("num_masked", {})  # host-side counts of the masks: no device read to select
        if "image" in batch:
            _check_keys(batch, "image", self.IMAGE_KEYS)
            terms["mim"] = self.image_mim(batch["image"], batch["image_mask"], batch["image_codes"],
                                          counts.get("image_mask"))
        if "text_ids" in batch:
            _check_keys(batch, "text", self.TEXT_KEYS)
            terms["mlm"] = self.text_mlm(batch["text_ids"], batch["text_padding_mask"], batch["text_labels"],
                                         counts.get("text_labels"))
        if "pair_image" in batch:
            _check_keys(batch, "pair", self.PAIR_KEYS)
            mlm, mim = self.pair_mdm(
                batch["pair_image"], batch["pair_text_ids"], batch["pair_padding_mask"], batch["pair_text_labels"],
                batch.get("pair_image_mask"), batch.get("pair_image_codes"),
                counts.get("pair_text_labels"), counts.get("pair_image_mask"),
            )
            terms["pair_mlm"] = mlm
            if mim is not None:
                terms["pair_mim"] = mim
        if not terms:
            raise KeyError(
                "the batch holds no stream: give image (+image_mask, image_codes), text_ids "
                "(+text_padding_mask, text_labels) and/or pair_image (+pair_text_ids, ...)"
            )
        return summarize(terms)


def summarize(terms: dict[str, tuple[torch.Tensor, torch.Tensor, int]], weights: dict[str, float] | None = None):
    """``loss`` = sum of ``weight * loss`` over the terms; logs ``{name}_loss/_acc/_count`` (detached)."""
    weights = weights or {}
    total = None
    logs: dict[str, torch.Tensor] = {}
    for name, (loss, accuracy, count) in terms.items():
        weighted = loss * weights.get(name, 1.0)
        total = weighted if total is None else total + weighted
        logs[f"{name}_loss"] = loss.detach()
        logs[f"{name}_acc"] = accuracy.detach()
        logs[f"{name}_count"] = torch.tensor(float(count), device=loss.device)
    return {"loss": total, **logs}


def build_pretrain_mdm(
    model_name: str, num_visual_tokens: int = DEFAULT_NUM_VISUAL_TOKENS, **backbone_overrides: Any
) -> BEiT3ForMaskedDataModeling:
    """BEiT-3 masked data modeling on ``model_name``.

    Args:
        model_name: a ``backbones.list_models()`` name.
        num_visual_tokens: the visual tokenizer's codebook size (8192 for BEiT-v2 VQ-KD).
        **backbone_overrides: passed to ``backbones.create_model``; the paper profile uses
            ``init="beit"`` (Table 11: BEiT init) and ``drop_path_rate=0.1``.
    """
    return BEiT3ForMaskedDataModeling(create_task_backbone(model_name, {}, backbone_overrides), num_visual_tokens)


def build_data(data_config: dict, *, model, seed: int, rank: int = 0, world_size: int = 1):
    """Every step draws images, texts and image-text pairs (``mixture``, 1:1:1 by default)."""
    from tasks.pretrain_data import build_pretraining_data

    return build_pretraining_data(data_config, model=model, seed=seed, rank=rank, world_size=world_size)


SPEC = TaskSpec(name="pretrain_mdm", build_model=build_pretrain_mdm, build_data=build_data,
                data_defaults=PRETRAINING_DATA_DEFAULTS)
