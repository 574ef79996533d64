"""VQAv2 fine-tuning on the smoke world: batches, official loss, resume, evaluation, bad input."""
import json

import pytest
import torch
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision.transforms import v2

import tasks
from tasks import vqav2
from tasks.data.images import DataError
from tasks.metrics.classification import EmptySplitError
from finetune_helpers import tiny_model


@pytest.fixture(scope="module")
def config(world):
    return {"root": str(world), "batch_size": 4, "answer_min_count": 1}


@pytest.fixture(scope="module")
def vocab(config):
    return vqav2.answer_vocab(config)


def tiny(world, num_classes, **overrides):
    return tiny_model(world, "vqav2", num_classes=num_classes, **overrides)


def test_training_batches_have_the_official_keys_and_the_loss_falls(world, config, vocab):
    model = tiny(world, len(vocab))
    data = tasks.build_data("vqav2", config, model=model, seed=0)
    batch = data.next_batch()
    assert batch["image"].shape == (4, 3, 32, 32) and batch["question"].shape == (4, 64)
    assert batch["padding_mask"].shape == (4, 64) and batch["labels"].shape == (4, len(vocab))
    scores = torch.tensor([0.0, 0.3, 0.6, 0.9, 1.0])
    assert torch.isclose(batch["labels"].unsqueeze(-1), scores).any(-1).all() and batch["labels"].max() > 0
    step = tasks.training_step("vqav2")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        out = step(model, batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert 0.0 <= out["vqa_score"].item() <= 100.0


def test_resume_gives_identical_batches_and_train_plus_val(world, config, vocab):
    model = tiny(world, len(vocab))
    straight = tasks.build_data("vqav2", config, model=model, seed=3)
    expected = [straight.next_batch() for _ in range(3)]
    data = tasks.build_data("vqav2", config, model=model, seed=3)
    data.next_batch()
    resumed = tasks.build_data("vqav2", config, model=model, seed=3)
    resumed.load_state_dict(data.state_dict())
    for want in expected[1:]:
        got = resumed.next_batch()
        assert all(torch.equal(want[k], got[k]) for k in want)
    both = tasks.build_data("vqav2", {**config, "split": ["train", "val"]}, model=model, seed=0)
    assert both.num_items > straight.num_items


def test_evaluate_val_scores_every_question_and_test_dev_writes_the_submission(world, config, vocab, tmp_path):
    model = tiny(world, len(vocab))
    result = vqav2.evaluate(model, config, split="val", batch_size=16)
    metrics, items = result.metrics, result.items
    assert len(items) == len(items["item_id"].unique()) == metrics["num_questions"]
    assert {"vqa_accuracy", "vqa_score", "answer_type"} <= set(items.columns)
    assert items["prediction"].isin(vocab).all()
    questions = json.loads((world / "coco/vqa/v2_OpenEnded_mscoco_val2014_questions.json").read_text())["questions"]
    assert metrics["num_questions"] == len(questions)
    assert {"vqa_accuracy", "vqa_score", "vqa_accuracy_yes/no"} <= metrics.keys()
    assert all(0.0 <= v <= 100.0 for k, v in metrics.items() if k != "num_questions")
    assert model.training  # restored

    out = tmp_path / "test-dev.json"
    test_dev = vqav2.evaluate(model, config, split="test-dev", out_path=out)
    assert test_dev.metrics == {"num_questions": 9} and "vqa_accuracy" not in test_dev.items
    rows = json.loads(out.read_text())
    test_dev = json.loads((world / "coco/vqa/v2_OpenEnded_mscoco_test-dev2015_questions.json").read_text())
    assert sorted(r["question_id"] for r in rows) == sorted(q["question_id"] for q in test_dev["questions"])
    assert all(r["answer"] in vocab for r in rows)


def test_quirks_decide_the_validation_transform(world, config, vocab):
    model = tiny(world, len(vocab))
    official = vqav2.build_eval_dataset({**config, "quirks": "official"}, "val", model=model)
    fixed = vqav2.build_eval_dataset(config, "val", model=model)
    test = vqav2.build_eval_dataset({**config, "quirks": "official"}, "test-dev", model=model)
    assert isinstance(official.transform.transforms[0], RandomResizedCropAndInterpolation)
    assert isinstance(fixed.transform.transforms[0], v2.Resize)
    assert isinstance(test.transform.transforms[0], v2.Resize)
    assert official.quirks == "official" and fixed.quirks == "fixed"


def test_a_question_without_annotation_is_named(world, config, vocab, tmp_path):
    questions = json.loads((world / "coco/vqa/v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    questions["questions"].append(dict(questions["questions"][0], question_id=777))
    (tmp_path / "q_val2014.json").write_text(json.dumps(questions))
    with pytest.raises(DataError, match="no annotation for question_id 777"):
        vqav2.evaluate(tiny(world, len(vocab)), {**config, "questions": str(tmp_path / "q_{subtype}.json")}, split="val")


def test_an_answer_vocabulary_that_does_not_fit_the_head_is_refused(world, config, vocab):
    model = tiny(world, len(vocab) + 1)
    with pytest.raises(ValueError, match=f"{len(vocab)} answers but the checkpoint's VQA head has {len(vocab) + 1}"):
        tasks.build_data("vqav2", config, model=model, seed=0)
    with pytest.raises(ValueError, match="num_classes"):
        vqav2.evaluate(model, config, split="val")


def test_an_empty_split_is_an_empty_split_error(world, config, vocab, tmp_path):
    questions = json.loads((world / "coco/vqa/v2_OpenEnded_mscoco_val2014_questions.json").read_text())
    path = tmp_path / "empty_questions.json"
    path.write_text(json.dumps({**questions, "questions": []}))
    with pytest.raises(EmptySplitError, match="'val'"):
        vqav2.evaluate(tiny(world, len(vocab)), {**config, "questions": str(path)}, split="val")
    with pytest.raises(ValueError, match="unknown VQAv2 split 'dev'"):
        vqav2.evaluate(tiny(world, len(vocab)), config, split="dev")
