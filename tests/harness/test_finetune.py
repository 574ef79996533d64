"""Finetuning experiments: official recipes scaled by profile, lineage to pretraining, evaluation; table4."""
import re

import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.config import train_config_hash
from harness.experiments import recipe_configs
from harness.experiments import RunRecord
from harness.finetune import (
    ensure_finetune,
    evaluate_run,
    finetune_config,
    itc_config,
    official_recipe,
    unevaluated_splits,
    zero_shot_retrieval,
)
from harness.per_item import load_per_item
from harness.profiles import get_profile
from harness.tables.retrieval import RECALLS
from harness.world.oracle import world_retrieval_oracle as oracle_recalls


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("BEIT3_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("BEIT3_DATA_ROOT", str(tmp_path / "data"))
    return uri


@pytest.mark.parametrize("task", ["vqav2", "nlvr2", "captioning"])
def test_finetune_config_takes_the_official_recipe_and_the_recipes_architecture(task, sandbox):
    smoke = get_profile("smoke")
    official = official_recipe(task)
    cfg = finetune_config(task, "vlmo", smoke)
    assert cfg.task == task and cfg.experiment == "beit3-finetune"
    assert cfg.layer_decay == official.get("layer_decay", 1.0)
    assert cfg.weight_decay == official["weight_decay"]
    assert cfg.model_overrides["drop_path_rate"] == official["drop_path"]
    assert cfg.model_overrides["layout"] == "paper"  # VLMo's architecture, VL-FFN included
    assert cfg.lr == smoke.finetune["common"]["lr"]  # scaled by the profile
    assert "mlm_head.*" in cfg.init_drop and "itc_*" in cfg.init_drop
    assert cfg.parent_config_hash  # planned: the hash of VLMo's last stage
    assert finetune_config(task, "none", smoke).init_drop == []
    assert finetune_config(task, "none", smoke).parent_config_hash == ""
    if task == "vqav2":
        assert cfg.head_lr_scale == 20.0


def test_unknown_recipe(sandbox):
    with pytest.raises(KeyError, match="unknown recipe 'clip'"):
        finetune_config("nlvr2", "clip", get_profile("smoke"))


@pytest.mark.parametrize("task, variant, expected", [
    ("vqav2", None, dict(img_size=756, lr=1e-5, epochs=10.0, warmup_epochs=1.0, global_batch_size=128,
                         head_lr_scale=20.0, num_classes=3129, drop_path_rate=0.4)),
    ("nlvr2", None, dict(img_size=224, lr=1e-3, epochs=20.0, warmup_epochs=5.0, global_batch_size=256,
                         layer_decay=0.8)),
    ("retrieval", {"dataset": "flickr30k"}, dict(img_size=420, lr=1e-5, epochs=20.0, warmup_epochs=5.0,
                                                 global_batch_size=3072, layer_decay=0.95)),
    ("captioning", None, dict(img_size=392, lr=8e-6, epochs=0.0, max_steps=16000, warmup_steps=1600,
                              global_batch_size=256)),
])
def test_paper_profile_takes_the_papers_giant_recipe(sandbox, task, variant, expected):
    """The paper profile pretrains giant; each finetune follows the paper's Tables 12-14 unscaled."""
    cfg = finetune_config(task, "beit3", get_profile("paper"), variant=variant)
    assert cfg.model == "beit3_giant_patch14_224"
    got = {**vars(cfg), **cfg.model_overrides}
    assert {k: got[k] for k in expected} == expected
    assert cfg.data["root"] == {"flickr30k": "data/flickr30k"}.get((variant or {}).get("dataset"), cfg.data["root"])
    assert cfg.precision == "bf16"


def test_official_recipe_by_size():
    assert official_recipe("vqav2", size="large")["lr"] == 2e-5
    assert official_recipe("vqav2", size="tiny") == official_recipe("vqav2", size="base")
    giant = official_recipe("captioning", size="giant")
    assert giant["steps"] == 16000 and "epochs" not in giant  # the paper gives steps, not epochs
    assert giant["num_max_bpe_tokens"] == 32  # the rest from the released recipe


def test_evaluate_run_logs_the_metrics_and_each_splits_per_item_frame(sandbox, tmp_path, monkeypatch):
    import tasks

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # seconds faster than creating a sqlite store
    cfg = finetune_config("nlvr2", "none", get_profile("smoke"))
    model = tasks.build_model(cfg.task, cfg.model, **cfg.model_overrides)
    checkpoint = tmp_path / "model.pt"
    torch.save(model.state_dict(), checkpoint)
    uri = (tmp_path / "mlruns").as_uri()
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("evaluate")).info.run_id
    # Evaluated before per-item results existed: metrics without frames are scored again.
    record = RunRecord(cfg.run_name, run_id, "hash", str(checkpoint), "ran", metrics={"eval.dev.accuracy": 50.0})
    assert unevaluated_splits(record, ("dev", "test1"), "eval", uri) == ["dev", "test1"]
    metrics = evaluate_run(cfg, record, ["dev", "test1"], uri)
    assert unevaluated_splits(RunRecord(**{**vars(record), "metrics": metrics}), ("dev", "test1"), "eval", uri) == []
    assert set(metrics) == {f"eval.{s}.{k}" for s in ("dev", "test1")
                            for k in ("accuracy", "pairwise_accuracy", "num_examples")}
    assert client.get_run(run_id).data.metrics == metrics
    for split in ("dev", "test1"):
        items = load_per_item(run_id, split, tracking_uri=uri)
        assert len(items) == metrics[f"eval.{split}.num_examples"]
        assert items["accuracy"].mean() == pytest.approx(metrics[f"eval.{split}.accuracy"])
    zero = evaluate_run(cfg, record, ["dev"], uri, prefix="zeroshot.world")
    assert set(zero) == {f"zeroshot.world.dev.{k}" for k in ("accuracy", "pairwise_accuracy", "num_examples")}
    assert len(load_per_item(run_id, "dev", tracking_uri=uri, prefix="zeroshot.world")) == zero["zeroshot.world.dev.num_examples"]


@pytest.mark.slow
def test_finetune_descends_from_pretraining_and_logs_the_official_metric(sandbox):
    smoke = get_profile("smoke")
    result = ensure_finetune("nlvr2", "beit3", smoke)
    assert result.run.status == "ran"
    assert set(result.metrics) >= {"eval.dev.accuracy", "eval.test1.accuracy"}
    client = MlflowClient(sandbox)
    run = client.get_run(result.run.run_id)
    assert run.data.tags["parent_run_id"] == result.parents[-1].run_id
    assert run.data.tags["parent_config_hash"] == result.parents[-1].config_hash
    assert run.data.metrics["eval.dev.accuracy"] == result.metrics["eval.dev.accuracy"]
    items = load_per_item(result.run.run_id, "test1", tracking_uri=sandbox)
    assert len(items) == result.metrics["eval.test1.num_examples"]
    again = ensure_finetune("nlvr2", "beit3", smoke)
    assert again.run.status == "reused" and again.metrics == result.metrics


@pytest.mark.slow
def test_table4_on_smoke(sandbox, tmp_path):
    from harness.cli import main

    assert main(["run", "table4", "--profile", "smoke", "--tracking-uri", sandbox,
                 "--out", str(tmp_path / "reports"), "--results-dir", str(tmp_path / "results")]) == 0
    text = re.sub(r" +", " ", (tmp_path / "reports" / "table4.md").read_text())  # pandas pads the columns
    assert "BEiT-3 (paper) | 84.19 | 91.51 | 92.58 | – | 44.10 | 32.40 | 147.60 | 25.40" in text  # no paper pairwise
    for title in ("ours, BEiT-3 MDM pretraining", "ours, VLMo staged pretraining", "ours, no pretraining",
                  "answer prior only"):
        assert title in text
    assert text.count("(ran)") == 9
    assert len(recipe_configs("vlmo", get_profile("smoke"))) == 3
    # Every finetune against its image-shuffled control, and the table's cells marked where it is not beaten.
    control = text.split("## Image-shuffled control")[1]
    rows = re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|.*\| (image-grounded|not image-grounded) \|$", control, re.M)
    assert {recipe for _, recipe, _ in rows} == {"BEiT-3 MDM pretraining", "VLMo staged pretraining", "no pretraining"}
    assert {"val vqa_accuracy", "dev accuracy", "test1 accuracy", "test CIDEr"} <= {label for label, _, _ in rows}
    shown = {"val vqa_accuracy", "dev accuracy", "test1 accuracy", "dev pairwise_accuracy", "test BLEU-4", "test METEOR",
             "test CIDEr"}
    expected = sum(verdict == "not image-grounded" and label in shown for label, _, verdict in rows)
    assert text.split("## Paired differences")[0].count("not image-grounded") == expected
    # ... and against the blind baseline fitted on train, logged in every VQA, NLVR2 and captioning run.
    blind = text.split("## Text-only baseline")[1]
    rows = re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|.*\| (above text-only|not above text-only) \|$", blind, re.M)
    assert {label for label, _, _ in rows} >= {"val vqa_accuracy", "dev accuracy", "test1 accuracy",
                                                "dev pairwise_accuracy", "test CIDEr"}
    assert len({recipe for _, recipe, _ in rows}) == 3


def test_a_data_variant_makes_another_experiment(sandbox):
    smoke = get_profile("smoke")
    coco = finetune_config("retrieval", "beit3", smoke, variant={"dataset": "coco"})
    flickr = finetune_config("retrieval", "beit3", smoke, variant={"dataset": "flickr30k"})
    assert (coco.data["dataset"], flickr.data["dataset"]) == ("coco", "flickr30k")
    assert coco.run_name == "retrieval-coco-beit3-smoke-seed0"
    assert coco.semantic_dict() != flickr.semantic_dict()
    assert flickr.model_overrides["drop_path_rate"] == official_recipe("retrieval", {"dataset": "flickr30k"})["drop_path"]


@pytest.mark.slow
def test_table10_on_smoke(sandbox, tmp_path):
    from harness.cli import main

    assert main(["run", "table10", "--profile", "smoke", "--tracking-uri", sandbox,
                 "--out", str(tmp_path / "reports"), "--results-dir", str(tmp_path / "results")]) == 0
    text = re.sub(r" +", " ", (tmp_path / "reports" / "table10.md").read_text())  # pandas pads the columns
    assert "| BEiT-3 finetuned directly, Table 10 (paper) | 82.7 | 96.0 | 98.2 | 65.1 |" in text
    assert text.count("(ran)") == 6  # 3 recipes x (COCO, Flickr30K); the pretraining runs are separate
    assert "chance (the world's baseline)" in text
    # the ceiling from the scenes' ground truth: on smoke every COCO test image is told apart by its captions
    oracle = oracle_recalls("coco", "smoke", 0) | {f"f{k}": v for k, v in oracle_recalls("flickr30k", "smoke", 0).items()}
    cells = " | ".join(f"{oracle[key]:.1f}" for key in (*RECALLS, *[f"f{r}" for r in RECALLS]))
    assert f"| oracle ceiling (the scenes' ground truth) | {cells} | harness.world.oracle |" in text


def test_imagenet_modes_and_the_head_size_from_the_class_folders(sandbox):
    smoke = get_profile("smoke")
    linear = finetune_config("imagenet", "vlmo", smoke, model_variant={"classifier": "linear"})
    paper_mode = finetune_config("imagenet", "vlmo", smoke, model_variant={"classifier": "retrieval"})
    assert linear.model_overrides["num_classes"] == 18  # the smoke world's class folders
    assert "num_classes" not in paper_mode.model_overrides
    assert paper_mode.run_name == "imagenet-retrieval-vlmo-smoke-seed0"
    assert linear.layer_decay == official_recipe("imagenet")["layer_decay"]


@pytest.mark.slow
def test_table9_on_smoke(sandbox, tmp_path):
    from harness.cli import main

    assert main(["run", "table9", "--profile", "smoke", "--tracking-uri", sandbox,
                 "--out", str(tmp_path / "reports"), "--results-dir", str(tmp_path / "results")]) == 0
    text = re.sub(r" +", " ", (tmp_path / "reports" / "table9.md").read_text())  # pandas pads the columns
    assert "| BEiT-3 (IN-21K, 336²) (paper) | | 89.6 | – | |" in text
    assert text.count("| linear head |") == 3 and text.count("| class-name retrieval |") == 3


def test_itc_stage_config_and_the_finetune_after_it(sandbox):
    smoke = get_profile("smoke")
    itc = itc_config("vlmo", smoke)
    assert itc.data["source"] == "pretraining_pairs" and itc.layer_decay == 0.95  # paper App. A
    assert itc.parent_config_hash == train_config_hash(recipe_configs("vlmo", smoke)[-1])
    after = finetune_config("retrieval", "vlmo", smoke, variant={"dataset": "coco"}, after=itc)
    assert after.init_drop == []  # the ITC model is a retrieval model: it loads whole
    assert after.run_name == "retrieval-coco-vlmo-after-itc-smoke-seed0"
    with pytest.raises(ValueError, match="continue only from a nlvr2 run"):
        finetune_config("nlvr2", "vlmo", smoke, after=itc)


@pytest.mark.slow
def test_pretraining_itc_retrieval_lineage_and_zero_shot(sandbox):
    smoke = get_profile("smoke")
    result = ensure_finetune("retrieval", "beit3", smoke, variant={"dataset": "flickr30k"}, after_itc=True)
    pretrain, itc = result.parents
    client = MlflowClient(sandbox)
    assert client.get_run(itc.run_id).data.tags["parent_run_id"] == pretrain.run_id
    assert client.get_run(result.run.run_id).data.tags["parent_run_id"] == itc.run_id
    zero = zero_shot_retrieval("beit3", "flickr30k", smoke)
    assert zero.run.run_id == itc.run_id and zero.run.status == "reused"
    assert {"zeroshot.flickr30k.test.tr_r1", "zeroshot.flickr30k.test.ir_r1"} <= set(zero.metrics)
    assert client.get_run(itc.run_id).data.metrics["zeroshot.flickr30k.test.ir_r1"] == zero.metrics["zeroshot.flickr30k.test.ir_r1"]


def test_per_item_round_trip_keeps_text_predictions_and_unscored_items(tmp_path, monkeypatch):
    import pandas as pd

    from harness.per_item import log_per_item

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("items")).info.run_id
    items = pd.DataFrame({"item_id": ["1", "2", "3"], "cluster_id": ["a", "a", "b"], "prediction": ["NA", "", "none"],
                          "CIDEr": [0.5, float("nan"), 1.0], "answer_type": ["yes/no", "number", "other"]})
    log_per_item(run_id, "test", items, tracking_uri=uri)
    loaded = load_per_item(run_id, "test", tracking_uri=uri)
    assert loaded["prediction"].tolist() == ["NA", "", "none"]
    assert loaded["CIDEr"].dtype == float and loaded["CIDEr"].isna().tolist() == [False, True, False]
    assert loaded["CIDEr"].sum() == pytest.approx(1.5) and loaded["answer_type"].tolist() == ["yes/no", "number", "other"]
