"""Dense prediction runs: an mmdet / mmseg config through mmengine's Runner, with our lineage in MLflow.

    result = run_dense("det/beit3_cascade-mask-rcnn_mini", work_dir="runs/dense/x",
                       run_name="table7/beit3/cascade", profile="smoke", seed=0,
                       checkpoint="runs/.../model.pt", model_name="beit3_tiny_patch16_224",
                       model_overrides=dict(embed_dim=32, depth=2, num_heads=2, patch_size=8),
                       data_root=world / "coco", parent_run_id=..., max_iters=4, batch_size=2)
    result.metrics["coco/bbox_mAP"], result.run_id, result.checkpoint

What this module adds to a config (``prepare_config``): the data root of a world, the BEiT-3 checkpoint
of the backbone (``init_cfg=Pretrained``), the backbone size of the checkpoint's model with the necks
and heads resized to it, a shorter schedule (every begin/end/milestone rescaled), the batch size, the
seed, CPU settings when there is no GPU, and a visualizer whose ``MLflowVisBackend`` writes to our
tracking store with the lineage tags of our trainer's runs (``config_hash``, git commit, profile,
seed, ``parent_run_id``/``parent_config_hash``, package versions, device).

Each Runner gets a unique experiment and visualizer name (mmengine keeps both as process-wide
singletons), and a run that raises is ended FAILED in MLflow, so several runs can share a process.

Pretraining checkpoints come from ``PretrainedSource``s (``register_pretrained_source``); the tables
run every registered source. Registered here: table3's two recipes, ``beit3`` (masked data modeling,
the reference beside the paper's numbers) and ``vlmo`` (staged), each reused from MLflow or run on
demand; and ``none`` (``random_init_source``, an untrained BEiT-3 of the profile's size), the
no-pretraining row every table compares the recipes with.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from harness import dense_items, tracking
from harness.ablation import Ablation
from harness.gitinfo import PACKAGE_ROOT
from harness.per_item import ARTIFACT_DIR as PER_ITEM_DIR, log_per_item
from harness.profiles import Profile
from tasks.atomic import atomic_path

CONFIG_DIR = PACKAGE_ROOT / "configs"
DENSE_EXPERIMENT = "beit3-dense"
# Config keys that say where a run is stored or how it is displayed, not what it computes.
NON_SEMANTIC_KEYS = ("work_dir", "visualizer", "experiment_name", "launcher", "resume")
TRACKED_CONFIG_KEYS = ("model", "optim_wrapper", "param_scheduler", "train_cfg", "randomness")
# mmseg's ViT recipes take the pyramid from these blocks; other depths use every depth/4-th block.
SEG_OUT_INDICES = {12: (3, 5, 7, 11), 24: (7, 11, 15, 23)}


class DenseConfigError(ValueError):
    """A dense config that cannot be adapted as asked (names the key and what to do)."""


# ----------------------------------------------------------------------------- checkpoints
@dataclass(frozen=True)
class Checkpoint:
    """A BEiT-3 checkpoint file and the run that produced it."""

    path: Path
    parent_run_id: str | None = None
    parent_config_hash: str | None = None


@dataclass(frozen=True)
class PretrainedSource:
    """Where a table's backbone weights come from.

    Args:
        name: short key used in run and row names, e.g. ``mdm``.
        label: what the report prints, e.g. ``"BEiT-3 recipe (masked data modeling)"``.
        model_name: the ``backbones`` model the checkpoint belongs to (sets the backbone size).
        model_overrides: that model's overrides (``embed_dim``, ``depth``, ``patch_size``, ...).
        layout: ``released`` or ``paper``: which checkpoint keys the backbone expects; None: the
            model's own layout.
        identity: everything that determines the weights (hashed into the experiments' configs).
        resolve: returns the checkpoint, producing it first if needed (e.g. by running pretraining).
        reference: the source that stands for BEiT-3's own recipe: its rows sit beside the paper's.
    """

    name: str
    label: str
    model_name: str
    model_overrides: Mapping[str, Any]
    layout: str | None
    identity: Mapping[str, Any]
    resolve: Callable[[], Checkpoint] = field(compare=False, repr=False)
    reference: bool = False


SourceFactory = Callable[[Profile, Ablation], PretrainedSource]
_SOURCES: dict[str, SourceFactory] = {}


def register_pretrained_source(name: str, factory: SourceFactory) -> SourceFactory:
    """Register ``factory(profile, ablation) -> PretrainedSource`` under ``name`` (tables run all of them)."""
    if name in _SOURCES:
        raise KeyError(f"pretrained source {name!r} is already registered")
    _SOURCES[name] = factory
    return factory


def pretrained_sources(profile: Profile, names: Sequence[str] | None = None,
                       ablation: Ablation = ()) -> list[PretrainedSource]:
    """The registered sources (all, or those called ``names``) for ``profile`` and the pretraining
    ``ablation`` (``harness.ablation``), the reference source first."""
    unknown = [n for n in names or () if n not in _SOURCES]
    if unknown:
        raise KeyError(f"no pretrained source {unknown[0]!r}; registered: {', '.join(_SOURCES)}")
    sources = [factory(profile, ablation) for name, factory in _SOURCES.items() if names is None or name in names]
    return sorted(sources, key=lambda s: not s.reference)


def profile_model_name(profile: Profile) -> str:
    """The ``backbones`` model of a profile's size: ``beit3_<size>_patch16_224``."""
    return f"beit3_{profile.model_size}_patch16_224"


def runs_dir() -> Path:
    """``$BEIT3_RUNS_DIR/dense`` (default ``runs/dense``), beside the pretraining runs."""
    return Path(os.environ.get("BEIT3_RUNS_DIR", PACKAGE_ROOT / "runs")) / "dense"


def random_init_checkpoint(model_name: str, seed: int = 0, root: Path | str | None = None) -> Path:
    """An untrained BEiT-3 (our finetuning init, seeded) saved as ``{'model': state_dict}`` under
    ``root`` (default ``runs_dir()/checkpoints``); written once."""
    import torch

    import backbones

    path = Path(root if root is not None else runs_dir() / "checkpoints") / f"random-init_{model_name}_seed{seed}.pt"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        state = backbones.create_model(model_name).state_dict()
    finally:
        torch.random.set_rng_state(generator_state)
    with atomic_path(path) as tmp:
        torch.save({"model": state}, tmp)
    return path


def random_init_source(profile: Profile, ablation: Ablation = ()) -> PretrainedSource:
    """A control without pretraining: the profile's BEiT-3 size with random weights (the ``none`` recipe).

    ``ablation`` is accepted and ignored: it changes pretraining, and the random init's vision branch is
    the same ViT in either layout.
    """
    model_name = profile_model_name(profile)
    return PretrainedSource(
        name="none",
        label=f"no pretraining (random init, {model_name})",
        model_name=model_name,
        model_overrides={},
        layout="released",
        identity={"kind": "random-init", "model": model_name, "init": "official", "seed": 0},
        resolve=lambda: Checkpoint(random_init_checkpoint(model_name)),
    )


PRETRAIN_SEED = 0  # the pretraining run of table3 every dense seed starts from
RECIPE_LABELS = {
    "beit3": "BEiT-3 recipe (masked data modeling, table3)",
    "vlmo": "VLMo staged recipe (image -> text -> image-text, table3)",
}


def recipe_source(recipe: str) -> SourceFactory:
    """The last checkpoint of a table3 pretraining recipe (``harness.experiments``), seed 0.

    ``resolve`` reuses a finished run with the same config hash, or runs the recipe.
    """

    def factory(profile: Profile, ablation: Ablation = ()) -> PretrainedSource:
        from harness.config import train_config_hash
        from harness.experiments import ensure_recipe, recipe_configs

        configs = recipe_configs(recipe, profile, PRETRAIN_SEED, ablation)
        last = configs[-1]
        overrides = dict(last.model_overrides)

        def resolve() -> Checkpoint:
            record = ensure_recipe(recipe, profile, PRETRAIN_SEED, ablation=ablation)[-1]
            if not record.checkpoint or not Path(record.checkpoint).is_file():
                raise FileNotFoundError(
                    f"pretraining run {record.run_id} ({record.name}) has no checkpoint on disk: "
                    f"{record.checkpoint!r}"
                )
            return Checkpoint(Path(record.checkpoint), record.run_id, record.config_hash)

        return PretrainedSource(
            name=recipe,
            label=RECIPE_LABELS[recipe],
            model_name=last.model,
            model_overrides=overrides,
            layout=overrides.get("layout"),
            identity={"recipe": recipe, "seed": PRETRAIN_SEED, "stages": [train_config_hash(c) for c in configs]},
            resolve=resolve,
            reference=recipe == "beit3",
        )

    return factory


register_pretrained_source("beit3", recipe_source("beit3"))
register_pretrained_source("vlmo", recipe_source("vlmo"))
register_pretrained_source("none", random_init_source)


# ----------------------------------------------------------------------------- config edits
def config_path(name: str | os.PathLike) -> Path:
    """A config file: a path, or a name under ``configs/`` (``det/beit3_mask-rcnn_mini``)."""
    path = Path(name)
    candidates = [path, CONFIG_DIR / path, CONFIG_DIR / path.with_suffix(".py")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    known = sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.glob("*/*.py"))
    raise FileNotFoundError(f"config {name!r} not found; known configs: {', '.join(known)}")


def backbone_arch(model_name: str, model_overrides: Mapping[str, Any] | None = None,
                  layout: str | None = None) -> dict[str, Any]:
    """``BEiT3ViT`` size arguments of a ``backbones`` model with its overrides (built on the meta
    device; task-level overrides such as ``num_visual_tokens`` are ignored)."""
    import dataclasses

    import torch

    import backbones
    from backbones.beit3 import BEiT3Config

    fields = {f.name for f in dataclasses.fields(BEiT3Config)} | {"mlp_ratio"}
    overrides = {k: v for k, v in (model_overrides or {}).items() if k in fields}
    if layout is not None:
        overrides["layout"] = layout
    overrides.pop("vl_ffn_layers", None)  # the vision branch has no VL-FFN
    with torch.device("meta"):
        config = backbones.create_model(model_name, **overrides).config
    return dict(embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads,
                ffn_dim=config.ffn_dim, patch_size=config.patch_size, layout=config.layout)


def seg_out_indices(depth: int) -> tuple[int, ...]:
    """Blocks feeding a four-level pyramid: mmseg's choice for 12 and 24 blocks, else every depth/4-th."""
    if depth in SEG_OUT_INDICES:
        return SEG_OUT_INDICES[depth]
    step = max(depth // 4, 1)
    return tuple(min(step * k, depth) - 1 for k in range(1, 5))


def global_blocks(depth: int) -> tuple[int, ...]:
    """ViTDet's global-attention blocks: every depth/4-th (2, 5, 8, 11 of 12; 5, 11, 17, 23 of 24)."""
    step = max(depth // 4, 2)
    return tuple(i for i in range(depth) if (i + 1) % step == 0)


def set_backbone_arch(cfg: Any, arch: Mapping[str, Any]) -> None:
    """Give the config's BEiT3ViT the size ``arch`` and resize the necks/heads that read its width."""
    model = cfg.model.get("module", cfg.model)  # a TTA wrapper holds the model under `module`
    backbone = model.backbone
    if backbone.get("type") != "BEiT3ViT":
        raise DenseConfigError(f"the config's backbone is {backbone.get('type')!r}, not BEiT3ViT")
    old_dim, depth, width = backbone.get("embed_dim", 768), arch["depth"], arch["embed_dim"]
    neck = model.get("neck") or {}
    simple_fpn = neck.get("type") == "SimpleFPN"
    for key in ("embed_dim", "depth", "num_heads", "ffn_dim", "layout"):
        backbone[key] = arch[key]
    if not simple_fpn:  # the simple pyramid assumes stride 16; a checkpoint's other patch is resampled
        backbone["patch_size"] = arch["patch_size"]
    if simple_fpn:
        backbone["out_indices"] = (depth - 1,)
        if backbone.get("window_size"):
            backbone["window_block_indexes"] = tuple(i for i in range(depth) if i not in global_blocks(depth))
        neck["backbone_channel"] = width
        neck["in_channels"] = [width // 4, width // 2, width, width]
    else:
        backbone["out_indices"] = seg_out_indices(depth)
        if "embed_dim" in neck:
            neck["embed_dim"] = width
        # Test images smaller than the crop are only padded to size_divisor: keep it a patch multiple.
        test_cfg = (model.get("data_preprocessor") or {}).get("test_cfg") or {}
        if test_cfg.get("size_divisor") and test_cfg["size_divisor"] % arch["patch_size"]:
            test_cfg["size_divisor"] = arch["patch_size"]
    for head_key in ("decode_head", "auxiliary_head"):
        head = model.get(head_key)
        for one in head if isinstance(head, list) else [head] if head else []:
            channels = one.get("in_channels")
            if isinstance(channels, (list, tuple)) and all(c == old_dim for c in channels):
                one["in_channels"] = [width] * len(channels)
            elif channels == old_dim:
                one["in_channels"] = width


def set_data_root(cfg: Any, data_root: str | os.PathLike) -> None:
    """Point every dataloader (and the COCO evaluators' ``ann_file``) at ``data_root``."""
    root = str(Path(data_root).resolve()) + os.sep
    if not Path(root).is_dir():
        raise FileNotFoundError(f"data root {root} does not exist (build the world: harness data world)")
    for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
        dataset = (cfg.get(name) or {}).get("dataset")
        while dataset is not None:
            if "data_root" in dataset:
                dataset["data_root"] = root
            dataset = dataset.get("dataset")  # wrappers (RepeatDataset, ...) hold the real one
    for loader, evaluator in (("val_dataloader", "val_evaluator"), ("test_dataloader", "test_evaluator")):
        ann_file = ((cfg.get(loader) or {}).get("dataset") or {}).get("ann_file")
        for one in _as_list(cfg.get(evaluator)):
            if "ann_file" in one and ann_file:
                one["ann_file"] = os.path.join(root, ann_file)


def _as_list(node: Any) -> list:
    if node is None:
        return []
    return list(node) if isinstance(node, (list, tuple)) else [node]


def set_max_iters(cfg: Any, max_iters: int) -> None:
    """Shorten/lengthen an iteration-based schedule: every scheduler's begin/end/milestones scale with
    it; a scheduler left with fewer than 2 iterations is dropped (constant lr there)."""
    train_cfg = cfg.get("train_cfg") or {}
    if train_cfg.get("type") != "IterBasedTrainLoop":
        raise DenseConfigError(
            f"max_iters needs an IterBasedTrainLoop; the config trains with {train_cfg.get('type')!r} "
            "(set train_cfg in the config, or run without max_iters)"
        )
    if max_iters < 1:
        raise DenseConfigError(f"max_iters must be >= 1, got {max_iters}")
    old = int(train_cfg["max_iters"])
    scale = max_iters / old

    def rescale(step: int) -> int:
        return min(max_iters, round(step * scale))

    schedulers = []
    for scheduler in _as_list(cfg.get("param_scheduler")):
        if scheduler.get("by_epoch", True):
            raise DenseConfigError(
                f"scheduler {scheduler.get('type')} is epoch-based; max_iters needs by_epoch=False"
            )
        begin = rescale(scheduler.get("begin", 0))
        end = rescale(scheduler.get("end", old))
        if end - begin < 2:
            # mmengine steps a scheduler only inside [begin, end): a 1-step LinearLR warmup would leave
            # the lr at start_factor for the whole run. Too short to schedule anything: dropped.
            continue
        scheduler["begin"], scheduler["end"] = begin, end
        if "milestones" in scheduler:
            scheduler["milestones"] = sorted({max(1, rescale(m)) for m in scheduler["milestones"]})
        schedulers.append(scheduler)
    if "param_scheduler" in cfg:
        cfg.param_scheduler = schedulers
    train_cfg["max_iters"] = max_iters
    train_cfg["val_interval"] = max_iters
    hooks = cfg.get("default_hooks") or {}
    if "checkpoint" in hooks:
        hooks["checkpoint"]["interval"] = max_iters
    if "logger" in hooks:
        hooks["logger"]["interval"] = min(hooks["logger"].get("interval", 50), max_iters)


def prepare_config(
    config: str | os.PathLike,
    *,
    work_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    model_name: str | None = None,
    model_overrides: Mapping[str, Any] | None = None,
    layout: str | None = None,
    data_root: str | os.PathLike | None = None,
    max_iters: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    cfg_options: Mapping[str, Any] | None = None,
) -> Any:
    """Load an mmengine config and adapt it (see the module docstring); returns the ``Config``.

    Args:
        config: a config file or a name under ``configs/``.
        work_dir: the Runner's work directory.
        checkpoint: a BEiT-3 checkpoint for the backbone; None keeps the config's ``init_cfg``.
        model_name: the ``backbones`` model of the checkpoint: the backbone, necks and heads take its size.
        model_overrides: that model's overrides (``embed_dim``, ``depth``, ``patch_size``, ...).
        layout: the checkpoint's layout when it differs from the model's default.
        data_root: the data set's root (e.g. ``<world>/coco``); None keeps the config's.
        max_iters: another number of training iterations (schedules rescaled).
        batch_size: another training batch size.
        seed: ``randomness.seed``.
        cfg_options: final ``key.path=value`` overrides (``Config.merge_from_dict``).
    """
    import torch
    from mmengine.config import Config

    from backbones.mm import compat

    compat.require_pkg_resources()
    cfg = Config.fromfile(str(config_path(config)))
    if model_name is not None:
        set_backbone_arch(cfg, backbone_arch(model_name, model_overrides, layout))
    elif layout is not None:
        cfg.model.backbone["layout"] = layout
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"backbone checkpoint {path} does not exist")
        cfg.model.backbone["init_cfg"] = dict(type="Pretrained", checkpoint=str(path.resolve()))
    if data_root is not None:
        set_data_root(cfg, data_root)
    if max_iters is not None:
        set_max_iters(cfg, int(max_iters))
    if batch_size is not None:
        cfg.train_dataloader["batch_size"] = int(batch_size)
    cfg.randomness = dict(seed=int(seed), deterministic=False)
    cfg.work_dir = str(Path(work_dir).resolve())
    if not torch.cuda.is_available():
        compat.cpu_overrides(cfg)
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    return cfg


def _jsonable(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {str(k): _jsonable(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_jsonable(v) for v in node]
    if isinstance(node, (str, int, float, bool)) or node is None:
        return node
    return repr(node)


def dense_config_hash(cfg: Any, parent_config_hash: str | None = None) -> str:
    """sha256 of what determines a run: the config without storage/display keys; with a parent hash,
    the backbone checkpoint's path is replaced by that hash (which already pins the weights)."""
    semantic = {k: v for k, v in _jsonable(cfg.to_dict()).items() if k not in NON_SEMANTIC_KEYS}
    if parent_config_hash:
        model = semantic.get("model", {})
        backbone = model.get("module", model).get("backbone", {})
        if isinstance(backbone.get("init_cfg"), dict):
            backbone["init_cfg"] = {**backbone["init_cfg"], "checkpoint": f"parent:{parent_config_hash}"}
        if semantic.get("load_from"):
            semantic["load_from"] = f"parent:{parent_config_hash}"
        semantic["parent_config_hash"] = parent_config_hash
    return tracking.config_hash(semantic)


# ----------------------------------------------------------------------------- running
@dataclass(frozen=True)
class DenseResult:
    """What one Runner produced.

    Args:
        metrics: the evaluator's numbers of the last validation (train) or of the test.
        run_id: the MLflow run.
        config_hash: ``dense_config_hash`` of the run's config (also its ``config_hash`` tag).
        work_dir: the Runner's work directory.
        checkpoint: the last checkpoint the Runner saved (train mode), else None.
        wall_s: seconds from building the Runner to its end.
    """

    metrics: dict[str, float]
    run_id: str
    config_hash: str
    work_dir: Path
    checkpoint: Path | None
    wall_s: float


def _parent_hash(uri: str, parent_run_id: str | None, parent_config_hash: str | None) -> str | None:
    if parent_run_id is None:
        return parent_config_hash
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        parent = MlflowClient(tracking_uri=uri).get_run(parent_run_id)
    except MlflowException as err:
        raise KeyError(f"parent run {parent_run_id!r} is not in the store {uri!r}") from err
    stored = parent.data.tags.get("config_hash")
    if parent_config_hash is not None and stored is not None and stored != parent_config_hash:
        raise ValueError(
            f"parent_config_hash {parent_config_hash[:12]}… does not match run {parent_run_id}'s "
            f"config_hash {stored[:12]}…: the checkpoint belongs to another run"
        )
    return parent_config_hash or stored or "unknown"


def _artifact_location(uri: str, experiment: str) -> str | None:
    root = tracking.artifact_root(uri)
    if root is None:
        return None
    return (root / re.sub(r"[^A-Za-z0-9._-]", "_", experiment)).resolve().as_uri()


def _visualizer(cfg: Any, unique: str, uri: str, experiment: str, run_name: str, tags: Mapping[str, str]) -> dict:
    vis_type = (cfg.get("visualizer") or {}).get("type", "Visualizer")
    return dict(
        type=vis_type,
        name=f"visualizer-{unique}",
        vis_backends=[
            dict(type="LocalVisBackend"),
            dict(type="MLflowVisBackend", tracking_uri=uri, exp_name=experiment, run_name=run_name,
                 tags=dict(tags), tracked_config_keys=[k for k in TRACKED_CONFIG_KEYS if k in cfg],
                 artifact_location=_artifact_location(uri, experiment)),
        ],
    )


def _metrics_hook(store: dict):
    from mmengine.hooks import Hook

    class RecordMetrics(Hook):
        """Keeps the evaluator's numbers and the MLflow run id; logs test metrics to the run."""

        priority = "VERY_HIGH"  # before LoggerHook.after_run closes the MLflow run

        def before_run(self, runner) -> None:
            import mlflow

            active = mlflow.active_run()
            store["run_id"] = active.info.run_id if active is not None else ""

        def after_val_epoch(self, runner, metrics=None) -> None:
            store["metrics"] = _numbers(metrics)

        def after_test_epoch(self, runner, metrics=None) -> None:
            store["metrics"] = _numbers(metrics)
            runner.visualizer.add_scalars({f"test/{k}": v for k, v in store["metrics"].items()}, step=runner.iter)

    return RecordMetrics()


def _numbers(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    out = {}
    for key, value in (metrics or {}).items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[key] = number
    return out


def _last_checkpoint(work_dir: Path) -> Path | None:
    pointer = work_dir / "last_checkpoint"
    if pointer.is_file():
        path = Path(pointer.read_text(encoding="utf-8").strip())
        return path if path.is_file() else None
    return None


def run_dense(
    config: str | os.PathLike,
    *,
    work_dir: str | os.PathLike,
    run_name: str,
    profile: str,
    seed: int = 0,
    mode: str = "train",
    checkpoint: str | os.PathLike | None = None,
    model_name: str | None = None,
    model_overrides: Mapping[str, Any] | None = None,
    layout: str | None = None,
    data_root: str | os.PathLike | None = None,
    max_iters: int | None = None,
    batch_size: int | None = None,
    load_from: str | os.PathLike | None = None,
    tta: bool = False,
    parent_run_id: str | None = None,
    parent_config_hash: str | None = None,
    experiment: str = DENSE_EXPERIMENT,
    tracking_uri: str | None = None,
    tags: Mapping[str, Any] | None = None,
    cfg_options: Mapping[str, Any] | None = None,
    reuse: bool = True,
) -> DenseResult:
    """Train (and validate) or test one mmdet/mmseg config with mmengine's Runner, tracked in MLflow.

    Args:
        config: config file or name under ``configs/``.
        work_dir: the Runner's work directory.
        run_name: the MLflow run name.
        profile: the harness profile (a lineage tag).
        seed: the run's seed.
        mode: ``train`` (train, then validate at the end) or ``test`` (evaluate ``load_from``).
        checkpoint: BEiT-3 checkpoint for the backbone (train mode).
        model_name, model_overrides, layout, data_root, max_iters, batch_size, cfg_options: see
            ``prepare_config``.
        load_from: a checkpoint of the whole detector/segmentor (test mode).
        tta: test with the config's ``tta_model`` and ``tta_pipeline`` (multi-scale + flip).
        parent_run_id: the run that produced the checkpoint (pretraining, or the training run of a test).
        parent_config_hash: that run's config hash; read from the parent run when omitted.
        experiment: the MLflow experiment.
        tracking_uri: the store; ``tracking.resolve_tracking_uri`` picks one when None.
        tags: extra MLflow tags (may not override the lineage tags).
        reuse: return the FINISHED run of ``experiment`` with the same config hash (the resolved
            config and the parent's hash), if its metrics and (train mode) checkpoint are still there.

    Raises:
        TrackingUnavailableError: the store cannot be used.
        KeyError: ``parent_run_id`` is not in the store.
        ValueError: ``parent_config_hash`` contradicts the parent run; a bad mode or config.
    """
    import mlflow
    from mmengine.runner import Runner

    from backbones.mm import compat

    if mode not in ("train", "test"):
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
    if mode == "test" and load_from is None:
        raise ValueError("mode='test' needs load_from (a checkpoint of the whole model)")
    if tta and mode != "test":
        raise ValueError("tta=True is a test-mode option")
    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.check_tracking_uri(uri)
    parent_hash = _parent_hash(uri, parent_run_id, parent_config_hash)
    compat.apply()

    cfg = prepare_config(config, work_dir=work_dir, checkpoint=checkpoint, model_name=model_name,
                         model_overrides=model_overrides, layout=layout, data_root=data_root, max_iters=max_iters,
                         batch_size=batch_size, seed=seed, cfg_options=cfg_options)
    if mode == "test":
        load_path = Path(load_from)
        if not load_path.is_file():
            raise FileNotFoundError(f"load_from checkpoint {load_path} does not exist")
        cfg.load_from = str(load_path.resolve())
        if tta:
            if "tta_model" not in cfg or "tta_pipeline" not in cfg:
                raise DenseConfigError(f"{config}: tta=True needs tta_model and tta_pipeline in the config")
            cfg.test_dataloader.dataset.pipeline = copy.deepcopy(cfg.tta_pipeline)
            cfg.tta_model.module = cfg.model
            cfg.model = cfg.tta_model
    digest = dense_config_hash(cfg, parent_hash)
    if reuse:
        previous = _reusable(uri, experiment, digest, mode)
        if previous is not None:
            return previous

    config_file = config_path(config)
    if config_file.is_relative_to(PACKAGE_ROOT):
        config_file = config_file.relative_to(PACKAGE_ROOT)
    run_tags = {k: str(v) for k, v in (tags or {}).items()}
    run_tags.update({"profile": profile, "seed": str(seed), "task": "dense", "mode": mode,
                     "tta": str(tta).lower(), "config_file": str(config_file)})
    if checkpoint is not None:
        run_tags["checkpoint"] = str(Path(checkpoint).resolve())
    run_tags.update(tracking.environment_tags())
    run_tags["config_hash"] = digest
    if parent_run_id is not None:
        run_tags.update({"parent_run_id": parent_run_id, "mlflow.parentRunId": parent_run_id})
    if parent_hash is not None:
        run_tags["parent_config_hash"] = parent_hash

    log_per_image = _per_image_evaluation(cfg, mode)
    unique = uuid.uuid4().hex[:12]
    cfg.experiment_name = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', run_name)}-{unique}"
    cfg.visualizer = _visualizer(cfg, unique, uri, experiment, run_name, run_tags)

    store: dict[str, Any] = {"metrics": {}, "run_id": ""}
    start = time.perf_counter()
    try:
        runner = Runner.from_cfg(cfg)
        runner.register_hook(_metrics_hook(store))
        if mode == "train":
            runner.train()
        else:
            runner.test()
    except BaseException as err:
        if mlflow.active_run() is not None:  # the Runner raised before LoggerHook closed its run
            mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:1000])
            interrupted = isinstance(err, (KeyboardInterrupt, SystemExit))
            mlflow.end_run(status="KILLED" if interrupted else "FAILED")
        raise
    wall = time.perf_counter() - start
    if not store["run_id"]:
        raise RuntimeError("the Runner finished without an MLflow run (is MLflowVisBackend in the visualizer?)")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.log_metric(store["run_id"], "wall_s", wall)
    work = Path(cfg.work_dir)
    trained = _last_checkpoint(work) if mode == "train" else None
    if trained is not None:
        client.set_tag(store["run_id"], "model_checkpoint", str(trained.resolve()))
    log_per_image(store["run_id"], uri)
    # Written last: a run with metrics.json is complete, and only such a run is reused.
    client.log_text(store["run_id"], json.dumps(store["metrics"], indent=2, sort_keys=True) + "\n", "metrics.json")
    return DenseResult(metrics=dict(store["metrics"]), run_id=store["run_id"], config_hash=digest, work_dir=work,
                       checkpoint=trained, wall_s=wall)


def _per_image_evaluation(cfg: Any, mode: str) -> Callable[[str, str], None]:
    """Make the config's evaluator keep its per-image results (``harness.dense_items``; after the config
    hash: where they go is not part of the run's identity); returns ``log(run_id, tracking_uri)``, which
    logs them to the run under ``per_item/<split>`` once it has evaluated.

    mmseg's ``IoUMetric`` becomes ``PerImageIoUMetric`` (each image's counts, ``<split>.csv.gz``); mmdet's
    ``CocoMetric`` writes its detections (``<split>.bbox.json``, ``<split>.segm.json``), logged beside
    the ground truth it scored them against (``<split>.gt.json``).
    """
    split = "val" if mode == "train" else "test"
    key = f"{split}_evaluator"
    evaluator = cfg.get(key)
    kept = Path(cfg.work_dir) / "per_item"
    if isinstance(evaluator, Mapping) and evaluator.get("type") == "IoUMetric":
        target = kept / f"{split}.csv.gz"
        cfg[key] = {**evaluator, "type": dense_items.register(), "per_item_file": str(target)}

        def log_counts(run_id: str, uri: str) -> None:
            if target.is_file():
                items = pd.read_csv(target, dtype={"item_id": str, "cluster_id": str, "prediction": str},
                                    keep_default_na=False)
                log_per_item(run_id, split, items, tracking_uri=uri)

        return log_counts
    if isinstance(evaluator, Mapping) and evaluator.get("type") == "CocoMetric" and evaluator.get("ann_file"):
        kept.mkdir(parents=True, exist_ok=True)
        cfg[key] = {**evaluator, "outfile_prefix": str(kept / split)}
        ground_truth = Path(evaluator["ann_file"])

        def log_detections(run_id: str, uri: str) -> None:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(uri)
            with tempfile.TemporaryDirectory() as tmp:
                copy_of_truth = Path(tmp) / f"{split}.gt.json"
                copy_of_truth.write_bytes(ground_truth.read_bytes())
                client.log_artifact(run_id, str(copy_of_truth), PER_ITEM_DIR)
            for kind in ("bbox", "segm"):
                results = kept / f"{split}.{kind}.json"
                if results.is_file():
                    client.log_artifact(run_id, str(results), PER_ITEM_DIR)

        return log_detections
    return lambda run_id, uri: None


def load_detection_metric(run_id: str, split: str, iou_type: str, *,
                          tracking_uri: str | None = None) -> dense_items.PerImageMetric:
    """COCO AP (``iou_type`` ``bbox`` or ``segm``) of a detection run's kept detections, per image
    (``harness.dense_items.detection_statistic``).

    Raises:
        FileNotFoundError: the run kept no ground truth for ``split`` (evaluated before per-image results).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.resolve_tracking_uri(tracking_uri))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            ground_truth = client.download_artifacts(run_id, f"{PER_ITEM_DIR}/{split}.gt.json", tmp)
        except Exception as err:  # MLflow raises its own exception types or OSError per store
            raise FileNotFoundError(f"run {run_id} kept no per-image detections for {split!r} ({err}); "
                                    "run it again to record them") from err
        try:
            results = client.download_artifacts(run_id, f"{PER_ITEM_DIR}/{split}.{iou_type}.json", tmp)
        except Exception:  # mmdet writes no results file when nothing was detected: AP 0
            results = None
        return dense_items.detection_statistic(ground_truth, results, iou_type)


def load_segmentation_metric(run_id: str, split: str, *,
                             tracking_uri: str | None = None) -> dense_items.PerImageMetric:
    """mIoU of a segmentation run's per-image counts (``harness.dense_items.segmentation_statistic``).

    Raises:
        FileNotFoundError: the run has no per-image counts for ``split``.
    """
    from harness.per_item import load_per_item

    return dense_items.segmentation_statistic(load_per_item(run_id, split, tracking_uri=tracking_uri))


def _reusable(uri: str, experiment: str, digest: str, mode: str) -> DenseResult | None:
    """The finished run with config hash ``digest`` as a ``DenseResult``, if it is complete on disk."""
    import mlflow

    run = tracking.find_finished_run(experiment, digest, tracking_uri=uri)
    if run is None:
        return None
    checkpoint = Path(run.data.tags.get("model_checkpoint", ""))
    if mode == "train" and not checkpoint.is_file():
        return None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="metrics.json",
                                                       dst_path=tmp, tracking_uri=uri)
            metrics = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, mlflow.exceptions.MlflowException):  # no metrics.json: the run ended before its results
        return None
    return DenseResult(metrics=metrics, run_id=run.info.run_id, config_hash=digest,
                       work_dir=checkpoint.parent if mode == "train" else Path(),
                       checkpoint=checkpoint if mode == "train" else None,
                       wall_s=float(run.data.metrics.get("wall_s", 0.0)))


# ----------------------------------------------------------------------------- for the tables
def config_variant(profile: Profile) -> str:
    """``mini`` (CPU-sized, the benchmark world) for synthetic profiles, else ``paper``."""
    return "mini" if profile.synthetic else "paper"


def table_schedule(profile: Profile, table: str) -> tuple[int | None, int | None]:
    """``(max_iters, batch_size)`` of a dense table's runs: the profile's entry for the table
    (``Profile.dense``), else its ``max_steps``/``batch_size``; None keeps the config's."""
    own = profile.dense.get(table, {})
    return own.get("max_steps", profile.max_steps), own.get("batch_size", profile.batch_size)


def table_heads(profile: Profile, table: str, heads: Mapping[str, Any]) -> dict[str, Any]:
    """The heads (of ``heads``, in its order) a dense table runs under ``profile``: those its
    ``Profile.dense`` entry names, else all."""
    chosen = profile.dense.get(table, {}).get("heads")
    if chosen is None:
        return dict(heads)
    unknown = [h for h in chosen if h not in heads]
    if unknown:
        raise KeyError(f"profile {profile.name}: {table} has no head {unknown[0]!r}; heads: {', '.join(heads)}")
    return {key: value for key, value in heads.items() if key in chosen}


def world_data_root(profile: Profile, dataset: str) -> Path | None:
    """``<world>/<dataset>`` of a synthetic profile (built if missing); None: the config's own root."""
    if not profile.synthetic:
        return None
    from harness.world import ensure_world

    return ensure_world(profile.world) / dataset


def work_dir_for(table: str, profile: Profile, name: str, config_hash: str) -> Path:
    """``runs/dense/<table>/<profile>/<name>-<hash12>``: one directory per experiment config."""
    return runs_dir() / table / profile.name / f"{name}-{config_hash[:12]}"


def reference_source(sources: Sequence[PretrainedSource]) -> PretrainedSource:
    """The source whose rows sit beside the paper's: the one marked ``reference``, else the first."""
    if not sources:
        raise ValueError("no pretrained sources: register one with register_pretrained_source")
    return next((s for s in sources if s.reference), sources[0])


def row_component(source: PretrainedSource, reference: PretrainedSource, metric: str) -> str:
    """Row key of a metric: plain for the reference source (matched with the paper), else prefixed."""
    return metric if source.name == reference.name else f"{source.name}.{metric}"
