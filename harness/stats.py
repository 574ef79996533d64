"""Paired differences between recipes: a hierarchical bootstrap over seeds and item clusters.

Recipe A and recipe B are finetuned with the same seeds (paired: same seed, same finetune data
order) and evaluated on the same items. The 95% interval of the difference A - B of a metric comes
from resampling, B times: seed indices with replacement (the same for A and B), then the evaluation
set's clusters with replacement (the same for A and B: items that share an image, an NLVR2 sentence
set or a retrieval query are resampled together). Each replicate's metric is the mean of the
per-item column over the resampled items (times the metric's display scale), averaged over the
resampled seeds; the 2.5/97.5 percentiles of the replicates give the interval. See
Agarwal et al. 2021 (rliable) and Bouthillier et al. 2021 for why both levels matter.

Everything is vectorised over replicates with numpy (cluster draws as multinomial counts, one
matrix product per block of replicates); the generator is seeded, so the same inputs give the same
interval. ``scipy.stats.bootstrap`` resamples one level (observations, jointly across paired samples)
and rliable's stratified bootstrap resamples runs within tasks; neither draws seeds and then clusters
within them, so the two levels are drawn here.
"""
from __future__ import annotations

import io
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

N_RESAMPLES = 2000
CONFIDENCE = 0.95
RNG_SEED = 0
_MAX_CELLS = 1 << 24  # replicates x clusters per block of the multinomial draws (memory bound)
DIGITS = 9  # decimals of the displayed unit kept; below that a difference is float noise

# The controls a finetune is evaluated against (``harness.finetune``): evaluation prefix -> how a
# differences row names a recipe's control (``recipe_b = "<recipe>" + suffix``). The image-shuffled
# control is the same model with the split's images permuted; the text-only one is the task's blind
# baseline fitted on train (``TaskSpec.text_baseline``), the same for every run.
IMAGE_CONTROL = "shuffled"
TEXT_CONTROL = "textonly"
CONTROL_SUFFIXES = {IMAGE_CONTROL: ":images-shuffled", TEXT_CONTROL: ":text-only"}
DIFFERENCE_COLUMNS = ("task", "evaluation", "split", "metric", "row", "label", "recipe_a", "recipe_b", "seeds",
                      "clusters", "items", "estimate", "ci_low", "ci_high", "values_a", "values_b", "note")


@dataclass(frozen=True)
class Difference:
    """The difference A - B of one metric with its bootstrap interval.

    Args:
        estimate: mean over the paired seeds of (metric of A - metric of B), on all items.
        low: lower end of the interval (the ``(1 - confidence) / 2`` percentile).
        high: upper end.
        values_a: the metric of A per seed (display units), in seed order.
        values_b: the same for B.
        clusters: clusters in the evaluation set.
        items: items in the evaluation set.
    """

    estimate: float
    low: float
    high: float
    values_a: tuple[float, ...]
    values_b: tuple[float, ...]
    clusters: int
    items: int

    @property
    def detectable(self) -> bool:
        """Whether the interval excludes 0."""
        return not (self.low <= 0.0 <= self.high)


class PerItemMismatchError(ValueError):
    """Per-item frames that cannot be paired (different items, or an item in different clusters)."""


def cluster_sums(frames: Sequence[pd.DataFrame], column: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-frame sums of ``column`` per cluster, aligned on one cluster order.

    Items whose ``column`` is empty (NaN) are not scored by this metric (e.g. text queries in an
    image-to-text recall) and are left out.

    Args:
        frames: per-item frames (``item_id``, ``cluster_id``, ``column``) of the same evaluation set.
        column: the per-item score column.

    Returns:
        ``(sums, counts, items)``: sums of shape (frames, clusters), items per cluster, items in all.

    Raises:
        PerItemMismatchError: the frames score different items or put an item in different clusters.
        KeyError: a frame lacks ``column``.
    """
    reference = None
    sums = []
    for i, frame in enumerate(frames):
        if column not in frame.columns:
            raise KeyError(f"per-item frame {i} has no column {column!r} (columns: {list(frame.columns)})")
        scored = frame.loc[frame[column].notna(), ["item_id", "cluster_id", column]]
        scored = scored.astype({"item_id": str, "cluster_id": str}).set_index("item_id").sort_index()
        if scored.index.has_duplicates:
            raise PerItemMismatchError(f"per-item frame {i} has duplicate item ids for {column!r}")
        if reference is None:
            reference = scored
            clusters = pd.Index(sorted(scored["cluster_id"].unique()))
            counts = scored.groupby("cluster_id").size().reindex(clusters).to_numpy(dtype=float)
        elif not scored.index.equals(reference.index) or not scored["cluster_id"].equals(reference["cluster_id"]):
            extra = scored.index.difference(reference.index)[:3].tolist()
            lacking = reference.index.difference(scored.index)[:3].tolist()
            raise PerItemMismatchError(
                f"per-item frame {i} is not the same evaluation set as frame 0 for {column!r} (items only in it: "
                f"{extra}, items it lacks: {lacking}, or clusters differ): evaluate both runs on the same split")
        sums.append(scored.groupby("cluster_id")[column].sum().reindex(clusters).to_numpy(dtype=float))
    if reference is None or reference.empty:
        raise PerItemMismatchError(f"no item is scored by {column!r}")
    return np.stack(sums), counts, len(reference)


def _blocks(n_resamples: int, clusters: int) -> list[int]:
    size = max(1, min(n_resamples, _MAX_CELLS // max(clusters, 1)))
    return [min(size, n_resamples - start) for start in range(0, n_resamples, size)]


def _replicate_means(rng: np.random.Generator, sums: np.ndarray, counts: np.ndarray, size: int) -> np.ndarray:
    """Metric per (replicate, seed) on resampled clusters, and the resampled seed means: (size,)."""
    seeds, clusters = sums.shape
    weights = rng.multinomial(clusters, np.full(clusters, 1.0 / clusters), size=size).astype(float)
    per_seed = (weights @ sums.T) / (weights @ counts)[:, None]          # (size, seeds)
    drawn = rng.integers(0, seeds, size=(size, seeds))
    return np.take_along_axis(per_seed, drawn, axis=1).mean(axis=1)


# A metric that is not a mean over items (mIoU, COCO AP) of one run, as a function of the evaluation
# set's cluster weights: (replicates, clusters) multiplicities -> the metric per replicate, (replicates,).
WeightedStatistic = Callable[[np.ndarray], np.ndarray]


def paired_bootstrap_statistic(statistics_a: Sequence[WeightedStatistic], statistics_b: Sequence[WeightedStatistic],
                               clusters: int, *, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE,
                               seed: int = RNG_SEED) -> Difference:
    """The difference A - B of a metric computed from the whole evaluation set, with its interval.

    The same hierarchical bootstrap as :func:`paired_bootstrap` (seed indices, then clusters, the same
    for A and B), for metrics that are recomputed on each resampled set rather than averaged over items.

    Args:
        statistics_a: recipe A's metric, one function per seed, of cluster weights (all clusters in one
            order, the same for every function).
        statistics_b: recipe B's, for the same seeds in the same order.
        clusters: clusters in the evaluation set.
        n_resamples, confidence, seed: as :func:`paired_bootstrap`.

    Raises:
        ValueError: the recipes have different numbers of seeds, or none; no clusters.
    """
    if len(statistics_a) != len(statistics_b) or not statistics_a:
        raise ValueError(f"paired seeds needed: recipe A has {len(statistics_a)} runs, B {len(statistics_b)}")
    if clusters < 1:
        raise ValueError("the evaluation set has no clusters")
    every = np.ones((1, clusters))
    values_a = np.array([float(f(every)[0]) for f in statistics_a])
    values_b = np.array([float(f(every)[0]) for f in statistics_b])
    seeds = len(statistics_a)
    rng = np.random.default_rng(seed)
    replicates = []
    for size in _blocks(n_resamples, clusters):
        weights = rng.multinomial(clusters, np.full(clusters, 1.0 / clusters), size=size).astype(float)
        per_seed = np.stack([fa(weights) - fb(weights) for fa, fb in zip(statistics_a, statistics_b)], axis=1)
        drawn = rng.integers(0, seeds, size=(size, seeds))
        replicates.append(np.take_along_axis(per_seed, drawn, axis=1).mean(axis=1))
    alpha = (1.0 - confidence) / 2
    low, high = np.round(np.quantile(np.concatenate(replicates), [alpha, 1.0 - alpha]), DIGITS)
    return Difference(float(np.round(np.mean(values_a - values_b), DIGITS)), float(low), float(high),
                      tuple(map(float, values_a)), tuple(map(float, values_b)), clusters, clusters)


def paired_bootstrap(frames_a: Sequence[pd.DataFrame], frames_b: Sequence[pd.DataFrame], column: str, *,
                     scale: float = 1.0, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE,
                     seed: int = RNG_SEED, paired: bool = True) -> Difference:
    """The difference A - B of the mean of ``column`` (times ``scale``) with its bootstrap interval.

    Args:
        frames_a: recipe A's per-item frames, one per seed.
        frames_b: recipe B's, for the same seeds in the same order.
        column: the per-item score column (``MetricSpec.item_column``).
        scale: display scale of the metric (``MetricSpec.scale``).
        n_resamples: bootstrap replicates.
        confidence: coverage of the interval.
        seed: seed of the generator.
        paired: resample A and B with the same seed indices and clusters (the design); False draws
            them independently, the unpaired interval that ignores the pairing.

    Raises:
        ValueError: the recipes have different numbers of seeds, or none.
        PerItemMismatchError: the frames are not the same evaluation set.
    """
    if len(frames_a) != len(frames_b) or not frames_a:
        raise ValueError(f"paired seeds needed: recipe A has {len(frames_a)} per-item frames, B {len(frames_b)}")
    sums, counts, items = cluster_sums([*frames_a, *frames_b], column)
    seeds = len(frames_a)
    sums_a, sums_b = sums[:seeds] * scale, sums[seeds:] * scale
    values_a = sums_a.sum(axis=1) / counts.sum()
    values_b = sums_b.sum(axis=1) / counts.sum()
    rng = np.random.default_rng(seed)
    replicates = []
    for size in _blocks(n_resamples, len(counts)):
        if paired:
            replicates.append(_replicate_means(rng, sums_a - sums_b, counts, size))
        else:
            replicates.append(_replicate_means(rng, sums_a, counts, size) - _replicate_means(rng, sums_b, counts, size))
    alpha = (1.0 - confidence) / 2
    # Rounded so that float noise of equal scores (1e-17) reads as 0, not as a difference.
    low, high = np.round(np.quantile(np.concatenate(replicates), [alpha, 1.0 - alpha]), DIGITS)
    return Difference(float(np.round(np.mean(values_a - values_b), DIGITS)), float(low), float(high), tuple(map(float, values_a)),
                      tuple(map(float, values_b)), len(counts), items)


# ----------------------------------------------------------------------------- a table's recipes
def metric_spec(task: str, metric: str):
    """The task spec's ``MetricSpec`` of ``metric``: display scale, direction, per-item column."""
    import tasks

    return tasks.get_task(task).metric(metric)


def recipe_differences(frame: pd.DataFrame, *, tracking_uri: str | None = None, n_resamples: int = N_RESAMPLES,
                       seed: int = RNG_SEED, loader=None) -> pd.DataFrame:
    """Paired differences between every pair of recipes, for every metric of a table result frame
    whose task gives it a per-item column (``harness.tables.types.RESULT_COLUMNS``).

    The per-item frames are those the measuring runs logged (``harness.per_item.load_per_item`` of
    the ``run_id``, ``split`` and ``evaluation`` of each row; ``eval`` is the finetune's own
    evaluation, any other evaluation is the artifact prefix, e.g. ``zeroshot.flickr30k``). Seeds are
    paired by number; a pair of recipes shares only the seeds both have.

    Args:
        frame: a table's result frame.
        tracking_uri: the store the runs are in.
        n_resamples: bootstrap replicates.
        seed: the generator's seed (the same for every metric).
        loader: ``(run_id, split, prefix) -> DataFrame``; ``load_per_item`` from ``tracking_uri`` by default.

    Rows of a control's ``evaluation`` (:data:`CONTROL_SUFFIXES`; ``recipe`` empty, ``group`` the
    recipe) add, per recipe and control, the difference of the model from it (``recipe_b`` = recipe +
    the control's suffix).

    Returns:
        One row per (metric, pair of recipes) and per (metric, recipe with a control),
        ``DIFFERENCE_COLUMNS``; a pair whose per-item results are missing has the reason in ``note``
        and no interval.
    """
    if loader is None:
        from harness.per_item import load_per_item

        def loader(run_id: str, split: str, prefix: str) -> pd.DataFrame:
            return load_per_item(run_id, split, tracking_uri=tracking_uri, prefix=prefix)

    measured = frame[(frame["recipe"] != "") & (frame["run_id"] != "") & (frame["task"] != "")]
    cache: dict[tuple[str, str, str], pd.DataFrame | str] = {}

    def per_item(run_id: str, evaluation: str, split: str) -> pd.DataFrame | str:
        key = (run_id, split, evaluation)
        if key not in cache:
            try:
                cache[key] = loader(run_id, split, "" if evaluation == "eval" else evaluation)
            except FileNotFoundError as err:
                cache[key] = str(err)
        return cache[key]

    def compare(key: tuple, label: str, name_a: str, name_b: str, runs_a: Mapping[int, tuple[str, str]],
                runs_b: Mapping[int, tuple[str, str]], spec) -> dict[str, Any]:
        """One differences row: A - B over the seeds both have (runs: seed -> (run id, evaluation))."""
        task, evaluation, split, metric, row = key
        seeds = sorted(set(runs_a) & set(runs_b))
        out = {"task": task, "evaluation": evaluation, "split": split, "metric": metric, "row": row,
               "label": label, "recipe_a": name_a, "recipe_b": name_b, "seeds": len(seeds), "clusters": 0,
               "items": 0, "estimate": math.nan, "ci_low": math.nan, "ci_high": math.nan, "values_a": "",
               "values_b": "", "note": ""}
        frames_a = [per_item(*runs_a[s], split) for s in seeds]
        frames_b = [per_item(*runs_b[s], split) for s in seeds]
        missing = [v for v in frames_a + frames_b if isinstance(v, str)]
        if not seeds:
            out["note"] = "no seed measured for both"
        elif missing:
            out["note"] = missing[0]
        else:
            found = paired_bootstrap(frames_a, frames_b, spec.item_column, scale=spec.scale,
                                     n_resamples=n_resamples, seed=seed)
            out.update(clusters=found.clusters, items=found.items, estimate=found.estimate, ci_low=found.low,
                       ci_high=found.high, values_a=join_values(found.values_a), values_b=join_values(found.values_b))
        return out

    controls = frame[frame["evaluation"].isin(list(CONTROL_SUFFIXES)) & (frame["run_id"] != "")]
    rows = []
    keys = ["task", "evaluation", "split", "metric", "row"]
    for key, group in measured.groupby(keys, sort=False):
        task, evaluation, split, metric, _row = key
        spec = metric_spec(task, metric)
        if spec.item_column is None:
            continue
        label = group["label"].iloc[0]
        recipes = list(dict.fromkeys(group["recipe"]))
        runs = {r: {int(s): (run_id, evaluation) for s, run_id in
                    zip(group.loc[group["recipe"] == r, "seed"], group.loc[group["recipe"] == r, "run_id"])}
                for r in recipes}
        for recipe_a, recipe_b in itertools.combinations(recipes, 2):
            rows.append(compare(key, label, recipe_a, recipe_b, runs[recipe_a], runs[recipe_b], spec))
        # Each recipe against its controls, seed by seed (its runs evaluated with the images shuffled, the
        # blind baseline logged beside them): does it use the image, and beat what the text alone gives?
        for recipe in recipes:
            for name, suffix in CONTROL_SUFFIXES.items():
                control = controls[(controls["group"] == recipe) & (controls["evaluation"] == name)
                                   & (controls["task"] == task) & (controls["split"] == split)
                                   & (controls["metric"] == metric)]
                if len(control):
                    found = {int(s): (run_id, name) for s, run_id in zip(control["seed"], control["run_id"])}
                    rows.append(compare(key, label, recipe, recipe + suffix, runs[recipe], found, spec))
    return pd.DataFrame(rows, columns=list(DIFFERENCE_COLUMNS))


def join_values(values: Sequence[float]) -> str:
    """The per-seed values of a differences row as text (:func:`split_values` reads them back)."""
    return ";".join(repr(float(v)) for v in values)


def split_values(text: str) -> list[float]:
    """The per-seed values of a differences row (``values_a``/``values_b``)."""
    return [float(v) for v in str(text).split(";") if v]


def read_differences(text: str) -> pd.DataFrame:
    """A differences frame back from its CSV (``DIFFERENCE_COLUMNS``)."""
    frame = pd.read_csv(io.StringIO(text), keep_default_na=False,
                        na_values={c: [""] for c in ("estimate", "ci_low", "ci_high")})
    frame = frame[list(DIFFERENCE_COLUMNS)]
    for column in ("task", "evaluation", "split", "metric", "row", "label", "recipe_a", "recipe_b", "values_a",
                   "values_b", "note"):
        frame[column] = frame[column].astype(str)
    for column in ("estimate", "ci_low", "ci_high"):
        frame[column] = frame[column].astype(float)
    return frame


def verdict(row: Mapping, titles: Mapping[str, str], higher_is_better: bool = True) -> str:
    """What a differences row says: which recipe is better, or ``no detectable difference``."""
    if row["note"]:
        return f"not computed: {row['note']}"
    low, high = float(row["ci_low"]), float(row["ci_high"])
    if low <= 0.0 <= high:
        return "no detectable difference"
    a_higher = low > 0
    better = row["recipe_a"] if a_higher == higher_is_better else row["recipe_b"]
    return f"{titles.get(better, better)} better"
