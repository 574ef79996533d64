"""The types a table is made of: its run options, its planned experiments, its result, its spec.

A table's result is data: a tidy ``pandas.DataFrame`` with one row per measured number
(``RESULT_COLUMNS``), the row groups' titles and a few notes. Reports are renderings of it
(``harness.tables.render``).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pandas as pd

from harness import tracking
from harness.ablation import Ablation, check_ablation
from harness.experiments import RECIPE_NAMES, check_recipe
from harness.profiles import Profile
from harness.tables.paper import load_paper

# One row per measured number. ``value`` is in display units (the task spec's ``scale`` applied);
# ``paper_value`` is the paper's figure for the same row where the paper file has one.
RESULT_COLUMNS = ("table", "group", "row", "label", "recipe", "seed", "task", "evaluation", "split", "metric",
                  "value", "paper_value", "paper_display", "run_id")
_TEXT_COLUMNS = ("table", "group", "row", "label", "recipe", "task", "evaluation", "split", "metric",
                 "paper_display", "run_id")


# ----------------------------------------------------------------------------- how a table runs
@dataclass(frozen=True)
class RunOptions:
    """How a table's experiments run (``harness run --seeds --recipes --nproc --ablation``).

    Args:
        seeds: seeds per experiment.
        recipes: what finetunes start from: pretraining recipes (``beit3``, ``vlmo``) and ``none``
            (random init); tables built on pretraining run only these.
        nproc: processes per training run; more than one launches each run under torchrun.
        ablation: ``(name, value)`` switches set alike in every recipe's pretraining
            (``harness.ablation``); given as pairs or a mapping, kept in canonical form.
        weights: the folder of released checkpoints (table ``released``).
    """

    seeds: int = 1
    recipes: tuple[str, ...] = RECIPE_NAMES
    nproc: int = 1
    ablation: Ablation = ()
    weights: str = "weights"

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")
        if self.nproc < 1:
            raise ValueError(f"nproc must be at least 1, got {self.nproc}")
        if not self.recipes:
            raise ValueError(f"at least one recipe is needed; known: {', '.join(RECIPE_NAMES)}")
        for recipe in self.recipes:
            check_recipe(recipe)
        # The order of the recipes is the display order; keep the canonical one.
        object.__setattr__(self, "recipes", tuple(r for r in RECIPE_NAMES if r in self.recipes))
        object.__setattr__(self, "ablation", check_ablation(self.ablation))

    @property
    def pretraining_recipes(self) -> tuple[str, ...]:
        """The chosen recipes that pretrain (all but ``none``)."""
        return tuple(r for r in self.recipes if r != "none")


@dataclass(frozen=True)
class Experiment:
    """One unit of work a table needs: a (task, profile, seed) with its complete config.

    Args:
        name: unique within the table's plan, e.g. ``"table2/parameter-count"``.
        task: the task (or computation) that runs it.
        profile: the profile name.
        seed: the seed; None for deterministic computations.
        config: everything that determines the result; hashed into ``config_hash``.
        mlflow_experiment: the MLflow experiment its run is recorded in (found again by config hash);
            empty for computations that record only in the table's own run.
    """

    name: str
    task: str
    profile: str
    seed: int | None
    config: Mapping[str, Any] = field(default_factory=dict)
    mlflow_experiment: str = ""

    @property
    def config_hash(self) -> str:
        return tracking.config_hash(self.config)


def experiments_of(configs: Sequence[Any], profile: Profile) -> list[Experiment]:
    """Plan entries for training configs (``harness.config.TrainConfig``): name, task, seed, semantic config."""
    return [Experiment(name=c.run_name, task=c.task, profile=profile.name, seed=c.seed, config=c.semantic_dict(),
                       mlflow_experiment=c.experiment) for c in configs]


# ----------------------------------------------------------------------------- what a table measured
def measurement(group: str, row: str, value: float, *, label: str = "", recipe: str = "", seed: int | None = None,
                task: str = "", evaluation: str = "", split: str = "", metric: str = "",
                run_id: str = "") -> dict[str, Any]:
    """One record of a result frame (the paper columns are joined later, ``paper.attach_paper``)."""
    return {"group": group, "row": row, "label": label or row, "recipe": recipe, "seed": seed, "task": task,
            "evaluation": evaluation, "split": split, "metric": metric, "value": float(value),
            "paper_value": math.nan, "paper_display": "", "run_id": run_id}


def result_frame(table: str, records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The tidy frame of ``records`` (``measurement`` dicts), columns ``RESULT_COLUMNS`` in order."""
    frame = pd.DataFrame([{**r, "table": table} for r in records], columns=list(RESULT_COLUMNS))
    return normalize_frame(frame)


def normalize_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the result columns' dtypes (text as str, seed as nullable int, numbers as float),
    so a frame read back from CSV equals the one written."""
    missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"a table result frame lacks the columns {missing}; expected {list(RESULT_COLUMNS)}")
    frame = frame[list(RESULT_COLUMNS)].copy()
    for column in _TEXT_COLUMNS:
        frame[column] = frame[column].fillna("").astype(str)
    frame["seed"] = pd.array(pd.to_numeric(frame["seed"]), dtype="Int64")
    frame["value"] = frame["value"].astype(float)
    frame["paper_value"] = pd.to_numeric(frame["paper_value"]).astype(float)
    return frame.reset_index(drop=True)


@dataclass(frozen=True, eq=False)
class TableResult:
    """What a table's ``run`` measured.

    Args:
        table: the table name.
        frame: one row per measured number (``RESULT_COLUMNS``), in display order.
        groups: row-group key -> the title printed above its rows, in display order.
        annotations: facts that are not numbers (reuse status of the runs, the profile), by key.
        differences: paired differences between recipes with their bootstrap intervals
            (``harness.stats.DIFFERENCE_COLUMNS``); empty for tables that compare no recipes.
    """

    table: str
    frame: pd.DataFrame
    groups: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)
    differences: pd.DataFrame = field(default_factory=pd.DataFrame)

    @classmethod
    def of(cls, table: str, records: Sequence[Mapping[str, Any]], groups: Mapping[str, str],
           annotations: Mapping[str, str] | None = None) -> "TableResult":
        return cls(table, result_frame(table, records), dict(groups), dict(annotations or {}))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TableResult):
            return NotImplemented
        return (self.table == other.table and dict(self.groups) == dict(other.groups)
                and dict(self.annotations) == dict(other.annotations)
                and self.frame.equals(other.frame) and _same(self.differences, other.differences))

    def metrics(self) -> dict[str, float]:
        """``{"<group>[.seed<N>].<row>": value}``, the numbers logged to MLflow."""
        out = {}
        for row in self.frame.itertuples(index=False):
            seed = "" if pd.isna(row.seed) else f"seed{int(row.seed)}."
            out[f"{row.group}.{seed}{row.row}"] = float(row.value)
        return out

    def with_differences(self, differences: pd.DataFrame) -> "TableResult":
        return TableResult(self.table, self.frame, self.groups, self.annotations, differences)

    def meta_json(self) -> str:
        """The non-frame part (table, groups, annotations) as JSON."""
        return json.dumps({"table": self.table, "groups": dict(self.groups),
                           "annotations": dict(self.annotations)}, indent=2) + "\n"


def _same(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    if a.empty and b.empty:
        return True
    return a.reset_index(drop=True).equals(b.reset_index(drop=True))


# ----------------------------------------------------------------------------- a table
@dataclass(frozen=True)
class TableSpec:
    """A paper table the harness regenerates. Subclasses implement ``plan``, ``run``, ``render``.

    Args:
        name: registry name, ``table<N>`` in the paper's numbering.
        title: the paper's caption.
    """

    name: str
    title: str
    # Whether the table's recipes are compared with paired bootstrap intervals (``harness.stats``)
    # on the per-item results of their runs.
    compares_recipes = False
    # Whether the paper's figures are the same quantity as ours (parameter counts), so that a
    # difference from the paper means something; otherwise they are printed side by side only.
    differences_from_paper = False

    @property
    def paper_rows(self) -> dict[str, Any]:
        """The contents of ``results/paper/<name>.json``."""
        return load_paper(self.name)

    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        """The experiments this table needs under ``profile`` and ``options``."""
        raise NotImplementedError

    def run(self, profile: Profile, options: RunOptions) -> TableResult:
        """Runs (or reuses) the planned experiments and collects the table's numbers."""
        raise NotImplementedError

    def render(self, result: TableResult, paper: Mapping[str, Any]):
        """The table as a ``harness.tables.render.Document``; pure and deterministic."""
        raise NotImplementedError

    def csv_frame(self, result: TableResult) -> pd.DataFrame:
        """What ``results/<name>.csv`` holds: the tidy result frame, unless the table has its own columns."""
        return result.frame
