"""What tables 7 and 8 share: one mmdet/mmseg experiment per (pretrained source, head, seed), the
loop that runs them, and the rendering of ours beside the paper's figures (side by side: the world
numbers of a tiny backbone and the paper's giant results are not differenced)."""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from harness import dense, report, stats
from harness.dense_items import PerImageMetric
from harness.profiles import Profile
from harness.tables import render
from harness.tables.vl import RECIPE_TITLES, differences_blocks
from harness.tables.types import Experiment, RunOptions, TableResult, TableSpec, measurement

ConfigOf = Callable[[Profile, dense.PretrainedSource, str, int], dict[str, Any]]
# (experiment, source, checkpoint, head, seed, tags)
#   -> ({metric: value in points}, {metric: (run id, split) that measured it}, {note key: text})
RunOne = Callable[..., tuple[dict[str, float], dict[str, tuple[str, str]], dict[str, str]]]
# (metric, run id, split) -> the run's metric recomputable on resampled images (``harness.dense_items``)
PerImage = Callable[[str, str, str], PerImageMetric]


def plan_experiments(table: str, profile: Profile, seeds: int, sources: Sequence[dense.PretrainedSource], *,
                     task: str, heads: Sequence[str], config_of: ConfigOf) -> list[Experiment]:
    """One experiment per (pretrained source, head, seed) of a dense table."""
    return [
        Experiment(f"{table}/{source.name}/{head}/seed{seed}", task, profile.name, seed,
                   config_of(profile, source, head, seed))
        for source in sources for head in heads for seed in range(seeds)
    ]


def measure(table: str, profile: Profile, seeds: int, sources: Sequence[dense.PretrainedSource], *,
            task: str, heads: Mapping[str, tuple[str, str]], metrics: Mapping[str, str], config_of: ConfigOf,
            run_one: RunOne, per_image: PerImage, n_resamples: int = stats.N_RESAMPLES) -> TableResult:
    """Runs every (source, head, seed) with ``run_one``; one row per (head, source, metric, seed), in
    points, and the paired differences between sources (:func:`source_differences`).

    Args:
        heads: head key -> (title, config name); the row groups (those the profile runs,
            ``dense.table_heads``).
        metrics: metric key -> label.
        config_of: the experiment config of one (profile, source, head, seed).
        run_one: fine-tunes and evaluates one experiment.
        per_image: loads a run's per-image results of a metric.
        n_resamples: bootstrap replicates of the differences.
    """
    reference = dense.reference_source(sources)
    records: list[dict[str, Any]] = []
    annotations: dict[str, str] = {}
    for source in sources:
        checkpoint = source.resolve()
        for head in heads:
            for seed in range(seeds):
                experiment = Experiment(f"{table}/{source.name}/{head}/seed{seed}", task, profile.name, seed,
                                        config_of(profile, source, head, seed))
                tags = {"table": table, "head": head, "source": source.name,
                        "experiment_config_hash": experiment.config_hash}
                values, runs, notes = run_one(experiment, source, checkpoint, head, seed, tags)
                annotations.update({f"{head}.{source.name}.seed{seed}.{key}": text for key, text in notes.items()})
                for metric, label in metrics.items():
                    run_id, split = runs[metric]
                    records.append(measurement(head, dense.row_component(source, reference, metric), values[metric],
                                               label=f"{label} — {source.label}", recipe=source.name, seed=seed,
                                               task=task, split=split, metric=metric, run_id=run_id))
    groups = {head: title for head, (title, _) in heads.items()}
    result = TableResult.of(table, records, groups, annotations)
    return result.with_differences(source_differences(result.frame, per_image, n_resamples=n_resamples))


def source_differences(frame: pd.DataFrame, per_image: PerImage, *,
                       n_resamples: int = stats.N_RESAMPLES) -> pd.DataFrame:
    """Per head and metric, every pair of sources A - B (no pretraining included) with a 95% interval
    from the paired hierarchical bootstrap of ``harness.stats`` (seeds, then the evaluation images; the
    metric recomputed on each resampled set, ``stats.paired_bootstrap_statistic``).

    Returns:
        ``stats.DIFFERENCE_COLUMNS`` rows; ``label`` is the metric's label without the source.
    """
    rows = []
    cache: dict[tuple[str, str, str], PerImageMetric] = {}

    def load(metric: str, run_id: str, split: str) -> PerImageMetric:
        if (metric, run_id, split) not in cache:
            cache[metric, run_id, split] = per_image(metric, run_id, split)
        return cache[metric, run_id, split]

    for (group, metric), members in frame.groupby(["group", "metric"], sort=False):
        label = f'{members["label"].iloc[0].split(" — ")[0]}, {group}'
        recipes = list(dict.fromkeys(members["recipe"]))
        runs = {r: {int(s): (run_id, split) for s, run_id, split in
                    members.loc[members["recipe"] == r, ["seed", "run_id", "split"]].itertuples(index=False)}
                for r in recipes}
        for recipe_a, recipe_b in itertools.combinations(recipes, 2):
            seeds = sorted(set(runs[recipe_a]) & set(runs[recipe_b]))
            row = {"task": members["task"].iloc[0], "evaluation": "eval", "split": members["split"].iloc[0],
                   "metric": metric, "row": group, "label": label, "recipe_a": recipe_a, "recipe_b": recipe_b,
                   "seeds": len(seeds), "clusters": 0, "items": 0, "estimate": math.nan, "ci_low": math.nan,
                   "ci_high": math.nan, "values_a": "", "values_b": "", "note": ""}
            try:
                found_a = [load(metric, *runs[recipe_a][s]) for s in seeds]
                found_b = [load(metric, *runs[recipe_b][s]) for s in seeds]
            except FileNotFoundError as err:
                row["note"] = str(err)
                rows.append(row)
                continue
            images = {m.images for m in found_a + found_b}
            if not seeds:
                row["note"] = "no seed measured for both"
            elif len(images) != 1:
                row["note"] = "the runs were evaluated on different images"
            else:
                found = stats.paired_bootstrap_statistic([m.statistic for m in found_a],
                                                         [m.statistic for m in found_b], len(images.pop()),
                                                         n_resamples=n_resamples)
                row.update(clusters=found.clusters, items=found.items, estimate=found.estimate, ci_low=found.low,
                           ci_high=found.high, values_a=stats.join_values(found.values_a),
                           values_b=stats.join_values(found.values_b))
            rows.append(row)
    return pd.DataFrame(rows, columns=list(stats.DIFFERENCE_COLUMNS))


def render_dense(title: str, summary: str, result: TableResult, paper: Mapping[str, Any],
                 other_columns: Sequence[tuple[str, str]]) -> render.Document:
    """Per head: each measure over seeds (mean ± std) beside the paper's figure where it has one;
    then the paper's other rows."""
    frame = result.frame
    blocks = [render.paragraph(summary)]
    for group, group_title in result.groups.items():
        members = frame[frame["group"] == group]
        if members.empty:
            continue
        cells = []
        for row, rows in members.groupby("row", sort=False):
            cells.append([rows["label"].iloc[0], report.format_mean_std(rows["value"].tolist(), digits=2),
                          str(len(rows)), rows["paper_display"].iloc[0] or report.MISSING])
        blocks += [render.heading(group_title, level=3),
                   render.table(cells, ["measure", "ours (mean ± std)", "seeds", "paper (BEiT-3 giant)"])]
    blocks += differences_blocks(result, RECIPE_TITLES, higher_is_better=lambda task, metric: True)
    other = [[str(row.get(key, report.MISSING)) for key, _ in other_columns] for row in paper.get("other_rows", [])]
    caption = paper.get("other_rows_caption", "The paper's other rows (not re-run)")
    blocks += [render.paragraph(f"{caption}:"),
               render.table(other, [title for _, title in other_columns],
                            align=("l",) * (len(other_columns) - 2) + ("r", "r")),
               render.paragraph(paper.get("notes", ""))]
    return render.Document(title, tuple(blocks))


class DenseTable(TableSpec):
    """A table of mmdet/mmseg runs; subclasses name their module's ``plan_experiments`` and ``measure``."""

    plan_experiments: Callable[..., list[Experiment]]
    measure: Callable[..., TableResult]

    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        sources = dense.pretrained_sources(profile, options.recipes, options.ablation)
        return self.plan_experiments(self.name, profile, options.seeds, sources)

    def run(self, profile: Profile, options: RunOptions) -> TableResult:
        sources = dense.pretrained_sources(profile, options.recipes, options.ablation)
        return self.measure(self.name, profile, options.seeds, sources)
