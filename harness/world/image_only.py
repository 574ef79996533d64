"""The image-only set (an ImageNet-21K stand-in): class folders named by the largest object, for pretraining."""

from __future__ import annotations

from pathlib import Path

from . import writers
from .imagenet import classes
from .part import Part, stream_rng
from .profiles import WorldProfile
from .scenes import render, sample_scene

__all__ = ["build"]


def build(root: Path, prof: WorldProfile, seed: int) -> Part:
    """Write ``in21k/train/<wnid>/``."""
    rng = stream_rng(seed, "in21k")
    wnid_of = {(shape, color): wnid for wnid, shape, color in classes(prof)}
    for k in range(prof.in21k_images):
        scene = sample_scene(rng, prof.image_size, max_objects=prof.max_objects, **prof.vocabulary)
        largest = max(scene.objects, key=lambda o: o.h)
        wnid = wnid_of[(largest.shape, largest.color)]
        writers.save_image(render(scene), root / "in21k" / "train" / wnid / f"{wnid}_{k:06d}.jpg")
    return Part(
        entry={"format": "imagefolder", "root": "in21k/train", "labels": "largest object (unused for pretraining)"},
        counts={"images": prof.in21k_images},
    )
