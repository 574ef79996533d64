"""Table 7 of BEiT-3 (arXiv 2208.10442): object detection and instance segmentation on COCO.

Each pretraining recipe of table3 (``harness.dense.pretrained_sources``) initialises the backbone of
two detectors -- Cascade Mask R-CNN (the paper's head) and Mask R-CNN (ViTDet's), both on the
ViTDet-style BEiT-3 backbone with the simple feature pyramid -- which are fine-tuned and evaluated
with mmdet's CocoMetric (pycocotools) through ``harness.dense``. Synthetic profiles run the CPU-sized
``configs/det/*_mini.py`` on the benchmark world's COCO-format instances; the ``paper`` profile runs
``configs/det/*_paper.py`` on COCO; the profile picks the heads (``Profile.dense``: mini runs Mask
R-CNN only). No pretraining (random init) is a row like the recipes, and every pair of them is compared
by a paired bootstrap over seeds and validation images, with AP recomputed on each resample from the
runs' kept detections (``harness.dense_items``). The reference recipe's Cascade row is printed beside
the paper's BEiT-3 (63.7 box AP / 54.8 mask AP, test-dev), not differenced; the paper's other rows are
printed for context.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from harness import dense
from harness.profiles import Profile
from harness.tables import dense_tables, render
from harness.tables.registry import register_table
from harness.tables.types import Experiment, TableResult

TASK = "coco_instance_segmentation"
# head key -> (title, config name without the _mini/_paper suffix)
HEADS: dict[str, tuple[str, str]] = {
    "cascade_mask_rcnn": ("Cascade Mask R-CNN + simple pyramid (the paper's head)", "det/beit3_cascade-mask-rcnn"),
    "mask_rcnn": ("Mask R-CNN + simple pyramid (ViTDet's head)", "det/beit3_mask-rcnn"),
}
# metric key -> (label, CocoMetric key); CocoMetric reports AP in [0, 1], the table in points.
METRICS: dict[str, tuple[str, str]] = {"box_ap": ("box AP", "coco/bbox_mAP"), "mask_ap": ("mask AP", "coco/segm_mAP")}
IOU_TYPES = {"box_ap": "bbox", "mask_ap": "segm"}  # pycocotools' iouType of each metric


def experiment_config(profile: Profile, source: dense.PretrainedSource, head: str, seed: int) -> dict[str, Any]:
    """Everything that determines one detector run (hashed into its ``Experiment``)."""
    max_iters, batch_size = dense.table_schedule(profile, "table7")
    return {
        "config": f"{HEADS[head][1]}_{dense.config_variant(profile)}",
        "head": head,
        "source": source.name,
        "source_identity": dict(source.identity),
        "model": source.model_name,
        "model_overrides": dict(source.model_overrides),
        "layout": source.layout,
        "world": profile.world,
        "max_iters": max_iters,
        "batch_size": batch_size,
        "seed": seed,
    }


def plan_experiments(table: str, profile: Profile, seeds: int,
                     sources: Sequence[dense.PretrainedSource]) -> list[Experiment]:
    return dense_tables.plan_experiments(table, profile, seeds, sources, task=TASK,
                                         heads=list(dense.table_heads(profile, table, HEADS)),
                                         config_of=experiment_config)


def measure(table: str, profile: Profile, seeds: int, sources: Sequence[dense.PretrainedSource],
            tracking_uri: str | None = None) -> TableResult:
    """Fine-tune and evaluate every (source, head, seed); one row per seed, in points."""
    data_root = dense.world_data_root(profile, "coco")
    max_iters, batch_size = dense.table_schedule(profile, table)

    def run_one(experiment, source, checkpoint, head, seed, tags):
        result = dense.run_dense(
            experiment.config["config"],
            work_dir=dense.work_dir_for(table, profile, f"{source.name}-{head}-seed{seed}", experiment.config_hash),
            run_name=experiment.name, profile=profile.name, seed=seed, checkpoint=checkpoint.path,
            model_name=source.model_name, model_overrides=source.model_overrides, layout=source.layout,
            data_root=data_root, max_iters=max_iters, batch_size=batch_size,
            parent_run_id=checkpoint.parent_run_id, parent_config_hash=checkpoint.parent_config_hash,
            tracking_uri=tracking_uri, tags=tags,
        )
        notes = {"run": result.run_id}
        if not any(key in result.metrics for _, key in METRICS.values()):
            # CocoMetric returns nothing when no box clears the score threshold: that is AP 0.
            notes["note"] = "no detections: AP 0"
        for metric, (_, key) in METRICS.items():
            if result.metrics and key not in result.metrics:
                raise KeyError(f"{experiment.name}: CocoMetric reported no {key!r} (got {sorted(result.metrics)})")
        values = {metric: 100.0 * result.metrics.get(key, 0.0) for metric, (_, key) in METRICS.items()}
        return values, {metric: (result.run_id, "val") for metric in METRICS}, notes

    def per_image(metric: str, run_id: str, split: str):
        return dense.load_detection_metric(run_id, split, IOU_TYPES[metric], tracking_uri=tracking_uri)

    return dense_tables.measure(table, profile, seeds, sources, task=TASK, heads=dense.table_heads(profile, table, HEADS),
                                metrics={m: label for m, (label, _) in METRICS.items()},
                                config_of=experiment_config, run_one=run_one, per_image=per_image)


@register_table("table7")
class Table7(dense_tables.DenseTable):
    """COCO box/mask AP of BEiT-3-initialised detectors, one row per pretraining recipe and head."""

    plan_experiments = staticmethod(plan_experiments)
    measure = staticmethod(measure)

    def render(self, result: TableResult, paper: Mapping[str, Any]) -> render.Document:
        summary = (
            "Box and mask AP (COCO metric, points) of detectors fine-tuned from each pretraining recipe and from "
            "random init (no pretraining), mean ± std over seeds, then the paired differences between them. The "
            "profile picks the heads (mini: Mask R-CNN on its calibrated schedule; Cascade runs in smoke as a "
            "pipeline check and in paper). The paper's BEiT-3 (giant, Objects365 intermediate fine-tuning, 1280^2, soft-NMS, "
            "multi-scale, COCO test-dev) is printed beside the reference recipe's rows, not differenced: synthetic "
            "profiles run a tiny backbone on the benchmark world, which checks the pipeline end to end, not the "
            "paper's numbers."
        )
        columns = (("model", "model"), ("extra_data", "extra OD data"), ("max_size", "max size"),
                   ("box_ap", "AP box"), ("mask_ap", "AP mask"))
        return dense_tables.render_dense(f"Table 7: {self.title}", summary, result, paper, columns)
