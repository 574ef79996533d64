"""Run profiles: how big a run is, as data.

A profile says which data world a run reads, which model size it builds and how long it trains.
`smoke` runs in seconds on a CPU and `mini` in minutes on 2 CPU cores (both on a generated world,
one shared base with their own sizes and schedules); `paper` follows the paper's recipes on the real
datasets and needs a GPU cluster. Every recipe builds the same backbone, and "equal compute" between
recipes means equal pretraining FLOPs, counted per optimizer step (``harness.budget``), not equal
steps or samples. Task recipes read these fields; they never branch on the name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from backbones.suggest import did_you_mean


class UnknownNameError(KeyError):
    """A name (table, profile, model, ...) that is not registered; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


def _natural_key(name: str) -> list[int | str]:
    """``table2`` sorts before ``table10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def unknown_name_error(kind: str, name: str, known: Iterable[str]) -> UnknownNameError:
    """Builds the one error every registry in the harness raises for a name it does not know.

    Args:
        kind: what the name names, e.g. ``"table"`` or ``"profile"``.
        name: the name that was asked for.
        known: every valid name.
    """
    known = sorted(known, key=_natural_key)
    return UnknownNameError(f"unknown {kind} {name!r}{did_you_mean(name, known)}. Known {kind}s: {', '.join(known)}.")


@dataclass(frozen=True)
class Profile:
    """One run profile.

    Args:
        name: ``smoke``, ``mini`` or ``paper``.
        description: one line for ``harness list profiles``.
        world: the data source: the name of a synthetic world built by ``harness data world``
            (``smoke``/``mini``), or ``real`` for the official datasets under ``data/``.
        model_size: size of the backbone the task runs build (``tiny``, ``base``, ``large``).
        max_steps: iterations of each detection/segmentation run (tables 7/8); ``None`` means the
            config's own schedule.
        batch_size: their per-device batch size; ``None`` means the config's own.
        default_seeds: how many seeds ``harness run`` uses unless ``--seeds`` says otherwise.
        pretrain: overrides applied to the paper's pretraining recipes (``configs/pretrain/*.py``) to
            scale them to this profile, alike for every recipe and stage: model, data and batch. The
            schedule keys (``max_steps``, ``warmup_steps``, ``lr``, ``min_lr``) scale BEiT-3 MDM, the
            reference; every other recipe's stages then get the steps that match its pretraining FLOPs
            (``harness.budget``; ``--ablation budget=samples|steps`` matches samples or steps instead)
            and their own learning rates times the factor applied to MDM's.
        finetune: overrides of the tasks' official recipes: ``common`` for every task, then per task.
        dense: per detection/segmentation table (``table7``, ``table8``): ``max_steps`` and
            ``batch_size`` that replace the two above for its runs, and ``heads``, the heads it runs
            (default all).
        budget_tolerance: how far (relative) a recipe's pretraining FLOPs may be from the reference's
            once its steps are rounded to integers.
        pretrain_ranks: the ranks the pretraining batch (per rank) is meant for, which ``--dry-run``
            counts FLOPs on unless ``--nproc`` says otherwise (``paper``: 16 per GPU x 128 GPUs = the
            paper's 2048 per stream).
    """

    name: str
    description: str
    world: str
    model_size: str
    max_steps: int | None
    batch_size: int | None
    default_seeds: int
    pretrain: Mapping[str, Any] = field(default_factory=dict)
    finetune: Mapping[str, Any] = field(default_factory=dict)
    dense: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    budget_tolerance: float = 0.05
    pretrain_ranks: int = 1

    @property
    def synthetic(self) -> bool:
        """Whether the profile reads a generated world rather than the real datasets."""
        return self.world != "real"


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides``: dict values merged key by key (recursively), everything else replaced."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# What the generated worlds' profiles share: the tiny backbone, the world's layout, fp32 on the CPU,
# augmentation that keeps this world's labels true (no flips, crops or colour ops; issue 13).
# `smoke` and `mini` are this base plus their sizes and schedules.
_WORLD_PRETRAIN: dict[str, Any] = dict(
    model="beit3_tiny_patch16_224",
    model_overrides=dict(patch_size=8),
    data=dict(images="in21k/train", texts=["text/corpus.txt"], pairs="pairs/pairs-*.tar", tokenizer="spm/world.model",
              visual_tokenizer=dict(type="codebook", seed=0), augment="label_safe"),
    lr=1e-3, min_lr=1e-5, precision="fp32", grad_checkpointing=False,
)
_WORLD_FINETUNE_COMMON: dict[str, Any] = dict(precision="fp32", log_interval=1, data=dict(augment="label_safe"))


def _world_profile(name: str, description: str, max_steps: int, batch_size: int, *, model: Mapping[str, Any],
                   data: Mapping[str, Any], pretrain: Mapping[str, Any], finetune: Mapping[str, Any],
                   budget_tolerance: float, dense: Mapping[str, Mapping[str, Any]] | None = None) -> Profile:
    """A profile on the generated world ``name``: the shared base with this profile's sizes and schedules."""
    pretraining = deep_merge(_WORLD_PRETRAIN, {"model_overrides": model, "data": {"root": f"world:{name}", **data},
                                               **pretrain})
    common = deep_merge(_WORLD_FINETUNE_COMMON, finetune.get("common", {}))
    return Profile(name=name, description=description, world=name, model_size="tiny", max_steps=max_steps,
                   batch_size=batch_size, default_seeds=1, pretrain=pretraining,
                   finetune={**finetune, "common": common}, dense=dict(dense or {}),
                   budget_tolerance=budget_tolerance)


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        _world_profile(
            "smoke", "seconds on a CPU: tiny backbone, the generated smoke world, a few steps",
            max_steps=4, batch_size=2,
            model=dict(img_size=32, embed_dim=32, depth=2, num_heads=2, num_visual_tokens=32, drop_path_rate=0.0),
            data=dict(visual_tokenizer=dict(num_codes=32), batch_size=2, max_text_len=32, max_pair_text_len=24),
            pretrain=dict(max_steps=4, warmup_steps=1, ckpt_interval=2, log_interval=1),
            finetune=dict(
                common=dict(max_steps=3, warmup_steps=1, lr=1e-3, min_lr=1e-5, ckpt_interval=3, data=dict(batch_size=2)),
                captioning=dict(data=dict(batch_size=2, max_len=24)),
            ),
            # Four MDM steps: one step of a VLMo stage is a large share of that budget.
            budget_tolerance=0.5,
        ),
        _world_profile(
            "mini", "minutes on 2 CPU cores: tiny backbone, the generated mini world, short schedules",
            # mmdet/mmseg runs (tables 7/8): ~1.3 epochs of the world's 600 training images, the
            # pipeline end to end in minutes (200 iterations at batch 16 took ~1 h per table on 2 cores).
            max_steps=100, batch_size=8,
            model=dict(img_size=64, embed_dim=128, depth=4, num_heads=4, num_visual_tokens=256, drop_path_rate=0.1),
            data=dict(visual_tokenizer=dict(num_codes=256), batch_size=16, max_text_len=48, max_pair_text_len=32),
            pretrain=dict(max_steps=300, warmup_steps=30, ckpt_interval=100, log_interval=10),
            finetune=dict(
                # Head lr x1 for VQA: the official x20 is too hot for a tiny model. The calibration sweep
                # on an independent world (benchmarks/results/calibration_mini.md): VQA from BEiT-3 MDM at
                # lr 5e-4 beats both its shuffled-image and text-only controls, at 2e-3 it learns neither;
                # from random init no lr at 1000 steps learns VQA or NLVR2 (the budget binds there).
                common=dict(max_steps=1000, warmup_steps=40, lr=2e-3, min_lr=1e-6, ckpt_interval=500,
                            log_interval=10, data=dict(batch_size=16)),
                vqav2=dict(head_lr_scale=1.0, lr=5e-4),
                # Captioning keeps the lr its smoke and mini runs were checked at.
                captioning=dict(lr=1e-3, data=dict(batch_size=16, max_len=32)),
            ),
            # Detection runs Mask R-CNN only (Cascade is the smoke profile's pipeline check), on the
            # schedule of its calibration sweep (benchmarks/results/calibration_mini_dense.md).
            dense=dict(table7=dict(heads=("mask_rcnn",), max_steps=300, batch_size=8)),
            budget_tolerance=0.05,
        ),
        Profile(
            name="paper",
            description="the paper's recipes on the official datasets (needs data/ and a GPU cluster)",
            world="real",
            model_size="base",
            max_steps=None,
            batch_size=None,
            default_seeds=3,
            # Pretraining: configs/pretrain/*.py as written (data under data/pretrain). Finetuning: each
            # task's official recipe for the pretrained size (epochs and total batch -> steps per rank at
            # launch); every data root holds the official layout plus the sentencepiece model beit3.spm.
            finetune=dict(
                common=dict(precision="bf16", grad_checkpointing=True, ckpt_interval=1000, log_interval=50,
                            data=dict(tokenizer="beit3.spm")),
                data_roots=dict(vqav2="data/vqav2", nlvr2="data/nlvr2", captioning="data/coco", coco="data/coco",
                                flickr30k="data/flickr30k", imagenet="data/imagenet",
                                pretraining_pairs="data/pretrain"),
            ),
            budget_tolerance=0.05,
            pretrain_ranks=128,
        ),
    )
}


def list_profiles() -> list[str]:
    """Names of all profiles, sorted."""
    return sorted(PROFILES)


def get_profile(name: str) -> Profile:
    """Returns the profile called ``name``.

    Raises:
        UnknownNameError: ``name`` is not a profile; the message lists the known ones.
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise unknown_name_error("profile", name, PROFILES) from None
