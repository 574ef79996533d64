"""Label-safe augmentation on the synthetic profiles (issue 13.1): no transform changes a label's truth."""
import numpy as np
import pytest
import torch

import tasks
from harness.finetune import finetune_config
from harness.profiles import get_profile
from harness.world import ensure_world, scenes
from tasks.data.transforms import build_vl_transform
from tasks.pretrain_data import pretraining_transforms


@pytest.fixture(scope="module")
def world_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("worlds")
    ensure_world("smoke", root=root)
    return root


@pytest.fixture
def smoke_data(world_root, monkeypatch):
    monkeypatch.setenv("BEIT3_DATA_ROOT", str(world_root))
    return lambda task: finetune_config(task, "none", get_profile("smoke")).data


def _edge_scene(size: int = 64) -> scenes.Scene:
    # Objects touching the border, left and right: a crop drops one, a flip swaps them.
    bg = scenes.Background(kind="solid", colors=("gray",))
    objs = (scenes.Obj("square", "red", "large", cx=10.0, cy=10.0, h=8.0),
            scenes.Obj("circle", "blue", "large", cx=54.0, cy=54.0, h=8.0))
    return scenes.Scene(size=size, background=bg, objects=objs)


def _objects_kept(image: torch.Tensor, scene: scenes.Scene, mean, std, flipped_ok: bool) -> bool:
    """Every object's colour at its own (scaled) centre: the object is inside the view, where it was."""
    pixels = (image * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]) * 255
    side = image.shape[-1] / scene.size
    for mirrored in ((False, True) if flipped_ok else (False,)):
        ok = True
        for obj in scene.objects:
            x = int((scene.size - obj.cx if mirrored else obj.cx) * side)
            y = int(obj.cy * side)
            ok &= bool(np.abs(pixels[:, y, x].numpy() - np.array(scenes.COLORS[obj.color])).max() < 40)
        if ok:
            return True
    return False


def test_synthetic_profiles_set_label_safe_and_paper_keeps_official(smoke_data):
    for task in ("vqav2", "nlvr2", "captioning", "retrieval", "imagenet"):
        assert smoke_data(task)["augment"] == "label_safe", task
    for name in ("smoke", "mini"):
        assert get_profile(name).pretrain["data"]["augment"] == "label_safe"
    assert "augment" not in str(get_profile("paper").finetune) and not get_profile("paper").pretrain


def test_vl_training_never_flips_a_left_right_sample_and_keeps_every_object(smoke_data):
    data = smoke_data("vqav2")
    vqa = tasks.task_module("vqav2")
    scene = _edge_scene()
    image = scenes.render(scene)
    safe = vqa.build_transform("train", 32, data.get("quirks", "fixed"), True, data["augment"])
    official = vqa.build_transform("train", 32, "fixed", True, "official")
    eval_view = build_vl_transform(False, 32)(image)
    torch.manual_seed(0)
    for _ in range(20):  # a sample whose question says "left": its image is never mirrored, never cropped
        view = safe(image)
        assert torch.equal(view, eval_view)
        assert _objects_kept(view, scene, (0.5,) * 3, (0.5,) * 3, flipped_ok=False)
    assert not all(_objects_kept(official(image), scene, (0.5,) * 3, (0.5,) * 3, flipped_ok=False) for _ in range(20))


def test_pretraining_views_keep_every_object_and_pairs_are_not_flipped():
    scene = _edge_scene()
    image = scenes.render(scene)
    generator = torch.Generator().manual_seed(0)
    image_transform, pair_transform = pretraining_transforms(32, "label_safe")
    for _ in range(20):
        assert _objects_kept(pair_transform(image, generator), scene, (0,) * 3, (1,) * 3, flipped_ok=False)
        assert _objects_kept(image_transform(image, generator), scene, (0,) * 3, (1,) * 3, flipped_ok=True)
    _, official_pairs = pretraining_transforms(32, "official")
    assert not all(_objects_kept(official_pairs(image, generator), scene, (0,) * 3, (1,) * 3, flipped_ok=False)
                   for _ in range(20))


def test_world_imagenet_training_has_no_colour_ops_mixup_or_cutmix(smoke_data):
    from tasks.data.transforms import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from tasks.finetune_data import merge_config

    data = smoke_data("imagenet")
    imagenet = tasks.task_module("imagenet")
    transform = imagenet.build_transform("train", 32, "fixed", data.get("crop_pct", 1.0), data["augment"])
    names = [type(t).__name__ for t in transform.transforms]
    assert names == ["Resize", "RandomHorizontalFlip", "PILToTensor", "ToDtype", "Normalize"], names
    cfg = merge_config({k: v for k, v in data.items()}, imagenet.DATA_DEFAULTS, "imagenet")
    assert imagenet.build_mixup(cfg, num_classes=18, batch_size=2) is None
    assert imagenet.build_mixup({**cfg, "augment": "official"}, num_classes=18, batch_size=2) is not None
    scene = _edge_scene()
    for _ in range(10):
        assert _objects_kept(transform(scenes.render(scene)), scene, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD,
                             flipped_ok=True)


def test_augment_is_part_of_the_config_hash(smoke_data):
    from harness.config import train_config_hash

    cfg = finetune_config("vqav2", "none", get_profile("smoke"))
    import dataclasses

    official = dataclasses.replace(cfg, data={**cfg.data, "augment": "official"})
    assert train_config_hash(cfg) != train_config_hash(official)
    with pytest.raises(ValueError, match="unknown augmentation policy 'safe'"):
        build_vl_transform(True, 32, augment="safe")
