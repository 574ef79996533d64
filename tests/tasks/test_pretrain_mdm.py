"""BEiT-3 masked data modeling: heads, losses, both layouts, and batches from PretrainingData."""

import random

import pytest
import torch

import tasks
from backbones.tokenizers import PatchCodebookTokenizer, TextTokenizer, train_sentencepiece
from tasks.pretrain_data import PretrainingData
from tasks.pretrain_mdm import BEiT3ForMaskedDataModeling

TINY = dict(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, vocab_size=100)
NUM_CODES = 16
LAYOUTS = ["released", "paper"]


def build(layout="released", **overrides):
    return tasks.build_model("pretrain_mdm", "beit3_tiny_patch16_224", num_visual_tokens=NUM_CODES,
                             layout=layout, **{**TINY, **overrides})


def fixed_batch(batch=4, length=10, seed=0, streams=("image", "text", "pair")):
    g = torch.Generator().manual_seed(seed)
    out = {}
    if "image" in streams:
        mask = torch.zeros(batch, 4, dtype=torch.bool)
        mask[:, 1:3] = True
        out.update(image=torch.randn(batch, 3, 32, 32, generator=g), image_mask=mask,
                   image_codes=torch.randint(NUM_CODES, (batch, 4), generator=g))
    for prefix, key, prob in (("text", "text", 0.3), ("pair", "pair_text", 0.5)):
        if prefix not in streams:
            continue
        ids = torch.randint(4, 90, (batch, length), generator=g)
        ids[:, 0], ids[:, -1] = 0, 1
        padding = (ids == 1).long()
        chosen = (torch.rand(batch, length, generator=g) < prob) & (padding == 0)
        chosen[:, 0] = False
        chosen[:, 1] = True
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        inputs = torch.where(chosen, torch.full_like(ids, 99), ids)
        if prefix == "text":
            out.update(text_ids=inputs, text_padding_mask=padding, text_labels=labels)
        else:
            out.update(pair_image=torch.randn(batch, 3, 32, 32, generator=g), pair_text_ids=inputs,
                       pair_padding_mask=padding, pair_text_labels=labels)
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_all_streams_loss_is_the_sum_and_logs(layout):
    model = build(layout)
    assert isinstance(model, BEiT3ForMaskedDataModeling)
    assert model.mlm_head.out_features == 100 and model.mim_head.out_features == NUM_CODES
    batch = fixed_batch()
    out = model(batch)
    for name in ("mim", "mlm", "pair_mlm"):
        assert out[f"{name}_loss"].ndim == 0 and not out[f"{name}_loss"].requires_grad
        assert 0.0 <= float(out[f"{name}_acc"]) <= 1.0
    assert torch.allclose(out["loss"], out["mim_loss"] + out["mlm_loss"] + out["pair_mlm_loss"])
    assert out["mim_count"] == batch["image_mask"].sum()
    assert out["mlm_count"] == (batch["text_labels"] != -100).sum()
    assert out["pair_mlm_count"] == (batch["pair_text_labels"] != -100).sum()
    # untrained heads: CE close to log(classes)
    assert abs(float(out["mim_loss"]) - torch.log(torch.tensor(NUM_CODES)).item()) < 0.5
    assert abs(float(out["mlm_loss"]) - torch.log(torch.tensor(100.0)).item()) < 0.5


def test_subsets_of_streams():
    model = build()
    text_only = model(fixed_batch(streams=("text",)))
    assert set(k for k in text_only if k.endswith("_loss")) == {"mlm_loss"}
    assert torch.equal(text_only["loss"], text_only["mlm_loss"])
    image_only = model(fixed_batch(streams=("image",)))
    assert set(k for k in image_only if k.endswith("_loss")) == {"mim_loss"}
    with pytest.raises(KeyError, match="no stream"):
        model({"model_seed": torch.tensor(0)})
    broken = fixed_batch(streams=("image",))
    del broken["image_codes"]
    with pytest.raises(KeyError, match="image_codes"):
        model(broken)
    # codes are checked where they are made (PretrainingData, on the host); the model reads none back
    bad_codes = fixed_batch(streams=("image",))
    bad_codes["image_codes"][0, 0] = NUM_CODES
    bad_codes["image_mask"][0, 0] = True
    with pytest.raises(IndexError, match="out of bounds"):
        model(bad_codes)


def test_heads_see_only_masked_positions_and_masked_pixels_are_hidden():
    model = build().eval()
    batch = fixed_batch(streams=("image", "text"))
    seen = {}
    model.mim_head.register_forward_hook(lambda m, i, o: seen.__setitem__("mim", i[0].shape))
    model.mlm_head.register_forward_hook(lambda m, i, o: seen.__setitem__("mlm", i[0].shape))
    base = model(batch)
    assert seen["mim"] == (int(batch["image_mask"].sum()), 32)
    assert seen["mlm"] == (int((batch["text_labels"] != -100).sum()), 32)
    # the pixels of masked patches never reach the encoder (they are replaced by the mask token) ...
    hidden = dict(batch, image=batch["image"].clone())
    hidden["image"][:, :, :16, 16:] = 5.0  # patch 1 (row 0, col 1) is masked in every row
    assert torch.equal(model(hidden)["mim_loss"], base["mim_loss"])
    # ... while those of visible patches do
    visible = dict(batch, image=batch["image"].clone())
    visible["image"][:, :, :16, :16] = 5.0  # patch 0 is visible
    assert not torch.equal(model(visible)["mim_loss"], base["mim_loss"])


def test_pair_image_masking_is_optional():
    model = build("paper")
    batch = fixed_batch(streams=("pair",))
    assert "pair_mim_loss" not in model(batch)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:, 0] = True
    batch.update(pair_image_mask=mask, pair_image_codes=torch.randint(NUM_CODES, (4, 4)))
    out = model(batch)
    assert out["pair_mim_count"] == 4
    assert torch.allclose(out["loss"], out["pair_mlm_loss"] + out["pair_mim_loss"])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_loss_decreases_on_a_fixed_batch(layout):
    torch.manual_seed(0)
    model = build(layout)
    batch = fixed_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    with torch.no_grad():
        first = model(batch)
    for _ in range(20):
        out = model(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    with torch.no_grad():
        last = model(batch)
    for name in ("loss", "mim_loss", "mlm_loss", "pair_mlm_loss"):
        assert float(last[name]) < 0.7 * float(first[name]), (name, float(first[name]), float(last[name]))


def test_paper_init_and_head_init():
    model = build("paper", init="beit")
    assert model.config.init == "beit" and model.config.layout == "paper"
    for head in (model.mlm_head, model.mim_head):
        weight = head.weight.detach()
        assert float(weight.abs().max()) <= 0.02 + 1e-7 and float(weight.std()) > 0.005
        assert torch.count_nonzero(head.bias) == 0
    assert "beit3.encoder.layers.1.ffn.VL.fc1.weight" in dict(model.named_parameters())
    keys = model.state_dict().keys()
    assert {"mlm_head.weight", "mim_head.weight", "beit3.text_embed.weight"} <= set(keys)


@pytest.fixture(scope="module")
def text_tokenizer(tmp_path_factory):
    rng = random.Random(0)
    words = "a the man woman dog cat red blue green ball tree play rides sits on near with".split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) for _ in range(200)]
    root = tmp_path_factory.mktemp("spm")
    return TextTokenizer(train_sentencepiece(lines, root / "toy", vocab_size=40)), lines


@pytest.mark.parametrize("layout", LAYOUTS)
def test_trains_on_pretraining_data_batches(text_tokenizer, layout):
    tok, lines = text_tokenizer
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8, generator=g) for _ in range(6)]
    visual = PatchCodebookTokenizer(torch.rand(NUM_CODES, 48, generator=g), patch_size=16, pool=4)
    data = PretrainingData(images=images, texts=lines[:20], pairs=list(zip(images, lines)), text_tokenizer=tok,
                           visual_tokenizer=visual, img_size=32, patch_size=16, batch_size=3,
                           max_text_len=12, max_pair_text_len=12, seed=1)
    model = build(layout)
    out = model(data.next_batch())
    out["loss"].backward()
    assert {"mim_loss", "mlm_loss", "pair_mlm_loss"} <= set(out)
    # every expert (V-, L- and, in the paper layout, VL-FFN) and both heads take part in one step
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
