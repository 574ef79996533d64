"""Checkpoints: one dict per step file, written atomically, the last N kept; resume from the latest.

A checkpoint (``training_state``) holds the (unwrapped) model, optimizer, lr schedule, grad scaler,
every rank's RNG state, the data position, the config and its hash, the git commit and the MLflow run
id, so that a run killed at any point and resumed ends bit-identical to an uninterrupted one (on the
same hardware). ``resume_checkpoint`` finds the checkpoint a run continues from and refuses one of
another config; ``restore_training_state`` puts it back into the live objects.
"""
from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_PATTERN = re.compile(r"^step_(\d{8})\.pt$")


class ResumeError(ValueError):
    """A checkpoint that cannot be resumed by this run (another config, unreadable file)."""


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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
    handle, tmp = tempfile.mkstemp(dir=final.parent, prefix=".tmp-", suffix=final.suffix)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
                   config_hash: str, git_commit: str, mlflow_run_id: str) -> dict[str, Any]:
    """The payload of one resume checkpoint (every key is required: a resume needs all of them)."""
    return {"step": step, "model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler,
            "rng": rng, "data": data, "config": config, "config_hash": config_hash, "git_commit": git_commit,
            "mlflow_run_id": mlflow_run_id}


def resume_checkpoint(out_dir: str | Path, config_hash: str) -> dict[str, Any] | None:
    """The latest checkpoint of the run in ``out_dir``, or None when it has none.

    Raises:
        ResumeError: the file cannot be read, or it was written under another config hash.
    """
    latest = latest_checkpoint(out_dir)
    if latest is None:
        return None
    ckpt = load_checkpoint_file(latest)
    if ckpt.get("config_hash") != config_hash:
        raise ResumeError(
            f"{latest} was written by a run with config hash {ckpt.get('config_hash')}, this run's is {config_hash}: "
            f"it belongs to another config. Use another out_dir, or resume with the config stored in the checkpoint."
        )
    return ckpt


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
    # Our own files hold numpy/python RNG states, so they are not weights-only loadable.
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ResumeError(f"checkpoint {path} cannot be read: {error}") from error
