"""Flickr30K-style Karpathy split: its own images and five captions each (``dataset_flickr30k.json``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from . import writers
from .coco_karpathy import chance_r1, gallery_entry, karpathy_entry
from .language import captions
from .part import Part, stream_rng, unique_ids
from .profiles import WorldProfile
from .scenes import Scene, render, sample_scene

__all__ = ["build"]


def images(prof: WorldProfile, seed: int) -> Iterator[tuple[str, int, Scene, list[str]]]:
    """``(split, file name number, scene, captions)`` of every image in order, drawn without rendering:
    the scenes and captions :func:`build` writes (the retrieval oracle reads them)."""
    rng = stream_rng(seed, "flickr30k")
    splits = [split for split, n in zip(("train", "val", "test"), prof.flickr_splits) for _ in range(n)]
    names = [1_000_000_000 + i for i in unique_ids(rng, len(splits), high=3_000_000_000)]
    for split, name in zip(splits, names):
        scene = sample_scene(rng, prof.image_size, max_objects=prof.max_objects, **prof.vocabulary)
        yield split, name, scene, captions(scene, rng, 5)


def build(root: Path, prof: WorldProfile, seed: int) -> Part:
    """Write the Flickr30K images and ``dataset_flickr30k.json``."""
    n_train, n_val, n_test = prof.flickr_splits
    entries, sentid, texts = [], 0, []
    for imgid, (split, name, scene, caps) in enumerate(images(prof, seed)):
        filename = f"{name}.jpg"
        writers.save_image(render(scene), root / "flickr30k" / "flickr30k-images" / filename)
        entries.append(karpathy_entry(imgid, split, filename, caps, sentid))
        sentid += len(caps)
        texts += caps
    writers.write_json(writers.karpathy_json(entries, "flickr30k"), root / "flickr30k" / "dataset_flickr30k.json")
    return Part(
        entry={"format": "karpathy", "root": "flickr30k", "annotation": "flickr30k/dataset_flickr30k.json",
               "images": "flickr30k/flickr30k-images"} | gallery_entry(prof),
        counts={"images": {"train": n_train, "val": n_val, "test": n_test}, "captions": sentid},
        baselines={"retrieval_chance_r1": chance_r1(prof, {"val": n_val, "test": n_test})},
        texts=texts,
    )
