"""Table 7 of BEiT-3 (arXiv 2208.10442): object detection and instance segmentation on COCO.

Each pretraining recipe of table3 (``harness.dense.pretrained_sources``) initialises the backbone of
two detectors -- Cascade Mask R-CNN (the paper's head) and Mask R-CNN (ViTDet's), both on the
ViTDet-style BEiT-3 backbone with the simple feature pyramid -- which are fine-tuned and evaluated
with mmdet's CocoMetric (pycocotools) through ``harness.dense``. Synthetic profiles run the CPU-sized
``configs/det/*_mini.py`` on the benchmark world's COCO-format instances; the ``paper`` profile runs
``configs/det/*_paper.py`` on COCO. The reference recipe's Cascade row sits beside the paper's
BEiT-3 (63.7 box AP / 54.8 mask AP, test-dev); the paper's other rows are printed for context.
"""
from __future__ import annotations

import statistics
from typing import Any, Mapping, Sequence

from harness import dense, report
from harness.profiles import Profile
from harness.tables import (
    Experiment,
    ResultRow,
    RunOptions,
    TableResult,
    TableSpec,
    compare,
    comparison_table,
    register_table,
)

TASK = "coco_instance_segmentation"
# head key -> (title, config name without the _mini/_paper suffix)
HEADS: dict[str, tuple[str, str]] = {
    "cascade_mask_rcnn": ("Cascade Mask R-CNN + simple pyramid (the paper's head)", "det/beit3_cascade-mask-rcnn"),
    "mask_rcnn": ("Mask R-CNN + simple pyramid (ViTDet's head)", "det/beit3_mask-rcnn"),
}
# metric key -> (label, CocoMetric key); CocoMetric reports AP in [0, 1], the table in points.
METRICS: dict[str, tuple[str, str]] = {"box_ap": ("box AP", "coco/bbox_mAP"), "mask_ap": ("mask AP", "coco/segm_mAP")}


def experiment_config(profile: Profile, source: dense.PretrainedSource, head: str, seed: int) -> dict[str, Any]:
    """Everything that determines one detector run (hashed into its ``Experiment``)."""
    return {
        "config": f"{HEADS[head][1]}_{dense.config_variant(profile)}",
        "head": head,
        "source": source.name,
        "source_identity": dict(source.identity),
        "model": source.model_name,
        "model_overrides": dict(source.model_overrides),
        "layout": source.layout,
        "world": profile.world,
        "max_iters": profile.max_steps,
        "batch_size": profile.batch_size,
        "seed": seed,
    }


def plan_experiments(table: str, profile: Profile, seeds: int, sources: Sequence[dense.PretrainedSource],
                     task: str = TASK, heads: Sequence[str] = HEADS, config_of=None) -> list[Experiment]:
    """One experiment per (pretrained source, head, seed) of a dense table (table7's by default)."""
    config_of = config_of or experiment_config
    return [
        Experiment(f"{table}/{source.name}/{head}/seed{seed}", task, profile.name, seed,
                   config_of(profile, source, head, seed))
        for source in sources for head in heads for seed in range(seeds)
    ]


def measure(table: str, profile: Profile, seeds: int, sources: Sequence[dense.PretrainedSource],
            tracking_uri: str | None = None) -> TableResult:
    """Fine-tune and evaluate every (source, head, seed); rows are means over seeds, in points."""
    reference = dense.reference_source(sources)
    data_root = dense.world_data_root(profile, "coco")
    values: dict[tuple[str, str, str], list[float]] = {}
    annotations: dict[str, str] = {}
    for source in sources:
        checkpoint = source.resolve()
        for head in HEADS:
            for seed in range(seeds):
                experiment = Experiment(f"{table}/{source.name}/{head}/seed{seed}", TASK, profile.name, seed,
                                        experiment_config(profile, source, head, seed))
                result = dense.run_dense(
                    experiment.config["config"],
                    work_dir=dense.work_dir_for(table, profile, f"{source.name}-{head}-seed{seed}",
                                                experiment.config_hash),
                    run_name=experiment.name, profile=profile.name, seed=seed, checkpoint=checkpoint.path,
                    model_name=source.model_name, model_overrides=source.model_overrides, layout=source.layout,
                    data_root=data_root, max_iters=profile.max_steps, batch_size=profile.batch_size,
                    parent_run_id=checkpoint.parent_run_id, parent_config_hash=checkpoint.parent_config_hash,
                    tracking_uri=tracking_uri,
                    tags={"table": table, "head": head, "source": source.name,
                          "experiment_config_hash": experiment.config_hash},
                )
                if not any(key in result.metrics for _, key in METRICS.values()):
                    # CocoMetric returns nothing when no box clears the score threshold: that is AP 0.
                    annotations[f"{head}.{source.name}.seed{seed}.note"] = "no detections: AP 0"
                for metric, (_, key) in METRICS.items():
                    if result.metrics and key not in result.metrics:
                        raise KeyError(
                            f"{experiment.name}: CocoMetric reported no {key!r} (got {sorted(result.metrics)})"
                        )
                    values.setdefault((head, source.name, metric), []).append(100.0 * result.metrics.get(key, 0.0))
                annotations[f"{head}.{source.name}.seed{seed}.run"] = result.run_id
    rows = []
    for head in HEADS:
        for source in sources:
            for metric, (label, _) in METRICS.items():
                component = dense.row_component(source, reference, metric)
                rows.append(ResultRow(head, component, f"{label} — {source.label}",
                                      statistics.fmean(values[(head, source.name, metric)])))
    groups = {head: title for head, (title, _) in HEADS.items()}
    return TableResult(table, groups, tuple(rows), annotations)


def other_rows_table(paper: Mapping[str, Any], columns: Sequence[tuple[str, str]]) -> str:
    """The paper's rows that are not re-run (``other_rows`` of the paper file), as markdown."""
    cells = [[str(row.get(key, report.MISSING)) for key, _ in columns] for row in paper.get("other_rows", [])]
    return report.markdown_table([title for _, title in columns], cells)


def render_dense_table(title: str, summary: str, result: TableResult, paper: Mapping[str, Any],
                       other_columns: Sequence[tuple[str, str]]) -> str:
    """The comparison (ours beside the paper where it has the figure), then the paper's other rows."""
    rows = compare(result, paper)
    text = report.markdown_report(title, summary, comparison_table(rows, result.groups))
    other = other_rows_table(paper, other_columns)
    caption = paper.get("other_rows_caption", "The paper's other rows (not re-run)")
    notes = paper.get("notes", "")
    return text + f"\n{caption}:\n\n{other}\n" + (f"\n{notes}\n" if notes else "")


class DenseTable(TableSpec):
    """A table of mmdet/mmseg runs, one per (pretrained source, head, seed); subclasses name their
    ``plan_experiments`` and ``measure`` functions."""

    plan_experiments = staticmethod(plan_experiments)
    measure = staticmethod(measure)

    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        sources = dense.pretrained_sources(profile, options.recipes, options.ablation)
        return self.plan_experiments(self.name, profile, options.seeds, sources)

    def run(self, profile: Profile, options: RunOptions) -> TableResult:
        sources = dense.pretrained_sources(profile, options.recipes, options.ablation)
        return self.measure(self.name, profile, options.seeds, sources)


@register_table("table7")
class Table7(DenseTable):
    """COCO box/mask AP of BEiT-3-initialised detectors, one row per pretraining recipe and head."""

    def render(self, result: TableResult, paper: Mapping[str, Any]) -> str:
        summary = (
            "Box and mask AP (COCO metric, points) of detectors fine-tuned from each pretraining recipe; the "
            "reference recipe's Cascade Mask R-CNN is compared with the paper's BEiT-3 (giant, Objects365 "
            "intermediate fine-tuning, 1280^2, soft-NMS, multi-scale, COCO test-dev). Synthetic profiles "
            "run a tiny backbone on the benchmark world: they check the pipeline end to end, not the "
            "paper's numbers."
        )
        columns = (("model", "model"), ("extra_data", "extra OD data"), ("max_size", "max size"),
                   ("box_ap", "AP box"), ("mask_ap", "AP mask"))
        return render_dense_table(f"Table 7: {self.title}", summary, result, paper, columns)
