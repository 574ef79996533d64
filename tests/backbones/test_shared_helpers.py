"""The helpers every floor shares: the "did you mean" hint and unilm's Linear/LayerNorm init."""
import pytest
import torch
from torch import nn

import backbones
from backbones.suggest import did_you_mean
from backbones.weight_init import INIT_STD, init_linear_and_norm


def test_did_you_mean_names_close_names_or_nothing():
    assert did_you_mean("batchsize", ["batch_size", "lr", "seed"]) == " (did you mean batch_size?)"
    assert did_you_mean("zzz", ["batch_size", "lr"]) == ""
    assert did_you_mean("tabel2", [f"table{i}" for i in range(1, 11)], n=1) == " (did you mean table2?)"


def test_every_registry_uses_the_one_hint():
    import tasks
    from harness.config import ConfigError, build_train_config
    from harness.profiles import get_profile

    with pytest.raises(backbones.UnknownModelError, match=r"'beit3_base_patch16_22' \(did you mean beit3_base"):
        backbones.create_model("beit3_base_patch16_22")
    with pytest.raises(tasks.UnknownTaskError, match=r"'vqa2' \(did you mean vqav2"):
        tasks.build_model("vqa2", "beit3_base_patch16_224")
    with pytest.raises(ConfigError, match=r"warmup_step \(did you mean warmup_steps"):
        build_train_config({"task": "x", "model": "y", "warmup_step": 1})
    with pytest.raises(KeyError, match=r"'smok' \(did you mean smoke\?\)"):
        get_profile("smok")


def test_init_linear_and_norm_is_unilms_init():
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(64, 512), nn.LayerNorm(512), nn.GELU(), nn.Linear(512, 8))
    with torch.no_grad():
        for p in head.parameters():
            p.fill_(3.0)
    head.apply(init_linear_and_norm)
    for linear in (head[0], head[3]):
        assert linear.weight.abs().max() <= INIT_STD and linear.weight.std() > INIT_STD / 2
        assert torch.count_nonzero(linear.bias) == 0
    assert torch.all(head[1].weight == 1) and torch.all(head[1].bias == 0)


def test_task_heads_and_backbone_share_the_init():
    from tasks.heads import init_head_weights

    assert init_head_weights is init_linear_and_norm
