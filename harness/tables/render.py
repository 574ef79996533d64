"""A table's report as a small document (headings, paragraphs, tables as DataFrames), rendered with pandas.

A spec's ``render`` returns a :class:`Document`; ``to_markdown`` (``DataFrame.to_markdown``),
``to_latex`` (booktabs, ``Styler.to_latex``) and ``to_html`` (``Styler.to_html``) write it. Tables
hold already formatted cells (strings) so every format prints the same digits.
"""
from __future__ import annotations

import html
import textwrap
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd


@dataclass(frozen=True, eq=False)
class Block:
    """One block of a document: a heading (``level`` 2..6), a paragraph, or a table.

    Args:
        kind: ``"heading"``, ``"text"`` or ``"table"``.
        text: the heading or paragraph text (plain text).
        level: the heading level.
        table: the formatted cells (strings); columns are the headers, the index is not printed.
        align: ``"l"`` or ``"r"`` per column (default: the first left, the others right).
    """

    kind: str
    text: str = ""
    level: int = 2
    table: pd.DataFrame | None = None
    align: tuple[str, ...] = ()

    def alignment(self) -> tuple[str, ...]:
        columns = len(self.table.columns)
        if self.align:
            if len(self.align) != columns:
                raise ValueError(f"align has {len(self.align)} entries for {columns} columns")
            return self.align
        return ("l",) + ("r",) * (columns - 1)


def heading(text: str, level: int = 2) -> Block:
    return Block("heading", text=text, level=level)


def paragraph(text: str) -> Block:
    return Block("text", text=text)


def table(cells: pd.DataFrame | Sequence[Sequence[str]], columns: Sequence[str] | None = None,
          align: Sequence[str] = ()) -> Block:
    """A table block from a frame of strings, or from rows of cells and their ``columns``."""
    frame = cells if isinstance(cells, pd.DataFrame) else pd.DataFrame(list(cells), columns=list(columns or ()))
    frame = frame.astype(str).reset_index(drop=True)
    return Block("table", table=frame, align=tuple(align))


@dataclass(frozen=True, eq=False)
class Document:
    """A report: its title and blocks in order."""

    title: str
    blocks: tuple[Block, ...] = field(default_factory=tuple)

    def tables(self) -> list[pd.DataFrame]:
        return [b.table for b in self.blocks if b.kind == "table"]


# ----------------------------------------------------------------------------- markdown
def _markdown_cell(text: str) -> str:
    return str(text).replace("|", r"\|").replace("\n", " ")


def markdown_table(block: Block) -> str:
    """``DataFrame.to_markdown`` (tabulate's pipe format), cells as written."""
    frame = block.table.map(_markdown_cell)
    frame.columns = [_markdown_cell(c) for c in frame.columns]
    colalign = ["right" if a == "r" else "left" for a in block.alignment()]
    return frame.to_markdown(index=False, colalign=colalign, disable_numparse=True)


def to_markdown(document: Document) -> str:
    """GitHub-flavoured markdown (tables by ``DataFrame.to_markdown``); ends with a newline."""
    parts = [f"# {document.title}"]
    for block in document.blocks:
        if block.kind == "heading":
            parts.append("#" * block.level + " " + block.text)
        elif block.kind == "table":
            parts.append(markdown_table(block))
        elif block.text:
            parts.append(block.text)
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- LaTeX
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}
# Characters our reports use that pdflatex does not take as UTF-8 text everywhere.
_LATEX_UNICODE = {"±": r"$\pm$", "Δ": r"$\Delta$", "→": r"$\rightarrow$", "×": r"$\times$", "–": "--",
                  "—": "---", "≥": r"$\geq$", "≤": r"$\leq$", "²": r"\textsuperscript{2}", "−": "-",
                  "σ": r"$\sigma$"}


def latex_escape(text: str) -> str:
    """``text`` as LaTeX text: the special characters escaped, a few symbols as math."""
    return "".join(_LATEX_SPECIAL.get(ch) or _LATEX_UNICODE.get(ch) or ch for ch in str(text))


def latex_table(block: Block) -> str:
    """A booktabs ``tabular`` (``Styler.to_latex`` with ``hrules``)."""
    frame = block.table.map(latex_escape)
    frame.columns = [latex_escape(c) for c in frame.columns]
    styler = frame.style.hide(axis="index")
    return styler.to_latex(column_format="".join(block.alignment()), hrules=True).strip()


def to_latex(document: Document, source: str = "") -> str:
    """A LaTeX fragment to ``\\input``: tables as booktabs tabulars, headings and paragraphs as comments.
    Needs ``\\usepackage{booktabs}``."""
    out = [f"% {line}" for line in (source, r"Needs \usepackage{booktabs}.") if line]
    out += ["", f"% {document.title}"]
    for block in document.blocks:
        if block.kind == "table":
            out += ["", latex_table(block)]
        elif block.kind == "heading":
            out += ["", f"% {block.text}"]
        elif block.text:
            out += ["%"] + [f"% {line}" for line in textwrap.wrap(block.text, 98, break_on_hyphens=False)]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- HTML
def html_table(block: Block, uuid: str) -> str:
    """A ``<table>`` (``Styler.to_html``) with the given element id prefix, so pages are reproducible."""
    styler = block.table.style.hide(axis="index").set_uuid(uuid)
    right = [i for i, a in enumerate(block.alignment()) if a == "r"]
    if right:
        selector = ", ".join(f"th.col{i}, td.col{i}" for i in right)
        styler = styler.set_table_styles([{"selector": selector, "props": "text-align: right;"}])
    return styler.to_html(doctype_html=False).strip()


def to_html(document: Document, shift: int = 0, uuid: str = "t") -> str:
    """The document's blocks as an HTML fragment (no title); headings ``shift`` levels down."""
    out = []
    for i, block in enumerate(document.blocks):
        if block.kind == "heading":
            level = min(6, block.level + shift)
            out.append(f"<h{level}>{html.escape(block.text)}</h{level}>")
        elif block.kind == "table":
            out.append(html_table(block, f"{uuid}{i}"))
        elif block.text:
            out.append(f"<p>{html.escape(block.text)}</p>")
    return "\n".join(out)


def to_csv(frame: pd.DataFrame) -> str:
    """A result frame as CSV (``DataFrame.to_csv``), one row per measured number."""
    return frame.to_csv(index=False, lineterminator="\n")
