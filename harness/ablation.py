"""Ablation switches: one pretraining knob changed alike in every recipe (``harness run --ablation NAME=VALUE``).

An ablation is data: a tuple of ``(name, value)`` pairs in the order of :data:`SWITCHES`, each name
at most once. :func:`apply_ablation` edits a pretraining config after the profile has scaled it, and
every recipe and stage gets the same edit. An edited config has its own config hash, so ablated runs
never reuse the baseline's (unless the edit changes nothing, e.g. ``layout=paper``, the layout every
recipe already builds: the same config is the same run). Finetunes (and the ``none`` baseline) take
their architecture (layout, VL-FFN) from the ablated pretraining and descend from it through the
parent hash.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from .budget import BUDGETS
from .config import TrainConfig
from .profiles import unknown_name_error

Ablation = tuple[tuple[str, Any], ...]
LAYOUTS = ("paper", "released")


class AblationError(ValueError):
    """An ablation value that is not allowed, or that cannot be applied to a config."""


@dataclass(frozen=True)
class Switch:
    """One knob: what it means (for ``--help``), how its value is read, how it edits a config."""

    help: str
    parse: Callable[[str], Any]
    apply: Callable[[TrainConfig, Any], TrainConfig]


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise AblationError(f"ablation {name}={text!r}: expected one of {', '.join(choices)}")
        return text
    return parse


def _fraction(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0.0 < value < 1.0:
            raise AblationError(f"ablation {name}={text!r}: expected a fraction strictly between 0 and 1")
        return value
    return parse


def _positive_int(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise AblationError(f"ablation {name}={text!r}: expected a positive integer")
        return int(text)
    return parse


def _set_model(key: str) -> Callable[[TrainConfig, Any], TrainConfig]:
    return lambda cfg, value: dataclasses.replace(cfg, model_overrides={**cfg.model_overrides, key: value})


def _set_data(key: str) -> Callable[[TrainConfig, Any], TrainConfig]:
    return lambda cfg, value: dataclasses.replace(cfg, data={**cfg.data, key: value})


def _layout(cfg: TrainConfig, value: str) -> TrainConfig:
    overrides = {**cfg.model_overrides, "layout": value}
    if value == "released":
        overrides.pop("vl_ffn_layers", None)  # the released layout has no VL-FFN
    return dataclasses.replace(cfg, model_overrides=overrides)


def _vl_ffn(cfg: TrainConfig, value: str) -> TrainConfig:
    overrides = dict(cfg.model_overrides)
    if value == "off":
        overrides["vl_ffn_layers"] = 0
    else:  # the model's own count of top layers with a VL-FFN (tiny 1, base 2, large/giant 3)
        overrides.pop("vl_ffn_layers", None)
    return dataclasses.replace(cfg, model_overrides=overrides)


def _budget(cfg: TrainConfig, value: str) -> TrainConfig:
    # Read by harness.experiments.recipe_configs, which sets every recipe's steps by it (harness.budget):
    # it needs the reference recipe's costs, which one config alone does not know.
    return cfg


def _batch_size(cfg: TrainConfig, value: int) -> TrainConfig:
    # The reference's steps x batch stays what the profile set (its FLOPs nearly so), and the schedule
    # keeps its shape; the budget then gives the other recipes their steps.
    old = cfg.data.get("batch_size")
    if not isinstance(old, int) or isinstance(old, bool):
        raise AblationError(f"ablation batch_size needs an integer data.batch_size in {cfg.run_name}, got {old!r}")
    samples = cfg.max_steps * old
    if samples % value:
        raise AblationError(
            f"ablation batch_size={value} does not divide steps x batch = {cfg.max_steps} x {old} = {samples} "
            f"of {cfg.run_name}: choose a divisor of {samples} so that every recipe keeps the same compute"
        )

    def rescale(steps: int) -> int:
        return max(1, round(steps * old / value)) if steps else 0

    return dataclasses.replace(cfg, data={**cfg.data, "batch_size": value}, max_steps=samples // value,
                               warmup_steps=rescale(cfg.warmup_steps), ckpt_interval=rescale(cfg.ckpt_interval))


SWITCHES: dict[str, Switch] = {
    "layout": Switch("paper | released: the backbone layout of every recipe, none and the finetunes (default paper)",
                     _choice("layout", LAYOUTS), _layout),
    "vl_ffn": Switch("on | off: VL-FFN in the top layers (paper layout only)",
                     _choice("vl_ffn", ("on", "off")), _vl_ffn),
    "text_mask_prob": Switch("fraction of text-only tokens masked (data.text_mask_prob)",
                             _fraction("text_mask_prob"), _set_data("text_mask_prob")),
    "pair_mask_prob": Switch("fraction of image-text pair tokens masked (data.pair_mask_prob)",
                             _fraction("pair_mask_prob"), _set_data("pair_mask_prob")),
    "image_mask_ratio": Switch("fraction of image patches masked block-wise (data.image_mask_ratio)",
                               _fraction("image_mask_ratio"), _set_data("image_mask_ratio")),
    "batch_size": Switch("samples per stream per step (data.batch_size); steps scale inversely so steps x batch "
                         "stays equal, lr unchanged", _positive_int("batch_size"), _batch_size),
    "budget": Switch("flops | samples | steps: what every recipe's pretraining matches BEiT-3 MDM's in (default flops)",
                     _choice("budget", BUDGETS), _budget),
}


def check_ablation(pairs: Iterable[tuple[str, Any]] | Mapping[str, Any]) -> Ablation:
    """``pairs`` validated and in canonical form: values parsed, names in :data:`SWITCHES` order.

    Raises:
        UnknownNameError: a name that is no switch (lists the known ones).
        AblationError: a bad value, a name given twice, or ``vl_ffn`` with ``layout=released``.
    """
    items = list(pairs.items() if isinstance(pairs, Mapping) else pairs)
    values: dict[str, Any] = {}
    for name, value in items:
        if name not in SWITCHES:
            raise unknown_name_error("ablation", name, SWITCHES)
        if name in values:
            raise AblationError(f"ablation {name} is given twice ({values[name]} and {value}): give it once")
        values[name] = SWITCHES[name].parse(str(value))
    if "vl_ffn" in values and values.get("layout") == "released":
        raise AblationError(
            "ablation vl_ffn is only meaningful with the paper layout (the released layout has no VL-FFN): "
            "drop --ablation layout=released or --ablation vl_ffn"
        )
    return tuple((name, values[name]) for name in SWITCHES if name in values)


def parse_ablation(items: Iterable[str]) -> Ablation:
    """``["layout=paper", "vl_ffn=off"]`` (the ``--ablation`` arguments) as a checked ablation."""
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise AblationError(f"--ablation takes NAME=VALUE, got {item!r}; names: {', '.join(SWITCHES)}")
        pairs.append((name.strip(), value.strip()))
    return check_ablation(pairs)


def apply_ablation(cfg: TrainConfig, ablation: Ablation) -> TrainConfig:
    """``cfg`` (a pretraining config already scaled by its profile) with every switch of ``ablation`` set."""
    for name, value in ablation:
        cfg = SWITCHES[name].apply(cfg, value)
    return cfg


def ablation_label(ablation: Ablation, sep: str = ",") -> str:
    """``layout=paper,vl_ffn=off``; empty for no ablation."""
    return sep.join(f"{name}={value}" for name, value in ablation)
