"""Deterministic, resumable pretraining batches for BEiT-3 masked data modeling and VLMo's stages.

:class:`PretrainingData` turns up to three sources -- images, texts, image-text pairs (the readers of
:mod:`tasks.data.pretraining`, or plain Python lists) -- into batches of the keys that
:mod:`tasks.pretrain_mdm` and :mod:`tasks.pretrain_vlmo` read:

- **image**: ``image`` float (B,3,H,W), normalised; ``image_mask`` bool (B,N), block-wise, 40%;
  ``image_codes`` long (B,N), the visual tokenizer's codes of the same augmented view;
- **text**: ``text_ids`` long (B,L) after BERT corruption; ``text_padding_mask`` long (B,L), 1 = pad;
  ``text_labels`` long (B,L), the original id where masked (15%), else -100;
- **pair**: ``pair_image``; ``pair_text_ids`` (corrupted, 50%); ``pair_padding_mask``;
  ``pair_text_labels``; with ``pair_image_mask_ratio > 0`` also ``pair_image_mask`` and
  ``pair_image_codes``;
- **always**: ``model_seed``, a long scalar: a per-step, per-rank seed for randomness the model draws
  itself (VLMo's hard negatives); ``num_masked``, a dict of Python ints: the True count of each mask
  present (``image_mask``, ``pair_image_mask``; ``text_labels``/``pair_text_labels`` != -100), counted
  on the host so the model selects the masked positions without a device read.

B is the stream's batch size, N the number of patches, L the text length.

Determinism: nothing reads a global RNG. Sample order comes from ``numpy`` generators seeded by
``(seed, stream, epoch)``; masking, augmentation and ``model_seed`` from generators seeded by
``(seed, rank, step, stream)``. The data position -- per stream the epoch and the samples consumed in
it, plus the step -- is all the state there is, so after ``load_state_dict(state_dict())`` the next
batches are bit-identical to those of an uninterrupted run.

Sources and ranks: a list, a tuple or any map-style dataset (``__len__`` + ``__getitem__``, e.g.
``ImageFolderSource``) is shuffled per epoch and split here: rank ``r`` reads ``order[r::world]``,
``len // world`` samples an epoch. Iterable sources (``ImageTextShards``, ``TextCorpus``) split
themselves across ranks (their own ``rank``/``world_size``); their stream order is kept, optionally
mixed by a seeded ``shuffle_buffer``, and ``set_epoch`` is called when they have it. Resuming an
iterable source re-reads the current epoch up to the saved position (exact, but it costs a pass over
what was already read; for WebDataset shards that includes decoding the images).

Items: images are PIL images, image tensors (uint8 or float in [0, 1]) or dicts with ``"image"``;
texts are strings or dicts with ``"text"``; pairs are ``(image, text)`` tuples or dicts with both.
A text document longer than ``max_text_len - 2`` tokens is cut into consecutive chunks, each one
sample (``<s> chunk </s>``). Captions are truncated to ``max_pair_text_len``.

Paper settings (BEiT-3 Table 11) are the defaults: 40% block-wise image masking, 15% of text-only
tokens, 50% of pair text tokens, images through RandomResizedCrop + horizontal flip + colour jitter
0.4. Choices of ours (the paper is silent): crop scale (0.08, 1) for images (BEiT) and (0.5, 1) for
pairs (BEiT-3's VL fine-tuning crop, so the caption still describes the crop); normalisation mean =
std = 0.5 as BEiT-3's VL tasks; text length 128, caption length 64; the visual tokenizer sees the
same augmented view in [0, 1] (BEiT-v2), resized to its own patch grid when its patch size differs.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import IterableDataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from tasks.data.images import DataError
from tasks.data.masking import (
    IGNORE_INDEX,
    IMAGE_MASK_RATIO,
    PAIR_MASK_PROB,
    TEXT_ONLY_MASK_PROB,
    BlockMaskGenerator,
    mask_text,
)
from tasks.distributed import get_rank, get_world_size

__all__ = ["STREAMS", "PretrainImageTransform", "PretrainingData"]

STREAMS = ("image", "text", "pair")
VL_MEAN = (0.5, 0.5, 0.5)
VL_STD = (0.5, 0.5, 0.5)
_MODEL_SEED_STREAM = len(STREAMS)  # the stream id that derives ``model_seed``
STATE_VERSION = 1


# ------------------------------------------------------------------------------------------ transform
class PretrainImageTransform:
    """RandomResizedCrop → horizontal flip → colour jitter, drawing from an explicit generator.

    The ops are torchvision's (``v2.functional``); only the parameter draws are done here, with the
    algorithms of ``RandomResizedCrop.get_params`` (10 tries, then a centre crop clamped to
    ``ratio``) and ``ColorJitter`` (brightness, contrast, saturation factors uniform in
    ``[1 - j, 1 + j]``, applied in a random order; no hue, as BEiT's pretraining).

    Args:
        img_size: output side.
        scale: range of the crop's area fraction.
        ratio: range of the crop's aspect ratio (width / height).
        hflip: probability of a horizontal flip.
        color_jitter: jitter strength ``j``; 0 disables it.
        interpolation: resize interpolation.

    Call with ``(image, generator)``: a PIL image or a (3,H,W) tensor (uint8, or float in [0, 1]);
    returns a float (3, img_size, img_size) tensor in [0, 1].
    """

    def __init__(
        self,
        img_size: int,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        color_jitter: float = 0.4,
        interpolation: InterpolationMode = InterpolationMode.BICUBIC,
    ):
        if img_size <= 0:
            raise ValueError(f"img_size must be positive, got {img_size}")
        if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], got {scale}, {ratio}")
        self.img_size = img_size
        self.scale = scale
        self.ratio = ratio
        self.hflip = hflip
        self.color_jitter = color_jitter
        self.interpolation = interpolation

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(img_size={self.img_size}, scale={self.scale}, ratio={self.ratio}, "
                f"hflip={self.hflip}, color_jitter={self.color_jitter})")

    def crop_params(self, height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of a random crop (torchvision's ``RandomResizedCrop`` algorithm)."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            draws = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
            target_area = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * draws[0])
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: Image.Image | torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = _to_tensor01(image)
        top, left, h, w = self.crop_params(x.shape[-2], x.shape[-1], generator)
        x = TF.resized_crop(x, top, left, h, w, [self.img_size, self.img_size],
                            interpolation=self.interpolation, antialias=True).clamp_(0.0, 1.0)
        if float(torch.rand((), generator=generator)) < self.hflip:
            x = TF.horizontal_flip(x)
        if self.color_jitter > 0:
            low, high = max(0.0, 1.0 - self.color_jitter), 1.0 + self.color_jitter
            ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
            factors = (low + (high - low) * torch.rand(3, generator=generator, dtype=torch.float64)).tolist()
            for index in torch.randperm(3, generator=generator).tolist():
                x = ops[index](x, factors[index])
        return x


def _to_tensor01(image: Any) -> torch.Tensor:
    if isinstance(image, Image.Image):
        image = TF.pil_to_tensor(image.convert("RGB"))
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise DataError(f"expected a PIL image or a (3, H, W) tensor, got {type(image).__name__} "
                        f"{tuple(image.shape) if isinstance(image, torch.Tensor) else ''}")
    if image.dtype == torch.uint8:
        return image.float().div_(255.0)
    return image.float()


# ------------------------------------------------------------------------------------------- sources
def _describe(source: Any) -> str:
    for attribute in ("root", "urls", "paths"):
        if hasattr(source, attribute):
            return f"{type(source).__name__}({attribute}={getattr(source, attribute)!r})"
    size = f" of {len(source)} items" if hasattr(source, "__len__") else ""
    return f"{type(source).__name__}{size}"


def _is_map_style(source: Any) -> bool:
    return not isinstance(source, IterableDataset) and hasattr(source, "__len__") and hasattr(source, "__getitem__")


class _StreamReader:
    """The sample stream of one source for one rank, as (epoch, position) -- all its state."""

    def __init__(self, stream: str, source: Any, seed: int, rank: int, world_size: int, shuffle: bool,
                 shuffle_buffer: int, expand: Callable[[Any], list[Any]] | None = None):
        self.stream = stream
        self.source = source
        self.name = f"{stream} source {_describe(source)}"
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle, self.shuffle_buffer = shuffle, shuffle_buffer
        self.expand = expand
        self.map_style = _is_map_style(source)
        if self.map_style:
            if len(source) // world_size == 0:
                raise DataError(f"the {self.name} has {len(source)} samples, fewer than the {world_size} ranks: "
                                "give it more samples")
        elif not hasattr(source, "__iter__"):
            raise TypeError(f"the {self.name} is neither a sequence/map-style dataset nor iterable")
        self.epoch = 0
        self.position = 0
        self._iterator: Iterator[Any] | None = None

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, STREAMS.index(self.stream), epoch, self.rank])

    def _epoch_samples(self, epoch: int, skip: int) -> Iterator[Any]:
        if self.map_style:
            count = len(self.source)
            order = np.random.default_rng([self.seed, STREAMS.index(self.stream), epoch]).permutation(count) \
                if self.shuffle else np.arange(count)
            mine = order[self.rank::self.world_size][: count // self.world_size].tolist()
            if self.expand is None:  # one sample per item: skip without loading
                yield from (self.source[index] for index in mine[skip:])
                return
            items: Iterator[Any] = (self.source[index] for index in mine)
        else:
            if hasattr(self.source, "set_epoch"):
                self.source.set_epoch(epoch)
            items = iter(self.source)
            if self.shuffle_buffer > 1:
                items = _buffer_shuffle(items, self.shuffle_buffer, self._rng(epoch))
        if self.expand is not None:
            items = (sample for item in items for sample in self.expand(item))
        yield from islice(items, skip, None)

    def take(self, count: int) -> list[Any]:
        samples: list[Any] = []
        while len(samples) < count:
            if self._iterator is None:
                self._iterator = self._epoch_samples(self.epoch, self.position)
            sample = next(self._iterator, _END)
            if sample is _END:
                if self.position == 0:
                    raise DataError(f"the {self.name} yielded no samples in epoch {self.epoch} (rank {self.rank}/"
                                    f"{self.world_size}): check its files, or that it holds non-empty records")
                self.epoch += 1
                self.position = 0
                self._iterator = None
                continue
            samples.append(sample)
            self.position += 1
        return samples

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._iterator = None  # re-opened (and fast-forwarded) on the next take


_END = object()


def _buffer_shuffle(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """Seeded shuffle buffer: fill ``size`` items, then emit a random one per new item."""
    buffer: list[Any] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        index = int(rng.integers(size))
        yield buffer[index]
        buffer[index] = item
    while buffer:
        yield buffer.pop(int(rng.integers(len(buffer))))


def _field(item: Any, key: str, position: int, stream: str) -> Any:
    if isinstance(item, Mapping):
        if key not in item:
            raise DataError(f"{stream} item has no {key!r} (keys: {sorted(item)})")
        return item[key]
    if stream == "pair":
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise DataError(
                f"a pair item must be (image, text) or a dict with 'image' and 'text', got {type(item).__name__}"
            )
        return item[position]
    return item


def _module_device(module: Any) -> torch.device:
    if isinstance(module, torch.nn.Module):
        for tensor in list(module.parameters()) + list(module.buffers()):
            return tensor.device
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------- data
class PretrainingData:
    """Batches of images, texts and image-text pairs for one rank, deterministic and resumable.

    Args:
        images, texts, pairs: the sources (see the module docstring); ``None`` for a stream not used.
        text_tokenizer: a ``backbones.tokenizers.TextTokenizer`` (``encode``, ``segment``, special ids).
        visual_tokenizer: gives the MIM targets (``get_codebook_indices`` of [0, 1] images,
            ``patch_size``); needed by the image stream and by pair image masking.
        img_size, patch_size: the model's input size and patch size (the mask grid).
        batch_size: samples per stream per step: an int multiplied by ``mixture``, or a mapping
            ``{"image": .., "text": .., "pair": ..}``.
        mixture: images : texts : pairs per step, multiplying an int ``batch_size`` (Table 11: 1:1:1).
        streams: the streams to produce (e.g. ``("image",)`` for VLMo's stage 1); default: every
            stream with a source and a positive batch size.
        max_text_len, max_pair_text_len: text lengths with ``<s>``/``</s>``.
        text_mask_prob, pair_mask_prob: fraction of text tokens masked in texts and in pairs.
        image_mask_ratio: fraction of patches masked block-wise in the image stream.
        pair_image_mask_ratio: fraction of a pair's patches masked (default 0: pairs mask text only).
        image_transform, pair_transform: callables ``(image, generator) -> float (3,S,S) in [0, 1]``;
            default :class:`PretrainImageTransform` with crop scale (0.08, 1) and (0.5, 1).
        mean, std: normalisation of the model input.
        shuffle: shuffle map-style sources each epoch.
        shuffle_buffer: size of the seeded shuffle buffer for iterable sources (0/1: off).
        seed: the seed everything random derives from.
        rank, world_size: this process's place (default: from ``torch.distributed``).
    """

    def __init__(
        self,
        *,
        images: Any = None,
        texts: Any = None,
        pairs: Any = None,
        text_tokenizer: Any = None,
        visual_tokenizer: Any = None,
        img_size: int = 224,
        patch_size: int = 16,
        batch_size: int | Mapping[str, int] = 8,
        mixture: Sequence[int] = (1, 1, 1),
        streams: Sequence[str] | None = None,
        max_text_len: int = 128,
        max_pair_text_len: int = 64,
        text_mask_prob: float = TEXT_ONLY_MASK_PROB,
        pair_mask_prob: float = PAIR_MASK_PROB,
        image_mask_ratio: float = IMAGE_MASK_RATIO,
        pair_image_mask_ratio: float = 0.0,
        image_transform: Callable[[Any, torch.Generator], torch.Tensor] | None = None,
        pair_transform: Callable[[Any, torch.Generator], torch.Tensor] | None = None,
        mean: Sequence[float] = VL_MEAN,
        std: Sequence[float] = VL_STD,
        shuffle: bool = True,
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        sources = {"image": images, "text": texts, "pair": pairs}
        self.batch_sizes = self._batch_sizes(batch_size, mixture)
        if streams is None:
            streams = [s for s in STREAMS if sources[s] is not None and self.batch_sizes[s] > 0]
        unknown = [s for s in streams if s not in STREAMS]
        if unknown:
            raise ValueError(f"unknown stream(s) {unknown}; streams are {STREAMS}")
        self.streams = tuple(s for s in STREAMS if s in streams)
        if not self.streams:
            raise ValueError("no stream to produce: give images, texts and/or pairs with a positive batch size")
        for stream in self.streams:
            if sources[stream] is None:
                raise ValueError(f"stream {stream!r} is requested but its source ({stream}s=...) is None")
            if self.batch_sizes[stream] <= 0:
                raise ValueError(f"stream {stream!r} is requested but its batch size is {self.batch_sizes[stream]}")
        if text_tokenizer is None and {"text", "pair"} & set(self.streams):
            raise ValueError("the text and pair streams need text_tokenizer (a TextTokenizer)")
        needs_codes = "image" in self.streams or ("pair" in self.streams and pair_image_mask_ratio > 0)
        if needs_codes and visual_tokenizer is None:
            raise ValueError("masked image modeling needs visual_tokenizer (get_codebook_indices) for its targets")
        if max_text_len < 3 or max_pair_text_len < 3:
            raise ValueError(f"text lengths must be >= 3 (<s>, a token, </s>), got {max_text_len}, {max_pair_text_len}")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")

        self.text_tokenizer = text_tokenizer
        self.visual_tokenizer = visual_tokenizer
        self.img_size, self.patch_size = img_size, patch_size
        self.grid = (img_size // patch_size, img_size // patch_size)
        self.max_text_len, self.max_pair_text_len = max_text_len, max_pair_text_len
        self.text_mask_prob, self.pair_mask_prob = text_mask_prob, pair_mask_prob
        self.image_masks = BlockMaskGenerator(self.grid, mask_ratio=image_mask_ratio)
        self.pair_image_mask_ratio = pair_image_mask_ratio
        self.pair_image_masks = BlockMaskGenerator(self.grid, mask_ratio=pair_image_mask_ratio) \
            if pair_image_mask_ratio > 0 else None
        self.image_transform = image_transform or PretrainImageTransform(img_size, scale=(0.08, 1.0))
        self.pair_transform = pair_transform or PretrainImageTransform(img_size, scale=(0.5, 1.0))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.seed = int(seed)
        self.rank = get_rank() if rank is None else int(rank)
        self.world_size = get_world_size() if world_size is None else int(world_size)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={self.rank}, world_size={self.world_size}")

        self.readers = {
            stream: _StreamReader(stream, sources[stream], self.seed, self.rank, self.world_size, shuffle,
                                  shuffle_buffer, expand=self._text_chunks if stream == "text" else None)
            for stream in self.streams
        }
        self.step = 0
        self._stats = {"images": 0, "texts": 0, "pairs": 0, "text_tokens": 0, "pair_text_tokens": 0}

    @property
    def samples_per_batch(self) -> int:
        """Samples in one step, over every stream produced (what the trainer's samples/s counts)."""
        return sum(self.batch_sizes[s] for s in self.streams)

    @staticmethod
    def _batch_sizes(batch_size: int | Mapping[str, int], mixture: Sequence[int]) -> dict[str, int]:
        if isinstance(batch_size, Mapping):
            unknown = sorted(set(batch_size) - set(STREAMS))
            if unknown:
                raise ValueError(f"batch_size has unknown stream(s) {unknown}; streams are {STREAMS}")
            return {s: int(batch_size.get(s, 0)) for s in STREAMS}
        if len(mixture) != len(STREAMS) or any(int(m) < 0 for m in mixture):
            raise ValueError(f"mixture must be 3 non-negative ints (images, texts, pairs), got {tuple(mixture)}")
        return {s: int(batch_size) * int(m) for s, m in zip(STREAMS, mixture)}

    # -- samples ---------------------------------------------------------------------------------
    def _text_chunks(self, item: Any) -> list[list[int]]:
        ids = self.text_tokenizer.encode(_field(item, "text", 0, "text"))
        body = self.max_text_len - 2
        return [ids[start:start + body] for start in range(0, len(ids), body)]

    def _generators(self, stream: int) -> tuple[np.random.Generator, torch.Generator]:
        numpy_seed, torch_seed = np.random.SeedSequence([self.seed, self.rank, self.step, stream]).spawn(2)
        generator = torch.Generator().manual_seed(int(torch_seed.generate_state(1, dtype=np.uint64)[0] >> 1))
        return np.random.default_rng(numpy_seed), generator

    def _codes(self, images01: torch.Tensor) -> torch.Tensor:
        tokenizer = self.visual_tokenizer
        token_patch = int(getattr(tokenizer, "patch_size", self.patch_size))
        view = images01
        if token_patch != self.patch_size:
            size = [self.grid[0] * token_patch, self.grid[1] * token_patch]
            view = F.interpolate(view, size=size, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 1)
        with torch.no_grad():
            codes = tokenizer.get_codebook_indices(view.to(_module_device(tokenizer))).cpu().long()
        expected = (images01.shape[0], self.grid[0] * self.grid[1])
        if tuple(codes.shape) != expected:
            raise ValueError(f"the visual tokenizer gave codes of shape {tuple(codes.shape)}, expected {expected} "
                             f"(one per {self.patch_size}px patch of {self.img_size}px images)")
        # Checked here, on the host, where the codes are made: the model reads none back from the device.
        num_codes = getattr(tokenizer, "num_codes", None)
        if codes.numel() and (int(codes.min()) < 0 or (num_codes is not None and int(codes.max()) >= num_codes)):
            raise ValueError(f"the visual tokenizer gave codes in [{int(codes.min())}, {int(codes.max())}], outside "
                             f"its codebook of {num_codes}: check its checkpoint")
        return codes

    def _images(self, items: list[Any], stream: str, transform: Callable, generator: torch.Generator) -> torch.Tensor:
        return torch.stack([transform(_field(item, "image", 0, stream), generator) for item in items])

    def _normalize(self, images01: torch.Tensor) -> torch.Tensor:
        return (images01 - self.mean) / self.std

    def _masks(self, generator: BlockMaskGenerator, count: int, rng: np.random.Generator) -> torch.Tensor:
        return torch.from_numpy(np.stack([generator(rng).reshape(-1) for _ in range(count)]))

    def _text_batch(self, token_lists: list[list[int]], max_len: int, mask_prob: float, generator: torch.Generator):
        tok = self.text_tokenizer
        rows = [tok.segment(ids, max_len) for ids in token_lists]
        ids = torch.tensor([r[0] for r in rows], dtype=torch.long)
        padding = torch.tensor([r[1] for r in rows], dtype=torch.long)
        inputs, labels, _ = mask_text(ids, padding, mask_prob=mask_prob, mask_id=tok.mask_id, vocab_size=tok.vocab_size,
                                      generator=generator, special_ids=(tok.bos_id, tok.pad_id, tok.eos_id))
        return inputs, padding, labels

    # -- batches ---------------------------------------------------------------------------------
    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next step's batch (keys in the module docstring); advances the data position."""
        batch: dict[str, torch.Tensor] = {}
        if "image" in self.streams:
            items = self.readers["image"].take(self.batch_sizes["image"])
            rng, generator = self._generators(STREAMS.index("image"))
            images01 = self._images(items, "image", self.image_transform, generator)
            batch["image"] = self._normalize(images01)
            batch["image_mask"] = self._masks(self.image_masks, len(items), rng)
            batch["image_codes"] = self._codes(images01)
            self._stats["images"] += len(items)
        if "text" in self.streams:
            chunks = self.readers["text"].take(self.batch_sizes["text"])
            _, generator = self._generators(STREAMS.index("text"))
            ids, padding, labels = self._text_batch(chunks, self.max_text_len, self.text_mask_prob, generator)
            batch.update(text_ids=ids, text_padding_mask=padding, text_labels=labels)
            self._stats["texts"] += len(chunks)
            self._stats["text_tokens"] += int((padding == 0).sum())
        if "pair" in self.streams:
            items = self.readers["pair"].take(self.batch_sizes["pair"])
            rng, generator = self._generators(STREAMS.index("pair"))
            images01 = self._images(items, "pair", self.pair_transform, generator)
            captions = [self.text_tokenizer.encode(_field(item, "text", 1, "pair")) for item in items]
            ids, padding, labels = self._text_batch(captions, self.max_pair_text_len, self.pair_mask_prob, generator)
            batch.update(pair_image=self._normalize(images01), pair_text_ids=ids, pair_padding_mask=padding,
                         pair_text_labels=labels)
            if self.pair_image_masks is not None:
                batch["pair_image_mask"] = self._masks(self.pair_image_masks, len(items), rng)
                batch["pair_image_codes"] = self._codes(images01)
            self._stats["pairs"] += len(items)
            self._stats["pair_text_tokens"] += int((padding == 0).sum())
        model_rng, _ = self._generators(_MODEL_SEED_STREAM)
        batch["model_seed"] = torch.tensor(int(model_rng.integers(2**62)), dtype=torch.long)
        # Counted on the host: the model selects the masked positions without reading the device.
        batch["num_masked"] = {key: int(batch[key].sum()) for key in ("image_mask", "pair_image_mask") if key in batch}
        batch["num_masked"] |= {key: int((batch[key] != IGNORE_INDEX).sum())
                                for key in ("text_labels", "pair_text_labels") if key in batch}
        self.step += 1
        return batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield self.next_batch()

    # -- position and counts ---------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """What this rank has produced: ``steps``, ``images``, ``texts`` (samples), ``pairs``,
        ``text_tokens`` (non-pad tokens of texts, with ``<s>``/``</s>``), ``pair_text_tokens`` and the
        current epoch of each stream (``{stream}_epoch``). Sum over ranks for the totals of Table 3."""
        epochs = {f"{stream}_epoch": reader.epoch for stream, reader in self.readers.items()}
        return {"steps": self.step, **self._stats, **epochs}

    def state_dict(self) -> dict[str, Any]:
        """The data position: step, per-stream epoch and samples consumed, counts, and what it depends on."""
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "streams": list(self.streams),
            "batch_sizes": {s: self.batch_sizes[s] for s in self.streams},
            "step": self.step,
            "readers": {stream: reader.state_dict() for stream, reader in self.readers.items()},
            "stats": dict(self._stats),
        }

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> None:
        """Continue from ``state``; with ``strict`` refuse a state whose seed, rank, world size,
        streams or batch sizes differ (the batches would not be those of the saved run)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data state version {state.get('version')!r}, expected {STATE_VERSION}")
        if strict:
            mine = self.state_dict()
            differ = [k for k in ("seed", "rank", "world_size", "streams", "batch_sizes") if state[k] != mine[k]]
            if differ:
                details = ", ".join(f"{k}: saved {state[k]!r} vs now {mine[k]!r}" for k in differ)
                raise ValueError(f"data state does not match this PretrainingData ({details}); "
                                 "load with strict=False to continue anyway (not bit-identical)")
        missing = [s for s in self.streams if s not in state["readers"]]
        if missing:
            raise KeyError(f"data state has no position for stream(s) {missing}")
        self.step = int(state["step"])
        for stream, reader in self.readers.items():
            reader.load_state_dict(state["readers"][stream])
        self._stats.update({k: int(v) for k, v in state["stats"].items()})


# ------------------------------------------------------------------------------ from a data config
# Defaults follow the benchmark world's layout, which mirrors the real sources (an IN-21K-style image
# folder, a text corpus, WebDataset shards of pairs, a SentencePiece model).
DATA_DEFAULTS: dict[str, Any] = {
    "images": "in21k/train",
    "texts": ["text/corpus.txt"],
    "pairs": "pairs/pairs-*.tar",
    "tokenizer": "spm/world.model",
    "visual_tokenizer": {"type": "codebook", "num_codes": 256, "seed": 0},
    "batch_size": 8,
    "mixture": (1, 1, 1),
    "streams": None,
    "max_text_len": 64,
    "max_pair_text_len": 32,
    "text_mask_prob": 0.15,
    "pair_mask_prob": 0.5,
    "image_mask_ratio": 0.4,
    "pair_image_mask_ratio": 0.0,
    "shuffle_buffer": 0,
    "augment": "official",  # official | label_safe (pretraining_transforms)
    "skip_bad": False,  # skip (and count, data.num_skipped) malformed records instead of raising
}


def pretraining_transforms(img_size: int, augment: str) -> tuple[PretrainImageTransform, PretrainImageTransform]:
    """``(image_transform, pair_transform)`` of an augmentation policy (``tasks.data.transforms``).

    ``official``: crop scale (0.08, 1) for images, (0.5, 1) for pairs, flip and colour jitter 0.4.
    ``label_safe``: the whole (square) image, no colour jitter; images keep the flip, pairs do not
    (their captions say left and right).
    """
    from tasks.data.transforms import check_augment

    if check_augment(augment) == "label_safe":
        whole = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), color_jitter=0.0)
        return PretrainImageTransform(img_size, hflip=0.5, **whole), PretrainImageTransform(img_size, hflip=0.0, **whole)
    return PretrainImageTransform(img_size, scale=(0.08, 1.0)), PretrainImageTransform(img_size, scale=(0.5, 1.0))


def _under(root: Any, path: str | Any) -> Any:
    from pathlib import Path

    path = Path(path)
    return path if path.is_absolute() else Path(root) / path


def _load_codebook_tokenizer(spec: Mapping[str, Any], root: Any, image_dir: Any, img_size: int, patch_size: int,
                             skip_bad: bool = False):
    """The fitted codebook tokenizer at ``spec['path']``; fitted on the image folder (and cached) if absent,
    reading it as the image stream does (``ImageFolderSource``: bad files named, or left out with ``skip_bad``)."""
    from pathlib import Path

    from backbones.tokenizers import PatchCodebookTokenizer
    from tasks.atomic import atomic_path
    from tasks.data.pretraining import ImageFolderSource

    num_codes = int(spec.get("num_codes", 256))
    seed = int(spec.get("seed", 0))
    default = f"visual_tokenizer/codebook-k{num_codes}-p{patch_size}-s{img_size}-seed{seed}.pt"
    path = Path(_under(root, spec.get("path", default)))
    if not path.is_file():
        source = ImageFolderSource(image_dir, skip_bad=skip_bad)

        def batches(size: int = 64):
            for start in range(0, len(source), size):
                chunk = [TF.to_image(source[i]["image"]) for i in range(start, min(start + size, len(source)))]
                chunk = [TF.resize(img, [img_size, img_size], antialias=True) for img in chunk]
                yield torch.stack([TF.to_dtype(img, torch.float32, scale=True) for img in chunk])

        tokenizer = PatchCodebookTokenizer.fit(batches(), num_codes=num_codes, patch_size=patch_size, seed=seed)
        with atomic_path(path) as tmp:  # a concurrent or interrupted fit never leaves half a file
            tokenizer.save(tmp)
    return PatchCodebookTokenizer.load(path)


def build_pretraining_data(
    data_config: Mapping[str, Any],
    *,
    model: Any,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    streams: Sequence[str] | None = None,
) -> PretrainingData:
    """:class:`PretrainingData` from a data config (keys: :data:`DATA_DEFAULTS` plus ``root``).

    Paths are relative to ``root`` (the data-set root; the harness resolves ``world:<profile>`` to the
    benchmark world). ``visual_tokenizer`` is ``{"type": "vqkd", "checkpoint": ...}`` (BEiT-v2, the
    paper's targets) or ``{"type": "codebook", "num_codes": K}`` (fitted on the image folder on first
    use and cached under ``root/visual_tokenizer/``). The model's vocabulary and MIM head must fit the
    tokenizers: checked here, with an error naming both sizes.
    """
    from backbones.tokenizers import TextTokenizer, build_visual_tokenizer
    from tasks.data.pretraining import ImageFolderSource, ImageTextShards, TextCorpus

    unknown = sorted(set(data_config) - set(DATA_DEFAULTS) - {"root"})
    if unknown:
        raise ValueError(f"unknown pretraining data key(s) {unknown}; valid: root, {', '.join(DATA_DEFAULTS)}")
    cfg = {**DATA_DEFAULTS, **data_config}
    if not cfg.get("root"):
        raise ValueError("the pretraining data config needs 'root' (the data-set root)")
    root = cfg["root"]
    config = model.beit3.config
    img_size, patch_size = config.image_hw[0], config.patch_size
    streams = tuple(streams or cfg["streams"] or ("image", "text", "pair"))

    text_tokenizer = TextTokenizer(_under(root, cfg["tokenizer"]))
    if config.vocab_size < text_tokenizer.vocab_size:
        raise ValueError(
            f"the model's vocabulary ({config.vocab_size}) is smaller than the tokenizer's "
            f"({text_tokenizer.vocab_size}, {cfg['tokenizer']}): build the model with vocab_size={text_tokenizer.vocab_size}"
        )
    images = texts = pairs = visual = None
    if "image" in streams:
        images = ImageFolderSource(_under(root, cfg["images"]), skip_bad=cfg["skip_bad"])
    if "text" in streams:
        texts = TextCorpus([_under(root, p) for p in cfg["texts"]], rank=rank, world_size=world_size,
                           skip_bad=cfg["skip_bad"])
    if "pair" in streams:
        from pathlib import Path

        shards = sorted(str(p) for p in Path(root).glob(cfg["pairs"])) if not Path(cfg["pairs"]).is_absolute() \
            else sorted(str(p) for p in Path("/").glob(cfg["pairs"].lstrip("/")))
        if not shards:
            raise DataError(f"no pair shards match {cfg['pairs']!r} under {root}")
        pairs = ImageTextShards(shards, rank=rank, world_size=world_size, seed=seed, skip_bad=cfg["skip_bad"])
    if "image" in streams or cfg["pair_image_mask_ratio"] > 0:
        spec = dict(cfg["visual_tokenizer"])
        if spec.get("type", "codebook") == "codebook":
            visual = _load_codebook_tokenizer(spec, root, _under(root, cfg["images"]), img_size, patch_size,
                                              skip_bad=cfg["skip_bad"])
        else:
            visual = build_visual_tokenizer({**spec, "checkpoint": str(_under(root, spec["checkpoint"]))})
        head = getattr(model, "mim_head", None)
        if head is not None and head.out_features != visual.num_codes:
            raise ValueError(
                f"the model's MIM head predicts {head.out_features} codes but the visual tokenizer has "
                f"{visual.num_codes}: build the model with num_visual_tokens={visual.num_codes}"
            )
    image_transform, pair_transform = pretraining_transforms(img_size, cfg["augment"])
    return PretrainingData(
        images=images, texts=texts, pairs=pairs, text_tokenizer=text_tokenizer, visual_tokenizer=visual,
        image_transform=image_transform, pair_transform=pair_transform,
        img_size=img_size, patch_size=patch_size, batch_size=cfg["batch_size"], mixture=tuple(cfg["mixture"]),
        streams=streams, max_text_len=cfg["max_text_len"], max_pair_text_len=cfg["max_pair_text_len"],
        text_mask_prob=cfg["text_mask_prob"], pair_mask_prob=cfg["pair_mask_prob"],
        image_mask_ratio=cfg["image_mask_ratio"], pair_image_mask_ratio=cfg["pair_image_mask_ratio"],
        shuffle_buffer=cfg["shuffle_buffer"], seed=seed, rank=rank, world_size=world_size,
    )
