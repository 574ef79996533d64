"""Retrieval fine-tuning and the intermediate ITC stage on the smoke world: batches, ClipLoss, resume,
zero-shot and fine-tuned evaluation, bad input."""
import json

import pytest
import torch
import torch.nn.functional as F
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision.transforms import v2

import tasks
from tasks import retrieval
from tasks.metrics.classification import EmptySplitError
from finetune_helpers import tiny_model, train_steps

RECALL_KEYS = {"tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10", "average_score"}


@pytest.fixture(scope="module")
def config(world):
    return {"root": str(world), "batch_size": 4}


def tiny(world, **overrides):
    return tiny_model(world, "retrieval", **overrides)


def test_karpathy_batches_and_the_step_returns_the_clip_loss(world, config):
    model = tiny(world)
    batch = tasks.build_data("retrieval", config, model=model, seed=0).next_batch()
    assert set(batch) == {"image", "language_tokens", "padding_mask", "image_id"}
    assert batch["image"].shape == (4, 3, 32, 32) and batch["language_tokens"].shape == (4, 64)
    out = tasks.training_step("retrieval")(model, batch)
    out["loss"].backward()
    with torch.no_grad():
        image, text = model(image=batch["image"], text_description=batch["language_tokens"],
                            padding_mask=batch["padding_mask"], only_infer=True)
        logits = model.logit_scale.exp() * image @ text.t()
        target = torch.arange(4)
        symmetric = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    assert torch.allclose(out["loss"], symmetric)
    for name in ("vision_head.weight", "language_head.weight", "logit_scale"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name
    assert {"i2t_acc", "t2i_acc"} <= out.keys() and out["logit_scale"].item() == pytest.approx(1 / 0.07)
    losses, _ = train_steps("retrieval", model, batch, 3)
    assert all(torch.isfinite(torch.tensor(losses)))


def test_itc_stage_streams_pretraining_pairs_and_resumes_mid_epoch(world, config):
    pairs = {**config, "source": "pretraining_pairs", "shuffle_buffer": 4}
    model = tiny(world)
    straight = tasks.build_data("retrieval", pairs, model=model, seed=2)
    expected = [straight.next_batch() for _ in range(6)]  # 16 pairs: 4 batches an epoch
    assert set(expected[0]) == {"image", "language_tokens", "padding_mask"}
    data = tasks.build_data("retrieval", pairs, model=model, seed=2)
    for _ in range(5):
        data.next_batch()
    resumed = tasks.build_data("retrieval", pairs, model=model, seed=2)
    resumed.load_state_dict(data.state_dict())
    got = resumed.next_batch()
    assert all(torch.equal(expected[5][k], got[k]) for k in got)
    losses, _ = train_steps("retrieval", model, expected[0], 2)
    assert all(torch.isfinite(torch.tensor(losses)))
    recipe = retrieval.ITC_RECIPE
    assert (recipe["epochs"], recipe["lr"], recipe["layer_decay"], recipe["drop_path"], recipe["img_size"]) == \
        (5, 3e-5, 0.95, 0.3, 224)
    assert recipe["opt_betas"] == (0.9, 0.999) and recipe["data_source"] == "pretraining_pairs"


def test_evaluate_zero_shot_then_fine_tuned(world, config):
    model = tiny(world)
    result = retrieval.evaluate(model, config, split="test", batch_size=4)
    zero_shot, items = result.metrics, result.items
    assert items["direction"].value_counts().to_dict() == {"i2t": 6, "t2i": 30}
    assert items.groupby("direction")["cluster_id"].nunique().to_dict() == {"i2t": 6, "t2i": 6}
    assert ((items["rank"] <= 1) == (items["prediction"] == items["cluster_id"])).all()  # hit at 1: its own image first
    limited = retrieval.evaluate(model, config, split="test", batch_size=4, limit=2).items
    assert limited["direction"].value_counts().to_dict() == {"i2t": 2, "t2i": 10}
    assert RECALL_KEYS <= zero_shot.keys() and zero_shot["num_images"] == 6 and zero_shot["num_captions"] == 30
    assert all(0.0 <= zero_shot[k] <= 100.0 for k in RECALL_KEYS)
    assert zero_shot["tr_r1"] <= zero_shot["tr_r5"] <= zero_shot["tr_r10"]
    assert zero_shot["ir_r5"] <= zero_shot["ir_r10"] == 100.0  # 6 images: every caption's image is in the top 10
    flickr = retrieval.evaluate(model, {**config, "dataset": "flickr30k"}, split="val").metrics
    assert flickr["num_images"] == 2 and flickr["ir_r5"] == 100.0  # 2 images: every caption's image is in the top 5
    with pytest.raises(ValueError, match="unknown retrieval dataset 'coco5k'"):
        retrieval.evaluate(model, {**config, "dataset": "coco5k"}, split="test")


def test_quirks_decide_the_val_transform(world, config):
    model = tiny(world)
    official = retrieval.build_eval_dataset({**config, "quirks": "official"}, "val", model=model)
    assert isinstance(official.transform.transforms[0], RandomResizedCropAndInterpolation)
    assert isinstance(retrieval.build_eval_dataset(config, "val", model=model).transform.transforms[0], v2.Resize)
    assert isinstance(retrieval.build_eval_dataset({**config, "quirks": "official"}, "test", model=model)
                      .transform.transforms[0], v2.Resize)


def test_an_empty_split_is_an_empty_split_error(world, config, tmp_path):
    karpathy = json.loads((world / "coco" / "dataset_coco.json").read_text())
    karpathy["images"] = [img for img in karpathy["images"] if img["split"] != "test"]
    path = tmp_path / "no_test.json"
    path.write_text(json.dumps(karpathy))
    with pytest.raises(EmptySplitError, match="'test'"):
        retrieval.evaluate(tiny(world), {**config, "annotation": str(path)}, split="test")
    with pytest.raises(ValueError, match="needs 'shards'"):
        tasks.build_data("retrieval", {"root": str(tmp_path), "tokenizer": str(world / "spm/world.model"),
                                       "source": "pretraining_pairs"}, model=tiny(world), seed=0)
