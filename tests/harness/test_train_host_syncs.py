"""The training loop reads the device from the host at most once per logged step (issue 16, outcome 4).

On a GPU every such read (``.item()``, ``bool(tensor)``, ``.tolist()``, a copy to the CPU) waits for
the queued kernels. On the CPU there is nothing to wait for, so the reads are counted instead: scalar
reads where the dispatcher sees them (``aten._local_scalar_dense``: ``.item()``, ``if tensor``,
``float(tensor)``) and the conversions that bypass it (``tolist``, ``numpy``).
"""
import math
import sys
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from harness.checkpointing import latest_checkpoint, load_checkpoint_file
from harness.train import NonFiniteLossError, train

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from toy_training import ToyData, ToyModel, toy_config  # noqa: E402


def _reads_host_side_optimizer_state() -> bool:
    # torch keeps the optimizer's step counters on the CPU even for GPU parameters (capturable=False),
    # so reading them inside torch.optim never waits for the device.
    frame = sys._getframe(2)
    while frame is not None:
        if "torch/optim/" in frame.f_code.co_filename.replace("\\", "/"):
            return True
        frame = frame.f_back
    return False


class HostReads(TorchDispatchMode):
    """Counts device-to-host reads while active."""

    def __init__(self):
        super().__init__()
        self.count, self.active = 0, False

    def __enter__(self):
        self.active = True
        return super().__enter__()

    def __exit__(self, *exc):
        self.active = False
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and not _reads_host_side_optimizer_state():
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def host_reads(monkeypatch):
    reads = HostReads()
    for name in ("tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            reads.count += reads.active
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def test_one_host_read_per_logged_step(tmp_path, host_reads):
    max_steps, log_interval = 8, 4
    cfg = toy_config(tmp_path, max_steps, log_interval=log_interval, ckpt_interval=100, grad_accum_steps=2)
    torch.manual_seed(1234)
    model, data = ToyModel(), ToyData()
    with host_reads:
        result = train(cfg, model, data)
    assert result.step == max_steps
    assert set(result.losses) >= {"loss", "mse", "grad_norm", "samples_per_s"}
    assert all(math.isfinite(v) for v in result.losses.values())
    logged_steps = max_steps // log_interval
    assert host_reads.count <= logged_steps, f"{host_reads.count} host reads in {max_steps} steps ({logged_steps} logged)"


def test_a_non_finite_loss_between_log_steps_stops_before_anything_is_saved(tmp_path):
    """The NaN of step 2 is found at the step-4 read, before step 4's checkpoint is written."""
    cfg = toy_config(tmp_path, 8, log_interval=4, ckpt_interval=4)
    torch.manual_seed(1234)
    with pytest.raises(NonFiniteLossError, match="at step 2 \\(stopped at step 4\\)"):
        train(cfg, ToyModel(), ToyData(nan_at=2))
    assert latest_checkpoint(tmp_path) is None


def test_a_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path):
    cfg = toy_config(tmp_path, 8, log_interval=4, ckpt_interval=2)
    torch.manual_seed(1234)
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        train(cfg, ToyModel(), ToyData(nan_at=3))
    ckpt = load_checkpoint_file(latest_checkpoint(tmp_path))
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


# Ops whose result size or value the host must learn from the device: a boolean-mask index, nonzero,
# masked_select, unique (their outputs' sizes), besides the scalar reads counted above.
_SIZE_FROM_DATA = {torch.ops.aten.nonzero.default, torch.ops.aten.masked_select.default,
                   torch.ops.aten._unique2.default, torch.ops.aten.unique_dim.default,
                   torch.ops.aten.unique_consecutive.default}


def _caller() -> str:
    """The innermost frame of this project's code (``file:function:line``), where a read is made."""
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename.replace("\\", "/")
        if any(f"/{package}/" in path for package in ("tasks", "backbones", "harness")) and "/tests/" not in path:
            return f"{path.rsplit('/', 2)[-2]}/{path.rsplit('/', 1)[-1]}:{frame.f_code.co_name}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


# The one kind of read the loop keeps by design: VLMo stage 3 draws its ITM hard negatives on the CPU
# (from the similarities and the step's seed), so the negatives are the same on every device.
KNOWN_READS = ("tasks/pretrain_vlmo.py:sample_hard_negatives:", "tasks/pretrain_vlmo.py:_generator:")


class DeviceReads(HostReads):
    """:class:`HostReads` plus the ops that learn a size from the data (each waits for the device on
    a GPU); counted only while ``active`` and with the kinds seen, to name them in a failure."""

    def __init__(self):
        super().__init__()
        self.kinds: list[str] = []
        self.known = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        before = self.count
        result = super().__torch_dispatch__(func, types, args, kwargs)
        bool_index = func is torch.ops.aten.index.Tensor and any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1])
        if self.active and (func in _SIZE_FROM_DATA or bool_index):
            self.count += 1
        if not self.active:
            self.count = before
        elif self.count > before:
            self.note(str(func))
        return result

    def note(self, what: str) -> None:
        """Keep what was read where; a read of :data:`KNOWN_READS` is kept apart from the count."""
        where = _caller()
        if where.startswith(KNOWN_READS):
            self.count -= 1
            self.known += 1
        self.kinds.append(f"{what} at {where}")


def _task_configs():
    from harness.experiments import recipe_configs
    from harness.finetune import finetune_config
    from harness.profiles import get_profile

    smoke = get_profile("smoke")
    configs = {f"{cfg.task}-{cfg.run_name.split('-')[1]}": cfg for cfg in recipe_configs("beit3", smoke)}
    configs |= {cfg.run_name.split("-smoke")[0]: cfg for cfg in recipe_configs("vlmo", smoke)}
    for task in ("vqav2", "nlvr2", "captioning", "retrieval", "imagenet"):
        configs[task] = finetune_config(task, "none", smoke)
    return configs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pretrain_mdm-mdm", "vlmo-stage1", "vlmo-stage2", "vlmo-stage3",
                                  "vqav2", "nlvr2", "captioning", "retrieval", "imagenet"])
def test_every_task_s_training_step_reads_the_device_only_at_the_log_steps(name, tmp_path, monkeypatch):
    """The product path (``harness.launch.run_training``) of each task on the smoke world: from the first
    batch on the device to the end of the loop, the host reads the device only at the log steps."""
    import dataclasses

    import harness.launch as launch
    import harness.train as trainer
    import tasks

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("BEIT3_DATA_ROOT", str(tmp_path / "data"))
    configs = _task_configs()
    assert name in configs, sorted(configs)
    max_steps, log_interval = 4, 2
    cfg = dataclasses.replace(configs[name], max_steps=max_steps, warmup_steps=1, epochs=0, log_interval=log_interval,
                              ckpt_interval=100, out_dir=str(tmp_path / "run"), init_from="", progress=False)
    reads = DeviceReads()
    build_data, to_device, train = tasks.build_data, trainer.to_device, launch.train

    def paused(next_batch):  # the data pipeline reads host tensors: not the device
        def call():
            was, reads.active = reads.active, False
            try:
                return next_batch()
            finally:
                reads.active = was
        return call

    def built(*args, **kwargs):
        data = build_data(*args, **kwargs)
        data.next_batch = paused(data.next_batch)
        return data

    def first_batch_starts_counting(batch, device):
        reads.active = True
        return to_device(batch, device)

    def counted_train(*args, **kwargs):
        try:
            return train(*args, **kwargs)
        finally:
            reads.active = False

    monkeypatch.setattr(tasks, "build_data", built)
    monkeypatch.setattr(trainer, "to_device", first_batch_starts_counting)
    monkeypatch.setattr(launch, "train", counted_train)
    for method in ("tolist", "numpy", "cpu"):  # a copy to the host waits for the device too
        def counted(self, *args, _original=getattr(torch.Tensor, method), _method=method, **kwargs):
            if reads.active:
                reads.count += 1
                reads.note(f"Tensor.{_method}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    with reads:
        reads.active = False
        result = launch.run_training(cfg)
    assert result.step == max_steps
    logged = max_steps // log_interval
    assert reads.count <= logged, f"{name}: {reads.count} device reads in {max_steps} steps ({logged} logged): " \
                                  f"{sorted(Counter(reads.kinds).items())}"
    assert (reads.known > 0) == (name == "vlmo-stage3")  # the known reads are stage 3's, and still there
