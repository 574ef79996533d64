"""Table 10: image-text retrieval finetuned without the intermediate ITC stage (paper App. A).

Each pretraining recipe of table3 (and a no-pretraining baseline) is finetuned for retrieval directly
on COCO and on Flickr30K (Karpathy splits) with the official recipe (scaled by the profile), then
evaluated by encoding every image and caption once: R@1/5/10 in both directions, images
de-duplicated. The paper's rows (giant, real data) are printed beside ours, not differenced.
"""
from __future__ import annotations

from typing import Any, Mapping

from harness import report
from harness.experiments import RECIPES, recipe_configs
from harness.finetune import PRETRAINING_RECIPES, ensure_finetune, plan_finetunes
from harness.profiles import Profile
from harness.tables import Experiment, ResultRow, TableResult, TableSpec, register_table

DATASETS = ("coco", "flickr30k")
RECALLS = ("tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10")  # I→T (text retrieval), then T→I
RECIPE_TITLES = {"beit3": "BEiT-3 MDM pretraining", "vlmo": "VLMo staged pretraining", "none": "no pretraining"}
CHANCE_TITLE = "chance (the world's baseline)"


@register_table("table10")
class Table10(TableSpec):
    def plan(self, profile: Profile, seeds: int) -> list[Experiment]:
        experiments = [
            Experiment(name=cfg.run_name, task=cfg.task, profile=profile.name, seed=seed, config=cfg.semantic_dict())
            for recipe in RECIPES for seed in range(seeds) for cfg in recipe_configs(recipe, profile, seed)
        ]
        pairs = tuple(("retrieval", {"dataset": dataset}) for dataset in DATASETS)
        return experiments + [
            Experiment(name=cfg.run_name, task=task, profile=profile.name, seed=seed, config=cfg.semantic_dict())
            for task, _recipe, seed, cfg in plan_finetunes(pairs, profile, seeds)
        ]

    def run(self, profile: Profile, seeds: int) -> TableResult:
        rows, annotations = [], {}
        for recipe in PRETRAINING_RECIPES:
            for seed in range(seeds):
                for dataset in DATASETS:
                    result = ensure_finetune("retrieval", recipe, profile, seed, variant={"dataset": dataset})
                    annotations[f"{recipe}.seed{seed}.{dataset}"] = f"`{result.run.run_id[:8]}` ({result.run.status})"
                    for recall in RECALLS:
                        value = result.metrics[f"eval.test.{recall}"]
                        rows.append(ResultRow(recipe, f"seed{seed}.{dataset}.{recall}", recall, float(value)))
        rows += chance_rows(profile)
        groups = {**{r: RECIPE_TITLES[r] for r in PRETRAINING_RECIPES}, "chance": CHANCE_TITLE}
        return TableResult(self.name, groups, tuple(rows), annotations)

    def render(self, result: TableResult, paper: Mapping[str, Any]) -> str:
        values: dict[tuple[str, str], list[float]] = {}
        for row in result.rows:
            _seed, key = row.component.split(".", 1)
            values.setdefault((row.group, key), []).append(row.value)
        headers = ["model / pretraining", *paper.get("columns", []), "finetune runs"]
        body = [[m["model"] + " (paper)", *[f"{v:.1f}" for v in m["values"]], ""] for m in paper.get("models", [])]
        for group in (*PRETRAINING_RECIPES, "chance"):
            cells = []
            for dataset in DATASETS:
                for recall in RECALLS:
                    found = values.get((group, f"{dataset}.{recall}"))
                    if not found:
                        cells.append("–")
                        continue
                    mean = sum(found) / len(found)
                    spread = (max(found) - min(found)) / 2 if len(found) > 1 else None
                    cells.append(f"{mean:.1f}" + (f" ± {spread:.1f}" if spread is not None else ""))
            if group == "chance":
                if any(cell != "–" for cell in cells):
                    body.append([CHANCE_TITLE, *cells, "world.json"])
                continue
            runs = "; ".join(f"{d}: {result.annotations.get(f'{group}.seed0.{d}', '–')}" for d in DATASETS)
            body.append([f"ours, {RECIPE_TITLES[group]}", *cells, runs])
        lines = [f"# Table 10: {self.title}", "",
                 "Retrieval finetuned directly from each pretraining recipe (no intermediate ITC stage); "
                 "mean ± half-range over seeds.", ""]
        lines += report.markdown_table(headers, body).splitlines()
        return "\n".join(lines + ["", paper.get("notes", ""), ""])


def chance_rows(profile: Profile) -> list[ResultRow]:
    """R@1 of a random ranking on the world's test splits (its world.json), in percent."""
    root = profile.pretrain.get("data", {}).get("root", "")
    if not (isinstance(root, str) and root.startswith("world:")):
        return []
    from harness.experiments import world_manifest

    baselines = world_manifest(root)["baselines"]
    rows = []
    for dataset, key in (("coco", "coco_karpathy"), ("flickr30k", "flickr30k")):
        chance = 100 * baselines[key]["retrieval_chance_r1"]["test"]
        rows += [ResultRow("chance", f"seed0.{dataset}.{recall}", recall, chance) for recall in ("tr_r1", "ir_r1")]
    return rows
