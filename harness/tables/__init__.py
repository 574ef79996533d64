"""Paper tables: one module per table, and the pieces they are made of.

- ``types``: ``RunOptions``, ``Experiment``, ``TableResult`` (a tidy result frame), ``TableSpec``.
- ``registry``: captions, ``register_table``, ``get_table``, ``list_tables`` (table modules load on lookup).
- ``paper``: ``results/paper/<table>.json`` and its join with a result frame.
- ``render``: a report as a ``Document``, written as markdown, booktabs LaTeX, HTML and CSV by pandas.
- ``running``: ``run_table`` (``harness run TABLE``) and the artifacts it records.
- ``table1`` .. ``table10``, ``compare_recipes``: the tables; ``dense_tables``: what tables 7 and 8 share.

A spec (lm-eval/timm style)::

    @register_table("table2")
    class Table2(TableSpec):
        def plan(self, profile, options): ...    # the experiments the table needs
        def run(self, profile, options): ...     # -> TableResult
        def render(self, result, paper): ...     # pure: -> render.Document
"""
from harness.tables.paper import PAPER_DIR, attach_paper, load_paper
from harness.tables.registry import (
    CAPTIONS,
    HARNESS_CAPTIONS,
    TableNotImplementedError,
    captions,
    get_table,
    list_tables,
    register_table,
)
from harness.tables.running import (
    TABLE_RESULT_ARTIFACT,
    TABLES_EXPERIMENT,
    TableOutputs,
    recorded_experiments,
    run_table,
    table_config,
    write_atomic,
)
from harness.tables.types import (
    RESULT_COLUMNS,
    Experiment,
    RunOptions,
    TableResult,
    TableSpec,
    experiments_of,
    measurement,
)

__all__ = [
    "CAPTIONS", "HARNESS_CAPTIONS", "PAPER_DIR", "RESULT_COLUMNS", "TABLE_RESULT_ARTIFACT", "TABLES_EXPERIMENT",
    "Experiment", "RunOptions", "TableNotImplementedError", "TableOutputs", "TableResult", "TableSpec",
    "attach_paper", "captions", "experiments_of", "get_table", "list_tables", "load_paper", "measurement",
    "recorded_experiments", "register_table", "run_table", "table_config", "write_atomic",
]
