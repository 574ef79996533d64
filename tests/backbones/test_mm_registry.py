"""Registration in mmdet/mmseg, SimpleFPN + LN2d, the layer-decay constructor, the configs, compat."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("mmdet")
pytest.importorskip("mmseg")
mm = pytest.importorskip("backbones.mm")

from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY_BACKBONE = dict(type="BEiT3ViT", img_size=64, embed_dim=192, depth=4, num_heads=3)


@pytest.mark.parametrize("scope", ["mmdet", "mmseg"])
def test_backbone_builds_from_a_config_dict_in_both_scopes(scope):
    init_default_scope(scope)
    registry = __import__(f"{scope}.registry", fromlist=["MODELS"]).MODELS
    assert registry.get("BEiT3ViT") is mm.BEiT3ViT
    backbone = registry.build(dict(TINY_BACKBONE, out_indices=(1, 3)))
    maps = backbone(torch.randn(2, 3, 64, 64))
    assert [m.shape for m in maps] == [(2, 192, 4, 4)] * 2


def test_simple_fpn_with_ln2d_under_mmdet_scope():
    from mmdet.registry import MODELS

    init_default_scope("mmdet")
    neck = MODELS.build(dict(type="SimpleFPN", backbone_channel=192, in_channels=[48, 96, 192, 192],
                             out_channels=32, num_outs=5, norm_cfg=dict(type="LN2d", requires_grad=True)))
    assert isinstance(neck.fpn1[1], mm.LN2d) and neck.lateral_convs[0].norm_name == "ln"
    levels = neck(torch.randn(2, 192, 8, 8))
    assert [tuple(x.shape[-2:]) for x in levels] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert all(x.shape[1] == 32 for x in levels)
    assert neck((torch.randn(1, 192, 8, 8),))[0].shape == (1, 32, 32, 32)  # a backbone's tuple works too
    with pytest.raises(ValueError, match=r"do not fit backbone_channel=192: the pyramid has \[48, 96, 192, 192\]"):
        MODELS.build(dict(type="SimpleFPN", backbone_channel=192, in_channels=[64, 128, 192, 192],
                          out_channels=32, num_outs=5))


def test_ln2d_normalises_channels():
    x = torch.randn(2, 6, 3, 3) * 5 + 2
    y = mm.LN2d(6)(x)
    expected = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (6,), eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(y, expected)


def test_layer_decay_constructor_groups():
    from mmengine.optim import build_optim_wrapper
    from torch import nn

    init_default_scope("mmdet")

    class Detector(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = mm.BEiT3ViT(**{k: v for k, v in TINY_BACKBONE.items() if k != "type"}, out_indices=(3,))
            self.neck = nn.Conv2d(192, 8, 1)

    model = Detector()
    wrapper = build_optim_wrapper(model, dict(
        type="OptimWrapper", constructor="BEiT3LayerDecayOptimizerConstructor", paramwise_cfg=dict(decay_rate=0.5),
        optimizer=dict(type="AdamW", lr=1.0, weight_decay=0.1)))
    by_name = {name: group for group in wrapper.optimizer.param_groups for name in group["param_names"]}
    assert by_name["backbone.patch_embed.weight"]["lr"] == 0.5 ** 5
    assert by_name["backbone.pos_embed"]["lr"] == 0.5 ** 5 and by_name["backbone.pos_embed"]["weight_decay"] == 0
    assert by_name["backbone.blocks.0.ffn.fc1.weight"]["lr"] == 0.5 ** 4
    assert by_name["backbone.blocks.0.ffn.fc1.weight"]["weight_decay"] == 0.1
    assert by_name["backbone.blocks.3.self_attn.q_proj.bias"]["weight_decay"] == 0
    assert by_name["backbone.blocks.3.self_attn.q_proj.weight"]["lr"] == 0.5
    assert by_name["neck.weight"]["lr"] == 1.0
    assert sum(len(g["params"]) for g in wrapper.optimizer.param_groups) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="unknown paramwise_cfg key"):
        build_optim_wrapper(model, dict(type="OptimWrapper", constructor="BEiT3LayerDecayOptimizerConstructor",
                                        paramwise_cfg=dict(decay_rate=0.5, layer_decay_rate=0.9),
                                        optimizer=dict(type="AdamW", lr=1.0)))


@pytest.mark.parametrize("name", sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("[ds]e[gt]/*.py")))
def test_configs_parse_with_our_backbone(name):
    cfg = Config.fromfile(str(CONFIGS / name))
    assert "backbones.mm" in cfg.custom_imports["imports"]
    backbone = cfg.model.backbone
    assert backbone.type == "BEiT3ViT"
    variant = name.rsplit("_", 1)[1]
    if variant == "mini.py":
        assert cfg.optim_wrapper.type == "OptimWrapper" and cfg.train_dataloader.num_workers == 0
        assert cfg.train_dataloader.batch_size >= 2  # UPerHead's pooled branch has BatchNorm
    else:
        assert backbone.embed_dim == 1408 and backbone.depth == 40 and backbone.layout == "paper"
        assert cfg.optim_wrapper.constructor == "BEiT3LayerDecayOptimizerConstructor"


@pytest.mark.parametrize("name", ["det/beit3_cascade-mask-rcnn_paper.py", "seg/beit3_mask2former_paper.py"])
def test_paper_configs_build_on_the_meta_device(name):
    from mmengine.registry import MODELS

    cfg = Config.fromfile(str(CONFIGS / name))
    init_default_scope(cfg.default_scope)
    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    backbone = model.backbone
    assert backbone.depth == 40 and backbone.embed_dim == 1408
    billions = sum(p.numel() for p in backbone.parameters()) / 1e9
    assert 0.95 < billions < 1.1  # Table 2: about 1B parameters are used as a vision encoder


def test_compat_cpu_overrides_and_mmengine_checkpoint_globals(tmp_path):
    from mmengine.logging import HistoryBuffer

    cfg = Config(dict(
        optim_wrapper=dict(type="AmpOptimWrapper", loss_scale="dynamic", optimizer=dict(type="AdamW")),
        model=dict(neck=dict(norm_cfg=dict(type="SyncBN")), heads=[dict(norm_cfg=dict(type="SyncBN"))]),
        train_dataloader=dict(num_workers=4, persistent_workers=True)))
    mm.compat.cpu_overrides(cfg)
    assert cfg.optim_wrapper.type == "OptimWrapper" and "loss_scale" not in cfg.optim_wrapper
    assert cfg.model.neck.norm_cfg.type == "BN" and cfg.model.heads[0].norm_cfg.type == "BN"
    assert cfg.train_dataloader.num_workers == 0 and cfg.train_dataloader.persistent_workers is False

    import numpy as np

    torch.save({"rng": np.random.get_state()}, tmp_path / "numpy.pt")
    assert mm.compat.safe_torch_load(str(tmp_path / "numpy.pt"))["rng"][0] == "MT19937"  # scoped globals ...
    buffer = HistoryBuffer()  # ... leave the process-wide ones of compat.apply() in place
    buffer.update(1.5)
    torch.save({"meta": {"message_hub": {"loss": buffer}}, "state_dict": {}}, tmp_path / "mmengine.pth")
    loaded = torch.load(tmp_path / "mmengine.pth", weights_only=True)  # safe globals added on import
    assert loaded["meta"]["message_hub"]["loss"].current() == 1.5


def test_a_config_naming_an_unknown_layout_fails_at_build():
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    with pytest.raises(ValueError, match="unknown layout 'decoupled'; choose one of released, paper"):
        MODELS.build(dict(TINY_BACKBONE, layout="decoupled"))
