"""The controls every number measured on the world is shown beside, as the world's manifest lists them.

Each entry names a control, the data sets and tasks it applies to, and the code that computes it, so a
reader of ``world.json`` knows what a score must beat (or cannot exceed) to mean the model used the image.
"""

from __future__ import annotations

__all__ = ["CONTROLS"]

# name -> (task data sets, what it is, where the harness computes it)
_CONTROLS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "image_shuffled": (
        ("vqav2", "nlvr2", "coco_karpathy"),
        "every finetuned VQA, NLVR2 and captioning model evaluated again with the split's images permuted "
        "(text kept); a cell that does not beat it (95% CI of the paired difference excludes 0) is marked "
        "'not image-grounded'",
        "harness.finetune.ensure_finetune (data shuffle_images), harness.stats",
    ),
    "text_only": (
        ("vqav2", "nlvr2", "coco_karpathy"),
        "the strongest image-blind baseline fit on train: VQA the answer prior per question text, else "
        "question type; NLVR2 the sentence-only prior; captioning the best constant caption",
        "TaskSpec.text_baseline: tasks.vqav2.text_only_baseline, tasks.nlvr2.text_only_baseline, "
        "tasks.captioning.constant_caption_baseline",
    ),
    "nlvr2_pairwise": (
        ("nlvr2",),
        "pairwise accuracy: for each sentence, whether its True pair gets the larger True-vs-False margin "
        "(a sentence-only model scores 50)",
        "tasks.nlvr2 metric pairwise_accuracy",
    ),
    "retrieval_oracle": (
        ("coco_karpathy", "flickr30k"),
        "the ceiling: expected recalls of a ranking that knows every test scene and which captions are "
        "true of it (equally fitting items ranked at random), per gallery as the task scores",
        "harness.world.oracle.world_retrieval_oracle",
    ),
    "retrieval_chance": (
        ("coco_karpathy", "flickr30k"),
        "R@1 of a random ranking in the task's galleries",
        "world.json baselines.<data set>.retrieval_chance_r1",
    ),
    "prior_baselines": (
        ("vqav2", "nlvr2", "imagenet", "ade20k"),
        "label priors measured at build time on val / dev (majority, per family / template / class)",
        "world.json baselines (harness.world.priors)",
    ),
    "no_pretraining": (
        ("vqav2", "nlvr2", "coco_karpathy", "flickr30k", "imagenet"),
        "the same finetune from random initialisation, seed for seed with the pretrained recipes",
        "recipe 'none' (harness.experiments.RECIPE_NAMES) in the vision-language and classification tables",
    ),
}

CONTROLS: dict[str, dict] = {
    name: {"datasets": list(datasets), "what": what, "computed_by": where}
    for name, (datasets, what, where) in _CONTROLS.items()
}
