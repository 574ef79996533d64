"""The released finetuned checkpoints: the unilm README's numbers beside ``harness eval`` of the same files.

``harness run released --profile paper --weights weights/`` finds every released finetuned checkpoint
(``results/paper/released.json`` lists them, with their published numbers and download links) in the
weights folder, evaluates the ones without a finished ``beit3-eval`` run (same file sha256, task, split
and data root), and renders published, measured and Δ: same weights, same data, so the difference
is the reproduction gap. Absent checkpoints are listed with their links. The data roots are the
profile's (``paper``: ``data/<dataset>``; synthetic profiles: their world).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from harness.profiles import Profile
from harness.tables import render
from harness.tables.registry import register_table
from harness.tables.types import Experiment, RunOptions, TableResult, TableSpec, measurement

DEFAULT_WEIGHTS = "weights"
EVAL_OUT = Path("eval") / "released"  # the evaluations' files (metrics, per-item, leaderboard files)
SIZES = ("base", "large")


def weights_dir(options: RunOptions) -> Path:
    return Path(getattr(options, "weights", DEFAULT_WEIGHTS) or DEFAULT_WEIGHTS)


def eval_data_root(profile: Profile, eval_task) -> Path:
    """The data root of ``eval_task`` under ``profile`` (the finetunes' own: a world, or ``data_roots``)."""
    from harness.finetune import data_root
    from harness.launch import resolve_data_root

    variant = dict(eval_task.data) or None
    return Path(resolve_data_root({"root": data_root(profile, eval_task.task, variant)})["root"])


def display_scale(task: str, metric: str) -> float:
    """Stored -> displayed units of a task metric (``MetricSpec.scale``)."""
    import tasks

    return float(tasks.get_task(task).metric(metric).scale)


@register_table("released")
class ReleasedTable(TableSpec):
    def checkpoints(self) -> list[dict[str, Any]]:
        return list(self.paper_rows["checkpoints"])

    def present(self, options: RunOptions) -> list[tuple[dict[str, Any], Path]]:
        folder = weights_dir(options)
        return [(entry, folder / entry["file"]) for entry in self.checkpoints() if (folder / entry["file"]).is_file()]

    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        from harness.evaluate import EVAL_EXPERIMENT, checkpoint_sha256, eval_config, get_eval_task

        plan = []
        for entry, path in self.present(options):
            eval_task = get_eval_task(entry["eval_task"])
            config = eval_config(eval_task, checkpoint_sha256(path), entry["split"], None,
                                 eval_data_root(profile, eval_task))
            plan.append(Experiment(name=f"released/{entry['file']}", task=eval_task.task, profile=profile.name,
                                   seed=None, config=config, mlflow_experiment=EVAL_EXPERIMENT))
        return plan

    def run(self, profile: Profile, options: RunOptions) -> TableResult:
        from harness.evaluate import EvalError, evaluate_checkpoint, find_evaluation, get_eval_task
        from harness.tracking import resolve_tracking_uri

        uri = resolve_tracking_uri()
        records: list[dict[str, Any]] = []
        annotations = {"weights": str(weights_dir(options))}
        present = {entry["file"]: path for entry, path in self.present(options)}
        for entry in self.checkpoints():
            name = entry["file"]
            if name not in present:
                annotations[f"{name}.status"] = "absent"
                continue
            eval_task = get_eval_task(entry["eval_task"])
            root = eval_data_root(profile, eval_task)
            found = find_evaluation(eval_task, present[name], root, entry["split"], tracking_uri=uri)
            if found is not None:
                run_id, metrics, status = found.info.run_id, _split_metrics(found.data.metrics, entry["split"]), "reused"
            else:
                try:
                    outcome = evaluate_checkpoint(eval_task.name, present[name], root, split=entry["split"],
                                                  out_dir=EVAL_OUT, tracking_uri=uri)
                except EvalError as err:
                    annotations[f"{name}.status"] = f"not evaluated: {err}"
                    continue
                run_id, metrics, status = outcome.run_id, outcome.metrics, "evaluated"
            annotations[f"{name}.status"] = status
            annotations[f"{name}.run"] = run_id
            for published in entry["published"]:
                metric = published["metric"]
                if metric in metrics:
                    value = float(metrics[metric]) * display_scale(eval_task.task, metric)
                    records.append(measurement(entry["size"], f"{entry['eval_task']}.{metric}", value,
                                               label=published["label"], task=eval_task.task, evaluation="eval",
                                               split=entry["split"], metric=metric, run_id=run_id))
        return TableResult.of(self.name, records, {size: f"BEiT-3 {size}" for size in SIZES}, annotations)

    def render(self, result: TableResult, paper: Mapping[str, Any]) -> render.Document:
        frame = result.frame
        measured = {(g, r): v for g, r, v in zip(frame["group"], frame["row"], frame["value"])}
        notes = result.annotations
        headers = ["checkpoint", "task", "split", "metric", "published", "measured", "Δ", "evaluation run"]
        body, absent, failed = [], [], []
        for entry in paper["checkpoints"]:
            status = notes.get(f"{entry['file']}.status", "absent")
            if status == "absent":
                absent.append(entry)
                continue
            if status.startswith("not evaluated"):
                failed.append((entry, status))
                continue
            run = f"`{notes.get(entry['file'] + '.run', '')[:8]}` ({status})"
            for published in entry["published"]:
                value = measured.get((entry["size"], f"{entry['eval_task']}.{published['metric']}"))
                if value is None:
                    shown, delta = (f"upload to {entry['scored_by']}" if entry["scored_by"] != "local" else "–"), "–"
                else:
                    shown, delta = f"{value:.2f}", f"{value - float(published['value']):+.2f}"
                body.append([entry["file"], entry["eval_task"], published["split"], published["label"],
                             f"{published['value']:g}", shown, delta, run])
        weights = notes.get("weights", DEFAULT_WEIGHTS)
        blocks = [render.paragraph(f"Weights from {weights}; published: {paper.get('source', '')}"),
                  render.table(body, headers, align=("l", "l", "l", "l", "r", "r", "r", "l")) if body
                  else render.paragraph("No released checkpoint was found.")]
        if failed:
            blocks += [render.heading("Not evaluated"),
                       render.table([[e["file"], status] for e, status in failed], ["checkpoint", "why"])]
        if absent:
            blocks += [render.heading("Absent checkpoints"),
                       render.paragraph(f"Download into {weights}/ to include them:"),
                       render.table([[e["file"], e["size"], e["eval_task"], e["url"]] for e in absent],
                                    ["checkpoint", "size", "task", "download"])]
        if paper.get("notes"):
            blocks.append(render.paragraph(paper["notes"]))
        return render.Document(f"Released checkpoints: {self.title}", tuple(blocks))


def _split_metrics(metrics: Mapping[str, float], split: str) -> dict[str, float]:
    prefix = f"eval.{split}."
    return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
