"""compare: BEiT-3 MDM vs VLMo staged vs no pretraining, paired over seeds, on every vision-language task.

A table of the harness's own (the paper reports no such comparison, so there is no paper file). For
every recipe of ``--recipes`` (default ``beit3``, ``vlmo``, ``none``) and seed it needs the runs of
tables 4, 6 and 10 -- VQAv2, NLVR2 and captioning finetunes, retrieval finetuned on COCO and on
Flickr30K, zero-shot Flickr30K after the intermediate ITC stage -- and reuses them when they exist
(same config, same run). With ``--ablation`` every recipe's pretraining is ablated alike.

Per metric: each seed's value and mean ± sample std over seeds for each recipe, and for every pair of
recipes the difference with a 95% interval from a paired hierarchical bootstrap over seeds and item
clusters (``harness.stats``); an interval that covers 0 is "no detectable difference".
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import pandas as pd

from harness import report
from harness.ablation import ablation_label
from harness.budget import run_cost
from harness.experiments import RunRecord, pretraining_configs, recipe_configs
from harness.finetune import ensure_finetune, ensure_parents, itc_config, plan_finetunes, zero_shot_retrieval
from harness.profiles import Profile
from harness.tables import render
from harness.tables.registry import register_table
from harness.tables.types import Experiment, RunOptions, TableResult, TableSpec, experiments_of, measurement
from harness.tables.vl import (
    control_measurements,
    control_rows,
    differences_blocks,
    finetune_measurements,
    run_note,
    values_of,
)

RECIPE_TITLES = {"beit3": "BEiT-3 MDM", "vlmo": "VLMo staged", "none": "no pretraining"}
# The finetunes behind the columns: (measure, task, data variant); the same runs as tables 4 and 10.
FINETUNES = (
    ("vqav2", "vqav2", None),
    ("nlvr2", "nlvr2", None),
    ("captioning", "captioning", None),
    ("coco", "retrieval", {"dataset": "coco"}),
    ("flickr30k", "retrieval", {"dataset": "flickr30k"}),
)
ZERO_SHOT = "flickr30k"  # scored with the ITC-stage model, as table6
# (row id, measure, metric key of its run, task title, metric title); the display scale and the
# direction come from the task's metric spec.
COLUMNS = (
    ("vqav2.val.vqa_accuracy", "vqav2", "eval.val.vqa_accuracy", "VQAv2", "val accuracy"),
    ("nlvr2.dev.accuracy", "nlvr2", "eval.dev.accuracy", "NLVR2", "dev accuracy"),
    ("nlvr2.test1.accuracy", "nlvr2", "eval.test1.accuracy", "NLVR2", "test1 accuracy"),
    ("nlvr2.dev.pairwise_accuracy", "nlvr2", "eval.dev.pairwise_accuracy", "NLVR2", "dev pairwise accuracy"),
    ("captioning.test.CIDEr", "captioning", "eval.test.CIDEr", "captioning", "test CIDEr"),
    ("captioning.test.BLEU-4", "captioning", "eval.test.BLEU-4", "captioning", "test BLEU-4"),
    ("coco.test.tr_r1", "coco", "eval.test.tr_r1", "COCO retrieval", "TR@1"),
    ("coco.test.ir_r1", "coco", "eval.test.ir_r1", "COCO retrieval", "IR@1"),
    ("flickr30k.test.tr_r1", "flickr30k", "eval.test.tr_r1", "Flickr30K retrieval", "TR@1"),
    ("flickr30k.test.ir_r1", "flickr30k", "eval.test.ir_r1", "Flickr30K retrieval", "IR@1"),
    ("zeroshot.flickr30k.tr_r1", "zeroshot", f"zeroshot.{ZERO_SHOT}.test.tr_r1", "Flickr30K zero-shot", "TR@1"),
    ("zeroshot.flickr30k.ir_r1", "zeroshot", f"zeroshot.{ZERO_SHOT}.test.ir_r1", "Flickr30K zero-shot", "IR@1"),
)
TASK_OF = {measure: task for measure, task, _ in FINETUNES} | {"zeroshot": "retrieval"}
COUNTS = ("images", "texts", "pairs")
MIN_SEEDS = 3  # fewer give a coarse seed level of the bootstrap


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"


def summarize(differences: pd.DataFrame, labels: Mapping[str, str], seeds: int) -> str:
    """Which recipe is better where, from the paired intervals (one sentence per pair of recipes).

    Args:
        differences: ``harness.stats.DIFFERENCE_COLUMNS`` rows.
        labels: row id -> "task metric" title.
        seeds: seeds per recipe (sets the caveat about the seed level).
    """
    from harness.stats import verdict

    from harness.tables.vl import metric_spec

    if not differences.empty:
        differences = differences[~control_rows(differences)]
    if differences.empty:
        return "No paired difference was computed (no metric with per-item results)."
    sentences = []
    for (a, b), rows in differences.groupby(["recipe_a", "recipe_b"], sort=False):
        title_a, title_b = RECIPE_TITLES.get(a, a), RECIPE_TITLES.get(b, b)
        said = {title_a: [], title_b: [], "no detectable difference": [], "not computed": []}
        for row in rows.to_dict("records"):
            text = verdict(row, RECIPE_TITLES, metric_spec(row["task"], row["metric"]).higher_is_better)
            name = labels.get(row["row"], row["label"])
            if text.endswith(" better"):
                said[text.removesuffix(" better")].append(name)
            elif text.startswith("not computed"):
                said["not computed"].append(name)
            else:
                said["no detectable difference"].append(name)
        parts = [f"{title_a} vs {title_b} ({len(rows)} metrics):"]
        for who in (title_a, title_b):
            if said[who]:
                parts.append(f"{who} better on {_join(said[who])};")
        if said["no detectable difference"]:
            parts.append(f"no detectable difference on {_join(said['no detectable difference'])};")
        if said["not computed"]:
            parts.append(f"not computed (no per-item results) on {_join(said['not computed'])};")
        sentences.append(" ".join(parts).rstrip(";") + ".")
    if seeds < MIN_SEEDS:
        sentences.append(f"With {seeds} seed(s) the seed level of the intervals is coarse: run --seeds {MIN_SEEDS} "
                         "or more.")
    return " ".join(sentences)


def compute_rows(recipe: str, seed: int, records: Sequence[RunRecord], flops: Sequence[float]) -> list[dict[str, Any]]:
    """What each pretraining stage consumed: its run's ``data.*`` metrics (as table3 reads them) and
    ``flops``, the stage's counted pretraining FLOPs (``harness.budget.run_cost``)."""
    def row(name: str, value: float) -> dict[str, Any]:
        return measurement(recipe, f"pretrain.{name}", value, label=name.rsplit(".", 1)[-1], recipe=recipe,
                           seed=seed, metric=name.rsplit(".", 1)[-1])

    rows = [row("stages", float(len(records)))]
    for stage, record in enumerate(records, start=1):
        samples = sum(record.metrics.get(f"data.{name}", 0.0) for name in COUNTS)
        rows += [row(f"stage{stage}.steps", record.metrics.get("data.steps", 0.0)),
                 row(f"stage{stage}.samples", samples)]
    rows.append(row("flops", float(sum(flops))))
    for name in COUNTS:
        rows.append(row(name, sum(r.metrics.get(f"data.{name}", 0.0) for r in records)))
    return rows


@register_table("compare")
class CompareRecipes(TableSpec):
    """Pretraining recipes against each other (and no pretraining) on every vision-language task."""

    compares_recipes = True

    @property
    def paper_rows(self) -> dict[str, Any]:
        return {}  # the paper reports no such comparison

    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        ablation, seeds = options.ablation, range(options.seeds)
        pretraining = pretraining_configs(profile, options.seeds, options.recipes, ablation)
        finetunes = plan_finetunes(tuple((task, variant) for _, task, variant in FINETUNES), profile,
                                   options.seeds, options.recipes, ablation)
        itc = [itc_config(recipe, profile, seed, ablation) for recipe in options.recipes for seed in seeds]
        return experiments_of(pretraining + finetunes + itc, profile)

    def run(self, profile: Profile, options: RunOptions) -> TableResult:
        ablation, nproc = options.ablation, options.nproc
        records: list[dict[str, Any]] = []
        annotations = {"ablation": ablation_label(ablation), "profile": profile.name, "seeds": str(options.seeds)}
        for recipe in options.recipes:
            for seed in range(options.seeds):
                parents = ensure_parents(recipe, profile, seed, None, nproc, ablation)
                configs = recipe_configs(recipe, profile, seed, ablation) if parents else []
                records += compute_rows(recipe, seed, parents, [run_cost(cfg, nproc)[1] for cfg in configs])
                results = {measure: ensure_finetune(task, recipe, profile, seed, variant=variant, ablation=ablation,
                                                    nproc=nproc) for measure, task, variant in FINETUNES}
                results["zeroshot"] = zero_shot_retrieval(recipe, ZERO_SHOT, profile, seed, ablation=ablation,
                                                          nproc=nproc)
                for measure, result in results.items():
                    annotations[f"{recipe}.seed{seed}.{measure}"] = run_note(result)
                    records += control_measurements(recipe, seed, TASK_OF[measure], result.metrics,
                                                    result.run.run_id)
                for column, measure, key, task_title, metric_title in COLUMNS:
                    metrics = results[measure].metrics
                    if key not in metrics:
                        raise KeyError(f"{results[measure].run.name}: no metric {key!r} (got {sorted(metrics)})")
                    records += finetune_measurements(recipe, seed, TASK_OF[measure], metrics, [key],
                                                     results[measure].run.run_id, row_of=lambda _k, c=column: c,
                                                     label_of=lambda _k, t=f"{task_title} {metric_title}": t)
        return TableResult.of(self.name, records, {r: RECIPE_TITLES[r] for r in options.recipes}, annotations)

    def render(self, result: TableResult, paper: Mapping[str, Any]) -> render.Document:
        frame = result.frame
        recipes = list(result.groups)
        seeds = int(result.annotations.get("seeds", "1"))
        ablation = result.annotations.get("ablation", "")
        title = f"compare: {self.title}" + (f" — ablation {ablation}" if ablation else "")
        pretraining = f"ablated alike in every recipe: {ablation}." if ablation else "as the recipes define it."
        profile = result.annotations.get("profile", "?")
        body = []
        for column, _measure, _key, task, metric in COLUMNS:
            cells = []
            for recipe in recipes:
                values = values_of(frame, recipe, column)
                cells.append(report.format_mean_std(values) + " (" + " / ".join(f"{v:.2f}" for v in values) + ")"
                             if values else report.MISSING)
            body.append([task, metric, *cells])
        labels = {column: f"{task} {metric}" for column, _, _, task, metric in COLUMNS}
        statuses = [text.rsplit("(", 1)[-1].rstrip(")") for key, text in result.annotations.items()
                    if key.split(".")[0] in result.groups]
        blocks = [
            render.paragraph(f"Profile {profile}, {seeds} seed(s) per recipe, paired (the same seed gives every "
                             f"recipe the same finetune data order); pretraining {pretraining}"),
            render.heading("Pretraining compute"),
            render.paragraph("What each recipe's pretraining consumed (seed 0): optimizer steps, samples per step, "
                             "samples seen per stream and FLOPs (forward + backward per optimizer step, counted with "
                             "FlopCounterMode; harness/budget.py), which the recipes are matched on unless "
                             "--ablation budget=samples|steps."),
            self._compute_table(frame, recipes),
            render.heading("Results"),
            render.paragraph("Mean ± sample std over seeds, then each seed's value in seed order (display units of "
                             "each task's metric spec: accuracy and recall in percent, captioning scores × 100)."),
            render.table(body, ["task", "metric", *[result.groups[r] for r in recipes]],
                         align=("l", "l", *["r"] * len(recipes))),
            render.heading("Which is better where"),
            render.paragraph(summarize(result.differences, labels, seeds)),
            *differences_blocks(result, RECIPE_TITLES),
        ]
        if statuses:
            counts = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
            blocks.append(render.paragraph(f"Finetune and ITC runs (MLflow experiment beit3-finetune): {counts}."))
        return render.Document(title, tuple(blocks))

    @staticmethod
    def _compute_table(frame: pd.DataFrame, recipes: Sequence[str]) -> render.Block:
        def first(recipe: str, key: str) -> float:
            values = values_of(frame, recipe, f"pretrain.{key}")
            return values[0] if values else 0.0

        body = []
        for recipe in recipes:
            stages = int(first(recipe, "stages"))
            per_stage = []
            for stage in range(1, stages + 1):
                steps, samples = first(recipe, f"stage{stage}.steps"), first(recipe, f"stage{stage}.samples")
                per_stage.append(f"{steps:,.0f} × {samples / steps:,.0f}" if steps else report.MISSING)
            counts = [first(recipe, name) for name in COUNTS]
            body.append([RECIPE_TITLES.get(recipe, recipe), str(stages), " + ".join(per_stage) or report.MISSING,
                         report.format_number(sum(counts)), *[report.format_number(c) for c in counts],
                         f"{first(recipe, 'flops'):.3e}"])
        headers = ["recipe", "stages", "steps × samples per step", "samples seen", *COUNTS, "FLOPs"]
        return render.table(body, headers)
