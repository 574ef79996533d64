"""Table 3: pretraining data -- and our pretraining experiment, whose checkpoints later tables use.

The paper's Table 3 lists the pretraining sources (21M pairs, 14M images, 160GB text). Here it is
printed beside what this run consumed by the two recipes, BEiT-3's masked data modeling (one stage,
every step images + texts + pairs) and VLMo's staged recipe (images, then texts with attention
frozen, then pairs with ITC + ITM + MLM). The recipes are run at equal pretraining FLOPs (counted per
optimizer step with FlopCounterMode, ``harness/budget.py``; ``--ablation budget=samples|steps`` for
the other definitions), and the table prints what each stage used: optimizer steps, samples, FLOPs
and wall time per seed (``results/table3.csv``, one row per stage). Finished runs with the same
config hash are reused, not recomputed.
"""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from harness import report
from harness.budget import run_cost
from harness.experiments import RECIPES, RunRecord, ensure_recipe, pretraining_configs, recipe_configs
from harness.profiles import Profile
from harness.tables import render
from harness.tables.registry import register_table
from harness.tables.types import Experiment, RunOptions, TableResult, TableSpec, experiments_of, measurement

RECIPE_TITLES = {"beit3": "BEiT-3 masked data modeling", "vlmo": "VLMo staged (image → text → image-text)"}
COUNTS = ("images", "texts", "pairs", "text_tokens", "pair_text_tokens")
STAGE_COLUMNS = ("optimizer_steps", "samples", "flops", "wall_time_s")


def _sum(records: list[RunRecord], key: str) -> float:
    return sum(r.metrics.get(key, 0.0) for r in records)


@register_table("table3")
class Table3(TableSpec):
    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        return experiments_of(pretraining_configs(profile, options.seeds, options.recipes, options.ablation), profile)

    def run(self, profile: Profile, options: RunOptions) -> TableResult:
        records: list[dict[str, Any]] = []
        groups: dict[str, str] = {}
        annotations: dict[str, str] = {}
        for recipe in options.pretraining_recipes:
            groups[recipe] = RECIPE_TITLES[recipe]
            for seed in range(options.seeds):
                runs = ensure_recipe(recipe, profile, seed, ablation=options.ablation, nproc=options.nproc)
                prefix = f"seed{seed}."
                annotations[f"{recipe}.{prefix}runs"] = ", ".join(f"{r.run_id[:8]} ({r.status})" for r in runs)
                values = {
                    "stages": len(runs),
                    "steps": _sum(runs, "data.steps"),
                    "wall_time_s": _sum(runs, "wall_time_s"),
                    **{name: _sum(runs, f"data.{name}") for name in COUNTS},
                }
                values["samples"] = values["images"] + values["texts"] + values["pairs"]
                values["samples_per_s"] = values["samples"] / max(values["wall_time_s"], 1e-9)
                for stage, record in enumerate(runs, start=1):
                    values[f"final_loss.stage{stage}"] = record.metrics.get("final.loss", float("nan"))
                configs = recipe_configs(recipe, profile, seed, options.ablation)
                for cfg, record in zip(configs, runs):
                    stage = cfg.trainable or "mdm"
                    values[f"{stage}.optimizer_steps"] = record.metrics.get("data.steps", float(cfg.max_steps))
                    values[f"{stage}.samples"] = sum(record.metrics.get(f"data.{n}", 0.0) for n in ("images", "texts", "pairs"))
                    values[f"{stage}.flops"] = float(run_cost(cfg, options.nproc)[1])
                    values[f"{stage}.wall_time_s"] = record.metrics.get("wall_time_s", float("nan"))
                values["flops"] = sum(v for k, v in values.items() if k.endswith(".flops"))
                records += [measurement(recipe, name, value, recipe=recipe, seed=seed, metric=name,
                                        run_id=runs[-1].run_id) for name, value in values.items()]
        return TableResult.of(self.name, records, groups, annotations)

    def csv_frame(self, result: TableResult) -> pd.DataFrame:
        """One row per pretraining stage: recipe, seed, stage, optimizer_steps, samples, flops, wall_time_s."""
        frame = result.frame
        parts = frame["row"].str.rpartition(".")
        staged = frame.assign(stage=parts[0], column=parts[2])
        staged = staged[(staged["stage"] != "") & staged["column"].isin(STAGE_COLUMNS)]
        table = (staged.pivot_table(index=["recipe", "seed", "stage"], columns="column", values="value", sort=False)
                 .reindex(columns=list(STAGE_COLUMNS)).reset_index())
        table = table.astype({c: "int64" for c in STAGE_COLUMNS[:3]})
        table.columns.name = None
        return table

    def render(self, result: TableResult, paper: Mapping[str, Any]) -> render.Document:
        frame = result.frame

        def value(recipe: str, seed: int, name: str) -> float:
            found = frame[(frame["group"] == recipe) & (frame["seed"] == seed) & (frame["row"] == name)]
            return float(found["value"].iloc[0]) if len(found) else float("nan")

        seen = {"pair": ("pairs", "pair_text_tokens"), "image": ("images", None), "text": ("texts", "text_tokens")}
        sources = []
        for source in paper.get("sources", []):
            count, tokens = seen[source["stream"]]
            cells = []
            for recipe in RECIPES:
                n = value(recipe, 0, count)
                text = f"{report.format_number(0.0 if n != n else n)} {count}"
                if tokens:
                    t = value(recipe, 0, tokens)
                    text += f" ({report.format_number(0.0 if t != t else t)} tokens)"
                cells.append(text)
            sources.append([source["data"], source["sources"], source["size"], *cells])
        header = ["recipe", "seed", "stages", "optimizer steps", "samples", "FLOPs", "wall time (s)", "samples/s",
                  "final loss per stage", "MLflow runs (status)"]
        body = []
        for recipe in RECIPES:
            for seed in sorted(int(s) for s in frame.loc[frame["group"] == recipe, "seed"].dropna().unique()):
                stages = int(value(recipe, seed, "stages"))
                losses = " / ".join(f"{value(recipe, seed, f'final_loss.stage{i}'):.3f}" for i in range(1, stages + 1))
                body.append([RECIPE_TITLES[recipe], str(seed), str(stages),
                             report.format_number(value(recipe, seed, "steps")),
                             report.format_number(value(recipe, seed, "samples")), f"{value(recipe, seed, 'flops'):.3e}",
                             f"{value(recipe, seed, 'wall_time_s'):.1f}", f"{value(recipe, seed, 'samples_per_s'):.1f}",
                             losses, result.annotations.get(f"{recipe}.seed{seed}.runs", report.MISSING)])
        pretraining = paper.get("pretraining", {})
        steps = pretraining.get("steps", report.MISSING)
        blocks = [
            render.paragraph("Paper (pretraining data of BEiT-3 giant) beside the data this run consumed (seed 0)."),
            render.table(sources, ["data", "paper sources", "paper size", "BEiT-3 MDM (this run)",
                                   "VLMo staged (this run)"], align=("l", "l", "l", "r", "r")),
            render.paragraph("What each recipe's pretraining consumed, per seed. The recipes are matched on pretraining "
                             "FLOPs (forward + backward of every pass per optimizer step, counted with "
                             "FlopCounterMode; harness/budget.py) unless --ablation budget=samples|steps; results/table3.csv "
                             "has them per stage."),
            render.table(body, header, align=("l", "r", "r", "r", "r", "r", "r", "r", "r", "l")),
            render.paragraph(f"Paper pretraining: {steps:,} steps, batch {pretraining.get('batch', report.MISSING)}. "
                             f"{paper.get('notes', '')}".strip()),
        ]
        return render.Document(f"Table 3: {self.title}", tuple(blocks))
