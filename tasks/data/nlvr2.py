"""NLVR2: one JSON object per line (``nlvr2/data/{train,dev,test1}.json`` of lil-lab/nlvr).

Line schema (fields used here; the files carry more, e.g. ``writer``, ``synset``, ``query``)::

    {"identifier": "train-10171-0-0", "directory": 85, "sentence": "...", "label": "True"}

``directory`` is present in train only. Image pair paths follow the official BEiT-3 index builder
(``datasets.py::NLVR2Dataset.__preprocess_json``): with ``base = "-".join(identifier.split("-")[:-1])``,
the images are ``{prefix}[/{directory}]/{base}-img0.png`` and ``-img1.png``, with prefix
``images/train`` for train, ``dev`` for dev and ``test1`` for test-P; label is 1 for ``"True"``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset

from tasks.data.images import DataError, load_image

__all__ = ["NLVR2", "NLVR2_IMAGE_PREFIX", "nlvr2_image_paths"]

NLVR2_IMAGE_PREFIX = {"train": "images/train", "dev": "dev", "test1": "test1", "test2": "test2"}
_LABELS = {"True": 1, "False": 0}


def nlvr2_image_paths(identifier: str, prefix: str, directory: Any = None) -> tuple[str, str]:
    """The two image paths (relative to the image root) of an NLVR2 example."""
    folder = os.path.join(prefix, str(directory)) if directory is not None else prefix
    base = os.path.join(folder, "-".join(identifier.split("-")[:-1]))
    return base + "-img0.png", base + "-img1.png"


class NLVR2(Dataset):
    """NLVR2 examples of one JSONL file.

    Items are dicts ``{"image", "image2", "image_path", "image2_path", "text", "label",
    "identifier"}`` (``"tokens"`` too with a tokenizer); images are RGB PIL images or ``transform``
    outputs (the same transform is applied to both, drawn independently).

    Args:
        jsonl_path: ``train.json``, ``dev.json`` or ``test1.json`` (JSON lines).
        image_root: folder holding ``images/train/``, ``dev/``, ``test1/``.
        split: ``train``, ``dev``, ``test1`` (test-P) or ``test2``; picks the image prefix.
        tokenizer: optional callable applied to the sentence.
        transform: optional callable applied to each PIL image.
        image_prefix: override the split's image prefix.
        check_images: check at construction that both image files of every example exist.
        skip_bad: skip malformed lines and (with ``check_images``) examples with missing images
            instead of raising; counted in ``num_skipped``.
    """

    def __init__(
        self,
        jsonl_path: str | os.PathLike,
        image_root: str | os.PathLike,
        split: str,
        tokenizer: Callable[[str], Any] | None = None,
        transform: Callable | None = None,
        image_prefix: str | None = None,
        check_images: bool = False,
        skip_bad: bool = False,
    ):
        if split not in NLVR2_IMAGE_PREFIX and image_prefix is None:
            raise ValueError(f"unknown NLVR2 split {split!r}; expected one of {sorted(NLVR2_IMAGE_PREFIX)} "
                             f"or pass image_prefix")
        self.jsonl_path = os.fspath(jsonl_path)
        self.image_root = os.fspath(image_root)
        self.split = split
        self.image_prefix = image_prefix if image_prefix is not None else NLVR2_IMAGE_PREFIX[split]
        self.tokenizer = tokenizer
        self.transform = transform
        self.skip_bad = skip_bad
        self.num_skipped = 0
        if not os.path.isfile(self.jsonl_path):
            raise DataError(f"NLVR2 file not found: {self.jsonl_path}")
        self.examples = self._read(check_images)
        if not self.examples:
            raise DataError(f"no usable examples in {self.jsonl_path}")

    def _parse(self, line_no: int, line: str) -> dict:
        where = f"{self.jsonl_path}:{line_no}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exn:
            raise DataError(f"{where}: malformed JSON line: {exn}") from exn
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        for key in ("identifier", "sentence", "label"):
            if not isinstance(rec.get(key), str):
                raise DataError(f"{where}: no string {key!r} (record {line.strip()[:200]})")
        if rec["label"] not in _LABELS:
            raise DataError(f"{where}: label {rec['label']!r} is not 'True' or 'False'")
        if rec["identifier"].count("-") < 3:
            raise DataError(f"{where}: identifier {rec['identifier']!r} is not like 'train-10171-0-0'")
        path0, path1 = nlvr2_image_paths(rec["identifier"], self.image_prefix, rec.get("directory"))
        return {"identifier": rec["identifier"], "text": rec["sentence"], "label": _LABELS[rec["label"]],
                "image_path": path0, "image2_path": path1, "line": line_no}

    def _read(self, check_images: bool) -> list[dict]:
        examples = []
        with open(self.jsonl_path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    ex = self._parse(line_no, line)
                    if check_images:
                        for key in ("image_path", "image2_path"):
                            full = os.path.join(self.image_root, ex[key])
                            if not os.path.isfile(full):
                                raise DataError(f"{self.jsonl_path}:{line_no} ({ex['identifier']}) points to a "
                                                f"missing image {full}")
                except DataError:
                    if not self.skip_bad:
                        raise
                    self.num_skipped += 1
                    continue
                examples.append(ex)
        return examples

    def __len__(self) -> int:
        return len(self.examples)

    def _image(self, path: str, ex: dict):
        record = f"{self.jsonl_path}:{ex['line']} {ex['identifier']}"
        image = load_image(os.path.join(self.image_root, path), record=record)
        return self.transform(image) if self.transform is not None else image

    def __getitem__(self, index: int) -> dict:
        ex = self.examples[index]
        item = {
            "image": self._image(ex["image_path"], ex),
            "image2": self._image(ex["image2_path"], ex),
            "image_path": ex["image_path"],
            "image2_path": ex["image2_path"],
            "text": ex["text"],
            "label": ex["label"],
            "identifier": ex["identifier"],
        }
        if self.tokenizer is not None:
            item["tokens"] = self.tokenizer(ex["text"])
        return item
