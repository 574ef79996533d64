"""What tables 7 and 8 share: one mmdet/mmseg experiment per (pretrained source, head, seed), the
loop that runs them, and the rendering of ours beside the paper's figures (side by side: the world
numbers of a tiny backbone and the paper's giant results are not differenced)."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from harness import dense, report
from harness.profiles import Profile
from harness.tables import render
from harness.tables.types import Experiment, RunOptions, TableResult, TableSpec, measurement

ConfigOf = Callable[[Profile, dense.PretrainedSource, str, int], dict[str, Any]]
# (experiment, source, checkpoint, head, seed, tags) -> ({metric: value in points}, {note key: text})
RunOne = Callable[..., tuple[dict[str, float], dict[str, str]]]


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
            run_one: RunOne) -> TableResult:
    """Runs every (source, head, seed) with ``run_one``; one row per (head, source, metric, seed), in points.

    Args:
        heads: head key -> (title, config name); the row groups.
        metrics: metric key -> label.
        config_of: the experiment config of one (profile, source, head, seed).
        run_one: fine-tunes and evaluates one experiment.
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
                values, notes = run_one(experiment, source, checkpoint, head, seed, tags)
                annotations.update({f"{head}.{source.name}.seed{seed}.{key}": text for key, text in notes.items()})
                for metric, label in metrics.items():
                    records.append(measurement(head, dense.row_component(source, reference, metric), values[metric],
                                               label=f"{label} — {source.label}", recipe=source.name, seed=seed,
                                               task=task, metric=metric, run_id=notes.get("run", "")))
    groups = {head: title for head, (title, _) in heads.items()}
    return TableResult.of(table, records, groups, annotations)


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
