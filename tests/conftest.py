import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads libgomp; see harness/__init__.py

import pytest  # noqa: E402
import torch  # noqa: E402

# Deterministic, quiet, and sized for a 2-core machine (or what OMP_NUM_THREADS leaves to the suite).
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or min(2, os.cpu_count() or 1))
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
