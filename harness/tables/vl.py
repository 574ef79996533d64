"""What the vision-language tables (4, 5, 6, 9, 10 and compare) share: recipe titles, the measured
numbers of a finetune in display units (scale from the task spec), the world's baselines, cells over
seeds and the paired differences between recipes."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from harness import report, stats
from harness.profiles import Profile
from harness.tables import render
from harness.tables.types import TableResult, measurement
from tasks.data.world_root import world_profile

RECIPE_TITLES = {"beit3": "BEiT-3 MDM pretraining", "vlmo": "VLMo staged pretraining", "none": "no pretraining"}


def metric_spec(task: str, metric: str):
    """The task spec's ``MetricSpec`` of ``metric`` (display scale, direction, per-item column)."""
    return stats.metric_spec(task, metric)


def split_key(key: str) -> tuple[str, str, str]:
    """``eval.val.vqa_accuracy`` -> (``eval``, ``val``, ``vqa_accuracy``);
    ``zeroshot.flickr30k.test.tr_r1`` -> (``zeroshot.flickr30k``, ``test``, ``tr_r1``)."""
    evaluation, split, metric = key.rsplit(".", 2)
    return evaluation, split, metric


def run_note(result: Any) -> str:
    """``abcdef12 (reused)``: the short id and reuse status of a finetune's run."""
    return f"{result.run.run_id[:8]} ({result.run.status})"


def finetune_measurements(group: str, seed: int, task: str, metrics: Mapping[str, float], keys: Iterable[str],
                          run_id: str, row_of=None, label_of=None, required_by: str = "") -> list[dict[str, Any]]:
    """The measured numbers of one finetune (or zero-shot evaluation), in display units.

    Args:
        group: the row group (the recipe).
        seed: the finetune's seed.
        task: the task whose spec gives each metric's scale.
        metrics: the run's logged metrics (``<evaluation>.<split>.<metric>``).
        keys: which of them to take; a key the run lacks is skipped (the table prints it missing).
        run_id: the run that measured them.
        row_of: key -> row id (default ``<task>.<split>.<metric>``).
        label_of: key -> label (default ``<split> <metric>``).
        required_by: the run's name, where every key must be there: a missing one raises ``KeyError``.
    """
    records = []
    for key in keys:
        if key not in metrics:
            if required_by:
                raise KeyError(f"{required_by}: no metric {key!r} (got {sorted(metrics)})")
            continue
        evaluation, split, metric = split_key(key)
        scale = metric_spec(task, metric).scale
        row = row_of(key) if row_of else f"{task}.{split}.{metric}"
        label = label_of(key) if label_of else f"{split} {metric}"
        records.append(measurement(group, row, scale * float(metrics[key]), label=label, recipe=group, seed=seed,
                                   task=task, evaluation=evaluation, split=split, metric=metric, run_id=run_id))
    return records


# What each control's verdicts say in a table (control evaluation -> (title, passed, failed)).
CONTROL_VERDICTS = {
    stats.IMAGE_CONTROL: ("Image-shuffled control", "image-grounded", "not image-grounded"),
    stats.TEXT_CONTROL: ("Text-only baseline", "above text-only", "not above text-only"),
}


def control_measurements(recipe: str, seed: int, task: str, metrics: Mapping[str, float],
                         run_id: str) -> list[dict[str, Any]]:
    """The controls logged in one finetune's run (``shuffled.*``: its model with the images shuffled;
    ``textonly.*``: the task's blind baseline), rows ``<task>.<split>.<metric>.<control>`` of the
    recipe's group; ``recipe`` is left empty so that recipes are not compared on their controls, and
    ``harness.stats`` pairs each with its model's row."""
    records = []
    for control in stats.CONTROL_SUFFIXES:
        keys = [k for k in task_keys(task, control) if k in metrics]
        records += finetune_measurements(recipe, seed, task, metrics, keys, run_id,
                                         row_of=lambda key, c=control: f"{task}.{key.split('.', 1)[1]}.{c}")
    return [{**record, "recipe": ""} for record in records]


def _control_of(recipe_b: str) -> str | None:
    return next((name for name, suffix in stats.CONTROL_SUFFIXES.items() if recipe_b.endswith(suffix)), None)


def control_rows(differences: pd.DataFrame) -> pd.Series:
    """Which rows of a differences frame compare a recipe with one of its controls (not two recipes)."""
    return differences["recipe_b"].map(_control_of).notna()


def _beats(row: Mapping[str, Any]) -> bool:
    higher = metric_spec(row["task"], row["metric"]).higher_is_better
    return bool(row["ci_low"] > 0) if higher else bool(row["ci_high"] < 0)


def grounding_marks(result: TableResult) -> dict[tuple[str, str], str]:
    """(recipe, row) -> what its controls say where the model does not beat one (the 95% interval of
    model − control does not exclude 0 on the better side): "not image-grounded", "not above text-only"."""
    marks: dict[tuple[str, str], list[str]] = {}
    differences = result.differences
    if differences.empty:
        return {}
    for row in differences.to_dict("records"):
        control = _control_of(row["recipe_b"])
        if control is None or row["note"] or _beats(row):
            continue
        marks.setdefault((row["recipe_a"], row["row"]), []).append(CONTROL_VERDICTS[control][2])
    return {key: ", ".join(found) for key, found in marks.items()}


def task_keys(task: str, evaluation: str = "eval") -> list[str]:
    """``<evaluation>.<split>.<metric>`` of every evaluation split and metric the task spec declares."""
    import tasks

    spec = tasks.get_task(task)
    return [f"{evaluation}.{split}.{m.name}" for split in spec.eval_splits for m in spec.metrics]


def world_baselines(profile: Profile) -> Mapping[str, Any] | None:
    """The benchmark world's baselines (its ``world.json``), or None for a profile on real data."""
    root = profile.pretrain.get("data", {}).get("root", "")
    if world_profile(root) is None:
        return None
    from harness.experiments import world_manifest

    return world_manifest(root)["baselines"]


def values_of(frame: pd.DataFrame, group: str, row: str) -> list[float]:
    """The values of one (group, row) over seeds, in seed order."""
    found = frame[(frame["group"] == group) & (frame["row"] == row)]
    return found.sort_values("seed", na_position="first")["value"].tolist()


def seed_cell(frame: pd.DataFrame, group: str, row: str, digits: int = 2, missing: str = report.MISSING) -> str:
    """``mean ± std`` over seeds of one (group, row); ``missing`` when nothing was measured."""
    values = values_of(frame, group, row)
    return report.format_mean_std(values, digits=digits) if values else missing


def recipe_groups(result: TableResult) -> list[str]:
    """The row groups that are recipes (not the world's baselines), in display order."""
    recipes = set(result.frame.loc[result.frame["recipe"] != "", "recipe"])
    return [g for g in result.groups if g in recipes]


def differences_blocks(result: TableResult, titles: Mapping[str, str] = RECIPE_TITLES, digits: int = 2,
                       higher_is_better: Callable[[str, str], bool] | None = None) -> list[render.Block]:
    """The paired differences between recipes: per metric and pair, A − B with its 95% interval, the
    verdict, each seed's value and mean ± std of each recipe.

    Args:
        higher_is_better: ``(task, metric) -> bool``; default the task spec's ``MetricSpec``.
    """
    from harness.stats import N_RESAMPLES, split_values, verdict

    everything = result.differences
    if everything.empty:
        return []
    is_control = control_rows(everything)
    blocks = _control_blocks(everything[is_control], titles, digits)
    differences = everything[~is_control]
    if differences.empty:
        return blocks
    seeds = int(differences["seeds"].max())
    intro = (f"Difference A − B of each metric with a 95% interval from a paired hierarchical bootstrap "
             f"({N_RESAMPLES} resamples of the paired seeds, then of the evaluation set's item clusters, the same "
             f"for both recipes); an interval that covers 0 is no detectable difference. Each seed's value is "
             f"printed; mean ± std (sample std over seeds) is a column.")
    if seeds < 3:
        intro += f" With {seeds} seed(s) the seed level is coarse: run --seeds 3 or more."
    cells = []
    if higher_is_better is None:
        def higher_is_better(task: str, metric: str) -> bool:
            return metric_spec(task, metric).higher_is_better
    for row in differences.to_dict("records"):
        a, b = split_values(row["values_a"]), split_values(row["values_b"])

        def seeds_text(values: Sequence[float]) -> str:
            return " / ".join(f"{v:.{digits}f}" for v in values) or report.MISSING

        def mean_std(values: Sequence[float]) -> str:
            return report.format_mean_std(values, digits) if values else report.MISSING

        interval = (report.MISSING if row["note"] else
                    f"{row['estimate']:+.{digits}f} [{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}]")
        cells.append([row["label"], f"{titles.get(row['recipe_a'], row['recipe_a'])} − "
                      f"{titles.get(row['recipe_b'], row['recipe_b'])}", interval,
                      verdict(row, titles, higher_is_better(row["task"], row["metric"])), seeds_text(a), seeds_text(b), mean_std(a),
                      mean_std(b)])
    columns = ["metric", "A − B", "difference [95% CI]", "verdict", "A per seed", "B per seed", "A mean ± std",
               "B mean ± std"]
    return [render.heading("Paired differences between recipes"), render.paragraph(intro),
            render.table(cells, columns, align=("l", "l", "r", "l", "r", "r", "r", "r")), *blocks]


def _control_blocks(controls: pd.DataFrame, titles: Mapping[str, str], digits: int) -> list[render.Block]:
    """Each recipe against each of its controls: model − control with its paired 95% interval."""
    intros = {
        stats.IMAGE_CONTROL: "Each finetuned model evaluated again with the split's images permuted among its items "
                             "(no item keeps its image; questions, statements and references kept).",
        stats.TEXT_CONTROL: "The task's strongest blind baseline fitted on train (VQA: the answer with the most "
                            "credit for the same question text, else its question type; NLVR2: the majority label "
                            "of the same sentence, which ties the two pairs of a sentence, so its pairwise accuracy "
                            "is 50; captioning: the one caption, of train's most frequent, with the highest CIDEr "
                            "on train images), scored on the same items.",
    }
    blocks = []
    which = controls["recipe_b"].map(_control_of)
    for control, (title, passed, failed) in CONTROL_VERDICTS.items():
        rows = controls[which == control]
        if rows.empty:
            continue
        cells = []
        for row in rows.to_dict("records"):
            interval = (report.MISSING if row["note"] else
                        f"{row['estimate']:+.{digits}f} [{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}]")
            model, baseline = stats.split_values(row["values_a"]), stats.split_values(row["values_b"])
            verdict = f"not computed: {row['note']}" if row["note"] else (passed if _beats(row) else failed)
            cells.append([row["label"], titles.get(row["recipe_a"], row["recipe_a"]),
                          report.format_mean_std(model, digits) if model else report.MISSING,
                          report.format_mean_std(baseline, digits) if baseline else report.MISSING, interval, verdict])
        blocks += [render.heading(title),
                   render.paragraph(intros[control] + " Model − control with a 95% interval from the same paired "
                                    f"bootstrap; a cell above whose model does not beat it is marked \"{failed}\"."),
                   render.table(cells, ["metric", "recipe", "model", "control", "model − control [95% CI]", "verdict"],
                                align=("l", "l", "r", "r", "r", "l"))]
    return blocks
