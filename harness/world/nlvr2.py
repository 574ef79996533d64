"""NLVR2: sentences each labelled on image pairs, half True and half False, in the official layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import writers
from .language import sample_statement
from .part import Part, stream_rng
from .priors import label_prior_baselines
from .profiles import WorldProfile
from .scenes import render, sample_scene

__all__ = ["build"]


# Image pairs labelled with each NLVR2 sentence (half True, half False: the sentence alone is at chance).
_NLVR2_PAIRS_PER_SET = 2


def _nlvr2_set(rng: np.random.Generator, prof: WorldProfile):
    """One sentence with ``_NLVR2_PAIRS_PER_SET`` image pairs, half True and half False, in random order."""
    half = _NLVR2_PAIRS_PER_SET // 2
    while True:
        stmt = sample_statement(rng, prof.max_objects, prof.statement_templates, **prof.vocabulary)
        labels = [bool(v) for v in rng.permutation([True] * half + [False] * half)]
        pairs = []
        for label in labels:
            for _ in range(200):
                left_kw, right_kw = stmt.propose(rng)
                left = sample_scene(rng, prof.image_size, max_objects=prof.max_objects, **left_kw, **prof.vocabulary)
                right = sample_scene(rng, prof.image_size, max_objects=prof.max_objects, **right_kw, **prof.vocabulary)
                if stmt.truth(left, right) == label:
                    pairs.append((left, right, label))
                    break
            else:
                break  # this statement is too hard to make true/false: draw another one
        if len(pairs) == len(labels):
            return stmt, pairs


def build(root: Path, prof: WorldProfile, seed: int) -> Part:
    """Write the NLVR2 images (``images/train/<dir>``, ``dev``, ``test1``) and ``data/<split>.json``."""
    rng = stream_rng(seed, "nlvr2")
    base = root / "nlvr2"
    records: dict[str, list[dict]] = {}
    data_files = {}
    texts = []
    for split, num_sets in zip(("train", "dev", "test1"), prof.nlvr2_sets):
        rows, records[split] = [], []
        for set_id in range(num_sets):
            stmt, pairs = _nlvr2_set(rng, prof)
            texts.append(stmt.sentence)
            directory = set_id % 100
            for pair_id, (left, right, label) in enumerate(pairs):
                identifier = f"{split}-{set_id}-{pair_id}-0"
                folder = base / "images" / "train" / str(directory) if split == "train" else base / split
                # Official rule: "-".join(identifier.split("-")[:-1]) + "-img0.png".
                prefix = "-".join(identifier.split("-")[:-1])
                writers.save_image(render(left), folder / f"{prefix}-img0.png")
                writers.save_image(render(right), folder / f"{prefix}-img1.png")
                row = {"sentence": stmt.sentence, "label": "True" if label else "False", "identifier": identifier}
                if split == "train":
                    row["directory"] = directory
                rows.append(row)
                records[split].append({"label": label, "template": stmt.template, "sentence": stmt.sentence})
        path = base / "data" / f"{split}.json"
        writers.write_jsonl(rows, path)
        data_files[split] = path.relative_to(root).as_posix()
    return Part(
        entry={"format": "nlvr2", "root": "nlvr2", "repo": ".", "data": data_files,
               "images": {"train": "nlvr2/images/train", "dev": "nlvr2/dev", "test1": "nlvr2/test1"}},
        counts={"pairs": {s: len(r) for s, r in records.items()},
                "sentences": dict(zip(("train", "dev", "test1"), prof.nlvr2_sets))},
        baselines=label_prior_baselines(records["train"], records["dev"], keys=("template", "sentence")),
        texts=texts,
    )
