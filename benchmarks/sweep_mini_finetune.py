"""Calibrate a synthetic profile's finetuning schedules on an independent world, against the controls.

    python benchmarks/sweep_mini_finetune.py --tasks vqav2 nlvr2 captioning --recipes none beit3 \
        --set lr=5e-4 --set lr=2e-3 --out benchmarks/results/calibration_mini

Every run happens on the *calibration world*: the profile's world drawn with another seed
(``world:<profile>:<seed>``, default seed 1), pretraining included, so no split a table reports (seed
0) is ever looked at while choosing a schedule. Each ``--set`` overrides the profile's finetune config
(``batch_size`` is the data loader's); each (task, recipe, setting) is a run of the product path
(``harness.finetune``: pretraining reused by config hash, the finetune, ``evaluate_run``) in the MLflow
experiment ``beit3-calibration``, reused on a second call. A setting is scored on the task's first
evaluation split with the official metric, beside the same model evaluated with the split's images
shuffled and beside the task's text-only baseline, with paired bootstrap intervals (``harness.stats``)
of the differences. ``--out`` writes the table as ``<out>.csv`` and ``<out>.md`` (all rows of earlier
calls kept unless the same row was measured again).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

import tasks
from harness.experiments import ensure_run
from harness.finetune import IMAGE_CONTROL_SEED, ensure_parents, evaluate_run, finetune_config
from harness.launch import resolve_data_root
from harness.per_item import load_per_item
from harness.profiles import Profile, deep_merge, get_profile
from harness.stats import IMAGE_CONTROL, paired_bootstrap
from harness.tracking import resolve_tracking_uri

EXPERIMENT = "beit3-calibration"
KEY = ["profile", "world", "task", "recipe", "setting", "seed"]


def parse_setting(text: str) -> dict[str, object]:
    """``"max_steps=1000,lr=2e-3"`` -> ``{"max_steps": 1000, "lr": 0.002}`` (JSON for lists and strings)."""
    setting = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not value.strip():
            raise ValueError(f"--set {text!r}: {item!r} is not key=value (e.g. --set max_steps=1000,lr=2e-3)")
        value = value.strip()
        setting[key.strip()] = json.loads(value) if value[0] in "[{\"" else float(value) if any(
            c in value for c in ".e") else int(value)
    return setting


def calibration_profile(profile: Profile, world_seed: int) -> Profile:
    """``profile`` with every run on its world drawn with ``world_seed`` (pretraining included)."""
    if not profile.synthetic:
        raise ValueError(f"profile {profile.name!r} reads real data: calibrate on a synthetic profile (smoke, mini)")
    if world_seed == 0:
        raise ValueError("world seed 0 is the world the tables report: calibrate on another seed (default 1)")
    root = f"world:{profile.world}:{world_seed}"
    return dataclasses.replace(profile, pretrain=deep_merge(profile.pretrain, {"data": {"root": root}}))


def measure(task: str, recipe: str, text: str, profile: Profile, seed: int, uri: str) -> dict[str, object]:
    """One setting's finetune on the calibration world, scored beside its image-shuffled and text-only controls."""
    spec = tasks.get_task(task)
    split, metric = spec.eval_splits[0], spec.primary_metric
    parents = ensure_parents(recipe, profile, seed, uri)
    base = finetune_config(task, recipe, profile, seed)
    setting = parse_setting(text)
    data = {**base.data, **({"batch_size": setting.pop("batch_size")} if "batch_size" in setting else {})}
    name = "-".join([base.run_name, f"world{profile.pretrain['data']['root'].rsplit(':', 1)[1]}",
                     *(f"{k}{v}" for k, v in sorted(setting.items()))])
    cfg = dataclasses.replace(base, data=data, experiment=EXPERIMENT, run_name=name, **setting)
    record = ensure_run(cfg, parents[-1] if parents else None, tracking_uri=uri)
    if f"eval.{split}.{metric.name}" not in record.metrics:
        evaluate_run(cfg, record, [split], uri)
    if f"{IMAGE_CONTROL}.{split}.{metric.name}" not in record.metrics:
        evaluate_run(cfg, record, [split], uri, data={**cfg.data, "shuffle_images": IMAGE_CONTROL_SEED},
                     prefix=IMAGE_CONTROL)
    model = load_per_item(record.run_id, split, tracking_uri=uri)
    shuffled = load_per_item(record.run_id, split, tracking_uri=uri, prefix=IMAGE_CONTROL)
    column, scale = metric.item_column, metric.scale
    row: dict[str, object] = {
        "profile": profile.name, "world": profile.pretrain["data"]["root"], "task": task, "recipe": recipe,
        "setting": text or "(profile)", "seed": seed, "max_steps": cfg.max_steps, "lr": cfg.lr,
        "batch_size": cfg.data.get("batch_size"), "split": split, "metric": metric.name,
        "train_wall_s": round(record.metrics["wall_time_s"], 1) if "wall_time_s" in record.metrics else None,
        "final_loss": round(record.metrics["final.loss"], 4) if "final.loss" in record.metrics else None,
        "value": round(float(model[column].mean()) * scale, 2),
        "shuffled": round(float(shuffled[column].mean()) * scale, 2),
    }
    diff = paired_bootstrap([model], [shuffled], column, scale=scale)
    row.update(vs_shuffled=diff.estimate, vs_shuffled_low=diff.low, vs_shuffled_high=diff.high)
    if spec.text_baseline is not None:
        blind = spec.text_baseline(resolve_data_root(cfg.data), split=split).items
        diff = paired_bootstrap([model], [blind], column, scale=scale)
        row.update(text_only=round(float(blind[column].mean()) * scale, 2), vs_text=diff.estimate,
                   vs_text_low=diff.low, vs_text_high=diff.high)
    row["image_grounded"] = bool(row["vs_shuffled_low"] > 0)
    return row


def write_table(rows: list[dict[str, object]], out: Path) -> pd.DataFrame:
    """Merge ``rows`` into ``<out>.csv`` (a row measured again replaces its old one) and render ``<out>.md``."""
    csv = out.with_suffix(".csv")
    frame = pd.DataFrame(rows)
    if csv.is_file():
        old = pd.read_csv(csv)
        frame = pd.concat([old, frame], ignore_index=True).drop_duplicates(KEY, keep="last")
    frame = frame.sort_values(["task", "recipe", "setting"], kind="stable")
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(csv, index=False)
    shown = frame.assign(
        vs_shuffled=[f"{e:+.2f} [{lo:+.2f}, {hi:+.2f}]" for e, lo, hi in
                     zip(frame["vs_shuffled"], frame["vs_shuffled_low"], frame["vs_shuffled_high"])],
        vs_text=[f"{e:+.2f} [{lo:+.2f}, {hi:+.2f}]" if pd.notna(e) else "" for e, lo, hi in
                 zip(frame["vs_text"], frame["vs_text_low"], frame["vs_text_high"])],
    )
    columns = ["task", "recipe", "setting", "max_steps", "lr", "batch_size", "split", "metric", "value", "shuffled",
               "vs_shuffled", "text_only", "vs_text", "final_loss", "train_wall_s"]
    header = (f"# Finetuning calibration ({', '.join(sorted(set(frame['profile'])))}, on "
              f"{', '.join(sorted(set(frame['world'])))})\n\nWritten by `benchmarks/sweep_mini_finetune.py`; "
              "differences are the model minus its control with 95% paired bootstrap intervals.\n\n")
    out.with_suffix(".md").write_text(header + shown[columns].to_markdown(index=False) + "\n", encoding="utf-8")
    return frame


def record_rows(rows: Iterable[dict[str, object]], out: Path | None,
                write: Callable[[list[dict[str, object]], Path], pd.DataFrame]) -> list[dict[str, object]]:
    """Measure the rows one by one, printing each and (with ``out``) rewriting the table after each, so
    that a sweep stopped early keeps what it measured."""
    done = []
    for row in rows:
        done.append(row)
        print(json.dumps(row), flush=True)
        if out is not None:
            write(done, out)
    return done


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every calibration sweep shares: starting points, profile, world seed, settings, output."""
    parser.add_argument("--recipes", nargs="+", default=["none"], help="starting points: none, beit3, vlmo")
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--world-seed", type=int, default=1, help="seed of the calibration world (not 0)")
    parser.add_argument("--set", dest="settings", action="append", default=[], help="key=value[,key=value]")
    parser.add_argument("--out", type=Path, default=None, help="write <out>.csv and <out>.md")
    parser.add_argument("--tracking-uri", default=None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", required=True, help="finetuning tasks, e.g. vqav2 nlvr2 captioning")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    add_sweep_arguments(parser)
    args = parser.parse_args(argv)
    profile = calibration_profile(get_profile(args.profile), args.world_seed)
    uri = resolve_tracking_uri(args.tracking_uri)
    record_rows((measure(task, recipe, text, profile, args.seed, uri) for task in args.tasks
                 for recipe in args.recipes for text in args.settings or [""]), args.out, write_table)


if __name__ == "__main__":
    main()
