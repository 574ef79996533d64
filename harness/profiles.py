"""Run profiles: how big a run is, as data.

A profile says which data world a run reads, which model size it builds and how long it trains.
`smoke` runs in seconds on a CPU, `mini` in minutes on one GPU, `paper` follows the paper's
recipes on the real datasets. Task recipes read these fields; they never branch on the name.
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
            scale them to this profile; the same for every recipe and stage, so the recipes stay at
            equal compute (steps x batch x data).
        finetune: overrides of the tasks' official recipes: ``common`` for every task, then per task.
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

    @property
    def synthetic(self) -> bool:
        """Whether the profile reads a generated world rather than the real datasets."""
        return self.world != "real"


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="smoke",
            description="seconds on a CPU: tiny backbone, the generated smoke world, a few steps",
            world="smoke",
            model_size="tiny",
            max_steps=4,
            batch_size=2,
            default_seeds=1,
            pretrain=dict(
                model="beit3_tiny_patch16_224",
                model_overrides=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                                     num_visual_tokens=32, drop_path_rate=0.0),
                data=dict(root="world:smoke", images="in21k/train", texts=["text/corpus.txt"],
                          pairs="pairs/pairs-*.tar", tokenizer="spm/world.model",
                          visual_tokenizer=dict(type="codebook", num_codes=32, seed=0), batch_size=2,
                          max_text_len=32, max_pair_text_len=24, augment="label_safe"),
                max_steps=4, warmup_steps=1, lr=1e-3, min_lr=1e-5, precision="fp32", grad_checkpointing=False,
                ckpt_interval=2, log_interval=1,
            ),
            finetune=dict(
                common=dict(max_steps=3, warmup_steps=1, lr=1e-3, min_lr=1e-5, ckpt_interval=3, log_interval=1,
                            precision="fp32", data=dict(batch_size=2, augment="label_safe")),
                captioning=dict(data=dict(batch_size=2, max_len=24, augment="label_safe")),
            ),
        ),
        Profile(
            name="mini",
            description="minutes on 2 CPU cores: tiny backbone, the generated mini world, short schedules",
            world="mini",
            model_size="tiny",
            # mmdet/mmseg runs (tables 7/8): ~1.3 epochs of the world's 600 training images, the
            # pipeline end to end in minutes (200 iterations at batch 16 took ~1 h per table on 2 cores).
            max_steps=100,
            batch_size=8,
            default_seeds=1,
            pretrain=dict(
                model="beit3_tiny_patch16_224",
                model_overrides=dict(img_size=64, patch_size=8, embed_dim=128, depth=4, num_heads=4,
                                     num_visual_tokens=256, drop_path_rate=0.1),
                data=dict(root="world:mini", images="in21k/train", texts=["text/corpus.txt"],
                          pairs="pairs/pairs-*.tar", tokenizer="spm/world.model",
                          visual_tokenizer=dict(type="codebook", num_codes=256, seed=0), batch_size=16,
                          max_text_len=48, max_pair_text_len=32, augment="label_safe"),
                max_steps=300, warmup_steps=30, lr=1e-3, min_lr=1e-5, precision="fp32", grad_checkpointing=False,
                ckpt_interval=100, log_interval=10,
            ),
            finetune=dict(
                # benchmarks/sweep_mini_finetune.py, VQA from BEiT-3 MDM: 400 steps at lr 1e-3 (head lr x1:
                # the official x20 is too hot for a tiny model) reached 21.8%, 600 at 2e-3 stayed at the
                # majority answer (14.0%), 1000 at 2e-3 reached 32.7% (answer-type prior 31.4%).
                common=dict(max_steps=1000, warmup_steps=40, lr=2e-3, min_lr=1e-6, ckpt_interval=500,
                            log_interval=10, precision="fp32", data=dict(batch_size=16, augment="label_safe")),
                vqav2=dict(head_lr_scale=1.0),
                # Captioning keeps the lr its smoke and mini runs were checked at.
                captioning=dict(lr=1e-3, data=dict(batch_size=16, max_len=32, augment="label_safe")),
            ),
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
