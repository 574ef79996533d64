"""What every data-set module of the world shares: its random stream and the :class:`Part` it returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["DENSE_SCALE", "Part", "STREAMS", "stream_rng", "unique_ids"]

# Random stream of each data set (never renumber: that would change existing worlds).
STREAMS = {"coco": 1, "vqa": 2, "flickr30k": 3, "pairs": 4, "text": 5, "nlvr2": 6, "imagenet": 7, "in21k": 8,
           "instances": 9, "ade": 10}


def stream_rng(seed: int, stream: str) -> np.random.Generator:
    """The generator of one data set: ``numpy.random.default_rng([seed, STREAMS[stream]])``."""
    return np.random.default_rng([seed, STREAMS[stream]])


@dataclass
class Part:
    """What building one data set produced: manifest entry, counts, prior baselines and its text."""

    entry: dict
    counts: dict
    baselines: dict = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)


def unique_ids(rng: np.random.Generator, n: int, high: int = 600_000) -> list[int]:
    """``n`` distinct ids in ``1..high``."""
    return [int(i) + 1 for i in rng.choice(high, size=n, replace=False)]

# Object size factor of the crowded detection / segmentation scenes.
DENSE_SCALE = 0.7
