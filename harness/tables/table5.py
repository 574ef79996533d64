"""Table 5: retrieval finetuned after the paper's intermediate ITC stage on the pretraining pairs (App. A)."""
from __future__ import annotations

from harness.ablation import Ablation
from harness.experiments import pretraining_configs
from harness.finetune import FinetuneResult, ensure_finetune, finetune_config, itc_config
from harness.profiles import Profile
from harness.tables.registry import register_table
from harness.tables.retrieval import RetrievalTable
from harness.tables.types import Experiment, RunOptions, experiments_of


@register_table("table5")
class Table5(RetrievalTable):
    """Retrieval finetuned after the paper's intermediate ITC stage on the pretraining pairs."""

    intro = "Retrieval finetuned after the intermediate ITC stage (pretraining pairs, paper App. A)"

    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        ablation = options.ablation
        pretraining = pretraining_configs(profile, options.seeds, options.recipes, ablation)
        seeds = range(options.seeds)
        itc = [itc_config(r, profile, s, ablation) for r in options.recipes for s in seeds]
        finetunes = [finetune_config("retrieval", r, profile, s, {"dataset": d}, None,
                                     itc_config(r, profile, s, ablation), ablation)
                     for r in options.recipes for s in seeds for d in self.datasets]
        return experiments_of(pretraining + itc + finetunes, profile)

    def measure(self, recipe: str, dataset: str, profile: Profile, seed: int,
                nproc: int = 1, ablation: Ablation = ()) -> tuple[FinetuneResult, str]:
        result = ensure_finetune("retrieval", recipe, profile, seed, variant={"dataset": dataset}, after_itc=True,
                                 ablation=ablation, nproc=nproc)
        return result, "eval.test"
