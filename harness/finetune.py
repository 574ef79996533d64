"""Finetuning experiments: a task's official recipe, scaled by profile, started from the final weights
of a pretraining recipe (``beit3``, ``vlmo``) or from scratch (``none``), evaluated with the task's
official metric. The evaluation is logged into the finetune's own MLflow run (``eval.<split>.<metric>``),
which is tagged with the pretraining run it descends from; a finished, evaluated run is reused.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

import tasks

from .ablation import Ablation, ablation_label
from .config import TrainConfig, build_train_config, train_config_hash
from .experiments import RECIPE_NAMES, RunRecord, check_recipe, ensure_recipe, ensure_run, recipe_configs
from .profiles import Profile, deep_merge
from .stats import IMAGE_CONTROL, TEXT_CONTROL
from .tracking import resolve_tracking_uri

FINETUNE_EXPERIMENT = "beit3-finetune"
ITC_VARIANT = {"source": "pretraining_pairs"}
# Pretraining-only or schedule settings of the pretraining model that the task model does not take over.
NOT_ARCHITECTURE = ("num_visual_tokens", "init", "drop_path_rate")


def official_recipe(task: str, variant: dict[str, Any] | None = None, size: str = "base") -> dict[str, Any]:
    """The official recipe of ``task`` for a ``size`` model and data ``variant`` (the task's spec:
    ``base``/``large`` the released guides, ``giant`` the paper's tables; ``tiny`` takes base's)."""
    return tasks.get_task(task).recipe(size, variant)


def official_schedule(official: dict[str, Any], scale: dict[str, Any]) -> dict[str, Any]:
    """The official length and total batch, where the profile does not scale them: epochs (steps for
    captioning at giant size) and the global batch, turned into steps per rank at launch."""
    schedule: dict[str, Any] = {}
    if "max_steps" not in scale:
        if "steps" in official:
            schedule.update(max_steps=int(official["steps"]), warmup_steps=int(official.get("warmup_steps", 0)))
        else:
            schedule.update(epochs=float(official["epochs"]), warmup_epochs=float(official.get("warmup_epochs", 0)))
    if "batch_size" not in scale.get("data", {}):
        schedule["global_batch_size"] = int(official["batch_size"])
    return schedule


@dataclass(frozen=True)
class FinetuneResult:
    task: str
    recipe: str
    run: RunRecord
    metrics: dict[str, float]  # eval.<split>.<metric>
    parents: tuple[RunRecord, ...] = ()


def _architecture(recipe: str, profile: Profile, seed: int = 0,
                  ablation: Ablation = ()) -> tuple[str, dict[str, Any], str]:
    """Backbone name, architecture overrides and planned parent hash of the pretraining ``recipe``
    of ``seed`` (``none``: BEiT-3's architecture, ablated alike, without its weights)."""
    source = recipe_configs("beit3" if recipe == "none" else recipe, profile, seed, ablation)[-1]
    architecture = {k: v for k, v in source.model_overrides.items() if k not in NOT_ARCHITECTURE}
    parent_hash = "" if recipe == "none" else train_config_hash(source)
    return source.model, architecture, parent_hash


def pretrained_keys(recipe: str, profile: Profile, seed: int = 0, ablation: Ablation = ()) -> set[str]:
    """The state-dict keys of ``recipe``'s final pretraining model (built on the meta device): which
    pretrained heads a finetune can start from."""
    source = recipe_configs(recipe, profile, seed, ablation)[-1]
    with torch.device("meta"):
        return set(tasks.build_model(source.task, source.model, **source.model_overrides).state_dict())


def finetune_config(task: str, recipe: str, profile: Profile, seed: int = 0,
                    variant: dict[str, Any] | None = None, model_variant: dict[str, Any] | None = None,
                    after: TrainConfig | None = None, ablation: Ablation = ()) -> TrainConfig:
    """The finetune of ``task`` after pretraining ``recipe`` under ``profile`` (official values, scaled).

    ``variant`` holds data settings and ``model_variant`` model settings that make another experiment
    of the same task, e.g. ``{"dataset": "flickr30k"}`` for retrieval or ``{"classifier": "retrieval"}``
    for ImageNet; their values name the run. ``after`` is a finetune of the same task this one
    continues from (retrieval after the intermediate ITC stage): its weights load whole. ``ablation``
    (``harness.ablation``) is the one of the pretraining it descends from.
    """
    check_recipe(recipe)
    scale = deep_merge(profile.finetune.get("common", {}), profile.finetune.get(task, {}))
    model, architecture, parent_hash = _architecture(recipe, profile, seed, ablation)
    official = official_recipe(task, variant, size=model.split("_")[1])
    schedule = official_schedule(official, scale)
    if after is not None:
        if after.task != task:
            raise ValueError(f"a {task} finetune can continue only from a {task} run, not from {after.task}")
        model, parent_hash = after.model, train_config_hash(after)
        architecture = {k: v for k, v in after.model_overrides.items() if k not in NOT_ARCHITECTURE}
    # Real data finetunes at the recipe's resolution (position table interpolated on load); the
    # synthetic worlds keep the pretraining resolution unless the profile overrides it.
    if "img_size" in official and (not profile.synthetic or "img_size" not in architecture):
        architecture["img_size"] = official["img_size"]
    model_overrides = {**architecture, "drop_path_rate": official.get("drop_path", 0.1), **scale.pop("model_overrides", {}),
                       **(model_variant or {})}
    data = {"root": data_root(profile, task, variant), **scale.pop("data", {}), **(variant or {})}
    # Head sizes a task takes from its data: a world's (answer or class count), real data's the official ones.
    spec = tasks.get_task(task)
    if spec.head_overrides is not None:
        from .launch import resolve_data_root

        model_overrides.update(spec.head_overrides(resolve_data_root(data), model_overrides=model_overrides,
                                                   synthetic=profile.synthetic, official=official))
    loads_pretraining = recipe != "none" and after is None
    with torch.device("meta"):
        drop, rename = tasks.build_model(task, model, **model_overrides).pretrained_init(
            pretrained_keys(recipe, profile, seed, ablation) if loads_pretraining else ())
    values = dict(
        task=task, model=model, model_overrides=model_overrides, data=data,
        lr=official["lr"], min_lr=official.get("min_lr", 1e-6), layer_decay=official.get("layer_decay", 1.0),
        head_lr_scale=float(official.get("head_lr_weight") or 1.0), weight_decay=official.get("weight_decay", 0.05),
        betas=tuple(official.get("opt_betas", (0.9, 0.999))), eps=official.get("opt_eps", 1e-8),
        clip_grad=float(official.get("clip_grad") or 0.0), **schedule,
        init_drop=list(drop) if loads_pretraining else [], init_rename=rename if loads_pretraining else {},
        parent_config_hash=parent_hash, seed=seed, profile=profile.name, experiment=FINETUNE_EXPERIMENT,
        run_name="-".join([task, *map(str, {**(variant or {}), **(model_variant or {})}.values()), recipe,
                           *(["after-itc"] if after is not None else []), profile.name, f"seed{seed}",
                           *([ablation_label(ablation, "-")] if ablation else [])]),
    )
    values.update(scale)
    return build_train_config(values, source=f"finetune {task} ({profile.name})")


def data_root(profile: Profile, task: str, variant: dict[str, Any] | None) -> str:
    """The world of a synthetic profile, else the real data set's folder from the profile's ``data_roots``
    (retrieval: by ``variant`` data set or source)."""
    if profile.synthetic:
        return profile.pretrain["data"]["root"]
    key = (variant or {}).get("source") or (variant or {}).get("dataset") or task
    roots = profile.finetune.get("data_roots", {})
    if key not in roots:
        raise KeyError(f"profile {profile.name!r} names no data folder for {key!r} (its data_roots: {sorted(roots)})")
    return roots[key]


IMAGE_CONTROL_SEED = 0  # the permutation of the images in the image-shuffled control


def ensure_finetune(task: str, recipe: str, profile: Profile, seed: int = 0, *,
                    variant: dict[str, Any] | None = None, model_variant: dict[str, Any] | None = None,
                    after_itc: bool = False, ablation: Ablation = (), tracking_uri: str | None = None,
                    nproc: int = 1) -> FinetuneResult:
    """Pretrain (or reuse), finetune (or reuse) and evaluate (or reuse the logged evaluation).

    ``after_itc``: retrieval continues from the intermediate ITC stage (paper App. A), itself a run
    descending from the pretraining recipe. ``ablation``: the pretraining's (``harness.ablation``).
    ``nproc`` > 1 trains each run under torchrun.
    """
    parents = ensure_parents(recipe, profile, seed, tracking_uri, nproc, ablation)
    after = None
    if after_itc:
        after = itc_config(recipe, profile, seed, ablation)
        parents += (ensure_run(after, parents[-1] if parents else None, tracking_uri=tracking_uri, nproc=nproc),)
    cfg = finetune_config(task, recipe, profile, seed, variant, model_variant, after, ablation)
    record = ensure_run(cfg, parents[-1] if parents else None, tracking_uri=tracking_uri, nproc=nproc)
    spec = tasks.get_task(task)
    evaluations = ("eval.", f"{IMAGE_CONTROL}.", f"{TEXT_CONTROL}.")
    metrics = {k: v for k, v in record.metrics.items() if k.startswith(evaluations)}
    missing = unevaluated_splits(record, spec.eval_splits, "eval", tracking_uri)
    if missing:
        metrics.update(evaluate_run(cfg, record, missing, tracking_uri))
    if "shuffle_images" in spec.data_defaults:  # the control: the same model with the split's images permuted
        missing = unevaluated_splits(record, spec.eval_splits, IMAGE_CONTROL, tracking_uri)
        if missing:
            metrics.update(evaluate_run(cfg, record, missing, tracking_uri, prefix=IMAGE_CONTROL,
                                        data={**cfg.data, "shuffle_images": IMAGE_CONTROL_SEED}))
    if spec.text_baseline is not None:  # the blind baseline, logged beside the model it is compared with
        missing = unevaluated_splits(record, spec.eval_splits, TEXT_CONTROL, tracking_uri)
        if missing:
            from .launch import resolve_data_root

            data = resolve_data_root(cfg.data)
            results = {split: spec.text_baseline(data, split=split) for split in missing}
            metrics.update(log_evaluation(record, results, TEXT_CONTROL, tracking_uri))
    return FinetuneResult(task, recipe, record, metrics, parents)


def itc_config(recipe: str, profile: Profile, seed: int = 0, ablation: Ablation = ()) -> TrainConfig:
    """The intermediate ITC stage (paper App. A): retrieval's contrastive loss on the pretraining pairs."""
    return finetune_config("retrieval", recipe, profile, seed, variant=ITC_VARIANT, ablation=ablation)


def ensure_parents(recipe: str, profile: Profile, seed: int, tracking_uri: str | None,
                   nproc: int = 1, ablation: Ablation = ()) -> tuple[RunRecord, ...]:
    """The pretraining runs a finetune descends from (none for ``recipe="none"``)."""
    check_recipe(recipe)
    if recipe == "none":
        return ()
    return tuple(ensure_recipe(recipe, profile, seed, ablation=ablation, tracking_uri=tracking_uri, nproc=nproc))


def zero_shot_retrieval(recipe: str, dataset: str, profile: Profile, seed: int = 0, *, ablation: Ablation = (),
                        tracking_uri: str | None = None, nproc: int = 1) -> FinetuneResult:
    """The ITC-stage model scored on ``dataset``'s test split without finetuning on it (Table 6);
    logged into the ITC run as ``zeroshot.<dataset>.test.<metric>``."""
    parents = ensure_parents(recipe, profile, seed, tracking_uri, nproc, ablation)
    cfg = itc_config(recipe, profile, seed, ablation)
    record = ensure_run(cfg, parents[-1] if parents else None, tracking_uri=tracking_uri, nproc=nproc)
    prefix = f"zeroshot.{dataset}"
    metrics = {k: v for k, v in record.metrics.items() if k.startswith(prefix + ".")}
    if unevaluated_splits(record, ("test",), prefix, tracking_uri):
        data = {**cfg.data, "source": "karpathy", "dataset": dataset}
        metrics = evaluate_run(cfg, record, ["test"], tracking_uri, data=data, prefix=prefix)
    return FinetuneResult("retrieval", recipe, record, metrics, parents)


def unevaluated_splits(record: RunRecord, splits: tuple[str, ...], prefix: str, tracking_uri: str | None) -> list[str]:
    """The ``splits`` the run lacks ``<prefix>.<split>.*`` metrics or the per-item frame of (a run
    evaluated before per-item results existed is scored again)."""
    from mlflow.tracking import MlflowClient

    from .per_item import ARTIFACT_DIR, artifact_path

    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    logged = {info.path for info in client.list_artifacts(record.run_id, ARTIFACT_DIR)}
    frame_prefix = "" if prefix == "eval" else prefix
    return [split for split in splits
            if not any(k.startswith(f"{prefix}.{split}.") for k in record.metrics)
            or artifact_path(split, frame_prefix) not in logged]


def evaluate_run(cfg: TrainConfig, record: RunRecord, splits: list[str], tracking_uri: str | None,
                 data: dict[str, Any] | None = None, prefix: str = "eval") -> dict[str, float]:
    """Load the run's final weights, score ``splits`` with the task's official metric (on ``data``,
    by default the run's own data), log to the run as ``<prefix>.<split>.<metric>`` and each split's
    per-item frame as its ``per_item/`` artifact (``harness.per_item``; named by the prefix but for
    the run's own ``eval``)."""
    from backbones import load_checkpoint

    from .launch import resolve_data_root

    spec = tasks.get_task(cfg.task)
    model = spec.build_model(cfg.model, **cfg.model_overrides)
    load_checkpoint(model, record.checkpoint)
    model.eval()
    data = resolve_data_root(data if data is not None else cfg.data)
    return log_evaluation(record, {split: spec.evaluate(model, data, split=split) for split in splits}, prefix,
                          tracking_uri)


def log_evaluation(record: RunRecord, results: Mapping[str, Any], prefix: str,
                   tracking_uri: str | None) -> dict[str, float]:
    """Log each split's ``EvalResult`` into the run: ``<prefix>.<split>.<metric>`` and the per-item
    frame (``per_item/[<prefix>.]<split>.csv.gz``, no prefix for the run's own ``eval``)."""
    from mlflow.tracking import MlflowClient

    from .per_item import log_per_item

    uri = resolve_tracking_uri(tracking_uri)
    metrics: dict[str, float] = {}
    for split, result in results.items():
        metrics.update({f"{prefix}.{split}.{k}": float(v) for k, v in result.metrics.items()})
        log_per_item(record.run_id, split, result.items, tracking_uri=uri, prefix="" if prefix == "eval" else prefix)
    client = MlflowClient(uri)
    for key, value in metrics.items():
        client.log_metric(record.run_id, key, value)
    return metrics


def plan_finetunes(experiments: tuple[tuple, ...], profile: Profile, seeds: int,
                   recipes: tuple[str, ...] = RECIPE_NAMES, ablation: Ablation = ()) -> list[TrainConfig]:
    """Every (task, recipe, seed) finetune a table needs, as configs (for ``--dry-run``);
    ``experiments`` are (task, variant[, model_variant]) tuples."""
    return [finetune_config(spec[0], recipe, profile, seed, *spec[1:], ablation=ablation)
            for spec in experiments for recipe in recipes for seed in range(seeds)]

