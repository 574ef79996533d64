"""Language of the benchmark world: captions, VQA questions with annotator answers, NLVR2 statements and
an image-free text corpus, all generated from a scene's ground truth with an explicit random stream.

Questions and statements are built so that the text alone does not reveal the answer: for each VQA
question (its family and noun, e.g. "how many red shapes") the answer is picked from the candidates
valid for the image by a balancing counter (:class:`AnswerBalancer`), and every NLVR2 sentence is
labelled on as many true as false image pairs. Which shapes, colours, question families and statement
templates a world uses is its profile's choice (``WorldProfile``); the defaults here are all of them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .scenes import BACKGROUND_COLORS, COLORS, SHAPES, Obj, Scene

__all__ = [
    "NUMBER_WORDS",
    "QUESTION_FAMILIES",
    "STATEMENT_TEMPLATES",
    "AnswerBalancer",
    "family_answers",
    "Question",
    "Statement",
    "caption_pool",
    "captions",
    "karpathy_tokens",
    "sample_question",
    "ask_questions",
    "annotator_answers",
    "sample_statement",
    "corpus_document",
]

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight")
# Minimum centre distance (fraction of the image side) for a left/right or above/below relation.
RELATION_MARGIN = 0.12


def _choice(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def _join(parts: Sequence[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def karpathy_tokens(raw: str) -> list[str]:
    """Tokens as in Karpathy's ``dataset_coco.json``: lower-cased words, punctuation dropped."""
    return re.findall(r"[a-z0-9]+", raw.lower())


# --- scene queries ----------------------------------------------------------------------------------
def count(scene: Scene, shape: str | None = None, color: str | None = None, size: str | None = None) -> int:
    """Number of objects matching every given attribute."""
    return sum(
        (shape is None or o.shape == shape) and (color is None or o.color == color) and (size is None or o.size == size)
        for o in scene.objects
    )


def _left_of(a: Obj, b: Obj, side: int) -> bool | None:
    """True/False when the relation is clear, None when the centres are too close to tell."""
    if abs(a.cx - b.cx) < RELATION_MARGIN * side:
        return None
    return a.cx < b.cx


def _above(a: Obj, b: Obj, side: int) -> bool | None:
    if abs(a.cy - b.cy) < RELATION_MARGIN * side:
        return None
    return a.cy < b.cy


def refer(obj: Obj, scene: Scene, omit: str) -> str | None:
    """Shortest unique referring expression for ``obj`` that does not use attribute ``omit``
    (``"color"``, ``"shape"`` or ``"size"``), e.g. ``"small circle"``; None if there is none."""
    if omit == "shape":
        options = (("color",), ("size", "color"))
    elif omit == "color":
        options = (("shape",), ("size", "shape"))
    else:
        options = (("shape",), ("color", "shape"))
    for attrs in options:
        query = {a: getattr(obj, a) for a in attrs}
        if count(scene, **query) == 1:
            words = [getattr(obj, a) for a in ("size", "color", "shape") if a in attrs]
            return " ".join(words) + ("" if "shape" in attrs else " object")
    return None


def _position(obj: Obj, side: int) -> str:
    col = "left" if obj.cx < side / 3 else "right" if obj.cx > 2 * side / 3 else ""
    row = "top" if obj.cy < side / 3 else "bottom" if obj.cy > 2 * side / 3 else ""
    if row and col:
        return f"in the {row} {col} corner"
    if row:
        return f"at the {row}"
    if col:
        return f"on the {col} side"
    return "in the middle"


# --- captions ---------------------------------------------------------------------------------------
def _background_phrases(scene: Scene) -> tuple[str, ...]:
    """Every way a caption may name the scene's background (one is drawn per image)."""
    bg = scene.background
    if bg.kind == "solid":
        return tuple(f"{word}{bg.color} background" for word in ("plain ", "solid ", ""))
    if bg.kind == "gradient":
        return f"{bg.colors[0]} to {bg.colors[1]} gradient background", "gradient background"
    return tuple(f"{word} {bg.color} background" for word in ("noisy", "textured", "grainy"))


def _groups(scene: Scene, with_size: bool) -> list[str]:
    """Noun phrases grouping equal (colour, shape) objects, left to right: ``"two red circles"``."""
    by_kind: dict[tuple[str, str], list[Obj]] = {}
    for o in sorted(scene.objects, key=lambda o: o.cx):
        by_kind.setdefault((o.color, o.shape), []).append(o)
    phrases = []
    for (color, shape), objs in by_kind.items():
        if len(objs) == 1:
            words = ([objs[0].size] if with_size else []) + [color, shape]
            phrases.append(f"{_article(words[0])} {' '.join(words)}")
        else:
            phrases.append(f"{NUMBER_WORDS[len(objs)]} {color} {shape}s")
    return phrases


def _shape_summary(scene: Scene) -> str:
    counts = Counter(o.shape for o in scene.objects)
    parts = [f"{NUMBER_WORDS[n]} {s}{'s' if n > 1 else ''}" for s, n in sorted(counts.items())]
    return _join(parts)


def _relation(a: Obj, b: Obj, side: int) -> str | None:
    """``"a small red circle to the left of a blue square"`` (or ``above``); None when neither is clear."""
    if _left_of(a, b, side):
        rel = "to the left of"
    elif _above(a, b, side):
        rel = "above"
    else:
        return None
    return f"{_article(a.size)} {a.size} {a.color} {a.shape} {rel} {_article(b.color)} {b.color} {b.shape}"


def _object_pairs(scene: Scene) -> list[tuple[Obj, Obj]]:
    return [(a, b) for a in scene.objects for b in scene.objects if a is not b]


def _relation_phrase(scene: Scene, rng: np.random.Generator) -> str | None:
    pairs = _object_pairs(scene)
    rng.shuffle(pairs)
    return next((phrase for a, b in pairs if (phrase := _relation(a, b, scene.size)) is not None), None)


def _caption_forms(scene: Scene, bg: str, focus: Obj, relation: str | None) -> list[str]:
    """The caption styles of a scene once its drawn choices are made: how the background is named,
    the object in focus and the relation phrase (None when no pair has a clear relation)."""
    n = len(scene.objects)
    objs = _groups(scene, with_size=True)
    focus_np = f"{_article(focus.size)} {focus.size} {focus.color} {focus.shape}"
    count_np = "a single shape" if n == 1 else f"{NUMBER_WORDS[n]} shapes"
    pool = [
        f"{_cap(_join(objs))} on a {bg}.",
        f"{_cap(count_np)} on a {bg}: {_join(_groups(scene, with_size=False))}.",
        f"There is {focus_np} {_position(focus, scene.size)} of the image.",
        f"An image with {_shape_summary(scene)}.",
        f"A {bg} with {_join(objs)}.",
        f"The picture shows {_join(_groups(scene, with_size=False))}.",
    ]
    if relation is not None:
        pool.append(f"{_cap(relation)} on a {bg}.")
    else:
        pool.append(f"{_cap(focus_np)} {_position(focus, scene.size)} of a {bg}.")
    return pool


def caption_pool(scene: Scene, rng: np.random.Generator) -> list[str]:
    """All caption styles for a scene (each a full sentence), in a fixed order."""
    bg = _choice(rng, _background_phrases(scene))
    focus = scene.objects[int(rng.integers(len(scene.objects)))]
    return _caption_forms(scene, bg, focus, _relation_phrase(scene, rng))


def caption_variants(scene: Scene) -> frozenset[str]:
    """Every caption the generator can write for ``scene``, whatever it draws: a caption is true of
    a scene exactly when it is one of these (the ground truth of the retrieval oracle)."""
    relations = [phrase for a, b in _object_pairs(scene) if (phrase := _relation(a, b, scene.size)) is not None]
    return frozenset(caption for bg in _background_phrases(scene) for focus in scene.objects
                     for relation in (relations or [None]) for caption in _caption_forms(scene, bg, focus, relation))


def captions(scene: Scene, rng: np.random.Generator, num: int = 5) -> list[str]:
    """``num`` distinct captions of a scene in different styles (COCO has 5 per image)."""
    pool = caption_pool(scene, rng)
    order = rng.permutation(len(pool))[:num]
    return [pool[i] for i in order]


# --- VQA questions ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Question:
    """A question about a scene: its text, canonical answer, VQA ``question_type`` / ``answer_type``
    and the generating family (used for the prior baselines, not written to the VQA files)."""

    text: str
    answer: str
    question_type: str
    answer_type: str
    family: str


@dataclass(frozen=True)
class _Candidate:
    answer: str
    slots: dict

    @property
    def key(self) -> tuple:
        """What the question asks about, without its wording: answers are balanced per key."""
        return tuple(sorted((k, v) for k, v in self.slots.items() if k != "a"))


# family -> (answer_type, weight, surface forms as (template, question_type))
QUESTION_FAMILIES: dict[str, tuple[str, float, tuple[tuple[str, str], ...]]] = {
    "color": ("other", 0.32, (("What color is the {ref}?", "what color is the"),
                               ("What is the color of the {ref}?", "what is the color of the"))),
    "shape": ("other", 0.12, (("What shape is the {ref}?", "what shape is the"),
                               ("What is the shape of the {ref}?", "what is the shape of the"))),
    "bg_color": ("other", 0.06, (("What color is the background?", "what color is the"),
                                  ("What is the color of the background?", "what is the color of the"))),
    "count_kind": ("number", 0.15, (("How many {noun} are there?", "how many"),
                                     ("How many {noun} are in the picture?", "how many"),
                                     ("How many {noun} can you see?", "how many"))),
    "count_all": ("number", 0.11, (("How many shapes are there?", "how many"),
                                    ("How many objects are in the image?", "how many"))),
    "exist": ("yes/no", 0.1, (("Is there {a} {color} {shape}?", "is there a"),
                                ("Is there {a} {color} {shape} in the image?", "is there a"),
                                ("Are there any {color} {shape}s?", "are there any"))),
    "relation": ("yes/no", 0.09, (("Is the {ref} {rel} the {ref2}?", "is the"),)),
    "size": ("yes/no", 0.05, (("Is the {ref} {adj}?", "is the"),)),
}


def _candidates(family: str, scene: Scene, shapes: Sequence[str] = SHAPES,
                colors: Sequence[str] = tuple(COLORS)) -> list[_Candidate]:
    """Every (answer, slot filling) of a question family that is well defined for ``scene``, asking
    about the world's ``shapes`` and ``colors``."""
    side, objs, out = scene.size, scene.objects, []
    if family == "color":
        for o in objs:
            ref = refer(o, scene, omit="color")
            if ref is not None:
                out.append(_Candidate(o.color, {"ref": ref}))
    elif family == "shape":
        for o in objs:
            ref = refer(o, scene, omit="shape")
            if ref is not None:
                out.append(_Candidate(o.shape, {"ref": ref}))
    elif family == "bg_color":
        if scene.background.kind == "solid":
            out.append(_Candidate(scene.background.color, {}))
    elif family == "count_kind":
        for s in shapes:
            out.append(_Candidate(str(count(scene, shape=s)), {"noun": s + "s"}))
        for c in colors:
            out.append(_Candidate(str(count(scene, color=c)), {"noun": c + " shapes"}))
    elif family == "count_all":
        out.append(_Candidate(str(len(objs)), {}))
    elif family == "exist":
        for c in colors:
            for s in shapes:
                answer = "yes" if count(scene, shape=s, color=c) else "no"
                out.append(_Candidate(answer, {"color": c, "shape": s, "a": _article(c)}))
    elif family == "relation":
        refs = {id(o): refer(o, scene, omit="size") for o in objs}
        for a in objs:
            for b in objs:
                if a is b or refs[id(a)] is None or refs[id(b)] is None:
                    continue
                for rel, fn, sign in (("to the left of", _left_of, True), ("to the right of", _left_of, False),
                                      ("above", _above, True), ("below", _above, False)):
                    truth = fn(a, b, side)
                    if truth is not None:
                        answer = "yes" if truth == sign else "no"
                        out.append(_Candidate(answer, {"ref": refs[id(a)], "ref2": refs[id(b)], "rel": rel}))
    elif family == "size":
        for o in objs:
            ref = refer(o, scene, omit="size")
            if ref is not None:
                for adj, size in (("large", "large"), ("big", "large"), ("small", "small")):
                    out.append(_Candidate("yes" if o.size == size else "no", {"ref": ref, "adj": adj}))
    else:
        raise KeyError(f"unknown question family {family!r}; known: {sorted(QUESTION_FAMILIES)}")
    return out


# "How many X" questions whose answer exceeds this are not asked: such scenes are too rare to balance.
MAX_KIND_COUNT = 3


def family_answers(family: str, max_objects: int, shapes: Sequence[str] = SHAPES,
                   colors: Sequence[str] = tuple(COLORS)) -> tuple[str, ...]:
    """Every answer a question family can have (for scenes of at most ``max_objects`` of the world's
    ``shapes`` in its ``colors``)."""
    if family == "color":
        return tuple(colors)
    if family == "shape":
        return tuple(shapes)
    if family == "bg_color":
        return tuple(BACKGROUND_COLORS)
    if family == "count_kind":
        return tuple(str(n) for n in range(MAX_KIND_COUNT + 1))
    if family == "count_all":
        return tuple(str(n) for n in range(1, max_objects + 1))
    if family in ("exist", "relation", "size"):
        return ("no", "yes")
    raise KeyError(f"unknown question family {family!r}; known: {sorted(QUESTION_FAMILIES)}")


@dataclass
class AnswerBalancer:
    """Keeps a split's question mix at the family weights and the answers of every question uniform.

    Families are tried in order of how far they lag behind their weight. Within a family, the answers
    are counted per question key (what it asks about, e.g. ``noun="red shapes"``, whatever its wording)
    and the question takes, among the candidates the image allows, one whose answer is the least ahead
    of its key's rarest answer (ties broken at random); when even that one is more than ``slack`` ahead,
    the family is skipped for this image (VQA v2 balanced its answers the same way: by leaving
    questions out, not by reweighting). So no question text predicts its answer, only the image does.

    Args:
        max_objects: most shapes in a scene (bounds the counting answers).
        families: the question families asked (a world profile's ``question_families``).
        shapes: the world's shapes (the answers and nouns of the shape questions).
        colors: the world's object colours.
        slack: how far ahead of its key's rarest answer the chosen answer may be.
    """

    max_objects: int
    families: tuple[str, ...] = tuple(QUESTION_FAMILIES)
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    slack: int = 1
    counts: dict[tuple[str, tuple], Counter] = field(default_factory=dict)
    asked: Counter = field(default_factory=Counter)

    def family_order(self, rng: np.random.Generator) -> list[str]:
        total = sum(self.asked.values()) + 1
        weights = {f: QUESTION_FAMILIES[f][1] for f in self.families}
        norm = sum(weights.values())
        jitter = rng.random(len(weights))
        deficit = {f: weights[f] / norm * total - self.asked[f] + 1e-3 * j for f, j in zip(weights, jitter)}
        return sorted(deficit, key=lambda f: -deficit[f])

    def candidates(self, family: str, scene: Scene) -> list[_Candidate]:
        return _candidates(family, scene, self.shapes, self.colors)

    def pick(self, family: str, candidates: Sequence[_Candidate], rng: np.random.Generator) -> _Candidate | None:
        """The candidate to ask (its answer counted), or None when every one would unbalance its key."""
        known = family_answers(family, self.max_objects, self.shapes, self.colors)
        options = [c for c in candidates if c.answer in known]

        def ahead(c: _Candidate) -> int:
            seen = self.counts.get((family, c.key))
            return 0 if seen is None else seen[c.answer] - min(seen[a] for a in known)

        if not options:
            return None
        lead = {id(c): ahead(c) for c in options}
        lowest = min(lead.values())
        if lowest > self.slack:
            return None
        best = [c for c in options if lead[id(c)] == lowest]
        chosen = best[int(rng.integers(len(best)))]
        self.counts.setdefault((family, chosen.key), Counter())[chosen.answer] += 1
        self.asked[family] += 1
        return chosen


def sample_question(
    scene: Scene,
    rng: np.random.Generator,
    balancer: AnswerBalancer,
    exclude: set[str] = frozenset(),
) -> Question | None:
    """One balanced question about ``scene`` whose text is not in ``exclude``; None if none is found."""
    for family in balancer.family_order(rng):
        answer_type, _, forms = QUESTION_FAMILIES[family]
        template, question_type = forms[int(rng.integers(len(forms)))]
        cands = [c for c in balancer.candidates(family, scene) if template.format(**c.slots) not in exclude]
        cand = balancer.pick(family, cands, rng)
        if cand is None:
            continue
        return Question(template.format(**cand.slots), cand.answer, question_type, answer_type, family)
    return None


def ask_questions(scene: Scene, rng: np.random.Generator, balancer: AnswerBalancer, num: int) -> list[Question]:
    """Up to ``num`` distinct balanced questions about ``scene`` (fewer when the balancer skips)."""
    questions: list[Question] = []
    for _ in range(num):
        q = sample_question(scene, rng, balancer, exclude={q.text for q in questions})
        if q is None:
            break
        questions.append(q)
    return questions


_NEAR_MISSES = {
    "red": ("orange", "pink", "dark red"),
    "orange": ("red", "yellow", "orange red"),
    "yellow": ("orange", "gold", "light yellow"),
    "green": ("dark green", "teal", "lime"),
    "blue": ("purple", "navy", "light blue"),
    "purple": ("violet", "blue", "pink"),
    "gray": ("grey", "silver", "white"),
    "white": ("gray", "light gray", "cream"),
    "black": ("dark gray", "gray", "dark"),
    "beige": ("tan", "brown", "cream"),
    "brown": ("tan", "dark brown", "beige"),
    "circle": ("oval", "round", "ball"),
    "square": ("rectangle", "box", "diamond"),
    "triangle": ("pyramid", "cone", "arrow"),
    "yes": ("no",),
    "no": ("yes",),
}


def _near_misses(answer: str) -> tuple[str, ...]:
    if answer.isdigit():
        n = int(answer)
        return tuple(str(m) for m in (n - 1, n + 1) if m >= 0) + (NUMBER_WORDS[n],)
    return _NEAR_MISSES[answer]


# How many of the 10 annotators disagree (0..3), per answer type. Yes/no disagreement is kept rare:
# the soft score gives a wrong "no" partial credit for every annotator who said "no".
_DISAGREEMENT = {"yes/no": (0.75, 0.2, 0.05, 0.0), "number": (0.5, 0.3, 0.15, 0.05), "other": (0.4, 0.3, 0.2, 0.1)}


def annotator_answers(answer: str, answer_type: str, rng: np.random.Generator, num: int = 10) -> list[dict]:
    """``num`` VQA annotator answers for a canonical ``answer``: 0-3 give a near miss / synonym / wrong
    answer and up to 2 of the agreeing ones write a case or punctuation variant (``"Yes"``, ``"yes."``)
    that only answer normalisation merges. The canonical string always keeps a raw count >= 5."""
    num_wrong = int(rng.choice(4, p=_DISAGREEMENT[answer_type]))
    num_variant = int(rng.choice(3, p=[0.6, 0.25, 0.15]))
    misses = _near_misses(answer)
    answers = [(misses[int(rng.integers(len(misses)))], False) for _ in range(num_wrong)]
    for _ in range(num_variant):
        variant = _cap(answer) if rng.random() < 0.5 else answer + "."
        answers.append((variant, True))
    answers += [(answer, True)] * (num - len(answers))
    order = rng.permutation(num)
    out = []
    for answer_id, k in enumerate(order, start=1):
        text, agrees = answers[k]
        confidence = ("yes", "maybe", "no")[rng.choice(3, p=[0.85, 0.1, 0.05] if agrees else [0.3, 0.5, 0.2])]
        out.append({"answer": text, "answer_confidence": confidence, "answer_id": answer_id})
    return out


# --- NLVR2 statements -------------------------------------------------------------------------------
Pattern = tuple[str | None, str | None]  # (shape, color), None = any


def _noun(pattern: Pattern, n: int) -> str:
    shape, color = pattern
    head = shape if shape is not None else "shape"
    words = ([color] if color is not None else []) + [head + ("s" if n != 1 else "")]
    return " ".join(words)


def _a_noun(pattern: Pattern) -> str:
    noun = _noun(pattern, 1)
    return f"{_article(noun)} {noun}"


def _n_noun(pattern: Pattern, n: int) -> str:
    return f"{NUMBER_WORDS[n]} {_noun(pattern, n)}"


@dataclass(frozen=True)
class Statement:
    """An NLVR2 sentence with its truth function over (left, right) scenes and a proposal that draws
    ``sample_scene`` keyword arguments for both images so that both labels are likely."""

    sentence: str
    template: str
    truth: Callable[[Scene, Scene], bool]
    propose: Callable[[np.random.Generator], tuple[dict, dict]]


def _count_proposal(pattern: Pattern, max_objects: int, choose: Callable[[np.random.Generator], tuple[int, int]]):
    def propose(rng: np.random.Generator) -> tuple[dict, dict]:
        kwargs = []
        for c in choose(rng):
            c = min(c, max_objects)
            kwargs.append(dict(
                specs=[(pattern[0], pattern[1], None)] * c,
                forbid=[pattern],
                num_objects=int(rng.integers(max(1, c), max_objects + 1)),
            ))
        return kwargs[0], kwargs[1]
    return propose


# Statement templates and their weights: per-image presence / count predicates combined over the two
# images. The mix is kept small so that a tiny model can learn the logic from a few thousand pairs (a
# transformer over perfect object tokens needed ~6000 pairs to learn this set; richer sets need more).
STATEMENT_TEMPLATES = {"side_presence": 0.26, "both": 0.22, "more": 0.14, "num_objects": 0.14, "side_count": 0.14,
                        "exactly_one": 0.05, "none": 0.05}


def sample_statement(
    rng: np.random.Generator,
    max_objects: int,
    templates: Sequence[str] = tuple(STATEMENT_TEMPLATES),
    shapes: Sequence[str] = SHAPES,
    colors: Sequence[str] = tuple(COLORS),
) -> Statement:
    """A random NLVR2 statement (template, wording and its pattern): the presence or count, in one or
    both images, of one shape kind, one colour, or shapes of one kind and colour (``"red circles"``);
    ``templates`` (weights of :data:`STATEMENT_TEMPLATES`), ``shapes`` and ``colors`` are the world's."""
    kind = rng.random()
    shape, color = _choice(rng, tuple(shapes)), _choice(rng, tuple(colors))
    pattern: Pattern = (shape, None) if kind < 1 / 3 else (None, color) if kind < 2 / 3 else (shape, color)

    def counts(scene: Scene) -> int:
        return count(scene, shape=pattern[0], color=pattern[1])

    def uniform_pair(r):
        return int(r.integers(0, 4)), int(r.integers(0, 4))

    def presence_pair(r):
        return tuple(0 if r.random() < 0.35 else int(r.integers(1, 3)) for _ in range(2))

    weights = np.array([STATEMENT_TEMPLATES[t] for t in templates])
    template = templates[rng.choice(len(templates), p=weights / weights.sum())]
    side = _choice(rng, ("left", "right"))
    idx = 0 if side == "left" else 1
    if template == "side_presence":
        sentence = _choice(rng, (f"The {side} image contains {_a_noun(pattern)}.",
                                 f"There is {_a_noun(pattern)} in the {side} image."))
        truth = lambda L, R: counts((L, R)[idx]) > 0  # noqa: E731
        propose = _count_proposal(pattern, max_objects, presence_pair)
    elif template == "side_count":
        n = int(rng.integers(1, 4))
        sentence = _choice(rng, (f"The {side} image contains exactly {_n_noun(pattern, n)}.",
                                 f"There {'is' if n == 1 else 'are'} exactly {_n_noun(pattern, n)} in the {side} image."))
        truth = lambda L, R: counts((L, R)[idx]) == n  # noqa: E731
        propose = _count_proposal(pattern, max_objects, lambda r: tuple(
            (n if r.random() < 0.5 else int(r.integers(0, 4))) if i == idx else int(r.integers(0, 4)) for i in range(2)))
    elif template == "both":
        sentence = _choice(rng, (f"Both images contain {_a_noun(pattern)}.",
                                 f"Each image has at least one {_noun(pattern, 1)}."))
        truth = lambda L, R: counts(L) > 0 and counts(R) > 0  # noqa: E731
        propose = _count_proposal(pattern, max_objects, presence_pair)
    elif template == "exactly_one":
        sentence = _choice(rng, (f"Exactly one image contains {_a_noun(pattern)}.",
                                 f"Only one of the two images shows {_a_noun(pattern)}."))
        truth = lambda L, R: (counts(L) > 0) != (counts(R) > 0)  # noqa: E731
        propose = _count_proposal(pattern, max_objects, presence_pair)
    elif template == "none":
        sentence = _choice(rng, (f"Neither image contains {_a_noun(pattern)}.",
                                 f"There is no {_noun(pattern, 1)} in either image."))
        truth = lambda L, R: counts(L) == 0 and counts(R) == 0  # noqa: E731
        propose = _count_proposal(pattern, max_objects, lambda r: tuple(
            0 if r.random() < 0.6 else int(r.integers(1, 3)) for _ in range(2)))
    elif template == "more":
        other = "right" if side == "left" else "left"
        sentence = f"The {side} image contains more {_noun(pattern, 2)} than the {other} image."
        truth = lambda L, R: counts((L, R)[idx]) > counts((L, R)[1 - idx])  # noqa: E731
        propose = _count_proposal(pattern, max_objects, uniform_pair)
    else:  # num_objects
        n = int(rng.integers(1, max_objects + 1))
        sentence = _choice(rng, (f"Each image contains exactly {_n_noun((None, None), n)}.",
                                 f"There are {_n_noun((None, None), n)} in each image."))
        if n == 1:
            sentence = _choice(rng, ("Each image contains exactly one shape.", "There is one shape in each image."))
        truth = lambda L, R: len(L.objects) == n and len(R.objects) == n  # noqa: E731

        def propose(r: np.random.Generator) -> tuple[dict, dict]:
            return tuple(dict(num_objects=n if r.random() < 0.7 else int(r.integers(1, max_objects + 1)))
                         for _ in range(2))
    return Statement(sentence=sentence, template=template, truth=truth, propose=propose)


# --- image-free text corpus -------------------------------------------------------------------------
_EXTRA_COLORS = ("pink", "silver", "golden", "cyan", "crimson", "violet", "gray", "white", "black", "brown")
_THINGS = ("ball", "box", "kite", "tile", "coin", "flag", "book", "lamp", "cup", "star", "ring", "leaf")
_ADJECTIVES = ("bright", "dark", "shiny", "tiny", "huge", "old", "wooden", "plastic", "painted", "striped", "dotted",
               "heavy", "quiet", "strange")
_VERBS = ("sits", "rests", "lies", "stands", "appears", "floats", "hangs", "waits", "was drawn", "was painted",
          "is placed", "was found")
_PREPOSITIONS = ("next to", "above", "below", "to the left of", "to the right of", "behind", "in front of", "near",
                 "inside", "beside", "on top of", "under")
_PLACES = ("the table", "the window", "a wooden shelf", "the river", "the garden", "a blank page", "the wall",
           "the old map", "a blue carpet", "the kitchen door", "the school yard", "a paper bag")
_NAMES = ("Anna", "Ben", "Carla", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jonas", "Kira", "Leo")
_FACTS = (
    "A triangle has three sides and three corners.",
    "A square has four equal sides and four corners.",
    "A circle has no corners at all.",
    "Mixing red and yellow paint gives orange.",
    "Mixing blue and yellow paint gives green.",
    "Mixing red and blue paint gives purple.",
    "Every square is also a rectangle.",
    "The corners of a square are right angles.",
    "A circle looks the same from every side.",
)


def _noun_phrase(rng: np.random.Generator) -> str:
    words = []
    if rng.random() < 0.5:
        words.append(_choice(rng, _ADJECTIVES))
    if rng.random() < 0.8:
        words.append(_choice(rng, list(COLORS) + list(_EXTRA_COLORS)))
    words.append(_choice(rng, SHAPES + _THINGS))
    if rng.random() < 0.3:
        n = int(rng.integers(2, 7))
        return f"{NUMBER_WORDS[n]} {' '.join(words)}s"
    determiner = "the" if rng.random() < 0.5 else _article(words[0])
    return f"{determiner} {' '.join(words)}"


def _corpus_sentence(rng: np.random.Generator) -> str:
    style = int(rng.integers(7))
    if style == 0:
        return _choice(rng, _FACTS)
    if style == 1:
        return _cap(f"{_noun_phrase(rng)} {_choice(rng, _VERBS)} {_choice(rng, _PREPOSITIONS)} {_choice(rng, _PLACES)}.")
    if style == 2:
        n = int(rng.integers(2, 9))
        return (f"{_choice(rng, _NAMES)} drew {NUMBER_WORDS[n]} {_choice(rng, list(COLORS))} "
                f"{_choice(rng, SHAPES)}s on {_choice(rng, _PLACES)}.")
    if style == 3:
        comparative = _choice(rng, ("bigger", "smaller", "brighter", "darker", "older"))
        return _cap(f"{_noun_phrase(rng)} is {comparative} than {_noun_phrase(rng)}.")
    if style == 4:
        return (f"In the {_choice(rng, ('morning', 'evening', 'afternoon'))}, {_choice(rng, _NAMES)} counted "
                f"{NUMBER_WORDS[int(rng.integers(2, 9))]} {_choice(rng, SHAPES + _THINGS)}s "
                f"{_choice(rng, _PREPOSITIONS)} {_choice(rng, _PLACES)}.")
    if style == 5:
        return _cap(f"why is {_noun_phrase(rng)} {_choice(rng, _PREPOSITIONS)} {_choice(rng, _PLACES)}?")
    return (f"{_choice(rng, _NAMES)} said that {_noun_phrase(rng)} and {_noun_phrase(rng)} "
            f"{_choice(rng, ('look alike', 'are different', 'belong together', 'were moved'))}.")


def corpus_document(rng: np.random.Generator) -> str:
    """One document (1-4 sentences) of shape-world text that describes no particular image."""
    return " ".join(_corpus_sentence(rng) for _ in range(int(rng.integers(1, 5))))

