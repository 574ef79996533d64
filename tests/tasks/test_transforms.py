"""Official image transforms: structure, numerics of the eval paths, and the RandomAugment ops."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation

from tasks.data.transforms import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    VL_RANDAUG_OPS,
    RandomAugment,
    build_imagenet_transform,
    build_vl_transform,
)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))


def _uint8(image):
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


def test_vl_eval_is_a_bicubic_squash_normalised_to_half(image):
    out = build_vl_transform(is_train=False, img_size=32)(image)
    resized = np.asarray(image.resize((32, 32), Image.BICUBIC), dtype=np.float32) / 255.0
    expected = torch.from_numpy((resized - 0.5) / 0.5).permute(2, 0, 1)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected)


def test_vl_train_structure_and_range(image):
    transform = build_vl_transform(is_train=True, img_size=24, randaug=True)
    steps = transform.transforms
    crop = steps[0]
    assert isinstance(crop, RandomResizedCropAndInterpolation)
    assert crop.scale == (0.5, 1.0) and crop.size == (24, 24)
    assert str(crop.interpolation.value) == "bicubic"
    augment = [s for s in steps if isinstance(s, RandomAugment)]
    assert len(augment) == 1
    assert (augment[0].num_ops, augment[0].magnitude, augment[0].prob, augment[0].fill) == (2, 7, 0.5, 128)
    assert augment[0].ops == VL_RANDAUG_OPS
    torch.manual_seed(0)
    random.seed(0)
    out = transform(image)
    assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_vl_train_without_randaug_has_no_randaugment():
    steps = build_vl_transform(is_train=True, img_size=16, randaug=False).transforms
    assert not any(isinstance(s, RandomAugment) for s in steps)


def test_vl_train_is_reproducible_under_seeds(image):
    transform = build_vl_transform(is_train=True, img_size=16)
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        random.seed(3)
        outs.append(transform(image))
    torch.testing.assert_close(outs[0], outs[1])


def test_imagenet_eval_resizes_short_side_then_centre_crops(image):
    out = build_imagenet_transform(is_train=False, img_size=40)(image)
    resized = image.resize((53, 40), Image.BICUBIC)  # short side 48 -> 40: 64 * 40 / 48 = 53.3
    left = (53 - 40) // 2
    crop = np.asarray(resized, dtype=np.float32)[:, left : left + 40] / 255.0
    expected = (crop - np.array(IMAGENET_DEFAULT_MEAN, np.float32)) / np.array(IMAGENET_DEFAULT_STD, np.float32)
    assert out.shape == (3, 40, 40)
    torch.testing.assert_close(out, torch.from_numpy(expected).permute(2, 0, 1), atol=0.02, rtol=0)


def test_imagenet_train_uses_timm_randaugment_and_random_erasing(image):
    transform = build_imagenet_transform(is_train=True, img_size=48)
    text = repr(transform)
    assert "RandomResizedCropAndInterpolation" in text and "interpolation=bicubic" in text
    assert "RandAugment(n=2" in text and "m=9, mstd=0.5" in text and "PosterizeIncreasing" in text
    assert "RandomErasing(p=0.25, mode=pixel" in text
    assert "ColorJitter" not in text  # timm turns colour jitter off when RandAugment is on
    torch.manual_seed(0)
    random.seed(0)
    assert transform(image).shape == (3, 48, 48)


def test_imagenet_small_images_use_padded_random_crop(image):
    transform = build_imagenet_transform(is_train=True, img_size=32)
    assert type(transform.transforms[0]).__name__ == "RandomCrop"
    assert build_imagenet_transform(is_train=False, img_size=32)(image).shape == (3, 48, 64)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="img_size"):
        build_vl_transform(True, 0)
    with pytest.raises(ValueError, match="crop_pct"):
        build_imagenet_transform(False, 224, crop_pct=0.0)
    with pytest.raises(ValueError, match="unknown RandomAugment ops"):
        RandomAugment(ops=["Solarize"])


def test_randaugment_magnitudes_follow_the_official_level_functions():
    aug = RandomAugment(num_ops=2, magnitude=7)
    assert aug.op_magnitude("Brightness") == pytest.approx(1.36)
    assert aug.op_magnitude("Sharpness") == pytest.approx(1.36)
    assert aug.op_magnitude("ShearX") == pytest.approx(0.21)
    assert aug.op_magnitude("TranslateY") == pytest.approx(7.0)  # 10 px constant, not image-relative
    assert aug.op_magnitude("Rotate") == pytest.approx(21.0)
    assert aug.op_magnitude("Identity") == 0.0


def test_randaugment_ops_on_uint8(image):
    aug = RandomAugment()
    x = _uint8(image)
    assert torch.equal(aug.apply_op(x, "Identity"), x)
    # brightness is a multiply with truncation, like the official uint8 table
    expected = (x.float() * 1.36).clamp(0, 255).to(torch.uint8)
    assert torch.equal(aug.apply_op(x, "Brightness", sign=-1.0), expected)  # enhance ops never invert
    # translations are exact integer shifts with the 128 fill
    shifted = aug.apply_op(x, "TranslateX", sign=1.0)
    assert torch.equal(shifted[:, :, 7:], x[:, :, :-7])
    assert (shifted[:, :, :7] == 128).all()
    up = aug.apply_op(x, "TranslateY", sign=-1.0)
    assert torch.equal(up[:, :-7], x[:, 7:]) and (up[:, -7:] == 128).all()
    rotated = aug.apply_op(x, "Rotate", sign=1.0)
    assert (rotated[:, 0, 0] == 128).all() and (rotated[:, -1, -1] == 128).all()
    sheared = aug.apply_op(x, "ShearX", sign=1.0)  # about the top-left: the first row barely moves
    assert (sheared[:, 0, 1:10].int() - x[:, 0, 1:10].int()).abs().float().mean() < 40
    assert (sheared[:, -1] == 128).any()
    for op in ("AutoContrast", "Equalize", "Sharpness", "ShearY"):
        out = aug.apply_op(x, op, sign=-1.0)
        assert out.dtype == torch.uint8 and out.shape == x.shape


def test_randaugment_draws_with_a_generator(image):
    x = _uint8(image)
    a = RandomAugment(generator=torch.Generator().manual_seed(5))
    b = RandomAugment(generator=torch.Generator().manual_seed(5))
    for _ in range(5):
        assert torch.equal(a(x), b(x))
    never = RandomAugment(prob=0.0)
    assert torch.equal(never(x), x)
    always = RandomAugment(num_ops=1, prob=1.0, ops=["TranslateX"], generator=torch.Generator().manual_seed(0))
    out = always(x)
    assert (out[:, :, :7] == 128).all() or (out[:, :, -7:] == 128).all()


def test_imagenet_randaugment_posterize_to_zero_bits_gives_black_not_an_error():
    """Pillow >= 11 rejects posterize(bits=0), which timm's rand-m9-mstd0.5-inc1 can draw."""
    from PIL import Image
    from timm.data.auto_augment import NAME_TO_OP

    from tasks.data.transforms import build_imagenet_transform

    build_imagenet_transform(is_train=True, img_size=64)
    image = Image.new("RGB", (8, 8), (200, 100, 50))
    assert NAME_TO_OP["PosterizeIncreasing"](image, 0).getpixel((0, 0)) == (0, 0, 0)
    assert NAME_TO_OP["Posterize"](image, 8) is image
