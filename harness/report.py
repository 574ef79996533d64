"""Number formats for reports: pure functions, values in, text out.

One number format everywhere: counts with thousands separators, deltas signed, percentages with
two decimals, an en dash for a missing value, and "mean ± std" (sample std) over seeds. The
documents are laid out and written by ``harness.tables.render``.
"""

from __future__ import annotations

import statistics
from typing import Sequence

MISSING = "–"


def format_number(value: float | int | None) -> str:
    """``1,234,567`` for integral values, ``0.1235`` for fractional ones, ``–`` for None."""
    if value is None:
        return MISSING
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.4f}"


def format_delta(value: float | int | None) -> str:
    """Signed version of ``format_number``: ``+404,224``, ``-0.0500``."""
    if value is None:
        return MISSING
    if float(value).is_integer():
        return f"{int(value):+,}"
    return f"{value:+.4f}"


def format_percent(value: float | None) -> str:
    """``+0.06%``; ``–`` for None."""
    return MISSING if value is None else f"{value:+.2f}%"


# ----------------------------------------------------------------------------- seeds
def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1) of ``values``; the std is None for one value.

    Raises:
        ValueError: ``values`` is empty.
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std needs at least one value")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def format_mean_std(values: Sequence[float], digits: int = 2) -> str:
    """``"12.34 ± 0.56"`` over seeds, ``"12.34"`` for one seed (``mean_std``)."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")
