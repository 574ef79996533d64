"""Table 10: retrieval finetuned directly from each pretraining recipe (no intermediate ITC stage)."""
from __future__ import annotations

from harness.ablation import Ablation
from harness.experiments import pretraining_configs
from harness.finetune import FinetuneResult, ensure_finetune, plan_finetunes
from harness.profiles import Profile
from harness.tables.registry import register_table
from harness.tables.retrieval import RetrievalTable
from harness.tables.types import Experiment, RunOptions, experiments_of


@register_table("table10")
class Table10(RetrievalTable):
    """Retrieval finetuned directly from each pretraining recipe (no intermediate ITC stage)."""

    intro = "Retrieval finetuned directly from each pretraining recipe (no intermediate ITC stage)"

    def plan(self, profile: Profile, options: RunOptions) -> list[Experiment]:
        pretraining = pretraining_configs(profile, options.seeds, options.recipes, options.ablation)
        pairs = tuple(("retrieval", {"dataset": dataset}) for dataset in self.datasets)
        finetunes = plan_finetunes(pairs, profile, options.seeds, options.recipes, options.ablation)
        return experiments_of(pretraining + finetunes, profile)

    def measure(self, recipe: str, dataset: str, profile: Profile, seed: int,
                nproc: int = 1, ablation: Ablation = ()) -> tuple[FinetuneResult, str]:
        result = ensure_finetune("retrieval", recipe, profile, seed, variant={"dataset": dataset}, ablation=ablation,
                                 nproc=nproc)
        return result, "eval.test"
