"""VLMo's staged pretraining on our Multiway Transformer (Wang et al., arXiv 2111.02358; unilm ``vlmo/``).

The recipe BEiT-3's single masked-data-modeling objective (:mod:`tasks.pretrain_mdm`) is compared with:

1. **image-only MIM** (BEiT): vision embedding, attention and V-FFN learn masked image modeling;
2. **text-only MLM with attention and V-FFN frozen**: the L-FFN, text embeddings, text positions,
   the final LayerNorm and the MLM head learn (``vlmo/run.py``'s ``textmlm`` list);
3. **image-text**: everything trains with ITC + ITM (global hard negatives) + MLM on the pairs.

``configure_stage(model, stage)`` sets ``requires_grad`` for a stage and returns the trainable names;
``model(batch, stage)`` computes that stage's loss. Batches use :mod:`tasks.pretrain_data`'s keys:
stage 1 the image stream (``image``, ``image_mask``, ``image_codes``), stage 2 the text stream
(``text_ids``, ``text_padding_mask``, ``text_labels``), stage 3 the pair stream (``pair_image``,
``pair_text_ids`` masked for MLM, ``pair_padding_mask``, ``pair_text_labels``; the clean text is
recovered as ``labels where labelled, else ids``) and, for seeded hard negatives, ``model_seed``.
VLMo masks 15% of the pair text (build the data with ``pair_mask_prob=0.15``).

Stage 3 in detail (``vlmo/modules/objectives.py``):

- **ITC**: an image-only and a text-only pass; CLS (the image CLS, the text ``<s>``) → ``itc_*_head``
  (Linear D→D, no bias) → L2 norm; features are all-gathered with gradients; each rank scores its own
  rows against the gathered columns, labels ``arange(n) + rank * n``, symmetric CE / 2, scaled by
  ``logit_scale.exp()`` (init log(1/0.07), not clamped, as VLMo). With ``itc_vl_branch`` (default when
  the backbone has VL-FFN layers) VLMo's second contrastive loss is added: the unimodal passes re-run
  from the first VL layer with every token through the VL-FFN, own heads and ``itc_vl_logit_scale``;
  the ITC loss is the mean of the two.
- **ITM** with global hard negatives: per pair one negative image (drawn from the text's row of the
  text-to-image similarities) and one negative text (from the image's row of image-to-text), by
  ``torch.multinomial`` over the softmax of the scaled ITC logits with the positive removed; images
  and texts of all ranks are gathered (no gradient) as candidates. Positives : negatives = 1 : 2; the
  head is ``itm_pooler`` (LayerNorm → Linear → tanh on the pair's first token, the image CLS; VLMo's
  pooler has no LayerNorm, BEiT-3's fine-tuning pooler has one) then ``itm_head`` Linear(D, 2). The
  draws use a CPU generator seeded by ``batch["model_seed"]`` (else the module's own generator).
- **MLM** on the pair input (image unmasked), weighted ``mlm_weight`` = 0.25 as VLMo's ``compute_mlm``.

Loss = ``itc + itm + mlm_weight * pair_mlm`` in stage 3, ``mim`` in stage 1, ``mlm`` in stage 2
(VLMo's text-only MLM is unweighted). The MLM head is one Linear(D, vocab) as in
:mod:`tasks.pretrain_mdm` (VLMo uses BERT's dense-GELU-LN transform before its decoder), so both
recipes differ only in what the comparison is about.

Layouts: the paper layout (shared attention, VL-FFN in the top layers) is the default and the one the
recipe was designed for. The released layout has per-modality attention; there stage 1 trains the
vision copies and stage 2 the language copies of attention (nothing else would ever train them), so
"frozen attention" only holds for the paper layout.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backbones import BEiT3Backbone
from backbones.beit3 import build_attn_bias, route
from tasks.distributed import all_gather_with_grad, get_rank
from tasks.heads import Pooler, TaskModel, create_task_backbone, init_head_weights
from tasks.pretrain_data import DATA_DEFAULTS as PRETRAINING_DATA_DEFAULTS
from tasks.pretrain_mdm import DEFAULT_NUM_VISUAL_TOKENS, IGNORE_INDEX, masked_prediction, summarize
from tasks.spec import TaskSpec

__all__ = [
    "STAGES",
    "VLMoForPretraining",
    "configure_stage",
    "contrastive_loss",
    "sample_hard_negatives",
    "stage_trainable",
]

STAGES = (1, 2, 3)
ITC_INIT_TEMPERATURE = 0.07
VLMO_MLM_WEIGHT = 0.25  # vlmo/modules/objectives.py::compute_mlm


# ------------------------------------------------------------------------------------------ losses
def contrastive_loss(
    image_feats: torch.Tensor, text_feats: torch.Tensor, logit_scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE of this rank's rows against the features of every rank.

    Args:
        image_feats, text_feats: (n, D) L2-normalised features of this rank's pairs (same n on all ranks).
        logit_scale: the multiplier (already exponentiated).

    Returns:
        ``(loss, i2t_logits, t2i_logits, labels)``: logits are (n, n * world) with the gathered
        columns in rank order, labels ``arange(n) + rank * n``. In one process this is CLIP's loss.
    """
    rank = get_rank()
    all_images = all_gather_with_grad(image_feats)
    all_texts = all_gather_with_grad(text_feats)
    i2t = logit_scale * image_feats @ all_texts.t()
    t2i = logit_scale * text_feats @ all_images.t()
    labels = torch.arange(image_feats.shape[0], device=image_feats.device) + rank * image_feats.shape[0]
    loss = (F.cross_entropy(i2t.float(), labels) + F.cross_entropy(t2i.float(), labels)) / 2
    return loss, i2t, t2i, labels


@torch.no_grad()
def sample_hard_negatives(
    similarity: torch.Tensor, positives: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """One negative column per row, drawn with probability softmax(row) with the positive removed.

    Equivalent to VLMo's ``multinomial(softmax(sim).fill_diagonal_(0))`` (multinomial renormalises),
    but the positive is masked before the softmax so a row whose mass sits on its positive (a
    confident model, large ``logit_scale``) still gives a valid distribution.

    Args:
        similarity: (n, N) scores of this rank's rows against all candidates.
        positives: (n,) column of each row's positive.
        generator: a CPU generator (the draw runs on CPU, so it is the same on every device).

    Returns:
        (n,) long indices of the negatives, on ``similarity``'s device.
    """
    rows, columns = similarity.shape
    if columns < 2:
        raise ValueError(
            f"hard-negative ITM needs at least 2 image-text pairs over all ranks, got {columns}: raise the batch size"
        )
    scores = similarity.detach().float().cpu().clone()  # never write into the caller's logits
    scores[torch.arange(rows), positives.cpu()] = float("-inf")
    weights = torch.softmax(scores, dim=1)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1).to(similarity.device)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(dim=-1) == labels).float().mean()


# ------------------------------------------------------------------------------------------ stages
def _branch(name: str) -> str | None:
    """Which expert copy a parameter belongs to: 'A' (vision), 'B' (language), 'VL', or None (shared)."""
    parts = name.split(".")
    for branch in ("VL", "A", "B"):
        if branch in parts:
            return branch
    return None


def stage_trainable(name: str, stage: int) -> bool:
    """Whether parameter ``name`` (a ``VLMoForPretraining`` name) trains in ``stage``.

    - Stage 1 (image MIM): ``vision_embed``, the vision position table, attention (shared, or its
      vision copies), the V-FFN and its LayerNorm, the final LayerNorm (shared or vision copy), ``mim_head``.
    - Stage 2 (text MLM; ``vlmo/run.py`` keeps ``text_embeddings``, ``mlp_text``, ``norm2_text``,
      ``mlm_score``, the position table and ``transformer.norm``): ``text_embed``, the text position
      table, the L-FFN and its LayerNorm, the final LayerNorm (shared or language copy), ``mlm_head``,
      and in the released layout the language copies of attention. Shared attention stays frozen.
    - Stage 3 (image-text): every backbone parameter but the image ``mask_token`` (no image masking),
      and the MLM, ITC and ITM heads; ``mim_head`` is idle.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown VLMo stage {stage!r}; stages are {STAGES}")
    head = name.split(".", 1)[0]
    if head != "beit3":
        if stage == 1:
            return head == "mim_head"
        if stage == 2:
            return head == "mlm_head"
        return head != "mim_head"
    if stage == 3:
        return not name.endswith("vision_embed.mask_token")
    branch = _branch(name)
    is_attention = ".self_attn." in name or ".self_attn_layer_norm" in name
    is_final_norm = name.startswith("beit3.encoder.layer_norm")
    if stage == 1:
        if name.startswith("beit3.vision_embed.") or name.startswith("beit3.encoder.embed_positions.A"):
            return True
        if is_attention or is_final_norm or ".ffn." in name or ".final_layer_norm." in name:
            return branch in (None, "A")
        return False
    # stage 2
    if name.startswith("beit3.text_embed.") or name.startswith("beit3.encoder.embed_positions.B"):
        return True
    if ".ffn." in name or ".final_layer_norm." in name:
        return branch == "B"
    if is_final_norm:
        return branch in (None, "B")
    if is_attention:
        return branch == "B"  # per-modality (released) attention only; shared attention stays frozen
    return False


def configure_stage(model: nn.Module, stage: int) -> list[str]:
    """Set ``requires_grad`` of every parameter of ``model`` for VLMo ``stage``; return the trainable names.

    Build the optimizer after this call from ``[p for p in model.parameters() if p.requires_grad]``.
    """
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(stage_trainable(name, stage))
        if param.requires_grad:
            trainable.append(name)
    return trainable


# ------------------------------------------------------------------------------------------- model
class VLMoForPretraining(TaskModel):
    """Our Multiway Transformer with VLMo's pretraining heads and staged objectives.

    Args:
        backbone: a ``backbones.create_model`` product (paper layout recommended).
        num_visual_tokens: codebook size of the stage-1 MIM targets.
        mlm_weight: weight of the stage-3 MLM loss (VLMo: 0.25).
        itc_vl_branch: add VLMo's second contrastive loss through the VL-FFN layers; ``None`` = on
            when the backbone has VL-FFN layers.
        itm_seed: seed of the module's hard-negative generator, used when a batch has no ``model_seed``.
    """

    def __init__(
        self,
        backbone: BEiT3Backbone,
        num_visual_tokens: int = DEFAULT_NUM_VISUAL_TOKENS,
        mlm_weight: float = VLMO_MLM_WEIGHT,
        itc_vl_branch: bool | None = None,
        itm_seed: int = 0,
    ):
        super().__init__(backbone)
        config = self.config
        dim = config.embed_dim
        has_vl = config.layout == "paper" and config.vl_ffn_layers > 0
        if itc_vl_branch is None:
            itc_vl_branch = has_vl
        if itc_vl_branch and not has_vl:
            raise ValueError(
                "itc_vl_branch needs VL-FFN layers: build the backbone with layout='paper', vl_ffn_layers>0"
            )
        self.num_visual_tokens = num_visual_tokens
        self.mlm_weight = mlm_weight
        self.itc_vl_branch = itc_vl_branch

        self.mim_head = nn.Linear(dim, num_visual_tokens)
        self.mlm_head = nn.Linear(dim, config.vocab_size)
        self.itc_vision_head = nn.Linear(dim, dim, bias=False)
        self.itc_language_head = nn.Linear(dim, dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / ITC_INIT_TEMPERATURE)))
        if itc_vl_branch:
            self.itc_vl_vision_head = nn.Linear(dim, dim, bias=False)
            self.itc_vl_language_head = nn.Linear(dim, dim, bias=False)
            self.itc_vl_logit_scale = nn.Parameter(torch.tensor(math.log(1 / ITC_INIT_TEMPERATURE)))
        self.itm_pooler = Pooler(dim, dim)
        self.itm_head = nn.Linear(dim, 2)
        for name, module in self.named_children():
            if name != "beit3":
                module.apply(init_head_weights)
        self.itm_generator = torch.Generator().manual_seed(itm_seed)

    # -- stage 1 and 2 ---------------------------------------------------------------------------
    def image_mim(self, image: torch.Tensor, image_mask: torch.Tensor, image_codes: torch.Tensor,
                  count: int | None = None):
        out = self.beit3(visual_tokens=image, vision_masked_position=image_mask)
        return masked_prediction(self.mim_head, out["encoder_out"][:, 1:], image_mask, image_codes, count)

    def text_mlm(self, text_ids: torch.Tensor, padding_mask: torch.Tensor, labels: torch.Tensor,
                 count: int | None = None):
        out = self.beit3(textual_tokens=text_ids, text_padding_position=padding_mask)
        return masked_prediction(self.mlm_head, out["encoder_out"], labels != IGNORE_INDEX, labels, count)

    # -- stage 3 ---------------------------------------------------------------------------------
    def _vl_branch_first_token(self, states: list[torch.Tensor], split_position: int,
                               padding_mask: torch.Tensor | None) -> torch.Tensor:
        """Re-run a unimodal input from the first VL layer with every token through the VL-FFN."""
        encoder = self.beit3.encoder
        start = self.config.depth - self.config.vl_ffn_layers
        x = states[start]
        attn_bias = build_attn_bias(None, padding_mask, x.dtype)
        for layer in encoder.layers[start:]:
            x = layer(x, split_position, attn_bias, None, use_vl=True)
        if encoder.layer_norm is not None:
            x = route(encoder.layer_norm, x, split_position)
        return x[:, 0]

    def unimodal_features(self, image: torch.Tensor, text_ids: torch.Tensor, padding_mask: torch.Tensor):
        """L2-normalised ITC features: ``{"image", "text"}`` and, with the VL branch, ``{"image_vl", "text_vl"}``."""
        keep = self.itc_vl_branch
        image_out = self.beit3(visual_tokens=image, return_all_hiddens=keep)
        text_out = self.beit3(textual_tokens=text_ids, text_padding_position=padding_mask, return_all_hiddens=keep)
        feats = {
            "image": F.normalize(self.itc_vision_head(image_out["encoder_out"][:, 0]), dim=-1),
            "text": F.normalize(self.itc_language_head(text_out["encoder_out"][:, 0]), dim=-1),
        }
        if keep:
            image_vl = self._vl_branch_first_token(image_out["encoder_states"], -1, None)
            text_vl = self._vl_branch_first_token(text_out["encoder_states"], 0, padding_mask)
            feats["image_vl"] = F.normalize(self.itc_vl_vision_head(image_vl), dim=-1)
            feats["text_vl"] = F.normalize(self.itc_vl_language_head(text_vl), dim=-1)
        return feats

    def itm_logits(self, image: torch.Tensor, text_ids: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
        out = self.beit3(textual_tokens=text_ids, visual_tokens=image, text_padding_position=padding_mask)
        return self.itm_head(self.itm_pooler(out["encoder_out"]))

    def _generator(self, batch: dict[str, torch.Tensor]) -> torch.Generator:
        if "model_seed" in batch:
            return torch.Generator().manual_seed(int(batch["model_seed"]))
        return self.itm_generator

    def image_text(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for key in ("pair_image", "pair_text_ids", "pair_padding_mask", "pair_text_labels"):
            if key not in batch:
                raise KeyError(f"VLMo stage 3 needs the pair stream; the batch lacks {key!r}")
        image, masked_ids = batch["pair_image"], batch["pair_text_ids"]
        padding, labels = batch["pair_padding_mask"], batch["pair_text_labels"]
        clean_ids = torch.where(labels != IGNORE_INDEX, labels, masked_ids)

        # ITC
        feats = self.unimodal_features(image, clean_ids, padding)
        itc, i2t, t2i, targets = contrastive_loss(feats["image"], feats["text"], self.logit_scale.exp())
        logs = {"itc_i2t_acc": _accuracy(i2t, targets), "itc_t2i_acc": _accuracy(t2i, targets),
                "logit_scale": self.logit_scale.detach().exp()}
        if self.itc_vl_branch:
            itc_vl, i2t_vl, t2i_vl, _ = contrastive_loss(
                feats["image_vl"], feats["text_vl"], self.itc_vl_logit_scale.exp()
            )
            logs.update(itc_ffn_loss=itc.detach(), itc_vlffn_loss=itc_vl.detach(),
                        itc_vl_i2t_acc=_accuracy(i2t_vl, targets), itc_vl_t2i_acc=_accuracy(t2i_vl, targets))
            itc = (itc + itc_vl) / 2

        # ITM with hard negatives drawn over the gathered batch
        generator = self._generator(batch)
        negative_texts = sample_hard_negatives(i2t, targets, generator)   # for each image
        negative_images = sample_hard_negatives(t2i, targets, generator)  # for each text
        with torch.no_grad():
            all_images = all_gather_with_grad(image)
            all_ids = all_gather_with_grad(clean_ids)
            all_padding = all_gather_with_grad(padding)
        itm_images = torch.cat([image, all_images[negative_images], image])
        itm_ids = torch.cat([clean_ids, clean_ids, all_ids[negative_texts]])
        itm_padding = torch.cat([padding, padding, all_padding[negative_texts]])
        itm_logits = self.itm_logits(itm_images, itm_ids, itm_padding)
        n = image.shape[0]
        itm_labels = torch.cat([torch.ones(n), torch.zeros(2 * n)]).long().to(itm_logits.device)
        itm = F.cross_entropy(itm_logits.float(), itm_labels)

        # MLM on the pair (masked text, whole image)
        out = self.beit3(textual_tokens=masked_ids, visual_tokens=image, text_padding_position=padding)
        split = out["multiway_split_position"]
        mlm = masked_prediction(self.mlm_head, out["encoder_out"][:, split:], labels != IGNORE_INDEX, labels,
                                batch.get("num_masked", {}).get("pair_text_labels"))

        mlm_loss, mlm_acc, mlm_count = mlm
        return {
            "loss": itc + itm + self.mlm_weight * mlm_loss,
            "itc_loss": itc.detach(),
            "itm_loss": itm.detach(),
            "itm_acc": _accuracy(itm_logits, itm_labels),
            "pair_mlm_loss": mlm_loss.detach(),
            "pair_mlm_acc": mlm_acc,
            "pair_mlm_count": torch.tensor(float(mlm_count), device=mlm_loss.device),
            **logs,
        }

    def forward(self, batch: dict[str, torch.Tensor], stage: int) -> dict[str, torch.Tensor]:
        """Loss and logs of ``stage`` (1 image MIM, 2 text MLM, 3 ITC + ITM + MLM) on ``batch``.

        Returns:
            ``loss`` and detached scalars: stage 1 ``mim_loss/acc``; stage 2 ``mlm_loss/acc``; stage 3
            ``itc_loss``, ``itc_i2t_acc``, ``itc_t2i_acc``, ``logit_scale``, ``itm_loss``, ``itm_acc``,
            ``pair_mlm_loss``, ``pair_mlm_acc`` (+ ``itc_ffn_loss``, ``itc_vlffn_loss``,
            ``itc_vl_*_acc`` with the VL branch), and ``*_count`` (predictions per objective).
        """
        counts = batch.get("num_masked", {})  # host-side counts of the masks: no device read to select
        if stage == 1:
            for key in ("image", "image_mask", "image_codes"):
                if key not in batch:
                    raise KeyError(f"VLMo stage 1 needs the image stream; the batch lacks {key!r}")
            return summarize({"mim": self.image_mim(batch["image"], batch["image_mask"], batch["image_codes"],
                                                    counts.get("image_mask"))})
        if stage == 2:
            for key in ("text_ids", "text_padding_mask", "text_labels"):
                if key not in batch:
                    raise KeyError(f"VLMo stage 2 needs the text stream; the batch lacks {key!r}")
            mlm = self.text_mlm(batch["text_ids"], batch["text_padding_mask"], batch["text_labels"],
                                counts.get("text_labels"))
            return summarize({"mlm": mlm})
        if stage == 3:
            return self.image_text(batch)
        raise ValueError(f"unknown VLMo stage {stage!r}; stages are {STAGES}")


def build_pretrain_vlmo(
    model_name: str,
    num_visual_tokens: int = DEFAULT_NUM_VISUAL_TOKENS,
    mlm_weight: float = VLMO_MLM_WEIGHT,
    itc_vl_branch: bool | None = None,
    itm_seed: int = 0,
    **backbone_overrides: Any,
) -> VLMoForPretraining:
    """VLMo's staged pretraining on ``model_name``, in the paper layout unless ``layout`` is given.

    Args:
        model_name: a ``backbones.list_models()`` name.
        num_visual_tokens, mlm_weight, itc_vl_branch, itm_seed: see :class:`VLMoForPretraining`.
        **backbone_overrides: passed to ``backbones.create_model`` (``layout="released"`` allowed).
    """
    backbone = create_task_backbone(model_name, {"layout": "paper"}, backbone_overrides)
    return VLMoForPretraining(backbone, num_visual_tokens, mlm_weight, itc_vl_branch, itm_seed)


STAGE_STREAMS = {1: ("image",), 2: ("text",), 3: ("pair",)}


def _stage_of(selection: str | int) -> int:
    stage = int(str(selection).removeprefix("stage"))
    if stage not in STAGES:
        raise ValueError(f"unknown VLMo stage {selection!r}; choose one of stage1, stage2, stage3")
    return stage


def build_data(data_config: dict, *, model, seed: int, rank: int = 0, world_size: int = 1):
    """One stream per stage: images (1), texts (2), image-text pairs (3); ``data_config['stage']``."""
    from tasks.pretrain_data import build_pretraining_data

    config = dict(data_config)
    stage = _stage_of(config.pop("stage", 3))
    return build_pretraining_data(config, model=model, seed=seed, rank=rank, world_size=world_size,
                                  streams=STAGE_STREAMS[stage])


def configure_trainable(model: nn.Module, selection: str) -> list[str]:
    """``selection`` = ``stage1`` | ``stage2`` | ``stage3`` (see :func:`configure_stage`)."""
    return configure_stage(model, _stage_of(selection))


SPEC = TaskSpec(name="pretrain_vlmo", build_model=build_pretrain_vlmo, build_data=build_data,
                data_defaults={**PRETRAINING_DATA_DEFAULTS, "stage": 3}, configure_trainable=configure_trainable)
