"""One self-contained HTML page per recorded table: no external CSS, JS or fonts, plots as inline SVG.

Pure functions, values in, text out; ``harness.reporting`` gathers the values from MLflow. The plots
are drawn with matplotlib's ``Figure`` (no pyplot, so no GUI backend and no global state) and saved
as SVG with fixed ids and no date, so the same runs give the same page.
"""

from __future__ import annotations

import html
import io
import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from harness import report

# Colour-blind-safe (Okabe-Ito), one per row group in display order.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
MAX_BAR_PANELS = 32  # beyond this the bars stop being readable; the CSV has every number

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1b1b;
       background: #fff; margin: 2em auto; max-width: 1150px; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 1.8em; }
h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 13px; }
th, td { border-bottom: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { border-bottom: 2px solid #444; } td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
tr.group td { background: #f3f5f8; font-weight: 600; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; }
pre { background: #f3f5f8; padding: .6em .8em; overflow-x: auto; }
.meta td { border: none; padding: .1em .8em .1em 0; } .muted { color: #666; }
.pos { color: #0a6b2d; } .neg { color: #a61b1b; } figure { margin: 1em 0; } svg { max-width: 100%; height: auto; }
""".strip()


@dataclass(frozen=True)
class MeasuredRow:
    """One measured number over seeds beside the paper's figure, if the paper file has it."""

    group: str
    measure: str
    label: str
    values: tuple[float, ...]
    paper: float | None = None
    paper_display: str | None = None

    @property
    def mean(self) -> float:
        return report.mean_std(self.values)[0]

    @property
    def std(self) -> float | None:
        return report.mean_std(self.values)[1]

    @property
    def delta(self) -> float | None:
        return None if self.paper is None else self.mean - self.paper

    @property
    def delta_pct(self) -> float | None:
        return None if not self.paper else 100.0 * (self.mean - self.paper) / self.paper


@dataclass(frozen=True)
class RunLink:
    """An MLflow run behind the table: what it is and where the UI shows it (None: no run found)."""

    name: str
    what: str
    url: str | None


def inline_html(text: str) -> str:
    """Escaped text; ```code``` spans (commands, run ids) as ``<code>``."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text), quote=False))


def _table(head: str, body: Sequence[str]) -> str:
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


# ----------------------------------------------------------------------------- plots
def _svg(fig) -> str:
    """The figure as an inline ``<svg>`` element (no XML prolog, DOCTYPE or metadata)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "beit3-harness", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None}, bbox_inches="tight")
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    return re.sub(r"\s*<metadata>.*?</metadata>", "", text, flags=re.S).strip()


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def svg_loss_curves(curves: Mapping[str, Sequence[tuple[float, float]]], ylabel: str = "loss") -> str:
    """One line per ``{label: [(step, value), ...]}``, e.g. a pretraining recipe with its stages in a row."""
    fig = _figure(8.0, 3.6)
    ax = fig.add_subplot()
    for i, (label, points) in enumerate(curves.items()):
        steps, values = zip(*points) if points else ((), ())
        ax.plot(steps, values, marker="o", markersize=3, linewidth=1.4, color=PALETTE[i % len(PALETTE)], label=label)
    ax.set_xlabel("optimizer step (stages of a recipe in sequence)")
    ax.set_ylabel(ylabel)
    ax.grid(True, linewidth=0.4, alpha=0.5)
    ax.legend(fontsize=8, frameon=False)
    return _svg(fig)


def svg_bars(panels: Mapping[str, Mapping[str, tuple[float, float | None]]], groups: Mapping[str, str]) -> str:
    """Small multiples: one panel per measure, one bar per row group (mean over seeds, std as error bar).

    Args:
        panels: measure label -> group key -> (mean, std or None).
        groups: group key -> title, in display (and colour) order.
    """
    names = list(panels)[:MAX_BAR_PANELS]
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig = _figure(2.9 * cols, 2.1 * rows + 0.5)
    colours = {g: PALETTE[i % len(PALETTE)] for i, g in enumerate(groups)}
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        present = [g for g in groups if g in panels[name]]
        means = [panels[name][g][0] for g in present]
        stds = [panels[name][g][1] for g in present]
        errors = [s or 0.0 for s in stds] if any(s is not None for s in stds) else None  # one seed: no bar
        ax.bar(range(len(present)), means, yerr=errors, capsize=3, color=[colours[g] for g in present])
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.tick_params(labelsize=7)
        ax.grid(True, axis="y", linewidth=0.4, alpha=0.5)
    from matplotlib.patches import Patch

    fig.legend([Patch(color=colours[g]) for g in groups], list(groups.values()), loc="upper center",
               ncol=min(len(groups), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (2.1 * rows + 0.5)))
    return _svg(fig)


# ----------------------------------------------------------------------------- the page
def _number_cell(text: str, sign: float | None = None) -> str:
    """A right-aligned cell, green above zero and red below when ``sign`` is given."""
    tone = "" if sign is None or sign == 0 or math.isnan(sign) else (" pos" if sign > 0 else " neg")
    return f'<td class="r{tone}">{html.escape(text)}</td>'


def measured_table(rows: Sequence[MeasuredRow], groups: Mapping[str, str], with_delta: bool = False) -> str:
    """Paper vs measured per row: n seeds, mean ± std (sample std), paper, and -- where the paper's
    figure is the same quantity as ours (``with_delta``) -- Δ and Δ%."""
    headers = ("measure", "seeds", "ours (mean ± std)", "paper") + (("Δ", "Δ%") if with_delta else ())
    head = "<th>measure</th>" + "".join(f'<th class="r">{h}</th>' for h in headers[1:])
    body = []
    for group, title in groups.items():
        members = [r for r in rows if r.group == group]
        if not members:
            continue
        body.append(f'<tr class="group"><td colspan="{len(headers)}">{inline_html(title)}</td></tr>')
        for r in members:
            ours = report.format_number(r.mean) + ("" if r.std is None else f" ± {report.format_number(r.std)}")
            cells = [_number_cell(str(len(r.values))), _number_cell(ours),
                     _number_cell(r.paper_display or report.MISSING)]
            if with_delta:
                cells += [_number_cell(report.format_delta(r.delta), r.delta),
                          _number_cell(report.format_percent(r.delta_pct), r.delta_pct)]
            body.append(f"<tr><td>{inline_html(r.label)}</td>" + "".join(cells) + "</tr>")
    return _table(head, body)


def runs_table(runs: Sequence[RunLink]) -> str:
    """The MLflow runs behind the table, each linked to the UI where it was found."""
    body = []
    for run in runs:
        name = inline_html(run.name)
        if run.url:
            cell = f'<a href="{html.escape(run.url)}">{name}</a>'
        else:
            cell = f'{name} <span class="muted">(no FINISHED run found)</span>'
        body.append(f"<tr><td>{cell}</td><td>{inline_html(run.what)}</td></tr>")
    return _table("<th>MLflow run</th><th>what</th>", body)


def html_page(
    *,
    title: str,
    meta: Sequence[tuple[str, str]],
    table_html: str,
    measured: Sequence[MeasuredRow],
    groups: Mapping[str, str],
    plots: Sequence[tuple[str, str]],
    runs: Sequence[RunLink],
    ui_command: str | None,
    with_delta: bool = False,
) -> str:
    """The report page.

    Args:
        title: the page title (``Table 4: <caption>``).
        meta: (label, already escaped HTML) lines under the title: profile, table run, commit.
        table_html: the spec's own document (``harness.tables.render.to_html``), shown as the table.
        measured: paper vs measured per row (``measured_table``).
        groups: row-group key -> title, in display order.
        plots: (caption, inline ``<svg>``) pairs.
        runs: the MLflow runs behind the table.
        ui_command: the command that starts an MLflow UI at the links' address; None for a server.
        with_delta: print ours − paper (only where the paper's figures are the same quantity).
    """
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>", f"<style>\n{CSS}\n</style>", "</head>", "<body>",
        f"<h1>{html.escape(title)}</h1>",
        '<table class="meta">' + "".join(f"<tr><td>{html.escape(k)}</td><td>{v}</td></tr>" for k, v in meta)
        + "</table>",
        "<h2>The table</h2>", table_html,
        "<h2>Paper vs measured</h2>",
        "<p>Every measured number, mean ± std over seeds (sample std; one seed: no ±), beside the paper's figure "
        "where <code>results/paper/</code> has one for the same row"
        + ("; Δ = ours − paper.</p>" if with_delta else " (side by side: the data and model sizes differ).</p>"),
        measured_table(measured, groups, with_delta),
    ]
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f"<figure>\n{svg}\n<figcaption>{inline_html(caption)}</figcaption>\n</figure>"
                  for caption, svg in plots]
    parts += ["<h2>MLflow runs</h2>", runs_table(runs)]
    if ui_command:
        parts.append(f"<p>The links open a local MLflow UI; start it with:</p>\n<pre>{html.escape(ui_command)}</pre>")
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
