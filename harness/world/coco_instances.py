"""COCO instances (detection / instance segmentation): crowded scenes, polygons and boxes per object."""

from __future__ import annotations

from pathlib import Path

from . import writers
from .part import DENSE_SCALE, Part, stream_rng, unique_ids
from .profiles import WorldProfile
from .scenes import SHAPES, bbox, object_mask, polygon, render, sample_scene

__all__ = ["build"]


def build(root: Path, prof: WorldProfile, seed: int) -> Part:
    """Write ``coco/{train,val}2017`` and ``coco/annotations/instances_*.json``."""
    rng = stream_rng(seed, "instances")
    size = prof.dense_image_size
    categories = [{"supercategory": "shape", "id": i + 1, "name": s} for i, s in enumerate(SHAPES)]
    ids = unique_ids(rng, sum(prof.instances_splits))
    ann_id, files, counts = 1, {}, {}
    offset = 0
    for split, n in zip(("train2017", "val2017"), prof.instances_splits):
        images, annotations = [], []
        for image_id in ids[offset: offset + n]:
            scene = sample_scene(rng, size, max_objects=prof.dense_max_objects, scale=DENSE_SCALE, **prof.vocabulary)
            file_name = f"{image_id:012d}.jpg"
            writers.save_image(render(scene), root / "coco" / split / file_name)
            images.append({"license": 1, "file_name": file_name, "coco_url": "", "height": size, "width": size,
                           "date_captured": "", "flickr_url": "", "id": image_id})
            for obj in scene.objects:
                area = float(object_mask(obj, size).sum())
                annotations.append({"segmentation": [polygon(obj)], "area": area, "iscrowd": 0, "image_id": image_id,
                                    "bbox": bbox(obj), "category_id": SHAPES.index(obj.shape) + 1, "id": ann_id})
                ann_id += 1
        offset += n
        path = root / "coco" / "annotations" / f"instances_{split}.json"
        writers.write_json(writers.coco_instances_json(images, annotations, categories), path)
        files[split] = path.relative_to(root).as_posix()
        counts[split] = {"images": len(images), "annotations": len(annotations)}
    return Part(
        entry={"format": "coco", "root": "coco", "annotations": files,
               "images": {"train2017": "coco/train2017", "val2017": "coco/val2017"}, "classes": list(SHAPES)},
        counts=counts,
    )
