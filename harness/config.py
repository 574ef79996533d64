"""Training configuration: one typed dataclass, loaded from mmengine config files with ``_base_``.

mmengine merges ``_base_`` files and ``--cfg-options`` but silently accepts unknown keys; we reject
them (with close matches) and check every value's type, as nanoGPT's configurator does.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backbones.suggest import did_you_mean

from .tracking import config_hash

# Keys that say where/how a run is stored, not what it computes: left out of the config hash.
# The parent's checkpoint path and run id are left out too: ``parent_config_hash`` pins the parent's
# config, and ``parent_weights_sha256`` (known once the parent ran) joins it in ``run_identity``,
# so that planned config hashes stay those of the runs.
NON_SEMANTIC_KEYS = (
    "out_dir", "resume", "log_interval", "progress", "tracking_uri", "experiment", "run_name",
    "init_from", "parent_run_id", "parent_weights_sha256",
)


class ConfigError(ValueError):
    """A configuration key that is unknown or a value of the wrong type."""


@dataclass
class TrainConfig:
    """Everything one training run needs; the defaults are the tiny smoke settings."""

    # what to train
    task: str = "pretrain_mdm"
    model: str = "beit3_tiny_patch16_224"
    model_overrides: dict = field(default_factory=dict)  # backbone/task overrides for tasks.build_model
    data: dict = field(default_factory=dict)  # task-specific data settings (the task's build_data reads them)
    forward_kwargs: dict = field(default_factory=dict)  # extra arguments of model(batch, **forward_kwargs)
    init_from: str = ""  # checkpoint file to start from (a derived run); "" = from scratch
    init_drop: list = field(default_factory=list)  # fnmatch patterns of init_from keys not to load
    init_rename: dict = field(default_factory=dict)  # init_from key -> model key, applied before init_drop
    trainable: str = ""  # named parameter selection applied by the task (e.g. a VLMo stage)
    # schedule
    seed: int = 0
    max_steps: int = 100
    grad_accum_steps: int = 1
    # Official recipes count epochs and the total batch: when set, they decide max_steps/warmup_steps and
    # the per-rank data.batch_size at launch (data-set size and world size known), see schedule_for_data.
    epochs: float = 0.0
    warmup_epochs: float = 0.0
    global_batch_size: int = 0
    # optimizer (AdamW)
    lr: float = 1e-3
    min_lr: float = 1e-6
    warmup_steps: int = 10
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.98)
    eps: float = 1e-6
    layer_decay: float = 1.0
    head_lr_scale: float = 1.0  # official finetuning: x this for names starting with "head" when layer_decay == 1
    clip_grad: float = 3.0  # 0 = no clipping
    # precision and memory
    precision: str = "fp32"  # fp32 | bf16 | fp16
    grad_checkpointing: bool = False
    # distribution
    parallel: str = "ddp"  # ddp | fsdp (used when launched under torchrun with WORLD_SIZE > 1)
    # Multiway experts and heads idle in some batches (mask token without masking, VL-FFN without pairs).
    ddp_find_unused_parameters: bool = True
    # bookkeeping
    out_dir: str = "runs/default"
    ckpt_interval: int = 50
    keep_last: int = 2
    log_interval: int = 10
    progress: bool = True
    resume: bool = False
    profile: str = "smoke"
    experiment: str = "beit3-harness"
    run_name: str = ""
    parent_run_id: str = ""
    parent_config_hash: str = ""
    parent_weights_sha256: str = ""  # sha256 of the init_from file of a derived run

    def __post_init__(self) -> None:
        choices = {"precision": ("fp32", "bf16", "fp16"), "parallel": ("ddp", "fsdp")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}={getattr(self, key)!r} is not one of {', '.join(allowed)}")
        for key in ("max_steps", "grad_accum_steps", "ckpt_interval", "keep_last", "log_interval"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.warmup_steps < 0 or self.lr <= 0:
            raise ConfigError(f"need warmup_steps >= 0 and lr > 0, got {self.warmup_steps}, {self.lr}")
        self.betas = tuple(self.betas)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def semantic_dict(self) -> dict[str, Any]:
        """What the run computes: the config without storage/logging keys, plus the identity of the
        data it reads (``harness.data_identity``), so a changed data set is another config."""
        from .data_identity import data_identity

        semantic = {k: v for k, v in self.to_dict().items() if k not in NON_SEMANTIC_KEYS}
        identity = data_identity(self.data)
        if identity:
            semantic["data_identity"] = identity
        return semantic


def train_config_hash(config: TrainConfig) -> str:
    """The tracking config hash of what the run computes (storage/logging keys left out)."""
    return config_hash(config.semantic_dict())


def run_identity(config: TrainConfig) -> str:
    """The config hash, joined for a derived run with the sha256 of the weights it starts from: two
    runs are the same computation only if both agree (run directory, resume check, reuse)."""
    digest = train_config_hash(config)
    if not config.parent_weights_sha256:
        return digest
    return config_hash({"config_hash": digest, "parent_weights_sha256": config.parent_weights_sha256})


def _type_ok(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation in (int, str, bool):
        return isinstance(value, annotation) and (annotation is bool or not isinstance(value, bool))
    if annotation in (dict, list) or origin in (dict, list):
        return isinstance(value, annotation if origin is None else origin)
    if annotation is tuple or origin is tuple:
        return isinstance(value, (tuple, list))
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    return True


def build_train_config(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Validate ``values`` against :class:`TrainConfig`: unknown keys and wrong types are errors."""
    hints = typing.get_type_hints(TrainConfig)
    unknown = [key for key in values if key not in hints]
    if unknown:
        lines = [f"  {key}{did_you_mean(key, hints)}" for key in unknown]
        raise ConfigError(f"{source}: unknown key(s):\n" + "\n".join(lines) + f"\nvalid keys: {', '.join(hints)}")
    for key, value in values.items():
        if not _type_ok(value, hints[key]):
            raise ConfigError(
                f"{source}: {key}={value!r} has type {type(value).__name__}, expected {getattr(hints[key], '__name__', hints[key])}"
            )
    return TrainConfig(**{k: (tuple(v) if k == "betas" else v) for k, v in values.items()})


def load_train_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read an mmengine config file (``_base_`` inheritance), apply ``overrides``, validate."""
    from mmengine.config import Config

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    values = merge_overrides(Config.fromfile(str(path)).to_dict(), overrides or {})
    return build_train_config(values, source=str(path))


def merge_overrides(values: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides replace top-level keys; for dict-valued keys (``data``, ``model_overrides``,
    ``forward_kwargs``) they replace the entries they name and keep the others."""
    merged = dict(values)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
