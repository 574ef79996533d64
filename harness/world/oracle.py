"""The retrieval oracle: recalls of a ranking that knows every scene and reads every caption perfectly.

A caption is true of a scene exactly when the generator could have written it for that scene
(:func:`~harness.world.language.caption_variants`). The oracle puts the images a caption is true of
(text -> image), or the captions true of an image (image -> text), first, in random order: where
several images fit a caption equally ("two red circles on a plain blue background"), no model can
tell which one was captioned. Its expected R@K is the ceiling a model can reach on the world's test
split; chance is the floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

from .language import caption_variants
from .profiles import get_profile
from .scenes import Scene

__all__ = ["RECALL_AT", "retrieval_oracle", "world_retrieval_oracle"]

RECALL_AT = (1, 5, 10)


def retrieval_oracle(gallery: Sequence[tuple[Scene, Sequence[str]]]) -> dict[str, float]:
    """Expected recalls in percent (``tr_r1`` .. ``ir_r10``, as the retrieval task names them) of the
    oracle on a gallery of ``(scene, its captions)``: every caption a query (text -> image), every
    image a query whose hits are its own captions (image -> text)."""
    variants = [caption_variants(scene) for scene, _ in gallery]
    captions = [caption for _, caps in gallery for caption in caps]
    fits = {caption: sum(caption in true_of for true_of in variants) for caption in set(captions)}
    text, image = {k: 0.0 for k in RECALL_AT}, {k: 0.0 for k in RECALL_AT}
    for caption in captions:  # its image is among the `fits` images it is true of
        for k in RECALL_AT:
            image[k] += min(1.0, k / fits[caption])
    for true_of, (_, own) in zip(variants, gallery):
        fitting = sum(caption in true_of for caption in captions)  # its own captions included
        others = fitting - len(own)
        for k in RECALL_AT:  # 1 - P(the first k of the fitting captions are all another image's)
            text[k] += 1.0 - comb(others, k) / comb(fitting, k) if k < fitting else 1.0
    recalls = {f"tr_r{k}": 100.0 * text[k] / len(gallery) for k in RECALL_AT}
    return recalls | {f"ir_r{k}": 100.0 * image[k] / len(captions) for k in RECALL_AT}


def world_retrieval_oracle(dataset: str, profile: str, seed: int, split: str = "test") -> dict[str, float]:
    """:func:`retrieval_oracle` on one Karpathy split of a world (``dataset`` ``coco`` or ``flickr30k``),
    its scenes drawn again from (profile, seed) as the world's build draws them; with the profile's
    ``retrieval_gallery_size``, the mean over the consecutive galleries the retrieval task scores."""
    from . import coco_karpathy, flickr30k

    prof = get_profile(profile)
    if dataset == "coco":
        gallery = [(image.scene, image.captions) for _, s, image in coco_karpathy.images(prof, seed) if s == split]
    elif dataset == "flickr30k":
        gallery = [(scene, caps) for s, _, scene, caps in flickr30k.images(prof, seed) if s == split]
    else:
        raise ValueError(f"no retrieval oracle for data set {dataset!r}; known: coco, flickr30k")
    if not gallery:
        raise ValueError(f"the {profile} world's {dataset} has no {split!r} images")
    size = prof.retrieval_gallery_size or len(gallery)
    parts = [gallery[start:start + size] for start in range(0, len(gallery), size)]
    # Weighted by queries, as the task averages its per-query rows: images for tr_*, captions for ir_*.
    totals: dict[str, float] = {}
    for part in parts:
        queries = {"tr": len(part), "ir": sum(len(caps) for _, caps in part)}
        for key, value in retrieval_oracle(part).items():
            totals[key] = totals.get(key, 0.0) + value * queries[key[:2]]
    num_images, num_captions = len(gallery), sum(len(caps) for _, caps in gallery)
    return {key: total / (num_images if key.startswith("tr") else num_captions) for key, total in totals.items()}
