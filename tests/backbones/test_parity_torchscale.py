"""Parity with the official implementation: torchscale 0.3.0's BEiT3 is the oracle.

A state dict saved from torchscale (prefix ``beit3.`` as in unilm's BEiT3Wrapper) loads strictly into
our released-layout model and the outputs agree to 1e-5 (fp32) on every input kind the official
tasks use, including incremental decoding with the KV cache.
"""
import pytest
import torch
from torch import nn

import backbones

torchscale = pytest.importorskip("torchscale", reason="torchscale 0.3.0 is the test-only oracle (make setup)")
from torchscale.architecture.config import EncoderConfig  # noqa: E402
from torchscale.model.BEiT3 import BEiT3 as OfficialBEiT3  # noqa: E402

ATOL = 1e-5
SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4, mlp_ratio=4.0, vocab_size=120)


class OfficialWrapper(nn.Module):
    """unilm's BEiT3Wrapper minus its init: the module that owns the ``beit3.`` prefix."""

    def __init__(self, args):
        super().__init__()
        self.beit3 = OfficialBEiT3(args)

    def forward(self, **kwargs):
        return self.beit3(**kwargs)


def official_config(**overrides):
    cfg = dict(
        img_size=SMALL["img_size"], patch_size=SMALL["patch_size"], vocab_size=SMALL["vocab_size"],
        multiway=True, layernorm_embedding=False, normalize_output=True, no_output_layer=True,
        drop_path_rate=0.0, encoder_embed_dim=SMALL["embed_dim"], encoder_attention_heads=SMALL["num_heads"],
        encoder_ffn_embed_dim=SMALL["embed_dim"] * 4, encoder_layers=SMALL["depth"], checkpoint_activations=False,
    )
    cfg.update(overrides)
    return EncoderConfig(**cfg)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    official = OfficialWrapper(official_config()).eval()
    with torch.no_grad():  # random everything, LayerNorms included, so no parameter can hide
        for param in official.parameters():
            param.normal_(0.0, 0.2)
    ours = backbones.create_model("beit3_tiny_patch16_224", **SMALL).eval()
    backbones.load_checkpoint(ours, {"model": official.state_dict()})
    return official, ours


def inputs(batch=2, text_len=7, seed=1):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, 32, 32, generator=gen)
    text = torch.randint(3, SMALL["vocab_size"], (batch, text_len), generator=gen)
    padding = torch.zeros(batch, text_len, dtype=torch.long)
    padding[0, 5:] = 1  # first row padded
    return image, text, padding


def assert_same(official_out, our_out):
    assert official_out["multiway_split_position"] == our_out["multiway_split_position"]
    torch.testing.assert_close(our_out["encoder_out"], official_out["encoder_out"], atol=ATOL, rtol=0)


def test_state_dict_keys_and_shapes_equal(pair):
    official, ours = pair
    assert list(ours.state_dict()) == list(official.state_dict())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in official.state_dict().items()}


@torch.no_grad()
def test_image_only(pair):
    official, ours = pair
    image, _, _ = inputs()
    assert_same(official(visual_tokens=image), ours(visual_tokens=image))


@torch.no_grad()
def test_text_only_with_padding(pair):
    official, ours = pair
    _, text, padding = inputs()
    assert_same(
        official(textual_tokens=text, text_padding_position=padding),
        ours(textual_tokens=text, text_padding_position=padding),
    )


@torch.no_grad()
def test_image_and_text(pair):
    official, ours = pair
    image, text, padding = inputs()
    assert_same(
        official(textual_tokens=text, visual_tokens=image, text_padding_position=padding),
        ours(textual_tokens=text, visual_tokens=image, text_padding_position=padding),
    )


def captioning_mask(num_image_tokens, text_len):
    """unilm BEiT3ForCaptioning's uni_mask: image sees image; text sees image + causal text. 1 = blocked."""
    total = num_image_tokens + text_len
    allowed = torch.zeros(total, total, dtype=torch.long)
    allowed[:, :num_image_tokens] = 1
    allowed[num_image_tokens:, num_image_tokens:] = torch.tril(torch.ones(text_len, text_len, dtype=torch.long))
    allowed[:num_image_tokens, num_image_tokens:] = 0
    return 1 - allowed


@torch.no_grad()
def test_additive_attention_mask(pair):
    official, ours = pair
    image, text, padding = inputs()
    mask = captioning_mask(1 + (32 // 8) ** 2, text.shape[1])
    assert_same(
        official(textual_tokens=text, visual_tokens=image, text_padding_position=padding, attn_mask=mask),
        ours(textual_tokens=text, visual_tokens=image, text_padding_position=padding, attn_mask=mask),
    )


@torch.no_grad()
def test_masked_patches(pair):
    official, ours = pair
    image, text, _ = inputs()
    gen = torch.Generator().manual_seed(3)
    masked = torch.rand(image.shape[0], 16, generator=gen) < 0.4
    assert masked.any()
    assert_same(
        official(visual_tokens=image, vision_masked_position=masked),
        ours(visual_tokens=image, vision_masked_position=masked),
    )
    assert_same(
        official(textual_tokens=text, visual_tokens=image, vision_masked_position=masked),
        ours(textual_tokens=text, visual_tokens=image, vision_masked_position=masked),
    )


@torch.no_grad()
def test_all_hidden_states(pair):
    official, ours = pair
    image, text, _ = inputs()
    # torchscale's BEiT3 hides return_all_hiddens; call its encoder the way the mmdet adapters do.
    x = torch.cat([official.beit3.vision_embed(image), official.beit3.text_embed(text)], dim=1)
    split = 1 + 16
    want = official.beit3.encoder(src_tokens=None, token_embeddings=x, multiway_split_position=split, return_all_hiddens=True)
    got = ours(textual_tokens=text, visual_tokens=image, return_all_hiddens=True)
    assert len(got["encoder_states"]) == len(want["encoder_states"]) == SMALL["depth"] + 1
    for ours_state, official_state in zip(got["encoder_states"], want["encoder_states"]):
        torch.testing.assert_close(ours_state, official_state, atol=ATOL, rtol=0)


def decode_incrementally(model, image, text, mask, num_image_tokens):
    """Feed image + first token, then one token per step with explicit positions and mask rows."""
    state = {layer: {} for layer in range(SMALL["depth"])}  # as unilm's captioning handler
    outs = [model(
        textual_tokens=text[:, :1], visual_tokens=image,
        attn_mask=mask[: num_image_tokens + 1, : num_image_tokens + 1], incremental_state=state,
    )["encoder_out"]]
    for step in range(1, text.shape[1]):
        row = num_image_tokens + step
        outs.append(model(
            textual_tokens=text[:, step : step + 1],
            attn_mask=mask[row : row + 1, : row + 1],
            incremental_state=state,
            positions=torch.tensor([[2 + step]]),
        )["encoder_out"])
    return outs, state


@torch.no_grad()
def test_incremental_decoding_matches_full_forward_and_official(pair):
    official, ours = pair
    image, text, _ = inputs(text_len=6)
    num_image_tokens = 1 + 16
    mask = captioning_mask(num_image_tokens, text.shape[1])
    full = ours(textual_tokens=text, visual_tokens=image, attn_mask=mask)["encoder_out"]

    ours_steps, state = decode_incrementally(ours, image, text, mask, num_image_tokens)
    official_steps, official_state = decode_incrementally(official, image, text, mask, num_image_tokens)

    torch.testing.assert_close(ours_steps[0], full[:, : num_image_tokens + 1], atol=ATOL, rtol=0)
    for step in range(1, text.shape[1]):
        torch.testing.assert_close(ours_steps[step][:, 0], full[:, num_image_tokens + step], atol=ATOL, rtol=0)
        torch.testing.assert_close(ours_steps[step], official_steps[step], atol=ATOL, rtol=0)
    # The cache has torchscale's layout: (B, heads, T, head_dim) under prev_key/prev_value.
    assert state[0]["prev_key"].shape == official_state[0]["prev_key"].shape == (2, 4, num_image_tokens + 6, 16)


@torch.no_grad()
def test_position_interpolation_matches_official_loader(pair):
    """A 32px checkpoint loaded into a 48px model: table resized like unilm's loader."""
    official, _ = pair
    bigger = backbones.create_model("beit3_tiny_patch16_224", **{**SMALL, "img_size": 48}).eval()
    backbones.load_checkpoint(bigger, official.state_dict())
    table = official.state_dict()["beit3.encoder.embed_positions.A.weight"]
    grid = table[3:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)
    want = torch.cat([table[:3], grid.permute(0, 2, 3, 1).flatten(0, 2)])
    torch.testing.assert_close(bigger.state_dict()["beit3.encoder.embed_positions.A.weight"], want)


def test_base_keys_and_shapes_match_official_dump_and_torchscale():
    with torch.device("meta"):
        ours = backbones.create_model("beit3_base_patch16_224")
        official = OfficialWrapper(official_config(
            img_size=224, patch_size=16, vocab_size=64010, encoder_embed_dim=768, encoder_attention_heads=12,
            encoder_ffn_embed_dim=3072, encoder_layers=12,
        ))
    ours_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert ours_shapes == {k: tuple(v.shape) for k, v in official.state_dict().items()}
    assert sum(v.numel() for v in ours.state_dict().values()) == 220_987_392
