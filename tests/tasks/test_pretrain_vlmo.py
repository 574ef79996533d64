"""VLMo's staged recipe: stage freezing, ITC (with the gather), hard-negative ITM, MLM, both layouts."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import backbones
import tasks
from tasks.pretrain_vlmo import (
    VLMoForPretraining,
    configure_stage,
    contrastive_loss,
    sample_hard_negatives,
)

TINY = dict(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, vocab_size=100)
NUM_CODES = 16
LAYOUTS = ["paper", "released"]


def build(layout="paper", **kwargs):
    return tasks.build_model("pretrain_vlmo", "beit3_tiny_patch16_224", num_visual_tokens=NUM_CODES,
                             layout=layout, **{**TINY, **kwargs})


def batch(n=4, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, 4, dtype=torch.bool)
    mask[:, 1:3] = True
    out = dict(image=torch.randn(n, 3, 32, 32, generator=g), image_mask=mask,
               image_codes=torch.randint(NUM_CODES, (n, 4), generator=g))
    for prefix in ("text", "pair"):
        ids = torch.randint(4, 90, (n, length), generator=g)
        ids[:, 0], ids[:, -2:] = 0, 1
        padding = (ids == 1).long()
        chosen = torch.zeros_like(ids, dtype=torch.bool)
        chosen[:, 2:5] = True
        labels = torch.where(chosen, ids, torch.full_like(ids, -100))
        inputs = torch.where(chosen, torch.full_like(ids, 99), ids)
        if prefix == "text":
            out.update(text_ids=inputs, text_padding_mask=padding, text_labels=labels)
        else:
            out.update(pair_image=torch.randn(n, 3, 32, 32, generator=g), pair_text_ids=inputs,
                       pair_padding_mask=padding, pair_text_labels=labels)
    out["model_seed"] = torch.tensor(7)
    return out


def wb(prefix):
    return {f"{prefix}.weight", f"{prefix}.bias"}


def ffn(layer, branch):
    base = f"beit3.encoder.layers.{layer}"
    return set().union(*(wb(f"{base}.ffn.{branch}.{m}") for m in ("fc1", "fc2", "ffn_layernorm")),
                       wb(f"{base}.final_layer_norm.{branch}"))


def attention(layer, branch=None):
    base = f"beit3.encoder.layers.{layer}"
    suffix = f".{branch}" if branch else ""
    modules = [f"self_attn.{m}{suffix}" for m in ("k_proj", "v_proj", "q_proj", "out_proj", "inner_attn_ln")]
    return set().union(*(wb(f"{base}.{m}") for m in modules + [f"self_attn_layer_norm{suffix}"]))


VISION_EMBED = {"beit3.vision_embed.mask_token", "beit3.vision_embed.cls_token", "beit3.vision_embed.proj.weight",
                "beit3.vision_embed.proj.bias", "beit3.encoder.embed_positions.A.weight"}
TEXT_EMBED = {"beit3.text_embed.weight", "beit3.encoder.embed_positions.B.weight"}


def test_stage_parameters_paper_layout():
    model = build("paper")
    everything = {name for name, _ in model.named_parameters()}
    stage1 = set(configure_stage(model, 1))
    assert stage1 == VISION_EMBED | attention(0) | attention(1) | ffn(0, "A") | ffn(1, "A") \
        | wb("beit3.encoder.layer_norm") | wb("mim_head")
    # vlmo/run.py textmlm: text embeddings, positions, L-FFN (mlp_text, norm2_text), final norm, MLM head
    stage2 = set(configure_stage(model, 2))
    assert stage2 == TEXT_EMBED | ffn(0, "B") | ffn(1, "B") | wb("beit3.encoder.layer_norm") | wb("mlm_head")
    assert all(not p.requires_grad for n, p in model.named_parameters() if n not in stage2)
    stage3 = set(configure_stage(model, 3))
    assert stage3 == everything - wb("mim_head") - {"beit3.vision_embed.mask_token"}
    assert ffn(1, "VL") <= stage3 and {"logit_scale", "itc_vl_logit_scale", "itm_head.weight"} <= stage3
    with pytest.raises(ValueError, match="stage"):
        configure_stage(model, 4)


def test_stage_parameters_released_layout():
    model = build("released")
    stage1 = set(configure_stage(model, 1))
    assert stage1 == VISION_EMBED | attention(0, "A") | attention(1, "A") | ffn(0, "A") | ffn(1, "A") \
        | wb("beit3.encoder.layer_norm.A") | wb("mim_head")
    stage2 = set(configure_stage(model, 2))
    assert stage2 == TEXT_EMBED | attention(0, "B") | attention(1, "B") | ffn(0, "B") | ffn(1, "B") \
        | wb("beit3.encoder.layer_norm.B") | wb("mlm_head")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_frozen_parameters_stay_and_trainable_ones_move(layout, stage):
    model = build(layout)
    trainable = set(configure_stage(model, stage))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    model(batch(), stage)["loss"].backward()
    optimizer.step()
    for name, param in model.named_parameters():
        if name in trainable:
            assert param.grad is not None, f"{name} is trainable in stage {stage} but unused"
            assert not torch.equal(param, before[name]), name
        else:
            assert param.grad is None and torch.equal(param, before[name]), name


@pytest.mark.parametrize("layout,stage", [("paper", 1), ("paper", 2), ("paper", 3), ("released", 3)])
def test_loss_decreases_in_each_stage(layout, stage):
    # BEiT init (from-scratch pretraining): under the fine-tuning init the N(0, 1) position rows swamp
    # the first token, so the CLS features of a tiny untrained model barely differ between samples.
    torch.manual_seed(0)
    model = build(layout, init="beit")
    configure_stage(model, stage)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    data = batch()
    with torch.no_grad():
        first = model(data, stage)
    for _ in range(20):
        out = model(data, stage)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    with torch.no_grad():
        last = model(data, stage)
    assert float(last["loss"]) < 0.8 * float(first["loss"]), (float(first["loss"]), float(last["loss"]))
    names = {1: ["mim_loss"], 2: ["mlm_loss"], 3: ["itc_loss", "itm_loss", "pair_mlm_loss"]}[stage]
    for name in names:
        assert float(last[name]) < float(first[name]), (name, float(first[name]), float(last[name]))
    if stage == 3:
        assert float(last["itc_loss"]) < 0.5 * math.log(4)  # well below chance: the pairs are told apart


def test_stage3_logs_and_weights():
    model = build("paper")
    out = model(batch(), 3)
    expected = {"loss", "itc_loss", "itm_loss", "itm_acc", "pair_mlm_loss", "pair_mlm_acc", "itc_i2t_acc",
                "itc_t2i_acc", "logit_scale", "itc_ffn_loss", "itc_vlffn_loss", "itc_vl_i2t_acc", "itc_vl_t2i_acc"}
    assert expected <= set(out)
    assert torch.allclose(out["loss"], out["itc_loss"] + out["itm_loss"] + 0.25 * out["pair_mlm_loss"])
    assert torch.allclose(out["itc_loss"], (out["itc_ffn_loss"] + out["itc_vlffn_loss"]) / 2)
    assert math.isclose(float(out["logit_scale"]), 1 / 0.07, rel_tol=1e-5)
    assert abs(float(out["itm_loss"]) - math.log(2)) < 0.1  # untrained: near chance
    released = build("released")(batch(), 3)
    assert "itc_vlffn_loss" not in released
    with pytest.raises(ValueError, match="VL-FFN"):
        VLMoForPretraining(backbones.create_model("beit3_tiny_patch16_224", **TINY), itc_vl_branch=True)


def test_itc_and_itm_read_the_clean_text():
    model = build("paper").eval()
    masked = batch()
    labels = masked["pair_text_labels"]
    clean = dict(masked, pair_text_ids=torch.where(labels != -100, labels, masked["pair_text_ids"]))
    a, b = model(masked, 3), model(clean, 3)
    assert torch.equal(a["itc_loss"], b["itc_loss"]) and torch.equal(a["itm_loss"], b["itm_loss"])
    assert not torch.equal(a["pair_mlm_loss"], b["pair_mlm_loss"])  # MLM reads the corrupted ids


def test_hard_negatives_are_seeded():
    model = build("paper").eval()
    data = batch(n=6)
    first = model(data, 3)["itm_loss"]
    assert torch.equal(model(data, 3)["itm_loss"], first)
    losses = {float(model(dict(data, model_seed=torch.tensor(seed)), 3)["itm_loss"]) for seed in range(6)}
    assert len(losses) > 1


def test_vl_branch_equals_the_plain_pass_when_the_vl_expert_is_a_copy():
    model = build("paper").eval()
    layer = model.beit3.encoder.layers[1]
    data = batch()
    feats = {}
    for branch, head in (("A", "vision"), ("B", "language")):
        layer.ffn.VL.load_state_dict(getattr(layer.ffn, branch).state_dict())
        layer.final_layer_norm.VL.load_state_dict(getattr(layer.final_layer_norm, branch).state_dict())
        getattr(model, f"itc_vl_{head}_head").load_state_dict(getattr(model, f"itc_{head}_head").state_dict())
        with torch.no_grad():
            feats[branch] = model.unimodal_features(
                data["pair_image"], data["pair_text_ids"], data["pair_padding_mask"]
            )
    torch.testing.assert_close(feats["A"]["image_vl"], feats["A"]["image"])
    torch.testing.assert_close(feats["B"]["text_vl"], feats["B"]["text"])
    assert not torch.allclose(feats["A"]["text_vl"], feats["A"]["text"])


# ------------------------------------------------------------------------------------------ losses
def test_contrastive_loss_in_one_process_is_clip_loss():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(5, 8, generator=g), dim=-1)
    scale = torch.tensor(12.0)
    loss, i2t, t2i, labels = contrastive_loss(image, text, scale)
    logits = scale * image @ text.t()
    plain = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.t(), torch.arange(5))) / 2
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(t2i, i2t.t())
    assert torch.equal(labels, torch.arange(5))


def test_hard_negatives_never_pick_the_positive_and_follow_the_similarity():
    g = torch.Generator().manual_seed(0)
    similarity = torch.randn(4, 8, generator=g) * 3
    original = similarity.clone()
    positives = torch.arange(4) + 4  # rank 1 of 2: positives sit in the second block of columns
    draws = torch.stack([sample_hard_negatives(similarity, positives, g) for _ in range(300)])
    assert not (draws == positives).any()
    assert torch.equal(similarity, original)  # the caller's logits are left alone

    row = torch.tensor([[0.0, 2.0, 1.0, 0.5, 9.0]])  # column 4 is the positive and would dominate
    expected = torch.softmax(row[0, :4], dim=0)
    many = sample_hard_negatives(row.expand(20000, 5), torch.full((20000,), 4), g)
    freq = torch.bincount(many, minlength=5).float() / 20000
    assert freq[4] == 0
    torch.testing.assert_close(freq[:4], expected, atol=0.015, rtol=0)

    # a confident model (positive logit 100 above the rest) still gives a valid draw
    confident = torch.full((3, 3), -50.0).fill_diagonal_(50.0)
    picked = sample_hard_negatives(confident, torch.arange(3), g)
    assert not (picked == torch.arange(3)).any()
    with pytest.raises(ValueError, match="at least 2"):
        sample_hard_negatives(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), g)


def _itc_rank(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    proj = nn.Linear(6, 5, bias=False)
    g = torch.Generator().manual_seed(1)
    images, texts = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    mine = slice(4 * rank, 4 * rank + 4)
    loss, i2t, _, labels = contrastive_loss(F.normalize(proj(images[mine]), dim=-1),
                                            F.normalize(proj(texts[mine]), dim=-1), torch.tensor(10.0))
    loss.backward()
    grad = proj.weight.grad.clone()
    dist.all_reduce(grad)  # what DDP does, then divides by the world size
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    torch.save({"grad": grad / world_size, "loss": mean_loss / world_size, "i2t": i2t.detach(), "labels": labels},
               os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


def test_contrastive_loss_across_two_ranks_equals_the_full_batch(tmp_path):
    mp.spawn(_itc_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    torch.manual_seed(0)
    proj = nn.Linear(6, 5, bias=False)
    g = torch.Generator().manual_seed(1)
    images, texts = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    loss, i2t, _, _ = contrastive_loss(F.normalize(proj(images), dim=-1), F.normalize(proj(texts), dim=-1),
                                       torch.tensor(10.0))
    loss.backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt")
        torch.testing.assert_close(got["grad"], proj.weight.grad)
        torch.testing.assert_close(got["loss"], loss.detach())
        torch.testing.assert_close(got["i2t"], i2t.detach()[4 * rank: 4 * rank + 4])
        assert torch.equal(got["labels"], torch.arange(4) + 4 * rank)
