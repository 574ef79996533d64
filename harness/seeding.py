"""One seed for every generator a training process reads (python ``random``, numpy, torch CPU and CUDA).

The trainer calls :func:`seed_everything` twice per run: with ``rank=None`` before the model is
built, so that every rank (and every process that builds the same config) starts from the same
initial weights -- FSDP shards whatever each rank built, so the ranks must agree -- and with the
rank before the loop, so that drop path and the other in-model draws differ between ranks but are
fixed by the run's seed. The data objects derive their own generators from ``(seed, rank, step)``
(``tasks.pretrain_data``, ``tasks.finetune_data``) and never read these global ones.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

# Words mixed into the seed so that the model-building and the per-rank streams never coincide
# (seed 1 rank 0 must not replay seed 0 rank 1, as ``seed + rank`` did).
_MODEL_WORD = 0
_RANK_WORD = 1


def derived_seed(seed: int, rank: int | None = None) -> int:
    """A 63-bit seed from the run's ``seed`` and, if given, the process's ``rank`` (``numpy.random.SeedSequence``)."""
    if seed < 0 or (rank is not None and rank < 0):
        raise ValueError(f"seed and rank must be non-negative, got seed={seed}, rank={rank}")
    words = [int(seed), _MODEL_WORD] if rank is None else [int(seed), _RANK_WORD, int(rank)]
    return int(np.random.SeedSequence(words).generate_state(1, dtype=np.uint64)[0] >> 1)


def seed_everything(seed: int, rank: int | None = None, *, deterministic: bool = True) -> int:
    """Seed python ``random``, numpy's global generator and torch (CPU and every CUDA device).

    Args:
        seed: the run's seed (``TrainConfig.seed``).
        rank: ``None`` for what all ranks must share (the model's initial weights), else the
            process's rank for its own draws (drop path, dropout).
        deterministic: also ask cuDNN for deterministic kernels and no autotuning, which costs
            little; CPU kernels here are deterministic already. ``torch.use_deterministic_algorithms``
            is left off: it makes some CUDA ops raise or fall back to slow paths.

    Returns:
        The derived seed every generator was given.
    """
    value = derived_seed(seed, rank)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)  # also seeds every CUDA device
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        # cuBLAS picks reduction orders by workspace; a fixed one makes its GEMMs repeatable. Read when
        # the CUDA context starts, so it only matters before the first CUDA call; a user's value wins.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return value
