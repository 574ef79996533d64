"""COCO caption metrics through ``pycocoevalcap`` (the scorer of unilm ``utils.coco_caption_eval``).

The official evaluation (taken from BLIP) loads the Karpathy ground truth with ``pycocotools.COCO``
and runs ``COCOEvalCap``: Stanford PTB tokenisation (lower-cased, punctuation dropped) of references
and predictions, then BLEU-1..4 (``closest`` reference length), METEOR 1.5, ROUGE-L, CIDEr-D and
SPICE. :func:`caption_scores` runs the same scorers on in-memory dicts.

The PTB tokenizer and METEOR are Java programs shipped inside ``pycocoevalcap``, so a Java runtime
must be on ``PATH``. SPICE also needs the Stanford CoreNLP 3.6.0 jars, which ``pycocoevalcap``
downloads on first use; where they are absent (as on this project's offline machines) SPICE is
reported as unavailable (``None`` plus a reason), never as a number.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

__all__ = [
    "CaptionEvalError",
    "JavaNotFoundError",
    "METRIC_NAMES",
    "caption_scores",
    "score_captions",
    "spice_unavailable_reason",
]

METRIC_NAMES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE")
_SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


class CaptionEvalError(ValueError):
    """Predictions or references that cannot be scored; the message names the image id."""


class JavaNotFoundError(FileNotFoundError):
    """No ``java`` on PATH: pycocoevalcap's PTB tokenizer, METEOR and SPICE are Java programs."""


def _require_java() -> None:
    if shutil.which("java") is None:
        raise JavaNotFoundError(
            "pycocoevalcap's PTB tokenizer and METEOR run on Java, but no `java` executable is on PATH: "
            "install a Java runtime (e.g. `apt-get install default-jre-headless`) and retry"
        )


def _pycocoevalcap_dir() -> str:
    try:
        import pycocoevalcap
    except ImportError as exn:
        raise ImportError("caption metrics need pycocoevalcap: `pip install pycocoevalcap`") from exn
    return list(pycocoevalcap.__path__)[0]  # a namespace package: no __init__.py, no __file__


def spice_unavailable_reason() -> str | None:
    """Why SPICE cannot run here (``None`` when it can): its Stanford CoreNLP jars must be present."""
    lib = os.path.join(_pycocoevalcap_dir(), "spice", "lib")
    missing = [jar for jar in _SPICE_JARS if not os.path.isfile(os.path.join(lib, jar))]
    if missing:
        return (f"SPICE needs the Stanford CoreNLP 3.6.0 jars in {lib} (missing: {', '.join(missing)}); "
                "pycocoevalcap downloads them from nlp.stanford.edu on first use, which this machine cannot "
                "reach. Copy them there (from stanford-corenlp-full-2015-12-09.zip) to get SPICE")
    if shutil.which("java") is None:
        return "SPICE runs on Java and no `java` executable is on PATH"
    return None


def _check_inputs(predictions: Mapping[Any, str], references: Mapping[Any, Sequence[str]]) -> None:
    if not predictions:
        raise CaptionEvalError("no predictions to score (empty dict); caption the evaluation split first")
    reference_keys = set(references)
    for image_id, caption in predictions.items():
        if image_id not in reference_keys:
            hint = ""
            for other in (str(image_id),) + ((int(image_id),) if str(image_id).isdigit() else ()):
                if other in reference_keys:
                    hint = f" (the references have {other!r}: use the same key type on both sides)"
            raise CaptionEvalError(f"image id {image_id!r} of the predictions is not in the references{hint}")
        if not isinstance(caption, str):
            raise CaptionEvalError(f"prediction for image id {image_id!r} is {type(caption).__name__}, not a string")
    missing = [image_id for image_id in references if image_id not in predictions]
    if missing:
        raise CaptionEvalError(
            f"{len(missing)} reference image(s) have no prediction, e.g. image id {missing[0]!r}; the official "
            "scorer needs one caption per reference image (to score a subset, pass "
            "references={i: refs[i] for i in predictions})"
        )
    for image_id, refs in references.items():
        if isinstance(refs, str) or not refs or not all(isinstance(r, str) for r in refs):
            raise CaptionEvalError(f"references for image id {image_id!r} must be a non-empty list of strings, "
                                   f"got {refs!r:.100}")


def _run_quiet(fn, *args):
    # pycocoevalcap prints progress (BLEU ratios, tokenizer counts) to stdout.
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def _meteor(gts: dict, res: dict) -> tuple[float, list[float]]:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        score, per_image = scorer.compute_score(gts, res)
    finally:
        with scorer.lock:  # end the JVM now rather than when the object is collected
            scorer.meteor_p.stdin.close()
            scorer.meteor_p.kill()
            scorer.meteor_p.wait()
    return float(score), [float(v) for v in per_image]


def _spice(gts: dict, res: dict) -> tuple[float, list[float]]:
    from pycocoevalcap.spice.spice import Spice

    score, per_image = Spice().compute_score(gts, res)  # per image in sorted id order
    by_id = dict(zip(sorted(gts), (float(s["All"]["f"]) for s in per_image)))
    return float(score), [by_id[i] for i in gts]


def caption_scores(
    predictions: Mapping[Any, str],
    references: Mapping[Any, Sequence[str]],
    *,
    ptb_tokenize: bool = True,
    meteor: bool = True,
    spice: bool = True,
) -> dict[str, Any]:
    """COCO caption scores of ``predictions`` against ``references``, as ``COCOEvalCap.evaluate``.

    Args:
        predictions: ``{image_id: caption}``, one caption per image.
        references: ``{image_id: [reference captions]}`` with exactly the predicted image ids
            (e.g. ``KarpathyCaptions.gt_captions()``).
        ptb_tokenize: run the official Stanford PTB tokenizer (Java) on both sides. ``False`` only
            for captions that are already tokenized (lower-case, space-separated, no punctuation).
        meteor: compute METEOR (Java). ``False`` reports it as unavailable.
        spice: compute SPICE when its jars are present; otherwise it is reported as unavailable.

    Returns:
        ``{"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "SPICE"}`` as floats
        in pycocoevalcap's scale (fractions; CIDEr up to 10), ``None`` for a metric that could not run,
        and ``"unavailable"``: ``{metric: reason}`` for each ``None``.

    Raises:
        CaptionEvalError: no predictions, a predicted image id missing from the references (named),
            a reference image without a prediction, a caption that is not a string.
        JavaNotFoundError: Java is needed (PTB tokenizer, METEOR) but not installed.
    """
    return score_captions(predictions, references, ptb_tokenize=ptb_tokenize, meteor=meteor, spice=spice)[0]


def score_captions(
    predictions: Mapping[Any, str],
    references: Mapping[Any, Sequence[str]],
    *,
    ptb_tokenize: bool = True,
    meteor: bool = True,
    spice: bool = True,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """:func:`caption_scores` and the per-image scores the pycocoevalcap scorers give on the way.

    Returns:
        ``(scores, per_image)``: ``scores`` as :func:`caption_scores`; ``per_image`` one row per
        predicted image (``image_id`` and a column per metric that ran, same scale). CIDEr's, ROUGE-L's
        and SPICE's means are their scores; BLEU's per-image values are sentence BLEU (the score is a
        corpus statistic) and METEOR's are segment scores (the score is METEOR's own aggregate).
    """
    _check_inputs(predictions, references)
    _pycocoevalcap_dir()
    if ptb_tokenize or meteor:
        _require_java()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    image_ids = list(predictions)
    gts = {i: [{"caption": r} for r in references[i]] for i in image_ids}
    res = {i: [{"caption": predictions[i]}] for i in image_ids}
    if ptb_tokenize:
        tokenizer = PTBTokenizer()
        try:
            gts = _run_quiet(tokenizer.tokenize, gts)
            res = _run_quiet(tokenizer.tokenize, res)
        except (OSError, subprocess.SubprocessError) as exn:
            raise RuntimeError(f"the Stanford PTB tokenizer (Java) failed: {exn}") from exn
    else:
        gts = {i: [c["caption"] for c in caps] for i, caps in gts.items()}
        res = {i: [c["caption"] for c in caps] for i, caps in res.items()}

    scores: dict[str, Any] = {}
    per_image: dict[str, list[float]] = {}
    unavailable: dict[str, str] = {}
    bleu, bleu_per_image = _run_quiet(Bleu(4).compute_score, gts, res)
    for n, (value, values) in enumerate(zip(bleu, bleu_per_image), start=1):
        scores[f"BLEU-{n}"], per_image[f"BLEU-{n}"] = float(value), [float(v) for v in values]
    if meteor:
        scores["METEOR"], per_image["METEOR"] = _meteor(gts, res)
    else:
        scores["METEOR"] = None
        unavailable["METEOR"] = "not computed (meteor=False)"
    for name, scorer in (("ROUGE-L", Rouge()), ("CIDEr", Cider())):
        value, values = _run_quiet(scorer.compute_score, gts, res)
        scores[name], per_image[name] = float(value), [float(v) for v in values]

    reason = spice_unavailable_reason() if spice else "not computed (spice=False)"
    if reason is None:
        try:
            scores["SPICE"], per_image["SPICE"] = _run_quiet(_spice, gts, res)
        except (OSError, subprocess.SubprocessError) as exn:
            reason = f"SPICE failed to run: {exn}"
    if reason is not None:
        scores["SPICE"] = None
        unavailable["SPICE"] = reason
    # The scorers keep the order of ``gts`` (the PTB tokenizer too), i.e. of ``image_ids``.
    frame = pd.DataFrame({"image_id": list(gts), **per_image})
    return {name: scores[name] for name in METRIC_NAMES} | {"unavailable": unavailable}, frame
