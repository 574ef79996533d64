"""Captioned image-text pairs in WebDataset shards (``pairs/pairs-{000000..}.tar``, members png + txt)."""

from __future__ import annotations

from pathlib import Path

from . import writers
from .language import caption_pool
from .part import Part, stream_rng
from .profiles import WorldProfile
from .scenes import render, sample_scene

__all__ = ["build"]


def build(root: Path, prof: WorldProfile, seed: int) -> Part:
    """Write the WebDataset shards of captioned pairs."""
    rng = stream_rng(seed, "pairs")
    shards, texts = [], []
    for s in range(prof.pair_shards):
        samples = []
        for i in range(prof.pairs_per_shard):
            scene = sample_scene(rng, prof.image_size, max_objects=prof.max_objects, **prof.vocabulary)
            pool = caption_pool(scene, rng)
            caption = pool[int(rng.integers(len(pool)))]
            texts.append(caption)
            key = f"{s:05d}{i:04d}"
            samples.append((key, {"png": writers.image_bytes(render(scene), ".png"), "txt": caption.encode("utf-8")}))
        path = root / "pairs" / f"pairs-{s:06d}.tar"
        writers.write_tar_shard(path, samples)
        shards.append(path.relative_to(root).as_posix())
    return Part(
        entry={"format": "webdataset", "shards": shards,
               "url": f"pairs/pairs-{{000000..{prof.pair_shards - 1:06d}}}.tar", "members": ["png", "txt"]},
        counts={"shards": prof.pair_shards, "pairs": prof.pair_shards * prof.pairs_per_shard},
        texts=texts,
    )
