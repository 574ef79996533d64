"""``harness report``: paper tables rendered again from MLflow alone -- markdown, LaTeX, HTML, CSV.

``harness run TABLE`` records the measured result frame (``table_result.csv``), the paired
differences between recipes (``table_differences.csv``) and what made them (``table_result.json``)
in the table's run (experiment ``beit3-tables``, run ``<table>-<profile>``). The report takes the
latest FINISHED such run of each table and profile, lays it out with the spec's own ``render`` and
writes it with pandas (``harness.tables.render``): markdown (``<table>.md``), booktabs LaTeX
(``<table>.tex``), one self-contained HTML page (``<table>.html``: the table, paper vs measured,
mean ± std over seeds, links to the runs, the pretraining loss curves and bars per recipe) and the
result frame as CSV. Nothing is trained or recomputed, and every file is rendered before the first
one is written.
"""

from __future__ import annotations

import dataclasses
import html
import json
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from harness import report, report_html
from harness.experiments import RECIPE_NAMES
from harness.profiles import Profile
from harness.tables import render
from harness.tables.registry import get_table, list_tables
from harness.tables.running import (
    TABLE_DIFFERENCES_ARTIFACT,
    TABLE_FRAME_ARTIFACT,
    TABLE_RESULT_ARTIFACT,
    TABLES_EXPERIMENT,
    read_result,
    write_atomic,
)
from harness.tables.types import RunOptions, TableResult, TableSpec
from harness.tracking import _env, find_finished_run

FORMATS = ("md", "tex", "html")
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
PRETRAIN_TASKS = {"pretrain_mdm": "beit3", "pretrain_vlmo": "vlmo"}
QUIET_DOWNLOAD = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}  # small files: no progress bar
_MAX_LISTED = 12  # missing experiments named in an error before "and N more"


class ReportError(ValueError):
    """A report that cannot be made from the store as it is; the message says what to run."""


@dataclass(frozen=True)
class RecordedTable:
    """A table's latest FINISHED run and the result it recorded.

    Args:
        spec: the table.
        profile: the profile it ran under.
        options: the ``RunOptions`` it ran with.
        result: the measured result.
        experiments: the planned experiments with their runs (``tables.recorded_experiments``).
        run: the table's own MLflow run.
    """

    spec: TableSpec
    profile: str
    options: RunOptions
    result: TableResult
    experiments: tuple[Mapping[str, Any], ...]
    run: Any


def parse_formats(text: str) -> tuple[str, ...]:
    """``"md,html"`` -> ``("md", "html")``; an unknown or empty list is a ``ReportError``."""
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ReportError(f"--format {text!r}: unknown format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    if not formats:
        raise ReportError(f"--format is empty; choose from {', '.join(FORMATS)}")
    return formats


# ----------------------------------------------------------------------------- finding runs
def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _table_runs(client: Any, profile: str, table: str | None = None, max_results: int = 1000) -> list[Any]:
    """FINISHED table runs of ``profile``, newest first; only the plain ``<table>-<profile>`` runs
    (a run with an ablation carries it in its name)."""
    experiment = client.get_experiment_by_name(TABLES_EXPERIMENT)
    if experiment is None:
        return []
    query = f"tags.profile = '{profile}' and attributes.status = 'FINISHED'"
    if table is not None:
        query += f" and tags.table = '{table}' and attributes.run_name = '{table}-{profile}'"
    runs = client.search_runs([experiment.experiment_id], filter_string=query,
                              order_by=["attributes.start_time DESC"], max_results=max_results)
    return [r for r in runs if r.info.run_name == f"{r.data.tags.get('table')}-{profile}"]


def recorded_table_names(uri: str, profile: str) -> list[str]:
    """The registered tables with a FINISHED run for ``profile``, in the paper's order."""
    found = {run.data.tags.get("table") for run in _table_runs(_client(uri), profile)}
    return [name for name in list_tables() if name in found]


def _run_options(data: Mapping[str, Any]) -> RunOptions:
    """The recorded ``RunOptions`` (JSON lists back to tuples; fields it lacks keep their defaults)."""
    def tuples(value: Any) -> Any:
        return tuple(tuples(v) for v in value) if isinstance(value, list) else value

    names = {f.name for f in dataclasses.fields(RunOptions)}
    return RunOptions(**{k: tuples(v) for k, v in data.items() if k in names})


def no_run_error(spec: TableSpec, profile: Profile, uri: str) -> ReportError:
    """The error for a table without a FINISHED run: which planned runs are missing, and the command."""
    command = f"harness run {spec.name} --profile {profile.name}"
    head = f"no FINISHED run of {spec.name} for profile {profile.name!r} in {uri} (experiment {TABLES_EXPERIMENT})"
    try:
        plan = spec.plan(profile, RunOptions(seeds=profile.default_seeds))
    except (KeyError, ValueError) as err:
        return ReportError(f"{head}, and its experiments cannot be planned: {err}")
    tracked = [e for e in plan if e.mlflow_experiment]
    missing = [e.name for e in tracked
               if find_finished_run(e.mlflow_experiment, e.config_hash, tracking_uri=uri) is None]
    if missing:
        more = f" and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        what = (f"planned experiments without a FINISHED run: {', '.join(missing[:_MAX_LISTED])}{more}; "
                f"`{command}` makes them and records the table")
    elif tracked:
        what = f"all {len(tracked)} planned training runs are FINISHED; `{command}` reuses them and records the table"
    else:
        what = f"the table computes its experiments inside its own run; `{command}` makes it"
    return ReportError(f"{head}; {what}.")


def _download_text(client: Any, run_id: str, artifact: str, tmp: str) -> str:
    return Path(client.download_artifacts(run_id, artifact, tmp)).read_text(encoding="utf-8")


def load_recorded(spec: TableSpec, profile: Profile, uri: str) -> RecordedTable:
    """The latest FINISHED run of ``spec`` under ``profile`` and the result it recorded.

    Raises:
        ReportError: no such run (``no_run_error``), or it predates the result frame.
    """
    client = _client(uri)
    runs = _table_runs(client, profile.name, spec.name, max_results=1)
    if not runs:
        raise no_run_error(spec, profile, uri)
    run = runs[0]
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory(prefix="harness-report-") as tmp, _env(QUIET_DOWNLOAD):
        try:
            data = json.loads(_download_text(client, run_id, TABLE_RESULT_ARTIFACT, tmp))
            frame_csv = _download_text(client, run_id, TABLE_FRAME_ARTIFACT, tmp)
            listed = {a.path for a in client.list_artifacts(run_id)}
            differences_csv = (_download_text(client, run_id, TABLE_DIFFERENCES_ARTIFACT, tmp)
                               if TABLE_DIFFERENCES_ARTIFACT in listed else None)
            result = read_result(data, frame_csv, differences_csv)
        except Exception as err:  # MLflow raises its own, OSError, JSON and format errors alike
            raise ReportError(
                f"the latest run of {spec.name} for profile {profile.name!r} ({run_id}) has no readable result "
                f"({TABLE_RESULT_ARTIFACT}, {TABLE_FRAME_ARTIFACT}: {type(err).__name__}); `harness run {spec.name} "
                f"--profile {profile.name}` records it again, reusing the finished training runs."
            ) from err
    return RecordedTable(
        spec=spec, profile=data.get("profile", profile.name), options=_run_options(data.get("options", {})),
        result=result, experiments=tuple(data.get("experiments", ())), run=run,
    )


# ----------------------------------------------------------------------------- what the page shows
def measured_rows(result: TableResult) -> list[report_html.MeasuredRow]:
    """One row per (group, row) of the result frame: its values over seeds beside the paper's figure."""
    rows = []
    for (group, _row), found in result.frame.groupby(["group", "row"], sort=False):
        paper = found["paper_value"].iloc[0]
        rows.append(report_html.MeasuredRow(
            group, _row, found["label"].iloc[0], tuple(found["value"].tolist()),
            paper=None if pd.isna(paper) else float(paper), paper_display=found["paper_display"].iloc[0] or None,
        ))
    return rows


def bar_panels(rows: Sequence[report_html.MeasuredRow]) -> dict[str, dict[str, tuple[float, float | None]]]:
    """Measure -> group -> (mean, std), for the measures that differ between groups (a count that is
    the same for every recipe is no comparison)."""
    panels: dict[str, dict[str, tuple[float, float | None]]] = {}
    for r in rows:
        finite = [v for v in r.values if v == v]
        if finite:
            panels.setdefault(r.label, {})[r.group] = report.mean_std(finite)
    return {name: bars for name, bars in panels.items() if len({round(m, 9) for m, _ in bars.values()}) > 1}


def loss_curves(client: Any, experiments: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """The ``loss`` history of the pretraining runs behind the table: one line per (recipe, seed),
    the stages of a recipe one after the other on the step axis."""
    curves: dict[str, list[tuple[float, float]]] = {}
    offsets: dict[str, float] = {}
    for e in experiments:
        recipe = PRETRAIN_TASKS.get(e.get("task", ""))
        if recipe is None or not e.get("run_id"):
            continue
        label = f"{recipe} seed {e.get('seed', 0)}"
        history = sorted((m.step, m.value) for m in client.get_metric_history(e["run_id"], "loss"))
        offset = offsets.get(label, 0.0)
        curves.setdefault(label, []).extend((offset + step, value) for step, value in history)
        if history:
            offsets[label] = offset + history[-1][0]
    return {label: points for label, points in curves.items() if points}


def ui_base(uri: str) -> tuple[str, str | None]:
    """Where run links point, and the command that serves them when no server is named."""
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/"), None
    return LOCAL_UI, f"mlflow ui --backend-store-uri {uri}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def html_report(recorded: RecordedTable, document: render.Document, uri: str) -> str:
    """The HTML page of a recorded table (``report_html.html_page``) with its runs and plots."""
    client = _client(uri)
    base, ui_command = ui_base(uri)
    run, result = recorded.run, recorded.result
    tags = run.data.tags
    finished = datetime.fromtimestamp((run.info.end_time or run.info.start_time) / 1000, tz=timezone.utc)
    table_url = run_url(base, run.info.experiment_id, run.info.run_id)
    dirty = " (uncommitted changes)" if tags.get("git_dirty") == "true" else ""
    meta = [
        ("profile", html.escape(recorded.profile)),
        ("options", html.escape(f"seeds {recorded.options.seeds}, recipes {', '.join(recorded.options.recipes)}")),
        ("rendered from", f'<a href="{html.escape(table_url)}">{html.escape(run.info.run_name or run.info.run_id)}</a> '
                          f'<code>{run.info.run_id}</code>, finished {finished:%Y-%m-%d %H:%M} UTC'),
        ("git commit", f"<code>{html.escape(tags.get('git_commit', 'unknown'))}</code>{dirty}"),
        ("tracking store", f"<code>{html.escape(uri)}</code>"),
    ]
    rows = measured_rows(result)
    plots = []
    curves = loss_curves(client, recorded.experiments)
    if curves:
        plots.append(("Pretraining loss (metric `loss`) of the runs this table descends from.",
                      report_html.svg_loss_curves(curves)))
    panels = bar_panels(rows)
    if panels and any(g in RECIPE_NAMES for g in result.groups):
        shown = min(len(panels), report_html.MAX_BAR_PANELS)
        caption = (f"Per measure, one bar per recipe: mean over seeds, error bar = std "
                   f"({shown} of {len(panels)} measures that differ between recipes; the CSV has every number).")
        plots.append((caption, report_html.svg_bars(panels, {g: t for g, t in result.groups.items()
                                                            if any(g in p for p in panels.values())})))
    runs = [report_html.RunLink(run.info.run_name or recorded.spec.name, "this table's run", table_url)]
    for e in recorded.experiments:
        if not e.get("mlflow_experiment"):
            continue
        url = run_url(base, e["experiment_id"], e["run_id"]) if e.get("run_id") else None
        seed = "" if e.get("seed") is None else f", seed {e['seed']}"
        runs.append(report_html.RunLink(e["name"], f"{e['task']}{seed} ({e['mlflow_experiment']})", url))
    return report_html.html_page(
        title=document.title, meta=meta, table_html=render.to_html(document, shift=1, uuid=recorded.spec.name),
        measured=rows, groups=result.groups, plots=plots, runs=runs, ui_command=ui_command,
        with_delta=recorded.spec.differences_from_paper,
    )


# ----------------------------------------------------------------------------- the command
@dataclass(frozen=True)
class Written:
    table: str
    run_id: str
    paths: tuple[Path, ...]


def render_files(recorded: RecordedTable, uri: str, out_dir: Path, results_dir: Path,
                 formats: Sequence[str]) -> dict[Path, str]:
    """Every file of one table's report, rendered and not yet written."""
    spec = recorded.spec
    document = spec.render(recorded.result, spec.paper_rows)
    files: dict[Path, str] = {}
    if "md" in formats:
        files[out_dir / f"{spec.name}.md"] = render.to_markdown(document)
    if "tex" in formats:
        source = f"{spec.name}, profile {recorded.profile}: MLflow run {recorded.run.info.run_id} (harness report)."
        files[out_dir / f"{spec.name}.tex"] = render.to_latex(document, source=source)
    if "html" in formats:
        files[out_dir / f"{spec.name}.html"] = html_report(recorded, document, uri)
    files[results_dir / f"{spec.name}.csv"] = render.to_csv(spec.csv_frame(recorded.result))
    return files


def report_tables(names: Sequence[str], profile: Profile, uri: str, *, out_dir: Path | str,
                  results_dir: Path | str, formats: Sequence[str] = FORMATS) -> list[Written]:
    """Renders the recorded tables ``names`` (all with a recorded run when empty), then writes them.

    Args:
        names: table names; checked before anything is read.
        profile: the profile whose runs are rendered.
        uri: an MLflow store already checked by ``tracking.check_tracking_uri``.
        out_dir: where ``<table>.md|tex|html`` go (``reports/``).
        results_dir: where ``<table>.csv`` goes (``results/``).
        formats: any of ``FORMATS``.

    Raises:
        ReportError: a table without a recorded run, or no table at all for ``profile``.
    """
    specs = [get_table(name) for name in dict.fromkeys(names)]
    if not specs:
        specs = [get_table(name) for name in recorded_table_names(uri, profile.name)]
        if not specs:
            raise ReportError(
                f"no table has a FINISHED run for profile {profile.name!r} in {uri} (experiment "
                f"{TABLES_EXPERIMENT}); make one with `harness run table2 --profile {profile.name}`."
            )
    recorded = [load_recorded(spec, profile, uri) for spec in specs]
    rendered = [render_files(r, uri, Path(out_dir), Path(results_dir), formats) for r in recorded]
    written = []
    for r, files in zip(recorded, rendered):
        paths = tuple(write_atomic(path, text) for path, text in files.items())
        written.append(Written(r.spec.name, r.run.info.run_id, paths))
    return written
