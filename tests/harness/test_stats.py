"""harness.stats: the paired hierarchical bootstrap on synthetic per-item frames, and its rendering."""
import re

import numpy as np
import pandas as pd
import pytest

from harness import stats
from harness.tables import TableResult, measurement
from harness.tables.render import Document, to_markdown
from harness.tables.vl import differences_blocks
from tasks.spec import MetricSpec

CLUSTERS, PER_CLUSTER = 60, 4


def per_item_frames(shift: float, seeds: int, rng: np.random.Generator, easiness: np.ndarray) -> list[pd.DataFrame]:
    """One frame per seed: every item's score is the item's easiness (shared by all recipes, as
    the same evaluation set is) plus seed noise plus ``shift``."""
    items = CLUSTERS * PER_CLUSTER
    frames = []
    for _ in range(seeds):
        seed_effect = rng.normal(0.0, 0.003)
        score = easiness + seed_effect + rng.normal(0.0, 0.1, items) + shift
        frames.append(pd.DataFrame({
            "item_id": [f"q{i}" for i in range(items)],
            "cluster_id": [f"img{i // PER_CLUSTER}" for i in range(items)],
            "prediction": ["x"] * items,
            "score": score,
        }))
    return frames


@pytest.fixture
def easiness():
    rng = np.random.default_rng(123)
    cluster = rng.normal(0.5, 0.3, CLUSTERS).repeat(PER_CLUSTER)
    return cluster + rng.normal(0.0, 0.2, CLUSTERS * PER_CLUSTER)


def test_a_known_difference_is_detected(easiness):
    rng = np.random.default_rng(0)
    a, b = per_item_frames(0.05, 3, rng, easiness), per_item_frames(0.0, 3, rng, easiness)
    found = stats.paired_bootstrap(a, b, "score", scale=100.0, n_resamples=500)
    assert found.low > 0 and found.detectable
    assert abs(found.estimate - 5.0) < 3.0  # the true +5 points, up to the seeds' noise
    assert found.estimate == pytest.approx(np.mean(np.array(found.values_a) - np.array(found.values_b)))
    assert found.values_a[0] == pytest.approx(100 * a[0]["score"].mean())  # each seed's metric, scaled
    assert (found.clusters, found.items) == (CLUSTERS, CLUSTERS * PER_CLUSTER)


def test_identical_recipes_give_an_interval_covering_zero(easiness):
    rng = np.random.default_rng(1)
    a, b = per_item_frames(0.0, 3, rng, easiness), per_item_frames(0.0, 3, rng, easiness)
    found = stats.paired_bootstrap(a, b, "score", n_resamples=500)
    assert found.low <= 0.0 <= found.high and not found.detectable
    same = stats.paired_bootstrap(a, a, "score", n_resamples=200)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)


def test_pairing_narrows_the_interval(easiness):
    rng = np.random.default_rng(2)
    a, b = per_item_frames(0.02, 3, rng, easiness), per_item_frames(0.0, 3, rng, easiness)
    paired = stats.paired_bootstrap(a, b, "score", n_resamples=500)
    unpaired = stats.paired_bootstrap(a, b, "score", n_resamples=500, paired=False)
    assert paired.estimate == unpaired.estimate
    assert (paired.high - paired.low) < 0.5 * (unpaired.high - unpaired.low)
    assert paired.detectable and not unpaired.detectable  # the shared item effects cancel only when paired


def test_the_interval_is_reproducible_and_blocks_do_not_change_it(easiness, monkeypatch):
    rng = np.random.default_rng(3)
    a, b = per_item_frames(0.01, 2, rng, easiness), per_item_frames(0.0, 2, rng, easiness)
    first = stats.paired_bootstrap(a, b, "score", n_resamples=300)
    assert stats.paired_bootstrap(a, b, "score", n_resamples=300) == first
    assert stats.paired_bootstrap(a, b, "score", n_resamples=300, seed=1) != first


def test_unscored_items_are_left_out_and_mismatched_sets_are_refused(easiness):
    rng = np.random.default_rng(4)
    a, b = per_item_frames(0.0, 1, rng, easiness), per_item_frames(0.0, 1, rng, easiness)
    a[0].loc[0, "score"] = np.nan  # e.g. a text query in an image-to-text recall column
    b[0].loc[0, "score"] = np.nan
    assert stats.paired_bootstrap(a, b, "score", n_resamples=50).items == CLUSTERS * PER_CLUSTER - 1
    with pytest.raises(stats.PerItemMismatchError, match="not the same evaluation set"):
        stats.paired_bootstrap(a, [b[0].iloc[5:]], "score", n_resamples=50)
    with pytest.raises(ValueError, match="paired seeds needed"):
        stats.paired_bootstrap(a, b + b, "score")
    with pytest.raises(KeyError, match="no column 'acc'"):
        stats.paired_bootstrap(a, b, "acc")


# ----------------------------------------------------------------------------- a table's recipes
@pytest.fixture
def accuracy_spec(monkeypatch):
    spec = MetricSpec("accuracy", scale=100.0, primary=True, item_column="score")
    monkeypatch.setattr(stats, "metric_spec", lambda task, metric: spec)
    return spec


def _result(easiness, shifts: dict[str, float], seeds: int = 2):
    rng = np.random.default_rng(5)
    frames, records = {}, []
    for recipe, shift in shifts.items():
        for seed, frame in enumerate(per_item_frames(shift, seeds, rng, easiness)):
            run_id = f"{recipe}-run{seed}"
            frames[run_id] = frame
            records.append(measurement(recipe, "nlvr2.dev.accuracy", 100 * frame["score"].mean(),
                                       label="dev accuracy", recipe=recipe, seed=seed, task="nlvr2",
                                       evaluation="eval", split="dev", metric="accuracy", run_id=run_id))
    records.append(measurement("prior", "nlvr2.dev.accuracy", 50.0))  # a baseline: not a recipe
    result = TableResult.of("table4", records, {**{r: r for r in shifts}, "prior": "prior"})
    return result, frames


def test_every_pair_of_recipes_is_compared_from_the_runs_per_item_results(easiness, accuracy_spec):
    result, frames = _result(easiness, {"beit3": 0.05, "vlmo": 0.05, "none": 0.0})
    loaded = []

    def loader(run_id, split, prefix):
        loaded.append((run_id, split, prefix))
        return frames[run_id]

    differences = stats.recipe_differences(result.frame, loader=loader, n_resamples=300)
    assert list(differences.columns) == list(stats.DIFFERENCE_COLUMNS)
    assert list(zip(differences["recipe_a"], differences["recipe_b"])) == [("beit3", "vlmo"), ("beit3", "none"),
                                                                           ("vlmo", "none")]
    assert sorted(set(loaded)) == sorted((run_id, "dev", "") for run_id in frames)  # each run loaded once
    rows = differences.set_index(["recipe_a", "recipe_b"])
    assert rows.loc[("beit3", "none"), "ci_low"] > 0 and rows.loc[("vlmo", "none"), "ci_low"] > 0
    assert rows.loc[("beit3", "vlmo"), "ci_low"] <= 0 <= rows.loc[("beit3", "vlmo"), "ci_high"]
    assert stats.split_values(rows.loc[("beit3", "none"), "values_a"]) == pytest.approx(
        [100 * frames[f"beit3-run{s}"]["score"].mean() for s in range(2)])
    assert stats.read_differences(differences.to_csv(index=False)).equals(differences)  # the artifact round-trips


def test_missing_per_item_results_are_named_not_fatal(easiness, accuracy_spec):
    result, frames = _result(easiness, {"beit3": 0.0, "none": 0.0}, seeds=1)

    def loader(run_id, split, prefix):
        if run_id.startswith("none"):
            raise FileNotFoundError(f"run {run_id} has no per-item artifact 'per_item/dev.csv.gz'")
        return frames[run_id]

    (row,) = stats.recipe_differences(result.frame, loader=loader, n_resamples=50).to_dict("records")
    assert "none-run0 has no per-item artifact" in row["note"] and np.isnan(row["ci_low"])
    assert stats.verdict(row, {}).startswith("not computed: run none-run0")


def test_differences_render_with_verdicts_seeds_and_mean_std(easiness, accuracy_spec, monkeypatch):
    result, frames = _result(easiness, {"beit3": 0.05, "vlmo": 0.05, "none": 0.0})
    differences = stats.recipe_differences(result.frame, loader=lambda run_id, *_: frames[run_id], n_resamples=300)
    result = result.with_differences(differences)
    text = re.sub(r" +", " ", to_markdown(Document("t", tuple(differences_blocks(result)))))
    assert "## Paired differences between recipes" in text and "With 2 seed(s) the seed level is coarse" in text
    beit3_vs_vlmo = next(line for line in text.splitlines() if line.startswith("| dev accuracy | BEiT-3 MDM pretraining − VLMo"))
    assert "| no detectable difference |" in beit3_vs_vlmo
    beit3_vs_none = next(line for line in text.splitlines() if "BEiT-3 MDM pretraining − no pretraining" in line)
    assert "| BEiT-3 MDM pretraining better |" in beit3_vs_none
    values = [100 * frames[f"beit3-run{s}"]["score"].mean() for s in range(2)]
    assert f"| {values[0]:.2f} / {values[1]:.2f} |" in beit3_vs_none  # each seed's value
    mean, std = np.mean(values), np.std(values, ddof=1)
    assert f"| {mean:.2f} ± {std:.2f} |" in beit3_vs_none  # mean ± std stays a column
    estimate = differences.loc[1, "estimate"]
    assert f"| {estimate:+.2f} [" in beit3_vs_none


def test_equal_scores_with_float_noise_are_no_difference():
    rng = np.random.default_rng(0)
    scores = rng.random(40) * 0.3
    a = pd.DataFrame({"item_id": [str(i) for i in range(40)], "cluster_id": [str(i // 2) for i in range(40)],
                      "score": scores})
    b = a.assign(score=scores + 1e-13)  # the same scores up to float noise (sums in another order)
    found = stats.paired_bootstrap([a], [b], "score", scale=100.0)
    assert found.estimate == 0.0 and found.low == 0.0 and found.high == 0.0


def test_each_recipe_is_compared_with_its_image_shuffled_control(easiness, accuracy_spec):
    from harness.tables.vl import grounding_marks

    result, frames = _result(easiness, {"beit3": 0.05, "none": 0.0})
    rng = np.random.default_rng(7)
    control = {"beit3": -0.05, "none": 0.0}  # beit3 loses 10 points without its images, none nothing
    records = list(result.frame.to_dict("records"))
    for recipe, shift in control.items():
        for seed, frame in enumerate(per_item_frames(shift, 2, rng, easiness)):
            frames[f"{recipe}-run{seed}", "shuffled"] = frame
            records.append(measurement(recipe, "nlvr2.dev.accuracy.shuffled", 100 * frame["score"].mean(),
                                       label="dev accuracy", seed=seed, task="nlvr2", evaluation="shuffled",
                                       split="dev", metric="accuracy", run_id=f"{recipe}-run{seed}"))
    result = TableResult.of("table4", records, result.groups)

    def loader(run_id, split, prefix):
        return frames[(run_id, prefix) if prefix else run_id]

    differences = stats.recipe_differences(result.frame, loader=loader, n_resamples=300)
    pairs = list(zip(differences["recipe_a"], differences["recipe_b"]))
    assert pairs == [("beit3", "none"), ("beit3", "beit3:images-shuffled"), ("none", "none:images-shuffled")]
    rows = differences.set_index(["recipe_a", "recipe_b"])
    assert rows.loc[("beit3", "beit3:images-shuffled"), "ci_low"] > 5  # the +10 points, with its interval
    marks = grounding_marks(result.with_differences(differences))
    assert marks == {("none", "nlvr2.dev.accuracy"): "not image-grounded"}
    text = re.sub(r" +", " ", to_markdown(Document("t", tuple(differences_blocks(result.with_differences(differences))))))
    assert "## Image-shuffled control" in text and "| dev accuracy | no pretraining |" in text
    assert text.count("| not image-grounded |") == 1 and text.count("| image-grounded |") == 1
