"""COCO and Flickr30K Karpathy splits (``dataset_coco.json`` / ``dataset_flickr30k.json``).

File schema (Karpathy's ``caption_datasets.zip``)::

    {"dataset": "coco" | "flickr30k",
     "images": [{"filepath": "val2014",            # COCO only
                 "filename": "COCO_val2014_000000391895.jpg",
                 "split": "train" | "restval" | "val" | "test",
                 "cocoid": 391895,                  # COCO only
                 "imgid": 0, "sentids": [...],
                 "sentences": [{"raw": "A man ...", "tokens": [...], "imgid": 0, "sentid": 0}, ...]},
                ...]}

Rows follow the official BEiT-3 index builders (``datasets.py``):

* retrieval: one row per caption, ``image_id`` a running counter of images within the split (so
  rows of the same image share it); COCO ``train`` = Karpathy ``train`` + ``restval``. Image paths
  are ``filepath/filename`` (COCO) or ``flickr30k-images/filename`` (Flickr30K).
* captioning: train rows one per caption with ``image_id = cocoid``; val/test rows one per image
  with ``text = None``. Flickr30K has no ``cocoid``, its ``imgid`` is used instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from tasks.data.images import DataError, load_image

__all__ = ["KARPATHY_SPLITS", "KarpathyCaptions", "KarpathyImage", "gt_captions", "read_karpathy"]

# Our split name -> the Karpathy split values it takes (official: COCO train = train + restval).
KARPATHY_SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}
_KNOWN_VALUES = frozenset({"train", "restval", "val", "test"})
_DEFAULT_SUBDIR = {"flickr30k": "flickr30k-images"}
TASKS = ("retrieval", "captioning")


@dataclass(frozen=True)
class KarpathyImage:
    """One validated image record of a Karpathy file."""

    index: int  # position in the file's "images" list
    image_path: str  # relative to the image root
    split: str  # Karpathy split value
    caption_image_id: int  # cocoid (COCO) or imgid (Flickr30K)
    captions: tuple[str, ...]


def _load_json(path: str) -> Any:
    if not os.path.isfile(path):
        raise DataError(f"Karpathy split file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exn:
        raise DataError(f"{path} is not valid JSON: {exn}") from exn


def _parse_record(path: str, index: int, rec: Any, subdir: str) -> KarpathyImage:
    where = f"{path}: images[{index}]"
    if not isinstance(rec, dict):
        raise DataError(f"{where} is not an object: {rec!r:.100}")
    for key in ("filename", "split", "sentences"):
        if key not in rec:
            raise DataError(f"{where} has no key {key!r} (keys: {sorted(rec)})")
    if rec["split"] not in _KNOWN_VALUES:
        raise DataError(f"{where} has split {rec['split']!r}; expected one of {sorted(_KNOWN_VALUES)}")
    sentences = rec["sentences"]
    if not isinstance(sentences, list) or not sentences:
        raise DataError(f"{where} ({rec['filename']}) has no sentences")
    captions = []
    for j, sent in enumerate(sentences):
        if not isinstance(sent, dict) or not isinstance(sent.get("raw"), str):
            raise DataError(f"{where}.sentences[{j}] has no string 'raw' caption")
        captions.append(sent["raw"])
    image_id = rec.get("cocoid", rec.get("imgid"))
    if not isinstance(image_id, int):
        raise DataError(f"{where} ({rec['filename']}) has neither an integer 'cocoid' nor 'imgid'")
    folder = rec["filepath"] if "filepath" in rec else subdir
    return KarpathyImage(index, os.path.join(folder, rec["filename"]), rec["split"], image_id, tuple(captions))


def read_karpathy(
    json_path: str | os.PathLike,
    split: str,
    image_subdir: str | None = None,
    skip_bad: bool = False,
) -> tuple[list[KarpathyImage], int]:
    """Read and validate the records of one split (``train`` includes ``restval``).

    Args:
        json_path: ``dataset_coco.json`` or ``dataset_flickr30k.json``.
        split: ``train``, ``val`` or ``test``.
        image_subdir: folder for records without ``filepath``; default ``flickr30k-images`` when the
            file says ``"dataset": "flickr30k"``, else the image root itself.
        skip_bad: skip malformed records (counted) instead of raising.

    Returns:
        The split's records in file order and the number of malformed records skipped.

    Raises:
        DataError: malformed file or record (naming the file and record index), duplicate image.
    """
    if split not in KARPATHY_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(KARPATHY_SPLITS)}")
    path = os.fspath(json_path)
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path} has no 'images' list; is it a Karpathy split file?")
    if image_subdir is None:
        image_subdir = _DEFAULT_SUBDIR.get(data.get("dataset"), "")
    wanted = KARPATHY_SPLITS[split]
    records, seen, skipped = [], set(), 0
    for index, rec in enumerate(data["images"]):
        if isinstance(rec, dict) and rec.get("split") in _KNOWN_VALUES and rec["split"] not in wanted:
            continue  # other splits are not validated beyond their split value
        try:
            parsed = _parse_record(path, index, rec, image_subdir)
            if parsed.image_path in seen:
                raise DataError(f"{path}: images[{index}] repeats image {parsed.image_path} within split {split!r}")
        except DataError:
            if not skip_bad:
                raise
            skipped += 1
            continue
        seen.add(parsed.image_path)
        records.append(parsed)
    return records, skipped


def gt_captions(json_path: str | os.PathLike, split: str) -> dict[int, list[str]]:
    """Reference captions for the captioning scorer: ``{cocoid (or imgid): [raw captions]}``."""
    records, _ = read_karpathy(json_path, split)
    return {rec.caption_image_id: list(rec.captions) for rec in records}


class KarpathyCaptions(Dataset):
    """Image-caption rows of one Karpathy split, for retrieval or captioning.

    Items are dicts ``{"image", "image_path", "text", "image_id"}`` (``"tokens"`` too when a
    tokenizer is given and ``text`` is not ``None``); ``image`` is the RGB PIL image, or the output
    of ``transform``.

    Args:
        json_path: ``dataset_coco.json`` or ``dataset_flickr30k.json``.
        image_root: folder the records' image paths are relative to.
        split: ``train`` (Karpathy train + restval), ``val`` or ``test``.
        tokenizer: optional callable applied to the caption text.
        task: ``retrieval`` (one row per caption, running ``image_id``) or ``captioning`` (see module
            docstring).
        transform: optional callable applied to the PIL image.
        image_subdir: see :func:`read_karpathy`.
        check_images: check at construction that every image file exists.
        skip_bad: skip malformed records and (with ``check_images``) missing images instead of
            raising; the number is in ``num_skipped``. Undecodable images always raise on access.
    """

    def __init__(
        self,
        json_path: str | os.PathLike,
        image_root: str | os.PathLike,
        split: str,
        tokenizer: Callable[[str], Any] | None = None,
        task: str = "retrieval",
        transform: Callable | None = None,
        image_subdir: str | None = None,
        check_images: bool = False,
        skip_bad: bool = False,
    ):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        self.json_path = os.fspath(json_path)
        self.image_root = os.fspath(image_root)
        self.split = split
        self.task = task
        self.tokenizer = tokenizer
        self.transform = transform
        records, self.num_skipped = read_karpathy(self.json_path, split, image_subdir, skip_bad)
        if check_images:
            kept = []
            for rec in records:
                if os.path.isfile(os.path.join(self.image_root, rec.image_path)):
                    kept.append(rec)
                elif skip_bad:
                    self.num_skipped += 1
                else:
                    raise DataError(f"{self.json_path}: images[{rec.index}] points to a missing image "
                                    f"{os.path.join(self.image_root, rec.image_path)}")
            records = kept
        if not records:
            raise DataError(f"{self.json_path} has no usable images for split {split!r}")
        self.records = records
        self.rows = self._make_rows(records)

    def _make_rows(self, records: list[KarpathyImage]) -> list[dict]:
        rows = []
        for counter, rec in enumerate(records):
            if self.task == "retrieval":
                rows += [dict(image_path=rec.image_path, text=c, image_id=counter, record=rec.index)
                         for c in rec.captions]
            elif self.split == "train":
                rows += [dict(image_path=rec.image_path, text=c, image_id=rec.caption_image_id, record=rec.index)
                         for c in rec.captions]
            else:
                rows.append(dict(image_path=rec.image_path, text=None, image_id=rec.caption_image_id,
                                 record=rec.index))
        return rows

    @property
    def num_images(self) -> int:
        return len(self.records)

    def gt_captions(self) -> dict[int, list[str]]:
        """``{cocoid (or imgid): [raw captions]}`` for the images of this split (captioning scorer)."""
        return {rec.caption_image_id: list(rec.captions) for rec in self.records}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        path = os.path.join(self.image_root, row["image_path"])
        image = load_image(path, record=f"{self.json_path}: images[{row['record']}]")
        item = {
            "image": self.transform(image) if self.transform is not None else image,
            "image_path": row["image_path"],
            "text": row["text"],
            "image_id": row["image_id"],
        }
        if self.tokenizer is not None and row["text"] is not None:
            item["tokens"] = self.tokenizer(row["text"])
        return item
