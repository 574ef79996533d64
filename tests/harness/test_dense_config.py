"""harness.dense config adaptation: sizes from a checkpoint's model, data roots, schedules, hashing,
sources, and the table specs' plans/rendering (no Runner: fast)."""
from __future__ import annotations

import re

import pytest

pytest.importorskip("mmdet")
pytest.importorskip("mmseg")

from harness import dense  # noqa: E402
from harness.profiles import get_profile  # noqa: E402
from harness.tables import TableResult, attach_paper, load_paper, measurement  # noqa: E402
from harness.tables.render import to_markdown  # noqa: E402

SMOKE_ARCH = dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, img_size=32)


def _prepare(name, tmp_path, **kwargs):
    return dense.prepare_config(name, work_dir=tmp_path / "work", **kwargs)


def test_det_config_takes_the_checkpoint_models_size(tmp_path):
    cfg = _prepare("det/beit3_cascade-mask-rcnn_mini", tmp_path, model_name="beit3_tiny_patch16_224",
                   model_overrides=dict(SMOKE_ARCH, num_visual_tokens=32, layout="paper"))
    backbone, neck = cfg.model.backbone, cfg.model.neck
    assert (backbone.embed_dim, backbone.depth, backbone.num_heads, backbone.layout) == (32, 2, 2, "paper")
    assert backbone.patch_size == 16  # the simple pyramid keeps stride 16; the checkpoint's 8 is resampled
    assert backbone.out_indices == (1,) and backbone.window_block_indexes == (0,)
    assert neck.backbone_channel == 32 and neck.in_channels == [8, 16, 32, 32]
    base = dense.prepare_config("det/beit3_mask-rcnn_mini", work_dir=tmp_path, model_name="beit3_base_patch16_224")
    assert base.model.backbone.window_block_indexes == (0, 1, 3, 4, 6, 7, 9, 10)  # ViTDet-B's


def test_seg_configs_take_the_checkpoint_models_size(tmp_path):
    cfg = _prepare("seg/beit3_mask2former_mini", tmp_path, model_name="beit3_tiny_patch16_224",
                   model_overrides=SMOKE_ARCH)
    assert cfg.model.backbone.patch_size == 8 and cfg.model.backbone.out_indices == (0, 1, 1, 1)
    assert cfg.model.neck.embed_dim == 32 and cfg.model.decode_head.in_channels == [32] * 4
    up = _prepare("seg/beit3_upernet_paper", tmp_path, model_name="beit3_base_patch16_224")
    assert up.model.backbone.out_indices == (3, 5, 7, 11) and up.model.backbone.layout == "released"
    assert up.model.decode_head.in_channels == [768] * 4 and up.model.auxiliary_head.in_channels == 768
    assert up.model.backbone.patch_size == 16 and up.model.data_preprocessor.test_cfg.size_divisor == 16  # was 14
    assert dense.seg_out_indices(24) == (7, 11, 15, 23) and dense.seg_out_indices(40) == (9, 19, 29, 39)


def test_schedule_data_root_checkpoint_and_cpu_settings(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"")
    (tmp_path / "coco").mkdir()
    cfg = _prepare("det/beit3_mask-rcnn_mini", tmp_path, max_iters=4, batch_size=3, seed=7,
                   checkpoint=ckpt, data_root=tmp_path / "coco")
    assert cfg.train_cfg.max_iters == 4 and cfg.train_cfg.val_interval == 4
    (steps,) = cfg.param_scheduler  # the 4-of-40 warmup -> 0.4 iterations: dropped, not stuck at 0.001
    assert steps.type == "MultiStepLR" and steps.end == 4 and steps.milestones == [4]
    longer = _prepare("det/beit3_mask-rcnn_mini", tmp_path, max_iters=200)
    assert [(s.begin, s.end) for s in longer.param_scheduler] == [(0, 20), (0, 200)]
    assert longer.param_scheduler[1].milestones == [180, 195]
    assert cfg.default_hooks.checkpoint.interval == 4 and cfg.train_dataloader.batch_size == 3
    assert cfg.randomness.seed == 7
    assert cfg.model.backbone.init_cfg == dict(type="Pretrained", checkpoint=str(ckpt.resolve()))
    root = str((tmp_path / "coco").resolve()) + "/"
    assert cfg.train_dataloader.dataset.data_root == root and cfg.test_dataloader.dataset.data_root == root
    assert cfg.val_evaluator.ann_file == root + "annotations/instances_val2017.json"
    assert cfg.optim_wrapper.type == "OptimWrapper"


def test_config_hash_ignores_storage_and_follows_the_parent(tmp_path):
    a = _prepare("seg/beit3_upernet_mini", tmp_path / "a")
    b = _prepare("seg/beit3_upernet_mini", tmp_path / "b")
    assert dense.dense_config_hash(a) == dense.dense_config_hash(b)
    assert dense.dense_config_hash(a, "p1") != dense.dense_config_hash(a, "p2")
    c = _prepare("seg/beit3_upernet_mini", tmp_path, seed=1)
    assert dense.dense_config_hash(a) != dense.dense_config_hash(c)


def test_bad_requests_fail_with_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="known configs: .*det/beit3_mask-rcnn_mini"):
        _prepare("det/nope", tmp_path)
    with pytest.raises(dense.DenseConfigError, match="needs an IterBasedTrainLoop"):
        _prepare("det/beit3_mask-rcnn_paper", tmp_path, max_iters=2)
    with pytest.raises(FileNotFoundError, match="backbone checkpoint .* does not exist"):
        _prepare("det/beit3_mask-rcnn_mini", tmp_path, checkpoint=tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="data root .* does not exist"):
        _prepare("det/beit3_mask-rcnn_mini", tmp_path, data_root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown layout 'decoupled'"):
        _prepare("det/beit3_mask-rcnn_mini", tmp_path, model_name="beit3_tiny_patch16_224", layout="decoupled")
    with pytest.raises(ValueError, match="mode='test' needs load_from"):
        dense.run_dense("seg/beit3_upernet_mini", work_dir=tmp_path, run_name="x", profile="smoke", mode="test")


def _source(name, reference=False):
    return dense.PretrainedSource(name=name, label=name.upper(), model_name="beit3_tiny_patch16_224",
                                  model_overrides={}, layout=None, identity={"kind": name},
                                  resolve=lambda: None, reference=reference)


def test_table_plans_and_reference_rows(tmp_path, monkeypatch):
    from harness.tables import table7, table8

    monkeypatch.setenv("BEIT3_DATA_ROOT", str(tmp_path / "data"))  # the recipes read the smoke world
    smoke = get_profile("smoke")
    sources = [_source("vlmo"), _source("beit3", reference=True)]
    plan7 = table7.plan_experiments("table7", smoke, 2, sources)
    assert len(plan7) == 2 * 2 * 2 and len({e.config_hash for e in plan7}) == 8
    assert plan7[0].config["config"] == "det/beit3_cascade-mask-rcnn_mini" and plan7[0].config["max_iters"] == 4
    paper = table7.experiment_config(get_profile("paper"), sources[0], "mask_rcnn", 0)
    assert paper["config"] == "det/beit3_mask-rcnn_paper" and paper["max_iters"] is None
    plan8 = table8.plan_experiments("table8", smoke, 1, sources)
    assert {e.config["config"] for e in plan8} == {"seg/beit3_mask2former_mini", "seg/beit3_upernet_mini"}
    assert dense.reference_source(sources).name == "beit3"
    assert dense.row_component(sources[0], sources[1], "box_ap") == "vlmo.box_ap"
    assert [s.name for s in dense.pretrained_sources(smoke)][0] == "beit3"


@pytest.mark.parametrize("name, head, metrics", [
    ("table7", "cascade_mask_rcnn", ("box_ap", "mask_ap")),
    ("table8", "mask2former", ("miou_ss", "miou_ms")),
])
def test_paper_files_and_rendering(name, head, metrics):
    import importlib

    module = importlib.import_module(f"harness.tables.{name}")
    paper = load_paper(name)
    assert {(r["group"], r["component"]) for r in paper["rows"]} == {(head, m) for m in metrics}
    assert any(row["model"] == "BEiT-3" for row in paper["other_rows"])
    rows = [measurement(h, m, value, label=f"{m} of {h}", seed=seed) for h in module.HEADS for m in metrics
            for seed, value in enumerate((1.0, 1.5))]
    result = TableResult.of(name, rows, {h: t for h, (t, _) in module.HEADS.items()})
    result = TableResult(name, attach_paper(result.frame, paper), result.groups)
    markdown = re.sub(r" +", " ", to_markdown(getattr(module, name.capitalize())(name=name, title="t").render(result, paper)))
    assert "| BEiT-3 |" in markdown and "1.25 ± 0.35 | 2 | " + str(paper["rows"][0]["display"]) in markdown
    assert "Δ" not in markdown  # side by side with the paper's giant results, not differenced


def test_paper_rows_of_heads_the_profile_does_not_run_are_left_out():
    """mini's table7 measures Mask R-CNN only; the paper's rows are Cascade's. A component missing
    from a group that was measured is still an error."""
    from harness.tables import table7

    paper = load_paper("table7")
    rows = [measurement("mask_rcnn", m, 30.0, label=m, seed=0) for m in ("box_ap", "mask_ap")]
    result = TableResult.of("table7", rows, {"mask_rcnn": table7.HEADS["mask_rcnn"][0]})
    with pytest.raises(ValueError, match="cascade_mask_rcnn"):
        attach_paper(result.frame, paper)
    joined = attach_paper(result.frame, paper, result.groups)
    assert joined["paper_value"].isna().all()
    rendered = table7.Table7(name="table7", title="t").render(TableResult("table7", joined, result.groups), paper)
    markdown = re.sub(r" +", " ", to_markdown(rendered))
    assert "| box_ap | 30.00 | 1 | – |" in markdown and "| BEiT-3 | O365 |" in markdown
    partial = TableResult.of("table7", rows[:1], {"cascade_mask_rcnn": "c"})
    with pytest.raises(ValueError, match="mask_ap"):
        attach_paper(partial.frame.assign(group="cascade_mask_rcnn"), paper, partial.groups)


def test_the_profile_picks_each_dense_tables_heads_and_schedule(tmp_path, monkeypatch):
    """mini runs Mask R-CNN only (Cascade is smoke's pipeline check) on its own schedule, and every table
    has the no-pretraining row."""
    import dataclasses

    from harness.tables import table7, table8

    monkeypatch.setenv("BEIT3_DATA_ROOT", str(tmp_path / "data"))
    mini, smoke = get_profile("mini"), get_profile("smoke")
    sources = [_source("beit3", reference=True), _source("none")]
    plan = table7.plan_experiments("table7", mini, 2, sources)
    assert {e.config["head"] for e in plan} == {"mask_rcnn"} and len(plan) == 2 * 2
    assert (plan[0].config["max_iters"], plan[0].config["batch_size"]) == dense.table_schedule(mini, "table7")
    assert dense.table_schedule(mini, "table7") != (mini.max_steps, mini.batch_size)
    assert dense.table_schedule(mini, "table8") == (mini.max_steps, mini.batch_size)
    assert {e.config["head"] for e in table7.plan_experiments("table7", smoke, 1, sources)} == set(table7.HEADS)
    assert len(table8.plan_experiments("table8", mini, 1, sources)) == len(table8.HEADS) * 2
    assert "none" in [s.name for s in dense.pretrained_sources(mini)]
    wrong = dataclasses.replace(mini, dense={"table7": {"heads": ("retinanet",)}})
    with pytest.raises(KeyError, match="no head 'retinanet'; heads: cascade_mask_rcnn, mask_rcnn"):
        dense.table_heads(wrong, "table7", table7.HEADS)
