"""The ``harness`` command: list what exists, regenerate paper tables, build data worlds.

    harness list tables                       # the paper's tables and which ones run
    harness run table2 --profile smoke        # regenerate Table 2 -> reports/table2.md + MLflow run
    harness run table2 --dry-run              # the experiments it would run, nothing else
    harness report table2 --profile smoke     # reports/table2.{md,tex,html} from MLflow alone
    harness data world --profile smoke --out data/world-smoke
    harness eval vqav2 --checkpoint weights/beit3_base_patch16_480_vqa.pth --data data/vqav2

Bad names (table, profile), an unreachable tracking store and output folders that cannot be written
end with one message on stderr and exit code 2, before any work starts; so does every other error a
user can cause (data, checkpoint, config, store), when it happens (``--debug``: with the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Sequence

from harness.ablation import SWITCHES, ablation_label, parse_ablation
from harness.errors import EXIT_USAGE, USER_ERRORS, one_line
from harness.evaluate import add_eval_arguments, cmd_eval
from harness.experiments import RECIPE_NAMES
from harness.profiles import PROFILES, Profile, get_profile, list_profiles
from harness.reporting import FORMATS, parse_formats, report_tables
from harness.tables import (
    RunOptions,
    TableSpec,
    captions,
    get_table,
    list_tables,
    run_table,
    table_config,
)
from harness.tracking import check_tracking_uri, config_hash, resolve_tracking_uri


class UsageError(ValueError):
    """A request the harness cannot serve as asked; printed without a traceback, exit code 2."""


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


# ----------------------------------------------------------------------------- list
def _list_tables() -> list[str]:
    available = set(list_tables())
    width = max(len(n) for n in captions())
    return [
        f"{name:<{width}}  {'available' if name in available else 'not yet available':<17}  {caption}"
        for name, caption in captions().items()
    ]


def _list_models() -> list[str]:
    from backbones import list_models

    return list_models()


def _list_profiles() -> list[str]:
    width = max(len(n) for n in PROFILES)
    return [f"{name:<{width}}  {PROFILES[name].description}" for name in list_profiles()]


def _list_tasks() -> list[str]:
    import tasks

    def summary(name: str) -> str:
        line = (tasks.task_module(name).__doc__ or "").strip().splitlines()[0]
        return line.rsplit(" (", 1)[0] if line.count("(") > line.count(")") else line  # a cut-off aside

    return [f"{name:<16}  {summary(name)}" for name in tasks.list_tasks()]


def _list_recipes() -> list[str]:
    from harness.experiments import RECIPES

    lines = [f"{name:<6}  pretraining: {' -> '.join(configs)}" for name, configs in RECIPES.items()]
    return lines + [f"{'none':<6}  no pretraining (finetunes start from a random init)"]


_LISTERS: dict[str, Callable[[], list[str]]] = {
    "tables": _list_tables,
    "tasks": _list_tasks,
    "models": _list_models,
    "profiles": _list_profiles,
    "recipes": _list_recipes,
}


def cmd_list(args: argparse.Namespace) -> int:
    print("\n".join(_LISTERS[args.what]()))
    return 0


# ----------------------------------------------------------------------------- run
def _resolve_tables(names: Sequence[str]) -> list[TableSpec]:
    # All names are checked before anything runs, so a typo in the last one costs nothing.
    return [get_table(name) for name in dict.fromkeys(names)]


def _print_plan(specs: Sequence[TableSpec], profile: Profile, options: RunOptions, args: argparse.Namespace) -> None:
    for spec in specs:
        plan = spec.plan(profile, options)
        config = table_config(spec, profile, options, plan)
        print(f"{spec.name}: {spec.title}")
        print(f"  profile {profile.name}, {len(plan)} experiment(s), table config {config_hash(config)[:12]}")
        if options.ablation:
            print(f"  ablation {ablation_label(options.ablation)} (every recipe's pretraining)")
        trains = any(e.task.startswith("pretrain_") for e in plan)
        costs = _pretraining_costs(profile, options) if trains else {}
        for exp in plan:
            seed = "-" if exp.seed is None else exp.seed
            flops = f"  flops={costs[exp.name].flops:.3e}" if exp.name in costs else ""
            print(f"  - {exp.name}  task={exp.task}  seed={seed}  config={exp.config_hash[:12]}{flops}")
        planned = [costs[e.name] for e in plan if e.name in costs]
        if planned:
            from harness.budget import PEAK_FLOPS_PER_S, PEAK_NAME, UTILISATION, gpu_hours

            total = sum(c.flops for c in planned)
            ranks = options.nproc if options.nproc > 1 else profile.pretrain_ranks
            print(f"  pretraining: {len(planned)} run(s), {total:.3e} FLOPs on {ranks} rank(s) (model FLOPs of forward + "
                  f"backward) = {gpu_hours(total):,.1f} GPU-hours at {UTILISATION:.0%} of the {PEAK_NAME} "
                  f"({PEAK_FLOPS_PER_S / 1e12:.0f} TFLOP/s)")
        report, csv = Path(args.out) / f"{spec.name}.md", Path(args.results_dir) / f"{spec.name}.csv"
        print(f"  would write {report} and {csv}")


def _pretraining_costs(profile: Profile, options: RunOptions) -> dict:
    """Run name -> ``harness.budget.RunCost`` of every pretraining run of the chosen recipes (counted, cached)."""
    from harness.budget import plan_costs

    ranks = options.nproc if options.nproc > 1 else profile.pretrain_ranks
    return {c.run_name: c for c in plan_costs(profile, options.seeds, options.pretraining_recipes,
                                              options.ablation, world_size=ranks)}


def run_options(args: argparse.Namespace, profile: Profile) -> RunOptions:
    """``--seeds``, ``--recipes``, ``--nproc``, ``--ablation`` checked and combined with the profile's defaults."""
    seeds = profile.default_seeds if args.seeds is None else args.seeds
    recipes = tuple(r.strip() for r in args.recipes.split(",") if r.strip()) if args.recipes else RECIPE_NAMES
    ablation = parse_ablation(args.ablation)  # AblationError / UnknownNameError: exit 2 with the known switches
    try:
        return RunOptions(seeds=seeds, recipes=recipes, nproc=args.nproc, ablation=ablation, weights=args.weights)
    except ValueError as err:
        raise UsageError(f"--{err}") from None


def cmd_run(args: argparse.Namespace) -> int:
    profile = get_profile(args.profile)
    specs = _resolve_tables(args.tables)
    options = run_options(args, profile)
    if args.dry_run:
        _print_plan(specs, profile, options, args)
        return 0

    uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_uri(uri)  # before any work: a bad store must not cost a training run
    from harness.experiments import runs_root

    for option, folder in (("--out", args.out), ("--results-dir", args.results_dir), ("$BEIT3_RUNS_DIR", runs_root())):
        check_writable_dir(Path(folder), option)  # nor an output folder found unwritable at the end
    for spec in specs:
        outputs = run_table(
            spec, profile, options, out_dir=args.out, results_dir=args.results_dir, tracking_uri=uri
        )
        print(outputs.markdown)
        print(
            f"wrote {outputs.report_path} and {outputs.csv_path}; "
            f"MLflow run {outputs.run_id} (experiment beit3-tables) in {uri}"
        )
    return 0


def check_writable_dir(folder: Path, option: str) -> None:
    """``folder`` can be created (if missing) and written; the probe leaves nothing behind.

    Raises:
        UsageError: naming the option, the folder and why.
    """
    created, probe = [], folder.absolute()
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise UsageError(f"{option} {folder} cannot be written ({err.strerror or err}); "
                         "choose a writable directory") from None
    finally:
        for path in created:  # innermost first
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()


# ----------------------------------------------------------------------------- report
def cmd_report(args: argparse.Namespace) -> int:
    profile = get_profile(args.profile)
    for name in args.tables:
        get_table(name)  # every name checked before the store is touched
    formats = parse_formats(args.format)
    uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_uri(uri)
    for written in report_tables(args.tables, profile, uri, out_dir=args.out, results_dir=args.results_dir,
                                 formats=formats):
        print(f"{written.table}: wrote {', '.join(str(p) for p in written.paths)} "
              f"from MLflow run {written.run_id} (experiment beit3-tables) in {uri}")
    return 0


# ----------------------------------------------------------------------------- data
def cmd_data_world(args: argparse.Namespace) -> int:
    profile = get_profile(args.profile)
    if not profile.synthetic:
        synthetic = ", ".join(n for n in list_profiles() if PROFILES[n].synthetic)
        raise UsageError(
            f"profile {profile.name!r} reads the real datasets; `harness data world` builds the "
            f"generated worlds of profiles: {synthetic}"
        )
    from harness.world import build_world  # imported here: only this command needs PIL & co.

    build_world(Path(args.out), profile.name, args.seed)
    print(f"built the {profile.name} world (seed {args.seed}) in {args.out}; "
          f"its contents and prior-only baselines: {Path(args.out) / 'README.md'}")
    return 0


# ----------------------------------------------------------------------------- parser
def _add_store_and_output_arguments(parser: argparse.ArgumentParser, reports: str) -> None:
    """``--tracking-uri``, ``--out`` (for ``reports``) and ``--results-dir``, shared by run and report."""
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<repo-or-cwd>/mlflow.db)",
    )
    parser.add_argument("--out", default="reports", help=f"directory for {reports} (default: reports)")
    parser.add_argument("--results-dir", default="results", help="directory for <table>.csv (default: results)")


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="harness",
        description="Reproducibility and benchmark harness for BEiT-3 (arXiv 2208.10442).",
        formatter_class=formatter,
        epilog=_examples(
            "harness list tables",
            "harness run table2 --profile smoke",
            "harness run table2 --dry-run",
            "harness report table2",
            "harness data world --profile smoke --out data/world-smoke",
        ),
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of errors (default: one line)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p_list = sub.add_parser(
        "list",
        help="list tables, tasks, models, profiles or recipes",
        description="List the paper's tables (and which ones the harness can regenerate), the "
        "tasks, the registered models, the run profiles, or the pretraining recipes.",
        formatter_class=formatter,
        epilog=_examples("harness list", "harness list models", "harness list profiles"),
    )
    p_list.add_argument("what", nargs="?", default="tables", choices=sorted(_LISTERS),
                        help="what to list (default: tables)")
    p_list.set_defaults(handler=cmd_list)

    p_run = sub.add_parser(
        "run",
        help="regenerate paper tables",
        description="Plan, run and render paper tables. Each table is written to OUT/<table>.md and "
        "RESULTS_DIR/<table>.csv and recorded as an MLflow run (experiment beit3-tables).",
        formatter_class=formatter,
        epilog=_examples(
            "harness run table2",
            "harness run table2 --profile mini --tracking-uri sqlite:///$PWD/mlflow.db",
            "harness run table2 --dry-run",
            "harness run table4 --profile mini --seeds 3 --recipes beit3,none",
            "harness run table4 --profile mini --nproc 2   # each training run under torchrun",
            "harness run compare --profile mini --seeds 3",
            "harness run compare --profile mini --seeds 3 --ablation layout=paper --ablation vl_ffn=off",
        ),
    )
    p_run.add_argument("tables", nargs="+", metavar="TABLE", help="table names, e.g. table2 (see `harness list`)")
    p_run.add_argument(
        "--profile", default="smoke", help=f"run profile: {', '.join(list_profiles())} (default: smoke)"
    )
    p_run.add_argument("--seeds", type=int, default=None, help="seeds per experiment (default: the profile's)")
    p_run.add_argument("--recipes", default=None, metavar="R1,R2",
                       help=f"what finetunes start from, comma-separated: {', '.join(RECIPE_NAMES)} "
                       "(none = random init; default: all)")
    p_run.add_argument("--ablation", action="append", default=[], metavar="NAME=VALUE",
                       help="change one pretraining knob alike in every recipe (repeatable; ablated runs get their "
                       "own config hashes, finetunes descend from them): "
                       + "; ".join(f"{name}: {switch.help}" for name, switch in SWITCHES.items()))
    p_run.add_argument("--nproc", type=int, default=1,
                       help="processes per training run; > 1 launches each under torchrun (default: 1)")
    p_run.add_argument("--dry-run", action="store_true", help="print the experiments the tables need and stop")
    p_run.add_argument("--weights", default="weights", metavar="DIR",
                       help="folder of the released checkpoints (table released; default: weights)")
    _add_store_and_output_arguments(p_run, "<table>.md")
    p_run.set_defaults(handler=cmd_run)

    p_eval = sub.add_parser(
        "eval",
        help="score one finetuned checkpoint (released or the harness's own) with the task's official metric",
        description="Evaluate a checkpoint: the model is read from its tensors, the task's official settings "
        "score it; writes metrics, per-item predictions and the leaderboard file, records one MLflow run "
        "(experiment beit3-eval).",
        formatter_class=formatter,
        epilog=_examples(
            "harness eval vqav2 --checkpoint weights/beit3_base_patch16_480_vqa.pth --data data/vqav2",
            "harness eval coco_retrieval --checkpoint weights/beit3_base_patch16_384_coco_retrieval.pth --data data/coco",
            "harness eval nlvr2 --checkpoint runs/nlvr2-beit3-smoke-seed0/model.pt --data data/world/smoke-seed0-v1 --limit 8",
        ),
    )
    add_eval_arguments(p_eval)
    p_eval.set_defaults(handler=cmd_eval)

    p_data = sub.add_parser(
        "data",
        help="build data sets",
        description="Build the data a profile reads.",
        formatter_class=formatter,
        epilog=_examples("harness data world --profile smoke --out data/world-smoke"),
    )
    data_sub = p_data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    p_world = data_sub.add_parser(
        "world",
        help="generate the synthetic benchmark world of a profile",
        description="Generate the synthetic world (images, captions, QA, boxes, masks) that the "
        "smoke and mini profiles read.",
        formatter_class=formatter,
        epilog=_examples(
            "harness data world --profile smoke --out data/world-smoke",
            "harness data world --profile mini --out data/world-mini --seed 1",
        ),
    )
    p_world.add_argument("--profile", required=True, help="smoke or mini")
    p_world.add_argument("--out", required=True, help="output directory")
    p_world.add_argument("--seed", type=int, default=0, help="world seed (default: 0)")
    p_world.set_defaults(handler=cmd_data_world)

    p_report = sub.add_parser(
        "report",
        help="render recorded tables from MLflow alone (markdown, LaTeX, HTML, CSV)",
        description="Render paper tables from the latest FINISHED run of each table and profile in MLflow "
        "(experiment beit3-tables), without running anything: OUT/<table>.md (the table's own render), "
        "OUT/<table>.tex (booktabs), OUT/<table>.html (one self-contained page: paper vs measured, mean ± std "
        "over seeds, links to the runs, loss curves, bars per recipe) and RESULTS_DIR/<table>.csv.",
        formatter_class=formatter,
        epilog=_examples(
            "harness report table4 --profile mini",
            "harness report --profile smoke            # every table with a recorded run",
            "harness report table2 table3 --format html --tracking-uri sqlite:///$PWD/mlflow.db",
        ),
    )
    p_report.add_argument("tables", nargs="*", metavar="TABLE",
                          help="table names (default: every table with a recorded run for the profile)")
    p_report.add_argument(
        "--profile", default="smoke", help=f"whose runs: {', '.join(list_profiles())} (default: smoke)"
    )
    _add_store_and_output_arguments(p_report, "<table>.md/.tex/.html")
    p_report.add_argument("--format", default=",".join(FORMATS), metavar="F1,F2",
                          help=f"report formats, comma-separated: {', '.join(FORMATS)} (default: all; "
                          "the CSV is always written)")
    p_report.set_defaults(handler=cmd_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``harness`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    # MLflow logs its sqlite schema migrations at INFO on every new store.
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return args.handler(args)
    except BrokenPipeError:
        # The reader went away (`harness list models | head`): not an error of the harness.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"harness: error: {one_line(err)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
