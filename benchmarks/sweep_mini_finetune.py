"""How the ``mini`` finetuning scale was chosen: one task's finetune under several schedules.

    python benchmarks/sweep_mini_finetune.py --task vqav2 --recipe beit3 \
        --set max_steps=400 --set max_steps=1000,lr=2e-3 --set max_steps=1000,batch_size=32

Each ``--set`` overrides the profile's finetune config (``batch_size`` is the data loader's); every
setting is a run in the MLflow experiment ``beit3-sweep`` (reused by config hash on a second call),
started from the recipe's pretraining (run or reused as ``harness run table3`` does) and scored with
the task's official metric. Prints one row per setting: metrics, wall time, samples seen, and the
world's prior-only baselines for scale.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import tasks
from harness.experiments import ensure_run, world_manifest
from harness.finetune import ensure_parents, evaluate_run, finetune_config
from harness.profiles import get_profile
from harness.tracking import resolve_tracking_uri


def parse_setting(text: str) -> dict[str, object]:
    setting = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        setting[key.strip()] = json.loads(value) if value.strip()[0] in "[{\"" else float(value) if any(
            c in value for c in ".e") else int(value)
    return setting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--recipe", default="beit3")
    parser.add_argument("--profile", default="mini")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="settings", action="append", default=[], help="key=value[,key=value]")
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()
    profile, uri = get_profile(args.profile), resolve_tracking_uri(args.tracking_uri)
    parents = ensure_parents(args.recipe, profile, args.seed, uri)
    base = finetune_config(args.task, args.recipe, profile, args.seed)
    for text in args.settings or [""]:
        setting = parse_setting(text)
        name = "-".join([base.run_name, *(f"{k}{v}" for k, v in setting.items())])
        data = {**base.data, **({"batch_size": setting.pop("batch_size")} if "batch_size" in setting else {})}
        cfg = dataclasses.replace(base, data=data, experiment="beit3-sweep", run_name=name, **setting)
        start = time.perf_counter()
        record = ensure_run(cfg, parents[-1] if parents else None, tracking_uri=uri)
        metrics = {k: v for k, v in record.metrics.items() if k.startswith("eval.")}
        if not metrics:
            metrics = evaluate_run(cfg, record, list(tasks.get_task(args.task).eval_splits), uri)
        shown = {k.removeprefix("eval."): round(v, 4) for k, v in sorted(metrics.items())}
        print(f"{text or '(profile)':<40} {record.status:<7} {time.perf_counter() - start:7.1f}s "
              f"loss {record.metrics.get('final.loss', float('nan')):.3f}  {shown}", flush=True)
    root = profile.pretrain["data"]["root"]
    if root.startswith("world:"):
        print("world baselines:", json.dumps(world_manifest(root)["baselines"].get(args.task, {})))


if __name__ == "__main__":
    main()
