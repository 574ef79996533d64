"""Table 9: ImageNet-1K top-1 -- linear head (released code) and class-name retrieval (the paper).

Each pretraining recipe of table3 (and a no-pretraining baseline) is finetuned in both modes with the
official recipe (scaled by the profile): the linear head on mean-pooled patch tokens, and the
paper's dual encoder that classifies by retrieving the class name. Scored top-1/top-5 on the
evaluation split; the paper's rows are printed beside ours, not differenced.
"""
from __future__ import annotations

from typing import Any, Mapping

from harness import report
from harness.experiments import pretraining_configs
from harness.finetune import ensure_finetune, plan_finetunes
from harness.profiles import Profile
from harness.tables import Experiment, ResultRow, RunOptions, TableResult, TableSpec, experiments_of, register_table
from tasks.data.world_root import world_profile

CLASSIFIERS = {"linear": "linear head", "retrieval": "class-name retrieval"}
RECIPE_TITLES = {"beit3": "BEiT-3 MDM pretraining", "vlmo": "VLMo staged pretraining", "none": "no pretraining"}
MAJORITY_TITLE = "majority class (the world's baseline)"


@register_table("table9")
class Table9(TableSpec):
    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        specs = tuple(("imagenet", None, {"classifier": mode}) for mode in CLASSIFIERS)
        finetunes = plan_finetunes(specs, profile, options.seeds, options.recipes, options.ablation)
        pretraining = pretraining_configs(profile, options.seeds, options.recipes, options.ablation)
        return experiments_of(pretraining + finetunes, profile)

    def run(self, profile: Profile, options: RunOptions) -> TableResult:
        rows, annotations = [], {}
        for recipe in options.recipes:
            for seed in range(options.seeds):
                for mode in CLASSIFIERS:
                    result = ensure_finetune("imagenet", recipe, profile, seed, model_variant={"classifier": mode},
                                             ablation=options.ablation, nproc=options.nproc)
                    annotations[f"{recipe}.seed{seed}.{mode}"] = f"`{result.run.run_id[:8]}` ({result.run.status})"
                    for metric in ("acc1", "acc5"):
                        value = result.metrics[f"eval.test.{metric}"]
                        rows.append(ResultRow(recipe, f"seed{seed}.{mode}.{metric}", metric, float(value)))
        rows += majority_rows(profile)
        groups = {**{r: RECIPE_TITLES[r] for r in options.recipes}, "majority": MAJORITY_TITLE}
        return TableResult(self.name, groups, tuple(rows), annotations)

    def render(self, result: TableResult, paper: Mapping[str, Any]) -> str:
        values: dict[tuple[str, str], list[float]] = {}
        for row in result.rows:
            _seed, key = row.component.split(".", 1)
            values.setdefault((row.group, key), []).append(row.value)

        def cell(group: str, key: str) -> str:
            found = values.get((group, key))
            if not found:
                return "–"
            return report.format_mean_std(found, digits=1)

        headers = ["model / pretraining", "classifier", "top-1", "top-5", "finetune run"]
        body = [[m["model"] + " (paper)", "", f"{m['top1']:.1f}", f"{m['top5']:.1f}" if "top5" in m else "–", ""]
                for m in paper.get("models", [])]
        for recipe in (g for g in result.groups if g != "majority"):
            for mode, title in CLASSIFIERS.items():
                body.append([f"ours, {RECIPE_TITLES[recipe]}", title, cell(recipe, f"{mode}.acc1"),
                             cell(recipe, f"{mode}.acc5"), result.annotations.get(f"{recipe}.seed0.{mode}", "–")])
        if ("majority", "linear.acc1") in values:
            body.append([MAJORITY_TITLE, "", cell("majority", "linear.acc1"), "–", "world.json"])
        lines = [f"# Table 9: {self.title}", "", "Mean ± std over seeds.", ""]
        lines += report.markdown_table(headers, body).splitlines()
        return "\n".join(lines + ["", paper.get("notes", ""), ""])


def majority_rows(profile: Profile) -> list[ResultRow]:
    """Top-1 of always predicting the most frequent class on the world's evaluation split, in percent."""
    root = profile.pretrain.get("data", {}).get("root", "")
    if world_profile(root) is None:
        return []
    from harness.experiments import world_manifest

    majority = 100 * world_manifest(root)["baselines"]["imagenet"]["majority"]
    return [ResultRow("majority", "seed0.linear.acc1", "acc1", majority)]
