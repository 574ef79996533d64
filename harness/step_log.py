"""The scalars of one logging window, kept on the training device.

The trainer adds every micro-batch's scalar outputs and every step's gradient norm here, and marks
on the device whether a loss (or an unscaled gradient norm) was non-finite. Nothing in ``add_*``
reads a value back to the host, so on a GPU the steps between two log steps queue without waiting;
``read`` copies the window's averages and the first non-finite step to the host in one transfer
(after one all-reduce of each under DDP).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from .distributed import DistInfo


class LogWindow:
    """Device-side sums of the steps since the last log step."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.num_steps = 0
        self.first_nonfinite_step = torch.tensor(math.inf, device=device)

    def _mark_nonfinite(self, value: torch.Tensor, step: int) -> None:
        bad_step = torch.where(torch.isfinite(value), math.inf, float(step))
        self.first_nonfinite_step = torch.minimum(self.first_nonfinite_step, bad_step)

    def add_outputs(self, out: dict[str, object], loss: torch.Tensor, grad_accum_steps: int, step: int) -> None:
        """One micro-batch of optimizer step ``step`` (1-based): its scalar outputs, and its loss checked."""
        self._mark_nonfinite(loss.detach().float(), step)
        for key, value in out.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                scaled = value.detach().float().reshape(()) / grad_accum_steps
                self.sums[key] = self.sums[key] + scaled if key in self.sums else scaled

    def add_grad_norm(self, grad_norm: torch.Tensor, step: int, must_be_finite: bool) -> None:
        """Non-finite norms count as 0; they stop training unless a loss scaler skips such steps."""
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor (reduced over ranks on the device)
            grad_norm = grad_norm.full_tensor()
        grad_norm = grad_norm.detach().float()
        if must_be_finite:
            self._mark_nonfinite(grad_norm, step)
        finite_norm = torch.where(torch.isfinite(grad_norm), grad_norm, 0.0)
        self.sums["grad_norm"] = self.sums["grad_norm"] + finite_norm if "grad_norm" in self.sums else finite_norm
        self.num_steps += 1

    def read(self, info: DistInfo) -> tuple[dict[str, float], int | None]:
        """(averages over the window's steps and ranks, first non-finite step on any rank or None): one host sync."""
        keys = list(self.sums)
        values = torch.stack([self.sums[key] for key in keys]) / max(self.num_steps, 1) if keys else \
            torch.zeros(0, device=self.device)
        first_bad = self.first_nonfinite_step.clone()
        if info.enabled:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
            values /= info.world_size
            dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
        *averages, first = torch.cat([values, first_bad.reshape(1)]).tolist()
        return dict(zip(keys, averages)), None if math.isinf(first) else int(first)
