"""Per-item results: on fixed predictions, the aggregates computed from each task's per-item frame
equal the numbers the metric functions gave before the frames existed (the official scorers, and the
frozen top-k retrieval in legacy_retrieval.py), and the per-item columns mean what they say."""
import random

import pytest
import torch

from legacy_retrieval import retrieval_recalls as legacy_recalls
from tasks import captioning, imagenet, nlvr2, retrieval, vqav2
from tasks.metrics.captioning import caption_scores
from tasks.metrics.classification import accuracy, topk_accuracy
from tasks.metrics.retrieval import retrieval_ranks, retrieval_recalls
from tasks.metrics.vqa import question_accuracy, vqa_accuracy, vqa_score

# float32 means (torch ``.float().mean()``) against the frames' float64 means.
FLOAT32 = 1e-6


def vqa_fixture(num_questions=60, seed=0):
    rng = random.Random(seed)
    pool = {"yes/no": ["yes", "no"], "number": ["1", "2", "two", "3"], "other": ["red", "a cat", "cat", "Red"]}
    annotations, predictions, image_ids = {}, {}, {}
    for qid in range(num_questions):
        kind = rng.choice(sorted(pool))
        answers = [{"answer": rng.choice(pool[kind]), "answer_id": i + 1} for i in range(10)]
        annotations[qid] = {"answers": answers, "answer_type": kind, "question_type": f"what {kind}"}
        predictions[qid] = rng.choice(pool[kind] + ["blue"])
        image_ids[qid] = qid // 3
    return predictions, annotations, image_ids


def test_vqa_frame_gives_the_official_accuracy_and_vqa_score():
    predictions, annotations, image_ids = vqa_fixture()
    vocab = sorted(set(predictions.values()))
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(len(predictions), len(vocab), generator=generator)
    targets = torch.rand(len(predictions), len(vocab), generator=generator).round(decimals=1)
    best = targets.gather(1, logits.argmax(dim=1, keepdim=True)).squeeze(1)
    target_scores = dict(zip(predictions, best.tolist()))
    result = vqav2.score_answers(predictions, image_ids, annotations, target_scores, split="val")
    official = vqa_accuracy(predictions, annotations, split="val")
    assert result.metrics["vqa_accuracy"] == official["overall"]
    assert {k: result.metrics[f"vqa_accuracy_{k}"] for k in official["per_answer_type"]} == official["per_answer_type"]
    assert result.metrics["vqa_score"] == pytest.approx(vqa_score(logits, targets), rel=FLOAT32)
    items = result.items
    assert items["item_id"].tolist() == [str(q) for q in predictions]
    assert items["cluster_id"].tolist() == [str(image_ids[q]) for q in predictions]
    assert items["vqa_accuracy"].tolist() == [100.0 * question_accuracy(p, annotations[q]["answers"])
                                              for q, p in predictions.items()]
    assert items["vqa_score"].tolist() == pytest.approx([100.0 * s for s in best.tolist()])
    # A limit scores the first questions alone.
    first = dict(list(predictions.items())[:10])
    limited = vqav2.score_answers(first, image_ids, annotations, split="val")
    assert limited.metrics["vqa_accuracy"] == vqa_accuracy(first, annotations, split="val", partial=True)["overall"]
    with pytest.raises(ValueError, match="not in the annotations"):
        vqav2.score_answers({999: "yes"}, {999: 0}, annotations, split="val")


def test_nlvr2_frame_gives_the_accuracy():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(37, 2, generator=generator)
    logits[:5] = 0.0  # ties: the first class, as argmax
    labels = torch.randint(2, (37,), generator=generator)
    identifiers = [f"dev-{i // 4}-{i % 4}-0" for i in range(37)]
    result = nlvr2.score_examples(logits, labels, identifiers, split="dev")
    assert result.metrics["accuracy"] == pytest.approx(accuracy(logits, labels), rel=FLOAT32)
    assert result.items["cluster_id"].nunique() == 10 and result.items["cluster_id"][0] == "dev-0"
    assert (result.items["prediction"][:5] == 0).all()


def test_nlvr2_pairwise_accuracy_compares_the_pairs_of_one_sentence():
    # set 0: True pair outscores the False one; set 1: it does not; set 2: a tie (half); set 3 has two
    # sentences, each with one True and one False pair, scored apart; set 4 has no False pair (not scored).
    margins = [2.0, -1.0, 0.0, 1.0, 0.5, 0.5, 1.0, 0.0, 2.0, 3.0, 1.0]
    labels = torch.tensor([1, 0, 1, 0, 1, 0, 1, 0, 0, 1, 1])
    sets = [0, 0, 1, 1, 2, 2, 3, 3, 3, 3, 4]
    sentences = ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e", "f"]
    logits = torch.stack([torch.zeros(11), torch.tensor(margins)], dim=1)
    identifiers = [f"dev-{s}-{i}-0" for i, s in enumerate(sets)]
    result = nlvr2.score_examples(logits, labels, identifiers, sentences=sentences, split="dev")
    scored = result.items.dropna(subset=["pairwise"])
    assert scored["item_id"].tolist() == ["dev-0-0-0", "dev-1-2-0", "dev-2-4-0", "dev-3-6-0", "dev-3-9-0"]
    assert scored["pairwise"].tolist() == [100.0, 0.0, 50.0, 100.0, 100.0]
    assert result.metrics["pairwise_accuracy"] == pytest.approx(70.0)
    # one sentence per set when none are given: set 3's True pairs then face both False pairs
    pooled = nlvr2.score_examples(logits, labels, identifiers, split="dev")
    assert pooled.items.dropna(subset=["pairwise"])["pairwise"].tolist() == [100.0, 0.0, 50.0, 50.0, 100.0]


def test_imagenet_frame_gives_the_top_k_accuracy_with_ties():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randint(0, 4, (50, 12), generator=generator).float()  # many ties
    labels = torch.randint(12, (50,), generator=generator)
    result = imagenet.score_logits(logits, labels, [f"val/{i}.png" for i in range(50)])
    for key, value in topk_accuracy(logits, labels, topk=(1, 5)).items():
        assert result.metrics[key] == pytest.approx(value, rel=FLOAT32)
    assert ((result.items["acc1"] == 100.0) == (result.items["prediction"] == result.items["label"])).all()


def retrieval_fixture(num_images=23, captions_per_image=3, dim=4, seed=3):
    generator = torch.Generator().manual_seed(seed)
    # Features on a coarse grid, so that many scores tie exactly.
    images = torch.randint(-2, 3, (num_images, dim), generator=generator).float()
    texts = torch.randint(-2, 3, (num_images * captions_per_image, dim), generator=generator).float()
    ids = torch.arange(100, 100 + num_images)
    text_to_image = ids.repeat_interleave(captions_per_image)[torch.randperm(len(texts), generator=generator)]
    return images, texts, text_to_image, ids


@pytest.mark.parametrize("chunk_size", [1, 5, 512])
def test_retrieval_ranks_give_the_recalls_of_the_top_k_computation(chunk_size):
    images, texts, text_to_image, ids = retrieval_fixture()
    old = legacy_recalls(images, texts, text_to_image, ids, chunk_size=chunk_size)
    assert retrieval_recalls(images, texts, text_to_image, ids, chunk_size=chunk_size) == old
    result = retrieval.score_features(images, texts, text_to_image, ids)
    assert result.metrics.keys() >= old.keys()
    for key, value in old.items():
        assert result.metrics[key] == pytest.approx(value, rel=FLOAT32), key


def test_retrieval_ranks_are_the_full_stable_sort_ranks():
    images, texts, text_to_image, ids = retrieval_fixture()
    ranks = retrieval_ranks(images, texts, text_to_image, ids, chunk_size=4)
    scores = images @ texts.t()
    order = torch.sort(scores, dim=0, descending=True, stable=True).indices  # images per caption
    rows = text_to_image - 100
    expected = (order == rows.unsqueeze(0)).float().argmax(dim=0)
    assert torch.equal(ranks.text_rank, expected) and torch.equal(ranks.text_top1, order[0])
    by_caption = torch.sort(scores, dim=1, descending=True, stable=True).indices  # captions per image
    own = rows[by_caption] == torch.arange(len(ids)).unsqueeze(1)
    assert torch.equal(ranks.image_rank, own.float().argmax(dim=1)) and torch.equal(ranks.image_top1, by_caption[:, 0])
    items = retrieval.score_features(images, texts, text_to_image, ids).items
    queries = items[items["direction"] == "t2i"]
    assert (queries["rank"].to_numpy() == expected.numpy() + 1).all()
    assert queries["ir_r5"].tolist() == [100.0 * (r < 5) for r in expected.tolist()]
    assert items.loc[items["direction"] == "i2t", "ir_r1"].isna().all()


def test_retrieval_galleries_rank_each_query_within_its_gallery_and_average_them():
    images, texts, text_to_image, ids = retrieval_fixture(num_images=22)
    result = retrieval.score_features(images, texts, text_to_image, ids, gallery_size=len(ids) // 2)
    halves = []
    for half in (ids[: len(ids) // 2], ids[len(ids) // 2:]):
        rows = (half - 100).tolist()
        keep = torch.isin(text_to_image, half)
        halves.append(retrieval.score_features(images[rows], texts[keep], text_to_image[keep], half).metrics)
    for key in ("tr_r1", "tr_r5", "ir_r1", "ir_r10"):
        assert result.metrics[key] == pytest.approx((halves[0][key] + halves[1][key]) / 2), key
    assert set(result.items["gallery"]) == {0, 1} and result.metrics["num_images"] == len(ids)
    assert result.items["rank"].max() <= len(texts) // 2  # ranked among a gallery's captions only


def test_captioning_frame_gives_cider_and_rouge_and_flags_bleu_as_approximate():
    references = {1: ["a cat on a mat", "the cat sits"], 2: ["two dogs run", "dogs running in a park"],
                  3: ["a red bus", "a bus on the street"], 4: ["a man rides a horse", "horse and rider"]}
    predictions = {1: "a cat sits on a mat", 2: "a dog runs in a park", 3: "a red bus on a street", 4: "a horse"}
    options = dict(ptb_tokenize=False, meteor=False, spice=False)
    official = caption_scores(predictions, references, **options)
    result = captioning.score_predictions(predictions, references, **options)
    items = result.items
    assert items["item_id"].tolist() == ["1", "2", "3", "4"] and items["prediction"][0] == predictions[1]
    for name in ("CIDEr", "ROUGE-L"):
        assert result.metrics[name] == pytest.approx(official[name], rel=1e-12)
        assert float(items[name].mean()) == pytest.approx(official[name], rel=1e-12)
    for name in ("BLEU-1", "BLEU-4"):
        assert result.metrics[name] == official[name]  # the corpus score, not the per-image mean
        assert not captioning.SPEC.metric(name).exact
