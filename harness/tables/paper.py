"""The paper's reference numbers (``results/paper/<table>.json``) and their join with a result frame."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Collection, Mapping

import pandas as pd

from harness.gitinfo import PACKAGE_ROOT

PAPER_DIR = PACKAGE_ROOT / "results" / "paper"


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


def format_paper_value(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def attach_paper(frame: pd.DataFrame, paper: Mapping[str, Any],
                 groups: Collection[str] | None = None) -> pd.DataFrame:
    """``frame`` with ``paper_value``/``paper_display`` filled from the paper file's ``rows``, joined
    on (group, row).

    Args:
        groups: the row groups this profile measured (``TableResult.groups``); paper rows of other
            groups are left out (mini's table7 runs Mask R-CNN only, the paper's rows are Cascade's).
            None: every paper row must be measured.

    Raises:
        ValueError: a paper row of a measured group has no measured counterpart (the spec or the
            paper file is wrong).
    """
    by_key = {(r["group"], r["component"]): r for r in paper.get("rows", [])
              if groups is None or r["group"] in groups}
    missing = sorted(set(by_key) - set(zip(frame["group"], frame["row"])))
    if missing:
        table = frame["table"].iloc[0] if len(frame) else "?"
        raise ValueError(f"{table}: paper rows without a measured value: {missing}")
    frame = frame.copy()
    for key, row in by_key.items():
        at = (frame["group"] == key[0]) & (frame["row"] == key[1])
        frame.loc[at, "paper_value"] = float(row["value"])
        frame.loc[at, "paper_display"] = row.get("display", format_paper_value(row["value"]))
    return frame


def paper_resolution(paper: Mapping[str, Any]) -> dict[tuple[str, str], float]:
    """(group, row) -> the unit of the paper's last printed digit (1e6 for "692M")."""
    return {(r["group"], r["component"]): float(r.get("resolution", 0)) for r in paper.get("rows", [])}
