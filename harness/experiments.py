"""Experiments: training runs as nodes of a graph (pretraining -> intermediate -> finetune -> eval).

A node is a :class:`TrainConfig` and, for a derived run, its parent. :func:`ensure_run` makes the node
exist exactly once: a FINISHED MLflow run with the same identity (whose weights are still on disk,
with the sha256 it recorded) is reused; an interrupted one resumes from the checkpoints in its run
directory, continuing its MLflow run; otherwise it runs. One process at a time works on a run (a
file lock on its directory): a second waits, then reuses what the first finished.

A derived run starts from its parent's weights and carries the parent's run id, config hash and
weights sha256; the parent's config hash is part of the child's config hash and the weights hash of
its identity (``config.run_identity``), so retraining a parent invalidates its children and a child
never reuses a run made from other weights. A parent whose weights are gone or changed is refused.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.data.world_root import world_profile

from .ablation import Ablation, ablation_label, apply_ablation
from .checkpointing import LineageError, file_sha256, latest_checkpoint
from .config import TrainConfig, load_train_config, run_identity, train_config_hash
from .locks import HELD_ENV, exclusive
from .gitinfo import PACKAGE_ROOT
from .profiles import Profile, unknown_name_error
from .tracking import find_finished_run, mark_stale_runs_killed, resolve_tracking_uri, use_tracking_uri

CONFIG_ROOT = PACKAGE_ROOT / "configs"
RECIPES: dict[str, tuple[str, ...]] = {
    "beit3": ("pretrain/mdm.py",),
    "vlmo": ("pretrain/vlmo_stage1.py", "pretrain/vlmo_stage2.py", "pretrain/vlmo_stage3.py"),
}
# What a finetune can start from: a pretraining recipe's final weights, or ``none`` (random init).
RECIPE_NAMES: tuple[str, ...] = (*RECIPES, "none")


@dataclass(frozen=True)
class RunRecord:
    """A finished training run: where its weights are and what it measured."""

    name: str
    run_id: str
    config_hash: str
    checkpoint: str  # the final weights file
    status: str  # "reused" | "ran" | "resumed"
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def weights_sha256(self) -> str:
        return self.tags.get("weights_sha256", "")


def runs_root() -> Path:
    return Path(os.environ.get("BEIT3_RUNS_DIR", PACKAGE_ROOT / "runs"))


def world_manifest(root: str) -> dict[str, Any]:
    from .world import load_manifest, resolve_world_root

    return load_manifest(resolve_world_root(root))


def fill_from_world(cfg: TrainConfig) -> TrainConfig:
    """Sizes that follow from the benchmark world (its tokenizer's vocabulary) when not given."""
    root = cfg.data.get("root", "")
    if world_profile(root) is None or "vocab_size" in cfg.model_overrides:
        return cfg
    vocab = int(world_manifest(root)["counts"]["spm"]["vocab_size"])
    return dataclasses.replace(cfg, model_overrides={**cfg.model_overrides, "vocab_size": vocab})


def check_recipe(name: str) -> str:
    """``name`` if it is a recipe (or ``none``); else the harness's unknown-name error listing them."""
    if name not in RECIPE_NAMES:
        raise unknown_name_error("recipe", name, RECIPE_NAMES)
    return name


def recipe_configs(recipe: str, profile: Profile, seed: int = 0, ablation: Ablation = ()) -> list[TrainConfig]:
    """The pretraining runs of ``recipe`` (one, or one per VLMo stage) scaled to ``profile``, with the
    switches of ``ablation`` (``harness.ablation``) set alike in every stage and the steps of the
    ablation's budget (``harness.budget``: equal FLOPs by default)."""
    from .budget import REFERENCE_RECIPE, budget_of, schedule_recipe

    if recipe not in RECIPES:
        raise unknown_name_error("pretraining recipe", recipe, RECIPES)
    stages = _scaled_stages(recipe, profile, seed, ablation)
    reference = stages if recipe == REFERENCE_RECIPE else _scaled_stages(REFERENCE_RECIPE, profile, seed, ablation)
    own = [load_train_config(CONFIG_ROOT / relative) for relative in RECIPES[recipe]]
    configs: list[TrainConfig] = []
    for cfg in schedule_recipe(recipe, stages, own, profile, reference, budget_of(ablation)):
        if configs:  # a stage descends from the one before; its hash is known before anything runs
            cfg = dataclasses.replace(cfg, parent_config_hash=train_config_hash(configs[-1]))
        configs.append(cfg)
    return configs


def _scaled_stages(recipe: str, profile: Profile, seed: int, ablation: Ablation) -> list[TrainConfig]:
    """The stages of ``recipe`` with the profile's overrides and the ablation, before the budget sets their steps."""
    configs = []
    for relative in RECIPES[recipe]:
        stage = Path(relative).stem.split("_")[-1] if recipe == "vlmo" else "mdm"
        overrides = {**profile.pretrain, "seed": seed, "profile": profile.name,
                     "run_name": "-".join(filter(None, [recipe, stage, profile.name, f"seed{seed}",
                                                        ablation_label(ablation, "-")]))}
        configs.append(apply_ablation(fill_from_world(load_train_config(CONFIG_ROOT / relative, overrides)), ablation))
    return configs


def pretraining_configs(profile: Profile, seeds: int, recipes: tuple[str, ...] = RECIPE_NAMES,
                        ablation: Ablation = ()) -> list[TrainConfig]:
    """Every pretraining run of every recipe in ``recipes`` (``none`` has none) and seed: what tables
    built on table3 plan first."""
    return [cfg for recipe in RECIPES if recipe in recipes for seed in range(seeds)
            for cfg in recipe_configs(recipe, profile, seed, ablation)]


def weights_problem(record: RunRecord) -> str:
    """Why ``record``'s weights cannot be trusted ("" when its file exists with the recorded sha256)."""
    if not record.checkpoint:
        return "it records no weights file"
    if not Path(record.checkpoint).is_file():
        return f"its weights {record.checkpoint} are missing"
    if not record.weights_sha256:
        return f"it records no sha256 of its weights {record.checkpoint}"
    actual = file_sha256(record.checkpoint)
    if actual != record.weights_sha256:
        return (f"its weights {record.checkpoint} have sha256 {actual[:12]}, "
                f"not the {record.weights_sha256[:12]} it recorded")
    return ""


def derive(cfg: TrainConfig, parent: RunRecord | None) -> TrainConfig:
    """``cfg`` started from ``parent``'s weights, carrying its run id, config hash and weights hash.

    Raises:
        LineageError: the parent's weights are missing or differ from what it recorded.
    """
    if parent is None:
        return cfg
    if cfg.parent_config_hash and cfg.parent_config_hash != parent.config_hash:
        raise ValueError(
            f"{cfg.run_name} was planned to descend from config {cfg.parent_config_hash[:12]}, "
            f"but the parent run {parent.run_id} has config {parent.config_hash[:12]}"
        )
    problem = weights_problem(parent)
    if problem:
        raise LineageError(f"{cfg.run_name} cannot start from run {parent.name} ({parent.run_id}): {problem}; "
                           f"rerun the command to train {parent.name} again")
    return dataclasses.replace(cfg, init_from=parent.checkpoint, parent_run_id=parent.run_id,
                               parent_config_hash=parent.config_hash, parent_weights_sha256=parent.weights_sha256)


def _record(name: str, run: Any, status: str) -> RunRecord:
    tags = dict(run.data.tags)
    return RunRecord(name=name, run_id=run.info.run_id, config_hash=tags.get("config_hash", ""),
                     checkpoint=tags.get("checkpoint", ""), status=status, metrics=dict(run.data.metrics), tags=tags)


def _identity_tags(cfg: TrainConfig) -> dict[str, str]:
    return {"parent_weights_sha256": cfg.parent_weights_sha256} if cfg.parent_weights_sha256 else {}


def find_reusable(cfg: TrainConfig, tracking_uri: str | None = None) -> RunRecord | None:
    """The FINISHED run of ``cfg``'s identity whose weights are on disk with their recorded sha256."""
    run = find_finished_run(cfg.experiment, train_config_hash(cfg), tracking_uri=tracking_uri,
                            tags=_identity_tags(cfg))
    if run is None:
        return None
    record = _record(cfg.run_name, run, "reused")
    return None if weights_problem(record) else record


def run_dir(cfg: TrainConfig) -> Path:
    return runs_root() / cfg.experiment / f"{cfg.run_name}-{run_identity(cfg)[:12]}"


def ensure_run(cfg: TrainConfig, parent: RunRecord | None = None, *, tracking_uri: str | None = None,
               nproc: int = 1) -> RunRecord:
    """Reuse, resume or run ``cfg`` (derived from ``parent`` if given); returns its record."""
    cfg = derive(cfg, parent)
    uri = resolve_tracking_uri(tracking_uri)
    reusable = find_reusable(cfg, uri)
    if reusable is not None:
        return reusable
    out_dir = run_dir(cfg)
    with exclusive(out_dir, f"run {cfg.run_name}"):
        reusable = find_reusable(cfg, uri)  # a process that held the lock may have finished it
        if reusable is not None:
            return reusable
        # We hold the lock, so a RUNNING run of this identity has no live process behind it.
        mark_stale_runs_killed(cfg.experiment, train_config_hash(cfg), tracking_uri=uri, tags=_identity_tags(cfg))
        return _train(dataclasses.replace(cfg, out_dir=str(out_dir), resume=True), uri, nproc)


def _train(cfg: TrainConfig, uri: str, nproc: int) -> RunRecord:
    """Run (or resume) ``cfg`` in its run directory, recording into ``uri``; the caller holds its lock."""
    status = "resumed" if latest_checkpoint(cfg.out_dir) is not None else "ran"
    with use_tracking_uri(uri):  # the trainer (and torchrun children) record there
        if nproc > 1:
            launch_torchrun(cfg, nproc)
        else:
            from .launch import run_training

            run_training(cfg)
    run = find_finished_run(cfg.experiment, train_config_hash(cfg), tracking_uri=uri, tags=_identity_tags(cfg))
    if run is None:
        raise RuntimeError(f"run {cfg.run_name} ended without a FINISHED MLflow run in {uri}")
    record = _record(cfg.run_name, run, status)
    if weights_problem(record):
        raise LineageError(f"run {cfg.run_name} ({record.run_id}) ended FINISHED but {weights_problem(record)}")
    return record


def launch_torchrun(cfg: TrainConfig, nproc: int) -> None:
    """``torchrun --nproc_per_node N -m harness.train <config>`` with the resolved config written out."""
    handle, path = tempfile.mkstemp(suffix=".py", prefix=f"{cfg.run_name}-")
    with os.fdopen(handle, "w") as stream:
        for key, value in cfg.to_dict().items():
            stream.write(f"{key} = {value!r}\n")
    try:
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                        str(nproc), "-m", "harness.train", path], check=True,
                       env={**os.environ, HELD_ENV: str(Path(cfg.out_dir).absolute())})
    finally:
        os.unlink(path)


def ensure_recipe(recipe: str, profile: Profile, seed: int = 0, *, ablation: Ablation = (),
                  tracking_uri: str | None = None, nproc: int = 1) -> list[RunRecord]:
    """All runs of a pretraining recipe, each stage starting from the one before."""
    records: list[RunRecord] = []
    for cfg in recipe_configs(recipe, profile, seed, ablation):
        records.append(ensure_run(cfg, records[-1] if records else None, tracking_uri=tracking_uri, nproc=nproc))
    return records
