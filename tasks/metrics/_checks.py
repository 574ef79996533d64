"""Input checks shared by the metric functions."""
from __future__ import annotations

__all__ = ["EmptySplitError", "check_not_empty"]


class EmptySplitError(ValueError):
    """A metric was asked to score an evaluation split with no items."""


def check_not_empty(count: int, split: str, what: str) -> None:
    if count == 0:
        raise EmptySplitError(
            f"evaluation split {split!r} has no {what} to score; check that the split's files were read "
            "and that the evaluation loop collected its outputs"
        )
