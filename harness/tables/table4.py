"""Table 4: VQAv2, NLVR2 and COCO captioning -- finetuned from each pretraining recipe.

For every pretraining recipe of table3 (BEiT-3 masked data modeling, VLMo staged) and a
no-pretraining baseline, the official finetuning recipe of each task (scaled by the profile) starts
from the recipe's final weights, and the result is scored with the official metric: VQA accuracy,
NLVR2 accuracy, BLEU-4/METEOR/CIDEr (SPICE needs Stanford CoreNLP jars that cannot be fetched
here: reported unavailable). Display scales come from each task's metric specs. The paper's rows
are printed beside ours, not differenced: on the ``mini`` profile ours come from the benchmark
world's splits. Recipes are compared with paired bootstrap intervals (``harness.stats``).
"""
from __future__ import annotations

from typing import Any, Mapping

from harness import report
from harness.experiments import pretraining_configs
from harness.finetune import ensure_finetune, plan_finetunes
from harness.profiles import Profile
from harness.tables import render
from harness.tables.registry import register_table
from harness.tables.types import Experiment, RunOptions, TableResult, TableSpec, experiments_of, measurement
from harness.tables.vl import (
    RECIPE_TITLES,
    control_measurements,
    differences_blocks,
    finetune_measurements,
    grounding_marks,
    run_note,
    seed_cell,
    task_keys,
    world_baselines,
)

TASKS = ("vqav2", "nlvr2", "captioning")
# (column title, row id); the paper's columns map onto the world's splits.
COLUMNS = (
    ("VQAv2 val (test-dev)", "vqav2.val.vqa_accuracy"),
    ("NLVR2 dev", "nlvr2.dev.accuracy"),
    ("NLVR2 test1 (test-P)", "nlvr2.test1.accuracy"),
    ("NLVR2 dev pairwise", "nlvr2.dev.pairwise_accuracy"),
    ("COCO B@4", "captioning.test.BLEU-4"),
    ("COCO M", "captioning.test.METEOR"),
    ("COCO C", "captioning.test.CIDEr"),
    ("COCO S", "captioning.test.SPICE"),
)
# Which paper column each of ours sits under (None: the paper has none, e.g. NLVR2 pairwise accuracy).
PAPER_COLUMN_INDEX = (0, 2, 3, None, 4, 5, 6, 7)
UNAVAILABLE = {"captioning.test.SPICE": "n/a"}  # needs Stanford CoreNLP jars
PRIOR_TITLE = "answer prior only (the world's baseline)"


def prior_rows(profile: Profile) -> list[dict[str, Any]]:
    """The benchmark world's prior-only baselines (its world.json), in our columns' units (percent)."""
    baselines = world_baselines(profile)
    if baselines is None:
        return []
    vqa, nlvr2 = baselines["vqav2"]["per_question_type"], baselines["nlvr2"]["per_template"]
    return [measurement("prior", row, 100 * value, label=row) for row, value in
            (("vqav2.val.vqa_accuracy", vqa), ("nlvr2.dev.accuracy", nlvr2), ("nlvr2.test1.accuracy", nlvr2))]


@register_table("table4")
class Table4(TableSpec):
    compares_recipes = True

    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        finetunes = plan_finetunes(tuple((task, None) for task in TASKS), profile, options.seeds, options.recipes,
                                   options.ablation)
        pretraining = pretraining_configs(profile, options.seeds, options.recipes, options.ablation)
        return experiments_of(pretraining + finetunes, profile)

    def run(self, profile: Profile, options: RunOptions) -> TableResult:
        records, annotations = [], {}
        for recipe in options.recipes:
            for seed in range(options.seeds):
                for task in TASKS:
                    result = ensure_finetune(task, recipe, profile, seed, ablation=options.ablation,
                                             nproc=options.nproc)
                    annotations[f"{recipe}.seed{seed}.{task}"] = run_note(result)
                    records += finetune_measurements(recipe, seed, task, result.metrics, task_keys(task),
                                                     result.run.run_id)
                    records += control_measurements(recipe, seed, task, result.metrics, result.run.run_id)
        records += prior_rows(profile)
        groups = {**{r: RECIPE_TITLES[r] for r in options.recipes}, "prior": PRIOR_TITLE}
        return TableResult.of(self.name, records, groups, annotations)

    def render(self, result: TableResult, paper: Mapping[str, Any]) -> render.Document:
        frame = result.frame
        headers = ["model / pretraining", *[title for title, _ in COLUMNS], "finetune runs"]
        body = []
        for model in paper.get("models", []):
            cells = [None if i is None else model["values"][i] for i in PAPER_COLUMN_INDEX]
            body.append([f"{model['model']} (paper)", *[report.MISSING if c is None else f"{c:.2f}" for c in cells],
                         ""])
        marks = grounding_marks(result)
        for group in result.groups:
            cells = [seed_cell(frame, group, row, missing=UNAVAILABLE.get(row, report.MISSING))
                     + (f" ({marks[group, row]})" if (group, row) in marks else "") for _, row in COLUMNS]
            if group == "prior":
                if any(cell not in (report.MISSING, "n/a") for cell in cells):
                    body.append([PRIOR_TITLE, *cells, "world.json"])
                continue
            runs = "; ".join(f"{task}: {result.annotations.get(f'{group}.seed0.{task}', report.MISSING)}"
                             for task in TASKS)
            body.append([f"ours, {RECIPE_TITLES[group]}", *cells, runs])
        blocks = [
            render.paragraph("Paper rows (real benchmarks, giant model) and ours (this profile's data, each "
                             "pretraining recipe finetuned with the tasks' official recipes, scaled). Mean ± std "
                             "over seeds."),
            render.table(body, headers, align=("l", *["r"] * len(COLUMNS), "l")),
            render.paragraph("SPICE: n/a -- it needs Stanford CoreNLP jars, which cannot be downloaded here."),
            *differences_blocks(result),
            render.paragraph(paper.get("notes", "")),
        ]
        return render.Document(f"Table 4: {self.title}", tuple(blocks))
