"""Table 3: pretraining data -- and our pretraining experiment, whose checkpoints later tables use.

The paper's Table 3 lists the pretraining sources (21M pairs, 14M images, 160GB text). Here it is
printed beside what this run consumed by the two recipes, BEiT-3's masked data modeling (one stage,
every step images + texts + pairs) and VLMo's staged recipe (images, then texts with attention
frozen, then pairs with ITC + ITM + MLM), with the budget each used: optimizer steps, samples and
wall time per seed (the budget the profile matches is set in ``harness/profiles.py``). Finished
runs with the same config hash are reused, not recomputed.
"""
from __future__ import annotations

from typing import Any, Mapping

from harness import report
from harness.experiments import RECIPES, RunRecord, ensure_recipe, pretraining_configs
from harness.profiles import Profile
from harness.tables import render
from harness.tables.registry import register_table
from harness.tables.types import Experiment, RunOptions, TableResult, TableSpec, experiments_of, measurement

RECIPE_TITLES = {"beit3": "BEiT-3 masked data modeling", "vlmo": "VLMo staged (image → text → image-text)"}
COUNTS = ("images", "texts", "pairs", "text_tokens", "pair_text_tokens")


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
                records += [measurement(recipe, name, value, recipe=recipe, seed=seed, metric=name,
                                        run_id=runs[-1].run_id) for name, value in values.items()]
        return TableResult.of(self.name, records, groups, annotations)

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
        header = ["recipe", "seed", "stages", "optimizer steps", "samples", "wall time (s)", "samples/s",
                  "final loss per stage", "MLflow runs (status)"]
        body = []
        for recipe in RECIPES:
            for seed in sorted(int(s) for s in frame.loc[frame["group"] == recipe, "seed"].dropna().unique()):
                stages = int(value(recipe, seed, "stages"))
                losses = " / ".join(f"{value(recipe, seed, f'final_loss.stage{i}'):.3f}" for i in range(1, stages + 1))
                body.append([RECIPE_TITLES[recipe], str(seed), str(stages),
                             report.format_number(value(recipe, seed, "steps")),
                             report.format_number(value(recipe, seed, "samples")),
                             f"{value(recipe, seed, 'wall_time_s'):.1f}", f"{value(recipe, seed, 'samples_per_s'):.1f}",
                             losses, result.annotations.get(f"{recipe}.seed{seed}.runs", report.MISSING)])
        pretraining = paper.get("pretraining", {})
        steps = pretraining.get("steps", report.MISSING)
        blocks = [
            render.paragraph("Paper (pretraining data of BEiT-3 giant) beside the data this run consumed (seed 0)."),
            render.table(sources, ["data", "paper sources", "paper size", "BEiT-3 MDM (this run)",
                                   "VLMo staged (this run)"], align=("l", "l", "l", "r", "r")),
            render.paragraph("What each recipe's pretraining consumed, per seed: optimizer steps, samples and wall "
                             "time; the budget the profile matches is set in harness/profiles.py."),
            render.table(body, header, align=("l", "r", "r", "r", "r", "r", "r", "r", "l")),
            render.paragraph(f"Paper pretraining: {steps:,} steps, batch {pretraining.get('batch', report.MISSING)}. "
                             f"{paper.get('notes', '')}".strip()),
        ]
        return render.Document(f"Table 3: {self.title}", tuple(blocks))
