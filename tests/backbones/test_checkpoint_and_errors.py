"""Checkpoint formats, strict loading, and one clear error for each kind of bad input."""
import pytest
import torch

import backbones
from backbones import CheckpointError, UnknownModelError

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, vocab_size=50)


def tiny(**overrides):
    return backbones.create_model("beit3_tiny_patch16_224", **{**TINY, **overrides})


@pytest.mark.parametrize("wrap", [lambda sd: {"model": sd}, lambda sd: {"module": sd}, lambda sd: sd])
def test_reads_model_module_and_raw_files(tmp_path, wrap):
    source = tiny()
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(source.state_dict()), path)
    target = tiny()
    backbones.load_checkpoint(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_explicit_model_key_and_drop_patterns(tmp_path):
    source = tiny()
    state = {**source.state_dict(), "mlm_head.weight": torch.zeros(50, 32), "mim_head.weight": torch.zeros(8192, 32)}
    path = tmp_path / "pretrain.pth"
    torch.save({"ema": {}, "weights": state}, path)
    with pytest.raises(CheckpointError, match="unexpected"):
        backbones.load_checkpoint(tiny(), path, model_key="weights")
    backbones.load_checkpoint(tiny(), path, model_key="weights", drop=["mlm_head.*", "mim_head.*"])
    with pytest.raises(CheckpointError, match="no entry 'missing'"):
        backbones.load_checkpoint(tiny(), path, model_key="missing")


def test_wrong_checkpoint_names_every_key_and_shape(tmp_path):
    state = tiny().state_dict()
    state.pop("beit3.text_embed.weight")
    state.pop("beit3.vision_embed.cls_token")
    state["beit3.pooler.weight"] = torch.zeros(3)
    state["beit3.encoder.layers.0.ffn.A.fc1.weight"] = torch.zeros(7, 32)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as info:
        backbones.load_checkpoint(tiny(), path)
    message = str(info.value)
    assert str(path) in message
    assert "beit3.text_embed.weight" in message and "beit3.vision_embed.cls_token" in message
    assert "beit3.pooler.weight" in message
    assert "beit3.encoder.layers.0.ffn.A.fc1.weight: expected [128, 32], found [7, 32]" in message


def test_size_change_without_interpolation_is_a_shape_mismatch():
    state = tiny().state_dict()
    with pytest.raises(CheckpointError, match=r"embed_positions.A.weight: expected \[39, 32\], found \[19, 32\]"):
        backbones.load_checkpoint(tiny(img_size=48), state, interpolate_pos=False)
    backbones.load_checkpoint(tiny(img_size=48), state)  # interpolation is the default


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "truncated.pth"
    good = tmp_path / "good.pth"
    torch.save({"model": tiny().state_dict()}, good)
    bad.write_bytes(good.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        backbones.load_checkpoint(tiny(), bad)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        backbones.load_checkpoint(tiny(), tmp_path / "nope.pth")


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "object.pth"
    torch.save({"model": tiny().state_dict(), "args": object()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        backbones.read_state_dict(path)


def test_unknown_model_lists_close_names():
    with pytest.raises(UnknownModelError) as info:
        backbones.create_model("beit3_base_patch16_244")
    assert "beit3_base_patch16_224" in str(info.value).split("Known")[0]


def test_unknown_layout_override_and_init():
    with pytest.raises(ValueError, match="unknown layout 'shared'.*released, paper"):
        tiny(layout="shared")
    with pytest.raises(TypeError, match="unknown override.*depht"):
        tiny(depht=3)
    with pytest.raises(ValueError, match="unknown init"):
        tiny(init="xavier")
    with pytest.raises(ValueError, match="released layout has no VL-FFN"):
        tiny(vl_ffn_layers=1)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        tiny(img_size=30)


def test_image_size_that_does_not_fit_the_position_table():
    model = tiny()
    with pytest.raises(ValueError, match="image size 48x48 does not match the model's img_size 32x32"):
        model(visual_tokens=torch.randn(1, 3, 48, 48))


def test_text_longer_than_the_position_table():
    model = tiny(max_text_positions=10)
    model(textual_tokens=torch.randint(3, 50, (1, 8)))
    with pytest.raises(ValueError, match="text of 9 tokens .* at most 8 tokens"):
        model(textual_tokens=torch.randint(3, 50, (1, 9)))


def test_forward_needs_an_input():
    with pytest.raises(ValueError, match="needs textual_tokens, visual_tokens or both"):
        tiny()()
