"""The `harness` command: list, run table2 end to end, and the errors for bad names and stores."""
import re
import sys
import types

import pytest
from mlflow.tracking import MlflowClient

from harness.cli import build_parser, main


def _run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def paths(tmp_path, monkeypatch):
    """A cwd of its own (nothing lands in the checkout) and a tmp sqlite store via the env."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return tmp_path, uri


def test_list_tables_shows_captions_and_availability(capsys):
    code, out, _ = _run_cli(capsys, "list", "tables")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert list(lines) == [*(f"table{i}" for i in range(1, 11)), "compare", "released"]  # the paper's, then the harness's own
    assert "available" in lines["table2"] and "Model configuration of BEiT-3" in lines["table2"]
    assert "available" in lines["table4"] and "visual question answering" in lines["table4"]
    assert "not yet" not in out and "Overview" in lines["table1"]  # table1 renders the other tables' runs


def test_list_models_and_profiles(capsys):
    code, out, _ = _run_cli(capsys, "list", "models")
    assert code == 0 and "beit3_base_patch16_224" in out.split() and "beit3_giant_patch14_224" in out.split()
    code, out, _ = _run_cli(capsys, "list", "profiles")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == ["mini", "paper", "smoke"]


def test_every_help_ends_with_examples():
    parser = build_parser()
    subparsers = parser._subparsers._group_actions[0].choices
    helps = [parser.format_help()] + [p.format_help() for p in subparsers.values()]
    helps.append(subparsers["data"]._subparsers._group_actions[0].choices["world"].format_help())
    for text in helps:
        tail = text.rstrip().split("\n\n")[-1]
        assert tail.startswith("examples:\n  harness "), text


def test_run_table2_writes_report_csv_and_mlflow_run(capsys, paths):
    tmp_path, uri = paths
    code, out, err = _run_cli(capsys, "run", "table2", "--out", "rep", "--results-dir", "res")
    assert code == 0, err
    report = (tmp_path / "rep" / "table2.md").read_text()
    assert report in out  # the CLI prints the report it wrote
    assert report.startswith("# Table 2: Model configuration of BEiT-3")
    cells = re.sub(r" +", " ", report)  # table cells are padded to the column width
    assert "| component | paper | ours | Δ | Δ% |" in cells
    assert "| total | 220,987,392 | 220,987,392 | +0 | +0.00% |" in cells
    csv = (tmp_path / "res" / "table2.csv").read_text().splitlines()  # the tidy result frame
    assert csv[0] == "table,group,row,label,recipe,seed,task,evaluation,split,metric,value,paper_value,paper_display,run_id"
    assert "table2,base,total,total,,,,,,parameters,220987392.0,220987392.0,\"220,987,392\"," in csv
    assert not list(tmp_path.rglob("*.tmp"))

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("beit3-tables")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "table2-smoke" and run.info.status == "FINISHED"
    assert run.info.run_id in out
    for tag in ("git_commit", "git_dirty", "config_hash", "profile", "versions.torch", "device"):
        assert run.data.tags[tag], tag
    assert run.data.tags["table"] == "table2"
    assert run.data.metrics["base.total"] == 220_987_392
    assert run.data.metrics["large.total"] == 672_702_464
    assert not [key for key in run.data.metrics if key.endswith("delta_pct")]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.json", "table2.md", "table_result.csv", "table_result.json"}
    assert (tmp_path / "mlruns").is_dir()  # artifacts beside the store


def test_dry_run_prints_plan_and_touches_nothing(capsys, paths):
    tmp_path, _ = paths
    code, out, _ = _run_cli(capsys, "run", "table2", "--dry-run", "--profile", "mini")
    assert code == 0
    assert "table2/parameter-count" in out and "profile mini" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["run", "tabel2"], ["unknown table 'tabel2'", "did you mean table2", "table1, table2, table3"]),
        (["run", "table2", "table44"], ["unknown table 'table44'", "table10"]),
        (["run", "table2", "--profile", "smok"], ["unknown profile 'smok'", "did you mean smoke", "mini, paper, smoke"]),
        (["run", "table2", "--seeds", "0"], ["--seeds must be at least 1"]),
        (["run", "table4", "--recipes", "beit3,clip"], ["unknown recipe 'clip'", "beit3, none, vlmo"]),
        (["run", "table4", "--nproc", "0", "--dry-run"], ["--nproc must be at least 1"]),
        (["data", "world", "--profile", "paper", "--out", "w"], ["real datasets", "profiles: mini, smoke"]),
        (["data", "world", "--profile", "tiny", "--out", "w"], ["unknown profile 'tiny'"]),
    ],
)
def test_bad_names_exit_2_with_one_message(capsys, paths, argv, expected):
    tmp_path, _ = paths
    code, out, err = _run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("harness: error: ") and err.count("\n") == 1
    for text in expected:
        assert text in err
    assert list(tmp_path.iterdir()) == []  # refused before any work


@pytest.mark.parametrize("uri", ["http://127.0.0.1:9", "sqlite:///{tmp}/missing/dir/mlflow.db"])
def test_unreachable_tracking_uri_exits_2_before_any_work(capsys, paths, uri):
    tmp_path, _ = paths
    uri = uri.format(tmp=tmp_path)
    code, out, err = _run_cli(capsys, "run", "table2", "--tracking-uri", uri)
    assert code == 2 and out == ""
    assert f"MLflow tracking URI {uri!r}" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("what, expected", [("tasks", ["vqav2", "nlvr2", "captioning", "retrieval", "imagenet"]),
                                             ("recipes", ["beit3", "vlmo", "none"])])
def test_list_tasks_and_recipes(capsys, what, expected):
    code, out, _ = _run_cli(capsys, "list", what)
    assert code == 0
    for name in expected:
        assert name in out


def test_recipes_narrow_the_plan(capsys, paths):
    code, out, _ = _run_cli(capsys, "run", "table4", "--dry-run", "--recipes", "none")
    assert code == 0
    assert "vqav2-none-smoke-seed0" in out and "beit3" not in out and "vlmo" not in out


def test_unknown_list_kind_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["list", "weights"])
    assert exc.value.code == 2
    assert "invalid choice: 'weights'" in capsys.readouterr().err


def test_data_world_calls_build_world(capsys, paths, monkeypatch):
    calls = []
    fake = types.ModuleType("harness.world")
    fake.build_world = lambda out_dir, profile, seed: calls.append((out_dir, profile, seed)) or out_dir
    monkeypatch.setitem(sys.modules, "harness.world", fake)
    code, out, _ = _run_cli(capsys, "data", "world", "--profile", "smoke", "--out", "w", "--seed", "3")
    assert code == 0
    assert [(str(o), p, s) for o, p, s in calls] == [("w", "smoke", 3)]
    assert "smoke world (seed 3)" in out


@pytest.mark.parametrize("option", ["--out", "--results-dir"])
def test_unwritable_output_folders_exit_2_before_any_training(capsys, paths, monkeypatch, option):
    tmp_path, uri = paths
    monkeypatch.setenv("BEIT3_RUNS_DIR", str(tmp_path / "runs"))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, out, err = _run_cli(capsys, "run", "table3", option, str(blocker / "sub"))
    assert code == 2 and out == ""
    assert err.startswith(f"harness: error: {option} {blocker / 'sub'} cannot be written") and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()  # nothing trained, and the probe left nothing behind
    assert MlflowClient(uri).get_experiment_by_name("beit3-pretrain") is None


def test_debug_shows_the_error_itself(paths):
    from harness.cli import UsageError

    with pytest.raises(UsageError, match="cannot be written"):
        main(["--debug", "run", "table3", "--out", "/proc/no/such/dir"])


def test_errors_deep_in_a_run_are_one_line(capsys, paths, monkeypatch):
    """A user error raised mid-run (here: a data file that is not there) is one line and exit 2, too."""
    from harness import cli

    def missing_data(*args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", "/data/coco/dataset_coco.json")

    monkeypatch.setattr(cli, "run_table", missing_data)
    code, out, err = _run_cli(capsys, "run", "table2")
    assert code == 2 and err == ("harness: error: No such file or directory: /data/coco/dataset_coco.json "
                                 "(check the path and its permissions)\n")
