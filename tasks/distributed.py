"""World information and a gradient-passing all-gather (unilm ``beit3/utils.py::GatherLayer``).

Everything works in a single process without ``torch.distributed`` being initialised: the rank is
0, the world size 1 and :func:`all_gather_with_grad` returns its input.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["GatherLayer", "all_gather_with_grad", "get_rank", "get_world_size", "is_distributed"]


def is_distributed() -> bool:
    """True when ``torch.distributed`` is available and a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


class GatherLayer(torch.autograd.Function):
    """All-gather whose backward sums the gradients of every rank and returns this rank's slice.

    ``torch.distributed.all_gather`` cuts the graph; here each rank's loss, which depends on every
    rank's features, sends its gradient back to the rank that produced them.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(output, x.contiguous())
        return tuple(output)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        all_gradients = torch.stack(grads)
        dist.all_reduce(all_gradients)
        return all_gradients[dist.get_rank()]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` of every rank along dim 0, in rank order, keeping gradients.

    Every rank must pass a tensor of the same shape. Without an initialised process group (or with
    one process) this is the identity.
    """
    if get_world_size() == 1:
        return x
    return torch.cat(GatherLayer.apply(x), dim=0)
