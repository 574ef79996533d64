"""Table 3: pretraining data -- and our pretraining experiment, whose checkpoints later tables use.

The paper's Table 3 lists the pretraining sources (21M pairs, 14M images, 160GB text). Here it is
printed beside what this run consumed, and the two recipes are run at equal pretraining FLOPs (counted
per optimizer step, ``harness/budget.py``; ``--ablation budget=samples|steps`` for the other
definitions): BEiT-3's masked data modeling (one stage, every
step images + texts + pairs) and VLMo's staged recipe (images, then texts with attention frozen, then
pairs with ITC + ITM + MLM). Finished runs with the same config hash are reused, not recomputed.
"""
from __future__ import annotations

import csv
import io
from typing import Any, Mapping, Sequence

from harness import report
from harness.budget import run_cost
from harness.experiments import RECIPES, RunRecord, ensure_recipe, pretraining_configs, recipe_configs
from harness.profiles import Profile
from harness.tables import Experiment, ResultRow, RunOptions, TableResult, TableSpec, experiments_of, register_table

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
        rows: list[ResultRow] = []
        groups: dict[str, str] = {}
        annotations: dict[str, str] = {}
        for recipe in options.pretraining_recipes:
            groups[recipe] = RECIPE_TITLES[recipe]
            for seed in range(options.seeds):
                records = ensure_recipe(recipe, profile, seed, ablation=options.ablation, nproc=options.nproc)
                prefix = f"seed{seed}."
                annotations[f"{recipe}.{prefix}runs"] = ", ".join(f"`{r.run_id[:8]}` ({r.status})" for r in records)
                values = {
                    "stages": len(records),
                    "steps": _sum(records, "data.steps"),
                    "wall_time_s": _sum(records, "wall_time_s"),
                    **{name: _sum(records, f"data.{name}") for name in COUNTS},
                }
                values["samples"] = values["images"] + values["texts"] + values["pairs"]
                values["samples_per_s"] = values["samples"] / max(values["wall_time_s"], 1e-9)
                for stage, record in enumerate(records, start=1):
                    values[f"final_loss.stage{stage}"] = record.metrics.get("final.loss", float("nan"))
                configs = recipe_configs(recipe, profile, seed, options.ablation)
                for cfg, record in zip(configs, records):
                    stage = cfg.trainable or "mdm"
                    values[f"{stage}.optimizer_steps"] = record.metrics.get("data.steps", float(cfg.max_steps))
                    values[f"{stage}.samples"] = sum(record.metrics.get(f"data.{n}", 0.0) for n in ("images", "texts", "pairs"))
                    values[f"{stage}.flops"] = float(run_cost(cfg, options.nproc)[1])
                    values[f"{stage}.wall_time_s"] = record.metrics.get("wall_time_s", float("nan"))
                values["flops"] = sum(v for k, v in values.items() if k.endswith(".flops"))
                for name, value in values.items():
                    rows.append(ResultRow(recipe, prefix + name, name, float(value)))
        return TableResult(self.name, groups, tuple(rows), annotations)

    def csv(self, result: TableResult, rows: Sequence[Any]) -> str:
        """One row per pretraining run: recipe, seed, stage, optimizer_steps, samples, flops, wall_time_s."""
        values = {(r.group, r.component): r.value for r in result.rows}
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["recipe", "seed", "stage", *STAGE_COLUMNS])
        for (group, component), value in values.items():
            seed, _, rest = component.partition(".")
            stage, _, column = rest.rpartition(".")
            if column != STAGE_COLUMNS[0] or not stage:
                continue
            counts = [int(values[(group, f"{seed}.{stage}.{name}")]) for name in STAGE_COLUMNS[:3]]
            wall = values[(group, f"{seed}.{stage}.wall_time_s")]
            writer.writerow([group, seed.removeprefix("seed"), stage, *counts, f"{wall:.3f}"])
        return buf.getvalue()

    def render(self, result: TableResult, paper: Mapping[str, Any]) -> str:
        values = {(r.group, r.component): r.value for r in result.rows}
        lines = [f"# Table 3: {self.title}", ""]
        lines += ["Paper (pretraining data of BEiT-3 giant) beside the data this run consumed (seed 0).", ""]
        seen = {
            "pair": ("pairs", "pair_text_tokens"), "image": ("images", None), "text": ("texts", "text_tokens"),
        }
        table = [["data", "paper sources", "paper size", "BEiT-3 MDM (this run)", "VLMo staged (this run)"]]
        for source in paper.get("sources", []):
            count, tokens = seen[source["stream"]]
            cells = []
            for recipe in RECIPES:
                n = values.get((recipe, f"seed0.{count}"), 0.0)
                text = f"{report.format_number(n)} {count}"
                if tokens:
                    text += f" ({report.format_number(values.get((recipe, f'seed0.{tokens}'), 0.0))} tokens)"
                cells.append(text)
            table.append([source["data"], source["sources"], source["size"], *cells])
        lines += report.markdown_table(table[0], table[1:]).splitlines() + [""]

        lines += ["Both recipes at equal pretraining FLOPs (forward + backward per optimizer step, counted with "
                  "FlopCounterMode; harness/budget.py), per seed.", ""]
        header = ["recipe", "seed", "stages", "optimizer steps", "samples", "FLOPs", "wall time (s)", "samples/s",
                  "final loss per stage", "MLflow runs (status)"]
        body = []
        for recipe in RECIPES:
            seeds = sorted({c.split(".")[0] for g, c in values if g == recipe})
            for seed in seeds:
                get = lambda name: values.get((recipe, f"{seed}.{name}"), float("nan"))  # noqa: E731
                stages = int(get("stages"))
                losses = " / ".join(f"{get(f'final_loss.stage{i}'):.3f}" for i in range(1, stages + 1))
                ids = result.annotations.get(f"{recipe}.{seed}.runs", "–")
                body.append([RECIPE_TITLES[recipe], seed.removeprefix("seed"), str(stages),
                             report.format_number(get("steps")), report.format_number(get("samples")),
                             f"{get('flops'):.3e}",
                             f"{get('wall_time_s'):.1f}", f"{get('samples_per_s'):.1f}", losses, ids])
        lines += report.markdown_table(header, body).splitlines()
        lines += ["", f"Paper pretraining: {paper.get('pretraining', {}).get('steps', '–'):,} steps, batch "
                  f"{paper.get('pretraining', {}).get('batch', '–')}. {paper.get('notes', '')}", ""]
        return "\n".join(lines)
