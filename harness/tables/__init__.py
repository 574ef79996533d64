"""Paper tables: a registry of table specs, the paper-vs-ours comparison, and running one table.

A table spec (lm-eval/timm style) is registered by name::

    @register_table("table2")
    class Table2(TableSpec):
        def plan(self, profile, options): ...    # the experiments the table needs
        def run(self, profile, options): ...     # -> TableResult
        def render(self, result, paper): ...     # pure: -> markdown

``run_table`` is ``harness run TABLE``: plan -> run -> compare with ``results/paper/<name>.json``
-> write ``reports/<name>.md`` and ``results/<name>.csv`` atomically -> record an MLflow run.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from harness import report, tracking
from harness.ablation import Ablation, ablation_label, check_ablation
from harness.experiments import RECIPE_NAMES, check_recipe
from harness.gitinfo import PACKAGE_ROOT
from harness.profiles import Profile, unknown_name_error

PAPER_DIR = PACKAGE_ROOT / "results" / "paper"
TABLES_EXPERIMENT = "beit3-tables"
# The measured TableResult of a table's run, with what made it; `harness report` renders from it.
TABLE_RESULT_ARTIFACT = "table_result.json"

# Captions of the paper's tables (arXiv 2208.10442v2 numbering; abridged). Tables 11-17 are the
# hyperparameter appendix, which the recipes implement rather than reproduce.
CAPTIONS: dict[str, str] = {
    "table1": "Overview of BEiT-3 results on various vision and vision-language benchmarks",
    "table2": "Model configuration of BEiT-3. The architecture layout follows ViT-giant",
    "table3": "Pretraining data of BEiT-3. All the data are academically accessible",
    "table4": "Results of visual question answering, visual reasoning, and image captioning tasks",
    "table5": "Finetuning results of image-to-text and text-to-image retrieval on COCO and Flickr30K",
    "table6": "Zero-shot image-to-text and text-to-image retrieval on Flickr30K",
    "table7": "Results of object detection and instance segmentation on COCO benchmark",
    "table8": "Results of semantic segmentation on ADE20K",
    "table9": "Top-1 accuracy on ImageNet-1K",
    "table10": "Finetuning results of image-text retrieval on COCO and Flickr30K without intermediate finetuning",
}
# Tables of the harness's own, with no counterpart in the paper (and no results/paper file): listed
# after the paper's.
HARNESS_CAPTIONS: dict[str, str] = {
    "compare": "BEiT-3 MDM vs VLMo staged vs no pretraining at equal compute, on every vision-language task",
    "released": "The released finetuned checkpoints (base, large): published vs measured, same weights",
}


def captions() -> dict[str, str]:
    """Every table's caption: the paper's in the paper's order, then the harness's own."""
    return {**CAPTIONS, **HARNESS_CAPTIONS}


class TableNotImplementedError(NotImplementedError):
    """A paper table the harness knows the caption of but cannot regenerate yet."""


# ----------------------------------------------------------------------------- data types
@dataclass(frozen=True)
class RunOptions:
    """How a table's experiments run (``harness run --seeds --recipes --nproc --ablation``).

    Args:
        seeds: seeds per experiment.
        recipes: what finetunes start from: pretraining recipes (``beit3``, ``vlmo``) and ``none``
            (random init); tables built on pretraining run only these.
        nproc: processes per training run; more than one launches each run under torchrun.
        ablation: ``(name, value)`` switches set alike in every recipe's pretraining
            (``harness.ablation``); given as pairs or a mapping, kept in canonical form.
        weights: the folder of released checkpoints (table ``released``).
    """

    seeds: int = 1
    recipes: tuple[str, ...] = RECIPE_NAMES
    nproc: int = 1
    ablation: Ablation = ()
    weights: str = "weights"

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ValueError(f"seeds must be at least 1, got {self.seeds}")
        if self.nproc < 1:
            raise ValueError(f"nproc must be at least 1, got {self.nproc}")
        if not self.recipes:
            raise ValueError(f"at least one recipe is needed; known: {', '.join(RECIPE_NAMES)}")
        for recipe in self.recipes:
            check_recipe(recipe)
        # The order of the recipes is the display order; keep the canonical one.
        object.__setattr__(self, "recipes", tuple(r for r in RECIPE_NAMES if r in self.recipes))
        object.__setattr__(self, "ablation", check_ablation(self.ablation))

    @property
    def pretraining_recipes(self) -> tuple[str, ...]:
        """The chosen recipes that pretrain (all but ``none``)."""
        return tuple(r for r in self.recipes if r != "none")


@dataclass(frozen=True)
class Experiment:
    """One unit of work a table needs: a (task, profile, seed) with its complete config.

    Args:
        name: unique within the table's plan, e.g. ``"table2/parameter-count"``.
        task: the task (or computation) that runs it.
        profile: the profile name.
        seed: the seed; None for deterministic computations.
        config: everything that determines the result; hashed into ``config_hash``.
        mlflow_experiment: the MLflow experiment its run is recorded in (found again by config hash);
            empty for computations that record only in the table's own run.
    """

    name: str
    task: str
    profile: str
    seed: int | None
    config: Mapping[str, Any] = field(default_factory=dict)
    mlflow_experiment: str = ""

    @property
    def config_hash(self) -> str:
        return tracking.config_hash(self.config)


def experiments_of(configs: Sequence[Any], profile: Profile) -> list[Experiment]:
    """Plan entries for training configs (``harness.config.TrainConfig``): name, task, seed, semantic config."""
    return [Experiment(name=c.run_name, task=c.task, profile=profile.name, seed=c.seed, config=c.semantic_dict(),
                       mlflow_experiment=c.experiment) for c in configs]


@dataclass(frozen=True)
class ResultRow:
    """One measured number: ``value`` of ``component`` in row group ``group``."""

    group: str
    component: str
    label: str
    value: float


@dataclass(frozen=True)
class TableResult:
    """What a table's ``run`` measured.

    Args:
        table: the table name.
        groups: row-group key -> the title printed above its rows, in display order.
        rows: the measured numbers, in display order within each group.
        annotations: facts that are not numbers (MLflow run ids, reuse status), keyed like rows.
    """

    table: str
    groups: Mapping[str, str]
    rows: tuple[ResultRow, ...]
    annotations: Mapping[str, str] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """``{"<group>.<component>": value}``, the numbers logged to MLflow."""
        return {f"{r.group}.{r.component}": float(r.value) for r in self.rows}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``table``, ``groups``, ``rows`` (dicts), ``annotations``; ``from_dict`` reverses it."""
        return {"table": self.table, "groups": dict(self.groups),
                "rows": [dataclasses.asdict(r) for r in self.rows], "annotations": dict(self.annotations)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TableResult":
        rows = tuple(ResultRow(r["group"], r["component"], r["label"], float(r["value"])) for r in data["rows"])
        return cls(data["table"], dict(data["groups"]), rows, dict(data.get("annotations", {})))


@dataclass(frozen=True)
class ComparisonRow:
    """A measured number beside the paper's.

    ``paper_resolution`` is the unit of the paper's last printed digit (1e6 for "692M"), so a
    difference of at most half of it is agreement within the paper's rounding.
    """

    group: str
    component: str
    label: str
    ours: float
    paper: float | None = None
    paper_display: str | None = None
    paper_resolution: float | None = None

    @property
    def delta(self) -> float | None:
        return None if self.paper is None else self.ours - self.paper

    @property
    def delta_pct(self) -> float | None:
        return None if not self.paper else 100.0 * (self.ours - self.paper) / self.paper

    @property
    def within_rounding(self) -> bool | None:
        if self.paper is None:
            return None
        return abs(self.ours - self.paper) <= (self.paper_resolution or 0) / 2


def compare(result: TableResult, paper: Mapping[str, Any]) -> list[ComparisonRow]:
    """Joins ``result`` with the paper's rows on (group, component).

    Raises:
        ValueError: a paper row has no measured counterpart (the spec or the file is wrong).
    """
    by_key = {(r["group"], r["component"]): r for r in paper.get("rows", [])}
    ours = {(r.group, r.component) for r in result.rows}
    missing = sorted(set(by_key) - ours)
    if missing:
        raise ValueError(f"{result.table}: paper rows without a measured value: {missing}")
    rows = []
    for r in result.rows:
        p = by_key.get((r.group, r.component))
        rows.append(
            ComparisonRow(
                group=r.group,
                component=r.component,
                label=r.label,
                ours=r.value,
                paper=None if p is None else float(p["value"]),
                paper_display=None if p is None else p.get("display", report.format_number(p["value"])),
                paper_resolution=None if p is None else float(p.get("resolution", 0)),
            )
        )
    return rows


# ----------------------------------------------------------------------------- rendering
COMPARISON_HEADERS = ("component", "paper", "ours", "Δ", "Δ%")


def comparison_table(rows: Sequence[ComparisonRow], groups: Mapping[str, str]) -> str:
    """The fixed-column markdown table (component, paper, ours, Δ, Δ%), a bold title per group."""
    cells: list[list[str]] = []
    for group, title in groups.items():
        cells.append([f"**{title}**", "", "", "", ""])
        for r in (r for r in rows if r.group == group):
            cells.append(
                [
                    r.label,
                    r.paper_display or report.MISSING,
                    report.format_number(r.ours),
                    report.format_delta(r.delta),
                    report.format_percent(r.delta_pct),
                ]
            )
    return report.markdown_table(COMPARISON_HEADERS, cells, align=("l", "r", "r", "r", "r"))


def comparison_csv(rows: Sequence[ComparisonRow]) -> str:
    """The comparison as CSV (one row per measured number), for pandas and spreadsheets."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["group", "component", "label", "paper", "paper_display", "ours", "delta", "delta_pct"])
    def number(value: float | None) -> str:
        if value is None:
            return ""
        return str(int(value)) if float(value).is_integer() else repr(float(value))

    for r in rows:
        pct = "" if r.delta_pct is None else f"{r.delta_pct:.6f}"
        paper_display = r.paper_display or ""
        writer.writerow(
            [r.group, r.component, r.label, number(r.paper), paper_display, number(r.ours), number(r.delta), pct]
        )
    return buf.getvalue()


def write_atomic(path: Path | str, text: str) -> Path:
    """Writes ``text`` to ``path`` via a temp file in the same directory and a rename.

    Readers see the old file or the new one, never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp's 0600 would make reports private to their writer
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ----------------------------------------------------------------------------- specs and registry
def load_paper(name: str, paper_dir: Path | str = PAPER_DIR) -> dict[str, Any]:
    """The paper's reference numbers for table ``name`` (``results/paper/<name>.json``).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is not valid JSON or is not about table ``name``.
    """
    path = Path(paper_dir) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"paper reference numbers for {name!r} not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if data.get("table") != name:
        raise ValueError(f"{path}: field 'table' is {data.get('table')!r}, expected {name!r}")
    for i, row in enumerate(data.get("rows", [])):
        missing = {"group", "component", "value"} - set(row)
        if missing:
            raise ValueError(f"{path}: row {i} lacks {sorted(missing)}")
    return data


@dataclass(frozen=True)
class TableSpec:
    """A paper table the harness regenerates. Subclasses implement ``plan``, ``run``, ``render``.

    Args:
        name: registry name, ``table<N>`` in the paper's numbering.
        title: the paper's caption.
    """

    name: str
    title: str

    @property
    def paper_rows(self) -> dict[str, Any]:
        """The contents of ``results/paper/<name>.json``."""
        return load_paper(self.name)

    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        """The experiments this table needs under ``profile`` and ``options``."""
        raise NotImplementedError

    def run(self, profile: Profile, options: RunOptions) -> TableResult:
        """Runs (or reuses) the planned experiments and collects the table's numbers."""
        raise NotImplementedError

    def render(self, result: TableResult, paper: Mapping[str, Any]) -> str:
        """Markdown for ``result`` beside ``paper``; pure and deterministic."""
        raise NotImplementedError


_TABLES: dict[str, TableSpec] = {}
_SpecT = TypeVar("_SpecT", bound=type[TableSpec])


def register_table(name: str) -> Callable[[_SpecT], _SpecT]:
    """Class decorator: registers one instance of a ``TableSpec`` subclass under ``name``."""
    if name not in captions():
        raise ValueError(f"{name!r} is neither a table of the paper nor of the harness; known: {', '.join(captions())}")

    def decorator(cls: _SpecT) -> _SpecT:
        if name in _TABLES:
            raise KeyError(f"table {name!r} is already registered (by {type(_TABLES[name]).__name__})")
        _TABLES[name] = cls(name=name, title=captions()[name])
        return cls

    return decorator


def list_tables(available_only: bool = True) -> list[str]:
    """Names of the registered tables, or of all tables, in the paper's order (the harness's own last)."""
    return [n for n in captions() if n in _TABLES or not available_only]


def get_table(name: str) -> TableSpec:
    """The registered spec of table ``name``.

    Raises:
        UnknownNameError: (a KeyError) ``name`` is no table of the paper or the harness; lists the known ones.
        TableNotImplementedError: the paper has the table but the harness cannot regenerate it yet.
    """
    if name in _TABLES:
        return _TABLES[name]
    if name in CAPTIONS:
        raise TableNotImplementedError(
            f"{name} ({CAPTIONS[name]}) is not implemented yet; available tables: "
            f"{', '.join(list_tables())}."
        )
    raise unknown_name_error("table", name, captions())


# ----------------------------------------------------------------------------- running
@dataclass(frozen=True)
class TableOutputs:
    """Where ``run_table`` put things."""

    markdown: str
    report_path: Path
    csv_path: Path
    run_id: str
    config_hash: str


def table_config(spec: TableSpec, profile: Profile, options: RunOptions,
                 plan: Sequence[Experiment]) -> dict[str, Any]:
    """The config of a table's own MLflow run: the table, the profile (and ablation) and its planned
    experiments (``plan``: ``spec.plan(profile, options)``)."""
    return {
        "table": spec.name,
        "profile": profile.name,
        **({"ablation": dict(options.ablation)} if options.ablation else {}),
        "experiments": {
            e.name: {"task": e.task, "seed": e.seed, "config_hash": e.config_hash, "config": dict(e.config)}
            for e in plan
        },
    }


def recorded_experiments(plan: Sequence[Experiment], tracking_uri: str) -> list[dict[str, Any]]:
    """The planned experiments, each with the FINISHED MLflow run that holds it (ids None for the
    computations a table makes inside its own run, and for runs not found)."""
    recorded = []
    for e in plan:
        run = None
        if e.mlflow_experiment:
            run = tracking.find_finished_run(e.mlflow_experiment, e.config_hash, tracking_uri=tracking_uri)
        recorded.append({
            "name": e.name, "task": e.task, "seed": e.seed, "config_hash": e.config_hash,
            "mlflow_experiment": e.mlflow_experiment,
            "run_id": None if run is None else run.info.run_id,
            "experiment_id": None if run is None else run.info.experiment_id,
        })
    return recorded


def table_result_json(result: TableResult, profile: str, options: RunOptions,
                      experiments: Sequence[Mapping[str, Any]]) -> str:
    """The ``table_result.json`` artifact: the measured result, the profile, the options and the
    experiments behind it, enough to render the table again without running anything."""
    data = {"format": 1, "profile": profile, "options": dataclasses.asdict(options), **result.to_dict(),
            "experiments": list(experiments)}
    return json.dumps(data, indent=2) + "\n"


def run_table(
    spec: TableSpec,
    profile: Profile,
    options: RunOptions,
    *,
    out_dir: Path | str,
    results_dir: Path | str,
    tracking_uri: str,
) -> TableOutputs:
    """Runs one table and records it (experiment ``beit3-tables``, run ``<table>-<profile>[-<ablation>]``).

    The metrics are the measured numbers (``<group>.<component>``) and, where the paper has the
    figure, ``<group>.<component>.delta_pct``; the markdown and CSV are also run artifacts, and so
    is ``table_result.json`` (``table_result_json``), from which ``harness report`` renders.

    Args:
        spec: the table.
        profile: the profile to run under.
        options: seeds, recipes, processes per training run.
        out_dir: where ``<table>.md`` goes (``reports/``).
        results_dir: where ``<table>.csv`` goes (``results/``).
        tracking_uri: an MLflow store already checked by ``tracking.check_tracking_uri``.
    """
    plan = spec.plan(profile, options)
    config = table_config(spec, profile, options, plan)
    paper = spec.paper_rows
    # The table's training runs record in the same store as the table's own run.
    previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    try:
        return _run_and_record(spec, profile, options, plan, config, paper, out_dir, results_dir, tracking_uri)
    finally:
        if previous_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_uri


def _run_and_record(spec, profile, options, plan, config, paper, out_dir, results_dir, tracking_uri) -> TableOutputs:
    with tracking.start_run(
        TABLES_EXPERIMENT,
        "-".join(filter(None, [spec.name, profile.name, ablation_label(options.ablation, "-")])),
        config,
        tags={"table": spec.name, **({"ablation": ablation_label(options.ablation)} if options.ablation else {})},
        tracking_uri=tracking_uri,
    ) as run:
        result = spec.run(profile, options)
        rows = compare(result, paper)
        markdown = spec.render(result, paper)
        csv_text = comparison_csv(rows)
        report_path = write_atomic(Path(out_dir) / f"{spec.name}.md", markdown)
        csv_path = write_atomic(Path(results_dir) / f"{spec.name}.csv", csv_text)
        metrics = result.metrics()
        metrics.update(
            {f"{r.group}.{r.component}.delta_pct": r.delta_pct for r in rows if r.delta_pct is not None}
        )
        run.log_metrics(metrics)
        run.log_text(markdown, f"{spec.name}.md")
        run.log_text(csv_text, f"{spec.name}.csv")
        experiments = recorded_experiments(plan, tracking_uri)
        run.log_text(table_result_json(result, profile.name, options, experiments), TABLE_RESULT_ARTIFACT)
    return TableOutputs(markdown, report_path, csv_path, run.run_id, tracking.config_hash(config))


# Importing the spec modules registers them (as timm's models/__init__ does).
from harness.tables import table2, table3, table4, table7, table8, table9, table10  # noqa: E402,F401  (table10 also registers 5, 6)
from harness.tables import compare_recipes  # noqa: E402,F401  (registers compare)
from harness.tables import released  # noqa: E402,F401  (registers released)
