"""Table 9: ImageNet-1K top-1 -- linear head (released code) and class-name retrieval (the paper).

Each pretraining recipe of table3 (and a no-pretraining baseline) is finetuned in both modes with the
official recipe (scaled by the profile): the linear head on mean-pooled patch tokens, and the
paper's dual encoder that classifies by retrieving the class name. Scored top-1/top-5 on the
evaluation split; the paper's rows are printed beside ours, not differenced. Recipes are compared
with paired bootstrap intervals (``harness.stats``).
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
    differences_blocks,
    finetune_measurements,
    run_note,
    seed_cell,
    world_baselines,
)

CLASSIFIERS = {"linear": "linear head", "retrieval": "class-name retrieval"}
METRICS = ("acc1", "acc5")
MAJORITY_TITLE = "majority class (the world's baseline)"


@register_table("table9")
class Table9(TableSpec):
    compares_recipes = True

    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        specs = tuple(("imagenet", None, {"classifier": mode}) for mode in CLASSIFIERS)
        finetunes = plan_finetunes(specs, profile, options.seeds, options.recipes, options.ablation)
        pretraining = pretraining_configs(profile, options.seeds, options.recipes, options.ablation)
        return experiments_of(pretraining + finetunes, profile)

    def run(self, profile: Profile, options: RunOptions) -> TableResult:
        records, annotations = [], {}
        for recipe in options.recipes:
            for seed in range(options.seeds):
                for mode, title in CLASSIFIERS.items():
                    result = ensure_finetune("imagenet", recipe, profile, seed, model_variant={"classifier": mode},
                                             ablation=options.ablation, nproc=options.nproc)
                    annotations[f"{recipe}.seed{seed}.{mode}"] = run_note(result)
                    keys = [f"eval.test.{metric}" for metric in METRICS]
                    records += finetune_measurements(
                        recipe, seed, "imagenet", result.metrics, keys, result.run.run_id,
                        row_of=lambda key, m=mode: f"{m}.{key.rsplit('.', 1)[-1]}",
                        label_of=lambda key, t=title: f"{t} {key.rsplit('.', 1)[-1]}", required_by=result.run.name)
        records += majority_rows(profile)
        groups = {**{r: RECIPE_TITLES[r] for r in options.recipes}, "majority": MAJORITY_TITLE}
        return TableResult.of(self.name, records, groups, annotations)

    def render(self, result: TableResult, paper: Mapping[str, Any]) -> render.Document:
        frame = result.frame
        headers = ["model / pretraining", "classifier", "top-1", "top-5", "finetune run"]
        body = [[m["model"] + " (paper)", "", f"{m['top1']:.1f}", f"{m['top5']:.1f}" if "top5" in m else report.MISSING,
                 ""] for m in paper.get("models", [])]
        for recipe in (g for g in result.groups if g != "majority"):
            for mode, title in CLASSIFIERS.items():
                body.append([f"ours, {RECIPE_TITLES[recipe]}", title, seed_cell(frame, recipe, f"{mode}.acc1", 1),
                             seed_cell(frame, recipe, f"{mode}.acc5", 1),
                             result.annotations.get(f"{recipe}.seed0.{mode}", report.MISSING)])
        majority = seed_cell(frame, "majority", "linear.acc1", 1)
        if majority != report.MISSING:
            body.append([MAJORITY_TITLE, "", majority, report.MISSING, "world.json"])
        blocks = [render.paragraph("Mean ± std over seeds."),
                  render.table(body, headers, align=("l", "l", "r", "r", "l")),
                  *differences_blocks(result, digits=1),
                  render.paragraph(paper.get("notes", ""))]
        return render.Document(f"Table 9: {self.title}", tuple(blocks))


def majority_rows(profile: Profile) -> list[dict[str, Any]]:
    """Top-1 of always predicting the most frequent class on the world's evaluation split, in percent."""
    baselines = world_baselines(profile)
    if baselines is None:
        return []
    return [measurement("majority", "linear.acc1", 100 * baselines["imagenet"]["majority"], label="acc1")]
