"""Image transforms with the official BEiT-3 settings (``beit3/datasets.py::build_transform``).

Vision-language tasks (VQAv2, NLVR2, retrieval, captioning):

* train: ``RandomResizedCrop(S, scale=(0.5, 1.0), bicubic)`` → horizontal flip → optional
  :class:`RandomAugment` (N=2, M=7, the BLIP-style op list) → to tensor → normalise mean = std = 0.5;
* eval: ``Resize((S, S), bicubic)`` (a squash, no crop) → to tensor → normalise 0.5.

ImageNet: timm ``create_transform`` with ``rand-m9-mstd0.5-inc1``, colour jitter 0.4 (which timm
disables while RandAugment is on), random erasing 0.25 in ``pixel`` mode, bicubic, ImageNet-default
mean/std; eval is ``Resize(int(S / crop_pct))`` + ``CenterCrop(S)`` with ``crop_pct = 1.0``. Mixup and
cutmix are batch-level and belong to the training loop, not here.

:class:`RandomAugment` re-implements the semantics of the BLIP ``RandomAugment`` used by BEiT-3 (which
works on numpy arrays through OpenCV) with ``torchvision.transforms.v2.functional`` ops on uint8
tensors. Known small differences: rotation/affine resampling comes from torchvision rather than
``cv2.warpAffine`` (sub-pixel centre convention), and the shear direction convention is mirrored,
which does not change the distribution because the sign is drawn at random.

Augmentation policy (the data-config key ``augment``, :data:`AUGMENT_POLICIES`): ``official`` is the
above; ``label_safe`` keeps only transforms under which every label of the benchmark world stays true.
The world's objects may touch the image border and its texts name absolute positions (thirds of the
image), left/right relations and colours, and its ImageNet classes are (shape, colour) pairs, so a
random crop or translation can drop an object or move it across a named third, a flip turns "left"
into "right", and colour operations, mixup and cutmix change a colour class. ``label_safe`` therefore
trains on the whole image (the eval resize) with no colour op; only ImageNet, whose labels name no
side, keeps the horizontal flip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import PIL.Image
import PIL.ImageOps
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.data import create_transform
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = [
    "AUGMENT_POLICIES",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "VL_MEAN",
    "VL_RANDAUG_OPS",
    "VL_STD",
    "RandomAugment",
    "build_imagenet_transform",
    "build_vl_transform",
    "check_augment",
]

AUGMENT_POLICIES = ("official", "label_safe")
VL_MEAN = IMAGENET_INCEPTION_MEAN  # (0.5, 0.5, 0.5)
VL_STD = IMAGENET_INCEPTION_STD  # (0.5, 0.5, 0.5)

# The op list BEiT-3 passes to RandomAugment (no Solarize, Color, Contrast, Posterize, Cutout).
VL_RANDAUG_OPS = (
    "Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
    "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
)
_SIGNED_OPS = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})
_ALL_OPS = frozenset(VL_RANDAUG_OPS)


class RandomAugment:
    """BLIP-style RandAugment as used by BEiT-3 (``randaug.py``), on uint8 CHW tensors or PIL images.

    Per call, ``num_ops`` op names are drawn uniformly *with replacement*; each is then applied with
    probability ``prob`` at a fixed magnitude ``magnitude / max_level``:

    * Brightness, Sharpness: factor ``m * 1.8 + 0.1`` (1.36 at M=7; never inverted),
    * ShearX/Y: shear ``±0.3 m`` (0.21), about the top-left corner,
    * TranslateX/Y: ``±translate_const * m`` pixels (7 px; absolute, not relative to the image size),
    * Rotate: ``±30 m`` degrees (21°), about the centre,

    with the sign drawn with probability 1/2 and uncovered pixels filled with ``fill``.

    Args:
        num_ops: ops drawn per image (N).
        magnitude: magnitude level M on a 0..``max_level`` scale.
        ops: op names, a subset of :data:`VL_RANDAUG_OPS`.
        prob: probability of applying each drawn op.
        fill: fill value for geometric ops (one value for all channels).
        translate_const: translation in pixels at the maximum level.
        max_level: the scale of ``magnitude``.
        generator: ``torch.Generator`` for the draws; ``None`` uses torch's global RNG, which a
            DataLoader seeds per worker.
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: float = 7,
        ops: Sequence[str] = VL_RANDAUG_OPS,
        prob: float = 0.5,
        fill: int = 128,
        translate_const: float = 10,
        max_level: float = 10,
        generator: torch.Generator | None = None,
    ):
        unknown = [op for op in ops if op not in _ALL_OPS]
        if unknown or not ops:
            raise ValueError(f"unknown RandomAugment ops {unknown or list(ops)}; valid: {list(VL_RANDAUG_OPS)}")
        if num_ops < 0 or not 0.0 <= prob <= 1.0:
            raise ValueError(f"need num_ops >= 0 and 0 <= prob <= 1, got num_ops={num_ops}, prob={prob}")
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.ops = tuple(ops)
        self.prob = prob
        self.fill = fill
        self.translate_const = translate_const
        self.max_level = max_level
        self.generator = generator

    def op_magnitude(self, name: str) -> float:
        """The unsigned argument of op ``name`` at this magnitude (0.0 for ops without one)."""
        level = self.magnitude / self.max_level
        if name in ("Brightness", "Sharpness"):
            return level * 1.8 + 0.1
        if name in ("ShearX", "ShearY"):
            return level * 0.3
        if name in ("TranslateX", "TranslateY"):
            return level * float(self.translate_const)
        if name == "Rotate":
            return level * 30.0
        return 0.0

    def apply_op(self, image: torch.Tensor | Image.Image, name: str, sign: float = 1.0):
        """Apply op ``name`` deterministically; ``sign`` (±1) only affects the geometric ops."""
        value = self.op_magnitude(name) * (sign if name in _SIGNED_OPS else 1.0)
        fill = [float(self.fill)] * 3
        bilinear = InterpolationMode.BILINEAR
        if name == "Identity":
            return image
        if name == "AutoContrast":
            return F.autocontrast(image)
        if name == "Equalize":
            return F.equalize(image)
        if name == "Brightness":
            return F.adjust_brightness(image, value)
        if name == "Sharpness":
            return F.adjust_sharpness(image, value)
        if name in ("ShearX", "ShearY"):
            degrees = math.degrees(math.atan(value))
            shear = [degrees, 0.0] if name == "ShearX" else [0.0, degrees]
            return F.affine(image, angle=0.0, translate=[0.0, 0.0], scale=1.0, shear=shear,
                            interpolation=bilinear, fill=fill, center=[0.0, 0.0])
        if name in ("TranslateX", "TranslateY"):
            translate = [value, 0.0] if name == "TranslateX" else [0.0, value]
            return F.affine(image, angle=0.0, translate=translate, scale=1.0, shear=[0.0, 0.0],
                            interpolation=bilinear, fill=fill)
        if name == "Rotate":
            return F.rotate(image, value, interpolation=bilinear, fill=fill)
        raise ValueError(f"unknown RandomAugment op {name!r}; valid: {list(VL_RANDAUG_OPS)}")

    def __call__(self, image: torch.Tensor | Image.Image):
        g = self.generator
        picks = torch.randint(len(self.ops), (self.num_ops,), generator=g).tolist()
        for index in picks:
            name = self.ops[index]
            if torch.rand((), generator=g).item() > self.prob:
                continue
            sign = -1.0 if name in _SIGNED_OPS and torch.rand((), generator=g).item() < 0.5 else 1.0
            image = self.apply_op(image, name, sign)
        return image

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(num_ops={self.num_ops}, magnitude={self.magnitude}, prob={self.prob}, "
                f"fill={self.fill}, translate_const={self.translate_const}, ops={list(self.ops)})")


def check_augment(augment: str) -> str:
    """``augment`` if it is one of :data:`AUGMENT_POLICIES`; else a ``ValueError`` listing them."""
    if augment not in AUGMENT_POLICIES:
        raise ValueError(f"data config 'augment': unknown augmentation policy {augment!r}; "
                         f"use one of {', '.join(AUGMENT_POLICIES)}")
    return augment


def _to_normalized_tensor(mean, std) -> list:
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]


def build_vl_transform(is_train: bool, img_size: int, randaug: bool = True,
                       augment: str = "official") -> v2.Compose:
    """Image transform for the vision-language tasks (PIL RGB in, float CHW tensor in [-1, 1] out).

    Args:
        is_train: training augmentation (random resized crop, flip, RandAugment) or the eval squash.
        img_size: output side S.
        randaug: add :class:`RandomAugment` (N=2, M=7) in training; the official recipes turn it on
            for VQAv2 and captioning, off for NLVR2.
        augment: ``official``, or ``label_safe``: training uses the eval squash too (no crop, no flip
            without swapping left/right in the texts, no RandAugment; see the module docstring).
    """
    if img_size <= 0:
        raise ValueError(f"img_size must be positive, got {img_size}")
    if not is_train or check_augment(augment) == "label_safe":
        return v2.Compose([
            v2.Resize((img_size, img_size), interpolation=InterpolationMode.BICUBIC),
            *_to_normalized_tensor(VL_MEAN, VL_STD),
        ])
    steps = [
        RandomResizedCropAndInterpolation(img_size, scale=(0.5, 1.0), interpolation="bicubic"),
        v2.RandomHorizontalFlip(),
        v2.PILToTensor(),  # RandomAugment works on uint8, like the official numpy version
    ]
    if randaug:
        steps.append(RandomAugment(num_ops=2, magnitude=7, ops=VL_RANDAUG_OPS))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(VL_MEAN), std=list(VL_STD))]
    return v2.Compose(steps)


def _posterize(img, bits_to_keep, **_):
    """timm's posterize with the behaviour of the Pillow the official code ran on: 0 bits kept is a
    black image (Pillow >= 11 raises on ``bits=0``, which ``rand-m9-mstd0.5-inc1`` draws now and then)."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep < 1:
        return PIL.Image.new(img.mode, img.size)
    return PIL.ImageOps.posterize(img, bits_to_keep)


def _use_safe_posterize() -> None:
    from timm.data import auto_augment

    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        auto_augment.NAME_TO_OP[name] = _posterize


def build_imagenet_transform(is_train: bool, img_size: int, crop_pct: float = 1.0, augment: str = "official"):
    """ImageNet-1k fine-tuning transform (official ``build_imagenet_transform``).

    Args:
        is_train: timm training pipeline or the resize + centre-crop eval pipeline.
        img_size: output side S. As upstream, S <= 32 replaces the random resized crop by
            ``RandomCrop(S, padding=4)`` in training and skips resize/crop in eval.
        crop_pct: eval resize is ``int(S / crop_pct)`` before the centre crop (official default 1.0).
        augment: ``official``, or ``label_safe``: training resizes the whole image and flips it
            horizontally, nothing else (no crop, RandAugment, colour jitter or random erasing; mixup
            and cutmix are the task's to leave out).
    """
    if img_size <= 0 or not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"need img_size > 0 and 0 < crop_pct <= 1, got {img_size}, {crop_pct}")
    if is_train and check_augment(augment) == "label_safe":
        return v2.Compose([
            v2.Resize((img_size, img_size), interpolation=InterpolationMode.BICUBIC),
            v2.RandomHorizontalFlip(),
            *_to_normalized_tensor(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ])
    resize_im = img_size > 32
    if is_train:
        _use_safe_posterize()  # before create_transform: timm binds its ops when it builds them
        transform = create_transform(
            input_size=img_size,
            is_training=True,
            color_jitter=0.4,
            auto_augment="rand-m9-mstd0.5-inc1",
            interpolation="bicubic",
            re_prob=0.25,
            re_mode="pixel",
            re_count=1,
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
        )
        if not resize_im:
            transform.transforms[0] = v2.RandomCrop(img_size, padding=4)
        return transform
    steps = []
    if resize_im:
        steps += [
            v2.Resize(int(img_size / crop_pct), interpolation=InterpolationMode.BICUBIC),
            v2.CenterCrop(img_size),
        ]
    return v2.Compose(steps + _to_normalized_tensor(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))
