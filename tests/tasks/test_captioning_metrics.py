"""COCO caption metrics via pycocoevalcap: hand-checked values, Java, SPICE availability, bad input."""
import math

import pytest

import tasks.metrics.captioning as cap_metrics
from tasks.metrics.captioning import CaptionEvalError, JavaNotFoundError, caption_scores

pytest.importorskip("pycocoevalcap", reason="caption metrics need pycocoevalcap (make setup)")


@pytest.fixture(autouse=True)
def _no_spice_jars(monkeypatch):
    # SPICE must come out as "unavailable" on every machine these tests run on (it needs 8 GB and
    # minutes even where its jars exist).
    monkeypatch.setattr(cap_metrics, "_SPICE_JARS", ("stanford-corenlp-3.6.0.jar", "no-such-models.jar"))


def test_known_small_example_by_hand():
    # "a cat" against "a cat sits on the mat", already tokenized: unigram and bigram precision 1, no
    # 3/4-grams in the hypothesis (pycocoevalcap's 1e-15 / 1e-9 smoothing gives 1e-6 for them),
    # brevity penalty exp(1 - 6/2). ROUGE-L: LCS 2, P = 1, R = 1/3, F_beta with beta = 1.2.
    scores = caption_scores({7: "a cat"}, {7: ["a cat sits on the mat"]}, ptb_tokenize=False, meteor=False)
    brevity = math.exp(1 - 6 / 2)
    assert scores["BLEU-1"] == pytest.approx(brevity, rel=1e-6)
    assert scores["BLEU-2"] == pytest.approx(brevity, rel=1e-6)
    assert scores["BLEU-3"] == pytest.approx(brevity * 1e-2, rel=1e-6)
    assert scores["BLEU-4"] == pytest.approx(brevity * 1e-3, rel=1e-6)
    precision, recall, beta = 1.0, 1 / 3, 1.2
    assert scores["ROUGE-L"] == pytest.approx((1 + beta**2) * precision * recall / (recall + beta**2 * precision))
    assert scores["METEOR"] is None and "meteor=False" in scores["unavailable"]["METEOR"]
    assert scores["SPICE"] is None and "Stanford CoreNLP" in scores["unavailable"]["SPICE"]


def test_identical_captions_with_the_official_java_scorers():
    """The one Java test: PTB tokenizer (lower-case, punctuation dropped) and METEOR 1.5."""
    predictions = {1: "a man riding a horse", 2: "two dogs play in the snow", 3: "a red bus on a city street"}
    references = {1: ["A man riding a horse."], 2: ["Two dogs play in the snow!"], 3: ["A red bus, on a city street."]}
    scores = caption_scores(predictions, references)
    assert list(scores) == [*cap_metrics.METRIC_NAMES, "unavailable"]
    for n in range(1, 5):
        assert scores[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-8)
    assert scores["METEOR"] == pytest.approx(1.0, abs=1e-6)
    assert scores["ROUGE-L"] == pytest.approx(1.0)
    assert scores["CIDEr"] == pytest.approx(10.0)  # CIDEr-D's maximum (x10) when every n-gram is informative
    assert scores["SPICE"] is None and list(scores["unavailable"]) == ["SPICE"]


def test_missing_java_says_to_install_a_jre(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(JavaNotFoundError, match="default-jre-headless"):
        caption_scores({1: "a cat"}, {1: ["a cat"]})
    # Without the Java parts nothing needs Java.
    scores = caption_scores({1: "a cat"}, {1: ["a cat"]}, ptb_tokenize=False, meteor=False)
    assert scores["BLEU-1"] == pytest.approx(1.0)


def test_bad_input_names_the_problem():
    refs = {1: ["a cat"], 2: ["a dog"]}
    with pytest.raises(CaptionEvalError, match="no predictions"):
        caption_scores({}, refs)
    with pytest.raises(CaptionEvalError, match="image id 3 of the predictions is not in the references"):
        caption_scores({1: "a cat", 2: "a dog", 3: "a bird"}, refs)
    with pytest.raises(CaptionEvalError, match=r"image id '1' .*the references have 1"):
        caption_scores({"1": "a cat"}, refs)
    with pytest.raises(CaptionEvalError, match="1 reference image.* no prediction, e.g. image id 2"):
        caption_scores({1: "a cat"}, refs)
    with pytest.raises(CaptionEvalError, match="image id 2 is NoneType"):
        caption_scores({1: "a cat", 2: None}, refs)
    with pytest.raises(CaptionEvalError, match="references for image id 2 must be a non-empty list"):
        caption_scores({1: "a cat", 2: "a dog"}, {1: ["a cat"], 2: []})
