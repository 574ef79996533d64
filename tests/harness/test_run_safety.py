"""Runs that cannot lie (issue 14): lineage integrity, safe resume, one writer per run, one history per
run, damage survived or named, data identity. Processes where the behaviour needs them."""
import dataclasses
import http.server
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.checkpointing import (
    CheckpointWarning,
    LineageError,
    file_sha256,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint_file,
    rng_state,
    set_rng_state,
)
from harness.config import TrainConfig, run_identity, train_config_hash
from harness.experiments import RunRecord, derive, run_dir
from harness.locks import LockedError, exclusive
from harness.tracking import TrackedRun, TrackingUnavailableError, start_run

sys.path.insert(0, str(Path(__file__).parent))
from toy_training import ToyData, ToyModel, run, toy_config  # noqa: E402

from harness.train import train  # noqa: E402

HERE = Path(__file__).parent
REPO = HERE.parents[1]
SMOKE_RUN = str(HERE / "smoke_run.py")


def _env(**extra):
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


# ----------------------------------------------------------------------------- 1. lineage
def test_a_run_resumed_at_its_final_step_exports_its_weights_and_losses(tmp_path):
    first = run(tmp_path, 3)
    weights = Path(first.weights)
    reference = file_sha256(weights)
    weights.unlink()  # killed between the final checkpoint and the end of the run, or weights deleted
    again = run(tmp_path, 3, resume=True)
    assert again.resumed_from_step == 3 and Path(again.weights).is_file()
    assert file_sha256(again.weights) == reference  # the same weights, from the final checkpoint
    assert again.losses == first.losses and again.checkpoint == str(latest_checkpoint(tmp_path))


def _parent(tmp_path, name="beit3-mdm-smoke-seed0", content=b"weights"):
    weights = tmp_path / f"{name}.pt"
    weights.write_bytes(content)
    return RunRecord(name=name, run_id=f"id-{name}", config_hash="a" * 64, checkpoint=str(weights), status="ran",
                     tags={"weights_sha256": file_sha256(weights)})


def test_derive_refuses_a_parent_whose_weights_are_missing_or_changed(tmp_path):
    child = TrainConfig(run_name="vqav2-beit3-smoke-seed0", parent_config_hash="a" * 64)
    parent = _parent(tmp_path)
    assert derive(child, parent).init_from == parent.checkpoint

    Path(parent.checkpoint).write_bytes(b"other weights")
    with pytest.raises(LineageError, match="vqav2-beit3-smoke-seed0 cannot start from run beit3-mdm-smoke-seed0 "
                                           r"\(id-beit3-mdm-smoke-seed0\): its weights .* have sha256"):
        derive(child, parent)
    Path(parent.checkpoint).unlink()
    with pytest.raises(LineageError, match="vqav2-beit3-smoke-seed0 cannot start from .*weights .* are missing"):
        derive(child, parent)
    empty = dataclasses.replace(parent, checkpoint="")
    with pytest.raises(LineageError, match="records no weights file"):
        derive(child, empty)


def test_the_parent_weights_hash_is_part_of_the_child_identity(tmp_path, monkeypatch):
    monkeypatch.setenv("BEIT3_RUNS_DIR", str(tmp_path / "runs"))
    child = TrainConfig(run_name="child", parent_config_hash="a" * 64)
    one = derive(child, _parent(tmp_path, "parent-one", content=b"one"))
    two = derive(child, _parent(tmp_path, "parent-two", content=b"two"))
    assert train_config_hash(one) == train_config_hash(two)  # the planned config is the same ...
    assert run_identity(one) != run_identity(two)  # ... but they are two computations
    assert run_dir(one) != run_dir(two)


# ----------------------------------------------------------------------------- 2. safe to resume
class _Payload:
    """Unpickling this creates a marker file: the code execution a weights-only load must refuse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_checkpoint_runs_no_code_and_is_moved_aside(tmp_path):
    run(tmp_path, 4, keep_last=5)
    for path in list_checkpoints(tmp_path)[2:]:
        path.unlink()  # as if killed after step 2 ...
    marker = tmp_path / "pwned"
    crafted = tmp_path / "checkpoints" / "step_00000003.pt"
    torch.save({"step": 3, "model": _Payload(str(marker))}, crafted)  # ... and someone placed this

    with pytest.warns(CheckpointWarning) as caught:
        resumed = run(tmp_path, 4, resume=True, keep_last=5)
    assert not marker.exists()
    assert resumed.resumed_from_step == 2 and resumed.step == 4
    message = str(caught[0].message)
    assert "step_00000003.pt" in message and "step_00000002.pt" in message  # names both
    assert (tmp_path / "checkpoints" / "step_00000003.pt.unreadable").is_file()  # kept, renamed


def test_rng_states_are_plain_and_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save({"rng": [rng_state()]}, tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    run(tmp_path, 3, keep_last=5)
    newest = latest_checkpoint(tmp_path)
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(CheckpointWarning, match="step_00000003.pt.*step_00000002.pt"):
        resumed = run(tmp_path, 3, resume=True, keep_last=5)
    assert resumed.resumed_from_step == 2
    assert load_checkpoint_file(latest_checkpoint(tmp_path))["step"] == 3


# ----------------------------------------------------------------------------- 3. one writer per run
def test_a_held_lock_names_its_holder(tmp_path):
    target = tmp_path / "runs" / "some-run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from harness.locks import exclusive\n"
         f"with exclusive({str(target)!r}, 'run x'):\n    print('held', flush=True); time.sleep(60)"],
        env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=rf"run y is locked by process {holder.pid} on "):
            with exclusive(target, "run y", timeout_s=0.2):
                pass
    finally:
        holder.kill()
        holder.wait()
    with exclusive(target, "run y", timeout_s=5):  # the holder is gone: its lock with it
        pass


@pytest.fixture(scope="module")
def smoke_dirs(tmp_path_factory):
    """One smoke world for the process tests of this file (built by the first of them, under its lock)."""
    return tmp_path_factory.mktemp("smoke-data")


@pytest.fixture
def sandbox(tmp_path, smoke_dirs, monkeypatch):
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "BEIT3_RUNS_DIR": str(tmp_path / "runs"),
           "BEIT3_DATA_ROOT": str(smoke_dirs)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _smoke(sandbox, steps, *extra, **popen):
    return subprocess.Popen([sys.executable, SMOKE_RUN, str(steps), *extra], env=_env(**sandbox),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.slow
def test_two_processes_on_one_run_train_it_once(sandbox):
    first, second = _smoke(sandbox, 3), _smoke(sandbox, 3)
    outputs = [proc.communicate(timeout=600) for proc in (first, second)]
    assert [proc.returncode for proc in (first, second)] == [0, 0], outputs
    records = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sorted(r["status"] for r in records) == ["ran", "reused"]
    assert records[0]["run_id"] == records[1]["run_id"]
    client = MlflowClient(sandbox["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("beit3-pretrain").experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]  # no duplicate, no poisoned store
    # The second said whom it waited for (unless it came after the first finished); a wait for the
    # world both read (built by whichever came first) is another lock and may fall to either.
    waited = [err for _, err in outputs if re.search(r"run \S+ is being written by process", err)]
    assert len(waited) <= 1


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 3])
def test_concurrent_first_use_of_a_store_cannot_fail(tmp_path, processes):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "table2", "--tracking-uri", uri,
                               "--out", str(tmp_path / f"reports{i}"), "--results-dir", str(tmp_path / f"results{i}")],
                              env=_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(processes)]
    outputs = [proc.communicate(timeout=600) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * processes, [err for _, err in outputs]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("beit3-tables").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * processes


# ----------------------------------------------------------------------------- 4. one history per run
def test_a_continued_run_keeps_its_id_and_drops_its_error(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = {"task": "toy", "seed": 0}
    with pytest.raises(RuntimeError):
        with start_run("t-continue", "toy", config, tracking_uri=uri) as first:
            first.log_metrics({"loss": 2.0}, step=1)
            raise RuntimeError("killed mid-way")
    with start_run("t-continue", "toy", config, tracking_uri=uri, continue_run_id=first.run_id) as second:
        second.log_metrics({"loss": 1.0}, step=2)
    client = MlflowClient(uri)
    run_ = client.get_run(first.run_id)
    assert second.run_id == first.run_id and run_.info.status == "FINISHED"
    assert "error" not in run_.data.tags and run_.data.tags["lives"] == "2"
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "loss")] == [(1, 2.0), (2, 1.0)]
    with start_run("t-continue", "toy", {**config, "seed": 1}, tracking_uri=uri, continue_run_id=first.run_id) as other:
        pass
    assert other.run_id != first.run_id  # another config never continues a run


@pytest.mark.slow
def test_a_sigkilled_run_is_marked_killed_then_continued_as_one_history(sandbox):
    from smoke_run import smoke_config

    from harness.experiments import ensure_run

    victim = _smoke(sandbox, 6)
    out_dir = None
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        found = list(Path(sandbox["BEIT3_RUNS_DIR"]).glob("beit3-pretrain/*/checkpoints/step_*.pt"))
        if any(p.name >= "step_00000002.pt" for p in found):
            out_dir = found[0].parent.parent
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert out_dir is not None and victim.returncode == -signal.SIGKILL
    client = MlflowClient(sandbox["MLFLOW_TRACKING_URI"])
    (killed,) = client.search_runs([client.get_experiment_by_name("beit3-pretrain").experiment_id])
    assert killed.info.status == "RUNNING"  # nobody ended it
    killed_at = load_checkpoint_file(latest_checkpoint(out_dir))
    assert killed_at["mlflow_run_id"] == killed.info.run_id

    record = ensure_run(smoke_config(6))
    assert record.status == "resumed" and record.run_id == killed.info.run_id  # the same MLflow run
    resumed = client.get_run(record.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["lives"] == "2"
    assert resumed.data.tags["resumed_from_step"] == str(killed_at["step"])
    steps = sorted({m.step for m in client.get_metric_history(record.run_id, "loss")})
    assert steps == list(range(1, 7))  # one history: the first life's steps, then the rest
    assert resumed.data.metrics["wall_time_s"] > killed_at["wall_time_s"]  # summed over both lives
    assert Path(record.checkpoint).is_file() and file_sha256(record.checkpoint) == record.weights_sha256


@pytest.mark.slow
def test_a_running_run_without_a_live_process_is_marked_killed(sandbox):
    from smoke_run import smoke_config

    from harness.experiments import ensure_run

    from harness.tracking import _experiment_id, tracking_client

    cfg = smoke_config(2)
    uri = sandbox["MLFLOW_TRACKING_URI"]
    client = tracking_client(uri)
    # What a process SIGKILLed before its first checkpoint leaves: a RUNNING run of the config.
    orphan = client.create_run(_experiment_id(client, cfg.experiment, uri), run_name=cfg.run_name,
                               tags={"config_hash": train_config_hash(cfg)})
    record = ensure_run(cfg)
    assert record.status == "ran" and record.run_id != orphan.info.run_id
    assert client.get_run(orphan.info.run_id).info.status == "KILLED"


# ----------------------------------------------------------------------------- 5. damage survived or named
class _Stuck:
    """A store client that stops answering: every write blocks."""

    def log_batch(self, *args, **kwargs):
        time.sleep(3600)


def test_a_store_that_stops_answering_fails_within_the_bound_and_stays_resumable(tmp_path):
    tracker = TrackedRun(_Stuck(), "run", "0", uri="http://stuck.example", timeout_s=0.5)
    started = time.monotonic()
    torch.manual_seed(1234)
    with pytest.raises(TrackingUnavailableError, match=r"'http://stuck.example' did not answer .* within 0.5 s"):
        train(toy_config(tmp_path, 6), ToyModel(), ToyData(), tracker=tracker)
    assert time.monotonic() - started < 10
    assert load_checkpoint_file(latest_checkpoint(tmp_path))["step"] == 1  # step 2 failed at its log
    assert run(tmp_path, 6, resume=True).resumed_from_step == 1


class _Unavailable(http.server.BaseHTTPRequestHandler):
    def _answer(self):
        self.send_response(503)
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


def test_a_store_answering_503_mid_run_fails_with_its_error_in_time(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    tracker = TrackedRun(MlflowClient(uri), "0" * 32, "0", uri=uri, timeout_s=20)
    started = time.monotonic()
    try:
        with pytest.raises(TrackingUnavailableError, match=rf"{uri}.* failed \(log metrics\): .*503"):
            tracker.log_metrics({"loss": 1.0}, step=1)
    finally:
        server.shutdown()
    assert time.monotonic() - started < 20


def test_train_cli_errors_are_one_line_exit_2_and_debug_shows_the_traceback(tmp_path):
    config = tmp_path / "bad.py"
    config.write_text("task = 'pretrain_mdm'\nmax_step = 3\n")
    command = [sys.executable, "-m", "harness.train", str(config)]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "max_step" in done.stderr and "did you mean max_steps" in done.stderr and "Traceback" not in done.stderr
    debug = subprocess.run([*command, "--debug"], env=_env(), capture_output=True, text=True, timeout=120)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_an_unreadable_data_root_is_one_line_naming_it(tmp_path):
    config = tmp_path / "nodata.py"
    root = tmp_path / "no-such-data"
    config.write_text(f"task = 'pretrain_mdm'\nmodel_overrides = dict(depth=1, embed_dim=16, num_heads=2)\n"
                      f"data = dict(root={str(root)!r})\nout_dir = {str(tmp_path / 'out')!r}\nprogress = False\n")
    done = subprocess.run([sys.executable, "-m", "harness.train", str(config)], capture_output=True, text=True,
                          env=_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}"), timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert str(root) in done.stderr and "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- 6. data identity
def test_a_changed_folder_source_is_another_config(tmp_path):
    folder = tmp_path / "images" / "train" / "n01"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(b"x" * (i + 1))
    cfg = TrainConfig(data={"root": str(tmp_path / "images")})
    before = train_config_hash(cfg)
    from harness.data_identity import _path_identity

    (folder / "1.jpg").unlink()
    _path_identity.cache_clear()  # a new command
    assert train_config_hash(cfg) != before
    assert cfg.semantic_dict()["data_identity"].startswith("folder:")


def test_a_generated_world_is_identified_by_its_version_seed_and_profile_configuration(monkeypatch):
    from dataclasses import replace

    from harness.world import PROFILES, VERSION
    from harness.world.profiles import config_digest

    cfg = TrainConfig(data={"root": "world:smoke"})
    digest = config_digest(PROFILES["smoke"].to_dict())
    assert cfg.semantic_dict()["data_identity"] == f"world:smoke:seed=0:version={VERSION}:config={digest}"
    assert TrainConfig(data={"root": "world:smoke:1"}).semantic_dict()["data_identity"].startswith("world:smoke:seed=1:")
    assert "data_identity" not in TrainConfig().semantic_dict()  # no data root, nothing to identify
    before = train_config_hash(cfg)
    # Harder or larger without a version bump: another world, so another run.
    monkeypatch.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], colors=("red", "blue")))
    assert train_config_hash(cfg) != before


def test_skip_bad_is_a_data_key_that_reaches_the_reader_and_the_run_metrics(tmp_path, smoke_dirs, monkeypatch):
    import shutil

    from backbones.tokenizers import TextTokenizer
    from harness.launch import run_training
    from harness.world import ensure_world
    from tasks.data.images import DataError

    world = tmp_path / "world"
    shutil.copytree(ensure_world("smoke", root=smoke_dirs), world)
    with open(world / "nlvr2" / "data" / "train.json", "a") as stream:
        stream.write("{not json\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    vocab_size = TextTokenizer(world / "spm" / "world.model").vocab_size
    cfg = TrainConfig(task="nlvr2", model_overrides={"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1,
                                                     "num_heads": 2, "vocab_size": vocab_size},
                      data={"root": str(world), "batch_size": 2}, max_steps=1, warmup_steps=0, progress=False,
                      out_dir=str(tmp_path / "strict"), experiment="t-skip", run_name="nlvr2-strict")
    with pytest.raises(DataError, match="train.json"):
        run_training(cfg)
    lenient = dataclasses.replace(cfg, data={**cfg.data, "skip_bad": True}, out_dir=str(tmp_path / "lenient"),
                                  run_name="nlvr2-lenient")
    assert train_config_hash(lenient) != train_config_hash(cfg)
    run_training(lenient)
    client = MlflowClient(uri)
    (finished,) = client.search_runs([client.get_experiment_by_name("t-skip").experiment_id],
                                     filter_string="attributes.status = 'FINISHED'")
    assert finished.data.metrics["data.num_skipped"] == 1


@pytest.mark.parametrize("task, folder", [("imagenet", "imagenet/train"), ("pretrain_mdm", "in21k/train")])
def test_skip_bad_leaves_out_unreadable_images_of_folder_readers(task, folder, tmp_path, smoke_dirs, monkeypatch):
    import shutil

    from backbones.tokenizers import TextTokenizer
    from harness.launch import run_training
    from harness.profiles import get_profile
    from harness.world import ensure_world
    from tasks.data.images import DataError

    world = tmp_path / "world"
    shutil.copytree(ensure_world("smoke", root=smoke_dirs), world)
    first = sorted(p for p in (world / folder).rglob("*") if p.is_file() and p.suffix.lower() in (".jpeg", ".jpg", ".png"))[0]
    first.write_bytes(b"not an image")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    vocab_size = TextTokenizer(world / "spm" / "world.model").vocab_size
    model = {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2, "vocab_size": vocab_size}
    if task == "imagenet":
        model = {**model, "num_classes": len([d for d in (world / folder).iterdir() if d.is_dir()])}
        model.pop("vocab_size")
        data = {"root": str(world), "batch_size": 2}
    else:
        model = {**model, "num_visual_tokens": 32}  # the smoke profile's codebook
        data = {**get_profile("smoke").pretrain["data"], "root": str(world), "batch_size": 1}
    cfg = TrainConfig(task=task, model_overrides=model, data=data, max_steps=1, warmup_steps=0, progress=False,
                      out_dir=str(tmp_path / "strict"), experiment="t-skip-folder", run_name=f"{task}-strict")
    with pytest.raises(DataError, match=first.name):  # read within the first batches (or the codebook fit)
        run_training(dataclasses.replace(cfg, max_steps=64))
    lenient = dataclasses.replace(cfg, data={**cfg.data, "skip_bad": True}, out_dir=str(tmp_path / "lenient"),
                                  run_name=f"{task}-lenient")
    run_training(lenient)
    client = MlflowClient(uri)
    (finished,) = client.search_runs([client.get_experiment_by_name("t-skip-folder").experiment_id],
                                     filter_string="attributes.status = 'FINISHED'")
    assert finished.data.metrics["data.num_skipped"] == 1
