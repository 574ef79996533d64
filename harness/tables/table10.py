"""Retrieval tables: 5 (finetuned after the intermediate ITC stage), 6 (zero-shot), 10 (no ITC stage).

From each pretraining recipe of table3 (and a no-pretraining baseline): table10 finetunes retrieval
directly on COCO and Flickr30K (Karpathy splits); table5 first runs the paper's intermediate ITC stage
on the pretraining pairs (App. A) and finetunes from it; table6 scores the ITC-stage model on
Flickr30K without finetuning on it. Evaluation encodes every image and caption once: R@1/5/10 in both
directions, images de-duplicated. The paper's rows (giant, real data) are printed beside ours.
"""
from __future__ import annotations

from typing import Any, Mapping

from harness import report
from harness.ablation import Ablation
from harness.experiments import pretraining_configs
from harness.finetune import (
    FinetuneResult,
    ensure_finetune,
    finetune_config,
    itc_config,
    plan_finetunes,
    zero_shot_retrieval,
)
from harness.profiles import Profile
from harness.tables import Experiment, ResultRow, RunOptions, TableResult, TableSpec, experiments_of, register_table
from tasks.data.world_root import world_profile

DATASETS = ("coco", "flickr30k")
RECALLS = ("tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10")  # I→T (text retrieval), then T→I
RECIPE_TITLES = {"beit3": "BEiT-3 MDM pretraining", "vlmo": "VLMo staged pretraining", "none": "no pretraining"}
CHANCE_TITLE = "chance (the world's baseline)"


@register_table("table10")
class Table10(TableSpec):
    """Retrieval finetuned directly from each pretraining recipe (no intermediate ITC stage)."""

    datasets = DATASETS
    intro = "Retrieval finetuned directly from each pretraining recipe (no intermediate ITC stage)"

    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        pretraining = pretraining_configs(profile, options.seeds, options.recipes, options.ablation)
        pairs = tuple(("retrieval", {"dataset": dataset}) for dataset in self.datasets)
        finetunes = plan_finetunes(pairs, profile, options.seeds, options.recipes, options.ablation)
        return experiments_of(pretraining + finetunes, profile)

    def measure(self, recipe: str, dataset: str, profile: Profile, seed: int,
                nproc: int = 1, ablation: Ablation = ()) -> tuple[FinetuneResult, str]:
        """The run behind one row and the prefix of its metrics."""
        result = ensure_finetune("retrieval", recipe, profile, seed, variant={"dataset": dataset}, ablation=ablation,
                                 nproc=nproc)
        return result, "eval.test"

    def run(self, profile: Profile, options: RunOptions) -> TableResult:
        rows, annotations = [], {}
        for recipe in options.recipes:
            for seed in range(options.seeds):
                for dataset in self.datasets:
                    result, prefix = self.measure(recipe, dataset, profile, seed, options.nproc, options.ablation)
                    annotations[f"{recipe}.seed{seed}.{dataset}"] = f"`{result.run.run_id[:8]}` ({result.run.status})"
                    for recall in RECALLS:
                        value = result.metrics[f"{prefix}.{recall}"]
                        rows.append(ResultRow(recipe, f"seed{seed}.{dataset}.{recall}", recall, float(value)))
        rows += chance_rows(profile)
        groups = {**{r: RECIPE_TITLES[r] for r in options.recipes}, "chance": CHANCE_TITLE}
        return TableResult(self.name, groups, tuple(rows), annotations)

    def render(self, result: TableResult, paper: Mapping[str, Any]) -> str:
        values: dict[tuple[str, str], list[float]] = {}
        for row in result.rows:
            _seed, key = row.component.split(".", 1)
            values.setdefault((row.group, key), []).append(row.value)
        headers = ["model / pretraining", *paper.get("columns", []), "MLflow runs"]
        body = [[m["model"] + " (paper)", *[f"{v:.1f}" for v in m["values"]], ""] for m in paper.get("models", [])]
        for group in result.groups:
            cells = []
            for dataset in self.datasets:
                for recall in RECALLS:
                    found = values.get((group, f"{dataset}.{recall}"))
                    if not found:
                        cells.append("–")
                        continue
                    cells.append(report.format_mean_std(found, digits=1))
            if group == "chance":
                if any(cell != "–" for cell in cells):
                    body.append([CHANCE_TITLE, *cells, "world.json"])
                continue
            runs = "; ".join(f"{d}: {result.annotations.get(f'{group}.seed0.{d}', '–')}" for d in self.datasets)
            body.append([f"ours, {RECIPE_TITLES[group]}", *cells, runs])
        lines = [f"# Table {self.name.removeprefix('table')}: {self.title}", "",
                 f"{self.intro}; mean ± std over seeds.", ""]
        lines += report.markdown_table(headers, body).splitlines()
        return "\n".join(lines + ["", paper.get("notes", ""), ""])


@register_table("table5")
class Table5(Table10):
    """Retrieval finetuned after the paper's intermediate ITC stage on the pretraining pairs."""

    intro = "Retrieval finetuned after the intermediate ITC stage (pretraining pairs, paper App. A)"

    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        ablation = options.ablation
        pretraining = pretraining_configs(profile, options.seeds, options.recipes, ablation)
        seeds = range(options.seeds)
        itc = [itc_config(r, profile, s, ablation) for r in options.recipes for s in seeds]
        finetunes = [finetune_config("retrieval", r, profile, s, {"dataset": d}, None,
                                     itc_config(r, profile, s, ablation), ablation)
                     for r in options.recipes for s in seeds for d in self.datasets]
        return experiments_of(pretraining + itc + finetunes, profile)

    def measure(self, recipe: str, dataset: str, profile: Profile, seed: int,
                nproc: int = 1, ablation: Ablation = ()) -> tuple[FinetuneResult, str]:
        result = ensure_finetune("retrieval", recipe, profile, seed, variant={"dataset": dataset}, after_itc=True,
                                 ablation=ablation, nproc=nproc)
        return result, "eval.test"


@register_table("table6")
class Table6(Table10):
    """Zero-shot Flickr30K retrieval of the ITC-stage model (no finetuning on Flickr30K)."""

    datasets = ("flickr30k",)
    intro = "Zero-shot: the ITC-stage model of each recipe, scored on Flickr30K without finetuning on it"

    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        pretraining = pretraining_configs(profile, options.seeds, options.recipes, options.ablation)
        return experiments_of(pretraining + [itc_config(r, profile, s, options.ablation) for r in options.recipes
                                           for s in range(options.seeds)], profile)

    def measure(self, recipe: str, dataset: str, profile: Profile, seed: int,
                nproc: int = 1, ablation: Ablation = ()) -> tuple[FinetuneResult, str]:
        result = zero_shot_retrieval(recipe, dataset, profile, seed, ablation=ablation, nproc=nproc)
        return result, f"zeroshot.{dataset}.test"


def chance_rows(profile: Profile) -> list[ResultRow]:
    """R@1 of a random ranking on the world's test splits (its world.json), in percent."""
    root = profile.pretrain.get("data", {}).get("root", "")
    if world_profile(root) is None:
        return []
    from harness.experiments import world_manifest

    baselines = world_manifest(root)["baselines"]
    rows = []
    for dataset, key in (("coco", "coco_karpathy"), ("flickr30k", "flickr30k")):
        chance = 100 * baselines[key]["retrieval_chance_r1"]["test"]
        rows += [ResultRow("chance", f"seed0.{dataset}.{recall}", recall, chance) for recall in ("tr_r1", "ir_r1")]
    return rows
