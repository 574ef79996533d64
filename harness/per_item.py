"""Per-item evaluation results as MLflow artifacts: ``per_item/<split>.csv.gz`` in the evaluating run.

The frames are what :class:`tasks.spec.EvalResult` carries (``item_id``, ``cluster_id``,
``prediction`` and per-item score columns); confidence intervals and paired comparisons are
computed from them.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from .tracking import resolve_tracking_uri

ARTIFACT_DIR = "per_item"


def artifact_path(split: str, prefix: str = "") -> str:
    """``per_item/<split>.csv.gz``; ``prefix`` (e.g. ``zeroshot.flickr30k``) keeps other evaluations apart."""
    name = f"{prefix}.{split}" if prefix else split
    return f"{ARTIFACT_DIR}/{name}.csv.gz"


def log_per_item(run_id: str, split: str, items: pd.DataFrame, *, tracking_uri: str | None = None,
                 prefix: str = "") -> str:
    """Write ``items`` as the run's ``per_item/<split>.csv.gz`` artifact; returns the artifact path."""
    from mlflow.tracking import MlflowClient

    path = artifact_path(split, prefix)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(path).name
        items.to_csv(local, index=False, compression="gzip")
        MlflowClient(resolve_tracking_uri(tracking_uri)).log_artifact(run_id, str(local), ARTIFACT_DIR)
    return path


def load_per_item(run_id: str, split: str, *, tracking_uri: str | None = None, prefix: str = "") -> pd.DataFrame:
    """The per-item frame a run logged for ``split``.

    Raises:
        FileNotFoundError: the run has no such artifact (evaluated before per-item results existed).
    """
    from mlflow.tracking import MlflowClient

    path = artifact_path(split, prefix)
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except Exception as err:  # MLflow raises its own exception types or OSError per store
            raise FileNotFoundError(f"run {run_id} has no per-item artifact {path!r} ({err}); "
                                    "evaluate it again to record one") from err
        # Predictions are text ("NA", "none" and "" included), so no value is read as missing ...
        frame = pd.read_csv(local, dtype={"item_id": str, "cluster_id": str, "prediction": str},
                            keep_default_na=False)
    # ... except the empty cells of score columns (an item a metric does not score), which are NaN.
    for column in frame.columns.difference(["item_id", "cluster_id", "prediction"]):
        if not pd.api.types.is_numeric_dtype(frame[column]):
            try:
                frame[column] = pd.to_numeric(frame[column].replace("", float("nan")))
            except (TypeError, ValueError):
                pass  # a text column (answer type, reference) stays text
    return frame
