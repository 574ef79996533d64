"""Process-group set-up from the torchrun environment (nanoGPT style): rank 0 logs and saves; model
wrapping (DDP/FSDP) and gathering the full training state for a checkpoint."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn


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


# ----------------------------------------------------------------------------- wrapping and state
def wrap_parallel(model: nn.Module, parallel: str, info: DistInfo, find_unused_parameters: bool = True) -> nn.Module:
    """DDP (``parallel="ddp"``) or FSDP2 per encoder layer (``"fsdp"``) under torchrun; as is otherwise."""
    if not info.enabled:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        from backbones.beit3 import EncoderLayer

        for module in model.modules():
            if isinstance(module, EncoderLayer):
                fully_shard(module)
        fully_shard(model)
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _sharded(parallel: str, info: DistInfo) -> bool:
    return info.enabled and parallel == "fsdp"


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, parallel: str,
               info: DistInfo) -> tuple[dict[str, Any], dict[str, Any]]:
    """Unsharded model and optimizer state (FSDP gathers to every rank; rank 0 writes)."""
    if _sharded(parallel, info):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return unwrap(model).state_dict(), optimizer.state_dict()


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict[str, Any],
                    optim_state: dict[str, Any], parallel: str, info: DistInfo) -> None:
    if _sharded(parallel, info):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                       options=StateDictOptions(full_state_dict=True))
        return
    unwrap(model).load_state_dict(model_state)
    optimizer.load_state_dict(optim_state)


def gather_objects(value: Any, info: DistInfo) -> list[Any]:
    """``value`` of every rank (e.g. RNG states: drop path and augmentation differ per rank), on all ranks."""
    if not info.enabled:
        return [value]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, value)
    return gathered
