"""ImageNet-style classification: one class per (shape, colour), the class object large, small distractors."""

from __future__ import annotations

from pathlib import Path

from . import writers
from .part import Part, stream_rng
from .priors import majority_accuracy
from .profiles import WorldProfile
from .scenes import render, sample_scene

__all__ = ["classes", "build"]


def classes(prof: WorldProfile) -> list[tuple[str, str, str]]:
    """(wnid-like id, shape, colour) of every class, one per shape and colour of the profile; sorted ids
    give the class index order."""
    combos = [(shape, color) for shape in prof.shapes for color in prof.colors]
    return [(f"n{90_000_000 + i:08d}", shape, color) for i, (shape, color) in enumerate(combos)]


def build(root: Path, prof: WorldProfile, seed: int) -> Part:
    """Write ``imagenet/{train,val}/<wnid>/`` and ``classnames.json``."""
    rng = stream_rng(seed, "imagenet")
    all_classes = classes(prof)
    labels: dict[str, list[int]] = {"train": [], "val": []}
    val_counter = 0
    for split, per_class in zip(("train", "val"), prof.imagenet_per_class):
        for label, (wnid, shape, color) in enumerate(all_classes):
            for k in range(per_class):
                distractors = []
                for _ in range(int(rng.integers(0, 3))):
                    while True:
                        s, c = prof.shapes[int(rng.integers(len(prof.shapes)))], prof.colors[int(rng.integers(len(prof.colors)))]
                        if (s, c) != (shape, color):
                            break
                    distractors.append((s, c, "small"))
                specs = [(shape, color, "large")] + distractors
                scene = sample_scene(rng, prof.image_size, num_objects=len(specs), specs=specs, **prof.vocabulary)
                if split == "train":
                    name = f"{wnid}_{k}.png"
                else:
                    val_counter += 1
                    name = f"ILSVRC2012_val_{val_counter:08d}.png"
                writers.save_image(render(scene), root / "imagenet" / split / wnid / name)
                labels[split].append(label)
    classnames = {wnid: f"{color} {shape}" for wnid, shape, color in all_classes}
    writers.write_json(classnames, root / "imagenet" / "classnames.json")
    return Part(
        entry={"format": "imagefolder", "root": "imagenet", "train": "imagenet/train", "val": "imagenet/val",
               "classnames": "imagenet/classnames.json", "num_classes": len(all_classes)},
        counts={"images": {s: len(v) for s, v in labels.items()}, "classes": len(all_classes)},
        baselines={"majority": majority_accuracy(labels["train"], labels["val"])},
        texts=list(classnames.values()),
    )
