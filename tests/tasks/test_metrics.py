"""Official metrics against hand-computed cases: VQA accuracy/score/submission, retrieval recalls, accuracy."""
import pytest
import torch
import torch.nn.functional as F

from tasks.metrics._checks import EmptySplitError
from tasks.metrics.classification import accuracy, topk_accuracy
from tasks.metrics.retrieval import dedup_image_features, retrieval_recalls
from tasks.metrics.vqa import question_accuracy, vqa_accuracy, vqa_score, vqa_submission


def answers(*groups):
    """answers(("two", 3), ("2", 7)) -> 10 official answer dicts with distinct answer_id."""
    texts = [text for text, count in groups for _ in range(count)]
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]


# ------------------------------------------------------------------------------------------------ VQA
def test_vqa_disagreement_is_normalised_so_number_words_match_digits():
    gts = answers(("two", 3), ("2", 7))
    # Normalised, all ten answers are "2": both predictions match 9 others for every left-out answer.
    assert question_accuracy("2", gts) == 1.0
    assert question_accuracy("two", gts) == 1.0  # raw matching would give (3 * 0.6 + 7 * 1) / 10 = 0.88
    assert question_accuracy("Two.", gts) == 1.0


def test_vqa_leave_one_out_partial_credit():
    # 2 of 10 annotators said "two": left-out "two" -> 1 match (1/3); left-out "dog" -> 2 matches (2/3).
    assert question_accuracy("2", answers(("two", 2), ("dog", 8))) == pytest.approx((2 / 3 + 8 * 2 / 3) / 10)
    # k matching answers -> 0, 0.3, 0.6, 0.9, 1.0 (the familiar min(1, k/3) after averaging)
    for k, want in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]:
        got = question_accuracy("cat", answers(("cat", k), ("dog", 10 - k)))
        assert got == pytest.approx(want), k


def test_vqa_all_identical_answers_are_compared_exactly():
    gts = answers(("yes", 10))
    assert question_accuracy("yes", gts) == 1.0
    assert question_accuracy(" yes\n", gts) == 1.0  # newline/tab -> space and strip still apply
    assert question_accuracy("Yes", gts) == 0.0  # no lowercasing when all ten agree
    assert question_accuracy("yes.", gts) == 0.0  # no punctuation cleaning either
    # One differing answer switches normalisation on for everything.
    mixed = answers(("yes", 9), ("yeah", 1))
    assert question_accuracy("Yes.", mixed) == 1.0


def test_vqa_punctuation_and_number_normalisation():
    shirts = answers(("t-shirt", 4), ("shirt", 6))
    assert question_accuracy("T shirt", shirts) == 1.0  # "-" between letters becomes a space
    assert question_accuracy("a t-shirt.", shirts) == 1.0  # article and final period dropped
    assert question_accuracy("tshirt", shirts) == 0.0
    thousands = answers(("1000", 3), ("one thousand", 7))
    assert question_accuracy("1,000", thousands) == pytest.approx(0.9)  # digit,digit -> commas deleted
    tens = answers(("10", 2), ("ten", 2), ("many", 6))
    assert question_accuracy("Ten", tens) == 1.0  # 4 answers normalise to "10"
    assert question_accuracy("dont know", answers(("don't know", 3), ("no", 7))) == pytest.approx(0.9)


def test_vqa_answer_dicts_follow_the_official_inequality():
    # Without answer_id, two identical dicts are *both* left out (official `item != gtAnsDatum`).
    no_ids = [{"answer": "cat"}, {"answer": "cat"}] + [{"answer": "dog"}] * 8
    assert question_accuracy("cat", no_ids) == pytest.approx(8 * (2 / 3) / 10)
    # Plain strings are distinct answers.
    assert question_accuracy("cat", ["cat", "cat"] + ["dog"] * 8) == pytest.approx((2 / 3 + 8 * 2 / 3) / 10)


def annotation(qid, answer_type, question_type, gts):
    return {"question_id": qid, "image_id": 1, "answer_type": answer_type, "question_type": question_type,
            "answers": gts}


ANNOTATIONS = [
    annotation(1, "number", "how many", answers(("two", 3), ("2", 7))),
    annotation(2, "other", "what color", answers(("red", 1), ("blue", 9))),
    annotation(3, "yes/no", "is the", answers(("yes", 10))),
]


def test_vqa_accuracy_overall_and_per_type():
    predictions = {1: "2", 2: "red", 3: "Yes"}  # 1.0, 0.3, 0.0
    result = vqa_accuracy(predictions, ANNOTATIONS)
    assert result == {
        "overall": 43.33,
        "per_answer_type": {"number": 100.0, "other": 30.0, "yes/no": 0.0},
        "per_question_type": {"how many": 100.0, "what color": 30.0, "is the": 0.0},
        "num_questions": 3,
    }
    # The same via the submission list and a whole annotation file.
    as_list = [{"question_id": q, "answer": a} for q, a in predictions.items()]
    assert vqa_accuracy(as_list, {"annotations": ANNOTATIONS}) == result
    assert vqa_accuracy(predictions, {a["question_id"]: a for a in ANNOTATIONS}, ndigits=4)["overall"] == 43.3333


def test_vqa_accuracy_bad_input():
    with pytest.raises(ValueError, match=r"not in the annotations: 99"):
        vqa_accuracy({1: "2", 2: "red", 3: "yes", 99: "no"}, ANNOTATIONS, split="val")
    with pytest.raises(ValueError, match="strings vs integers"):
        vqa_accuracy({"1": "2"}, ANNOTATIONS, partial=True)
    with pytest.raises(ValueError, match=r"1 annotated question\(s\) have no prediction: 3"):
        vqa_accuracy({1: "2", 2: "red"}, ANNOTATIONS)
    assert vqa_accuracy({1: "2", 2: "red"}, ANNOTATIONS, partial=True)["overall"] == 65.0
    with pytest.raises(EmptySplitError, match="'rest_val'"):
        vqa_accuracy({}, ANNOTATIONS, split="rest_val")
    with pytest.raises(ValueError, match="question_id 5: 'answers' must be a non-empty list"):
        vqa_accuracy({5: "x"}, [annotation(5, "other", "what", [])])


def test_vqa_score_is_the_soft_score_of_the_argmax():
    logits = torch.tensor([[0.1, 2.0, 0.3], [1.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    targets = torch.tensor([[1.0, 0.6, 0.0], [0.3, 1.0, 0.0], [0.0, 0.0, 0.9]])
    # argmax: 1 -> 0.6; tie -> first index 0 -> 0.3; 2 -> 0.9
    assert vqa_score(logits, targets) == pytest.approx(100 * (0.6 + 0.3 + 0.9) / 3)
    with pytest.raises(EmptySplitError, match="'val'"):
        vqa_score(torch.empty(0, 3), torch.empty(0, 3), split="val")
    with pytest.raises(ValueError, match="both be"):
        vqa_score(logits, targets[:, :2])


def test_vqa_submission():
    rows = vqa_submission({5: "yes", 3: "2"})
    assert rows == [{"question_id": 5, "answer": "yes"}, {"question_id": 3, "answer": "2"}]
    assert vqa_submission({5: "yes", 3: "2"}, question_ids=[3, 5]) == rows
    with pytest.raises(ValueError, match="1 question\\(s\\) have no answer: 7"):
        vqa_submission({5: "yes"}, question_ids=[5, 7])
    with pytest.raises(ValueError, match="unknown question_id"):
        vqa_submission({5: "yes", 6: "no"}, question_ids=[5])
    with pytest.raises(TypeError, match="must be a str"):
        vqa_submission({5: 1})
    with pytest.raises(EmptySplitError, match="'test-dev'"):
        vqa_submission({})


# ------------------------------------------------------------------------------------------ retrieval
def official_recalls(image_feats, text_feats, text_image_ids, image_ids):
    """The official RetrievalHandler.after_eval computation, for comparison on tie-free data."""
    scores = image_feats @ text_feats.t()
    out = {}
    for k in (1, 5, 10):
        top = scores.topk(k, dim=1).indices
        out[f"tr_r{k}"] = 100 * (image_ids.unsqueeze(1) == text_image_ids[top]).float().max(dim=1)[0].mean().item()
        top = scores.topk(k, dim=0).indices
        out[f"ir_r{k}"] = 100 * (text_image_ids.unsqueeze(0) == image_ids[top]).float().max(dim=0)[0].mean().item()
    return out


def test_retrieval_hand_computed():
    # 3 images (ids 10, 20, 30); captions 0,1 -> 10, 2 -> 20, 3,4 -> 30. Integer features: exact scores.
    images = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    texts = torch.tensor([[0, 3.0, 0], [2.0, 0, 0], [0, 0, 1.0], [0, 4.0, 0], [1.0, 0, 3.0]])
    text_to_image = torch.tensor([10, 10, 20, 30, 30])
    result = retrieval_recalls(images, texts, text_to_image, torch.tensor([10, 20, 30]), ks=(1, 2))
    # scores rows (images) = texts' column: img10 [0,2,0,0,1], img20 [3,0,0,4,0], img30 [0,0,1,0,3]
    # TR: img10 best caption 1 (ok) -> r1; img20: order 3,0,... caption 2 (score 0) rank >= 2 -> miss;
    #     img30: caption 4 (3.0) first -> r1.
    assert result["tr_r1"] == pytest.approx(200 / 3) and result["tr_r2"] == pytest.approx(200 / 3)
    # IR (columns): cap0 [0,3,0] -> img10 scores 0, behind img20 (3), ahead of img30 (tie, later) -> rank 1;
    #     cap1 [2,0,0] -> img10 rank 0; cap2 [0,0,1] -> img20 behind img30 and img10 (tie, earlier) -> rank 2;
    #     cap3 [0,4,0] -> img30 behind img20 and img10 (tie, earlier) -> rank 2; cap4 [1,0,3] -> img30 rank 0.
    assert result["ir_r1"] == pytest.approx(40.0) and result["ir_r2"] == pytest.approx(60.0)
    assert result["average_score"] == pytest.approx((200 / 3 * 2 + 40 + 60) / 4)
    for chunk in (1, 2):  # ties across chunk borders resolve the same way
        assert retrieval_recalls(images, texts, text_to_image, torch.tensor([10, 20, 30]), ks=(1, 2),
                                 chunk_size=chunk) == result


def test_retrieval_ties_break_by_index():
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # two identical images
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # two identical captions
    # caption 0 -> image 0, caption 1 -> image 1: every score ties at 1.
    result = retrieval_recalls(images, texts, torch.tensor([0, 1]), ks=(1, 2))
    # TR: image 0's caption 0 ranks first (hit); image 1's caption 1 ranks after caption 0 (miss at 1).
    # IR: caption 0 -> image 0 first (hit); caption 1 -> image 1 after image 0 (miss at 1).
    assert (result["tr_r1"], result["tr_r2"], result["ir_r1"], result["ir_r2"]) == (50.0, 100.0, 50.0, 100.0)
    assert retrieval_recalls(images, texts, torch.tensor([0, 1]), ks=(1, 2), chunk_size=1) == result


def test_retrieval_duplicate_image_rows_are_deduplicated():
    g = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(4, 6, generator=g), dim=-1)
    texts = F.normalize(torch.randn(12, 6, generator=g), dim=-1)
    text_to_image = torch.tensor([7, 7, 7, 3, 3, 3, 9, 9, 9, 5, 5, 5])
    ids = torch.tensor([7, 3, 9, 5])
    per_image = retrieval_recalls(images, texts, text_to_image, ids)
    # One row per caption, as the official eval loader yields them (image repeated for each caption).
    rows = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    assert retrieval_recalls(images[rows], texts, text_to_image, ids[rows]) == per_image
    feats, kept = dedup_image_features(images[rows], ids[rows])
    assert kept.tolist() == [3, 5, 7, 9] and torch.equal(feats, images[[1, 3, 0, 2]])


def test_retrieval_chunked_equals_unchunked_and_the_official_topk():
    g = torch.Generator().manual_seed(1)
    num_images, per_image = 40, 5
    images = F.normalize(torch.randn(num_images, 16, generator=g), dim=-1)
    text_to_image = torch.arange(num_images).repeat_interleave(per_image) * 3 + 100
    noise = torch.randn(num_images * per_image, 16, generator=g)
    texts = F.normalize(images.repeat_interleave(per_image, 0) + 1.2 * noise, dim=-1)
    ids = torch.arange(num_images) * 3 + 100
    whole = retrieval_recalls(images, texts, text_to_image, ids, chunk_size=10_000)
    for chunk in (1, 7, 16):
        assert retrieval_recalls(images, texts, text_to_image, ids, chunk_size=chunk) == whole
    official = official_recalls(images, texts, text_to_image, ids)
    for key, value in official.items():
        assert whole[key] == pytest.approx(value), key
    assert 0 < whole["tr_r1"] < whole["tr_r5"] < 100 and 0 < whole["ir_r1"] < whole["ir_r10"] < 100


def test_retrieval_bad_input():
    images, texts = torch.eye(2), torch.eye(2)
    with pytest.raises(ValueError, match="caption 1 belongs to image_id 5"):
        retrieval_recalls(images, texts, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"image_id\(s\) \[1\] have no caption"):
        retrieval_recalls(images, texts, torch.tensor([0, 0]))
    with pytest.raises(EmptySplitError, match="'test'.*captions"):
        retrieval_recalls(images, torch.empty(0, 2), torch.empty(0, dtype=torch.long), split="test")
    with pytest.raises(ValueError, match="same D"):
        retrieval_recalls(images, torch.ones(2, 3), torch.tensor([0, 1]))


# ------------------------------------------------------------------------------------- classification
def test_accuracy_and_topk():
    logits = torch.tensor([[0.1, 0.5, 0.2, 0.0], [0.3, 0.3, 0.1, 0.9], [0.0, 0.1, 0.2, 0.3]])
    labels = torch.tensor([1, 0, 0])
    assert accuracy(logits, labels) == pytest.approx(100 / 3)
    assert accuracy(torch.tensor([1, 0, 1]), labels) == pytest.approx(200 / 3)
    # ranks of the true class: row0 0; row1 1 (0.9 ahead; the tie at index 1 ranks after index 0); row2 3
    assert topk_accuracy(logits, labels, topk=(1, 2, 3, 4)) == pytest.approx(
        {"acc1": 100 / 3, "acc2": 200 / 3, "acc3": 200 / 3, "acc4": 100.0})
    tie = torch.tensor([[1.0, 1.0]])
    assert topk_accuracy(tie, torch.tensor([0]), topk=(1,)) == {"acc1": 100.0}
    assert topk_accuracy(tie, torch.tensor([1]), topk=(1,)) == {"acc1": 0.0}
    assert topk_accuracy(tie, torch.tensor([1]), topk=(5,)) == {"acc5": 100.0}  # k > classes


def test_classification_bad_input():
    with pytest.raises(EmptySplitError, match="'dev'"):
        accuracy(torch.empty(0, 2), torch.empty(0, dtype=torch.long), split="dev")
    with pytest.raises(EmptySplitError, match="'val'"):
        topk_accuracy(torch.empty(0, 5), torch.empty(0, dtype=torch.long), split="val")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        accuracy(torch.zeros(2, 2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="1-d tensor of 2"):
        topk_accuracy(torch.zeros(2, 2), torch.tensor([0]))
