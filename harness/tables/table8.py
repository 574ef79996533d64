"""Table 8 of BEiT-3 (arXiv 2208.10442): semantic segmentation on ADE20K, single- and multi-scale mIoU.

Each pretraining recipe of table3 (``harness.dense.pretrained_sources``) initialises the backbone of
two segmentors -- Mask2Former (the paper's head; Feature2Pyramid stands in for the paper's
ViT-Adapter) and UperNet (the BEiT comparison point) -- fine-tuned through ``harness.dense``. The
single-scale mIoU is the validation at the end of training; the multi-scale one tests the trained
checkpoint with mmseg's ``SegTTAModel`` (the config's ``tta_pipeline``: several scales x flip), as a
second MLflow run whose parent is the training run. Synthetic profiles run ``configs/seg/*_mini.py``
on the benchmark world's ADE20K-format set; ``paper`` runs ``configs/seg/*_paper.py`` on ADE20K. No
pretraining (random init) is a row like the recipes; every pair of them is compared by a paired
bootstrap over seeds and validation images, mIoU recomputed on each resample from the runs' per-image
counts (``harness.dense_items``).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from harness import dense
from harness.profiles import Profile
from harness.tables import dense_tables, render
from harness.tables.registry import register_table
from harness.tables.types import Experiment, TableResult

TASK = "ade20k_semantic_segmentation"
HEADS: dict[str, tuple[str, str]] = {
    "mask2former": ("Mask2Former + Feature2Pyramid (the paper's head; ViT-Adapter not reproduced)",
                    "seg/beit3_mask2former"),
    "upernet": ("UperNet + Feature2Pyramid (the BEiT comparison point)", "seg/beit3_upernet"),
}
METRICS: dict[str, str] = {"miou_ss": "mIoU single-scale", "miou_ms": "mIoU multi-scale + flip"}
METRIC_KEY = "mIoU"  # mmseg's IoUMetric, already in points


def experiment_config(profile: Profile, source: dense.PretrainedSource, head: str, seed: int) -> dict[str, Any]:
    """Everything that determines one segmentor run (hashed into its ``Experiment``)."""
    max_iters, batch_size = dense.table_schedule(profile, "table8")
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
        "evaluation": ["single-scale", "tta"],
    }


def plan_experiments(table: str, profile: Profile, seeds: int,
                     sources: Sequence[dense.PretrainedSource]) -> list[Experiment]:
    return dense_tables.plan_experiments(table, profile, seeds, sources, task=TASK,
                                         heads=list(dense.table_heads(profile, table, HEADS)),
                                         config_of=experiment_config)


def measure(table: str, profile: Profile, seeds: int, sources: Sequence[dense.PretrainedSource],
            tracking_uri: str | None = None) -> TableResult:
    """Fine-tune, validate (single scale) and TTA-test every (source, head, seed); one row per seed."""
    data_root = dense.world_data_root(profile, "ade")
    max_iters, batch_size = dense.table_schedule(profile, table)

    def run_one(experiment, source, checkpoint, head, seed, tags):
        work_dir = dense.work_dir_for(table, profile, f"{source.name}-{head}-seed{seed}", experiment.config_hash)
        common = dict(profile=profile.name, seed=seed, model_name=source.model_name,
                      model_overrides=source.model_overrides, layout=source.layout, data_root=data_root,
                      tracking_uri=tracking_uri)
        trained = dense.run_dense(
            experiment.config["config"], work_dir=work_dir / "train", run_name=experiment.name,
            checkpoint=checkpoint.path, max_iters=max_iters, batch_size=batch_size,
            parent_run_id=checkpoint.parent_run_id, parent_config_hash=checkpoint.parent_config_hash,
            tags=tags, **common,
        )
        if trained.checkpoint is None:
            raise FileNotFoundError(f"{experiment.name}: the training run saved no checkpoint in {work_dir}")
        tested = dense.run_dense(
            experiment.config["config"], work_dir=work_dir / "tta", run_name=f"{experiment.name}/tta",
            mode="test", load_from=trained.checkpoint, tta=True, parent_run_id=trained.run_id,
            parent_config_hash=trained.config_hash, tags=tags, **common,
        )
        values = {}
        for metric, result in (("miou_ss", trained), ("miou_ms", tested)):
            if METRIC_KEY not in result.metrics:
                raise KeyError(f"{experiment.name}: IoUMetric reported no {METRIC_KEY!r} (got {sorted(result.metrics)})")
            values[metric] = result.metrics[METRIC_KEY]
        runs = {"miou_ss": (trained.run_id, "val"), "miou_ms": (tested.run_id, "test")}
        return values, runs, {"run": trained.run_id, "tta_run": tested.run_id}

    def per_image(metric: str, run_id: str, split: str):
        return dense.load_segmentation_metric(run_id, split, tracking_uri=tracking_uri)

    return dense_tables.measure(table, profile, seeds, sources, task=TASK, heads=dense.table_heads(profile, table, HEADS),
                                metrics=METRICS, config_of=experiment_config, run_one=run_one, per_image=per_image)


@register_table("table8")
class Table8(dense_tables.DenseTable):
    """ADE20K mIoU (single- and multi-scale) of BEiT-3-initialised segmentors."""

    plan_experiments = staticmethod(plan_experiments)
    measure = staticmethod(measure)

    def render(self, result: TableResult, paper: Mapping[str, Any]) -> render.Document:
        summary = (
            "mIoU (points) of segmentors fine-tuned from each pretraining recipe and from random init (no "
            "pretraining), single-scale and with multi-scale + flip testing, mean ± std over seeds, then the paired "
            "differences between them. The paper's BEiT-3 (giant, ViT-Adapter + "
            "Mask2Former, 896^2 crops, ADE20K val) is printed beside the reference recipe's rows, not differenced: "
            "synthetic profiles run a tiny backbone on the benchmark world, which checks the pipeline end to end, "
            "not the paper's numbers."
        )
        columns = (("model", "model"), ("crop", "crop size"), ("miou_ss", "mIoU"), ("miou_ms", "+MS"))
        return dense_tables.render_dense(f"Table 8: {self.title}", summary, result, paper, columns)
