"""Pretraining sources: WebDataset image-text shards, an image folder and a text corpus.

BEiT-3 pretrains on image-text pairs, images and text (paper §2.3); the pretraining data code was
never released, so these readers follow the field's conventions:

* :class:`ImageTextShards` streams WebDataset tar shards (members ``{key}.{jpg|jpeg|png|webp}`` +
  ``{key}.txt`` or ``{key}.json`` with a ``caption``/``text`` field), split across distributed ranks
  and then across DataLoader workers exactly like webdataset's ``split_by_node`` + ``split_by_worker``
  (rank and world size come from explicit arguments, else ``webdataset.utils.pytorch_worker_info``).
  Shard names go through webdataset's brace expansion and ``gopen`` (local paths, ``file:``,
  ``pipe:``, URLs); local names may also be globs.
* :class:`ImageFolderSource` lists every image under a folder (recursive, sorted).
* :class:`TextCorpus` streams ``.txt`` (one document per line) and ``.jsonl`` (``{"text": ...}``)
  files, split across ranks/workers by file when there are enough files, else by line.

A truncated shard, an undecodable image, a sample without image or caption and a malformed JSON line
raise :class:`DataError` naming the shard/file and key/line; with ``skip_bad=True`` they are skipped,
counted (``num_skipped``, ``num_bad_shards``) and logged. With DataLoader workers the counters live in
the worker processes, so the log lines are the record there. A source that yields nothing raises.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np
from torch.utils.data import Dataset, IterableDataset, get_worker_info
from torchvision.datasets.folder import IMG_EXTENSIONS
from webdataset.gopen import gopen
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext
from webdataset.utils import pytorch_worker_info

from tasks.data.images import DataError, decode_image, load_image, readable_images

__all__ = ["IMAGE_KEYS", "ImageFolderSource", "ImageTextShards", "TextCorpus", "iter_tar_samples"]

log = logging.getLogger(__name__)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CAPTION_FIELDS = ("caption", "text")
_GLOB_CHARS = frozenset("*?[")


def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith(("pipe:", "file:"))


def _expand_shards(urls: str | Sequence[str]) -> list[str]:
    names = expand_urls(urls) if isinstance(urls, str) else [os.fspath(u) for u in urls]
    shards = []
    for name in names:
        if _is_local(name) and _GLOB_CHARS & set(name):
            shards += sorted(glob.glob(name))
        else:
            shards.append(name)
    return shards


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        auto_rank, auto_world, _, _ = pytorch_worker_info()
        rank = auto_rank if rank is None else rank
        world_size = auto_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class _CountingReader(io.RawIOBase):
    """Read-only stream wrapper counting the bytes it delivers (to detect truncated tars)."""

    def __init__(self, stream):
        self.stream = stream
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.bytes_read += n
        return n


def _key(sample: dict | None) -> str | None:
    return sample["__key__"] if sample is not None else None


def iter_tar_samples(url: str, stream) -> Iterator[dict[str, Any]]:
    """Group the members of one tar stream into WebDataset samples ``{"__key__", ext: bytes}``.

    Raises:
        DataError: the tar is corrupt or ends early (also when it stops at a member boundary without
            the end-of-archive block), naming the shard and the last complete key.
    """
    counter = _CountingReader(stream)
    plain_tar = url.endswith(".tar")
    current: dict[str, Any] | None = None
    last_good = None
    try:
        tar = tarfile.open(fileobj=counter, mode="r|" if plain_tar else "r|*")
        for info in tar:
            if not info.isreg():
                continue
            key, ext = base_plus_ext(info.name)
            if key is None or os.path.basename(key).startswith("__"):
                continue
            if current is not None and current["__key__"] != key:
                # members of a sample are contiguous: a new key closes the previous sample
                yield current
                last_good = current["__key__"]
                current = None
            if current is None:
                current = {"__key__": key}
            current[ext.lower()] = tar.extractfile(info).read()
            tar.members = []  # stream mode keeps every TarInfo otherwise
        end_offset = tar.offset
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exn:
        raise DataError(f"shard {url} is truncated or corrupt after key {last_good!r} (last complete sample; "
                        f"dropped the one in progress, {_key(current)!r}): {exn}") from exn
    # tarfile stops silently when the data ends at a member boundary or inside a header; a complete
    # archive has at least one zero block after the last member.
    if plain_tar and counter.bytes_read < end_offset + tarfile.BLOCKSIZE:
        raise DataError(f"shard {url} ends early (no end-of-archive block) after key {last_good!r} (last complete "
                        f"sample; dropped the one in progress, {_key(current)!r})")
    if current is not None:
        yield current


def _members(sample: dict) -> list[str]:
    return sorted(k for k in sample if not k.startswith("__"))


def _caption(sample: dict, name: str) -> str:
    try:
        if "txt" in sample:
            text = sample["txt"].decode("utf-8")
        elif "json" in sample:
            meta = json.loads(sample["json"].decode("utf-8"))
            field = next((f for f in CAPTION_FIELDS if isinstance(meta, dict) and isinstance(meta.get(f), str)), None)
            if field is None:
                raise DataError(f"sample {name}: json has no string {' or '.join(CAPTION_FIELDS)!r} field")
            text = meta[field]
        else:
            raise DataError(f"sample {name} has no caption (.txt or .json); members: {_members(sample)}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exn:
        raise DataError(f"sample {name}: caption is not valid UTF-8 text/JSON: {exn}") from exn
    text = text.strip()
    if not text:
        raise DataError(f"sample {name} has an empty caption")
    return text


class ImageTextShards(IterableDataset):
    """Image-text pairs streamed from WebDataset tar shards.

    Items are dicts ``{"image", "text", "key", "shard"}`` (``"tokens"`` too with a tokenizer).

    Args:
        urls: shard names: a brace pattern (``data/pairs-{000..009}.tar``), a glob, or a list.
        transform: optional callable applied to the PIL image.
        tokenizer: optional callable applied to the caption.
        rank, world_size: this process's place among the distributed ranks; default from
            ``torch.distributed`` / the ``RANK`` and ``WORLD_SIZE`` variables, else 0 and 1.
        shuffle_shards: shuffle the shard order each epoch (same order on every rank).
        seed: seed of the shard shuffle; the epoch is added (see :meth:`set_epoch`).
        skip_bad: skip (and count) bad samples and truncated shards instead of raising.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        transform: Callable | None = None,
        tokenizer: Callable[[str], Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_shards: bool = False,
        seed: int = 0,
        skip_bad: bool = False,
    ):
        self.urls = urls
        self.shards = _expand_shards(urls)
        if not self.shards:
            raise DataError(f"no shards match {urls!r}")
        missing = [s for s in self.shards if _is_local(s) and not os.path.isfile(s)]
        if missing:
            raise DataError(f"shard files not found: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        if len(self.shards) < self.world_size:
            raise DataError(f"{len(self.shards)} shards for {self.world_size} ranks: rank {self.rank} would get "
                            f"none; write at least one shard per rank")
        self.transform = transform
        self.tokenizer = tokenizer
        self.shuffle_shards = shuffle_shards
        self.seed = seed
        self.epoch = 0
        self.skip_bad = skip_bad
        self.num_skipped = 0
        self.num_bad_shards = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shard order of ``epoch`` (only matters with ``shuffle_shards``)."""
        self.epoch = epoch

    def shards_for(self, rank: int, worker: int = 0, num_workers: int = 1) -> list[str]:
        """Shards read by ``worker`` of ``num_workers`` on ``rank`` in the current epoch."""
        shards = list(self.shards)
        if self.shuffle_shards:
            order = np.random.default_rng(self.seed + self.epoch).permutation(len(shards))
            shards = [shards[i] for i in order]
        node = list(islice(shards, rank, None, self.world_size))  # = webdataset split_by_node
        return list(islice(node, worker, None, num_workers))  # = webdataset split_by_worker

    def _bad(self, exn: DataError, counter: str) -> None:
        if not self.skip_bad:
            raise exn
        setattr(self, counter, getattr(self, counter) + 1)
        log.warning("skipping: %s", exn)

    def _samples(self, url: str) -> Iterator[dict]:
        stream = gopen(url)
        try:
            yield from iter_tar_samples(url, stream)
        except DataError as exn:
            self._bad(exn, "num_bad_shards")
        finally:
            stream.close()

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        shards = self.shards_for(self.rank, worker, num_workers)
        produced = 0
        for url in shards:
            for sample in self._samples(url):
                name = f"{url}:{sample['__key__']}"
                try:
                    image_key = next((k for k in IMAGE_KEYS if k in sample), None)
                    if image_key is None:
                        raise DataError(f"sample {name} has no image ({'/'.join(IMAGE_KEYS)}); members: "
                                        f"{_members(sample)}")
                    text = _caption(sample, name)
                    image = decode_image(sample[image_key], name)
                except DataError as exn:
                    self._bad(exn, "num_skipped")
                    continue
                item = {"image": self.transform(image) if self.transform is not None else image,
                        "text": text, "key": sample["__key__"], "shard": url}
                if self.tokenizer is not None:
                    item["tokens"] = self.tokenizer(text)
                produced += 1
                yield item
        if shards and not produced:
            raise DataError(f"ImageTextShards yielded no samples from {shards} (rank {self.rank}/{self.world_size}, "
                            f"worker {worker}/{num_workers}; skipped {self.num_skipped} samples, "
                            f"{self.num_bad_shards} shards)")


class ImageFolderSource(Dataset):
    """Every image file under ``root`` (recursive, sorted), for image-only pretraining.

    Items are dicts ``{"image", "image_path"}`` (path relative to ``root``).

    Args:
        root: folder to scan.
        transform: optional callable applied to the PIL image.
        extensions: file extensions to accept (case-insensitive).
        skip_bad: leave out (and count in ``num_skipped``) files that do not open as images, checked
            once here (``readable_images``), instead of raising when one is read.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None,
                 extensions: Sequence[str] = IMG_EXTENSIONS, skip_bad: bool = False):
        self.root = os.fspath(root)
        self.transform = transform
        if not os.path.isdir(self.root):
            raise DataError(f"image folder not found: {self.root}")
        exts = tuple(e.lower() for e in extensions)
        paths = []
        for folder, dirs, files in os.walk(self.root, followlinks=True):
            dirs.sort()
            paths += [os.path.relpath(os.path.join(folder, f), self.root)
                      for f in sorted(files) if f.lower().endswith(exts)]
        if not paths:
            raise DataError(f"no images ({', '.join(exts)}) under {self.root}")
        self.num_skipped = 0
        if skip_bad:
            kept, problems = readable_images(self.root, paths)
            paths, self.num_skipped = [paths[i] for i in kept], len(problems)
            if problems:
                log.warning("skipped %d unreadable image(s) under %s, e.g. %s", len(problems), self.root, problems[0])
            if not paths:
                raise DataError(f"no readable images under {self.root} ({problems[0]})")
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        image = load_image(os.path.join(self.root, self.paths[index]), record=f"{self.root}[{index}]")
        return {"image": self.transform(image) if self.transform is not None else image,
                "image_path": self.paths[index]}


TEXT_SUFFIXES = (".txt", ".jsonl")


def _expand_text_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    entries = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files = []
    for entry in map(os.fspath, entries):
        if os.path.isdir(entry):
            for folder, dirs, names in os.walk(entry):
                dirs.sort()
                files += [os.path.join(folder, n) for n in sorted(names) if n.endswith(TEXT_SUFFIXES)]
        elif _GLOB_CHARS & set(entry):
            files += sorted(glob.glob(entry))
        elif os.path.isfile(entry):
            files.append(entry)
        else:
            raise DataError(f"text corpus path not found: {entry}")
    bad = [f for f in files if not f.endswith(TEXT_SUFFIXES)]
    if bad:
        raise ValueError(f"unsupported text files {bad[:5]}; expected {' or '.join(TEXT_SUFFIXES)}")
    return files


def _jsonl_text(path: str, line_no: int, line: str) -> str:
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as exn:
        raise DataError(f"{path}:{line_no}: malformed JSON line: {exn}") from exn
    if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
        raise DataError(f"{path}:{line_no}: expected an object with a string 'text' field")
    return rec["text"]


class TextCorpus(IterableDataset):
    """Documents streamed from ``.txt`` (one per line) and ``.jsonl`` (``{"text": ...}``) files.

    Items are dicts ``{"text", "source"}`` with ``source`` = ``"path:line"`` (``"tokens"`` too with a
    tokenizer). Blank lines and blank documents are not documents and are passed over.

    Args:
        paths: files, folders (scanned recursively for ``.txt``/``.jsonl``) or globs.
        tokenizer: optional callable applied to each document.
        rank, world_size: as in :class:`ImageTextShards`.
        skip_bad: skip (and count) malformed JSON lines instead of raising.
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        tokenizer: Callable[[str], Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        skip_bad: bool = False,
    ):
        self.paths = paths
        self.files = _expand_text_paths(paths)
        if not self.files:
            raise DataError(f"no .txt/.jsonl files in {paths!r}")
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.tokenizer = tokenizer
        self.skip_bad = skip_bad
        self.num_skipped = 0

    def _documents(self, path: str) -> Iterator[tuple[int, str]]:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if path.endswith(".txt"):
                    yield line_no, line.rstrip("\n")
                    continue
                try:
                    text = _jsonl_text(path, line_no, line)
                except DataError as exn:
                    if not self.skip_bad:
                        raise
                    self.num_skipped += 1
                    log.warning("skipping: %s", exn)
                    continue
                if text.strip():
                    yield line_no, text

    def __iter__(self) -> Iterator[dict]:
        worker, num_workers = _worker()
        consumer, consumers = self.rank * num_workers + worker, self.world_size * num_workers
        by_file = len(self.files) >= consumers
        files = list(islice(islice(self.files, self.rank, None, self.world_size), worker, None, num_workers)) \
            if by_file else self.files
        produced, seen = 0, 0
        for path in files:
            for line_no, text in self._documents(path):
                if not by_file:
                    seen += 1
                    if (seen - 1) % consumers != consumer:
                        continue
                item = {"text": text, "source": f"{path}:{line_no}"}
                if self.tokenizer is not None:
                    item["tokens"] = self.tokenizer(text)
                produced += 1
                yield item
        if not produced:
            raise DataError(f"TextCorpus yielded no documents from {files} (rank {self.rank}/{self.world_size}, "
                            f"worker {worker}/{num_workers}; skipped {self.num_skipped} lines)")
