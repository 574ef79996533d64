"""Compatibility of mmengine 0.10.7 / mmcv 2.1.0 / mmdet 3.3.0 / mmseg 1.2.2 with this environment.

Handled here, never by editing site-packages:

- **torch >= 2.6 ``weights_only``.** mmengine calls ``torch.load`` without ``weights_only``, so torch
  loads with ``weights_only=True``; the checkpoints mmengine itself writes keep ``HistoryBuffer``
  objects and numpy arrays/scalars in ``meta['message_hub']`` and fail to load on ``load_from``,
  ``resume`` or testing (mmengine#1655). ``allow_mmengine_checkpoints`` adds exactly what those
  files reference to torch's safe globals, so the restricted unpickler stays on for everything else.
- **pkg_resources.** mmengine resolves ``mmdet::`` / ``mmseg::`` config bases and ``is_installed``
  through ``pkg_resources``, which setuptools 82 removed; we pin setuptools<80.
  ``require_pkg_resources`` turns its absence into one error that says so.
- **CPU-only runs.** ``AmpOptimWrapper`` asserts a CUDA/NPU/MLU/MUSA device and ``SyncBN`` needs a
  process group; ``cpu_overrides`` rewrites a config for a machine without a GPU (plain
  ``OptimWrapper``; SyncBN -> BN; dataloaders without worker processes).
- **numpy 2.** numpy 2 moved ``numpy.core`` to ``numpy._core``; the safe-global list names the
  classes through whichever module this numpy has.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable

import numpy as np
import torch

__all__ = [
    "allow_mmengine_checkpoints",
    "apply",
    "cpu_overrides",
    "mmengine_safe_globals",
    "numpy_safe_globals",
    "require_pkg_resources",
    "safe_torch_load",
]


def require_pkg_resources() -> None:
    """Import ``pkg_resources`` (quietly); without it mmengine cannot resolve ``mmdet::`` bases.

    Raises:
        ImportError: setuptools >= 82 (or none) is installed; the message says what to install.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            import pkg_resources  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "pkg_resources is missing (setuptools >= 82 removed it); mmengine 0.10.7 needs it for "
                "'mmdet::'/'mmseg::' config bases: pip install 'setuptools<80'"
            ) from err


def numpy_safe_globals() -> list[Any]:
    """The numpy classes and functions that pickled arrays and scalars reference."""
    multiarray = getattr(np, "_core", None)
    multiarray = multiarray.multiarray if multiarray is not None else np.core.multiarray
    found: list[Any] = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype]
    # numpy >= 1.25 pickles dtypes as instances of their ``numpy.dtypes`` classes.
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        found += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    return found


def mmengine_safe_globals() -> list[Any]:
    """What the ``meta`` of an mmengine 0.10.7 checkpoint references besides tensors.

    ``message_hub`` keeps ``HistoryBuffer`` objects (numpy arrays inside) whose
    ``_statistics_methods`` dict pickles its functions as ``getattr(HistoryBuffer, 'min')``, hence
    ``getattr``. The restricted unpickler still refuses to *call* anything that is not allowlisted,
    so ``getattr`` can only fetch attributes of allowlisted objects.
    """
    from mmengine.logging.history_buffer import HistoryBuffer

    return [HistoryBuffer, getattr, *numpy_safe_globals()]


def allow_mmengine_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read mmengine checkpoints (``load_from``, ``resume``,
    testing) in this process: adds ``mmengine_safe_globals`` to torch's safe globals (idempotent)."""
    torch.serialization.add_safe_globals(mmengine_safe_globals())


def safe_torch_load(path: str, extra_globals: Iterable[Any] = ()) -> Any:
    """``torch.load(weights_only=True)`` on CPU that also accepts numpy arrays/scalars.

    Our trainer's step checkpoints keep numpy RNG states beside the weights; the safe globals are
    scoped to this call.
    """
    present = torch.serialization.get_safe_globals()
    # safe_globals() removes its globals on exit: add only those not already allowed process-wide.
    scoped = [g for g in [*numpy_safe_globals(), *extra_globals] if g not in present]
    with torch.serialization.safe_globals(scoped):
        return torch.load(path, map_location="cpu", weights_only=True)


def _replace_types(node: Any, mapping: dict[str, str]) -> Any:
    """Recursively rename ``type`` values of config dicts (in place for dicts, copies of lists)."""
    if isinstance(node, dict):
        if isinstance(node.get("type"), str) and node["type"] in mapping:
            node["type"] = mapping[node["type"]]
        for key, value in node.items():
            node[key] = _replace_types(value, mapping)
        return node
    if isinstance(node, (list, tuple)):
        return type(node)(_replace_types(value, mapping) for value in node)
    return node


def cpu_overrides(cfg: Any) -> Any:
    """Rewrite an mmengine ``Config`` for a machine without a GPU, in place; returns it.

    - ``AmpOptimWrapper`` -> ``OptimWrapper`` (Amp asserts an accelerator; its ``loss_scale`` and
      ``dtype`` options are dropped).
    - every ``SyncBN`` norm config -> ``BN`` (a non-distributed Runner would revert the layers too,
      but models built outside a Runner would not).
    - dataloaders: ``num_workers=0`` and ``persistent_workers=False`` (torch rejects persistent
      workers without workers, and mmengine passes the flag through).
    """
    optim = cfg.get("optim_wrapper")
    if optim is not None and optim.get("type") == "AmpOptimWrapper":
        optim["type"] = "OptimWrapper"
        for key in ("loss_scale", "dtype", "use_fsdp"):
            optim.pop(key, None)
    for key in list(cfg.keys()):
        cfg[key] = _replace_types(cfg[key], {"SyncBN": "BN", "MMSyncBN": "BN"})
    for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg.get(name)
        if loader is not None:
            loader["num_workers"] = 0
            loader["persistent_workers"] = False
    return cfg


def apply() -> None:
    """Everything that must hold before an mmengine Runner starts here (idempotent)."""
    require_pkg_resources()
    allow_mmengine_checkpoints()
