"""Scenes, language and prior baselines of the benchmark world (no files written)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import replace

import numpy as np
import pytest

from harness.world.language import (
    QUESTION_FAMILIES,
    AnswerBalancer,
    annotator_answers,
    ask_questions,
    captions,
    count,
    family_answers,
    karpathy_tokens,
    refer,
    sample_statement,
)
from harness.world.priors import (
    label_prior_baselines,
    normalize_vqa_answer,
    segmentation_prior,
    vqa_prior_baselines,
    vqa_soft_accuracy,
)
from harness.world.profiles import PROFILES, get_profile
from harness.world.scenes import (
    COLORS,
    SEG_CLASSES,
    SHAPES,
    Background,
    Obj,
    Scene,
    bbox,
    object_mask,
    polygon,
    render,
    render_labels,
    sample_scene,
)


def _scene(*objs: Obj, size: int = 64) -> Scene:
    return Scene(size=size, background=Background("solid", ("gray",)), objects=tuple(objs))


# --- scenes -----------------------------------------------------------------------------------------
def test_sample_scene_is_a_pure_function_of_the_generator():
    a = [sample_scene(np.random.default_rng(3), 64) for _ in range(2)]
    assert a[0] == a[1]
    assert np.array_equal(np.asarray(render(a[0])), np.asarray(render(a[1])))


def test_sample_scene_respects_specs_forbid_and_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene = sample_scene(rng, 64, specs=[("circle", "red", None)] * 2, forbid=[("circle", "red")], num_objects=4)
        assert count(scene, shape="circle", color="red") == 2 and len(scene.objects) == 4
        masks = [object_mask(o, 64) for o in scene.objects]
        assert sum(m.sum() for m in masks) == np.logical_or.reduce(masks).sum(), "objects overlap"
        for o in scene.objects:
            x, y, w, h = bbox(o)
            assert 0 <= x and 0 <= y and x + w <= 64 and y + h <= 64
    with pytest.raises(ValueError, match="excludes every"):
        sample_scene(rng, 64, forbid=[(None, None)])


def test_polygons_and_rendering_agree():
    square, triangle, circle = Obj("square", "red", "large", 16, 16, 8), Obj("triangle", "blue", "large", 48, 16, 8), \
        Obj("circle", "green", "small", 32, 46, 6)
    assert polygon(square) == [8, 8, 24, 8, 24, 24, 8, 24]
    assert polygon(triangle) == [48, 8, 56, 24, 40, 24]
    assert len(polygon(circle)) == 48 and bbox(circle) == [26, 40, 12, 12]
    scene = _scene(square, triangle, circle)
    pixels, labels = np.asarray(render(scene)), np.asarray(render_labels(scene))
    for obj in scene.objects:
        mask = object_mask(obj, 64)
        assert (pixels[mask] == COLORS[obj.color]).all()
        inside = labels[mask]
        assert set(np.unique(inside)) <= {0, 1 + 3 + SHAPES.index(obj.shape)} and (inside > 0).any()
    assert labels[0, 0] == 1 and labels.max() <= len(SEG_CLASSES)
    assert render_labels(scene).mode == "L"


# --- language ---------------------------------------------------------------------------------------
def test_captions_are_distinct_and_true_to_the_scene():
    scene = _scene(Obj("square", "red", "large", 16, 16, 8), Obj("circle", "blue", "small", 48, 48, 5))
    caps = captions(scene, np.random.default_rng(0), 5)
    assert len(set(caps)) == 5
    text = " ".join(caps).lower()
    assert "red square" in text and "blue circle" in text and "triangle" not in text
    assert karpathy_tokens("A red circle, on top.") == ["a", "red", "circle", "on", "top"]


def test_referring_expressions_are_unique_and_skip_the_asked_attribute():
    a, b = Obj("circle", "red", "large", 16, 16, 8), Obj("circle", "blue", "small", 48, 48, 5)
    scene = _scene(a, b)
    assert refer(a, scene, omit="color") == "large circle"
    assert refer(a, scene, omit="shape") == "red object"
    assert refer(a, scene, omit="size") == "red circle"
    twin = _scene(a, Obj("circle", "red", "large", 48, 48, 8))
    assert refer(a, twin, omit="size") is None


def test_questions_answers_are_correct_for_the_scene():
    rng = np.random.default_rng(0)
    balancer = AnswerBalancer(max_objects=4)
    for _ in range(100):
        scene = sample_scene(rng, 64)
        for q in ask_questions(scene, rng, balancer, 5):
            assert q.answer in family_answers(q.family, 4)
            if q.family == "count_all":
                assert q.answer == str(len(scene.objects))
            if q.family == "exist":
                words = q.text.rstrip("?").split()
                color, shape = (words[3], words[4].rstrip("s")) if words[0] == "Are" else (words[3], words[4])
                assert (q.answer == "yes") == (count(scene, shape=shape, color=color) > 0)


def test_answers_are_balanced_per_question_noun():
    """Within each question (family and what it asks about, e.g. "how many red shapes"), no answer runs
    more than ``slack`` + 1 ahead of the rarest: the question text does not predict its answer."""
    rng = np.random.default_rng(1)
    balancer = AnswerBalancer(max_objects=4)
    questions = []
    for _ in range(400):
        questions += ask_questions(sample_scene(rng, 64), rng, balancer, 5)
    for (family, key), counts in balancer.counts.items():
        values = [counts[a] for a in family_answers(family, 4)]
        assert max(values) - min(values) <= balancer.slack + 1, f"{family} {key}: {dict(counts)}"
    per_noun = defaultdict(Counter)
    for q in questions:
        if q.family == "count_kind":
            per_noun[q.text.split(" are ")[0].split(" can ")[0]][q.answer] += 1
    red = per_noun["How many red shapes"]
    assert sum(red.values()) >= 8 and max(red.values()) - min(red[a] for a in "0123") <= 2, red
    asked = balancer.asked
    total = sum(asked.values())
    weights = {f: w for f, (_, w, _) in QUESTION_FAMILIES.items()}
    for family, weight in weights.items():
        # Balance comes first: a family whose questions cannot all be balanced falls behind its weight.
        assert abs(asked[family] / total - weight / sum(weights.values())) < 0.1, f"{family}: {asked}"


def test_annotator_answers_keep_the_majority_and_need_normalisation():
    rng = np.random.default_rng(0)
    variants = 0
    for _ in range(300):
        answers = annotator_answers("yes", "yes/no", rng)
        raw = Counter(a["answer"] for a in answers)
        assert len(answers) == 10 and [a["answer_id"] for a in answers] == list(range(1, 11))
        assert raw["yes"] >= 5 and raw.most_common(1)[0][0] == "yes"
        variants += raw["Yes"] + raw["yes."]
        assert vqa_soft_accuracy("yes", [a["answer"] for a in answers]) >= 0.9
    assert variants > 0
    assert normalize_vqa_answer("Yes.") == "yes" and normalize_vqa_answer("two") == "2"
    assert normalize_vqa_answer("the circle") == "circle"


def test_vqa_soft_accuracy_matches_the_official_formula():
    assert vqa_soft_accuracy("red", ["red"] * 10) == 1.0
    assert vqa_soft_accuracy("red", ["red"] * 3 + ["blue"] * 7) == pytest.approx(0.9)
    assert vqa_soft_accuracy("red", ["red"] + ["blue"] * 9) == pytest.approx(0.3)
    assert vqa_soft_accuracy("green", ["red"] * 10) == 0.0


def test_vqa_prior_stays_near_chance_at_scale():
    """The text-only priors of a mini-sized split (the smoke world is too small to measure them)."""
    rng = np.random.default_rng(0)

    def split(num_images: int) -> list[dict]:
        balancer, records = AnswerBalancer(max_objects=4), []
        for _ in range(num_images):
            for q in ask_questions(sample_scene(rng, 64), rng, balancer, 5):
                answers = [a["answer"] for a in annotator_answers(q.answer, q.answer_type, rng)]
                records.append({"question": q.text, "question_type": q.question_type, "family": q.family,
                                "multiple_choice_answer": q.answer, "answers": answers})
        return records

    priors = vqa_prior_baselines(split(500), split(250))
    assert priors["per_question_type"] <= 0.35, priors
    assert priors["per_question"] <= 0.38, priors
    assert priors["majority"] <= 0.25, priors


def test_a_world_profile_sets_the_difficulty():
    """Shapes, colours, question families and statement templates come from the profile's fields."""
    prof = replace(get_profile("smoke"), name="easy", shapes=("circle", "square"), colors=("red", "blue"),
                   question_families=("color", "count_kind"), statement_templates=("side_presence", "both"))
    rng = np.random.default_rng(0)
    balancer = AnswerBalancer(prof.max_objects, prof.question_families, prof.shapes, prof.colors)
    for _ in range(60):
        scene = sample_scene(rng, 64, **prof.vocabulary)
        assert {(o.shape, o.color) for o in scene.objects} <= {(s, c) for s in prof.shapes for c in prof.colors}
        for q in ask_questions(scene, rng, balancer, 3):
            assert q.family in prof.question_families and "triangle" not in q.text and "green" not in q.text
        stmt = sample_statement(rng, prof.max_objects, prof.statement_templates, **prof.vocabulary)
        assert stmt.template in prof.statement_templates and "triangle" not in stmt.sentence
    with pytest.raises(ValueError, match="colors=.*unknown: \\['teal'\\]"):
        replace(prof, colors=("red", "teal"))
    with pytest.raises(ValueError, match="retrieval_gallery_size"):
        replace(get_profile("mini"), retrieval_gallery_size=300)


def test_nlvr2_statements_can_be_made_true_and_false():
    rng = np.random.default_rng(0)
    templates = Counter()
    for _ in range(60):
        stmt = sample_statement(rng, max_objects=4)
        templates[stmt.template] += 1
        outcomes = set()
        for _ in range(200):
            left_kw, right_kw = stmt.propose(rng)
            left, right = sample_scene(rng, 64, **left_kw), sample_scene(rng, 64, **right_kw)
            outcomes.add(stmt.truth(left, right))
            if len(outcomes) == 2:
                break
        assert outcomes == {True, False}, stmt.sentence
    assert len(templates) >= 6


def test_label_and_segmentation_priors():
    train = [{"label": True, "template": "a"}] * 4 + [{"label": False, "template": "b"}] * 2
    val = [{"label": True, "template": "a"}, {"label": False, "template": "b"}, {"label": True, "template": "c"}]
    assert label_prior_baselines(train, val, keys=("template",)) == {"majority": 0.6667, "per_template": 1.0}
    hist = np.array([5, 10, 1, 0])
    labels = [np.array([[1, 1], [2, 0]])]
    prior = segmentation_prior(hist, labels, num_classes=3)
    assert prior["majority_class"] == 1 and prior["aAcc"] == pytest.approx(2 / 3, abs=1e-4)
    assert prior["mIoU"] == pytest.approx((2 / 3 + 0) / 2, abs=1e-4)


def test_profiles():
    assert set(PROFILES) >= {"smoke", "mini"}
    assert get_profile("mini").image_size > get_profile("smoke").image_size
    with pytest.raises(ValueError, match="known profiles: mini, smoke"):
        get_profile("paper")
