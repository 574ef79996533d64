"""harness.tables as a package: its layout (no import cycle, one module per table), the paper rows
the retrieval tables print, and the result frame's round trip."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import harness.tables
from harness.tables import RESULT_COLUMNS, TableResult, get_table, list_tables, load_paper, measurement
from harness.tables.registry import TABLE_MODULES
from harness.tables.render import to_markdown
from harness.tables.running import read_result, table_result_json
from harness.tables.types import RunOptions


def _imported_names(path):
    """(module, names) of every ``from X import names`` in a file."""
    tree = ast.parse(path.read_text())
    return [(node.module, [a.name for a in node.names]) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]


def test_no_table_module_imports_the_package_that_lists_it():
    """The package ``__init__`` imports no table, and no table imports the package's ``__init__``
    names (only its submodules), so there is no import cycle."""
    package = Path(harness.tables.__file__).parent
    submodules = {p.stem for p in package.glob("*.py")} - {"__init__"}
    for module, names in _imported_names(package / "__init__.py"):
        assert not (module or "").startswith("harness.tables.table"), module
    for path in package.glob("*.py"):
        for module, names in _imported_names(path):
            if module == "harness.tables":
                assert set(names) <= submodules, (path.name, names)


def test_a_table_module_imports_first_and_registers_itself():
    code = ("import sys, importlib; importlib.import_module('harness.tables.table4'); "
            "from harness.tables.registry import _TABLES; assert list(_TABLES) == ['table4'], list(_TABLES)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_one_module_per_table():
    assert len(set(TABLE_MODULES.values())) == len(TABLE_MODULES)
    assert set(list_tables()) <= set(TABLE_MODULES)
    assert TABLE_MODULES["table5"].endswith(".table5") and TABLE_MODULES["table6"].endswith(".table6")


def _retrieval_result(name, datasets):
    recalls = ("tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10")
    rows = [measurement("beit3", f"{d}.{r}", 10.0 + seed, recipe="beit3", seed=seed) for d in datasets
            for r in recalls for seed in range(2)]
    return TableResult.of(name, rows, {"beit3": "BEiT-3 MDM pretraining", "chance": "chance"},
                          {"beit3.seed0.coco": "abcdef12 (ran)"})


@pytest.mark.parametrize("name, datasets, models", [
    ("table5", ("coco", "flickr30k"), ("UNITER", "VILLA", "Oscar", "VinVL", "ALBEF", "BLIP", "ALIGN", "FILIP",
                                       "Florence", "BEiT-3")),
    ("table6", ("flickr30k",), ("FLAVA", "CLIP", "ALIGN", "FILIP", "Florence", "Flamingo", "CoCa", "BEiT-3")),
])
def test_retrieval_tables_print_every_paper_row(name, datasets, models):
    paper = load_paper(name)
    assert tuple(m["model"] for m in paper["models"]) == models
    assert all(len(m["values"]) == len(paper["columns"]) for m in paper["models"])
    text = re.sub(r" +", " ", to_markdown(get_table(name).render(_retrieval_result(name, datasets), paper)))
    for model in models:
        assert f"| {model} (paper) |" in text
    florence = next(line for line in text.splitlines() if line.startswith("| Florence (paper) |"))
    assert "| – |" in florence  # R@10 the paper does not print
    assert "| 10.5 ± 0.7 |" in next(line for line in text.splitlines() if line.startswith("| ours, BEiT-3 MDM"))


def test_the_result_frame_round_trips_through_its_artifacts():
    result = _retrieval_result("table6", ("flickr30k",))
    assert list(result.frame.columns) == list(RESULT_COLUMNS)
    meta = table_result_json(result, "smoke", RunOptions(), [])
    import json

    again = read_result(json.loads(meta), result.frame.to_csv(index=False), None)
    assert again == result
    with pytest.raises(ValueError, match="format"):
        read_result({**json.loads(meta), "format": 1}, result.frame.to_csv(index=False), None)
