"""Markdown rendering for reports: pure functions, values in, text out (lm-eval ``make_table`` style).

One number format everywhere: counts with thousands separators, deltas signed, percentages with
two decimals, and an en dash for a missing value.
"""

from __future__ import annotations

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


def _cell(text: str) -> str:
    return str(text).replace("|", r"\|").replace("\n", " ")


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None
) -> str:
    """A GitHub-flavoured markdown table.

    Args:
        headers: column titles.
        rows: one sequence of already formatted cells per row, as many as ``headers``.
        align: ``"l"`` or ``"r"`` per column; all left when None.
    """
    align = align or ["l"] * len(headers)
    if len(align) != len(headers):
        raise ValueError(f"align has {len(align)} entries for {len(headers)} columns")
    for i, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(f"row {i} has {len(row)} cells for {len(headers)} columns: {list(row)}")
    rule = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(title: str, summary: str, table: str) -> str:
    """A title line, a one-line summary, then the table; ends with a newline."""
    return f"# {title}\n\n{summary}\n\n{table}\n"
