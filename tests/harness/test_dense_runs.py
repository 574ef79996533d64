"""One tiny CPU training iteration + evaluation per config family through mmengine's Runner, with the
MLflow lineage of our runs; multi-scale testing from the trained checkpoint; failures end FAILED; the
table7/table8 measurement loops on a random-init BEiT-3 (slow: each Runner takes 10-30 s here)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

pytest.importorskip("mmdet")
pytest.importorskip("mmseg")

from mlflow.tracking import MlflowClient  # noqa: E402

import backbones  # noqa: E402
from harness import dense, tracking  # noqa: E402
from harness.dense_items import aggregates_from_items  # noqa: E402
from harness.per_item import load_per_item  # noqa: E402
from harness.profiles import get_profile  # noqa: E402
from harness.tables.render import to_markdown  # noqa: E402
from harness.world import build_world  # noqa: E402

pytestmark = pytest.mark.slow
TINY = dict(model_name="beit3_tiny_patch16_224", model_overrides=dict(embed_dim=32, depth=2, num_heads=2))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world") / "smoke"
    build_world(root, profile="smoke", seed=0)
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking.check_tracking_uri(uri)
    return uri


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, store):
    """A random-weights BEiT-3 (released layout) saved as {'model': sd}, with a 'pretraining' run."""
    torch.manual_seed(0)
    model = backbones.create_model("beit3_tiny_patch16_224", **TINY["model_overrides"])
    path = tmp_path_factory.mktemp("ckpt") / "beit3.pt"
    torch.save({"model": model.state_dict()}, path)
    with tracking.start_run("t-pretrain", "pretrain", {"model": "tiny", "seed": 0}, tracking_uri=store) as run:
        pass
    return path, run.run_id


def _run(config, tmp_path, world, store, pretrained, dataset, **kwargs):
    path, parent = pretrained
    return dense.run_dense(config, work_dir=tmp_path / "work", run_name=f"test/{config}", profile="smoke", seed=0,
                           checkpoint=path, data_root=world / dataset, max_iters=1, batch_size=2,
                           parent_run_id=parent, tracking_uri=store, **TINY, **kwargs)


def _check_lineage(store, result, parent_run_id):
    run = MlflowClient(store).get_run(result.run_id)
    tags = run.data.tags
    assert run.info.status == "FINISHED"
    assert tags["config_hash"] == result.config_hash and tags["parent_run_id"] == parent_run_id
    assert tags["parent_config_hash"] == MlflowClient(store).get_run(parent_run_id).data.tags["config_hash"]
    assert tags["profile"] == "smoke" and tags["seed"] == "0" and tags["git_commit"] and tags["versions.torch"]
    assert {"model.backbone.type", "model.module.backbone.type"} & set(run.data.params)  # TTA wraps the model
    return run


@pytest.mark.parametrize("config", ["det/beit3_mask-rcnn_mini", "det/beit3_cascade-mask-rcnn_mini"])
def test_detection_trains_and_evaluates_with_coco_metric(config, tmp_path, world, store, pretrained):
    result = _run(config, tmp_path, world, store, pretrained, "coco")
    assert {"coco/bbox_mAP", "coco/segm_mAP"} <= set(result.metrics)
    assert all(-1.0 <= v <= 1.0 for k, v in result.metrics.items() if k.startswith("coco/"))
    assert result.checkpoint is not None and result.checkpoint.name == "iter_1.pth"
    run = _check_lineage(store, result, pretrained[1])
    assert "coco/bbox_mAP" in run.data.metrics and "loss" in run.data.metrics


def test_upernet_trains_then_tests_multi_scale_from_its_checkpoint(tmp_path, world, store, pretrained):
    trained = _run("seg/beit3_upernet_mini", tmp_path / "train", world, store, pretrained, "ade")
    assert 0.0 <= trained.metrics["mIoU"] <= 100.0
    _check_lineage(store, trained, pretrained[1])
    # Per-image counts in the run: the aggregates are their sums, equal to mmseg's.
    items = load_per_item(trained.run_id, "val", tracking_uri=store)
    assert len(items) == len(list((world / "ade" / "images" / "validation").iterdir()))
    assert items["item_id"].is_unique and items["pixel_accuracy"].between(0, 1).all()
    recomputed = aggregates_from_items(items)
    assert recomputed == pytest.approx({k: trained.metrics[k] for k in ("aAcc", "mIoU")}, abs=1e-4)  # MLflow: float32
    # load_from goes through torch.load(weights_only=True): the compat safe globals make it work.
    tested = dense.run_dense("seg/beit3_upernet_mini", work_dir=tmp_path / "tta", run_name="test/tta",
                             profile="smoke", mode="test", load_from=trained.checkpoint, tta=True,
                             data_root=world / "ade", parent_run_id=trained.run_id, tracking_uri=store, **TINY)
    assert 0.0 <= tested.metrics["mIoU"] <= 100.0
    run = _check_lineage(store, tested, trained.run_id)
    assert run.data.tags["tta"] == "true" and "test/mIoU" in run.data.metrics
    # The same config again is the finished run, not a new one (found by its config hash).
    again = _run("seg/beit3_upernet_mini", tmp_path / "train", world, store, pretrained, "ade")
    assert (again.run_id, again.metrics, again.checkpoint) == (trained.run_id, trained.metrics, trained.checkpoint)


def test_mask2former_trains_and_evaluates_on_cpu(tmp_path, world, store, pretrained):
    result = _run("seg/beit3_mask2former_mini", tmp_path, world, store, pretrained, "ade")
    assert 0.0 <= result.metrics["mIoU"] <= 100.0
    _check_lineage(store, result, pretrained[1])


def test_a_wrong_checkpoint_fails_the_run_in_mlflow(tmp_path, world, store):
    wrong = tmp_path / "wide.pt"
    torch.save({"model": backbones.create_model("beit3_tiny_patch16_224", embed_dim=64, depth=2,
                                                num_heads=2).state_dict()}, wrong)
    with pytest.raises(backbones.CheckpointError, match="shape mismatch"):
        dense.run_dense("seg/beit3_upernet_mini", work_dir=tmp_path / "w", run_name="test/wrong", profile="smoke",
                        checkpoint=wrong, data_root=world / "ade", max_iters=1, tracking_uri=store, **TINY)
    runs = MlflowClient(store).search_runs(
        [MlflowClient(store).get_experiment_by_name(dense.DENSE_EXPERIMENT).experiment_id],
        filter_string="attributes.run_name = 'test/wrong'")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags["error"].startswith("CheckpointError")
    import mlflow

    assert mlflow.active_run() is None


@pytest.mark.parametrize("table, head", [("table7", "mask_rcnn"), ("table8", "upernet")])
def test_table_measurement_on_a_random_init_source(table, head, tmp_path, world, store, monkeypatch):
    """The tables' loop (checkpoint -> Runner(s) -> rows in points) for one head, one source."""
    import importlib

    module = importlib.import_module(f"harness.tables.{table}")
    monkeypatch.setattr(module, "HEADS", {head: module.HEADS[head]})
    monkeypatch.setenv("BEIT3_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr(dense, "world_data_root", lambda profile, dataset: world / dataset)
    source = dense.random_init_source(get_profile("smoke"))  # writes under $BEIT3_RUNS_DIR
    other_path = dense.random_init_checkpoint(source.model_name, seed=1)
    other = dataclasses.replace(source, name="vlmo", identity={**source.identity, "seed": 1},
                                resolve=lambda: dense.Checkpoint(other_path))
    result = module.measure(table, get_profile("smoke"), 1, [source, other], tracking_uri=store)
    frame = result.frame
    assert set(frame["row"]) == {m for m in module.METRICS} | {f"vlmo.{m}" for m in module.METRICS}
    assert set(frame["group"]) == {head}
    assert frame["value"].between(0.0, 100.0).all() and set(frame["seed"]) == {0}
    run_ids = [v for k, v in result.annotations.items() if k.endswith("run")]
    assert len(run_ids) == 2 * (1 if table == "table7" else 2)
    for run_id in run_ids:
        assert MlflowClient(store).get_run(run_id).data.tags["table"] == table
    # The paired differences come from each run's kept per-image results, recomputed: at unit weights
    # they give back the metric the run logged (mmdet rounds AP to 0.1 points, mmseg mIoU to 0.01).
    differences = result.differences
    assert len(differences) == len(module.METRICS) and set(differences["recipe_a"]) == {"none"}
    assert (differences["note"] == "").all() and (differences["seeds"] == 1).all()
    for row in differences.itertuples():
        logged = frame.loc[(frame["metric"] == row.metric) & (frame["recipe"] == "none"), "value"].item()
        assert float(row.values_a) == pytest.approx(logged, abs=0.051)
        assert row.ci_low <= row.estimate <= row.ci_high and row.items == row.clusters == 4
    markdown = to_markdown(getattr(module, table.capitalize())(name=table, title="t").render(result, {}))
    assert "Paired differences between recipes" in markdown and "no pretraining − VLMo staged pretraining" in markdown
