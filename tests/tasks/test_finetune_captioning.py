"""Captioning fine-tuning on the smoke world: masked batches with the global step, BertCaptioningLoss,
resume, beam-search evaluation against the Karpathy references, bad input."""
import json

import pytest
import torch
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision.transforms import v2

import tasks
from tasks import captioning
from tasks.metrics.classification import EmptySplitError
from finetune_helpers import tiny_model


@pytest.fixture(scope="module")
def config(world):
    return {"root": str(world), "batch_size": 4, "max_len": 24}


def tiny(world, **overrides):
    return tiny_model(world, "captioning", **overrides)


def test_masked_batches_count_optimizer_steps_and_the_loss_falls(world, config):
    model = tiny(world)
    data = tasks.build_data("captioning", {**config, "grad_accum_steps": 2}, model=model, seed=0)
    batches = [data.next_batch() for _ in range(3)]
    assert [b["global_step"] for b in batches] == [0, 0, 1]
    batch = batches[0]
    assert {"image", "language_tokens", "masked_tokens", "language_masked_pos", "padding_mask"} <= batch.keys()
    assert batch["language_tokens"].shape == (4, 24) and batch["language_masked_pos"].any(1).all()
    step = tasks.training_step("captioning")
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(5):
        out = step(model, batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0] and 0.0 <= out["acc"].item() <= 1.0
    with torch.no_grad():
        early = step(model, batch)["loss"]
        late = tasks.training_step("captioning", {"drop_worst_after": -1, "drop_worst_ratio": 0.5})(model, batch)
    assert late["loss"] < early  # the worst half of the tokens is dropped after drop_worst_after


def test_resume_gives_identical_masks(world, config):
    model = tiny(world)
    straight = tasks.build_data("captioning", config, model=model, seed=4)
    expected = [straight.next_batch() for _ in range(3)]
    data = tasks.build_data("captioning", config, model=model, seed=4)
    data.next_batch()
    resumed = tasks.build_data("captioning", config, model=model, seed=4)
    resumed.load_state_dict(data.state_dict())
    for want in expected[1:]:
        got = resumed.next_batch()
        assert all(torch.equal(want[k], got[k]) if isinstance(want[k], torch.Tensor) else want[k] == got[k] for k in want)


def test_evaluate_generates_and_scores_every_test_image(world, config, tmp_path):
    model = tiny(world)
    out = tmp_path / "captions.json"
    result = captioning.evaluate(model, {**config, "max_len": 8}, split="test", batch_size=3, out_path=out,
                                 ptb_tokenize=False, meteor=False, spice=False)
    metrics, items = result.metrics, result.items
    assert len(items) == 6 and (items["item_id"] == items["cluster_id"]).all()
    assert {"BLEU-4", "ROUGE-L", "CIDEr"} <= set(items.columns) and "SPICE" not in items
    assert {"BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"} <= metrics.keys() and "SPICE" not in metrics
    assert metrics["num_images"] == 6 and all(0.0 <= metrics[k] <= 1.0 for k in ("BLEU-1", "BLEU-4", "ROUGE-L"))
    rows = json.loads(out.read_text())
    assert {str(r["image_id"]): r["caption"] for r in rows} == dict(zip(items["item_id"], items["prediction"]))
    references = json.loads((world / "coco" / "dataset_coco.json").read_text())["images"]
    assert sorted(r["image_id"] for r in rows) == sorted(i["cocoid"] for i in references if i["split"] == "test")


def test_quirks_decide_the_val_transform(world, config):
    model = tiny(world)
    official = captioning.build_eval_dataset({**config, "quirks": "official"}, "val", model=model)
    assert isinstance(official.transform.transforms[0], RandomResizedCropAndInterpolation)
    assert isinstance(captioning.build_eval_dataset(config, "val", model=model).transform.transforms[0], v2.Resize)


def test_bad_input(world, config, tmp_path):
    short = tiny(world, max_text_positions=12)
    with pytest.raises(ValueError, match="max_len=24 text tokens do not fit .* at most 10 tokens"):
        tasks.build_data("captioning", config, model=short, seed=0)
    with pytest.raises(ValueError, match="vocab_size="):
        tasks.build_data("captioning", config, model=tiny(world, vocab_size=50), seed=0)
    karpathy = json.loads((world / "coco" / "dataset_coco.json").read_text())
    karpathy["images"] = [img for img in karpathy["images"] if img["split"] != "val"]
    path = tmp_path / "no_val.json"
    path.write_text(json.dumps(karpathy))
    with pytest.raises(EmptySplitError, match="'val'"):
        captioning.evaluate(tiny(world), {**config, "annotation": str(path)}, split="val")
