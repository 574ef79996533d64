"""The schedule calibration sweep (benchmarks/sweep_mini_finetune.py): an independent world, the controls."""
import importlib.util
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from harness.profiles import get_profile
from harness.world import world_dir_name

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sweep_mini_finetune.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("sweep_mini_finetune", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_calibration_never_reads_the_reported_world(sweep):
    profile = sweep.calibration_profile(get_profile("smoke"), 2)
    assert profile.pretrain["data"]["root"] == "world:smoke:2"
    assert profile.pretrain["data"]["batch_size"] == get_profile("smoke").pretrain["data"]["batch_size"]
    with pytest.raises(ValueError, match="seed 0 is the world the tables report"):
        sweep.calibration_profile(get_profile("smoke"), 0)
    with pytest.raises(ValueError, match="reads real data"):
        sweep.calibration_profile(get_profile("paper"), 1)
    assert sweep.parse_setting("max_steps=10,lr=2e-3") == {"max_steps": 10, "lr": 0.002}
    with pytest.raises(ValueError, match="'lr' is not key=value"):
        sweep.parse_setting("lr")


@pytest.mark.slow
def test_a_sweep_row_is_a_finetune_on_the_calibration_world_beside_its_controls(sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("BEIT3_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("BEIT3_DATA_ROOT", str(tmp_path / "data"))
    out = tmp_path / "cal"
    sweep.main(["--tasks", "nlvr2", "--profile", "smoke", "--set", "lr=1e-3", "--set", "max_steps=2", "--out", str(out)])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["setting"] for r in rows] == ["lr=1e-3", "max_steps=2"]
    assert rows[0]["lr"] == 1e-3 and rows[1]["max_steps"] == 2
    for row in rows:
        assert row["world"] == "world:smoke:1" and row["split"] == "dev" and row["metric"] == "accuracy"
        assert row["vs_shuffled"] == pytest.approx(row["value"] - row["shuffled"], abs=0.01)
        assert row["vs_shuffled_low"] <= row["vs_shuffled"] <= row["vs_shuffled_high"]
        assert row["vs_text"] == pytest.approx(row["value"] - row["text_only"], abs=0.01)
    worlds = sorted(p.name for p in (tmp_path / "data").iterdir() if p.is_dir())
    assert worlds == [world_dir_name("smoke", 1)]  # the reported world (seed 0) is never built
    frame = pd.read_csv(out.with_suffix(".csv"))
    assert len(frame) == 2 and re.search(r"\| nlvr2 +\| none +\| lr=1e-3 ", out.with_suffix(".md").read_text())
    # A second call reuses the runs and replaces, not duplicates, the rows it measures again.
    sweep.main(["--tasks", "nlvr2", "--profile", "smoke", "--set", "lr=1e-3", "--out", str(out)])
    assert len(pd.read_csv(out.with_suffix(".csv"))) == 2
