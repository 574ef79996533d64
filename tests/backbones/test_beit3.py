"""Behaviour of the BEiT-3 backbones beyond official parity: layouts, routing, training switches, init."""
import math

import pytest
import torch

import backbones
from backbones.beit3 import build_attn_bias

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, vocab_size=50)


def tiny(**overrides):
    return backbones.create_model("beit3_tiny_patch16_224", **{**TINY, **overrides})


def batch(text_len=5):
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 32, 32, generator=gen)
    text = torch.randint(3, 50, (2, text_len), generator=gen)
    padding = torch.zeros(2, text_len, dtype=torch.long)
    padding[1, 3:] = 1
    return image, text, padding


def test_registry_names_and_defaults():
    names = backbones.list_models()
    for size in ("base", "large"):
        for res in (224, 384, 480, 768):
            assert f"beit3_{size}_patch16_{res}" in names
    assert "beit3_giant_patch14_224" in names and "beit3_tiny_patch16_224" in names
    assert backbones.list_models("beit3_large*") == [n for n in names if n.startswith("beit3_large")]
    with torch.device("meta"):
        giant = backbones.create_model("beit3_giant_patch14_224")
    cfg = giant.config
    assert (cfg.layout, cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.ffn_dim, cfg.patch_size, cfg.vl_ffn_layers) == (
        "paper", 1408, 40, 16, 6144, 14, 3)


def test_overrides_reach_the_config():
    model = tiny(mlp_ratio=2.0, drop_path_rate=0.2, layout="paper", vl_ffn_layers=2, img_size=48, patch_size=16)
    cfg = model.config
    assert (cfg.ffn_dim, cfg.drop_path_rate, cfg.layout, cfg.vl_ffn_layers, cfg.img_size, cfg.patch_size) == (
        64, 0.2, "paper", 2, 48, 16)
    assert model.beit3.encoder.embed_positions.A.num_embeddings == 9 + 3


def test_paper_layout_keys():
    model = tiny(layout="paper", vl_ffn_layers=1)
    keys = set(model.state_dict())
    assert "beit3.encoder.layers.0.self_attn.q_proj.weight" in keys
    assert not any(".self_attn." in k and (".A." in k or ".B." in k) for k in keys)
    for i in range(3):
        assert f"beit3.encoder.layers.{i}.ffn.A.fc1.weight" in keys
        assert f"beit3.encoder.layers.{i}.ffn.B.fc1.weight" in keys
        assert (f"beit3.encoder.layers.{i}.ffn.VL.fc1.weight" in keys) == (i == 2)
        assert (f"beit3.encoder.layers.{i}.final_layer_norm.VL.weight" in keys) == (i == 2)
    assert "beit3.encoder.layer_norm.weight" in keys


def grads_after(model, **inputs):
    model.zero_grad()
    model(**inputs)["encoder_out"].sum().backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_paper_layout_routing():
    model = tiny(layout="paper", vl_ffn_layers=1)
    image, text, padding = batch()
    vl = "beit3.encoder.layers.2.ffn.VL.fc1.weight"
    v_top, l_top = "beit3.encoder.layers.2.ffn.A.fc1.weight", "beit3.encoder.layers.2.ffn.B.fc1.weight"
    v_low, l_low = "beit3.encoder.layers.0.ffn.A.fc1.weight", "beit3.encoder.layers.0.ffn.B.fc1.weight"
    pair = grads_after(model, visual_tokens=image, textual_tokens=text, text_padding_position=padding)
    assert {vl, v_low, l_low} <= pair and not {v_top, l_top} & pair  # all pair tokens -> VL in the top layer
    image_only = grads_after(model, visual_tokens=image)
    assert v_top in image_only and vl not in image_only and l_low not in image_only
    text_only = grads_after(model, textual_tokens=text)
    assert l_top in text_only and vl not in text_only and v_low not in text_only


def test_released_layout_routes_each_modality_to_its_own_copy():
    model = tiny()
    image, _, _ = batch()
    used = grads_after(model, visual_tokens=image)
    assert "beit3.encoder.layers.0.self_attn.q_proj.A.weight" in used
    assert not any(".B." in name for name in used)


@torch.no_grad()
@pytest.mark.parametrize("layout", ["released", "paper"])
def test_fused_attention_equals_explicit_softmax(layout):
    fused = tiny(layout=layout).eval()
    explicit = tiny(layout=layout, fused_attn=False).eval()
    explicit.load_state_dict(fused.state_dict())
    image, text, padding = batch()
    mask = torch.triu(torch.ones(17 + 5, 17 + 5, dtype=torch.long), diagonal=1)
    for kwargs in (
        dict(visual_tokens=image),
        dict(textual_tokens=text, text_padding_position=padding),
        dict(visual_tokens=image, textual_tokens=text, text_padding_position=padding, attn_mask=mask),
    ):
        torch.testing.assert_close(fused(**kwargs)["encoder_out"], explicit(**kwargs)["encoder_out"], atol=1e-5, rtol=0)


@torch.no_grad()
def test_paper_layout_incremental_decoding_keeps_vl_routing():
    model = tiny(layout="paper", vl_ffn_layers=2).eval()
    image, text, _ = batch(text_len=4)
    n_img = 17
    total = n_img + 4
    mask = torch.ones(total, total, dtype=torch.long)
    mask[:, :n_img] = 0
    mask[n_img:, n_img:] = 1 - torch.tril(torch.ones(4, 4, dtype=torch.long))
    full = model(visual_tokens=image, textual_tokens=text, attn_mask=mask)["encoder_out"]
    state = {}
    first = model(visual_tokens=image, textual_tokens=text[:, :1], attn_mask=mask[: n_img + 1, : n_img + 1], incremental_state=state)
    torch.testing.assert_close(first["encoder_out"], full[:, : n_img + 1], atol=1e-5, rtol=0)
    for step in range(1, 4):
        row = n_img + step
        out = model(textual_tokens=text[:, step : step + 1], attn_mask=mask[row : row + 1, : row + 1],
                    incremental_state=state, positions=torch.tensor([[2 + step]]))
        torch.testing.assert_close(out["encoder_out"][:, 0], full[:, row], atol=1e-5, rtol=0)


def test_activation_checkpointing_gives_the_same_gradients():
    image, text, padding = batch()
    plain = tiny(layout="paper", vl_ffn_layers=1)
    ckpt = tiny(layout="paper", vl_ffn_layers=1, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    for model in (plain, ckpt):
        model.train()
        model(visual_tokens=image, textual_tokens=text, text_padding_position=padding)["encoder_out"].pow(2).sum().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)
    model = tiny()
    model.set_grad_checkpointing(True)
    assert model.beit3.encoder.grad_checkpointing


def test_drop_path_linspace_and_train_eval():
    model = tiny(drop_path_rate=0.3)
    rates = [getattr(layer.drop_path, "drop_prob", 0.0) for layer in model.beit3.encoder.layers]
    assert rates == pytest.approx([0.0, 0.15, 0.3])  # np.linspace(0, rate, depth)
    image, _, _ = batch()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(visual_tokens=image)["encoder_out"], model(visual_tokens=image)["encoder_out"])
        model.train()
        torch.manual_seed(1)
        a = model(visual_tokens=image)["encoder_out"]
        torch.manual_seed(2)
        b = model(visual_tokens=image)["encoder_out"]
    assert not torch.allclose(a, b)


def test_official_init_truncates_linears_and_keeps_embedding_defaults():
    model = backbones.create_model("beit3_tiny_patch16_224", embed_dim=64, num_heads=4, depth=2, vocab_size=500)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert module.weight.abs().max() <= 0.02 + 1e-7, name
            assert module.bias.abs().max() == 0, name
        if isinstance(module, torch.nn.LayerNorm):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    text_std = model.beit3.text_embed.weight.std().item()
    assert text_std == pytest.approx(64**-0.5, rel=0.1)
    assert model.beit3.encoder.embed_positions.B.weight.std().item() == pytest.approx(1.0, rel=0.1)
    assert torch.all(model.beit3.vision_embed.cls_token == 0)


def test_beit_init_rescales_output_projections_per_layer():
    model = backbones.create_model("beit3_tiny_patch16_224", embed_dim=64, num_heads=4, depth=3, vocab_size=500, init="beit")
    for index, layer in enumerate(model.beit3.encoder.layers, start=1):
        bound = 0.02 / math.sqrt(2 * index)
        for weight in (layer.self_attn.out_proj.A.weight, layer.self_attn.out_proj.B.weight, layer.ffn.A.fc2.weight):
            assert weight.abs().max() <= bound + 1e-7
            assert weight.abs().max() > 0.8 * bound  # rescaled, not re-drawn smaller
        assert layer.self_attn.q_proj.A.weight.abs().max() > 0.8 * 0.02
    assert model.beit3.text_embed.weight.abs().max() <= 0.02 + 1e-7


def test_attention_bias_semantics():
    assert build_attn_bias(None, None, torch.float32) is None
    padding = torch.tensor([[0, 0, 1]])
    keep = build_attn_bias(None, padding, torch.float32)
    assert keep.dtype == torch.bool and keep.tolist() == [[[[True, True, False]]]]
    mask = torch.tensor([[0, 1, 0], [0, 0, 0], [0, 0, 2]])
    bias = build_attn_bias(mask, padding, torch.float32)
    assert bias.shape == (1, 1, 3, 3)
    assert bias[0, 0, 0, 1] == -1e8 and bias[0, 0, 2, 2] == float("-inf") and bias[0, 0, 1, 0] == 0


def test_layer_decay_ids_and_no_weight_decay():
    model = tiny()
    num_layers = model.get_num_layers()
    assert backbones.layer_id_for_lr_decay("beit3.text_embed.weight", num_layers) == 0
    assert backbones.layer_id_for_lr_decay("beit3.encoder.embed_positions.A.weight", num_layers) == 0
    assert backbones.layer_id_for_lr_decay("beit3.encoder.layers.2.ffn.A.fc1.weight", num_layers) == 3
    assert backbones.layer_id_for_lr_decay("beit3.encoder.layer_norm.A.weight", num_layers) == num_layers + 1
    assert model.no_weight_decay() == {"beit3.encoder.embed_positions.A.weight", "beit3.vision_embed.cls_token"}


def test_dynamic_img_size_interpolates_positions_at_run_time():
    model = tiny(dynamic_img_size=True).eval()
    with torch.no_grad():
        out = model(visual_tokens=torch.randn(1, 3, 48, 48))["encoder_out"]
    assert out.shape == (1, 1 + 36, 32)
