"""One way to point MLflow at a store: ``tracking.use_tracking_uri``."""
import os

import pytest

from harness.tracking import use_tracking_uri


@pytest.mark.parametrize("before", [None, "sqlite:///elsewhere.db"])
def test_use_tracking_uri_sets_and_restores(monkeypatch, before):
    if before is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", before)
    with pytest.raises(RuntimeError):
        with use_tracking_uri("sqlite:///store.db"):
            assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///store.db"
            raise RuntimeError("a failed run")
    assert os.environ.get("MLFLOW_TRACKING_URI") == before
