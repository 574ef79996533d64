"""The experiment graph: pretraining recipes scaled by profile, lineage, reuse, resume; table3."""
import dataclasses
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import tasks
from harness.config import train_config_hash
from harness.experiments import ensure_recipe, ensure_run, recipe_configs
from harness.profiles import get_profile


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("BEIT3_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("BEIT3_DATA_ROOT", str(tmp_path / "data"))
    return uri


@pytest.mark.parametrize("profile", ["smoke", "mini", "paper"])
def test_recipes_are_at_equal_compute(profile, sandbox):
    prof = get_profile(profile)
    if prof.world != "real":
        pass  # the world is only built when a config reads its tokenizer size (smoke/mini)
    mdm = recipe_configs("beit3", prof)
    vlmo = recipe_configs("vlmo", prof)
    assert [c.task for c in mdm] == ["pretrain_mdm"]
    assert [c.trainable for c in vlmo] == ["stage1", "stage2", "stage3"]
    assert [c.forward_kwargs for c in vlmo] == [{"stage": 1}, {"stage": 2}, {"stage": 3}]
    assert [c.data["stage"] for c in vlmo] == [1, 2, 3]
    assert {c.model for c in mdm + vlmo} == {mdm[0].model}
    if profile != "paper":  # profiles scale both recipes alike (batch, data); VLMo's steps match MDM's FLOPs
        assert mdm[0].max_steps == prof.pretrain["max_steps"]
        assert {c.data["batch_size"] for c in mdm + vlmo} == {prof.pretrain["data"]["batch_size"]}
        assert all(c.model_overrides["vocab_size"] > 0 for c in mdm + vlmo)
    else:  # the paper's own values (Table 11)
        cfg = mdm[0]
        assert (cfg.lr, cfg.betas, cfg.eps, cfg.weight_decay, cfg.clip_grad, cfg.warmup_steps, cfg.max_steps) == (
            1e-3, (0.9, 0.98), 1e-6, 0.05, 3.0, 10_000, 1_000_000)
        assert cfg.model_overrides["init"] == "beit" and cfg.model_overrides["drop_path_rate"] == 0.1
        assert (cfg.data["text_mask_prob"], cfg.data["pair_mask_prob"], cfg.data["image_mask_ratio"]) == (0.15, 0.5, 0.4)


@pytest.mark.slow
def test_staged_lineage_reuse_and_rerun(sandbox):
    smoke = get_profile("smoke")
    records = ensure_recipe("vlmo", smoke)
    assert [r.status for r in records] == ["ran", "ran", "ran"]
    client = MlflowClient(sandbox)
    for parent, child in zip(records, records[1:]):
        tags = client.get_run(child.run_id).data.tags
        assert tags["parent_run_id"] == parent.run_id
        assert tags["parent_config_hash"] == parent.config_hash
        assert client.get_run(child.run_id).data.params["parent_config_hash"] == parent.config_hash
    for record in records:
        run = client.get_run(record.run_id)
        assert run.info.status == "FINISHED"
        assert {"git_commit", "config_hash", "profile", "seed"} <= set(run.data.tags)
        assert Path(record.checkpoint).is_file()
    again = ensure_recipe("vlmo", smoke)
    assert [r.status for r in again] == ["reused"] * 3
    assert [r.run_id for r in again] == [r.run_id for r in records]
    Path(records[2].checkpoint).unlink()  # a finished run whose weights are gone is run again
    third = ensure_recipe("vlmo", smoke)
    assert [r.status for r in third] == ["reused", "reused", "resumed"]


@pytest.mark.slow
def test_an_interrupted_run_ends_failed_and_resumes(sandbox, monkeypatch):
    cfg = dataclasses.replace(recipe_configs("beit3", get_profile("smoke"))[0], ckpt_interval=1)
    real_build = tasks.build_data

    def failing_build(*args, **kwargs):
        data = real_build(*args, **kwargs)
        original = data.next_batch

        def next_batch():
            if data.state_dict()["step"] == 2:
                raise RuntimeError("simulated crash")
            return original()

        data.next_batch = next_batch
        return data

    monkeypatch.setattr(tasks, "build_data", failing_build)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ensure_run(cfg)
    client = MlflowClient(sandbox)
    failed = client.search_runs([client.get_experiment_by_name(cfg.experiment).experiment_id])
    assert [r.info.status for r in failed] == ["FAILED"]
    assert failed[0].data.metrics  # what it logged is kept
    monkeypatch.setattr(tasks, "build_data", real_build)
    record = ensure_run(cfg)
    assert record.status == "resumed"
    assert client.get_run(record.run_id).data.tags["resumed_from_step"] == "2"
    assert record.config_hash == train_config_hash(dataclasses.replace(cfg))


@pytest.mark.slow
def test_table3_on_smoke_through_the_cli(sandbox, tmp_path):
    from harness.cli import main

    assert main(["run", "table3", "--profile", "smoke", "--tracking-uri", sandbox,
                 "--out", str(tmp_path / "reports"), "--results-dir", str(tmp_path / "results")]) == 0
    text = (tmp_path / "reports" / "table3.md").read_text()
    assert "21M pairs" in text and "14M images" in text and "160GB" in text
    assert "BEiT-3 masked data modeling" in text and "VLMo staged" in text
    assert text.count("(ran)") == 4  # 1 MDM run + 3 VLMo stages
    assert main(["run", "table3", "--profile", "smoke", "--tracking-uri", sandbox,
                 "--out", str(tmp_path / "reports"), "--results-dir", str(tmp_path / "results")]) == 0
    assert (tmp_path / "reports" / "table3.md").read_text().count("(reused)") == 4


@pytest.mark.slow
def test_nproc_trains_each_run_under_torchrun(sandbox, tmp_path):
    """`--nproc 2`: the pretraining run is two gloo ranks launched by torchrun, recorded once."""
    from mlflow.tracking import MlflowClient

    from harness.cli import main

    assert main(["run", "table3", "--profile", "smoke", "--recipes", "beit3", "--nproc", "2",
                 "--tracking-uri", sandbox, "--out", str(tmp_path / "reports"),
                 "--results-dir", str(tmp_path / "results")]) == 0
    client = MlflowClient(sandbox)
    experiment = client.get_experiment_by_name("beit3-pretrain")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["world_size"] == "2"
    assert "(ran)" in (tmp_path / "reports" / "table3.md").read_text()
