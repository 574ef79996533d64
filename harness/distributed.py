"""Process-group set-up from the torchrun environment (nanoGPT style): rank 0 logs and saves."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1): nccl on GPU, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, local_rank, world_size, device)


def shutdown_distributed(wait: bool = False) -> None:
    """Leave the process group; ``wait``: first until every rank got here (a rank whose peer tore its
    gloo pairs down mid-exchange can abort with "terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group() -> Iterator[DistInfo]:
    """``init_distributed`` for the body; afterwards all ranks leave together, or at once on an error
    (a barrier then could wait for a rank that is gone)."""
    info = init_distributed()
    try:
        yield info
    except BaseException:
        shutdown_distributed()
        raise
    shutdown_distributed(wait=True)


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value
