import os

import pytest
import torch

# Deterministic, quiet, and sized for a 2-core machine.
torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
