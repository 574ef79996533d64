"""Sizes and difficulty of the benchmark world, one frozen dataclass per profile."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from .language import QUESTION_FAMILIES, STATEMENT_TEMPLATES
from .scenes import COLORS, SHAPES

__all__ = ["WorldProfile", "PROFILES", "config_digest", "get_profile"]


def config_digest(config: dict) -> str:
    """A short digest of a profile's ``to_dict()`` (as a world's manifest stores it under ``config``)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class WorldProfile:
    """How much of the world to build.

    Args:
        name: profile name.
        image_size: side of the images of the image-text and classification sets.
        dense_image_size: side of the detection (COCO instances) and segmentation (ADE) images.
        max_objects: most shapes in one image (image-text and classification sets).
        dense_max_objects: most shapes in one detection / segmentation image.
        coco_splits: Karpathy COCO images per split ``(train, restval, val, test)``.
        vqa_questions_per_image: VQA questions asked about each COCO image.
        vqa_test_images: images of ``test2015`` (the first half also form ``test-dev2015``).
        flickr_splits: Flickr30K-style images per split ``(train, val, test)``.
        pair_shards: number of WebDataset shards of captioned pairs.
        pairs_per_shard: samples in each shard.
        corpus_documents: documents of the image-free text corpus.
        nlvr2_sets: NLVR2 sentence sets per split ``(train, dev, test1)``; each set is one sentence
            labelled on 2 image pairs (one True, one False).
        imagenet_per_class: ImageNet-style images per class ``(train, val)``.
        in21k_images: images of the image-only (ImageNet-21K stand-in) set.
        instances_splits: COCO-instances images ``(train2017, val2017)``.
        ade_splits: ADE20K-style images ``(training, validation)``.
        spm_vocab_size: SentencePiece vocabulary size (a soft limit: a small corpus may give fewer).
        retrieval_gallery_size: images per retrieval gallery: the test split is scored as the mean over
            its consecutive galleries of this many images (COCO's "1K test" protocol); ``None`` scores
            the whole split as one gallery.
        shapes: the shapes scenes are drawn from (difficulty: fewer kinds are easier to tell apart).
        colors: the object colours scenes are drawn from.
        question_families: the VQA question families asked (weights in ``language.QUESTION_FAMILIES``).
        statement_templates: the NLVR2 statement templates (weights in ``language.STATEMENT_TEMPLATES``).
    """

    name: str
    image_size: int
    dense_image_size: int
    max_objects: int
    dense_max_objects: int
    coco_splits: tuple[int, int, int, int]
    vqa_questions_per_image: int
    vqa_test_images: int
    flickr_splits: tuple[int, int, int]
    pair_shards: int
    pairs_per_shard: int
    corpus_documents: int
    nlvr2_sets: tuple[int, int, int]
    imagenet_per_class: tuple[int, int]
    in21k_images: int
    instances_splits: tuple[int, int]
    ade_splits: tuple[int, int]
    spm_vocab_size: int
    retrieval_gallery_size: int | None = None
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    question_families: tuple[str, ...] = tuple(QUESTION_FAMILIES)
    statement_templates: tuple[str, ...] = tuple(STATEMENT_TEMPLATES)

    def __post_init__(self) -> None:
        for name, known in (("shapes", SHAPES), ("colors", tuple(COLORS)), ("question_families", tuple(QUESTION_FAMILIES)),
                            ("statement_templates", tuple(STATEMENT_TEMPLATES))):
            chosen = getattr(self, name)
            unknown = [v for v in chosen if v not in known]
            if not chosen or unknown or len(set(chosen)) != len(chosen):
                raise ValueError(f"world profile {self.name!r}: {name}={list(chosen)} must be distinct names "
                                 f"among {list(known)}" + (f"; unknown: {unknown}" if unknown else ""))
        if len(self.colors) < 2:
            raise ValueError(f"world profile {self.name!r}: colors needs at least 2 names (captions and questions "
                             "compare colours)")
        if self.retrieval_gallery_size is not None:
            tests = {"coco": self.coco_splits[3], "flickr30k": self.flickr_splits[2]}
            uneven = {k: n for k, n in tests.items() if n % self.retrieval_gallery_size}
            if self.retrieval_gallery_size < 2 or uneven:
                raise ValueError(f"world profile {self.name!r}: retrieval_gallery_size={self.retrieval_gallery_size} "
                                 f"must be >= 2 and divide the test splits {tests}")

    @property
    def vocabulary(self) -> dict[str, tuple[str, ...]]:
        """``shapes`` and ``colors``: the keyword arguments of ``scenes.sample_scene`` for this profile."""
        return {"shapes": self.shapes, "colors": self.colors}

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


PROFILES: dict[str, WorldProfile] = {
    "smoke": WorldProfile(
        name="smoke", image_size=32, dense_image_size=64, max_objects=4, dense_max_objects=5,
        coco_splits=(16, 4, 6, 6), vqa_questions_per_image=3, vqa_test_images=6, flickr_splits=(8, 2, 2),
        pair_shards=2, pairs_per_shard=8, corpus_documents=120, nlvr2_sets=(8, 4, 4), imagenet_per_class=(2, 1),
        in21k_images=24, instances_splits=(8, 4), ade_splits=(8, 4), spm_vocab_size=300,
    ),
    "mini": WorldProfile(
        name="mini", image_size=64, dense_image_size=128, max_objects=4, dense_max_objects=6,
        # Evaluation splits sized for intervals of a few points: captioning and retrieval test 500
        # images (retrieval: five galleries of 100), NLVR2 1000 sentences per split, 50 images per class.
        coco_splits=(1500, 250, 250, 500), vqa_questions_per_image=5, vqa_test_images=250,
        flickr_splits=(600, 100, 500), pair_shards=4, pairs_per_shard=500, corpus_documents=5000,
        nlvr2_sets=(8000, 1000, 1000), imagenet_per_class=(60, 50), in21k_images=1000, instances_splits=(600, 150),
        ade_splits=(600, 150), spm_vocab_size=1000, retrieval_gallery_size=100,
    ),
}


def get_profile(name: str) -> WorldProfile:
    """The profile called ``name``; ``ValueError`` listing the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown world profile {name!r}; known profiles: {', '.join(sorted(PROFILES))}") from None
