"""Table 6: zero-shot Flickr30K retrieval of the ITC-stage model (no finetuning on Flickr30K)."""
from __future__ import annotations

from harness.ablation import Ablation
from harness.experiments import pretraining_configs
from harness.finetune import FinetuneResult, itc_config, zero_shot_retrieval
from harness.profiles import Profile
from harness.tables.registry import register_table
from harness.tables.retrieval import RetrievalTable
from harness.tables.types import Experiment, RunOptions, experiments_of


@register_table("table6")
class Table6(RetrievalTable):
    """Zero-shot Flickr30K retrieval of the ITC-stage model (no finetuning on Flickr30K)."""

    datasets = ("flickr30k",)
    intro = "Zero-shot: the ITC-stage model of each recipe, scored on Flickr30K without finetuning on it"

    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        pretraining = pretraining_configs(profile, options.seeds, options.recipes, options.ablation)
        return experiments_of(pretraining + [itc_config(r, profile, s, options.ablation) for r in options.recipes
                                           for s in range(options.seeds)], profile)

    def measure(self, recipe: str, dataset: str, profile: Profile, seed: int,
                nproc: int = 1, ablation: Ablation = ()) -> tuple[FinetuneResult, str]:
        result = zero_shot_retrieval(recipe, dataset, profile, seed, ablation=ablation, nproc=nproc)
        return result, f"zeroshot.{dataset}.test"
