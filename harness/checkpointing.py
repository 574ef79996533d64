"""Checkpoints: one dict per step file, written atomically, the last N kept; resume from the latest.

A checkpoint (``training_state``) holds the (unwrapped) model, optimizer, lr schedule, grad scaler,
every rank's RNG state, the data position, the config and its hash, the git commit and the MLflow run
id, so that a run killed at any point and resumed ends bit-identical to an uninterrupted one (on the
same hardware). ``resume_checkpoint`` finds the checkpoint a run continues from and refuses one of
another config; ``restore_training_state`` puts it back into the live objects.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.atomic import atomic_path

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{8})\.pt$")


class ResumeError(ValueError):
    """A checkpoint that cannot be resumed by this run (another config, unreadable file)."""


class LineageError(ValueError):
    """A run's weights are missing or are not the ones its record says: nothing may descend from it."""


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain types, so that a checkpoint
    loads with ``torch.load(weights_only=True)``: no pickled object from a run directory is ever run."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"],
                         numpy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    folder = checkpoint_dir(out_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if CHECKPOINT_PATTERN.match(p.name))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def _atomic_torch_save(payload: Any, final: Path) -> Path:
    with atomic_path(final) as tmp:
        torch.save(payload, tmp)
    return final


def export_weights(out_dir: str | Path, model_state: dict[str, torch.Tensor]) -> Path:
    """The run's final weights as ``{'model': state_dict}`` (the official file layout), loadable with
    ``torch.load(weights_only=True)`` by ``backbones.load_checkpoint``; derived runs start from it."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return _atomic_torch_save({"model": model_state}, folder / "model.pt")


def save_checkpoint(out_dir: str | Path, step: int, payload: dict[str, Any], keep_last: int) -> Path:
    """Write ``step_XXXXXXXX.pt`` via a temporary file + rename, then prune to the last ``keep_last``."""
    folder = checkpoint_dir(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    final = _atomic_torch_save(payload, folder / f"step_{step:08d}.pt")
    for old in list_checkpoints(out_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return final


def training_state(*, step: int, model: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any],
                   scaler: dict[str, Any], rng: list[dict[str, Any]], data: dict[str, Any], config: dict[str, Any],
                   config_hash: str, run_identity: str, git_commit: str, mlflow_run_id: str,
                   logged: dict[str, float], wall_time_s: float, samples_seen: int) -> dict[str, Any]:
    """The payload of one resume checkpoint (every key is required: a resume needs all of them).

    ``logged`` (the last logged averages), ``wall_time_s`` and ``samples_seen`` (summed over the
    run's lives so far) let a resumed run report what the whole run did, not only its last life.
    """
    return {"step": step, "model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler,
            "rng": rng, "data": data, "config": config, "config_hash": config_hash, "run_identity": run_identity,
            "git_commit": git_commit, "mlflow_run_id": mlflow_run_id, "logged": dict(logged),
            "wall_time_s": float(wall_time_s), "samples_seen": int(samples_seen)}


class CheckpointWarning(UserWarning):
    """A checkpoint could not be read and was moved aside; the run resumes from an older one."""


def move_aside(path: Path) -> Path:
    """Rename an unreadable checkpoint so it is kept (for inspection) but no longer resumed from."""
    aside = path.with_name(path.name + ".unreadable")
    count = 1
    while aside.exists():
        aside = path.with_name(f"{path.name}.unreadable{count}")
        count += 1
    os.replace(path, aside)
    return aside


def resume_checkpoint(out_dir: str | Path, run_identity: str) -> dict[str, Any] | None:
    """The newest readable checkpoint of the run in ``out_dir``, or None when it has none.

    An unreadable checkpoint (truncated, corrupt, or not a weights-only file) is moved aside and the
    one before it is tried, with a :class:`CheckpointWarning` naming both.

    Raises:
        ResumeError: the checkpoint was written by another run (another config or parent weights).
    """
    moved: list[tuple[Path, Path, ResumeError]] = []
    for path in reversed(list_checkpoints(out_dir)):
        try:
            ckpt = load_checkpoint_file(path)
        except ResumeError as error:
            try:
                moved.append((path, move_aside(path), error))
            except FileNotFoundError:  # another rank moved it first
                pass
            continue
        written_by = ckpt.get("run_identity", ckpt.get("config_hash"))
        if written_by != run_identity:
            raise ResumeError(
                f"{path} was written by a run with config hash {written_by}, this run's is {run_identity}: "
                f"it belongs to another config. Use another out_dir, or resume with the config stored in the checkpoint."
            )
        for bad, aside, error in moved:
            warnings.warn(f"{error}; moved it to {aside.name} and resumed from {path}", CheckpointWarning, stacklevel=2)
        return ckpt
    for bad, aside, error in moved:
        warnings.warn(f"{error}; moved it to {aside.name}; no readable checkpoint is left, the run starts "
                      "from the beginning", CheckpointWarning, stacklevel=2)
    return None


def checkpoint_run_id(out_dir: str | Path) -> str:
    """The MLflow run id recorded in the newest readable checkpoint ("" if none): the run a resume continues.

    Memory-mapped, so peeking does not read the tensors."""
    for path in reversed(list_checkpoints(out_dir)):
        try:
            return str(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("mlflow_run_id", ""))
        except Exception:  # noqa: BLE001 - an unreadable file is the trainer's to move aside
            continue
    return ""


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def restore_training_state(ckpt: dict[str, Any], *, model: Any, optimizer: Any, scheduler: Any, scaler: Any,
                           data: Any, parallel: str, info: Any) -> int:
    """Load ``ckpt`` into the live training objects (this rank's RNG state); returns its step."""
    from .distributed import load_full_state

    load_full_state(model, optimizer, ckpt["model"], ckpt["optimizer"], parallel, info)
    try:
        scheduler.load_state_dict(ckpt["scheduler"])
    except ValueError as error:
        raise ResumeError(f"checkpoint of step {ckpt['step']}: {error}") from error
    scaler.load_state_dict(ckpt["scaler"])
    data.load_state_dict(ckpt["data"])
    set_rng_state(ckpt["rng"][min(info.rank, len(ckpt["rng"]) - 1)])
    return int(ckpt["step"])


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """A checkpoint of ours, read with ``weights_only=True``: tensors and plain types only, so a crafted
    file placed in a run directory cannot run code (it fails to load instead)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ResumeError(f"checkpoint {path} cannot be read: {error}") from error
