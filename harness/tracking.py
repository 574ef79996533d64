"""MLflow tracking: where runs go, what every run records, and how a run is found again.

Every run carries its lineage as tags: ``config_hash`` (sha256 of the canonical JSON of its
config), ``git_commit``/``git_dirty``, package versions and the device; a derived run also carries
``parent_run_id`` and ``parent_config_hash``. A run that raises ends FAILED (KILLED on Ctrl-C or
SIGTERM) with whatever it logged so far; only a run whose body returned ends FINISHED, so
``find_finished_run`` never reuses a half-done run.

The store is chosen once per invocation (``resolve_tracking_uri``): the explicit argument, else
``MLFLOW_TRACKING_URI``, else ``sqlite:///<repo-or-cwd>/mlflow.db`` (MLflow >= 3.13 refuses file
stores). ``check_tracking_uri`` probes it so that a bad URI fails before any work starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import signal
import threading
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

from harness import gitinfo

DB_FILENAME = "mlflow.db"
ARTIFACT_DIRNAME = "mlruns"
# The probe of an http store gives up fast.
PROBE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
# A run's calls to the store: each must answer within this many seconds (default 60), else the
# command fails with the store's error; the training state on disk stays resumable.
TIMEOUT_ENV = "BEIT3_TRACKING_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 60.0
VERSIONED_PACKAGES = ("torch", "torchvision", "mlflow", "numpy", "timm", "beit3-harness")
_PARAMS_PER_BATCH = 100  # MLflow's log_batch limit


class TrackingUnavailableError(RuntimeError):
    """The tracking store cannot be used; the message names the URI and what to do."""


# ----------------------------------------------------------------------------- config identity
def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"config value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def canonical_json(config: Mapping[str, Any]) -> str:
    """The config as JSON with sorted keys and no whitespace: equal configs give equal strings."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=_json_default)


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of ``config``; key order does not matter."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested dicts become dotted keys (``model.embed_dim``); other values become JSON strings."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_config(value, prefix=f"{name}."))
        elif isinstance(value, str):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, sort_keys=True, default=_json_default)
    return flat


# ----------------------------------------------------------------------------- the store
def default_tracking_uri(root: Path | str | None = None) -> str:
    """``sqlite:///<root>/mlflow.db``; ``root`` defaults to the git work tree of the cwd, else the cwd."""
    root = Path(root) if root is not None else (gitinfo.repo_root() or Path.cwd())
    return f"sqlite:///{(root / DB_FILENAME).resolve()}"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The explicit ``uri``, else ``$MLFLOW_TRACKING_URI``, else ``default_tracking_uri()``."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for other schemes and in-memory databases."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def artifact_root(uri: str) -> Path | None:
    """Where runs of a local sqlite store keep their artifacts: ``mlruns/`` beside the database.

    None for remote stores, whose server decides.
    """
    db = sqlite_path(uri)
    return db.parent / ARTIFACT_DIRNAME if db is not None else None


@contextlib.contextmanager
def _env(overrides: Mapping[str, str], *, replace: bool = False) -> Iterator[None]:
    """``overrides`` in ``os.environ`` inside the block, restored after; variables already set keep
    their value (the user's settings win) unless ``replace``."""
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update({k: v for k, v in overrides.items() if replace or saved[k] is None})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def use_tracking_uri(uri: str) -> contextlib.AbstractContextManager[None]:
    """Point MLflow at ``uri`` inside the block: ``MLFLOW_TRACKING_URI`` for this process and the ones
    it starts (the trainer, torchrun workers), the previous value restored after."""
    return _env({"MLFLOW_TRACKING_URI": uri}, replace=True)


def _reason(err: Exception) -> str:
    """The most specific part of a store error: the OS error of a refused or unresolvable host."""
    text = " ".join(str(err).split()) or type(err).__name__
    os_error = re.search(r"\[Errno -?\d+\][^\"')]*", text)
    return os_error.group(0).strip() if os_error else (text if len(text) <= 400 else text[:400] + "...")


_PREPARED: set[str] = set()


def prepare_store(uri: str) -> None:
    """Create (or migrate) the schema of a sqlite store once, under a file lock beside the database:
    MLflow's first use runs alembic migrations, and two processes doing that at once fail
    ("Online migration expected to match one row"). Other stores: nothing to do."""
    db = sqlite_path(uri)
    if db is None or uri in _PREPARED:
        return
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    with FileLock(str(db) + ".lock"), _env(PROBE_ENV):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    _PREPARED.add(uri)


def tracking_client(uri: str | None = None) -> Any:
    """An ``MlflowClient`` of the store (``resolve_tracking_uri``), its schema created first."""
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(uri)
    prepare_store(uri)
    return MlflowClient(tracking_uri=uri)


def call_timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    return float(raw) if raw else DEFAULT_TIMEOUT_S


def bounded_call(uri: str, what: str, call: Any, *args: Any, timeout_s: float | None = None, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)`` against the store, failing within ``timeout_s`` (``call_timeout_s()``).

    The call runs in a daemon thread: a store that stops answering (a server stuck behind retries)
    cannot hold the command past the bound, nor its exit.

    Raises:
        TrackingUnavailableError: the store's error, or that it did not answer in time.
    """
    timeout_s = call_timeout_s() if timeout_s is None else timeout_s
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = call(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = err
        finally:
            done.set()

    threading.Thread(target=target, name=f"mlflow-{what}", daemon=True).start()
    if not done.wait(timeout_s):
        raise TrackingUnavailableError(
            f"MLflow tracking URI {uri!r} did not answer ({what}) within {timeout_s:g} s; the training state on "
            f"disk is kept: rerun the same command once the store answers (bound: ${TIMEOUT_ENV})."
        )
    if "error" in outcome:
        err = outcome["error"]
        raise TrackingUnavailableError(
            f"MLflow tracking URI {uri!r} failed ({what}): {_reason(err)}; the training state on disk is kept: "
            "rerun the same command once the store works."
        ) from err
    return outcome.get("value")


def _run_env(timeout_s: float) -> dict[str, str]:
    """MLflow's own http retries fit in the bound, so the store's error (e.g. a 503) surfaces in time."""
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(timeout_s // 3)))}


def check_tracking_uri(uri: str) -> None:
    """Probes the store behind ``uri`` with one cheap query; call it before starting any work.

    A sqlite database must live in an existing, writable directory (MLflow would otherwise
    create the directories silently). An http store gets one try with a short timeout.

    Raises:
        TrackingUnavailableError: naming ``uri``, the cause and the fix.
    """
    db = sqlite_path(uri)
    if db is not None:
        parent = db.parent
        if not parent.is_dir():
            raise TrackingUnavailableError(
                f"MLflow tracking URI {uri!r} is not usable: directory {str(parent)!r} does not exist "
                "(create it, or pass another --tracking-uri / MLFLOW_TRACKING_URI)."
            )
        if not os.access(parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingUnavailableError(
                f"MLflow tracking URI {uri!r} is not usable: {str(db)!r} is not writable "
                "(pass another --tracking-uri / MLFLOW_TRACKING_URI)."
            )
    from mlflow.tracking import MlflowClient

    try:
        prepare_store(uri)
        with _env(PROBE_ENV):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as err:  # MLflow raises MlflowException, requests and sqlalchemy errors alike
        raise TrackingUnavailableError(
            f"MLflow tracking URI {uri!r} cannot be reached: {_reason(err)} "
            "(start the server, or pass another --tracking-uri / MLFLOW_TRACKING_URI, "
            "e.g. sqlite:///$PWD/mlflow.db)."
        ) from err


# ----------------------------------------------------------------------------- run tags
def package_versions() -> dict[str, str]:
    """``versions.<package>`` tags for python and the packages that decide the numbers."""
    versions = {"versions.python": platform.python_version()}
    for package in VERSIONED_PACKAGES:
        try:
            versions[f"versions.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[f"versions.{package}"] = "not installed"
    return versions


def device_name() -> str:
    """``cuda:<name>`` of the first visible GPU, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def environment_tags() -> dict[str, str]:
    """Tags every run gets: git commit and dirty flag, package versions, device, host."""
    commit = gitinfo.git_commit()
    dirty = gitinfo.git_dirty()
    tags = {
        "git_commit": commit or "unknown",
        "git_dirty": "unknown" if dirty is None else str(dirty).lower(),
        "device": device_name(),
        "host": platform.node(),
        **package_versions(),
    }
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


# ----------------------------------------------------------------------------- runs
def _experiment_id(client: Any, experiment: str, uri: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    root = artifact_root(uri)
    location = None
    if root is not None:
        # A per-store artifact folder keeps runs hermetic (MLflow's default is <cwd>/mlruns).
        location = (root / re.sub(r"[^A-Za-z0-9._-]", "_", experiment)).resolve().as_uri()
    try:
        return client.create_experiment(experiment, artifact_location=location)
    except MlflowException:
        found = client.get_experiment_by_name(experiment)  # another process created it meanwhile
        if found is None:
            raise
        return found.experiment_id


class TrackedRun:
    """An open MLflow run, written through an explicit client (no global active-run state).

    Every call is bounded (``bounded_call``): a store that fails or stops answering mid-run fails
    the command within ``timeout_s`` with the store's error.

    Args:
        client: the ``MlflowClient`` of the store.
        run_id: the run's id.
        experiment_id: the id of the run's experiment.
        uri: the store's URI, for messages.
        timeout_s: the bound of each call (None: ``$BEIT3_TRACKING_TIMEOUT_S``, else 60 s).
    """

    def __init__(self, client: Any, run_id: str, experiment_id: str, uri: str = "", timeout_s: float | None = None):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.uri = uri
        self.timeout_s = timeout_s

    def _call(self, what: str, call: Any, *args: Any) -> Any:
        return bounded_call(self.uri, what, call, *args, timeout_s=self.timeout_s)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):  # MLflow's per-call metric limit
            self._call("log metrics", self.client.log_batch, self.run_id, batch[i : i + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._call("set tags", self.client.log_batch, self.run_id, (), (), [RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("log text", self.client.log_text, self.run_id, text, artifact_file)

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self._call("log artifact", self.client.log_artifact, self.run_id, str(path), artifact_path)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def start_run(
    experiment: str,
    run_name: str,
    config: Mapping[str, Any],
    tags: Mapping[str, Any] | None = None,
    parent_run_id: str | None = None,
    *,
    tracking_uri: str | None = None,
    continue_run_id: str = "",
    timeout_s: float | None = None,
) -> Iterator[TrackedRun]:
    """Opens an MLflow run that records ``config`` and its lineage, and closes it with a status.

    The flattened config becomes params and ``config.json`` an artifact. Tags: environment
    (``environment_tags``), ``config_hash``, ``profile``/``seed`` when the config has those keys,
    the caller's ``tags``, and for a derived run ``parent_run_id``/``parent_config_hash``.
    The run ends FINISHED when the body returns, FAILED when it raises (the error is tagged),
    KILLED on KeyboardInterrupt or SIGTERM (SIGTERM becomes ``SystemExit(143)`` meanwhile).

    Args:
        experiment: experiment name; created (with a hermetic artifact location) if missing.
        run_name: the run's display name.
        config: the run's complete, JSON-serialisable configuration.
        tags: extra tags; they may not override the lineage tags.
        parent_run_id: the run this one derives from (e.g. the pretraining run of a finetune).
        tracking_uri: the store; ``resolve_tracking_uri`` picks one when None.
        continue_run_id: a run of the same experiment and config to continue (a resumed training run:
            one history, its ``lives`` tag counts the processes); a new run when it is not in the store.
        timeout_s: bound of each store call during the run (``bounded_call``).

    Raises:
        TrackingUnavailableError: the store cannot be used.
        KeyError: ``parent_run_id`` is not a run of the store.
    """
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)

    config = dict(config)
    digest = config_hash(config)
    run_tags = {key: str(config[key]) for key in ("profile", "seed") if key in config}
    run_tags.update({k: str(v) for k, v in (tags or {}).items()})
    run_tags.update(environment_tags())  # lineage last: a caller's tag cannot fake it
    run_tags["config_hash"] = digest
    if parent_run_id is not None:
        try:
            parent = client.get_run(parent_run_id)
        except MlflowException as err:
            raise KeyError(f"parent run {parent_run_id!r} is not in the store {uri!r}") from err
        run_tags["parent_run_id"] = parent_run_id
        run_tags["parent_config_hash"] = parent.data.tags.get("config_hash", "unknown")
        run_tags["mlflow.parentRunId"] = parent_run_id  # nests the run in the MLflow UI

    experiment_id = _experiment_id(client, experiment, uri)
    previous = _continuable(client, continue_run_id, experiment_id, digest) if continue_run_id else None
    if previous is not None:
        run = TrackedRun(client, previous.info.run_id, experiment_id, uri, timeout_s)
        client.update_run(run.run_id, status="RUNNING")
        if "error" in previous.data.tags:
            client.delete_tag(run.run_id, "error")
        run_tags["lives"] = str(int(previous.data.tags.get("lives", "1")) + 1)
        client.log_batch(run.run_id, tags=[_tag(k, v) for k, v in run_tags.items()])
    else:
        mlflow_run = client.create_run(experiment_id, run_name=run_name, tags={**run_tags, "lives": "1"})
        run = TrackedRun(client, mlflow_run.info.run_id, experiment_id, uri, timeout_s)

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None
    status = "FAILED"
    try:
        with _env(_run_env(call_timeout_s() if timeout_s is None else timeout_s)):
            if previous is None:
                params = [Param(k, v) for k, v in flatten_config(config).items()]
                for i in range(0, len(params), _PARAMS_PER_BATCH):
                    run._call("log params", client.log_batch, run.run_id, (), params[i : i + _PARAMS_PER_BATCH])
                run.log_text(json.dumps(config, indent=2, sort_keys=True, default=_json_default) + "\n", "config.json")
            yield run
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit) as err:
        status = "KILLED"
        _tag_error(run, err)
        raise
    except BaseException as err:
        _tag_error(run, err)
        raise
    finally:
        if in_main_thread:  # None: the previous handler was not installed from Python
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous_sigterm is None else previous_sigterm)
        if status == "FINISHED":
            run._call("end the run", client.set_terminated, run.run_id, status)
        else:  # the body's error is the one to report; a broken store leaves the run RUNNING
            with contextlib.suppress(TrackingUnavailableError):
                run._call("end the run", client.set_terminated, run.run_id, status)


def _tag(key: str, value: Any) -> Any:
    from mlflow.entities import RunTag

    return RunTag(key, str(value))


def _tag_error(run: TrackedRun, err: BaseException) -> None:
    with contextlib.suppress(TrackingUnavailableError):
        run.set_tags({"error": f"{type(err).__name__}: {err}"[:1000]})


def _continuable(client: Any, run_id: str, experiment_id: str, digest: str) -> Any | None:
    """The run ``run_id`` if it is in the store, in ``experiment_id`` and of config ``digest``."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None  # e.g. a new store: the run's history starts again here
    if run.info.experiment_id != experiment_id or run.data.tags.get("config_hash") != digest:
        return None
    return run


def _run_filter(config_hash: str, tags: Mapping[str, str] | None, status: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{64}", config_hash):
        raise ValueError(f"config_hash must be a sha256 hex digest, got {config_hash!r}")
    clauses = [f"tags.config_hash = '{config_hash}'", f"attributes.status = '{status}'"]
    for key, value in (tags or {}).items():
        if not re.fullmatch(r"[0-9a-f]{64}", value) or not re.fullmatch(r"[A-Za-z0-9_]+", key):
            raise ValueError(f"tag filter {key}={value!r}: only sha256 hex digests are matched")
        clauses.append(f"tags.{key} = '{value}'")
    return " and ".join(clauses)


def find_finished_run(experiment: str, config_hash: str, *, tracking_uri: str | None = None,
                      tags: Mapping[str, str] | None = None) -> Any | None:
    """The newest FINISHED run of ``experiment`` tagged with ``config_hash`` (and ``tags``, e.g. the
    ``parent_weights_sha256`` of a derived run), or None.

    Runs that failed, were killed or are still running are never returned.
    """
    filter_string = _run_filter(config_hash, tags, "FINISHED")
    client = tracking_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], filter_string=filter_string,
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def mark_stale_runs_killed(experiment: str, config_hash: str, *, tracking_uri: str | None = None,
                           tags: Mapping[str, str] | None = None) -> list[str]:
    """Mark KILLED the RUNNING runs of this config: called by the holder of the run's lock, so no live
    process writes them (their process died without ending them, e.g. SIGKILL). Returns their ids."""
    filter_string = _run_filter(config_hash, tags, "RUNNING")
    client = tracking_client(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    stale = client.search_runs([found.experiment_id], filter_string=filter_string)
    for run in stale:
        client.set_tag(run.info.run_id, "error", "its process ended without ending the run (killed)")
        client.set_terminated(run.info.run_id, status="KILLED")
    return [run.info.run_id for run in stale]
