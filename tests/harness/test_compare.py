"""`harness run compare` and the ablation switches: parsing, equal budgets, lineage, paired differences, end to end."""
import re

import numpy as np
import pandas as pd

import pytest
from mlflow.tracking import MlflowClient

from harness.ablation import AblationError, apply_ablation, check_ablation, parse_ablation
from harness.cli import main
from harness.config import train_config_hash
from harness.experiments import recipe_configs
from harness.finetune import finetune_config
from harness.profiles import UnknownNameError, get_profile
from harness import stats
from harness.tables import RunOptions, TableResult, get_table, list_tables, measurement
from harness.tables.compare_recipes import COLUMNS, TASK_OF, summarize
from harness.tables.render import to_markdown
from tasks.spec import MetricSpec


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


# ----------------------------------------------------------------------------- ablations alike in every recipe, and hashes
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
    assert list_tables()[-2:] == ["compare", "released"] and list_tables()[0] == "table1"
    code, out, _ = _cli(capsys, "list", "tables")
    assert code == 0 and out.splitlines()[-2].startswith("compare")
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


@pytest.fixture
def item_specs(monkeypatch):
    """Every compared metric as a mean of the per-item column ``score`` (x100 for the captioning ones),
    until the task specs are read: the statistics do not depend on which task it is."""
    def spec(task, metric):
        return MetricSpec(metric, scale=100.0 if task == "captioning" else 1.0, item_column="score")

    monkeypatch.setattr(stats, "metric_spec", spec)


def _per_item(shift: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    easiness = np.random.default_rng(99).normal(50.0, 20.0, 80)  # the same items for every recipe
    return pd.DataFrame({"item_id": [f"i{k}" for k in range(80)], "cluster_id": [f"c{k // 2}" for k in range(80)],
                         "prediction": "x", "score": easiness + shift + rng.normal(0.0, 1.0, 80)})


def _hand_made_result(shifts: dict[str, float], seeds: int = 3) -> TableResult:
    frames, rows = {}, []
    for recipe, shift in shifts.items():
        for seed in range(seeds):
            for column, measure, key, task, metric in COLUMNS:
                run_id = f"{recipe}-{measure}-{seed}"
                frames[run_id] = _per_item(shift, seed)
                evaluation, split, name = key.rsplit(".", 2)
                scale = 100.0 if TASK_OF[measure] == "captioning" else 1.0
                rows.append(measurement(recipe, column, scale * frames[run_id]["score"].mean(), label=f"{task} {metric}",
                                        recipe=recipe, seed=seed, task=TASK_OF[measure], evaluation=evaluation,
                                        split=split, metric=name, run_id=run_id))
        rows += [measurement(recipe, "pretrain.stages", 1.0 if recipe == "beit3" else 0.0, recipe=recipe, seed=0)]
    rows += [measurement("beit3", "pretrain.stage1.steps", 4.0, recipe="beit3", seed=0),
             measurement("beit3", "pretrain.stage1.samples", 24.0, recipe="beit3", seed=0)]
    rows += [measurement("beit3", f"pretrain.{n}", 8.0, recipe="beit3", seed=0) for n in ("images", "texts", "pairs")]
    rows += [measurement("beit3", "pretrain.flops", 1.5e9, recipe="beit3", seed=0)]
    titles = {"beit3": "BEiT-3 MDM", "vlmo": "VLMo staged", "none": "no pretraining"}
    result = TableResult.of("compare", rows, {r: titles[r] for r in shifts},
                            {"ablation": "layout=paper", "profile": "smoke", "seeds": str(seeds)})
    differences = stats.recipe_differences(result.frame, loader=lambda run_id, *_: frames[run_id], n_resamples=200)
    return result.with_differences(differences)


def test_render_reports_paired_differences_from_the_numbers(item_specs):
    spec = get_table("compare")
    text = re.sub(r" +", " ", to_markdown(spec.render(_hand_made_result({"beit3": 5.0, "none": 0.0}), {})))
    assert text.splitlines()[0].endswith("— ablation layout=paper")
    assert "| BEiT-3 MDM | 1 | 4 × 6 | 24 | 8 | 8 | 8 | 1.500e+09 |" in text
    results = text.split("## Results")[1].split("##")[0]
    assert len([line for line in results.splitlines() if line.startswith("| ") and " ± " in line]) == len(COLUMNS)
    assert re.search(r"\| VQAv2 \| val accuracy \| [\d.]+ ± [\d.]+ \([\d.]+ / [\d.]+ / [\d.]+\) \|", results)
    assert "leader" not in text and "σ" not in text  # no rule in units of single runs' std
    assert (f"BEiT-3 MDM vs no pretraining ({len(COLUMNS)} metrics): BEiT-3 MDM better on VQAv2 val accuracy, "
            in text)
    pairs = [line for line in text.splitlines() if "| BEiT-3 MDM − no pretraining |" in line]
    assert len(pairs) == len(COLUMNS) and all("| BEiT-3 MDM better |" in line for line in pairs)
    assert "| captioning test CIDEr | BEiT-3 MDM − no pretraining | +500." in text  # x100 from the metric spec
    same = re.sub(r" +", " ", to_markdown(spec.render(_hand_made_result({"beit3": 0.0, "none": 0.0}), {})))
    summary = same.split("## Which is better where")[1].split("##")[0]
    assert "no detectable difference on VQAv2 val accuracy, " in summary and "better" not in summary


def test_summary_says_which_recipe_is_better_where(item_specs):
    result = _hand_made_result({"beit3": 5.0, "vlmo": 0.0, "none": 0.0}, seeds=2)
    labels = {column: f"{task} {metric}" for column, _, _, task, metric in COLUMNS}
    text = summarize(result.differences, labels, seeds=2)
    assert text.startswith(f"BEiT-3 MDM vs VLMo staged ({len(COLUMNS)} metrics): BEiT-3 MDM better on VQAv2 val "
                           "accuracy, ")
    assert (f"VLMo staged vs no pretraining ({len(COLUMNS)} metrics): no detectable difference on VQAv2 val "
            "accuracy, ") in text
    assert "With 2 seed(s) the seed level of the intervals is coarse: run --seeds 3 or more." in text
    assert "coarse" not in summarize(result.differences, labels, seeds=3)
    assert summarize(pd.DataFrame(columns=list(stats.DIFFERENCE_COLUMNS)), labels, 3).startswith("No paired")


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_compare_on_smoke_through_the_cli(capsys, sandbox, tmp_path):
    code, _, err = _cli(capsys, "run", "compare", "--profile", "smoke", "--seeds", "2", "--recipes", "beit3,none",
                        "--tracking-uri", sandbox, "--out", str(tmp_path / "reports"),
                        "--results-dir", str(tmp_path / "results"))
    assert code == 0, err
    text = re.sub(r" +", " ", (tmp_path / "reports" / "compare.md").read_text())
    assert "2 seed(s) per recipe" in text and "| BEiT-3 MDM | 1 | 4 × 6 | 24 | 8 | 8 | 8 | " in text
    flops = re.search(r"\| BEiT-3 MDM \| 1 \| 4 × 6 \| 24 \| 8 \| 8 \| 8 \| ([\d.e+]+) \|", text).group(1)
    assert float(flops) > 0  # counted, not assumed
    assert "## Which is better where" in text and "coarse" in text and "VLMo" not in text.split("## Results")[1]
    results = text.split("## Results")[1].split("##")[0]
    assert len([line for line in results.splitlines() if line.startswith("| ") and " ± " in line]) == len(COLUMNS)
    pairs = [line for line in text.splitlines() if "| BEiT-3 MDM − no pretraining |" in line]
    assert len(pairs) == len(COLUMNS)  # one paired difference per metric, each with its interval
    assert "## Image-shuffled control" in text and "## Text-only baseline" in text  # the VL finetunes' controls
    client = MlflowClient(sandbox)
    (run,) = client.search_runs([client.get_experiment_by_name("beit3-tables").experiment_id])
    assert run.data.tags["table"] == "compare" and run.info.run_name == "compare-smoke"
    assert "beit3.seed1.vqav2.val.vqa_accuracy" in run.data.metrics
    assert "none.seed1.zeroshot.flickr30k.ir_r1" in run.data.metrics
