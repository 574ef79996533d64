"""The training loop reads the device from the host at most once per logged step (issue 16, outcome 4).

On a GPU every such read (``.item()``, ``bool(tensor)``, ``.tolist()``, a copy to the CPU) waits for
the queued kernels. On the CPU there is nothing to wait for, so the reads are counted instead: scalar
reads where the dispatcher sees them (``aten._local_scalar_dense``: ``.item()``, ``if tensor``,
``float(tensor)``) and the conversions that bypass it (``tolist``, ``numpy``).
"""
import math
import sys

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
