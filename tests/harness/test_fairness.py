"""What the recipe comparison holds equal: one architecture, equal FLOPs, pretrained heads carried."""
import dataclasses

import pytest
import torch

import tasks
from harness.ablation import check_ablation
from harness.experiments import RECIPES, recipe_configs
from harness.finetune import finetune_config
from harness.profiles import get_profile

# Fields of the backbone that make its architecture (what a finetune may not change: the rest are the
# input resolution, the output norm of some heads, drop path and the init scheme).
ARCHITECTURE = ("patch_size", "in_chans", "embed_dim", "depth", "num_heads", "ffn_dim", "vocab_size",
                "max_text_positions", "layout", "vl_ffn_layers", "layernorm_eps")
FINETUNES = (("vqav2", None), ("nlvr2", None), ("captioning", None), ("retrieval", {"dataset": "coco"}))


@pytest.fixture(scope="module")
def world_root(tmp_path_factory):
    return tmp_path_factory.mktemp("world")


@pytest.fixture
def sandbox(world_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BEIT3_DATA_ROOT", str(world_root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("BEIT3_RUNS_DIR", str(tmp_path / "runs"))


def backbone_config(cfg):
    with torch.device("meta"):
        return dataclasses.asdict(tasks.build_model(cfg.task, cfg.model, **cfg.model_overrides).config)


def architecture(config: dict) -> dict:
    return {key: config[key] for key in ARCHITECTURE}


@pytest.mark.parametrize("ablation", [(), (("layout", "released"),)], ids=["default", "layout=released"])
@pytest.mark.parametrize("profile", ["smoke", "mini", "paper"])
def test_every_recipe_and_none_build_one_backbone(profile, ablation, sandbox):
    prof, ablation = get_profile(profile), check_ablation(ablation)
    pretraining = {recipe: [backbone_config(c) for c in recipe_configs(recipe, prof, 0, ablation)] for recipe in RECIPES}
    final = {recipe: configs[-1] for recipe, configs in pretraining.items()}
    assert final["beit3"] == final["vlmo"]
    assert all(config == final["vlmo"] for config in pretraining["vlmo"])  # every stage the same model
    expected_layout = dict(ablation).get("layout", "paper")
    assert final["beit3"]["layout"] == expected_layout
    assert (final["beit3"]["vl_ffn_layers"] > 0) == (expected_layout == "paper")  # VL-FFN in the top layers
    for task, variant in FINETUNES:
        finetunes = {recipe: backbone_config(finetune_config(task, recipe, prof, 0, variant, ablation=ablation))
                     for recipe in ("beit3", "vlmo", "none")}
        assert finetunes["beit3"] == finetunes["vlmo"] == finetunes["none"], task
        assert architecture(finetunes["none"]) == architecture(final["beit3"]), task


# ----------------------------------------------------------------------------- pretrained heads
ITC_HEADS = {"vision_head.weight": "itc_vision_head.weight", "language_head.weight": "itc_language_head.weight",
             "logit_scale": "logit_scale"}


def load_like_the_trainer(cfg, pretraining_state):
    """The finetune model as ``harness.train`` starts it: built from the seed, then ``init_from`` loaded."""
    from backbones import load_checkpoint
    from harness.seeding import seed_everything

    seed_everything(cfg.seed)
    model = tasks.build_model(cfg.task, cfg.model, **cfg.model_overrides)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    load_checkpoint(model, {"model": pretraining_state}, drop=cfg.init_drop, rename=cfg.init_rename)
    state = model.state_dict()
    initialised = {k for k in state if torch.equal(state[k], fresh[k])}
    return state, initialised


@pytest.mark.parametrize("variant", [{"dataset": "coco"}, {"source": "pretraining_pairs"}], ids=["retrieval", "itc-stage"])
def test_retrieval_starts_from_the_itc_heads_a_recipe_trained(variant, sandbox):
    smoke = get_profile("smoke")
    for recipe in RECIPES:
        source = recipe_configs(recipe, smoke)[-1]
        torch.manual_seed(5)
        pretraining = tasks.build_model(source.task, source.model, **source.model_overrides)
        with torch.no_grad():
            for param in pretraining.parameters():
                param.add_(torch.randn_like(param))  # trained weights: nothing equals a fresh init
        cfg = finetune_config("retrieval", recipe, smoke, variant=variant)
        state, initialised = load_like_the_trainer(cfg, pretraining.state_dict())
        pretrained = pretraining.state_dict()
        backbone = {k for k in state if k.startswith("beit3.")}
        assert all(torch.equal(state[k], pretrained[k]) for k in backbone)
        if recipe == "vlmo":  # VLMo's stage 3 trained ITC projections and a temperature: they are loaded
            assert cfg.init_rename == {v: k for k, v in ITC_HEADS.items()}
            assert not initialised
            for own, trained in ITC_HEADS.items():
                assert torch.equal(state[own], pretrained[trained]), own
            assert "logit_scale" not in cfg.init_drop and "itc_*" in cfg.init_drop  # the VL-branch heads stay out
        else:  # BEiT-3 MDM has no ITC heads: they start from their init
            assert cfg.init_rename == {}
            assert initialised == set(ITC_HEADS)
    after = finetune_config("retrieval", "vlmo", smoke, variant={"dataset": "coco"},
                            after=finetune_config("retrieval", "vlmo", smoke, variant={"source": "pretraining_pairs"}))
    assert after.init_rename == {} and after.init_drop == []  # the ITC stage's model loads whole
    assert finetune_config("vqav2", "vlmo", smoke).init_rename == {}  # no task but retrieval uses ITC heads


# ----------------------------------------------------------------------------- equal FLOPs
@pytest.mark.parametrize("profile", ["smoke", "mini"])
def test_recipes_match_mdm_in_pretraining_flops_with_their_own_lr_ratios(profile, sandbox):
    from harness.budget import check_flops, step_cost

    prof = get_profile(profile)
    mdm, vlmo = recipe_configs("beit3", prof), recipe_configs("vlmo", prof)
    ratio = check_flops("vlmo", vlmo, mdm, prof)
    assert abs(ratio - 1) <= prof.budget_tolerance
    assert step_cost(vlmo[2]).flops > step_cost(vlmo[0]).flops  # stage 3's five passes cost more than MIM
    assert [c.lr for c in vlmo] == [1.5e-3, 2e-4, 2e-4]  # VLMo's stage rates x (profile lr / MDM lr) = x 1
    samples = recipe_configs("vlmo", prof, 0, check_ablation({"budget": "samples"}))
    assert {c.max_steps for c in samples} == {mdm[0].max_steps}  # the old "equal compute"
    steps = recipe_configs("vlmo", prof, 0, check_ablation({"budget": "steps"}))
    assert sum(c.max_steps for c in steps) == pytest.approx(mdm[0].max_steps, abs=2)


def test_proxy_count_equals_the_direct_count(sandbox, monkeypatch):
    """The paper profile's proxy (narrow, shallow copies, extrapolated) on a model small enough to count directly."""
    from harness import budget

    prof = get_profile("mini")
    cfg = recipe_configs("beit3", prof)[0]
    cfg = dataclasses.replace(cfg, model_overrides={**cfg.model_overrides, "depth": 6, "embed_dim": 96, "num_heads": 4})
    with torch.device("meta"):
        config = tasks.build_model(cfg.task, cfg.model, **cfg.model_overrides).config
    model = tasks.build_model(cfg.task, cfg.model, **cfg.model_overrides)
    batch = budget.expected_batch(cfg, config, cfg.data["batch_size"])
    direct = budget.step_flops(model, batch, tasks.training_step(cfg.task, cfg.forward_kwargs))
    monkeypatch.setattr(budget, "_proxy_sizes", lambda d, f, h: (budget.Fraction(1, 4), budget.Fraction(1, 2)))
    assert budget._count_by_proxy(cfg).flops == pytest.approx(direct, rel=1e-6)


def test_dry_run_prints_every_pretraining_runs_flops_and_the_gpu_hours(sandbox, capsys, tmp_path):
    from harness.cli import main

    assert main(["run", "table3", "--profile", "smoke", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    runs = [line for line in out.splitlines() if line.strip().startswith("- ")]
    assert len(runs) == 4 and all("flops=" in line for line in runs)
    assert "pretraining: 4 run(s)" in out and "GPU-hours at 40% of the H100 SXM dense BF16 peak" in out
