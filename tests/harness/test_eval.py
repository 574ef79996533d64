"""`harness eval` of checkpoints in the official layout, the released table, finetuning from released weights.

The checkpoints are random-weight task models with the official key names (checked against the
state-dict dumps in tests/assets) at a tiny size; the data is the smoke benchmark world.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

import tasks
from backbones import CheckpointError
from backbones.inspect_checkpoint import inspect_backbone, name_mismatches, parse_release_name
from harness import cli
from harness.evaluate import EVAL_EXPERIMENT, EVAL_TASKS
from tasks.checkpoints import build_model_for_checkpoint, check_task

ASSETS = Path(__file__).resolve().parents[1] / "assets"
# Official key names at a tiny size: 64-dim heads as the released models, one head.
TINY = dict(embed_dim=64, depth=2, num_heads=1, ffn_dim=128, img_size=32, patch_size=16)
DUMP_SECTIONS = {
    "vqav2": "beit3_base_patch16_480_vqav2",
    "nlvr2": "beit3_base_patch16_224_nlvr2",
    "captioning": "beit3_base_patch16_480_captioning",
    "retrieval": "beit3_base_patch16_384_retrieval",
    "imagenet": "beit3_base_patch16_224_imageclassification",
}


def official_dump() -> dict[str, set[str]]:
    """Key names per section of the official dump: the backbone's layer keys and each task's other keys."""
    sections: dict[str, set[str]] = {"backbone": set()}
    current = "backbone"
    for line in (ASSETS / "beit3-base-state-dict-keys.txt").read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].split()[0]
            sections[current] = set()
        elif line and not line.startswith("#"):
            sections[current].add(line.split()[0])
    return sections


def tiny_model(task: str, **options):
    return tasks.build_model(task, "beit3_base_patch16_224", **TINY, **options)


def write_checkpoint(path: Path, task: str, **options) -> Path:
    torch.save({"model": tiny_model(task, **options).state_dict()}, path)
    return path


@pytest.mark.parametrize("task", list(DUMP_SECTIONS))
def test_tiny_checkpoints_keep_the_official_key_names(task):
    dump = official_dump()
    keys = set(tiny_model(task, **({"num_classes": 7} if task in ("vqav2", "imagenet") else {})).state_dict())
    layer0 = {k for k in keys if ".layers.0." in k}
    assert layer0 == {k for k in dump["backbone"] if ".layers.0." in k}
    assert {k for k in keys if ".layers." not in k} == dump[DUMP_SECTIONS[task]]


def test_the_tensors_decide_size_resolution_and_head():
    state = tiny_model("vqav2", num_classes=11).state_dict()
    arch = inspect_backbone(state)
    assert (arch.embed_dim, arch.depth, arch.ffn_dim, arch.patch_size, arch.img_size) == (64, 2, 128, 16, 32)
    assert (arch.layout, arch.normalize_output, arch.vocab_size) == ("released", False, 64010)
    loaded = build_model_for_checkpoint(state, "vqav2")
    assert loaded.build_options == {"num_classes": 11} and loaded.model_overrides["num_heads"] == 1
    assert torch.equal(loaded.model.state_dict()["head.3.bias"], state["head.3.bias"])
    # The file name only cross-checks: a tiny model under a released name is reported, not trusted.
    assert parse_release_name("beit3_large_patch16_384_f30k_retrieval.pth")["suffix"] == "f30k_retrieval"
    assert name_mismatches("beit3_base_patch16_480_vqa.pth", arch)
    assert not name_mismatches("model.pt", arch)


def test_another_tasks_checkpoint_is_one_error_naming_the_keys():
    with pytest.raises(CheckpointError, match=r"vqav2 checkpoint \(keys pooler\.dense\.weight, head\.3\.weight\)"):
        check_task(tiny_model("vqav2", num_classes=5).state_dict(), "nlvr2")
    encoder = {k: v for k, v in tiny_model("nlvr2").state_dict().items() if k.startswith("beit3.")}
    pretrained = {**encoder, "mlm_head.weight": torch.zeros(1), "mim_head.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="pretraining checkpoint"):
        check_task(pretrained, "captioning")
    with pytest.raises(CheckpointError, match="no task head"):
        check_task(encoder, "captioning")
    with pytest.raises(CheckpointError, match="no BEiT-3 checkpoint"):
        check_task({"foo": torch.zeros(1)}, "imagenet")


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from harness.world import ensure_world

    return ensure_world("smoke", root=tmp_path_factory.mktemp("data"))


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def head_options(task: str, world: Path) -> dict:
    if task == "vqav2":
        return {"num_classes": len(tasks.task_module("vqav2").answer_vocab({"root": str(world)}))}
    if task == "imagenet":
        return {"num_classes": len([p for p in (world / "imagenet" / "train").iterdir() if p.is_dir()])}
    if task == "captioning":  # a random model generates any id of its vocabulary: keep it the world tokenizer's
        from backbones.tokenizers import TextTokenizer

        spm = json.loads((world / "world.json").read_text())["datasets"]["spm"]["model"]
        return {"vocab_size": TextTokenizer(world / spm).vocab_size}
    return {}


def eval_runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EVAL_EXPERIMENT)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def harness(*args: str) -> int:
    return cli.main([str(a) for a in args])


# (eval task, split, a metric of the task in metrics.json, leaderboard file)
CASES = [
    ("vqav2", "val", "vqa_accuracy", "submit_vqav2_val.json"),
    ("vqav2", "test-dev", None, "submit_vqav2_test-dev.json"),
    ("nlvr2", "test1", "accuracy", "nlvr2_test1_predictions.csv"),
    ("captioning", "test", "CIDEr", "coco_captioning_test_results.json"),
    ("coco_retrieval", "test", "ir_r1", None),
    ("flickr30k_retrieval", "test", "tr_r1", None),
    ("imagenet", "test", "acc1", None),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,split,metric,leaderboard", CASES)
def test_harness_eval_of_an_official_layout_checkpoint(name, split, metric, leaderboard, world, store, tmp_path, capsys):
    task = EVAL_TASKS[name].task
    checkpoint = write_checkpoint(tmp_path / f"tiny_{name}.pth", task, **head_options(task, world))
    limit = 3
    assert harness("eval", name, "--checkpoint", checkpoint, "--data", world, "--split", split, "--limit", limit,
                   "--out", tmp_path / "eval", "--batch-size", 2) == 0
    out = capsys.readouterr().out
    assert f"PARTIAL: only the first {limit} items" in out

    folder = tmp_path / "eval" / f"tiny_{name}-{name}-{split}-limit{limit}"
    metrics = json.loads((folder / "metrics.json").read_text())
    if metric is not None:
        assert metric in metrics
    (run,) = eval_runs(store)
    tags = run.data.tags
    assert run.info.status == "FINISHED"
    assert tags["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert (tags["checkpoint_file"], tags["task"], tags["split"]) == (checkpoint.name, task, split)
    assert (tags["data_root"], tags["limit"], tags["partial"]) == (str(world.resolve()), str(limit), "true")
    if metric is not None:
        assert f"eval.{split}.{metric}" in run.data.metrics

    from harness.per_item import load_per_item

    items = load_per_item(run.info.run_id, split, tracking_uri=store)
    assert {"item_id", "cluster_id", "prediction"} <= set(items.columns)
    queries = items[items["item_id"].str.startswith("i2t:")] if task == "retrieval" else items
    assert 0 < len(queries) <= limit  # a split smaller than the limit is scored whole
    if leaderboard is None:
        return
    path = folder / leaderboard
    if name == "vqav2":
        rows = json.loads(path.read_text())
        assert rows and [sorted(r) for r in rows] == [["answer", "question_id"]] * len(items)
        assert all(isinstance(r["question_id"], int) and isinstance(r["answer"], str) for r in rows)
    elif name == "captioning":
        rows = json.loads(path.read_text())
        assert rows and [sorted(r) for r in rows] == [["caption", "image_id"]] * len(items)
        assert all(isinstance(r["image_id"], int) and isinstance(r["caption"], str) for r in rows)
    else:
        rows = list(csv.reader(path.read_text().splitlines()))
        assert len(rows) == len(items)
        assert all(re.fullmatch(r"test1-\d+-\d+-\d+", i) and p in ("True", "False") for i, p in rows)


@pytest.mark.slow
def test_bad_input_is_one_line_and_records_nothing_finished(world, store, tmp_path, capsys):
    good = write_checkpoint(tmp_path / "nlvr2.pth", "nlvr2")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    no_split = tmp_path / "nlvr2-without-test1"
    no_split.mkdir()
    spm = json.loads((world / "world.json").read_text())["datasets"]["spm"]["model"]
    (no_split / "beit3.spm").write_bytes((world / spm).read_bytes())
    cases = {
        "does not exist": ("nlvr2", tmp_path / "missing.pth", world),
        "cannot be read": ("nlvr2", truncated, world),
        "nlvr2 checkpoint": ("imagenet", good, world),
        "cannot be evaluated from data root": ("nlvr2", good, no_split),
    }
    for message, (name, checkpoint, root) in cases.items():
        assert harness("eval", name, "--checkpoint", checkpoint, "--data", root, "--out", tmp_path / "eval") == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not [r for r in eval_runs(store) if r.info.status == "FINISHED"]


@pytest.mark.slow
def test_a_harness_finetune_export_is_evaluated_with_its_recorded_heads(world, store, tmp_path, monkeypatch, capsys):
    from harness.finetune import ensure_finetune
    from harness.profiles import get_profile

    monkeypatch.setenv("BEIT3_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("BEIT3_DATA_ROOT", str(world.parent))
    result = ensure_finetune("nlvr2", "none", get_profile("smoke"))
    checkpoint = result.run.checkpoint
    assert harness("eval", "nlvr2", "--checkpoint", checkpoint, "--data", world, "--split", "dev",
                   "--out", tmp_path / "eval") == 0
    (run,) = eval_runs(store)
    assert run.data.tags["num_heads_from"] == "training run"
    assert run.data.metrics["eval.dev.accuracy"] == pytest.approx(result.metrics["eval.dev.accuracy"])


@pytest.mark.slow
def test_released_table_measures_present_checkpoints_and_lists_absent_ones(world, store, tmp_path, monkeypatch):
    monkeypatch.setenv("BEIT3_DATA_ROOT", str(world.parent))
    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "weights"
    weights.mkdir()
    write_checkpoint(weights / "beit3_base_patch16_224_nlvr2.pth", "nlvr2")
    for attempt in ("evaluated", "reused"):
        assert harness("run", "released", "--profile", "smoke", "--weights", weights, "--out", tmp_path / "reports",
                       "--results-dir", tmp_path / "results") == 0
        report = (tmp_path / "reports" / "released.md").read_text()
        row = next(line for line in report.splitlines() if line.startswith("| beit3_base_patch16_224_nlvr2.pth"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        published, measured, delta = float(cells[4]), float(cells[5]), float(cells[6])
        assert published == 84.4 and delta == pytest.approx(measured - published, abs=0.01)
        assert f"({attempt})" in cells[7]
        assert ("https://conversationhub.blob.core.windows.net/beit-share-public/beit3/vqa/"
                "beit3_large_patch16_480_vqa.pth") in report
    assert len([r for r in eval_runs(store) if r.info.status == "FINISHED"]) == 1


# ----------------------------------------------------------------------------- from released weights
def test_the_finetune_configs_are_what_the_harness_builds():
    from harness.config import load_train_config
    from harness.released_finetune import SIZES, TASKS, config_path, released_finetune_config

    for name in TASKS:
        for size in SIZES:
            cfg = released_finetune_config(name, size)
            assert load_train_config(config_path(name, size)) == cfg, f"regenerate {config_path(name, size)}"
    vqa = released_finetune_config("vqav2", "large")
    assert (vqa.model, vqa.lr, vqa.model_overrides["img_size"]) == ("beit3_large_patch16_224", 2e-5, 480)
    assert vqa.init_from == "weights/beit3_large_patch16_224.pth" and "mim_head.*" in vqa.init_drop
    assert released_finetune_config("coco_retrieval", "base").init_from == "weights/beit3_base_itc_patch16_224.pth"


@pytest.mark.slow
def test_train_from_an_official_layout_pretrained_checkpoint(world, store, tmp_path, monkeypatch):
    """python -m harness.train with a released finetune config, shrunk to the smoke world: the MLM/MIM
    heads of the pretrained file are dropped and the exported model is evaluated by harness eval."""
    from harness import train
    from harness.released_finetune import config_path

    pretrained = {k: v for k, v in tiny_model("nlvr2").state_dict().items() if not k.startswith("head.")}
    pretrained["mlm_head.weight"] = torch.randn(64010, 64)
    pretrained["mlm_head.bias"] = torch.zeros(64010)
    pretrained["mim_head.weight"] = torch.randn(8192, 64)
    pretrained["mim_head.bias"] = torch.zeros(8192)
    init = tmp_path / "beit3_base_patch16_224.pth"
    torch.save({"model": pretrained}, init)
    out = tmp_path / "run"
    overrides = [f"init_from={init}", f"out_dir={out}", f"data={{'root': '{world}', 'batch_size': 2, 'tokenizer': None}}",
                 "model_overrides={'embed_dim': 64, 'depth': 2, 'num_heads': 1, 'ffn_dim': 128, 'img_size': 32, "
                 "'patch_size': 16, 'drop_path_rate': 0.2}",
                 "max_steps=2", "epochs=0.0", "warmup_steps=1", "global_batch_size=0", "precision='fp32'",
                 "grad_checkpointing=False", "progress=False"]
    assert train.main([str(config_path("nlvr2", "base")), *overrides]) == 0
    assert harness("eval", "nlvr2", "--checkpoint", out / "model.pt", "--data", world, "--limit", 2,
                   "--out", tmp_path / "eval") == 0
