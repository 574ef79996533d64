"""Markdown rendering for reports: pure functions, values in, text out (lm-eval ``make_table`` style).

One number format everywhere: counts with thousands separators, deltas signed, percentages with
two decimals, an en dash for a missing value, and "mean ± std" (sample std) over seeds. The
markdown a table renders can be read back into blocks and written as booktabs LaTeX.
"""

from __future__ import annotations

import re
import statistics
import textwrap
from dataclasses import dataclass
from typing import Any, Sequence

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


# ----------------------------------------------------------------------------- parsing our markdown
@dataclass(frozen=True)
class MarkdownTable:
    headers: tuple[str, ...]
    align: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


def _split_row(line: str) -> tuple[str, ...]:
    cells = re.split(r"(?<!\\)\|", line.strip()[1:-1])
    return tuple(c.strip().replace(r"\|", "|") for c in cells)


def markdown_blocks(text: str) -> list[tuple[str, Any]]:
    """The blocks of a table render: ``("heading", (level, text))``, ``("paragraph", text)``,
    ``("table", MarkdownTable)``. Only what ``markdown_table``/``markdown_report`` write is parsed."""
    blocks: list[tuple[str, Any]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line.strip():
            i += 1
        elif line.startswith("#"):
            hashes = len(line) - len(line.lstrip("#"))
            blocks.append(("heading", (hashes, line[hashes:].strip())))
            i += 1
        elif line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip()):
            headers = _split_row(line)
            align = tuple("r" if c.endswith(":") and not c.startswith(":") else "l" for c in _split_row(lines[i + 1]))
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_split_row(lines[i]))
                i += 1
            blocks.append(("table", MarkdownTable(headers, align, tuple(rows))))
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|")):
                paragraph.append(lines[i].strip())
                i += 1
            blocks.append(("paragraph", " ".join(paragraph)))
    return blocks


# ----------------------------------------------------------------------------- LaTeX
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}
# Characters our renders use that pdflatex does not take as UTF-8 text everywhere.
_LATEX_UNICODE = {"±": r"$\pm$", "Δ": r"$\Delta$", "→": r"$\rightarrow$", "×": r"$\times$", "–": "--",
                  "—": "---", "≥": r"$\geq$", "≤": r"$\leq$", "²": r"\textsuperscript{2}"}


def latex_escape(text: str) -> str:
    """``text`` as LaTeX text: the special characters escaped, a few symbols as math."""
    return "".join(_LATEX_SPECIAL.get(ch) or _LATEX_UNICODE.get(ch) or ch for ch in str(text))


def latex_inline(text: str) -> str:
    """Escaped text with the markdown we write (``**bold**``, ```code```) as ``\\textbf``/``\\texttt``."""
    out = []
    for part in re.split(r"(\*\*.+?\*\*|`[^`]+`)", str(text)):
        if part.startswith("**") and part.endswith("**") and len(part) > 4:
            out.append(r"\textbf{" + latex_escape(part[2:-2]) + "}")
        elif part.startswith("`") and part.endswith("`") and len(part) > 2:
            out.append(r"\texttt{" + latex_escape(part[1:-1]) + "}")
        else:
            out.append(latex_escape(part))
    return "".join(out)


def latex_tabular(table: MarkdownTable) -> str:
    """A booktabs ``tabular``; a row with only a bold first cell becomes a group title."""
    width = len(table.headers)
    lines = [r"\begin{tabular}{" + "".join(table.align) + "}", r"\toprule",
             " & ".join(latex_inline(h) for h in table.headers) + r" \\", r"\midrule"]
    for row in table.rows:
        if row[0].startswith("**") and not any(row[1:]):
            lines.append(r"\multicolumn{" + str(width) + "}{l}{" + latex_inline(row[0]) + r"} \\")
        else:
            lines.append(" & ".join(latex_inline(c) for c in row) + r" \\")
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"])


def markdown_to_latex(text: str, source: str = "") -> str:
    """A table render as a LaTeX fragment to ``\\input``: its tables as booktabs tabulars, headings
    and notes as comments. Needs ``\\usepackage{booktabs}``."""
    out = [f"% {line}" for line in (source, r"Needs \usepackage{booktabs}.") if line]
    for kind, value in markdown_blocks(text):
        if kind == "table":
            out += ["", latex_tabular(value)]
        elif kind == "heading":
            out += ["", f"% {value[1]}"]
        else:
            out += ["%"] + [f"% {line}" for line in textwrap.wrap(value, 98, break_on_hyphens=False)]
    return "\n".join(out) + "\n"
