"""``harness run TABLE``: plan -> run -> join the paper -> compare recipes -> write -> record in MLflow.

The table's own MLflow run (experiment ``beit3-tables``, run ``<table>-<profile>[-<ablation>]``)
holds the measured numbers as metrics and, as artifacts, the result frame (``table_result.csv``),
the paired differences between recipes (``table_differences.csv``), what made them
(``table_result.json``: profile, options, groups, notes, the experiments and their runs), and the
rendered markdown and CSV. ``harness report`` renders again from these artifacts alone.
"""
from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from harness import tracking
from harness.ablation import ablation_label
from harness.profiles import Profile
from harness.tables import render
from harness.tables.paper import attach_paper
from harness.tables.types import (
    Experiment,
    RunOptions,
    TableResult,
    TableSpec,
    normalize_frame,
)
from tasks.atomic import write_atomic

TABLES_EXPERIMENT = "beit3-tables"
TABLE_RESULT_ARTIFACT = "table_result.json"
TABLE_FRAME_ARTIFACT = "table_result.csv"
TABLE_DIFFERENCES_ARTIFACT = "table_differences.csv"
RESULT_FORMAT = 2  # 1: rows as JSON (before the result frame); not readable any more


@dataclass(frozen=True)
class TableOutputs:
    """Where ``run_table`` put things."""

    markdown: str
    report_path: Path
    csv_path: Path
    run_id: str
    config_hash: str


def table_config(spec: TableSpec, profile: Profile, options: RunOptions,
                 plan: Sequence[Experiment]) -> dict[str, Any]:
    """The config of a table's own MLflow run: the table, the profile (and ablation) and its planned
    experiments (``plan``: ``spec.plan(profile, options)``)."""
    return {
        "table": spec.name,
        "profile": profile.name,
        **({"ablation": dict(options.ablation)} if options.ablation else {}),
        "experiments": {
            e.name: {"task": e.task, "seed": e.seed, "config_hash": e.config_hash, "config": dict(e.config)}
            for e in plan
        },
    }


def recorded_experiments(plan: Sequence[Experiment], tracking_uri: str) -> list[dict[str, Any]]:
    """The planned experiments, each with the FINISHED MLflow run that holds it (ids None for the
    computations a table makes inside its own run, and for runs not found)."""
    recorded = []
    for e in plan:
        run = None
        if e.mlflow_experiment:
            run = tracking.find_finished_run(e.mlflow_experiment, e.config_hash, tracking_uri=tracking_uri)
        recorded.append({
            "name": e.name, "task": e.task, "seed": e.seed, "config_hash": e.config_hash,
            "mlflow_experiment": e.mlflow_experiment,
            "run_id": None if run is None else run.info.run_id,
            "experiment_id": None if run is None else run.info.experiment_id,
        })
    return recorded


def table_result_json(result: TableResult, profile: str, options: RunOptions,
                      experiments: Sequence[Mapping[str, Any]]) -> str:
    """The ``table_result.json`` artifact: what is not in the frame (groups, notes), the profile, the
    options and the experiments behind the result."""
    data = {"format": RESULT_FORMAT, "table": result.table, "profile": profile,
            "options": dataclasses.asdict(options), "groups": dict(result.groups),
            "annotations": dict(result.annotations), "experiments": list(experiments)}
    return json.dumps(data, indent=2) + "\n"


def read_result(meta: Mapping[str, Any], frame_csv: str, differences_csv: str | None) -> TableResult:
    """A ``TableResult`` from its three artifacts' contents (``table_result_json``, the frame CSV and
    the differences CSV, empty or None when the table compares no recipes).

    Raises:
        ValueError: the JSON is of another format.
    """
    if meta.get("format") != RESULT_FORMAT:
        raise ValueError(f"table result format {meta.get('format')!r}; this harness reads format {RESULT_FORMAT}")
    frame = normalize_frame(pd.read_csv(io.StringIO(frame_csv), keep_default_na=False,
                                        na_values={"seed": [""], "value": [""], "paper_value": [""]}))
    differences = pd.DataFrame()
    if differences_csv and differences_csv.strip():
        from harness.stats import read_differences

        differences = read_differences(differences_csv)
    return TableResult(meta["table"], frame, dict(meta["groups"]), dict(meta.get("annotations", {})), differences)


def finish_result(spec: TableSpec, result: TableResult, paper: Mapping[str, Any], tracking_uri: str) -> TableResult:
    """The spec's raw result with the paper's figures joined and, for tables that compare recipes,
    the paired differences computed from the per-item results of their runs."""
    result = TableResult(result.table, attach_paper(result.frame, paper, result.groups), result.groups,
                         result.annotations, result.differences)
    if spec.compares_recipes and result.differences.empty:
        from harness.stats import recipe_differences

        result = result.with_differences(recipe_differences(result.frame, tracking_uri=tracking_uri))
    return result


def run_table(
    spec: TableSpec,
    profile: Profile,
    options: RunOptions,
    *,
    out_dir: Path | str,
    results_dir: Path | str,
    tracking_uri: str,
) -> TableOutputs:
    """Runs one table and records it (experiment ``beit3-tables``, run ``<table>-<profile>[-<ablation>]``).

    Args:
        spec: the table.
        profile: the profile to run under.
        options: seeds, recipes, processes per training run.
        out_dir: where ``<table>.md`` goes (``reports/``).
        results_dir: where ``<table>.csv`` (the result frame) goes (``results/``).
        tracking_uri: an MLflow store already checked by ``tracking.check_tracking_uri``.
    """
    plan = spec.plan(profile, options)
    config = table_config(spec, profile, options, plan)
    paper = spec.paper_rows
    # The table's training runs record in the same store as the table's own run.
    with tracking.use_tracking_uri(tracking_uri):
        return _run_and_record(spec, profile, options, plan, config, paper, out_dir, results_dir, tracking_uri)


def _run_and_record(spec, profile, options, plan, config, paper, out_dir, results_dir, tracking_uri) -> TableOutputs:
    with tracking.start_run(
        TABLES_EXPERIMENT,
        "-".join(filter(None, [spec.name, profile.name, ablation_label(options.ablation, "-")])),
        config,
        tags={"table": spec.name, **({"ablation": ablation_label(options.ablation)} if options.ablation else {})},
        tracking_uri=tracking_uri,
    ) as run:
        result = finish_result(spec, spec.run(profile, options), paper, tracking_uri)
        markdown = render.to_markdown(spec.render(result, paper))
        csv_text = render.to_csv(spec.csv_frame(result))
        report_path = write_atomic(Path(out_dir) / f"{spec.name}.md", markdown)
        csv_path = write_atomic(Path(results_dir) / f"{spec.name}.csv", csv_text)
        run.log_metrics(result.metrics())
        run.log_text(markdown, f"{spec.name}.md")
        run.log_text(render.to_csv(result.frame), TABLE_FRAME_ARTIFACT)
        if not result.differences.empty:
            run.log_text(render.to_csv(result.differences), TABLE_DIFFERENCES_ARTIFACT)
        experiments = recorded_experiments(plan, tracking_uri)
        run.log_text(table_result_json(result, profile.name, options, experiments), TABLE_RESULT_ARTIFACT)
    return TableOutputs(markdown, report_path, csv_path, run.run_id, tracking.config_hash(config))
