"""The trainer: optimisation, checkpoints, exact resume (also after SIGKILL), safety stops, config errors."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.checkpointing import ResumeError, latest_checkpoint, list_checkpoints, load_checkpoint_file
from harness.config import ConfigError, TrainConfig, build_train_config, load_train_config
from harness.optim import lr_at, param_groups
from harness.launch import parse_overrides, per_rank_batch_size, schedule_for_data
from harness.train import NonFiniteLossError, train

sys.path.insert(0, str(Path(__file__).parent))
from toy_training import ToyData, ToyModel, run, toy_config  # noqa: E402

HERE = Path(__file__).parent


def final_state(out_dir):
    return load_checkpoint_file(latest_checkpoint(out_dir))["model"]


def assert_bit_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_loss_goes_down(tmp_path):
    result = run(tmp_path, 30, log_interval=5, ckpt_interval=30)
    first = load_checkpoint_file(latest_checkpoint(tmp_path))
    assert result.step == 30 and first["step"] == 30
    assert result.losses["loss"] < 0.5 * result_first_loss(tmp_path)


def result_first_loss(tmp_path):
    torch.manual_seed(1234)
    model, data = ToyModel(), ToyData()
    with torch.no_grad():
        return sum(model(data.next_batch())["loss"].item() for _ in range(5)) / 5


def test_schedule_warmup_from_zero_then_cosine():
    assert lr_at(0, 1e-3, 1e-6, 10, 100) == 0.0
    assert lr_at(5, 1e-3, 1e-6, 10, 100) == pytest.approx(5e-4)
    assert lr_at(10, 1e-3, 1e-6, 10, 100) == pytest.approx(1e-3)
    assert lr_at(55, 1e-3, 1e-6, 10, 100) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    assert lr_at(100, 1e-3, 1e-6, 10, 100) == 1e-6


def test_param_groups_weight_decay_exclusions_and_layer_decay():
    model = ToyModel()
    groups = param_groups(model, weight_decay=0.05, layer_decay=0.5)
    by_name = {name: g for g in groups for name in g["names"]}
    for name in ("beit3.encoder.embed_positions.A.weight", "beit3.encoder.embed_positions.B.weight",
                 "beit3.vision_embed.cls_token", "beit3.encoder.layers.0.ffn.A.fc1.bias",
                 "beit3.encoder.layers.0.final_layer_norm.A.weight"):
        assert by_name[name]["weight_decay"] == 0.0, name
    assert by_name["beit3.encoder.layers.0.ffn.A.fc1.weight"]["weight_decay"] == 0.05
    assert by_name["beit3.text_embed.weight"]["lr_scale"] == 0.5**3  # layer id 0 of L=2
    assert by_name["beit3.encoder.layers.1.ffn.A.fc1.weight"]["lr_scale"] == 0.5
    assert by_name["head.weight"]["lr_scale"] == 1.0
    head_groups = param_groups(model, weight_decay=0.05, layer_decay=1.0, head_lr_scale=20.0)
    assert {n: g for g in head_groups for n in g["names"]}["head.weight"]["lr_scale"] == 20.0


def test_checkpoints_are_pruned_and_complete(tmp_path):
    run(tmp_path, 5)
    files = list_checkpoints(tmp_path)
    assert [f.name for f in files] == ["step_00000003.pt", "step_00000004.pt", "step_00000005.pt"]
    ckpt = load_checkpoint_file(files[-1])
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "data", "config", "config_hash", "git_commit"} <= set(ckpt)
    assert ckpt["data"] == {"position": 5}
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_resume_after_an_exception_is_bit_identical(tmp_path):
    run(tmp_path / "straight", 8, grad_accum_steps=2)

    class Crash(RuntimeError):
        pass

    torch.manual_seed(1234)
    model, data = ToyModel(), ToyData()
    original = data.next_batch

    def crashing():
        if data.position == 9:  # mid-way through step 5's micro-batches
            raise Crash
        return original()

    data.next_batch = crashing
    with pytest.raises(Crash):
        train(toy_config(tmp_path / "crashed", 8, grad_accum_steps=2), model, data)
    assert load_checkpoint_file(latest_checkpoint(tmp_path / "crashed"))["step"] == 4
    result = run(tmp_path / "crashed", 8, resume=True, grad_accum_steps=2)
    assert result.resumed_from_step == 4
    assert_bit_identical(final_state(tmp_path / "straight"), final_state(tmp_path / "crashed"))


@pytest.mark.slow
def test_sigkill_at_an_arbitrary_step_then_resume_is_bit_identical(tmp_path):
    script = str(HERE / "toy_training.py")
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    steps = 40
    subprocess.run([sys.executable, script, str(tmp_path / "straight"), str(steps)], check=True, env=env, timeout=300)

    victim = subprocess.Popen([sys.executable, script, str(tmp_path / "killed"), str(steps)], env=env)
    kill_after = 7 + int(time.time()) % 11  # an arbitrary step between 7 and 17
    deadline = time.time() + 240
    while time.time() < deadline:
        latest = latest_checkpoint(tmp_path / "killed")
        if latest is not None and int(latest.stem.split("_")[1]) >= kill_after:
            break
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    killed_at = load_checkpoint_file(latest_checkpoint(tmp_path / "killed"))["step"]
    assert victim.returncode == -signal.SIGKILL and killed_at < steps

    subprocess.run([sys.executable, script, str(tmp_path / "killed"), str(steps), "resume"], check=True, env=env, timeout=300)
    assert_bit_identical(final_state(tmp_path / "straight"), final_state(tmp_path / "killed"))


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_on_gloo_reproduce_one_process(tmp_path, parallel):
    """torchrun with 2 CPU ranks, each on half the batch, ends where one process on the whole batch does."""
    script = str(HERE / "toy_training.py")
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    flags = ["--no-drop-path"] + (["--fsdp"] if parallel == "fsdp" else [])
    subprocess.run([sys.executable, script, str(tmp_path / "one"), "6", *flags], check=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    script, str(tmp_path / "two"), "6", *flags], check=True, env=env, timeout=300)
    one, two = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(two[key], one[key], atol=1e-5, rtol=1e-4, msg=key)


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(1234)
    with pytest.raises(NonFiniteLossError, match="at step 4"):
        train(toy_config(tmp_path, 10), ToyModel(), ToyData(nan_at=4))
    ckpt = load_checkpoint_file(latest_checkpoint(tmp_path))
    assert ckpt["step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_resume_from_a_checkpoint_of_another_config_is_refused(tmp_path):
    run(tmp_path, 3)
    with pytest.raises(ResumeError, match="another config"):
        run(tmp_path, 3, resume=True, lr=1e-2)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key.*\n  lerning_rate"):
        build_train_config({"lerning_rate": 1e-3})
    with pytest.raises(ConfigError, match="max_steps='ten' has type str, expected int"):
        build_train_config({"max_steps": "ten"})
    with pytest.raises(ConfigError, match="precision='fp8'"):
        TrainConfig(precision="fp8")
    base = tmp_path / "base.py"
    base.write_text("lr = 1e-3\nmax_steps = 10\n")
    child = tmp_path / "child.py"
    child.write_text("_base_ = ['base.py']\nmax_steps = 20\nwarmup_step = 3\n")
    with pytest.raises(ConfigError, match="warmup_step .*did you mean warmup_steps"):
        load_train_config(child)
    child.write_text("_base_ = ['base.py']\nmax_steps = 20\n")
    cfg = load_train_config(child, {"seed": 3})
    assert (cfg.lr, cfg.max_steps, cfg.seed) == (1e-3, 20, 3)


def test_parse_overrides():
    assert parse_overrides(["lr=1e-4", "resume=true", "task=pretrain_mdm", "betas=(0.9,0.999)"]) == {
        "lr": 1e-4, "resume": True, "task": "pretrain_mdm", "betas": (0.9, 0.999)}


class _Sized:
    def __init__(self, batches_per_epoch):
        self.batches_per_epoch = batches_per_epoch


def test_epochs_and_global_batch_become_steps_per_rank():
    cfg = TrainConfig(epochs=10, warmup_epochs=1, global_batch_size=128, grad_accum_steps=2)
    assert per_rank_batch_size(cfg, world_size=8) == 8  # 128 = 8 ranks x 2 accumulation x 8
    scheduled = schedule_for_data(cfg, _Sized(batches_per_epoch=101), world_size=8)
    assert (scheduled.max_steps, scheduled.warmup_steps) == (510, 51)  # ceil(101 / 2) = 51 steps per epoch
    assert schedule_for_data(TrainConfig(max_steps=7), _Sized(5), 1).max_steps == 7  # no epochs: as given
    streamed = TrainConfig(epochs=2, global_batch_size=64, data={"num_samples": 1000})
    assert schedule_for_data(streamed, _Sized(None), world_size=2).max_steps == 32  # 2 x ceil(1000 / 64)


def test_epoch_schedule_errors_say_what_to_set():
    with pytest.raises(ConfigError, match="does not split over 3 rank"):
        per_rank_batch_size(TrainConfig(global_batch_size=128), world_size=3)
    with pytest.raises(ConfigError, match="data.num_samples"):
        schedule_for_data(TrainConfig(epochs=1, global_batch_size=8), _Sized(None), world_size=1)
