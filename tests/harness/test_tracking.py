"""MLflow tracking: lineage tags, run status on failure, reuse lookup, unreachable stores."""

import os
import signal

import pytest
from mlflow.tracking import MlflowClient

from harness import tracking
from harness.tracking import TrackingUnavailableError, config_hash, find_finished_run, start_run

CONFIG = {"task": "vqav2", "profile": "smoke", "seed": 3, "model": {"name": "beit3_tiny_patch16_224", "depth": 2}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating one costs ~1 s); tests use their own experiments."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking.check_tracking_uri(uri)
    return root, uri


@pytest.fixture
def uri(store, monkeypatch):
    root, uri = store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _run(uri, run_id):
    return MlflowClient(uri).get_run(run_id)


def test_config_hash_is_canonical():
    shuffled = {"seed": 3, "model": {"depth": 2, "name": "beit3_tiny_patch16_224"}, "profile": "smoke", "task": "vqav2"}
    assert config_hash(CONFIG) == config_hash(shuffled)
    assert len(config_hash(CONFIG)) == 64 and int(config_hash(CONFIG), 16) >= 0
    assert config_hash(CONFIG) != config_hash({**CONFIG, "seed": 4})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        config_hash({"x": object()})


def test_flatten_config_uses_dotted_keys():
    flat = tracking.flatten_config({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2], "f": None})
    assert flat == {"a.b": "1", "a.c.d": "x", "e": "[1, 2]", "f": "null"}


def test_resolve_tracking_uri_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////from/env.db")
    assert tracking.resolve_tracking_uri("sqlite:////explicit.db") == "sqlite:////explicit.db"
    assert tracking.resolve_tracking_uri() == "sqlite:////from/env.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)  # not a git work tree: the default lives in the cwd
    assert tracking.resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert tracking.artifact_root(tracking.resolve_tracking_uri()) == tmp_path.resolve() / "mlruns"


def test_finished_run_records_config_and_lineage_tags(uri, store):
    with start_run("t-finished", "vqav2-smoke", CONFIG, tags={"table": "table4"}) as run:
        run.log_metrics({"accuracy": 0.5})
    got = _run(uri, run.run_id)
    assert got.info.status == "FINISHED"
    tags = got.data.tags
    assert tags["config_hash"] == config_hash(CONFIG)
    assert tags["profile"] == "smoke" and tags["seed"] == "3" and tags["table"] == "table4"
    for key in ("git_commit", "git_dirty", "device", "versions.python", "versions.torch", "versions.mlflow"):
        assert tags[key], key
    assert tags["git_dirty"] in ("true", "false", "unknown")
    assert got.data.params["model.name"] == "beit3_tiny_patch16_224"
    assert got.data.params["model.depth"] == "2"
    assert got.data.metrics == {"accuracy": 0.5}
    artifacts = [a.path for a in MlflowClient(uri).list_artifacts(run.run_id)]
    assert artifacts == ["config.json"]
    # Artifacts stay beside the store, not in the cwd.
    root, _ = store
    assert got.info.artifact_uri.startswith((root / "mlruns").as_uri())


def test_exception_ends_run_failed_and_keeps_what_was_logged(uri):
    with pytest.raises(RuntimeError, match="loss is nan"):
        with start_run("t-failed", "boom", CONFIG, tags={}) as run:
            run.log_metrics({"loss": 1.25}, step=7)
            raise RuntimeError("loss is nan at step 7")
    got = _run(uri, run.run_id)
    assert got.info.status == "FAILED"
    assert got.data.metrics == {"loss": 1.25}
    assert got.data.tags["error"] == "RuntimeError: loss is nan at step 7"


def test_keyboard_interrupt_and_sigterm_end_run_killed(uri):
    with pytest.raises(KeyboardInterrupt):
        with start_run("t-killed", "ctrl-c", CONFIG, tags={}) as interrupted:
            raise KeyboardInterrupt
    with pytest.raises(SystemExit) as exc:
        with start_run("t-killed", "sigterm", CONFIG, tags={}) as terminated:
            os.kill(os.getpid(), signal.SIGTERM)
    assert exc.value.code == 128 + signal.SIGTERM
    assert _run(uri, interrupted.run_id).info.status == "KILLED"
    assert _run(uri, terminated.run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is not tracking._exit_on_sigterm  # handler restored


def test_derived_run_tags_parent(uri):
    with start_run("t-derived", "pretrain", CONFIG, tags={}) as parent:
        pass
    child_config = {**CONFIG, "task": "nlvr2"}
    with start_run("t-derived", "finetune", child_config, tags={}, parent_run_id=parent.run_id) as child:
        pass
    tags = _run(uri, child.run_id).data.tags
    assert tags["parent_run_id"] == parent.run_id
    assert tags["parent_config_hash"] == config_hash(CONFIG)
    assert tags["config_hash"] == config_hash(child_config)
    with pytest.raises(KeyError, match="no-such-run"):
        with start_run("t-derived", "orphan", CONFIG, tags={}, parent_run_id="no-such-run"):
            pass


def test_find_finished_run_reuses_only_finished_runs(uri):
    digest = config_hash(CONFIG)
    assert find_finished_run("t-reuse", digest) is None  # no such experiment yet
    with pytest.raises(ValueError):
        with start_run("t-reuse", "failed", CONFIG, tags={}):
            raise ValueError("bad batch")
    assert find_finished_run("t-reuse", digest) is None  # a failed run is never reused
    with start_run("t-reuse", "ok", CONFIG, tags={}) as ok:
        pass
    found = find_finished_run("t-reuse", digest)
    assert found is not None and found.info.run_id == ok.run_id
    assert find_finished_run("t-reuse", config_hash({**CONFIG, "seed": 99})) is None
    with pytest.raises(ValueError, match="sha256"):
        find_finished_run("t-reuse", "abc")


def test_unreachable_http_store_fails_fast_naming_the_uri():
    with pytest.raises(TrackingUnavailableError, match=r"http://127\.0\.0\.1:9.*cannot be reached"):
        tracking.check_tracking_uri("http://127.0.0.1:9")


def test_sqlite_store_in_missing_or_bad_directory(tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(TrackingUnavailableError, match="does not exist"):
        tracking.check_tracking_uri(f"sqlite:///{missing / 'mlflow.db'}")
    assert not missing.exists()  # MLflow would have created it
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(TrackingUnavailableError, match="file.txt"):
        tracking.check_tracking_uri(f"sqlite:///{a_file / 'mlflow.db'}")


def test_start_run_refuses_unreachable_store_before_creating_a_run(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    body_ran = False
    with pytest.raises(TrackingUnavailableError, match="127.0.0.1:9"):
        with start_run("t-unreachable", "x", CONFIG, tags={}):
            body_ran = True
    assert not body_ran
