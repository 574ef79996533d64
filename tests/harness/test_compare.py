"""`harness run compare` and the ablation switches: parsing, equal compute, lineage, verdicts, end to end."""
import math

import pytest
from mlflow.tracking import MlflowClient

from harness.ablation import AblationError, apply_ablation, check_ablation, parse_ablation
from harness.cli import main
from harness.config import train_config_hash
from harness.experiments import recipe_configs
from harness.finetune import finetune_config
from harness.profiles import UnknownNameError, get_profile
from harness.tables import ResultRow, RunOptions, TableResult, get_table, list_tables
from harness.tables.compare_recipes import COLUMNS, Stat, Verdict, summarize, verdict


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")  # one smoke world for the module


@pytest.fixture
def sandbox(tmp_path, monkeypatch, data_root):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("BEIT3_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("BEIT3_DATA_ROOT", str(data_root))
    return uri


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------- parsing and errors
def test_ablation_is_parsed_typed_and_canonical():
    ablation = parse_ablation(["batch_size=4", "vl_ffn=off", "text_mask_prob=0.3", "layout=paper"])
    assert ablation == (("layout", "paper"), ("vl_ffn", "off"), ("text_mask_prob", 0.3), ("batch_size", 4))
    as_pairs = check_ablation([("layout", "paper"), ("batch_size", "4")])
    assert check_ablation({"batch_size": 4, "layout": "paper"}) == as_pairs
    options = RunOptions(ablation={"image_mask_ratio": "0.5"})
    assert options.ablation == (("image_mask_ratio", 0.5),)
    assert hash(options) == hash(RunOptions(ablation=(("image_mask_ratio", 0.5),)))
    assert RunOptions().ablation == ()


@pytest.mark.parametrize("items, error, message", [
    (["mask_ratio=0.3"], UnknownNameError, "Known ablations: batch_size, budget, image_mask_ratio, layout, pair_mask_prob"),
    (["layout=sideways"], AblationError, "expected one of paper, released"),
    (["text_mask_prob=1.5"], AblationError, "strictly between 0 and 1"),
    (["image_mask_ratio=abc"], AblationError, "strictly between 0 and 1"),
    (["batch_size=0"], AblationError, "positive integer"),
    (["layout"], AblationError, "NAME=VALUE"),
    (["layout=paper", "layout=released"], AblationError, "given twice"),
    (["layout=released", "vl_ffn=on"], AblationError, "only meaningful with the paper layout"),
])
def test_bad_ablations_are_one_clear_error(items, error, message):
    with pytest.raises(error, match=message):
        parse_ablation(items)


@pytest.mark.parametrize("argv, expected", [
    (["run", "table4", "--ablation", "mask_ratio=0.3"], "unknown ablation 'mask_ratio'"),
    (["run", "table4", "--ablation", "vl_ffn=off", "--ablation", "layout=released"], "drop --ablation layout=released"),
    (["run", "compare", "--ablation", "batch_size=many"], "expected a positive integer"),
    (["run", "table2", "--ablation", "layout=paper"], "--ablation does not apply"),
])
def test_cli_ablation_errors_exit_2(capsys, sandbox, argv, expected):
    code, out, err = _cli(capsys, *argv, "--dry-run")
    assert code == 2 and out == ""
    assert err.startswith("harness: error: ") and expected in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- equal compute and hashes
@pytest.mark.parametrize("ablation", [{"text_mask_prob": 0.3}, {"image_mask_ratio": 0.6}, {"pair_mask_prob": 0.25},
                                      {"batch_size": 4}, {"layout": "paper", "vl_ffn": "off"}])
def test_an_ablation_changes_every_recipe_alike(ablation, sandbox):
    smoke, checked = get_profile("smoke"), check_ablation(ablation)
    for recipe in ("beit3", "vlmo"):
        base, ablated = recipe_configs(recipe, smoke), recipe_configs(recipe, smoke, 0, checked)
        assert len(base) == len(ablated)
        for b, a in zip(base, ablated):
            assert train_config_hash(a) != train_config_hash(b)
            assert a.run_name == b.run_name + "-" + "-".join(f"{k}={v}" for k, v in checked)
            if recipe == "beit3":  # the reference; the others' steps follow its FLOPs (harness.budget)
                assert a.max_steps * a.data["batch_size"] == b.max_steps * b.data["batch_size"]
                assert apply_ablation(b, checked).semantic_dict() == {**a.semantic_dict(),
                                                                      "parent_config_hash": b.parent_config_hash}
        # A later stage descends from the ablated stage before it.
        for before, after in zip(ablated, ablated[1:]):
            assert after.parent_config_hash == train_config_hash(before)
    all_configs = recipe_configs("beit3", smoke, 0, checked) + recipe_configs("vlmo", smoke, 0, checked)
    name, value = checked[0]
    if name in ("text_mask_prob", "image_mask_ratio", "pair_mask_prob", "batch_size"):
        assert {c.data[name] for c in all_configs} == {value}
    if name == "layout":
        assert {(c.model_overrides["layout"], c.model_overrides["vl_ffn_layers"]) for c in all_configs} == {
            ("paper", 0)}


def test_an_ablation_that_changes_nothing_shares_the_run(sandbox):
    """Every recipe pretrains in the paper layout: ``layout=paper`` leaves their configs as they are."""
    smoke, ablation = get_profile("smoke"), check_ablation({"layout": "paper"})
    hashes = lambda recipe, *ab: [train_config_hash(c) for c in recipe_configs(recipe, smoke, 0, *ab)]  # noqa: E731
    assert hashes("vlmo", ablation) == hashes("vlmo")
    assert hashes("beit3", ablation) == hashes("beit3")
    released = check_ablation({"layout": "released"})
    assert hashes("beit3", released) != hashes("beit3") and hashes("vlmo", released) != hashes("vlmo")


def test_no_ablation_leaves_the_plan_as_it_was(sandbox):
    smoke = get_profile("smoke")
    assert [c.run_name for c in recipe_configs("vlmo", smoke)] == [f"vlmo-stage{i}-smoke-seed0" for i in (1, 2, 3)]
    assert recipe_configs("beit3", smoke, 0, ()) == recipe_configs("beit3", smoke)
    assert recipe_configs("beit3", smoke)[0].model_overrides["layout"] == "paper"  # every recipe's layout
    spec = get_table("table4")
    base = {e.name: e.config_hash for e in spec.plan(smoke, RunOptions())}
    ablated = {e.name: e.config_hash for e in spec.plan(smoke, RunOptions(ablation={"text_mask_prob": 0.3}))}
    assert all("=" not in name for name in base)
    assert not set(base.values()) & {h for n, h in ablated.items() if "-none-" not in n}
    # ``none`` has no pretraining: a masking ablation leaves its finetunes as they are, so they are shared.
    assert {h for n, h in ablated.items() if "-none-" in n} == {h for n, h in base.items() if "-none-" in n}


def test_batch_size_keeps_steps_times_batch(sandbox):
    smoke = get_profile("smoke")
    (base,) = recipe_configs("beit3", smoke)
    assert (base.max_steps, base.data["batch_size"]) == (4, 2)
    (bigger,) = recipe_configs("beit3", smoke, 0, check_ablation({"batch_size": 4}))
    (smaller,) = recipe_configs("beit3", smoke, 0, check_ablation({"batch_size": 1}))
    assert (bigger.max_steps, bigger.data["batch_size"], bigger.warmup_steps) == (2, 4, 1)
    assert (smaller.max_steps, smaller.data["batch_size"], smaller.ckpt_interval) == (8, 1, 4)
    with pytest.raises(AblationError, match=r"batch_size=3 does not divide steps x batch = 4 x 2 = 8"):
        recipe_configs("vlmo", smoke, 0, check_ablation({"batch_size": 3}))


def test_layout_and_vl_ffn_reach_the_finetunes(sandbox):
    smoke = get_profile("smoke")
    ablation = check_ablation({"layout": "paper", "vl_ffn": "off"})
    for recipe in ("beit3", "vlmo", "none"):
        cfg = finetune_config("nlvr2", recipe, smoke, 1, ablation=ablation)
        assert cfg.model_overrides["layout"] == "paper" and cfg.model_overrides["vl_ffn_layers"] == 0
        assert cfg.run_name == f"nlvr2-{recipe}-smoke-seed1-layout=paper-vl_ffn=off"
        if recipe != "none":  # descends from the ablated pretraining of the same seed
            assert cfg.parent_config_hash == train_config_hash(recipe_configs(recipe, smoke, 1, ablation)[-1])
            assert cfg.parent_config_hash != finetune_config("nlvr2", recipe, smoke, 1).parent_config_hash
    assert finetune_config("nlvr2", "beit3", smoke, ablation=check_ablation({"layout": "paper"})).model_overrides[
        "layout"] == "paper"
    assert finetune_config("nlvr2", "beit3", smoke).model_overrides["layout"] == "paper"
    assert "vl_ffn_layers" not in finetune_config("nlvr2", "vlmo", smoke, ablation=check_ablation(
        {"layout": "released"})).model_overrides


def test_dense_sources_follow_the_ablation(sandbox):
    from harness import dense

    smoke = get_profile("smoke")
    (base,) = dense.pretrained_sources(smoke, ["beit3"])
    (ablated,) = dense.pretrained_sources(smoke, ["beit3"], check_ablation({"layout": "released"}))
    assert base.layout == "paper" and ablated.layout == "released" and ablated.identity != base.identity


# ----------------------------------------------------------------------------- the compare table
def test_compare_is_listed_after_the_paper_tables(capsys):
    assert list_tables()[-1] == "compare" and list_tables()[0] == "table2"
    code, out, _ = _cli(capsys, "list", "tables")
    assert code == 0 and out.splitlines()[-1].startswith("compare")
    assert get_table("compare").paper_rows == {}


def test_compare_dry_run_covers_recipes_tasks_and_seeds(capsys, sandbox):
    code, out, _ = _cli(capsys, "run", "compare", "--dry-run", "--seeds", "2")
    assert code == 0
    assert "44 experiment(s)" in out  # 2 x (1 + 3) pretraining, 2 x 3 x 5 finetunes, 2 x 3 ITC stages
    for seed in (0, 1):
        assert f"vlmo-stage3-smoke-seed{seed} " in out and f"beit3-mdm-smoke-seed{seed} " in out
        for recipe in ("beit3", "vlmo", "none"):
            for run in ("vqav2", "nlvr2", "captioning", "retrieval-coco", "retrieval-flickr30k",
                        "retrieval-pretraining_pairs"):
                assert f"{run}-{recipe}-smoke-seed{seed} " in out
    code, out, _ = _cli(capsys, "run", "compare", "--dry-run", "--recipes", "beit3",
                        "--ablation", "layout=paper", "--ablation", "vl_ffn=off")
    assert code == 0 and "ablation layout=paper,vl_ffn=off" in out
    assert "vqav2-beit3-smoke-seed0-layout=paper-vl_ffn=off " in out and "-none-" not in out


def test_compare_shares_its_runs_with_tables_4_6_and_10(sandbox):
    smoke, options = get_profile("smoke"), RunOptions(seeds=2, ablation={"batch_size": 4})
    compare = {e.name: e.config_hash for e in get_table("compare").plan(smoke, options)}
    for table in ("table4", "table6", "table10"):
        plan = {e.name: e.config_hash for e in get_table(table).plan(smoke, options)}
        assert plan.items() <= compare.items()


def test_verdicts_on_hand_made_numbers():
    assert Stat.of([1.0, 2.0, 3.0]) == Stat(2.0, 1.0, 3)
    assert Stat.of([5.0]) == Stat(5.0, None, 1)
    clear = verdict({"vlmo": Stat(75.0, 1.0, 3), "beit3": Stat(80.0, 1.0, 3), "none": Stat(50.0, 1.0, 3)})
    assert (clear.winner, clear.runner_up, clear.delta, clear.tie) == ("beit3", "vlmo", 5.0, False)
    assert clear.spread == pytest.approx(math.sqrt(2)) and clear.text() == "beit3 +5.00 (3.5σ)"
    tie = verdict({"beit3": Stat(79.0, 2.0, 3), "vlmo": Stat(80.0, 2.0, 3)})
    assert tie.tie and tie.winner == "vlmo" and tie.text() == "tie within spread (vlmo +1.00, 0.4σ)"
    edge = Verdict("beit3", "vlmo", delta=2.0, spread=2.0)
    assert edge.tie  # |Δ| <= combined std
    one_seed = verdict({"beit3": Stat(60.0, None, 1), "none": Stat(50.0, None, 1)})
    assert not one_seed.tie and one_seed.text() == "beit3 +10.00 (one seed: no spread)"
    assert verdict({"beit3": Stat(0.0, 0.0, 2), "none": Stat(1e-9, 0.0, 2)}).tie  # below the printed digits
    assert verdict({"beit3": Stat(1.0, 0.0, 2)}).text() == "beit3 (only recipe)" and verdict({}) is None


def test_summary_says_who_wins_where_from_the_numbers():
    verdicts = [("VQAv2 val accuracy", Verdict("beit3", "vlmo", 5.0, 1.0)),
                ("NLVR2 dev accuracy", Verdict("vlmo", "beit3", 0.5, 1.0)),
                ("COCO retrieval TR@1", Verdict("beit3", "none", 3.0, 1.0))]
    text = summarize(verdicts, ("beit3", "vlmo", "none"), seeds=3)
    assert text.startswith("BEiT-3 MDM leads beyond the seeds' spread on 2 of 3 metrics: VQAv2 val accuracy and "
                           "COCO retrieval TR@1.")
    assert "VLMo staged and no pretraining lead nowhere beyond the seeds' spread." in text
    assert "tied on 1 of 3: NLVR2 dev accuracy (VLMo staged vs BEiT-3 MDM)" in text and "rough" not in text
    assert "one seed" in summarize([("x", Verdict("none", "beit3", 1.0))], ("beit3", "none"), seeds=1)
    assert "rough estimate" in summarize(verdicts, ("beit3", "vlmo", "none"), seeds=2)


def _hand_made_result(beit3: list[float], none: list[float]) -> TableResult:
    rows = []
    for recipe, values in (("beit3", beit3), ("none", none)):
        for seed, value in enumerate(values):
            rows += [ResultRow(recipe, f"seed{seed}.{column}", key, value) for column, _, key, *_ in COLUMNS]
        rows += [ResultRow(recipe, "seed0.pretrain.stages", "stages", 1.0 if recipe == "beit3" else 0.0)]
    rows += [ResultRow("beit3", "seed0.pretrain.stage1.steps", "steps", 4.0),
             ResultRow("beit3", "seed0.pretrain.stage1.samples", "samples", 24.0)]
    rows += [ResultRow("beit3", f"seed0.pretrain.{n}", n, 8.0) for n in ("images", "texts", "pairs")]
    return TableResult("compare", {"beit3": "BEiT-3 MDM", "none": "no pretraining"}, tuple(rows),
                       {"ablation": "layout=paper", "profile": "smoke", "seeds": str(len(beit3))})


def test_render_is_generated_from_the_numbers():
    spec = get_table("compare")
    text = spec.render(_hand_made_result([0.80, 0.82, 0.81], [0.50, 0.52, 0.51]), {})
    assert text.splitlines()[0].endswith("— ablation layout=paper")
    assert "| BEiT-3 MDM | 1 | 4 × 6 | 24 | 8 | 8 | 8 |" in text
    assert "| VQAv2 | val accuracy | 0.81 ± 0.01 | 0.51 ± 0.01 | beit3 +0.30 (21.2σ) |" in text
    assert "| captioning | test CIDEr | 81.00 ± 1.00 | 51.00 ± 1.00 | beit3 +30.00 (21.2σ) |" in text
    assert f"BEiT-3 MDM leads beyond the seeds' spread on {len(COLUMNS)} of {len(COLUMNS)} metrics" in text
    flipped = spec.render(_hand_made_result([0.50, 0.52, 0.51], [0.80, 0.82, 0.81]), {})
    assert f"no pretraining leads beyond the seeds' spread on {len(COLUMNS)} of {len(COLUMNS)}" in flipped


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_compare_on_smoke_through_the_cli(capsys, sandbox, tmp_path):
    code, _, err = _cli(capsys, "run", "compare", "--profile", "smoke", "--seeds", "2", "--recipes", "beit3,none",
                        "--tracking-uri", sandbox, "--out", str(tmp_path / "reports"),
                        "--results-dir", str(tmp_path / "results"))
    assert code == 0, err
    text = (tmp_path / "reports" / "compare.md").read_text()
    assert "2 seed(s) per recipe" in text and "| BEiT-3 MDM | 1 | 4 × 6 | 24 | 8 | 8 | 8 |" in text
    assert "## Which wins where" in text and "rough estimate" in text and "VLMo" not in text.split("## Results")[1]
    body = [line for line in text.splitlines() if line.startswith("| ") and " ± " in line]
    assert len(body) == len(COLUMNS)
    client = MlflowClient(sandbox)
    (run,) = client.search_runs([client.get_experiment_by_name("beit3-tables").experiment_id])
    assert run.data.tags["table"] == "compare" and run.info.run_name == "compare-smoke"
    assert "beit3.seed1.vqav2.val.vqa_accuracy" in run.data.metrics
    assert "none.seed1.zeroshot.flickr30k.ir_r1" in run.data.metrics
