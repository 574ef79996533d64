"""What the retrieval tables (5, 6, 10) share: recall columns, the base spec, the world's chance rows.

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
from harness.finetune import FinetuneResult
from harness.profiles import Profile
from harness.tables import render
from harness.tables.types import RunOptions, TableResult, TableSpec, measurement
from harness.tables.vl import (
    RECIPE_TITLES,
    differences_blocks,
    finetune_measurements,
    run_note,
    seed_cell,
    world_baselines,
)

DATASETS = ("coco", "flickr30k")
WORLD_KEYS = {"coco": "coco_karpathy", "flickr30k": "flickr30k"}  # their entries in world.json
RECALLS = ("tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10")  # I→T (text retrieval), then T→I
CHANCE_TITLE = "chance (the world's baseline)"
ORACLE_TITLE = "oracle ceiling (the scenes' ground truth)"
BASELINE_TITLES = {"oracle": ORACLE_TITLE, "chance": CHANCE_TITLE}


class RetrievalTable(TableSpec):
    """A retrieval table: one row per recipe, R@1/5/10 both ways per dataset. Subclasses say how one
    (recipe, dataset, seed) is measured (``measure``) and what the table is (``intro``)."""

    compares_recipes = True
    datasets: tuple[str, ...] = DATASETS
    intro = ""

    def measure(self, recipe: str, dataset: str, profile: Profile, seed: int,
                nproc: int = 1, ablation: Ablation = ()) -> tuple[FinetuneResult, str]:
        """The run behind one row and the prefix of its metrics (``eval.test``)."""
        raise NotImplementedError

    def run(self, profile: Profile, options: RunOptions) -> TableResult:
        records, annotations = [], {}
        for recipe in options.recipes:
            for seed in range(options.seeds):
                for dataset in self.datasets:
                    result, prefix = self.measure(recipe, dataset, profile, seed, options.nproc, options.ablation)
                    annotations[f"{recipe}.seed{seed}.{dataset}"] = run_note(result)
                    keys = [f"{prefix}.{recall}" for recall in RECALLS]
                    records += finetune_measurements(
                        recipe, seed, "retrieval", result.metrics, keys, result.run.run_id,
                        row_of=lambda key, d=dataset: f"{d}.{key.rsplit('.', 1)[-1]}",
                        label_of=lambda key, d=dataset: f"{d} {key.rsplit('.', 1)[-1]}", required_by=result.run.name)
        records += world_rows(profile, self.datasets)
        groups = {**{r: RECIPE_TITLES[r] for r in options.recipes}, **BASELINE_TITLES}
        return TableResult.of(self.name, records, groups, annotations)

    def render(self, result: TableResult, paper: Mapping[str, Any]) -> render.Document:
        frame = result.frame
        headers = ["model / pretraining", *paper.get("columns", []), "MLflow runs"]
        body = [[m["model"] + " (paper)", *[report.MISSING if v is None else f"{v:.1f}" for v in m["values"]], ""]
                for m in paper.get("models", [])]
        for group in result.groups:
            cells = [seed_cell(frame, group, f"{d}.{r}", digits=1) for d in self.datasets for r in RECALLS]
            if group in BASELINE_TITLES:
                if any(cell != report.MISSING for cell in cells):
                    body.append([BASELINE_TITLES[group], *cells,
                                 "world.json" if group == "chance" else "harness.world.oracle"])
                continue
            runs = "; ".join(f"{d}: {result.annotations.get(f'{group}.seed0.{d}', report.MISSING)}"
                             for d in self.datasets)
            body.append([f"ours, {RECIPE_TITLES[group]}", *cells, runs])
        blocks = [render.paragraph(f"{self.intro}; mean ± std over seeds."),
                  render.table(body, headers, align=("l", *["r"] * (len(headers) - 2), "l")),
                  *differences_blocks(result, digits=1),
                  render.paragraph(paper.get("notes", ""))]
        return render.Document(f"Table {self.name.removeprefix('table')}: {self.title}", tuple(blocks))


def world_rows(profile: Profile, datasets: tuple[str, ...]) -> list[dict[str, Any]]:
    """On the benchmark world: R@1 of a random ranking (its world.json) and every recall of the oracle
    that knows the test scenes (:mod:`harness.world.oracle`), in percent; none on real data."""
    baselines = world_baselines(profile)
    if baselines is None:
        return []
    from harness.experiments import world_manifest
    from harness.world.oracle import world_retrieval_oracle

    manifest = world_manifest(profile.pretrain["data"]["root"])
    rows = []
    for dataset in datasets:
        chance = 100 * baselines[WORLD_KEYS[dataset]]["retrieval_chance_r1"]["test"]
        rows += [measurement("chance", f"{dataset}.{recall}", chance) for recall in ("tr_r1", "ir_r1")]
        oracle = world_retrieval_oracle(dataset, manifest["profile"], manifest["seed"])
        rows += [measurement("oracle", f"{dataset}.{recall}", oracle[recall]) for recall in RECALLS]
    return rows
