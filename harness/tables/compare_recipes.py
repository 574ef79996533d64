"""compare: BEiT-3 MDM vs VLMo staged vs no pretraining at equal compute, on every vision-language task.

A table of the harness's own (the paper reports no such comparison, so there is no paper file). For
every recipe of ``--recipes`` (default ``beit3``, ``vlmo``, ``none``) and seed it needs the runs of
tables 4, 6 and 10 -- VQAv2, NLVR2 and captioning finetunes, retrieval finetuned on COCO and on
Flickr30K, zero-shot Flickr30K after the intermediate ITC stage -- and reuses them when they exist
(same config, same run). With ``--ablation`` every recipe's pretraining is ablated alike.

Per metric: mean ± sample std over seeds for each recipe, and the leader's margin over the runner-up
in units of their combined std, sqrt(s1² + s2²); a margin within it is a tie. One seed gives no
spread (leaders are named, not tested), and fewer than 3 give a rough one: run ``--seeds 3`` or more.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from harness import report
from harness.ablation import ablation_label
from harness.experiments import RunRecord, pretraining_configs
from harness.finetune import ensure_finetune, ensure_parents, itc_config, plan_finetunes, zero_shot_retrieval
from harness.profiles import Profile
from harness.tables import Experiment, ResultRow, RunOptions, TableResult, TableSpec, experiments_of, register_table

RECIPE_TITLES = {"beit3": "BEiT-3 MDM", "vlmo": "VLMo staged", "none": "no pretraining"}
# The finetunes behind the columns: (measure, task, data variant); the same runs as tables 4 and 10.
FINETUNES = (
    ("vqav2", "vqav2", None),
    ("nlvr2", "nlvr2", None),
    ("captioning", "captioning", None),
    ("coco", "retrieval", {"dataset": "coco"}),
    ("flickr30k", "retrieval", {"dataset": "flickr30k"}),
)
ZERO_SHOT = "flickr30k"  # scored with the ITC-stage model, as table6
# (column id, measure, metric key of its run, task title, metric title, display scale); higher is better.
COLUMNS = (
    ("vqav2.val.vqa_accuracy", "vqav2", "eval.val.vqa_accuracy", "VQAv2", "val accuracy", 1.0),
    ("nlvr2.dev.accuracy", "nlvr2", "eval.dev.accuracy", "NLVR2", "dev accuracy", 1.0),
    ("nlvr2.test1.accuracy", "nlvr2", "eval.test1.accuracy", "NLVR2", "test1 accuracy", 1.0),
    ("captioning.test.CIDEr", "captioning", "eval.test.CIDEr", "captioning", "test CIDEr", 100.0),
    ("captioning.test.BLEU-4", "captioning", "eval.test.BLEU-4", "captioning", "test BLEU-4", 100.0),
    ("coco.test.tr_r1", "coco", "eval.test.tr_r1", "COCO retrieval", "TR@1", 1.0),
    ("coco.test.ir_r1", "coco", "eval.test.ir_r1", "COCO retrieval", "IR@1", 1.0),
    ("flickr30k.test.tr_r1", "flickr30k", "eval.test.tr_r1", "Flickr30K retrieval", "TR@1", 1.0),
    ("flickr30k.test.ir_r1", "flickr30k", "eval.test.ir_r1", "Flickr30K retrieval", "IR@1", 1.0),
    ("zeroshot.flickr30k.tr_r1", "zeroshot", f"zeroshot.{ZERO_SHOT}.test.tr_r1", "Flickr30K zero-shot", "TR@1", 1.0),
    ("zeroshot.flickr30k.ir_r1", "zeroshot", f"zeroshot.{ZERO_SHOT}.test.ir_r1", "Flickr30K zero-shot", "IR@1", 1.0),
)
COUNTS = ("images", "texts", "pairs")
MIN_SEEDS = 3  # fewer give no (1) or a rough (2) estimate of the spread


# ----------------------------------------------------------------------------- statistics (pure)
@dataclass(frozen=True)
class Stat:
    """Mean and sample std of one recipe's values over seeds (std None with one seed)."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        return cls(*report.mean_std(values), len(values))

    def text(self, digits: int = 2) -> str:
        return f"{self.mean:.{digits}f}" + ("" if self.std is None else f" ± {self.std:.{digits}f}")


@dataclass(frozen=True)
class Verdict:
    """Who leads one metric, by how much, and whether that is beyond the seeds' spread.

    Args:
        winner: the recipe with the highest mean.
        runner_up: the next one (None when only one recipe has the metric).
        delta: winner's mean minus runner-up's.
        spread: their combined std, sqrt(s1² + s2²); None when a recipe has one seed.
        resolution: the smallest difference that counts (half the last printed digit).
    """

    winner: str
    runner_up: str | None = None
    delta: float = 0.0
    spread: float | None = None
    resolution: float = 0.005

    @property
    def tie(self) -> bool:
        """|delta| within the combined std or below the printed precision (without a spread -- one
        seed -- only the latter)."""
        if self.runner_up is None:
            return False
        return abs(self.delta) < self.resolution or (self.spread is not None and abs(self.delta) <= self.spread)

    @property
    def sigmas(self) -> float | None:
        if self.spread is None or self.spread == 0:
            return None
        return self.delta / self.spread

    def text(self, digits: int = 2) -> str:
        """``beit3 +3.10 (2.4σ)``, ``tie within spread (beit3 +0.20, 0.3σ)`` or, with one seed,
        ``beit3 +1.00 (one seed: no spread)``."""
        if self.runner_up is None:
            return f"{self.winner} (only recipe)"
        margin = f"{self.winner} {self.delta:+.{digits}f}"
        if self.spread is None:
            return f"tie ({margin}, one seed)" if self.tie else f"{margin} (one seed: no spread)"
        size = "zero spread" if self.sigmas is None else f"{self.sigmas:.1f}σ"
        return f"tie within spread ({margin}, {size})" if self.tie else f"{margin} ({size})"


def verdict(stats: Mapping[str, Stat], resolution: float = 0.005) -> Verdict | None:
    """The leader of one metric (higher is better) over the recipes in ``stats``; None if none has it.
    Differences below ``resolution`` (half the last printed digit) are ties."""
    ranked = sorted(stats.items(), key=lambda item: item[1].mean, reverse=True)
    if not ranked:
        return None
    (winner, first), rest = ranked[0], ranked[1:]
    if not rest:
        return Verdict(winner)
    runner_up, second = rest[0]
    spread = None if first.std is None or second.std is None else math.hypot(first.std, second.std)
    return Verdict(winner, runner_up, first.mean - second.mean, spread, resolution)


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"


def summarize(verdicts: Sequence[tuple[str, Verdict]], recipes: Sequence[str], seeds: int) -> str:
    """One paragraph saying which recipe leads where, generated from the verdicts.

    Args:
        verdicts: (metric title, verdict) per metric, in table order.
        recipes: the compared recipes, in display order.
        seeds: seeds per recipe (sets the caveat about the spread).
    """
    if not verdicts:
        return "No metric was measured."
    title = lambda recipe: RECIPE_TITLES.get(recipe, recipe)  # noqa: E731
    total = len(verdicts)
    leads = {r: [name for name, v in verdicts if v.winner == r and not v.tie] for r in recipes}
    ties = [f"{name} ({title(v.winner)} vs {title(v.runner_up or '')})" for name, v in verdicts if v.tie]
    beyond = "" if seeds < 2 else " beyond the seeds' spread"
    sentences = []
    for recipe in sorted(recipes, key=lambda r: -len(leads[r])):
        if leads[recipe]:
            sentences.append(f"{title(recipe)} leads{beyond} on {len(leads[recipe])} of {total} metrics: "
                             f"{_join(leads[recipe])}.")
    nowhere = [title(r) for r in recipes if not leads[r]]
    if nowhere:
        sentences.append(f"{_join(nowhere)} {'leads' if len(nowhere) == 1 else 'lead'} nowhere{beyond}.")
    if ties:
        sentences.append(f"The top two are tied on {len(ties)} of {total}: {_join(ties)}.")
    if seeds < 2:
        sentences.append(f"With one seed there is no spread, so these leads are untested: run --seeds {MIN_SEEDS} "
                         "or more.")
    elif seeds < MIN_SEEDS:
        sentences.append(f"With {seeds} seeds the std is a rough estimate: run --seeds {MIN_SEEDS} or more.")
    return " ".join(sentences)


# ----------------------------------------------------------------------------- the table
def compute_rows(recipe: str, seed: int, records: Sequence[RunRecord]) -> list[ResultRow]:
    """What each pretraining stage consumed (its run's ``data.*`` metrics, as table3 reads them)."""
    prefix = f"seed{seed}.pretrain"
    rows = [ResultRow(recipe, f"{prefix}.stages", "stages", float(len(records)))]
    for stage, record in enumerate(records, start=1):
        samples = sum(record.metrics.get(f"data.{name}", 0.0) for name in COUNTS)
        rows += [ResultRow(recipe, f"{prefix}.stage{stage}.steps", "steps", record.metrics.get("data.steps", 0.0)),
                 ResultRow(recipe, f"{prefix}.stage{stage}.samples", "samples", samples)]
    for name in COUNTS:
        total = sum(r.metrics.get(f"data.{name}", 0.0) for r in records)
        rows.append(ResultRow(recipe, f"{prefix}.{name}", name, total))
    return rows


@register_table("compare")
class CompareRecipes(TableSpec):
    """Pretraining recipes against each other (and no pretraining) on every vision-language task."""

    @property
    def paper_rows(self) -> dict[str, Any]:
        return {}  # the paper reports no such comparison

    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        ablation, seeds = options.ablation, range(options.seeds)
        pretraining = pretraining_configs(profile, options.seeds, options.recipes, ablation)
        finetunes = plan_finetunes(tuple((task, variant) for _, task, variant in FINETUNES), profile,
                                   options.seeds, options.recipes, ablation)
        itc = [itc_config(recipe, profile, seed, ablation) for recipe in options.recipes for seed in seeds]
        return experiments_of(pretraining + finetunes + itc, profile)

    def run(self, profile: Profile, options: RunOptions) -> TableResult:
        ablation, nproc = options.ablation, options.nproc
        rows: list[ResultRow] = []
        annotations = {"ablation": ablation_label(ablation), "profile": profile.name, "seeds": str(options.seeds)}
        for recipe in options.recipes:
            for seed in range(options.seeds):
                parents = ensure_parents(recipe, profile, seed, None, nproc, ablation)
                rows += compute_rows(recipe, seed, parents)
                results = {measure: ensure_finetune(task, recipe, profile, seed, variant=variant, ablation=ablation,
                                                    nproc=nproc) for measure, task, variant in FINETUNES}
                results["zeroshot"] = zero_shot_retrieval(recipe, ZERO_SHOT, profile, seed, ablation=ablation,
                                                          nproc=nproc)
                for measure, result in results.items():
                    annotations[f"{recipe}.seed{seed}.{measure}"] = f"`{result.run.run_id[:8]}` ({result.run.status})"
                for column, measure, key, *_ in COLUMNS:
                    metrics = results[measure].metrics
                    if key not in metrics:
                        raise KeyError(f"{results[measure].run.name}: no metric {key!r} (got {sorted(metrics)})")
                    rows.append(ResultRow(recipe, f"seed{seed}.{column}", key, float(metrics[key])))
        return TableResult(self.name, {r: RECIPE_TITLES[r] for r in options.recipes}, tuple(rows), annotations)

    def render(self, result: TableResult, paper: Mapping[str, Any]) -> str:
        values: dict[tuple[str, str], list[float]] = {}
        for row in result.rows:
            _seed, key = row.component.split(".", 1)
            values.setdefault((row.group, key), []).append(row.value)
        recipes = list(result.groups)
        seeds = int(result.annotations.get("seeds", "1"))
        ablation = result.annotations.get("ablation", "")
        title = f"# compare: {self.title}" + (f" — ablation {ablation}" if ablation else "")
        pretraining = f"ablated alike in every recipe: {ablation}." if ablation else "as the recipes define it."
        profile = result.annotations.get("profile", "?")
        lines = [title, "", f"Profile `{profile}`, {seeds} seed(s) per recipe; pretraining {pretraining}", ""]
        lines += ["## Pretraining compute", "",
                  "What each recipe's pretraining consumed (seed 0; the profile sets equal steps × batch × data).", ""]
        lines += self._compute_table(values, recipes).splitlines()
        lines += ["", "## Results", "",
                  ("Mean ± sample std over seeds (accuracy and recall in percent, captioning scores × 100). Leader: "
                   "its margin over the runner-up in units of their combined std, sqrt(s1² + s2²); within one std "
                   "it is a tie."), ""]
        headers = ["task", "metric", *[result.groups[r] for r in recipes], "leader"]
        body, verdicts = [], []
        for column, _measure, _key, task, metric, scale in COLUMNS:
            stats = {r: Stat.of([scale * v for v in values[(r, column)]]) for r in recipes if (r, column) in values}
            found = verdict(stats)
            if found is not None:
                verdicts.append((f"{task} {metric}", found))
            body.append([task, metric, *[stats[r].text() if r in stats else report.MISSING for r in recipes],
                         found.text() if found is not None else report.MISSING])
        lines += report.markdown_table(headers, body, align=("l", "l", *["r"] * len(recipes), "l")).splitlines()
        lines += ["", "## Which wins where", "", summarize(verdicts, recipes, seeds), ""]
        statuses = [text.rsplit("(", 1)[-1].rstrip(")") for key, text in result.annotations.items()
                    if key.split(".")[0] in result.groups]
        if statuses:
            counts = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
            lines += [f"Finetune and ITC runs (MLflow experiment beit3-finetune): {counts}.", ""]
        return "\n".join(lines)

    @staticmethod
    def _compute_table(values: Mapping[tuple[str, str], list[float]], recipes: Sequence[str]) -> str:
        def first(recipe: str, key: str) -> float:
            return values.get((recipe, f"pretrain.{key}"), [0.0])[0]

        body = []
        for recipe in recipes:
            stages = int(first(recipe, "stages"))
            per_stage = []
            for stage in range(1, stages + 1):
                steps, samples = first(recipe, f"stage{stage}.steps"), first(recipe, f"stage{stage}.samples")
                per_stage.append(f"{steps:,.0f} × {samples / steps:,.0f}" if steps else report.MISSING)
            counts = [first(recipe, name) for name in COUNTS]
            body.append([RECIPE_TITLES.get(recipe, recipe), str(stages), " + ".join(per_stage) or report.MISSING,
                         report.format_number(sum(counts)), *[report.format_number(c) for c in counts]])
        headers = ["recipe", "stages", "steps × samples per step", "samples seen", *COUNTS]
        return report.markdown_table(headers, body, align=("l", "r", "r", "r", "r", "r", "r"))
