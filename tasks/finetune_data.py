"""Deterministic, resumable fine-tuning batches, shared by VQAv2, NLVR2, retrieval, ImageNet and captioning.

:class:`FinetuneData` turns a data-set reader (``tasks.data``) and a task's collate function into the
data object the trainer reads (``next_batch``, ``state_dict``/``load_state_dict``,
``samples_per_batch``).

Sampling, for a map-style reader of ``N`` items on rank ``r`` of ``W`` (the official fine-tuning
loaders: ``DistributedSampler(shuffle=True)`` + ``drop_last=True``):

- epoch ``e`` is the permutation ``numpy.random.default_rng([seed, e]).permutation(N)`` (the same on
  every rank); rank ``r`` reads ``perm[r::W][:N // W]`` in batches of ``batch_size``, the last
  incomplete batch dropped;
- so batch ``k`` is a pure function of ``(seed, r, k)``, and the step ``k`` is the whole data position:
  ``load_state_dict(state_dict())`` continues bit-identically, with or without DataLoader workers.

Augmentation: the official transforms (torchvision, timm, :class:`tasks.data.transforms.RandomAugment`)
draw from the *global* RNGs of Python, NumPy and torch. Each item is therefore read under
:func:`seeded_global_rngs` with a seed derived from ``(seed, rank, step, slot)``, and the collate
function (text masking, mixup/cutmix) under one derived from ``(seed, rank, step)``, which also seeds
the ``torch.Generator`` it is given. The global states are restored afterwards, so data loading never
moves the trainer's own RNG stream (drop path).

Iterable readers (WebDataset shards of pretraining pairs) are streamed in order, split across ranks by
the reader itself; their position is ``(epoch, samples read)`` and a resume re-reads the current epoch
up to it (exact, at the cost of a pass over what was read; :mod:`tasks.pretrain_data`'s stream reader).

Data roots: every task's ``data_config["root"]`` is the data set's root (the official ``data_path``),
or a benchmark-world directory (one holding ``world.json``, built by ``harness.world``): the task's
sub-root and the SentencePiece model are then read from the manifest (:func:`resolve_root`). Data
files are relative to the data set's root, the tokenizer path relative to ``root``; absolute paths
stay as they are.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from backbones.suggest import did_you_mean
from tasks.data.images import DataError
from tasks.data.world_root import MANIFEST_NAME, is_world_dir, load_manifest
from tasks.metrics._checks import EmptySplitError, check_not_empty

__all__ = [
    "POSITION_OFFSET",
    "WORLD_MANIFEST",
    "DataRoot",
    "EmptySplitError",
    "FinetuneData",
    "ImagesFrom",
    "TransformFields",
    "check_not_empty",
    "check_text_fits",
    "derive_seed",
    "eval_batches",
    "eval_mode",
    "first_items",
    "load_text_tokenizer",
    "merge_config",
    "model_img_size",
    "resolve_root",
    "seeded_global_rngs",
    "shuffled_image_sources",
    "stack",
    "to_device",
]

WORLD_MANIFEST = MANIFEST_NAME
POSITION_OFFSET = 2  # fairseq: text positions start at row 2 of the text position table
STATE_VERSION = 1
# Third word of the derived seeds: items, the batch (collate), evaluation items.
_ITEM, _BATCH, _EVAL = 0, 1, 2


# ------------------------------------------------------------------------------------------ config
def merge_config(data_config: Mapping[str, Any], defaults: Mapping[str, Any], task: str) -> dict[str, Any]:
    """``{**defaults, **data_config}``; unknown keys are an error naming the close valid ones."""
    unknown = sorted(set(data_config) - set(defaults))
    if unknown:
        lines = [key + did_you_mean(key, defaults) for key in unknown]
        raise ValueError(f"{task} data config: unknown key(s) {'; '.join(lines)}. Valid keys: {', '.join(defaults)}")
    return {**defaults, **data_config}


@dataclass(frozen=True)
class DataRoot:
    """Where a task's files are: ``base`` is ``data_config["root"]``, ``data`` the data set's own root
    (``base`` itself, or the data set's folder inside a benchmark world), ``manifest`` the world's."""

    base: Path
    data: Path
    manifest: dict | None = None

    def file(self, path: str | os.PathLike) -> Path:
        """A data-set file: absolute, or relative to the data set's root."""
        path = Path(path)
        return path if path.is_absolute() else self.data / path

    def world_entry(self, dataset: str) -> dict | None:
        if self.manifest is None:
            return None
        return self.manifest.get("datasets", {}).get(dataset)


def resolve_root(data_config: Mapping[str, Any], dataset: str) -> DataRoot:
    """The task's :class:`DataRoot`.

    Args:
        data_config: needs ``root``.
        dataset: the data set's name in a world manifest (``vqav2``, ``nlvr2``, ``coco_karpathy``,
            ``flickr30k``, ``imagenet``, ``pairs``).

    Raises:
        ValueError: no ``root``. FileNotFoundError: ``root`` is not a directory.
        KeyError: ``root`` is a world without ``dataset``.
    """
    root = data_config.get("root")
    if not root:
        raise ValueError("the data config needs 'root': the data set's root folder (official data_path) or a "
                         f"benchmark-world directory (holding {MANIFEST_NAME})")
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"data root {base} is not a directory")
    if not is_world_dir(base):
        return DataRoot(base, base)
    manifest = load_manifest(base)
    datasets = manifest.get("datasets", {})
    if dataset not in datasets:
        raise KeyError(f"the benchmark world {base} has no {dataset!r} data set (it has: {', '.join(datasets)})")
    sub = datasets[dataset].get("root")
    return DataRoot(base, base / sub if sub else base, manifest)


def load_text_tokenizer(path: str | os.PathLike | None, root: DataRoot):
    """The ``TextTokenizer`` of ``path`` (relative to ``root.base``), by default the world's SentencePiece model."""
    from backbones.tokenizers import TextTokenizer

    if path is None:
        spm = root.world_entry("spm")
        if spm is None:
            raise ValueError("the data config needs 'tokenizer': the SentencePiece model of the checkpoint "
                             "(the official beit3.spm); only a benchmark-world root supplies a default")
        path = spm["model"]
    path = Path(path)
    return TextTokenizer(path if path.is_absolute() else root.base / path)


def model_img_size(model: nn.Module, img_size: int | None) -> int:
    """``img_size`` if given, else the model's input side (``model.config.image_hw``)."""
    if img_size is not None:
        return int(img_size)
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("give 'img_size' in the data config (the model has no .config to read it from)")
    height, width = config.image_hw
    if height != width:
        raise ValueError(f"the model's input is {height}x{width}; the official transforms are square: give 'img_size'")
    return int(height)


def check_text_fits(model: nn.Module, tokenizer: Any, max_len: int) -> None:
    """The tokenizer's ids must fit the model's text embedding, and ``max_len`` its position table.

    Raises:
        ValueError: naming both sizes and the fix.
    """
    config = model.config
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(
            f"the tokenizer ({tokenizer.model_file}) has {tokenizer.vocab_size} ids but the model's text embedding "
            f"has {config.vocab_size} rows: build the model with vocab_size={tokenizer.vocab_size} (or more)"
        )
    limit = config.max_text_positions - POSITION_OFFSET
    if max_len > limit:
        raise ValueError(
            f"max_len={max_len} text tokens do not fit the model's text position table of "
            f"{config.max_text_positions} rows (positions start at {POSITION_OFFSET}, so at most {limit} tokens "
            f"including <s> and </s>): set the data config's max_len <= {limit}"
        )


# ------------------------------------------------------------------------------------- randomness
def derive_seed(*words: int) -> int:
    """A 63-bit seed from non-negative integers (``numpy.random.SeedSequence``)."""
    if any(int(w) < 0 for w in words):
        raise ValueError(f"seed words must be non-negative, got {words}")
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1, dtype=np.uint64)[0] >> 1)


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's (CPU) global RNGs for the block; restore them afterwards."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


# ------------------------------------------------------------------------------------- collation
def stack(items: Sequence[Mapping[str, Any]], key: str) -> torch.Tensor:
    """``torch.stack`` of ``item[key]`` (tensors) or ``torch.tensor`` of them (numbers)."""
    values = [item[key] for item in items]
    if isinstance(values[0], torch.Tensor):
        return torch.stack(values)
    return torch.tensor(values)


class TransformFields:
    """Apply ``transform`` to the given fields of an item dict (for readers without a transform).

    Args:
        transform: e.g. ``tasks.data.transforms.build_vl_transform(True, 224)``.
        keys: the image fields.
    """

    def __init__(self, transform: Callable[[Any], Any], keys: Sequence[str] = ("image",)):
        self.transform = transform
        self.keys = tuple(keys)

    def __call__(self, item: Mapping[str, Any]) -> dict[str, Any]:
        return {**item, **{key: self.transform(item[key]) for key in self.keys}}


def to_device(batch: Mapping[str, Any], device: torch.device | str) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# -------------------------------------------------------------------------------------- training
def _is_map_style(source: Any) -> bool:
    return not isinstance(source, IterableDataset) and hasattr(source, "__len__") and hasattr(source, "__getitem__")


class _PlannedBatches(Dataset):
    """Batch ``k`` at index ``k``: what DataLoader workers compute (each batch is a pure function of k)."""

    def __init__(self, data: FinetuneData):
        self.data = data

    def __getitem__(self, step: int) -> tuple[int, dict[str, Any]]:
        return step, self.data.batch_at(step)


class _CountFrom:
    """An endless sampler ``start, start + 1, ...``."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


def _first(batch: Any) -> Any:
    return batch


class FinetuneData:
    """Training batches of one rank, deterministic and resumable (see the module docstring).

    Args:
        source: a map-style reader (``__len__`` + ``__getitem__`` returning item dicts, e.g.
            ``tasks.data.VQAv2`` with its transform) or an iterable one (``ImageTextShards``, split
            across ranks by itself).
        collate: ``collate(items, generator) -> batch dict``; ``generator`` is a CPU
            ``torch.Generator`` seeded per step (the global RNGs are seeded too, for timm's mixup).
        batch_size: samples per step on this rank.
        seed: the seed everything derives from (the trainer's ``cfg.seed``).
        rank, world_size: this process's place.
        shuffle: shuffle a map-style source each epoch (else file order).
        item_fn: applied to each item after reading, under the item's seeded RNGs (e.g.
            :class:`TransformFields` for readers without a transform).
        num_workers: DataLoader worker processes computing upcoming batches of a map-style source
            (0: in this process). The batches are the same either way.
        step_key: if set, the batch holds ``step // steps_per_update`` under this key (the optimizer
            step, e.g. captioning's ``global_step``).
        steps_per_update: batches per optimizer step (the trainer's ``grad_accum_steps``).
        shuffle_buffer: seeded shuffle buffer of an iterable source (0/1: stream order).
        name: how errors name the data.
    """

    def __init__(
        self,
        source: Any,
        collate: Callable[..., dict[str, Any]],
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        item_fn: Callable[[Any], Any] | None = None,
        num_workers: int = 0,
        step_key: str | None = None,
        steps_per_update: int = 1,
        shuffle_buffer: int = 0,
        name: str = "",
    ):
        if batch_size < 1 or steps_per_update < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1, steps_per_update >= 1, num_workers >= 0; got {batch_size}, "
                             f"{steps_per_update}, {num_workers}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.source = source
        self.collate = collate
        self.batch_size = int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.shuffle = shuffle
        self.item_fn = item_fn
        self.num_workers = int(num_workers)
        self.step_key = step_key
        self.steps_per_update = int(steps_per_update)
        self.name = name or type(source).__name__
        self.map_style = _is_map_style(source)
        self.step = 0
        self._order: tuple[int, np.ndarray] | None = None
        self._iterator: Iterator[tuple[int, dict[str, Any]]] | None = None
        if self.map_style:
            self.num_items = len(source)
            per_rank = self.num_items // self.world_size
            self.batches_per_epoch = per_rank // self.batch_size
            if self.batches_per_epoch == 0:
                raise DataError(
                    f"{self.name} has {self.num_items} items: not enough for one batch of {self.batch_size} on each "
                    f"of {self.world_size} rank(s); lower batch_size or use a larger split"
                )
            self.reader = None
        else:
            if num_workers:
                raise ValueError("num_workers is for map-style readers; an iterable reader streams in this process")
            from tasks.pretrain_data import _StreamReader

            self.num_items = None
            self.batches_per_epoch = None
            self.reader = _StreamReader("pair", source, self.seed, self.rank, self.world_size, shuffle,
                                        shuffle_buffer)

    @property
    def samples_per_batch(self) -> int:
        return self.batch_size

    @property
    def epoch(self) -> int:
        """The epoch the next batch comes from."""
        if self.map_style:
            return self.step // self.batches_per_epoch
        return self.reader.epoch

    # -- the plan (map-style) ---------------------------------------------------------------------
    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's item indices in ``epoch``, in reading order."""
        if self._order is None or self._order[0] != epoch:
            count = self.num_items
            order = np.random.default_rng([self.seed, epoch]).permutation(count) if self.shuffle else np.arange(count)
            self._order = (epoch, order[self.rank::self.world_size][: count // self.world_size])
        return self._order[1]

    def indices_at(self, step: int) -> list[int]:
        """The item indices of batch ``step``."""
        epoch, index = divmod(step, self.batches_per_epoch)
        start = index * self.batch_size
        return self.epoch_indices(epoch)[start:start + self.batch_size].tolist()

    def _item(self, read: Callable[[], Any], step: int, slot: int) -> Any:
        with seeded_global_rngs(derive_seed(self.seed, self.rank, _ITEM, step, slot)):
            item = read()
            return self.item_fn(item) if self.item_fn is not None else item

    def _collate(self, items: list[Any], step: int) -> dict[str, Any]:
        seed = derive_seed(self.seed, self.rank, _BATCH, step)
        generator = torch.Generator().manual_seed(seed)
        with seeded_global_rngs(seed):
            batch = self.collate(items, generator)
        if self.step_key is not None:
            batch[self.step_key] = step // self.steps_per_update
        return batch

    def batch_at(self, step: int) -> dict[str, Any]:
        """Batch ``step`` of this rank (map-style sources), without moving the position."""
        if not self.map_style:
            raise TypeError(f"{self.name} is an iterable reader: its batches come in order from next_batch()")
        items = [self._item(lambda i=index: self.source[i], step, slot) for slot, index in enumerate(self.indices_at(step))]
        return self._collate(items, step)

    # -- the trainer's interface ------------------------------------------------------------------
    def next_batch(self) -> dict[str, Any]:
        if not self.map_style:
            raw = self.reader.take(self.batch_size)
            batch = self._collate([self._item(lambda r=r: r, self.step, slot) for slot, r in enumerate(raw)], self.step)
        elif self.num_workers:
            if self._iterator is None:
                loader = DataLoader(_PlannedBatches(self), batch_size=None, sampler=_CountFrom(self.step),
                                    num_workers=self.num_workers, collate_fn=_first)
                self._iterator = iter(loader)
            step, batch = next(self._iterator)
            if step != self.step:
                raise RuntimeError(f"worker batch {step} arrived at step {self.step}")
        else:
            batch = self.batch_at(self.step)
        self.step += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The data position (the step; for an iterable reader also its epoch and samples read) and what it depends on."""
        state = {
            "version": STATE_VERSION, "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
            "batch_size": self.batch_size, "num_items": self.num_items, "step": self.step,
        }
        if self.reader is not None:
            state["reader"] = self.reader.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Continue from ``state``; with ``strict`` refuse one whose seed, rank, world size, batch size or
        number of items differs (its batches would not be those of the saved run)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data state version {state.get('version')!r}, expected {STATE_VERSION}")
        if strict:
            mine = self.state_dict()
            differ = [k for k in ("seed", "rank", "world_size", "batch_size", "num_items") if state.get(k) != mine[k]]
            if differ:
                details = ", ".join(f"{k}: saved {state.get(k)!r} vs now {mine[k]!r}" for k in differ)
                raise ValueError(f"data state does not match {self.name} ({details}); load with strict=False to "
                                 "continue anyway (not bit-identical)")
        self.step = int(state["step"])
        if self.reader is not None:
            if "reader" not in state:
                raise KeyError("data state has no 'reader' position for this iterable reader")
            self.reader.load_state_dict(state["reader"])
        self._iterator = None  # workers restart at the new step


# ------------------------------------------------------------------------------------ evaluation
def eval_batches(
    dataset: Any,
    collate: Callable[[list[Any]], dict[str, Any]],
    batch_size: int,
    *,
    indices: Sequence[int] | None = None,
    seed: int = 0,
) -> Iterator[dict[str, Any]]:
    """Batches of ``dataset`` (or of its ``indices``) in order; item ``i`` is read under RNGs seeded
    from ``(seed, i)``, which only matters for a random (training) transform on a validation split."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = list(range(len(dataset))) if indices is None else list(indices)
    for start in range(0, len(order), batch_size):
        items = []
        for index in order[start:start + batch_size]:
            with seeded_global_rngs(derive_seed(seed, _EVAL, index)):
                items.append(dataset[index])
        yield collate(items)


IMAGE_FIELDS = ("image", "image2", "image_path", "image2_path")


def shuffled_image_sources(groups: Sequence[Any], seed: int) -> list[int]:
    """For each item, the item whose images it takes in the image-shuffled control.

    ``groups[i]`` is what item ``i``'s images are (a VQA question's image id; a caption's image): the
    groups are permuted among themselves without a fixed point (a shuffled order, each group mapped to
    the next), so no item keeps its own image, also when many items share one.
    """
    first: dict[Any, int] = {}
    for index, group in enumerate(groups):
        first.setdefault(group, index)
    distinct = list(first)
    if len(distinct) < 2:
        raise ValueError("the image-shuffled control needs at least two different images in the split")
    order = np.random.default_rng(seed).permutation(len(distinct))
    target = {distinct[order[k]]: distinct[order[(k + 1) % len(order)]] for k in range(len(order))}
    return [first[target[group]] for group in groups]


class ImagesFrom(Dataset):
    """An evaluation split whose items take their images from other items (``sources[i]``), texts
    and labels kept: the image-shuffled control. Other attributes are the wrapped reader's."""

    def __init__(self, dataset: Any, sources: Sequence[int]):
        if len(sources) != len(dataset):
            raise ValueError(f"{len(sources)} image sources for {len(dataset)} items")
        self.dataset, self.sources = dataset, list(sources)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item, donor = dict(self.dataset[index]), self.dataset[self.sources[index]]
        item.update({key: donor[key] for key in IMAGE_FIELDS if key in donor})
        return item

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["dataset"], name)


def first_items(num_items: int, limit: int | None) -> list[int]:
    """Indices of an evaluation's items: the first ``limit`` (all of them without a limit)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of items (or None for all), got {limit!r}")
    return list(range(num_items if limit is None else min(limit, num_items)))


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` under ``torch.no_grad()``; the training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)
