"""Table 1: the paper's overview, rendered from the recorded runs of the other tables.

Each row of the overview (``results/paper/table1.json``: previous state of the art, BEiT-3, and the
table and rows ours come from) takes the BEiT-3 MDM recipe's number from the latest FINISHED run of
that table for the profile (its ``table_result.csv`` artifact); retrieval rows are the mean of
image-to-text and text-to-image R@1, as the paper's. Nothing is trained: a table without a recorded
run is named with the command that makes it.
"""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from harness import report, tracking
from harness.profiles import Profile, get_profile
from harness.tables import render
from harness.tables.registry import get_table, register_table
from harness.tables.types import Experiment, RunOptions, TableResult, TableSpec, measurement

GROUP = "beit3"
GROUP_TITLE = "ours: BEiT-3 MDM recipe"


def overview_key(entry: Mapping[str, Any]) -> str:
    return f"{entry['category']} / {entry['dataset']}"


@register_table("table1")
class Table1(TableSpec):
    """The paper's overview beside the numbers our other tables recorded."""

    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        return []  # reads the other tables' recorded runs; runs nothing of its own

    def run(self, profile: Profile, options: RunOptions) -> TableResult:
        from harness.reporting import ReportError, load_recorded

        uri = tracking.resolve_tracking_uri(None)
        overview = self.paper_rows["overview"]
        recorded: dict[str, Any] = {}
        annotations: dict[str, str] = {}
        for table in dict.fromkeys(entry["from"] for entry in overview):
            try:
                recorded[table] = load_recorded(get_table(table), get_profile(profile.name), uri)
                annotations[f"{table}.run"] = recorded[table].run.info.run_id
            except ReportError as err:
                annotations[f"{table}.missing"] = str(err).split(";")[0]
        records = []
        for entry in overview:
            found = recorded.get(entry["from"])
            if found is None:
                continue
            frame = found.result.frame
            rows = frame[(frame["group"] == entry["group"]) & frame["row"].isin(entry["rows"])]
            if rows.empty:
                annotations[f"{entry['from']}.{overview_key(entry)}.missing"] = (
                    f"{entry['from']} has no rows {entry['rows']} for {entry['group']}")
                continue
            # Per seed the mean over the listed rows (I->T and T->I R@1), as the paper's overview.
            per_seed = rows.groupby(rows["seed"].fillna(-1), sort=True)["value"].mean()
            for seed, value in per_seed.items():
                records.append(measurement(GROUP, overview_key(entry), value, label=overview_key(entry),
                                           seed=None if seed < 0 else int(seed), metric=entry["metric"],
                                           run_id=found.run.info.run_id))
        annotations["profile"] = profile.name
        return TableResult.of(self.name, records, {GROUP: GROUP_TITLE}, annotations)

    def render(self, result: TableResult, paper: Mapping[str, Any]) -> render.Document:
        frame: pd.DataFrame = result.frame
        profile = result.annotations.get("profile", "?")
        body = []
        for entry in paper.get("overview", []):
            values = frame.loc[(frame["group"] == GROUP) & (frame["row"] == overview_key(entry)), "value"].tolist()
            ours = report.format_mean_std(values, digits=1) if values else report.MISSING
            body.append([entry["category"], entry["dataset"], entry["metric"],
                         f"{entry['previous_value']:.1f} ({entry['previous']})", f"{entry['beit3']:.1f}", ours,
                         entry["from"]])
        missing = sorted(key.split(".", 1)[0] for key in result.annotations if key.endswith(".missing"))
        blocks = [
            render.paragraph(f"The paper's previous state of the art and BEiT-3 (giant, real benchmarks) beside "
                             f"the BEiT-3 MDM recipe of this harness on profile {profile} (mean ± std over seeds "
                             "of the latest recorded run of each table named in 'from')."),
            render.table(body, ["task", "dataset", "metric", "previous SOTA (paper)", "BEiT-3 (paper)",
                                GROUP_TITLE, "from"], align=("l", "l", "l", "r", "r", "r", "l")),
        ]
        if missing:
            lines = [f"{table}: {result.annotations[f'{table}.missing']}; make it with "
                     f"`harness run {table} --profile {profile}`." for table in dict.fromkeys(missing)
                     if f"{table}.missing" in result.annotations]
            blocks += [render.heading("Missing"), render.paragraph(" ".join(lines))]
        blocks.append(render.paragraph(paper.get("notes", "")))
        return render.Document(f"Table 1: {self.title}", tuple(blocks))
