"""Classification metrics: accuracy (NLVR2) and top-k accuracy (ImageNet-1K), in percent.

As the official handlers (``NLVR2Handler`` uses ``logits.max(-1)``, ``ImageNetHandler`` timm's
``accuracy(topk=(1, 5))``), with ties made deterministic: among equal scores the lower class index
ranks first (``argmax`` semantics), where ``topk`` leaves the order unspecified.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from tasks.metrics._checks import EmptySplitError, check_not_empty

__all__ = ["EmptySplitError", "accuracy", "target_ranks", "topk_accuracy"]


def _check_labels(labels: torch.Tensor, num_items: int, num_classes: int | None) -> torch.Tensor:
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.shape[0] != num_items:
        raise ValueError(f"labels must be a 1-d tensor of {num_items} class ids, got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point:
        raise TypeError(f"labels must be integer class ids, got {labels.dtype}")
    if num_classes is not None and num_items and (labels.min() < 0 or labels.max() >= num_classes):
        low, high = int(labels.min()), int(labels.max())
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{low}, {high}]")
    return labels.long()


def accuracy(predictions: torch.Tensor, labels: torch.Tensor, split: str = "eval") -> float:
    """Top-1 accuracy in percent.

    Args:
        predictions: logits (N, C) (arg-max taken, first index on ties) or predicted ids (N,).
        labels: (N,) class ids.
        split: the split's name, used in error messages.
    """
    predictions = torch.as_tensor(predictions)
    check_not_empty(predictions.shape[0] if predictions.dim() else 0, split, "examples")
    if predictions.dim() == 2:
        labels = _check_labels(labels, predictions.shape[0], predictions.shape[1])
        predictions = predictions.argmax(dim=1)
    elif predictions.dim() == 1:
        labels = _check_labels(labels, predictions.shape[0], None)
    else:
        raise ValueError(f"predictions must be logits (N, C) or ids (N,), got shape {tuple(predictions.shape)}")
    return 100.0 * (predictions.long() == labels.to(predictions.device)).float().mean().item()


def target_ranks(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """0-based rank of each true class in its row: classes scoring higher, plus equal ones with a lower index."""
    labels = labels.to(logits.device).unsqueeze(1)
    true_score = logits.gather(1, labels)
    columns = torch.arange(logits.shape[1], device=logits.device).unsqueeze(0)
    ahead = (logits > true_score) | ((logits == true_score) & (columns < labels))
    return ahead.sum(dim=1)


def topk_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, topk: Sequence[int] = (1, 5), split: str = "eval"
) -> dict[str, float]:
    """Top-k accuracies in percent, as ``{"acc1": ..., "acc5": ...}`` (the official ImageNet keys)."""
    logits = torch.as_tensor(logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, C), got shape {tuple(logits.shape)}")
    check_not_empty(logits.shape[0], split, "images")
    if any(k < 1 for k in topk):
        raise ValueError(f"topk values must be >= 1, got {tuple(topk)}")
    labels = _check_labels(labels, logits.shape[0], logits.shape[1])
    ranks = target_ranks(logits.float(), labels)
    return {f"acc{k}": 100.0 * (ranks < k).float().mean().item() for k in topk}
