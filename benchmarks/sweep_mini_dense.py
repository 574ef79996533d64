"""Calibrate a synthetic profile's detection / segmentation schedules on an independent world.

    python benchmarks/sweep_mini_dense.py --tables table7 --recipes none beit3 \
        --set max_steps=300,lr=2e-4 --set max_steps=300,lr=1e-3 --out benchmarks/results/calibration_mini_dense

The sibling of ``sweep_mini_finetune.py`` for tables 7 and 8: every run happens on the calibration
world (``world:<profile>:<seed>``, default seed 1; its pretraining too), never on the world the tables
report. Each (table, head the profile runs, recipe, setting) is one ``harness.dense.run_dense`` of
the table's config -- the product path of ``harness run table7/table8`` -- in the MLflow experiment
``beit3-calibration-dense``, reused on a second call. ``--set`` keys: ``max_steps`` and
``batch_size`` (the table's schedule), ``lr`` (the optimizer's), any other dotted key is an mmengine
config option (``model.train_cfg.rcnn.sampler.num=32``). The rows are the table's metrics on the
calibration world's validation split, with the training wall time.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from sweep_mini_finetune import add_sweep_arguments, calibration_profile, parse_setting, record_rows

from harness import dense
from harness.profiles import get_profile
from harness.tables import table7, table8
from harness.tracking import resolve_tracking_uri
from harness.world import ensure_world

EXPERIMENT = "beit3-calibration-dense"
KEY = ["profile", "world", "table", "head", "recipe", "setting", "seed"]
# table -> (module, data set under the world, {metric: key in the run's metrics and its scale to points})
TABLES = {
    "table7": (table7, "coco", {"box_ap": ("coco/bbox_mAP", 100.0), "mask_ap": ("coco/segm_mAP", 100.0)}),
    "table8": (table8, "ade", {"miou": ("mIoU", 1.0)}),
}


def measure(table: str, head: str, recipe: str, text: str, profile, world_seed: int, seed: int,
            uri: str) -> dict[str, object]:
    """One setting of one head, fine-tuned from ``recipe`` on the calibration world and validated there."""
    module, dataset, metrics = TABLES[table]
    source = dense.pretrained_sources(profile, [recipe])[0]
    checkpoint = source.resolve()
    max_iters, batch_size = dense.table_schedule(profile, table)
    setting = parse_setting(text)
    max_iters = int(setting.pop("max_steps", max_iters))
    batch_size = int(setting.pop("batch_size", batch_size))
    options = {("optim_wrapper.optimizer.lr" if k == "lr" else k): v for k, v in setting.items()}
    config = f"{module.HEADS[head][1]}_{dense.config_variant(profile)}"
    name = "-".join([table, head, recipe, f"world{world_seed}", f"seed{seed}", *(f"{k}{v}" for k, v in
                                                                                sorted(parse_setting(text).items()))])
    result = dense.run_dense(
        config, work_dir=dense.runs_dir() / "calibration" / name, run_name=name, profile=profile.name, seed=seed,
        checkpoint=checkpoint.path, model_name=source.model_name, model_overrides=source.model_overrides,
        layout=source.layout, data_root=ensure_world(profile.world, seed=world_seed) / dataset,
        max_iters=max_iters, batch_size=batch_size, parent_run_id=checkpoint.parent_run_id,
        parent_config_hash=checkpoint.parent_config_hash, experiment=EXPERIMENT, tracking_uri=uri,
        cfg_options=options or None,
    )
    row: dict[str, object] = {"profile": profile.name, "world": f"world:{profile.world}:{world_seed}", "table": table,
                              "head": head, "recipe": recipe, "setting": text or "(profile)", "seed": seed,
                              "max_steps": max_iters, "batch_size": batch_size,
                              "lr": setting.get("lr", "(config)"), "train_wall_s": round(result.wall_s, 1),
                              "run_id": result.run_id}
    for metric, (key, scale) in metrics.items():
        row[metric] = round(scale * result.metrics.get(key, 0.0), 2)  # CocoMetric reports nothing for no detections
    return row


def write_table(rows: list[dict[str, object]], out: Path) -> pd.DataFrame:
    """Merge ``rows`` into ``<out>.csv`` (a row measured again replaces its old one) and render ``<out>.md``."""
    csv = out.with_suffix(".csv")
    frame = pd.DataFrame(rows)
    if csv.is_file():
        frame = pd.concat([pd.read_csv(csv), frame], ignore_index=True).drop_duplicates(KEY, keep="last")
    frame = frame.sort_values(["table", "head", "recipe", "setting", "seed"], kind="stable")
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(csv, index=False)
    shown = [c for c in ["table", "head", "recipe", "setting", "seed", "max_steps", "batch_size", "box_ap", "mask_ap",
                         "miou", "train_wall_s"] if c in frame.columns]
    header = (f"# Dense calibration ({', '.join(sorted(set(frame['profile'])))}, on "
              f"{', '.join(sorted(set(frame['world'])))})\n\nWritten by `benchmarks/sweep_mini_dense.py`: each "
              "row is one run of the table's config through `harness.dense.run_dense`, validated on the "
              "calibration world (COCO AP / mIoU in points; wall time of training and validation on this "
              "machine).\n\n")
    out.with_suffix(".md").write_text(header + frame[shown].to_markdown(index=False) + "\n", encoding="utf-8")
    return frame


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", nargs="+", default=["table7"], choices=sorted(TABLES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    add_sweep_arguments(parser)
    args = parser.parse_args(argv)
    profile = calibration_profile(get_profile(args.profile), args.world_seed)
    uri = resolve_tracking_uri(args.tracking_uri)
    record_rows((measure(table, head, recipe, text, profile, args.world_seed, seed, uri) for table in args.tables
                 for head in dense.table_heads(profile, table, TABLES[table][0].HEADS) for recipe in args.recipes
                 for text in args.settings or [""] for seed in args.seeds), args.out, write_table)


if __name__ == "__main__":
    main()
