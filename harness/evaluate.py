"""``harness eval``: score one finetuned checkpoint (released or the harness's own) on one task.

    harness eval vqav2 --checkpoint weights/beit3_base_patch16_480_vqa.pth --data data/vqav2
    harness eval coco_retrieval --checkpoint weights/beit3_base_patch16_384_coco_retrieval.pth --data data/coco
    harness eval nlvr2 --checkpoint runs/.../model.pt --data data/world/smoke-seed0-v3 --limit 8

The checkpoint's tensors decide the model (size, resolution, head: ``tasks.checkpoints``); its file
name only cross-checks them. The task's own ``evaluate`` scores it with the official settings (the
checkpoint's resolution, the task's normalisation, beam search, answer list, both retrieval
directions). Written to ``OUT/<checkpoint>-<task>-<split>[-limitN]/``: ``metrics.json``, the per-item
frame ``per_item.csv.gz`` and the leaderboard file of the task (VQAv2: the EvalAI JSON; COCO
captioning: the results JSON; NLVR2: ``identifier,prediction`` lines). One MLflow run (experiment
``beit3-eval``) records the metrics, the files and the checkpoint's sha256, file name, task, split
and data root. Bad input (missing or truncated file, another task's checkpoint, a data root without
the split) is one :class:`EvalError` line, raised before any run is recorded.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import torch

import tasks
from tasks.atomic import write_atomic
from tasks.spec import ITEM_COLUMNS, EvalResult

from .profiles import unknown_name_error
from .tracking import check_tracking_uri, config_hash, find_finished_run, resolve_tracking_uri, start_run

EVAL_EXPERIMENT = "beit3-eval"
SPM_NAME = "beit3.spm"  # the official SentencePiece model; a data root holds it (paper profile convention)
ANSWER_VOCAB_FILES = ("answer2label.txt", "vqa/answer2label.txt")  # where make_dataset_index writes it
TEXT_TASKS = ("vqav2", "nlvr2", "captioning", "retrieval")
MAX_ERROR_CHARS = 600


class EvalError(ValueError):
    """A request ``harness eval`` cannot serve; one line naming the file/key and what to do."""


@dataclass(frozen=True)
class EvalTask:
    """One thing ``harness eval`` scores.

    Args:
        name: the command-line name.
        task: the registry task whose ``evaluate`` scores it.
        data: data-config entries that select it (retrieval's data set).
        split: the split the released numbers are reported on.
        release_suffix: the end of the official file name (``beit3_base_patch16_480_<suffix>.pth``).
        leaderboard: which leaderboard file the predictions make (``None``: the metric is local).
    """

    name: str
    task: str
    split: str
    release_suffix: str
    data: Mapping[str, Any] = field(default_factory=dict)
    leaderboard: str | None = None


EVAL_TASKS: dict[str, EvalTask] = {t.name: t for t in (
    EvalTask("vqav2", "vqav2", "test-dev", "vqa", leaderboard="vqav2"),
    EvalTask("nlvr2", "nlvr2", "test1", "nlvr2", leaderboard="nlvr2"),
    EvalTask("captioning", "captioning", "test", "coco_captioning", leaderboard="captioning"),
    EvalTask("coco_retrieval", "retrieval", "test", "coco_retrieval", data={"dataset": "coco"}),
    EvalTask("flickr30k_retrieval", "retrieval", "test", "f30k_retrieval", data={"dataset": "flickr30k"}),
    EvalTask("imagenet", "imagenet", "test", "in1k"),
)}


def get_eval_task(name: str) -> EvalTask:
    if name not in EVAL_TASKS:
        raise unknown_name_error("evaluation task", name, EVAL_TASKS)
    return EVAL_TASKS[name]


@dataclass(frozen=True)
class EvalOutcome:
    """What one ``harness eval`` produced."""

    run_id: str
    metrics: dict[str, float]
    out_dir: Path
    files: dict[str, Path]
    tags: dict[str, str]
    reused: bool = False


# ----------------------------------------------------------------------------- checkpoint identity
@functools.lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """sha256 of the file (cached per path, size and modification time)."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


def one_line(err: BaseException | str) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + " ..."


def recorded_num_heads(checkpoint: Path, tracking_uri: str) -> int | None:
    """The attention heads of the harness run that exported ``checkpoint`` (its ``checkpoint`` tag), if any.

    A state dict does not hold the head count; the harness's own training runs record it.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    for candidate in dict.fromkeys([str(checkpoint), str(checkpoint.resolve())]):
        quoted = candidate.replace("'", "\\'")
        runs = client.search_runs(experiments, filter_string=f"tags.checkpoint = '{quoted}'", max_results=1)
        if runs:
            heads = runs[0].data.params.get("model_overrides.num_heads")
            return int(heads) if heads is not None else None
    return None


def load_checkpoint_model(eval_task: EvalTask, checkpoint: Path, num_heads: int | None = None):
    """The task model the checkpoint holds (``tasks.checkpoints``), every failure one :class:`EvalError`."""
    from backbones import CheckpointError, read_state_dict
    from tasks.checkpoints import build_model_for_checkpoint

    if not checkpoint.is_file():
        raise EvalError(f"checkpoint {checkpoint} does not exist: give the path of a .pth file (the released "
                        "ones and their links: results/paper/released.json)")
    try:
        state_dict = read_state_dict(checkpoint)
        return build_model_for_checkpoint(state_dict, eval_task.task, num_heads=num_heads, name=str(checkpoint))
    except CheckpointError as err:
        raise EvalError(one_line(err)) from None


def name_check(checkpoint: Path, eval_task: EvalTask, loaded) -> list[str]:
    """Where an official file name disagrees with what the tensors say (empty when it agrees)."""
    from backbones.inspect_checkpoint import name_mismatches, parse_release_name

    found = name_mismatches(checkpoint, loaded.architecture)
    named = parse_release_name(checkpoint)
    if named is not None and named["suffix"] and named["suffix"] != eval_task.release_suffix:
        found.append(f"the name ends in _{named['suffix']}, a {eval_task.name} release ends in _{eval_task.release_suffix}")
    return found


# ----------------------------------------------------------------------------- data
def data_config(eval_task: EvalTask, root: Path, classifier: str | None = None) -> dict[str, Any]:
    """The task's data config for ``root``: a benchmark world (``world.json``) names its own files; an
    official data root holds ``beit3.spm`` (and, for VQAv2, ``answer2label.txt`` when it has one)."""
    if not root.is_dir():
        raise EvalError(f"data root {root} is not a directory: give the folder holding the {eval_task.name} data "
                        "(official layout, or a benchmark world built by harness data world)")
    config: dict[str, Any] = {"root": str(root), **eval_task.data}
    if (root / "world.json").is_file():
        return config
    needs_text = eval_task.task in TEXT_TASKS or classifier == "retrieval"
    if needs_text:
        if not (root / SPM_NAME).is_file():
            raise EvalError(f"{root} has no {SPM_NAME}: put the official SentencePiece model there "
                            "(https://github.com/addf400/files/releases/download/beit3/beit3.spm)")
        config["tokenizer"] = SPM_NAME
    if eval_task.task == "vqav2":
        vocab = next((name for name in ANSWER_VOCAB_FILES if (root / name).is_file()), None)
        if vocab is not None:
            config["answer_vocab"] = vocab
    return config


# ----------------------------------------------------------------------------- evaluation
def run_task_evaluation(task: str, model: torch.nn.Module, data: Mapping[str, Any], *, split: str,
                        limit: int | None, batch_size: int | None, device: str) -> EvalResult:
    """``TaskSpec.evaluate`` of the task registry (the per-item contract of ``tasks.spec``)."""
    kwargs: dict[str, Any] = {"split": split, "limit": limit, "device": device}
    if batch_size:
        kwargs["batch_size"] = batch_size
    return tasks.get_task(task).evaluate(model, dict(data), **kwargs)


def _check_items(items: pd.DataFrame, task: str) -> pd.DataFrame:
    missing = [c for c in ITEM_COLUMNS if c not in items.columns]
    if missing:
        raise ValueError(f"the {task} evaluation returned a per-item frame without {missing} (tasks.spec contract)")
    return items


def write_leaderboard_file(kind: str, items: pd.DataFrame, out_dir: Path, split: str) -> Path:
    """The file the task's leaderboard takes, from the per-item predictions.

    ``vqav2``: ``submit_vqav2_<split>.json``, ``[{"question_id": int, "answer": str}]`` (EvalAI).
    ``captioning``: ``coco_captioning_<split>_results.json``, ``[{"image_id": int, "caption": str}]``.
    ``nlvr2``: ``nlvr2_<split>_predictions.csv``, lines ``identifier,True|False`` (the NLVR2 scripts' input).
    """
    if kind == "vqav2":
        rows = [{"question_id": int(i), "answer": str(p)} for i, p in zip(items["item_id"], items["prediction"])]
        return write_atomic(out_dir / f"submit_vqav2_{split}.json", json.dumps(rows) + "\n")
    if kind == "captioning":
        rows = [{"image_id": int(i), "caption": str(p)} for i, p in zip(items["item_id"], items["prediction"])]
        return write_atomic(out_dir / f"coco_captioning_{split}_results.json", json.dumps(rows) + "\n")
    if kind == "nlvr2":
        lines = [f"{i},{_nlvr2_label(p)}" for i, p in zip(items["item_id"], items["prediction"])]
        return write_atomic(out_dir / f"nlvr2_{split}_predictions.csv", "\n".join(lines) + "\n")
    raise KeyError(f"no leaderboard file of kind {kind!r}")


def _nlvr2_label(prediction: Any) -> str:
    text = str(prediction).strip()
    labels = {"1": "True", "true": "True", "0": "False", "false": "False"}
    if text.lower() not in labels:
        raise ValueError(f"NLVR2 prediction {prediction!r} is not a label (True/False or 1/0)")
    return labels[text.lower()]


def official_settings(eval_task: EvalTask, loaded) -> dict[str, Any]:
    """The evaluation settings of this checkpoint, as recorded (the task modules hold the values)."""
    arch = loaded.architecture
    settings: dict[str, Any] = {"img_size": arch.img_size, "patch_size": arch.patch_size}
    if eval_task.task == "imagenet":
        settings["normalisation"] = "imagenet_default (0.485,0.456,0.406)/(0.229,0.224,0.225)"
        settings["eval_transform"] = "resize + center crop, crop_pct 1.0"
    else:
        settings["normalisation"] = "inception (0.5,0.5,0.5)/(0.5,0.5,0.5)"
        settings["eval_transform"] = "resize (squash), bicubic"
    if eval_task.task == "captioning":
        recipe = tasks.task_module("captioning").CAPTIONING_RECIPES[arch.size_name or "base"]
        settings.update(num_beams=recipe["num_beams"], length_penalty=recipe["length_penalty"],
                        max_len=recipe["num_max_bpe_tokens"])
    if eval_task.task == "vqav2":
        settings["answers"] = loaded.build_options["num_classes"]
    if eval_task.task == "retrieval":
        settings["directions"] = "image->text and text->image"
    return settings


def eval_config(eval_task: EvalTask, sha256: str, split: str, limit: int | None, data_root: Path) -> dict[str, Any]:
    """What decides an evaluation's numbers: its hash finds a finished evaluation again."""
    return {"eval_task": eval_task.name, "task": eval_task.task, "checkpoint_sha256": sha256, "split": split,
            "limit": limit, "data_root": str(data_root.resolve())}


def find_evaluation(eval_task: EvalTask, checkpoint: Path, data_root: Path, split: str | None = None,
                    limit: int | None = None, *, tracking_uri: str) -> Any | None:
    """The FINISHED ``beit3-eval`` run of this checkpoint, task, split and data root, or None."""
    config = eval_config(eval_task, checkpoint_sha256(checkpoint), split or eval_task.split, limit, data_root)
    return find_finished_run(EVAL_EXPERIMENT, config_hash(config), tracking_uri=tracking_uri)


def evaluate_checkpoint(
    eval_name: str,
    checkpoint: str | os.PathLike,
    data_root: str | os.PathLike,
    *,
    split: str | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    out_dir: str | os.PathLike = "eval",
    tracking_uri: str | None = None,
    device: str | None = None,
) -> EvalOutcome:
    """Evaluate ``checkpoint`` on ``eval_name`` (:data:`EVAL_TASKS`) and record one MLflow run.

    Everything that can be wrong with the input (checkpoint, task, data root, split) is found before
    the run is opened, so a failed evaluation leaves no FINISHED run behind.

    Raises:
        EvalError: one line naming the file/key and what to do.
    """
    eval_task = get_eval_task(eval_name)
    checkpoint, data_root = Path(checkpoint), Path(data_root)
    split = split or eval_task.split
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be at least 1, got {limit}")
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    heads = recorded_num_heads(checkpoint, uri) if checkpoint.is_file() else None
    loaded = load_checkpoint_model(eval_task, checkpoint, num_heads=heads)
    data = data_config(eval_task, data_root, loaded.build_options.get("classifier"))
    sha256 = checkpoint_sha256(checkpoint)
    mismatches = name_check(checkpoint, eval_task, loaded)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = loaded.model.to(device)
    try:
        result = run_task_evaluation(eval_task.task, model, data, split=split, limit=limit, batch_size=batch_size,
                                     device=device)
    except EvalError:
        raise
    except (FileNotFoundError, KeyError, ValueError, OSError) as err:
        raise EvalError(f"{eval_task.name} split {split!r} cannot be evaluated from data root {data_root}: "
                        f"{one_line(err)}") from None
    items = _check_items(result.items, eval_task.task)

    label = "-".join([checkpoint.stem, eval_task.name, split, *([f"limit{limit}"] if limit else [])])
    target = Path(out_dir) / label
    files = {"metrics": write_atomic(target / "metrics.json", json.dumps(result.metrics, indent=2, sort_keys=True) + "\n")}
    target.mkdir(parents=True, exist_ok=True)
    items.to_csv(target / "per_item.csv.gz", index=False, compression="gzip")
    files["per_item"] = target / "per_item.csv.gz"
    if eval_task.leaderboard is not None and len(items):
        files["leaderboard"] = write_leaderboard_file(eval_task.leaderboard, items, target, split)

    settings = official_settings(eval_task, loaded)
    tags = {
        "checkpoint_sha256": sha256, "checkpoint_file": checkpoint.name, "checkpoint_path": str(checkpoint.resolve()),
        "task": eval_task.task, "eval_task": eval_task.name, "split": split, "data_root": str(data_root.resolve()),
        "limit": str(limit) if limit else "none", "partial": str(bool(limit)).lower(),
        "model": loaded.model_name, "head_layout": loaded.layout, "num_heads": str(loaded.model_overrides["num_heads"]),
        "num_heads_from": "training run" if heads is not None else "64-dim heads (released sizes)",
        "name_check": "; ".join(mismatches) if mismatches else "agrees",
        "num_items": str(len(items)),
    }
    # The config is what decides the numbers (its hash finds the evaluation again); what was read
    # from the checkpoint and the settings that follow from it are tags.
    config = eval_config(eval_task, sha256, split, limit, data_root)
    tags.update({f"setting.{k}": str(v) for k, v in settings.items()})
    tags["model_overrides"] = json.dumps(loaded.model_overrides, sort_keys=True)
    with start_run(EVAL_EXPERIMENT, label, config, tags=tags, tracking_uri=uri) as run:
        numbers = {f"eval.{split}.{k}": float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
        if numbers:
            run.log_metrics(numbers)
        from .per_item import log_per_item

        log_per_item(run.run_id, split, items, tracking_uri=uri)
        for key, path in files.items():
            if key != "per_item":
                run.log_artifact(path, "eval")
    return EvalOutcome(run.run_id, dict(result.metrics), target, files, tags)


# ----------------------------------------------------------------------------- command line
def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task", metavar="TASK", help=f"what to score: {', '.join(EVAL_TASKS)}")
    parser.add_argument("--checkpoint", required=True, metavar="FILE",
                        help="a finetuned checkpoint: a released .pth or a harness export (model.pt)")
    parser.add_argument("--data", required=True, metavar="ROOT",
                        help="the task's data root (official layout with beit3.spm, or a benchmark world)")
    parser.add_argument("--split", default=None,
                        help="split to score (default: the released number's: " +
                        ", ".join(f"{t.name} {t.split}" for t in EVAL_TASKS.values()) + ")")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="score only the first N items (a quick check; the run is tagged partial)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="B", help="evaluation batch size")
    parser.add_argument("--out", default="eval", help="output folder (default: eval)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<repo-or-cwd>/mlflow.db)")


def cmd_eval(args: argparse.Namespace) -> int:
    outcome = evaluate_checkpoint(args.task, args.checkpoint, args.data, split=args.split, limit=args.limit,
                                  batch_size=args.batch_size, out_dir=args.out, tracking_uri=args.tracking_uri)
    tags = outcome.tags
    if args.limit:
        print(f"PARTIAL: only the first {args.limit} items of {tags['split']} were scored (--limit); "
              "not comparable to a full evaluation, not for leaderboards")
    print(f"{tags['eval_task']} {tags['split']}: {tags['checkpoint_file']} ({tags['model']}, {tags['head_layout']} head, "
          f"sha256 {tags['checkpoint_sha256'][:12]}), {tags['num_items']} items")
    if tags["name_check"] != "agrees":
        print(f"warning: file name and tensors disagree ({tags['name_check']}); the tensors were used")
    for key, value in sorted(outcome.metrics.items()):
        print(f"  {key} = {value:.4f}")
    for key, path in outcome.files.items():
        print(f"wrote {key}: {path}")
    print(f"MLflow run {outcome.run_id} (experiment {EVAL_EXPERIMENT})")
    return 0
