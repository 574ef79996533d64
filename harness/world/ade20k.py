"""ADE20K-style semantic segmentation: crowded scenes with a label map (background kinds and shapes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import writers
from .part import DENSE_SCALE, Part, stream_rng
from .priors import segmentation_prior
from .profiles import WorldProfile
from .scenes import SEG_CLASSES, render, render_labels, sample_scene

__all__ = ["build"]


def build(root: Path, prof: WorldProfile, seed: int) -> Part:
    """Write ``ade/images``, ``ade/annotations`` (label PNGs) and ``ade/classes.json``."""
    rng = stream_rng(seed, "ade")
    size = prof.dense_image_size
    num_classes = len(SEG_CLASSES)
    train_hist = np.zeros(num_classes + 1, dtype=np.int64)
    val_labels = []
    for split, prefix, n in zip(("training", "validation"), ("ADE_train", "ADE_val"), prof.ade_splits):
        for k in range(1, n + 1):
            scene = sample_scene(rng, size, max_objects=prof.dense_max_objects, scale=DENSE_SCALE, **prof.vocabulary)
            label = render_labels(scene)
            writers.save_image(render(scene), root / "ade" / "images" / split / f"{prefix}_{k:08d}.jpg")
            writers.save_image(label, root / "ade" / "annotations" / split / f"{prefix}_{k:08d}.png")
            array = np.asarray(label)
            if split == "training":
                train_hist += np.bincount(array.ravel(), minlength=num_classes + 1)
            else:
                val_labels.append(array)
    writers.write_json(list(SEG_CLASSES), root / "ade" / "classes.json")
    return Part(
        entry={"format": "ade20k", "root": "ade",
               "images": {"training": "ade/images/training", "validation": "ade/images/validation"},
               "annotations": {"training": "ade/annotations/training", "validation": "ade/annotations/validation"},
               "classes_file": "ade/classes.json", "classes": list(SEG_CLASSES), "reduce_zero_label": True},
        counts={"images": dict(zip(("training", "validation"), prof.ade_splits)), "classes": num_classes},
        baselines=segmentation_prior(train_hist, val_labels, num_classes),
    )
