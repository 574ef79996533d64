"""ImageNet-1k in the class-folder layout ``root/{train,val}/{wnid}/*.JPEG``, and the official index.

Classes are the sorted folder names of ``root/train`` (as torchvision's ``ImageFolder`` and the
official ``ImageNetDataset._find_classes``); ``val`` uses the train class indices, so a missing val
folder does not shift labels. Files are listed in sorted order, as in the official
``imagenet.{train,val}.index.jsonl`` (``{"image_path": "train/n01440764/x.JPEG", "label": 0}`` per
line), which :meth:`ImageNetFolder.index_rows` produces and :class:`ImageNetIndex` reads.

Human-readable class names (for classification as retrieval) are optional: ``classnames.txt``
(one name per line in class order, or ``"wnid name"`` lines) or ``classnames.json`` (a list in
class order, ``{wnid: name}``, or the Keras-style ``{"0": [wnid, name]}``) next to ``train/``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence

from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

from tasks.data.images import DataError, load_image, readable_images

log = logging.getLogger(__name__)

__all__ = ["ImageNetFolder", "ImageNetIndex", "find_imagenet_classes", "read_classnames", "write_index"]

CLASSNAME_FILES = ("classnames.txt", "classnames.json")


def find_imagenet_classes(class_dir: str | os.PathLike) -> list[str]:
    """Sorted class-folder names of ``class_dir`` (normally ``root/train``)."""
    class_dir = os.fspath(class_dir)
    if not os.path.isdir(class_dir):
        raise DataError(f"ImageNet class folder not found: {class_dir}")
    classes = sorted(entry.name for entry in os.scandir(class_dir) if entry.is_dir())
    if not classes:
        raise DataError(f"no class folders in {class_dir}; expected {class_dir}/<wnid>/<images>")
    return classes


def read_classnames(path: str | os.PathLike, classes: Sequence[str]) -> list[str]:
    """Class names in class-index order from a ``.txt`` or ``.json`` file (formats in module docstring)."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            try:
                data = json.load(f)
            except json.JSONDecodeError as exn:
                raise DataError(f"{path} is not valid JSON: {exn}") from exn
            if isinstance(data, dict) and all(isinstance(v, list) and len(v) == 2 for v in data.values()):
                data = {wnid: name for wnid, name in data.values()}
        else:
            lines = [line.strip() for line in f if line.strip()]
            pairs = [line.split(maxsplit=1) for line in lines]
            known = set(classes)
            if pairs and all(len(p) == 2 and p[0] in known for p in pairs):
                data = dict(pairs)
            else:
                data = lines
    if isinstance(data, dict):
        missing = [c for c in classes if c not in data]
        if missing:
            raise DataError(f"{path} has no name for classes {missing[:5]}{'...' if len(missing) > 5 else ''}")
        return [str(data[c]) for c in classes]
    if not isinstance(data, list) or len(data) != len(classes):
        raise DataError(f"{path} lists {len(data) if isinstance(data, list) else 'no'} class names, "
                        f"but there are {len(classes)} class folders")
    return [str(name) for name in data]


class ImageNetFolder(Dataset):
    """One split of an ImageNet-style class-folder tree.

    Items are dicts ``{"image", "label", "image_path"}`` (``image_path`` relative to ``root``).

    Args:
        root: folder holding ``train/`` and ``val/``.
        split: sub-folder to read (``train`` or ``val``).
        transform: optional callable applied to the PIL image.
        class_dir: folder whose sub-folders define the classes; default ``root/train`` if it exists,
            else ``root/split``.
        classnames: class-name file; default the first of ``classnames.txt``/``.json`` in ``root``.
        skip_bad: leave out (and count in ``num_skipped``) image files that do not open as images,
            checked once here (``readable_images``), instead of raising when one is read.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        transform: Callable | None = None,
        class_dir: str | os.PathLike | None = None,
        classnames: str | os.PathLike | None = None,
        skip_bad: bool = False,
    ):
        self.root = os.fspath(root)
        self.split = split
        self.transform = transform
        split_dir = os.path.join(self.root, split)
        if not os.path.isdir(split_dir):
            raise DataError(f"ImageNet split folder not found: {split_dir}")
        if class_dir is None:
            train_dir = os.path.join(self.root, "train")
            class_dir = train_dir if os.path.isdir(train_dir) else split_dir
        self.classes = find_imagenet_classes(class_dir)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        unknown = sorted(set(find_imagenet_classes(split_dir)) - set(self.classes))
        if unknown:
            raise DataError(f"{split_dir} has class folders {unknown[:5]} that are not in {class_dir}")
        samples = make_dataset(split_dir, self.class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
        if not samples:
            raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {split_dir}/<class>/")
        self.samples = [(os.path.relpath(path, self.root), label) for path, label in samples]
        self.num_skipped = 0
        if skip_bad:
            kept, problems = readable_images(self.root, [path for path, _ in self.samples])
            self.samples, self.num_skipped = [self.samples[i] for i in kept], len(problems)
            if problems:
                log.warning("skipped %d unreadable image(s) of %s, e.g. %s", len(problems), split_dir, problems[0])
            if not self.samples:
                raise DataError(f"no readable images under {split_dir}/<class>/ ({problems[0]})")
        self.classnames = self._classnames(classnames)

    def _classnames(self, path) -> list[str] | None:
        if path is None:
            found = [os.path.join(self.root, n) for n in CLASSNAME_FILES if os.path.isfile(os.path.join(self.root, n))]
            if not found:
                return None
            path = found[0]
        return read_classnames(path, self.classes)

    def index_rows(self) -> list[dict]:
        """Rows of the official ``imagenet.{split}.index.jsonl``."""
        return [{"image_path": path, "label": label} for path, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        path, label = self.samples[index]
        image = load_image(os.path.join(self.root, path), record=f"{self.split}[{index}] label {label}")
        return {"image": self.transform(image) if self.transform is not None else image,
                "label": label, "image_path": path}


def write_index(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Write rows (e.g. :meth:`ImageNetFolder.index_rows`) as an official JSONL index."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


class ImageNetIndex(Dataset):
    """Reader of an official ``imagenet.{train,val}.index.jsonl`` (``{"image_path", "label"}`` lines).

    Args:
        index_path: the JSONL index.
        data_root: folder the index's image paths are relative to.
        transform: optional callable applied to the PIL image.
    """

    def __init__(self, index_path: str | os.PathLike, data_root: str | os.PathLike, transform: Callable | None = None):
        self.index_path = os.fspath(index_path)
        self.data_root = os.fspath(data_root)
        self.transform = transform
        if not os.path.isfile(self.index_path):
            raise DataError(f"ImageNet index not found: {self.index_path}")
        self.samples = []
        with open(self.index_path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    self.samples.append((str(row["image_path"]), int(row["label"]), line_no))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exn:
                    raise DataError(f"{self.index_path}:{line_no}: not an {{'image_path', 'label'}} row: "
                                    f"{exn}") from exn
        if not self.samples:
            raise DataError(f"{self.index_path} has no rows")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        path, label, line_no = self.samples[index]
        image = load_image(os.path.join(self.data_root, path), record=f"{self.index_path}:{line_no}")
        return {"image": self.transform(image) if self.transform is not None else image,
                "label": label, "image_path": path}
