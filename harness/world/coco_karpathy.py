"""COCO images (train2014 / val2014 / test2015) with Karpathy-split captions (``dataset_coco.json``) and
BLIP's caption ground-truth files; the VQAv2 questions (:mod:`.vqav2`) are asked about the same images."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import writers
from .language import captions, karpathy_tokens
from .part import Part, stream_rng, unique_ids
from .profiles import WorldProfile
from .scenes import Scene, render, sample_scene

__all__ = ["CocoImage", "build", "karpathy_entry"]


@dataclass(frozen=True)
class CocoImage:
    """One COCO image: its subset folder, COCO id, scene and captions (none for ``test2015``)."""

    subset: str
    cocoid: int
    scene: Scene
    captions: tuple[str, ...]


def karpathy_entry(imgid: int, split: str, filename: str, caps: list[str], sentid: int, **extra) -> dict:
    """One image of a Karpathy split file, its sentences numbered from ``sentid``."""
    sentences = [
        {"tokens": karpathy_tokens(raw), "raw": raw, "imgid": imgid, "sentid": sentid + k} for k, raw in enumerate(caps)
    ]
    entry = {"filepath": extra.pop("filepath")} if "filepath" in extra else {}
    entry.update({"sentids": [s["sentid"] for s in sentences], "filename": filename, "imgid": imgid,
                  "split": split, "sentences": sentences})
    entry.update(extra)
    return entry


def gallery_entry(prof: WorldProfile) -> dict:
    """The manifest key that tells the retrieval task its galleries (none: the whole split)."""
    return {} if prof.retrieval_gallery_size is None else {"gallery_size": prof.retrieval_gallery_size}


def chance_r1(prof: WorldProfile, split_sizes: dict[str, int]) -> dict[str, float]:
    """R@1 of a random ranking per split: each image's chance in its gallery (the split's consecutive
    galleries of ``retrieval_gallery_size`` images, or the whole split), averaged over the images."""
    out = {}
    for split, n in split_sizes.items():
        size = prof.retrieval_gallery_size or max(n, 1)
        num_galleries = -(-n // size)  # each gallery's images sum to 1 hit: its number over n images
        out[split] = round(num_galleries / max(n, 1), 4)
    return out


def images(prof: WorldProfile, seed: int) -> Iterator[tuple[int, str, CocoImage]]:
    """``(imgid, Karpathy split or "test2015", image)`` of every COCO image in order, drawn without
    rendering: the scenes and captions :func:`build` writes (the retrieval oracle reads them)."""
    rng = stream_rng(seed, "coco")
    n_train, n_restval, n_val, n_test = prof.coco_splits
    splits = ["train"] * n_train + ["restval"] * n_restval + ["val"] * n_val + ["test"] * n_test
    ids = unique_ids(rng, len(splits) + prof.vqa_test_images)
    for imgid, (split, cocoid) in enumerate(zip(splits + ["test2015"] * prof.vqa_test_images, ids)):
        subset = "train2014" if split == "train" else "test2015" if split == "test2015" else "val2014"
        scene = sample_scene(rng, prof.image_size, max_objects=prof.max_objects, **prof.vocabulary)
        caps = captions(scene, rng, 5) if split != "test2015" else []
        yield imgid, split, CocoImage(subset, cocoid, scene, tuple(caps))


def build(root: Path, prof: WorldProfile, seed: int) -> tuple[Part, list[CocoImage]]:
    """Write the COCO images and the Karpathy caption files; return the part and every image in order."""
    karpathy, coco_images, sentid, texts = [], [], 0, []
    for imgid, split, image in images(prof, seed):
        filename = f"COCO_{image.subset}_{image.cocoid:012d}.jpg"
        writers.save_image(render(image.scene), root / "coco" / image.subset / filename)
        if split != "test2015":
            caps = list(image.captions)
            karpathy.append(karpathy_entry(imgid, split, filename, caps, sentid, filepath=image.subset,
                                           cocoid=image.cocoid))
            sentid += len(caps)
            texts += caps
        coco_images.append(image)

    coco = root / "coco"
    writers.write_json(writers.karpathy_json(karpathy, "coco"), coco / "dataset_coco.json")
    for split in ("val", "test"):
        split_images = [img for img in karpathy if img["split"] == split]
        writers.write_json(writers.caption_gt_json(split_images), coco / f"coco_karpathy_{split}_gt.json")
    part = Part(
        entry={
            "format": "karpathy",
            "root": "coco",
            "annotation": "coco/dataset_coco.json",
            "images": {"train2014": "coco/train2014", "val2014": "coco/val2014"},
            "caption_gt": {"val": "coco/coco_karpathy_val_gt.json", "test": "coco/coco_karpathy_test_gt.json"},
        } | gallery_entry(prof),
        counts={"images": dict(zip(("train", "restval", "val", "test"), prof.coco_splits)), "captions": sentid},
        baselines={"retrieval_chance_r1": chance_r1(prof, dict(zip(("val", "test"), prof.coco_splits[2:])))},
        texts=texts,
    )
    return part, coco_images
