"""File writers for the benchmark world, one per real data-set format.

Every writer is deterministic: JSON keeps insertion order, tar members carry fixed metadata (no
timestamps, owners or modes from the machine), and images are encoded with fixed settings, so the same
records give byte-identical files.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image

__all__ = [
    "INFO",
    "LICENSE",
    "image_bytes",
    "save_image",
    "write_json",
    "write_jsonl",
    "write_lines",
    "write_tar_shard",
    "karpathy_json",
    "caption_gt_json",
    "vqa_questions_json",
    "vqa_annotations_json",
    "coco_instances_json",
]

INFO = {
    "description": "BEiT-3 benchmark world: procedurally generated shapes in real data-set formats",
    "version": "1.0",
    "year": 2024,
    "contributor": "beit3-harness",
    "url": "",
    "date_created": "",
}
LICENSE = {"id": 1, "name": "CC0 1.0 (synthetic data)", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}


def image_bytes(image: Image.Image, suffix: str) -> bytes:
    """Encode ``image`` for a file name ending in ``suffix`` (``.jpg``/``.jpeg`` or ``.png``).

    JPEG uses quality 95 without chroma subsampling so that the colour of a small shape survives.
    """
    buffer = io.BytesIO()
    suffix = suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        image.save(buffer, format="JPEG", quality=95, subsampling=0)
    elif suffix == ".png":
        image.save(buffer, format="PNG")
    else:
        raise ValueError(f"unsupported image suffix {suffix!r}; use .jpg, .jpeg or .png")
    return buffer.getvalue()


def save_image(image: Image.Image, path: Path) -> None:
    """Write ``image`` to ``path`` (format from the suffix), creating parent directories."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(image, path.suffix))


def write_json(obj, path: Path) -> None:
    """One JSON document (compact, key order as given, UTF-8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


def write_jsonl(rows: Iterable[dict], path: Path) -> None:
    """JSON Lines: one compact object per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_lines(lines: Iterable[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for line in lines:
            if "\n" in line:
                raise ValueError(f"{path}: a line may not contain a newline: {line!r}")
            f.write(line + "\n")


def write_tar_shard(path: Path, samples: Iterable[tuple[str, dict[str, bytes]]]) -> int:
    """A WebDataset shard: for each ``(key, {ext: bytes})`` the members ``{key}.{ext}``, in order.

    Returns the number of samples written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    num = 0
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            if "." in key or "/" in key:
                raise ValueError(f"WebDataset key {key!r} may not contain '.' or '/'")
            for ext, data in members.items():
                info = tarfile.TarInfo(name=f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
            num += 1
    return num


def karpathy_json(images: Sequence[dict], dataset: str) -> dict:
    """Karpathy split file (``dataset_coco.json`` / ``dataset_flickr30k.json``)."""
    return {"images": list(images), "dataset": dataset}


def caption_gt_json(images: Sequence[dict]) -> dict:
    """BLIP's ``coco_karpathy_{val,test}_gt.json`` (a COCO caption file read by ``pycocoevalcap``),
    from Karpathy image entries."""
    return {
        "annotations": [
            {"image_id": img["cocoid"], "caption": sent["raw"], "id": sent["sentid"]}
            for img in images
            for sent in img["sentences"]
        ],
        "images": [{"id": img["cocoid"]} for img in images],
    }


def vqa_questions_json(data_subtype: str, questions: Sequence[dict]) -> dict:
    """``v2_OpenEnded_mscoco_{subtype}_questions.json``."""
    return {
        "info": INFO,
        "task_type": "Open-Ended",
        "data_type": "mscoco",
        "license": {"url": LICENSE["url"], "name": LICENSE["name"]},
        "data_subtype": data_subtype,
        "questions": list(questions),
    }


def vqa_annotations_json(data_subtype: str, annotations: Sequence[dict]) -> dict:
    """``v2_mscoco_{subtype}_annotations.json``."""
    return {
        "info": INFO,
        "license": {"url": LICENSE["url"], "name": LICENSE["name"]},
        "data_subtype": data_subtype,
        "annotations": list(annotations),
        "data_type": "mscoco",
    }


def coco_instances_json(images: Sequence[dict], annotations: Sequence[dict], categories: Sequence[dict]) -> dict:
    """``instances_{train,val}2017.json``."""
    return {
        "info": INFO,
        "licenses": [LICENSE],
        "images": list(images),
        "annotations": list(annotations),
        "categories": list(categories),
    }
