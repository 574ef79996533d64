"""Experiments: training runs as nodes of a graph (pretraining -> intermediate -> finetune -> eval).

A node is a :class:`TrainConfig` and, for a derived run, its parent. :func:`ensure_run` makes the node
exist exactly once: a FINISHED MLflow run with the same config hash (whose checkpoint is still on
disk) is reused; an interrupted one resumes from the checkpoints in its run directory; otherwise it
runs. A derived run starts from its parent's checkpoint and carries the parent's run id and config
hash; the parent's hash is part of the child's hash, so retraining a parent invalidates its children.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ablation import Ablation, ablation_label, apply_ablation
from .checkpointing import latest_checkpoint
from .config import TrainConfig, load_train_config, train_config_hash
from .gitinfo import PACKAGE_ROOT
from .profiles import Profile, unknown_name_error
from .tracking import find_finished_run, resolve_tracking_uri

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
    checkpoint: str
    status: str  # "reused" | "ran" | "resumed"
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def runs_root() -> Path:
    return Path(os.environ.get("BEIT3_RUNS_DIR", PACKAGE_ROOT / "runs"))


def world_manifest(root: str) -> dict[str, Any]:
    from .world import ensure_world

    return json.loads((ensure_world(root.split(":", 1)[1]) / "world.json").read_text())


def fill_from_world(cfg: TrainConfig) -> TrainConfig:
    """Sizes that follow from the benchmark world (its tokenizer's vocabulary) when not given."""
    root = cfg.data.get("root", "")
    if not (isinstance(root, str) and root.startswith("world:")) or "vocab_size" in cfg.model_overrides:
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
    switches of ``ablation`` (``harness.ablation``) set alike in every stage."""
    if recipe not in RECIPES:
        raise unknown_name_error("pretraining recipe", recipe, RECIPES)
    configs = []
    for relative in RECIPES[recipe]:
        stage = Path(relative).stem.split("_")[-1] if recipe == "vlmo" else "mdm"
        overrides = {**profile.pretrain, "seed": seed, "profile": profile.name,
                     "run_name": "-".join(filter(None, [recipe, stage, profile.name, f"seed{seed}",
                                                        ablation_label(ablation, "-")]))}
        cfg = apply_ablation(fill_from_world(load_train_config(CONFIG_ROOT / relative, overrides)), ablation)
        if configs:  # a stage descends from the one before; its hash is known before anything runs
            cfg = dataclasses.replace(cfg, parent_config_hash=train_config_hash(configs[-1]))
        configs.append(cfg)
    return configs


def pretraining_configs(profile: Profile, seeds: int, recipes: tuple[str, ...] = RECIPE_NAMES,
                        ablation: Ablation = ()) -> list[TrainConfig]:
    """Every pretraining run of every recipe in ``recipes`` (``none`` has none) and seed: what tables
    built on table3 plan first."""
    return [cfg for recipe in RECIPES if recipe in recipes for seed in range(seeds)
            for cfg in recipe_configs(recipe, profile, seed, ablation)]


def derive(cfg: TrainConfig, parent: RunRecord | None) -> TrainConfig:
    """``cfg`` started from ``parent``'s weights, carrying its run id and config hash."""
    if parent is None:
        return cfg
    if cfg.parent_config_hash and cfg.parent_config_hash != parent.config_hash:
        raise ValueError(
            f"{cfg.run_name} was planned to descend from config {cfg.parent_config_hash[:12]}, "
            f"but the parent run {parent.run_id} has config {parent.config_hash[:12]}"
        )
    return dataclasses.replace(cfg, init_from=parent.checkpoint, parent_run_id=parent.run_id,
                               parent_config_hash=parent.config_hash)


def _record(name: str, run: Any, status: str) -> RunRecord:
    tags = dict(run.data.tags)
    return RunRecord(name=name, run_id=run.info.run_id, config_hash=tags.get("config_hash", ""),
                     checkpoint=tags.get("checkpoint", ""), status=status, metrics=dict(run.data.metrics), tags=tags)


def find_reusable(cfg: TrainConfig, tracking_uri: str | None = None) -> RunRecord | None:
    run = find_finished_run(cfg.experiment, train_config_hash(cfg), tracking_uri=tracking_uri)
    if run is None or not Path(run.data.tags.get("checkpoint", "")).is_file():
        return None
    return _record(cfg.run_name, run, "reused")


def run_dir(cfg: TrainConfig) -> Path:
    return runs_root() / cfg.experiment / f"{cfg.run_name}-{train_config_hash(cfg)[:12]}"


def ensure_run(cfg: TrainConfig, parent: RunRecord | None = None, *, tracking_uri: str | None = None,
               nproc: int = 1) -> RunRecord:
    """Reuse, resume or run ``cfg`` (derived from ``parent`` if given); returns its record."""
    cfg = derive(cfg, parent)
    uri = resolve_tracking_uri(tracking_uri)
    reusable = find_reusable(cfg, uri)
    if reusable is not None:
        return reusable
    out_dir = run_dir(cfg)
    cfg = dataclasses.replace(cfg, out_dir=str(out_dir), resume=True)
    status = "resumed" if latest_checkpoint(out_dir) is not None else "ran"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri  # the trainer (and torchrun children) record there
    try:
        if nproc > 1:
            launch_torchrun(cfg, nproc)
        else:
            from .launch import run_training

            run_training(cfg)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    run = find_finished_run(cfg.experiment, train_config_hash(cfg), tracking_uri=uri)
    if run is None:
        raise RuntimeError(f"run {cfg.run_name} ended without a FINISHED MLflow run in {uri}")
    return _record(cfg.run_name, run, status)


def launch_torchrun(cfg: TrainConfig, nproc: int) -> None:
    """``torchrun --nproc_per_node N -m harness.train <config>`` with the resolved config written out."""
    handle, path = tempfile.mkstemp(suffix=".py", prefix=f"{cfg.run_name}-")
    with os.fdopen(handle, "w") as stream:
        for key, value in cfg.to_dict().items():
            stream.write(f"{key} = {value!r}\n")
    try:
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                        str(nproc), "-m", "harness.train", path], check=True)
    finally:
        os.unlink(path)


def ensure_recipe(recipe: str, profile: Profile, seed: int = 0, *, ablation: Ablation = (),
                  tracking_uri: str | None = None, nproc: int = 1) -> list[RunRecord]:
    """All runs of a pretraining recipe, each stage starting from the one before."""
    records: list[RunRecord] = []
    for cfg in recipe_configs(recipe, profile, seed, ablation):
        records.append(ensure_run(cfg, records[-1] if records else None, tracking_uri=tracking_uri, nproc=nproc))
    return records
