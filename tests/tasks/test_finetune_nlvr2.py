"""NLVR2 fine-tuning on the smoke world: batches, loss, resume, evaluation, bad input."""
import pytest
import torch
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision.transforms import v2

import tasks
from tasks import nlvr2
from tasks.metrics.classification import EmptySplitError
from finetune_helpers import tiny_model


@pytest.fixture(scope="module")
def config(world):
    return {"root": str(world), "batch_size": 4}


def tiny(world, **overrides):
    return tiny_model(world, "nlvr2", **overrides)


def test_training_batches_have_the_official_keys_and_the_loss_is_finite(world, config):
    model = tiny(world)
    data = tasks.build_data("nlvr2", config, model=model, seed=0)
    batch = data.next_batch()
    assert set(batch) == {"image", "image2", "language_tokens", "padding_mask", "label"}
    assert batch["image"].shape == batch["image2"].shape == (4, 3, 32, 32) and batch["label"].shape == (4,)
    assert not torch.equal(batch["image"], batch["image2"])
    step = tasks.training_step("nlvr2")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(3):
        out = step(model, batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        assert torch.isfinite(out["loss"]) and 0.0 <= out["acc"].item() <= 100.0


def test_resume_gives_identical_batches(world, config):
    model = tiny(world)
    straight = tasks.build_data("nlvr2", config, model=model, seed=1)
    expected = [straight.next_batch() for _ in range(5)]  # 16 pairs, 4 batches an epoch: crosses an epoch
    data = tasks.build_data("nlvr2", config, model=model, seed=1)
    for _ in range(3):
        data.next_batch()
    resumed = tasks.build_data("nlvr2", config, model=model, seed=1)
    resumed.load_state_dict(data.state_dict())
    for want in expected[3:]:
        got = resumed.next_batch()
        assert all(torch.equal(want[k], got[k]) for k in want)


def test_evaluate_dev_and_test1(world, config):
    model = tiny(world)
    for split in ("dev", "test1"):
        result = nlvr2.evaluate(model, config, split=split, batch_size=3)
        metrics, items = result.metrics, result.items
        assert metrics["num_examples"] == 8 and 0.0 <= metrics["accuracy"] <= 100.0
        assert len(items) == 8 and items["item_id"].str.startswith(f"{split}-").all()
        assert set(items["accuracy"]) <= {0.0, 100.0} and (items["accuracy"] == 100.0 * (items["prediction"] == items["label"])).all()
        assert items["cluster_id"].nunique() < len(items)  # the examples of a set share it
    assert len(nlvr2.evaluate(model, config, split="dev", limit=3).items) == 3
    with pytest.raises(ValueError, match="unknown NLVR2 split 'test'"):
        nlvr2.evaluate(model, config, split="test")


def test_quirks_decide_the_dev_transform(world, config):
    model = tiny(world)
    official = nlvr2.build_eval_dataset({**config, "quirks": "official"}, "dev", model=model)
    assert isinstance(official.transform.transforms[0], RandomResizedCropAndInterpolation)
    assert isinstance(nlvr2.build_eval_dataset(config, "dev", model=model).transform.transforms[0], v2.Resize)
    assert isinstance(nlvr2.build_eval_dataset({**config, "quirks": "official"}, "test1", model=model)
                      .transform.transforms[0], v2.Resize)


def test_an_empty_split_and_too_long_text(world, config, tmp_path):
    (tmp_path / "nlvr2" / "data").mkdir(parents=True)
    (tmp_path / "nlvr2" / "data" / "dev.json").write_text("\n")
    with pytest.raises(EmptySplitError, match="'dev'"):
        nlvr2.evaluate(tiny(world), {**config, "nlvr_repo": str(tmp_path)}, split="dev")
    short = tiny(world, max_text_positions=20)
    with pytest.raises(ValueError, match="max_len=64 text tokens do not fit the model's text position table of 20"):
        tasks.build_data("nlvr2", config, model=short, seed=0)
    with pytest.raises(ValueError, match="unknown key.*max_length \\(did you mean max_len"):
        tasks.build_data("nlvr2", {**config, "max_length": 20}, model=short, seed=0)
