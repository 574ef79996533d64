"""ViTDet's simple feature pyramid and its channel LayerNorm (the mmdet wheel ships no ``projects/``).

``SimpleFPN`` (Li et al. 2022, "Exploring Plain Vision Transformer Backbones for Object Detection")
builds strides 4, 8, 16 and 32 from the single stride-16 map of a plain ViT -- two transposed convs
(with LN2d + GELU between them), one transposed conv, identity, max-pool -- then a lateral 1x1 and an
output 3x3 conv per level, plus max-pooled extra levels up to ``num_outs``. As mmdet's
``projects/ViTDet/vitdet/simple_fpn.py``, so its configs carry over.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule, build_norm_layer
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch import nn

__all__ = ["LN2d", "SimpleFPN"]


@MODELS.register_module()
class LN2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (detectron2's ``LayerNorm`` for convs).

    Args:
        normalized_shape: number of channels.
        eps: added to the variance.
    """

    _abbr_ = "ln"  # mmcv's build_norm_layer names the layer ln<postfix>

    def __init__(self, normalized_shape: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(normalized_shape))
        self.bias = nn.Parameter(torch.zeros(normalized_shape))
        self.eps = eps
        self.normalized_shape = (normalized_shape,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


@MODELS.register_module()
class SimpleFPN(BaseModule):
    """ViTDet's simple feature pyramid from one plain-ViT map.

    Args:
        backbone_channel: channels of the backbone map (the ViT width).
        in_channels: channels of the four built levels, ``[C/4, C/2, C, C]``.
        out_channels: channels of every output level.
        num_outs: output levels; those beyond 4 are max-pooled (stride 2) from the last.
        conv_cfg: conv config of the lateral and output convs.
        norm_cfg: norm of the first upsampling branch and of the lateral/output convs (ViTDet: LN2d).
        act_cfg: activation of the lateral/output convs (ViTDet: none).
        init_cfg: mmengine init config.
    """

    def __init__(
        self,
        backbone_channel: int,
        in_channels: Sequence[int],
        out_channels: int,
        num_outs: int,
        conv_cfg: dict | None = None,
        norm_cfg: dict | None = None,
        act_cfg: dict | None = None,
        init_cfg: dict | list | None = None,
    ):
        super().__init__(init_cfg=init_cfg)
        in_channels = list(in_channels)
        expected = [backbone_channel // 4, backbone_channel // 2, backbone_channel, backbone_channel]
        if in_channels != expected:
            raise ValueError(
                f"SimpleFPN in_channels {in_channels} do not fit backbone_channel={backbone_channel}: "
                f"the pyramid has {expected}"
            )
        if num_outs < len(in_channels):
            raise ValueError(f"num_outs={num_outs} is less than the {len(in_channels)} built levels")
        self.backbone_channel = backbone_channel
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.num_ins = len(in_channels)

        half, quarter = backbone_channel // 2, backbone_channel // 4
        upsample_norm = build_norm_layer(norm_cfg, half)[1] if norm_cfg is not None else nn.Identity()
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(backbone_channel, half, 2, 2), upsample_norm, nn.GELU(),
            nn.ConvTranspose2d(half, quarter, 2, 2),
        )
        self.fpn2 = nn.Sequential(nn.ConvTranspose2d(backbone_channel, half, 2, 2))
        self.fpn3 = nn.Sequential(nn.Identity())
        self.fpn4 = nn.Sequential(nn.MaxPool2d(kernel_size=2, stride=2))

        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for channels in in_channels:
            self.lateral_convs.append(ConvModule(channels, out_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                                 act_cfg=act_cfg, inplace=False))
            self.fpn_convs.append(ConvModule(out_channels, out_channels, 3, padding=1, conv_cfg=conv_cfg,
                                             norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False))

    def forward(self, inputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The backbone's map (a tensor, or the last of a sequence of maps) -> ``num_outs`` levels."""
        x = inputs if isinstance(inputs, torch.Tensor) else inputs[-1]
        if x.shape[1] != self.backbone_channel:
            raise ValueError(f"SimpleFPN expects a {self.backbone_channel}-channel map, got shape {list(x.shape)}")
        levels = [self.fpn1(x), self.fpn2(x), self.fpn3(x), self.fpn4(x)]
        convs = zip(levels, self.lateral_convs, self.fpn_convs, strict=True)
        outs = [fpn_conv(lateral(level)) for level, lateral, fpn_conv in convs]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)
