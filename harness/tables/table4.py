"""Table 4: VQAv2, NLVR2 and COCO captioning -- finetuned from each pretraining recipe.

For every pretraining recipe of table3 (BEiT-3 masked data modeling, VLMo staged) and a
no-pretraining baseline, the official finetuning recipe of each task (scaled by the profile) starts
from the recipe's final weights, and the result is scored with the official metric: VQA accuracy,
NLVR2 accuracy, BLEU-4/METEOR/CIDEr (SPICE needs Stanford CoreNLP jars that cannot be fetched
here: reported unavailable). The paper's rows are printed beside ours, not differenced: on the
``mini`` profile ours come from the benchmark world's splits.
"""
from __future__ import annotations

from typing import Any, Mapping

from harness import report
from harness.experiments import pretraining_configs
from harness.finetune import ensure_finetune, plan_finetunes
from harness.profiles import Profile
from harness.tables import Experiment, ResultRow, RunOptions, TableResult, TableSpec, experiments_of, register_table
from tasks.data.world_root import world_profile

TASKS = ("vqav2", "nlvr2", "captioning")
RECIPE_TITLES = {"beit3": "BEiT-3 MDM pretraining", "vlmo": "VLMo staged pretraining", "none": "no pretraining"}
# (column title, task, metric key); the paper's columns map onto the world's splits.
COLUMNS = (
    ("VQAv2 val (test-dev)", "vqav2", "eval.val.vqa_accuracy"),
    ("NLVR2 dev", "nlvr2", "eval.dev.accuracy"),
    ("NLVR2 test1 (test-P)", "nlvr2", "eval.test1.accuracy"),
    ("COCO B@4", "captioning", "eval.test.BLEU-4"),
    ("COCO M", "captioning", "eval.test.METEOR"),
    ("COCO C", "captioning", "eval.test.CIDEr"),
    ("COCO S", "captioning", "eval.test.SPICE"),
)
PAPER_COLUMN_INDEX = (0, 2, 3, 4, 5, 6, 7)  # which paper column each of ours sits under
# The captioning scorer reports fractions; the paper prints them x100.
PERCENT_METRICS = ("BLEU-4", "METEOR", "CIDEr", "SPICE")


PRIOR_TITLE = "answer prior only (the world's baseline)"


def prior_rows(profile: Profile) -> list[ResultRow]:
    """The benchmark world's prior-only baselines (its world.json), in our columns' units."""
    root = profile.pretrain.get("data", {}).get("root", "")
    if world_profile(root) is None:
        return []
    from harness.experiments import world_manifest

    baselines = world_manifest(root)["baselines"]
    vqa, nlvr2 = baselines["vqav2"]["per_question_type"], baselines["nlvr2"]["per_template"]
    return [
        ResultRow("prior", "seed0.eval.val.vqa_accuracy", "eval.val.vqa_accuracy", 100 * vqa),
        ResultRow("prior", "seed0.eval.dev.accuracy", "eval.dev.accuracy", 100 * nlvr2),
        ResultRow("prior", "seed0.eval.test1.accuracy", "eval.test1.accuracy", 100 * nlvr2),
    ]


@register_table("table4")
class Table4(TableSpec):
    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        finetunes = plan_finetunes(tuple((task, None) for task in TASKS), profile, options.seeds, options.recipes,
                                   options.ablation)
        pretraining = pretraining_configs(profile, options.seeds, options.recipes, options.ablation)
        return experiments_of(pretraining + finetunes, profile)

    def run(self, profile: Profile, options: RunOptions) -> TableResult:
        rows, annotations = [], {}
        for recipe in options.recipes:
            for seed in range(options.seeds):
                for task in TASKS:
                    result = ensure_finetune(task, recipe, profile, seed, ablation=options.ablation,
                                             nproc=options.nproc)
                    annotations[f"{recipe}.seed{seed}.{task}"] = f"`{result.run.run_id[:8]}` ({result.run.status})"
                    for key, value in result.metrics.items():
                        rows.append(ResultRow(recipe, f"seed{seed}.{key}", key, float(value)))
        rows += prior_rows(profile)
        groups = {**{r: RECIPE_TITLES[r] for r in options.recipes}, "prior": PRIOR_TITLE}
        return TableResult(self.name, groups, tuple(rows), annotations)

    def render(self, result: TableResult, paper: Mapping[str, Any]) -> str:
        values: dict[tuple[str, str], list[float]] = {}
        for row in result.rows:
            seed, key = row.component.split(".", 1)
            values.setdefault((row.group, key), []).append(row.value)
        headers = ["model / pretraining", *[title for title, _, _ in COLUMNS], "finetune runs"]
        body = []
        for model in paper.get("models", []):
            cells = [model["values"][i] for i in PAPER_COLUMN_INDEX]
            body.append([f"{model['model']} (paper)", *["–" if c is None else f"{c:.2f}" for c in cells], ""])
        for recipe in result.groups:
            cells = []
            for _, _task, key in COLUMNS:
                found = values.get((recipe, key))
                if not found:
                    cells.append("n/a" if key.endswith("SPICE") else "–")
                    continue
                scale = 100.0 if key.rsplit(".", 1)[-1] in PERCENT_METRICS else 1.0
                cells.append(report.format_mean_std([scale * v for v in found], digits=2))
            if recipe == "prior":
                if any(cell not in ("–", "n/a") for cell in cells):
                    body.append([PRIOR_TITLE, *cells, "world.json"])
                continue
            runs = "; ".join(f"{task}: {result.annotations.get(f'{recipe}.seed0.{task}', '–')}" for task in TASKS)
            body.append([f"ours, {RECIPE_TITLES[recipe]}", *cells, runs])
        lines = [f"# Table 4: {self.title}", "",
                 "Paper rows (real benchmarks, giant model) and ours (this profile's data, each pretraining "
                 "recipe finetuned with the tasks' official recipes, scaled). Mean ± std over seeds.", ""]
        lines += report.markdown_table(headers, body).splitlines()
        lines += ["", "SPICE: n/a -- it needs Stanford CoreNLP jars, which cannot be downloaded here.",
                  "", paper.get("notes", ""), ""]
        return "\n".join(lines)
