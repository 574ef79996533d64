"""BEiT3ViT: parity with our backbone's image-only forward, windows, rel-pos, position resizing,
checkpoint remapping (official, paper layout, our trainer's) and the errors of bad input."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import backbones
from backbones import CheckpointError
from backbones.beit3 import resize_vision_pos_table

mm = pytest.importorskip("backbones.mm")
from backbones.mm import BEiT3ViT  # noqa: E402
from backbones.mm.beit3_vit import window_partition, window_unpartition  # noqa: E402

TINY = dict(embed_dim=192, depth=4, num_heads=3)


def _tiny_vit(**kwargs) -> BEiT3ViT:
    args = dict(img_size=224, out_indices=(0, 1, 2, 3), **TINY)
    args.update(kwargs)
    return BEiT3ViT(**args).eval()


def _reference_maps(model, images, grid):
    with torch.no_grad():
        states = model.beit3(visual_tokens=images, return_all_hiddens=True)["encoder_states"]
    return [s[:, 1:].transpose(1, 2).reshape(images.shape[0], -1, *grid) for s in states[1:]]


@pytest.fixture(scope="module")
def released():
    torch.manual_seed(0)
    return backbones.create_model("beit3_tiny_patch16_224").eval()


@pytest.fixture(scope="module")
def released_ckpt(released, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "beit3_tiny_released.pth"
    torch.save({"model": released.state_dict()}, path)
    return path


def test_import_backbones_does_not_import_mmcv():
    code = "import sys, backbones; assert 'mmcv' not in sys.modules and 'mmengine' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_released_checkpoint_loads_and_matches_encoder_states(released, released_ckpt):
    vit = _tiny_vit(init_cfg=dict(type="Pretrained", checkpoint=str(released_ckpt)))
    vit.init_weights()
    report = vit.load_pretrained(released_ckpt)
    assert report.missing == [] and report.loaded == len(vit.state_dict())
    assert report.dropped["text-branch"] > 0 and report.dropped["text/VL-expert"] > 0
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        outs = vit(images)
    for ours, ref in zip(outs, _reference_maps(released, images, (14, 14)), strict=True):
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_paper_layout_checkpoint_matches_encoder_states():
    torch.manual_seed(1)
    paper = backbones.create_model("beit3_tiny_patch16_224", layout="paper").eval()  # VL-FFN in the top layer
    vit = _tiny_vit(layout="paper")
    report = vit.load_pretrained({"model": paper.state_dict()})
    assert report.missing == [] and report.dropped["text/VL-expert"] > 0
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        outs = vit(images)
    for ours, ref in zip(outs, _reference_maps(paper, images, (14, 14)), strict=True):
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_position_table_resized_at_load_and_at_forward(released, released_ckpt):
    vit = _tiny_vit(img_size=128, out_indices=(3,))
    report = vit.load_pretrained(released_ckpt)
    assert report.resized_pos == ((14, 14), (8, 8))
    table = released.beit3.encoder.embed_positions.A.weight.detach()
    torch.testing.assert_close(vit.pos_embed.detach(), resize_vision_pos_table(table, (8, 8)))

    # Another input size at forward time: the same bicubic resize as BEiT3(dynamic_img_size=True).
    dynamic = backbones.create_model("beit3_tiny_patch16_224", dynamic_img_size=True).eval()
    dynamic.load_state_dict(released.state_dict())
    vit224 = _tiny_vit(out_indices=(3,))
    vit224.load_pretrained(released_ckpt)
    images = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        (ours,) = vit224(images)
    torch.testing.assert_close(ours, _reference_maps(dynamic, images, (10, 10))[3], rtol=0, atol=1e-5)
    assert vit224(torch.randn(1, 3, 96, 160))[0].shape == (1, 192, 6, 10)  # non-square grids too


def test_window_partition_roundtrip_with_padding():
    x = torch.randn(2, 5, 7, 3)
    windows, padded = window_partition(x, 3)
    assert windows.shape == (2 * 2 * 3, 9, 3) and padded == (6, 9)
    torch.testing.assert_close(window_unpartition(windows, 3, padded, (5, 7)), x)


def test_one_window_over_the_grid_equals_global_attention(released_ckpt):
    common = dict(img_size=64, out_indices=(3,), with_cls_token=False)
    windowed = _tiny_vit(window_size=4, window_block_indexes=(0, 1, 2, 3), **common)
    plain = _tiny_vit(**common)
    for model in (windowed, plain):
        model.load_pretrained(released_ckpt)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(windowed(images)[0], plain(images)[0])
        smaller = _tiny_vit(window_size=2, window_block_indexes=(0, 2), **common)
        smaller.load_pretrained(released_ckpt)
        assert not torch.allclose(smaller(images)[0], plain(images)[0])


def test_rel_pos_starts_at_zero_and_learns(released_ckpt):
    common = dict(img_size=64, out_indices=(3,), with_cls_token=False, window_size=2, window_block_indexes=(0, 2))
    with_rel = _tiny_vit(use_rel_pos=True, **common)
    report = with_rel.load_pretrained(released_ckpt)
    assert sorted(report.missing) == sorted(k for k in with_rel.state_dict() if "rel_pos" in k)
    assert with_rel.blocks[0].self_attn.rel_pos_h.shape == (3, 64)  # 2 * window - 1 rows
    assert with_rel.blocks[1].self_attn.rel_pos_h.shape == (7, 64)  # global block: 2 * grid - 1
    without = _tiny_vit(**common)
    without.load_pretrained(released_ckpt)
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(with_rel(images)[0], without(images)[0])
    with_rel.train()
    with_rel(images)[0].square().mean().backward()
    assert with_rel.blocks[1].self_attn.rel_pos_w.grad.abs().sum() > 0


def test_rel_pos_with_cls_token_and_other_input_size(released_ckpt):
    vit = _tiny_vit(img_size=64, out_indices=(3,), use_rel_pos=True)
    vit.load_pretrained(released_ckpt)
    with torch.no_grad():
        torch.nn.init.normal_(vit.blocks[2].self_attn.rel_pos_h)
        assert vit(torch.randn(1, 3, 96, 80))[0].shape == (1, 192, 6, 5)  # tables interpolated


def test_activation_checkpointing_and_drop_path(released_ckpt):
    torch.manual_seed(0)
    plain = _tiny_vit(img_size=64, out_indices=(1, 3))
    checkpointed = _tiny_vit(img_size=64, out_indices=(1, 3), with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 64, 64)
    for model in (plain, checkpointed):
        model.train()
        sum(o.sum() for o in model(images)).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    dropping = _tiny_vit(img_size=64, out_indices=(3,), drop_path_rate=0.5)
    dropping.load_state_dict(plain.state_dict())
    assert dropping.blocks[-1].drop_path.drop_prob == 0.5
    assert isinstance(dropping.blocks[0].drop_path, torch.nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(dropping.eval()(images)[0], plain.eval()(images)[1])


def test_out_indices_order_and_final_norm(released_ckpt):
    vit = _tiny_vit(out_indices=(3, 1), final_norm=True)
    report = vit.load_pretrained(released_ckpt)
    assert "final-norm (final_norm=False)" not in report.dropped
    outs = vit(torch.randn(1, 3, 224, 224))
    assert [o.shape for o in outs] == [(1, 192, 14, 14)] * 2


def test_pretraining_and_trainer_checkpoints_drop_heads(tmp_path):
    from tasks.pretrain_mdm import build_pretrain_mdm
    from tasks.pretrain_vlmo import build_pretrain_vlmo

    mdm = build_pretrain_mdm("beit3_tiny_patch16_224", 64)
    # Our trainer's step checkpoints keep numpy RNG state beside the weights.
    step = {"model": mdm.state_dict(), "rng": {"numpy": np.random.get_state()}, "step": 3}
    torch.save(step, tmp_path / "step.pt")
    report = _tiny_vit().load_pretrained(tmp_path / "step.pt")
    assert report.dropped["task-head"] == 4 and report.missing == []

    vlmo = build_pretrain_vlmo("beit3_tiny_patch16_224", 64)  # paper layout, ITC/ITM heads
    report = _tiny_vit(layout="paper").load_pretrained({"model": vlmo.state_dict()})
    assert report.dropped["task-head"] > 4 and report.missing == []


# --------------------------------------------------------------------------- bad input
def test_unknown_layout_is_rejected():
    with pytest.raises(ValueError, match="unknown layout 'decoupled'"):
        BEiT3ViT(layout="decoupled", **TINY)


def test_image_size_not_divisible_by_patch_is_rejected():
    with pytest.raises(ValueError, match="not divisible by patch_size 16"):
        BEiT3ViT(img_size=250, **TINY)
    vit = _tiny_vit(img_size=64, out_indices=(3,))
    with pytest.raises(ValueError, match="70x64 is not divisible by the patch size 16"):
        vit(torch.randn(1, 3, 70, 64))


def test_window_attention_with_cls_token_is_rejected():
    with pytest.raises(ValueError, match="with_cls_token=False"):
        BEiT3ViT(window_size=4, window_block_indexes=(0,), out_indices=(3,), **TINY)
    with pytest.raises(ValueError, match="out_indices"):
        BEiT3ViT(out_indices=(4,), **TINY)


def test_resnet_checkpoint_is_rejected_naming_its_keys():
    resnet = {"conv1.weight": torch.zeros(64, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1)}
    with pytest.raises(CheckpointError, match=r"no BEiT-3 weights.*conv1\.weight, layer1\.0\.conv1\.weight"):
        _tiny_vit().load_pretrained({"state_dict": resnet})


def test_checkpoint_of_another_embed_dim_is_rejected_naming_shapes(tmp_path):
    other = backbones.create_model("beit3_tiny_patch16_224", embed_dim=96, num_heads=3)
    torch.save({"model": other.state_dict()}, tmp_path / "small.pth")
    expected = r"shape mismatch.*patch_embed\.weight: \[192, 3, 16, 16\] vs \[96, 3, 16, 16\]"
    with pytest.raises(CheckpointError, match=expected):
        _tiny_vit().load_pretrained(tmp_path / "small.pth")


def test_checkpoint_of_other_layout_or_depth_is_rejected(released_ckpt):
    expected = r"(?s)checkpoint layout: released.*layout='released'.*missing.*blocks\.0\.self_attn\.q_proj\.weight"
    with pytest.raises(CheckpointError, match=expected):
        _tiny_vit(layout="paper").load_pretrained(released_ckpt)
    with pytest.raises(CheckpointError, match=r"(?s)beyond the model.*blocks\.3\."):
        BEiT3ViT(depth=3, embed_dim=192, num_heads=3, out_indices=(2,)).load_pretrained(released_ckpt)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _tiny_vit().load_pretrained(released_ckpt.parent / "missing.pth")


def test_unknown_head_keys_are_rejected(released):
    state = dict(released.state_dict(), **{"decoder.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="map to nothing: decoder.weight"):
        _tiny_vit().load_pretrained({"model": state})
