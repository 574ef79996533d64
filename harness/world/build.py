"""Build the benchmark world: every data set in its real on-disk format, from one seed.

Each data set draws from its own random stream ``numpy.random.default_rng([seed, stream])``, so the
same seed gives byte-identical files and adding a data set never changes another one. A world is
written into a temporary directory beside its destination and renamed into place at the end, so an
interrupted build never leaves a half-written world.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import writers
from .language import (
    VOCABULARY,
    AnswerBalancer,
    annotator_answers,
    ask_questions,
    caption_pool,
    captions,
    corpus_document,
    karpathy_tokens,
    sample_statement,
)
from .priors import label_prior_baselines, majority_accuracy, segmentation_prior, vqa_prior_baselines
from .profiles import WorldProfile, get_profile
from .scenes import COLORS, SEG_CLASSES, SHAPES, bbox, object_mask, polygon, render, render_labels, sample_scene

__all__ = ["VERSION", "MANIFEST_NAME", "build_world", "ensure_world", "world_dir_name", "load_manifest"]

VERSION = "1"
MANIFEST_NAME = "world.json"
WORLD_NAME = "beit3-benchmark-world"
# Random stream of each data set (never renumber: that would change existing worlds).
_STREAMS = {"coco": 1, "vqa": 2, "flickr30k": 3, "pairs": 4, "text": 5, "nlvr2": 6, "imagenet": 7, "in21k": 8,
            "instances": 9, "ade": 10}
# Image pairs labelled with each NLVR2 sentence (half True, half False: the sentence alone is at chance).
_NLVR2_PAIRS_PER_SET = 2
# Object size factor of the crowded detection / segmentation scenes.
_DENSE_SCALE = 0.7


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream]])


@dataclass
class _Part:
    """What building one data set produced: manifest entry, counts, prior baselines and its text."""

    entry: dict
    counts: dict
    baselines: dict = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)


def _unique_ids(rng: np.random.Generator, n: int, high: int = 600_000) -> list[int]:
    return [int(i) + 1 for i in rng.choice(high, size=n, replace=False)]


# --- COCO (Karpathy captions) + VQAv2 on the same images ---------------------------------------------
def _karpathy_entry(imgid: int, split: str, filename: str, caps: list[str], sentid: int, **extra) -> dict:
    sentences = [
        {"tokens": karpathy_tokens(raw), "raw": raw, "imgid": imgid, "sentid": sentid + k} for k, raw in enumerate(caps)
    ]
    entry = {"filepath": extra.pop("filepath")} if "filepath" in extra else {}
    entry.update({"sentids": [s["sentid"] for s in sentences], "filename": filename, "imgid": imgid,
                  "split": split, "sentences": sentences})
    entry.update(extra)
    return entry


def _build_coco_and_vqa(root: Path, prof: WorldProfile, seed: int) -> tuple[_Part, _Part]:
    rng, qrng = _rng(seed, "coco"), _rng(seed, "vqa")
    n_train, n_restval, n_val, n_test = prof.coco_splits
    splits = ["train"] * n_train + ["restval"] * n_restval + ["val"] * n_val + ["test"] * n_test
    ids = _unique_ids(rng, len(splits) + prof.vqa_test_images)
    karpathy, sentid = [], 0
    vqa_questions: dict[str, list[dict]] = {"train2014": [], "val2014": [], "test2015": []}
    vqa_annotations: dict[str, list[dict]] = {"train2014": [], "val2014": []}
    prior_records: dict[str, list[dict]] = {"train2014": [], "val2014": []}
    balancers = {k: AnswerBalancer(prof.max_objects) for k in vqa_questions}
    texts = []
    test_dev_ids = set(ids[len(splits): len(splits) + math.ceil(prof.vqa_test_images / 2)])

    for imgid, (split, cocoid) in enumerate(zip(splits + ["test2015"] * prof.vqa_test_images, ids)):
        subset = "train2014" if split == "train" else "test2015" if split == "test2015" else "val2014"
        scene = sample_scene(rng, prof.image_size, max_objects=prof.max_objects)
        filename = f"COCO_{subset}_{cocoid:012d}.jpg"
        writers.save_image(render(scene), root / "coco" / subset / filename)
        if split != "test2015":
            caps = captions(scene, rng, 5)
            karpathy.append(_karpathy_entry(imgid, split, filename, caps, sentid, filepath=subset, cocoid=cocoid))
            sentid += len(caps)
            texts += caps
        for k, q in enumerate(ask_questions(scene, qrng, balancers[subset], prof.vqa_questions_per_image)):
            texts.append(q.text)
            qid = cocoid * 1000 + k
            vqa_questions[subset].append({"image_id": cocoid, "question": q.text, "question_id": qid})
            if subset == "test2015":
                continue
            answers = annotator_answers(q.answer, q.answer_type, qrng)
            vqa_annotations[subset].append({
                "question_type": q.question_type, "multiple_choice_answer": q.answer, "answers": answers,
                "image_id": cocoid, "answer_type": q.answer_type, "question_id": qid,
            })
            prior_records[subset].append({
                "question": q.text, "question_type": q.question_type, "family": q.family,
                "multiple_choice_answer": q.answer, "answers": [a["answer"] for a in answers],
            })

    coco = root / "coco"
    writers.write_json(writers.karpathy_json(karpathy, "coco"), coco / "dataset_coco.json")
    for split in ("val", "test"):
        images = [img for img in karpathy if img["split"] == split]
        writers.write_json(writers.caption_gt_json(images), coco / f"coco_karpathy_{split}_gt.json")
    vqa_dir = coco / "vqa"
    question_files, annotation_files = {}, {}
    test_dev = [q for q in vqa_questions["test2015"] if q["image_id"] in test_dev_ids]
    for subset, questions in list(vqa_questions.items()) + [("test-dev2015", test_dev)]:
        path = vqa_dir / f"v2_OpenEnded_mscoco_{subset}_questions.json"
        writers.write_json(writers.vqa_questions_json(subset, questions), path)
        question_files[subset] = path.relative_to(root).as_posix()
    for subset, subset_annotations in vqa_annotations.items():
        path = vqa_dir / f"v2_mscoco_{subset}_annotations.json"
        writers.write_json(writers.vqa_annotations_json(subset, subset_annotations), path)
        annotation_files[subset] = path.relative_to(root).as_posix()

    split_counts = {s: splits.count(s) for s in ("train", "restval", "val", "test")}
    coco_part = _Part(
        entry={
            "format": "karpathy",
            "root": "coco",
            "annotation": "coco/dataset_coco.json",
            "images": {"train2014": "coco/train2014", "val2014": "coco/val2014"},
            "caption_gt": {"val": "coco/coco_karpathy_val_gt.json", "test": "coco/coco_karpathy_test_gt.json"},
        },
        counts={"images": split_counts, "captions": sentid},
        baselines={"retrieval_chance_r1": {"val": round(1 / max(n_val, 1), 4), "test": round(1 / max(n_test, 1), 4)}},
        texts=texts,
    )
    vqa_part = _Part(
        entry={
            "format": "vqav2",
            "root": "coco",
            "annotations_dir": "coco/vqa",
            "questions": question_files,
            "annotations": annotation_files,
            "images": {"train2014": "coco/train2014", "val2014": "coco/val2014", "test2015": "coco/test2015"},
        },
        counts={
            "questions": {s: len(q) for s, q in vqa_questions.items()} | {"test-dev2015": len(test_dev)},
            "images": {"test2015": prof.vqa_test_images},
        },
        baselines=vqa_prior_baselines(prior_records["train2014"], prior_records["val2014"]),
    )
    return coco_part, vqa_part


# --- Flickr30K-style Karpathy split ------------------------------------------------------------------
def _build_flickr30k(root: Path, prof: WorldProfile, seed: int) -> _Part:
    rng = _rng(seed, "flickr30k")
    n_train, n_val, n_test = prof.flickr_splits
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    names = [1_000_000_000 + i for i in _unique_ids(rng, len(splits), high=3_000_000_000)]
    images, sentid, texts = [], 0, []
    for imgid, (split, name) in enumerate(zip(splits, names)):
        scene = sample_scene(rng, prof.image_size, max_objects=prof.max_objects)
        filename = f"{name}.jpg"
        writers.save_image(render(scene), root / "flickr30k" / "flickr30k-images" / filename)
        caps = captions(scene, rng, 5)
        images.append(_karpathy_entry(imgid, split, filename, caps, sentid))
        sentid += len(caps)
        texts += caps
    writers.write_json(writers.karpathy_json(images, "flickr30k"), root / "flickr30k" / "dataset_flickr30k.json")
    return _Part(
        entry={"format": "karpathy", "root": "flickr30k", "annotation": "flickr30k/dataset_flickr30k.json",
               "images": "flickr30k/flickr30k-images"},
        counts={"images": {"train": n_train, "val": n_val, "test": n_test}, "captions": sentid},
        baselines={"retrieval_chance_r1": {"val": round(1 / max(n_val, 1), 4), "test": round(1 / max(n_test, 1), 4)}},
        texts=texts,
    )


# --- WebDataset captioned pairs -----------------------------------------------------------------------
def _build_pairs(root: Path, prof: WorldProfile, seed: int) -> _Part:
    rng = _rng(seed, "pairs")
    shards, texts = [], []
    for s in range(prof.pair_shards):
        samples = []
        for i in range(prof.pairs_per_shard):
            scene = sample_scene(rng, prof.image_size, max_objects=prof.max_objects)
            pool = caption_pool(scene, rng)
            caption = pool[int(rng.integers(len(pool)))]
            texts.append(caption)
            key = f"{s:05d}{i:04d}"
            samples.append((key, {"png": writers.image_bytes(render(scene), ".png"), "txt": caption.encode("utf-8")}))
        path = root / "pairs" / f"pairs-{s:06d}.tar"
        writers.write_tar_shard(path, samples)
        shards.append(path.relative_to(root).as_posix())
    return _Part(
        entry={"format": "webdataset", "shards": shards,
               "url": f"pairs/pairs-{{000000..{prof.pair_shards - 1:06d}}}.tar", "members": ["png", "txt"]},
        counts={"shards": prof.pair_shards, "pairs": prof.pair_shards * prof.pairs_per_shard},
        texts=texts,
    )


# --- image-free text corpus ---------------------------------------------------------------------------
def _build_text(root: Path, prof: WorldProfile, seed: int) -> _Part:
    rng = _rng(seed, "text")
    docs = [corpus_document(rng) for _ in range(prof.corpus_documents)]
    writers.write_lines(docs, root / "text" / "corpus.txt")
    writers.write_jsonl(({"text": d} for d in docs), root / "text" / "corpus.jsonl")
    return _Part(
        entry={"format": "text", "txt": "text/corpus.txt", "jsonl": "text/corpus.jsonl"},
        counts={"documents": len(docs)},
        texts=docs,
    )


# --- NLVR2 --------------------------------------------------------------------------------------------
def _nlvr2_set(rng: np.random.Generator, prof: WorldProfile):
    """One sentence with ``_NLVR2_PAIRS_PER_SET`` image pairs, half True and half False, in random order."""
    half = _NLVR2_PAIRS_PER_SET // 2
    while True:
        stmt = sample_statement(rng, prof.max_objects)
        labels = [bool(v) for v in rng.permutation([True] * half + [False] * half)]
        pairs = []
        for label in labels:
            for _ in range(200):
                left_kw, right_kw = stmt.propose(rng)
                left = sample_scene(rng, prof.image_size, max_objects=prof.max_objects, **left_kw)
                right = sample_scene(rng, prof.image_size, max_objects=prof.max_objects, **right_kw)
                if stmt.truth(left, right) == label:
                    pairs.append((left, right, label))
                    break
            else:
                break  # this statement is too hard to make true/false: draw another one
        if len(pairs) == len(labels):
            return stmt, pairs


def _build_nlvr2(root: Path, prof: WorldProfile, seed: int) -> _Part:
    rng = _rng(seed, "nlvr2")
    base = root / "nlvr2"
    records: dict[str, list[dict]] = {}
    data_files = {}
    texts = []
    for split, num_sets in zip(("train", "dev", "test1"), prof.nlvr2_sets):
        rows, records[split] = [], []
        for set_id in range(num_sets):
            stmt, pairs = _nlvr2_set(rng, prof)
            texts.append(stmt.sentence)
            directory = set_id % 100
            for pair_id, (left, right, label) in enumerate(pairs):
                identifier = f"{split}-{set_id}-{pair_id}-0"
                folder = base / "images" / "train" / str(directory) if split == "train" else base / split
                # Official rule: "-".join(identifier.split("-")[:-1]) + "-img0.png".
                prefix = "-".join(identifier.split("-")[:-1])
                writers.save_image(render(left), folder / f"{prefix}-img0.png")
                writers.save_image(render(right), folder / f"{prefix}-img1.png")
                row = {"sentence": stmt.sentence, "label": "True" if label else "False", "identifier": identifier}
                if split == "train":
                    row["directory"] = directory
                rows.append(row)
                records[split].append({"label": label, "template": stmt.template, "sentence": stmt.sentence})
        path = base / "data" / f"{split}.json"
        writers.write_jsonl(rows, path)
        data_files[split] = path.relative_to(root).as_posix()
    return _Part(
        entry={"format": "nlvr2", "root": "nlvr2", "repo": ".", "data": data_files,
               "images": {"train": "nlvr2/images/train", "dev": "nlvr2/dev", "test1": "nlvr2/test1"}},
        counts={"pairs": {s: len(r) for s, r in records.items()},
                "sentences": dict(zip(("train", "dev", "test1"), prof.nlvr2_sets))},
        baselines=label_prior_baselines(records["train"], records["dev"], keys=("template", "sentence")),
        texts=texts,
    )


# --- ImageNet-style classification and the image-only set --------------------------------------------
def _classes() -> list[tuple[str, str, str]]:
    """(wnid-like id, shape, colour) of every class; sorted ids give the class index order."""
    combos = [(shape, color) for shape in SHAPES for color in COLORS]
    return [(f"n{90_000_000 + i:08d}", shape, color) for i, (shape, color) in enumerate(combos)]


def _build_imagenet(root: Path, prof: WorldProfile, seed: int) -> _Part:
    rng = _rng(seed, "imagenet")
    classes = _classes()
    labels: dict[str, list[int]] = {"train": [], "val": []}
    val_counter = 0
    for split, per_class in zip(("train", "val"), prof.imagenet_per_class):
        for label, (wnid, shape, color) in enumerate(classes):
            for k in range(per_class):
                distractors = []
                for _ in range(int(rng.integers(0, 3))):
                    while True:
                        s, c = SHAPES[int(rng.integers(len(SHAPES)))], list(COLORS)[int(rng.integers(len(COLORS)))]
                        if (s, c) != (shape, color):
                            break
                    distractors.append((s, c, "small"))
                specs = [(shape, color, "large")] + distractors
                scene = sample_scene(rng, prof.image_size, num_objects=len(specs), specs=specs)
                if split == "train":
                    name = f"{wnid}_{k}.png"
                else:
                    val_counter += 1
                    name = f"ILSVRC2012_val_{val_counter:08d}.png"
                writers.save_image(render(scene), root / "imagenet" / split / wnid / name)
                labels[split].append(label)
    classnames = {wnid: f"{color} {shape}" for wnid, shape, color in classes}
    writers.write_json(classnames, root / "imagenet" / "classnames.json")
    return _Part(
        entry={"format": "imagefolder", "root": "imagenet", "train": "imagenet/train", "val": "imagenet/val",
               "classnames": "imagenet/classnames.json", "num_classes": len(classes)},
        counts={"images": {s: len(v) for s, v in labels.items()}, "classes": len(classes)},
        baselines={"majority": majority_accuracy(labels["train"], labels["val"])},
        texts=list(classnames.values()),
    )


def _build_in21k(root: Path, prof: WorldProfile, seed: int) -> _Part:
    rng = _rng(seed, "in21k")
    wnid_of = {(shape, color): wnid for wnid, shape, color in _classes()}
    for k in range(prof.in21k_images):
        scene = sample_scene(rng, prof.image_size, max_objects=prof.max_objects)
        largest = max(scene.objects, key=lambda o: o.h)
        wnid = wnid_of[(largest.shape, largest.color)]
        writers.save_image(render(scene), root / "in21k" / "train" / wnid / f"{wnid}_{k:06d}.jpg")
    return _Part(
        entry={"format": "imagefolder", "root": "in21k/train", "labels": "largest object (unused for pretraining)"},
        counts={"images": prof.in21k_images},
    )


# --- COCO instances (detection / instance segmentation) ----------------------------------------------
def _build_instances(root: Path, prof: WorldProfile, seed: int) -> _Part:
    rng = _rng(seed, "instances")
    size = prof.dense_image_size
    categories = [{"supercategory": "shape", "id": i + 1, "name": s} for i, s in enumerate(SHAPES)]
    ids = _unique_ids(rng, sum(prof.instances_splits))
    ann_id, files, counts = 1, {}, {}
    offset = 0
    for split, n in zip(("train2017", "val2017"), prof.instances_splits):
        images, annotations = [], []
        for image_id in ids[offset: offset + n]:
            scene = sample_scene(rng, size, max_objects=prof.dense_max_objects, scale=_DENSE_SCALE)
            file_name = f"{image_id:012d}.jpg"
            writers.save_image(render(scene), root / "coco" / split / file_name)
            images.append({"license": 1, "file_name": file_name, "coco_url": "", "height": size, "width": size,
                           "date_captured": "", "flickr_url": "", "id": image_id})
            for obj in scene.objects:
                area = float(object_mask(obj, size).sum())
                annotations.append({"segmentation": [polygon(obj)], "area": area, "iscrowd": 0, "image_id": image_id,
                                    "bbox": bbox(obj), "category_id": SHAPES.index(obj.shape) + 1, "id": ann_id})
                ann_id += 1
        offset += n
        path = root / "coco" / "annotations" / f"instances_{split}.json"
        writers.write_json(writers.coco_instances_json(images, annotations, categories), path)
        files[split] = path.relative_to(root).as_posix()
        counts[split] = {"images": len(images), "annotations": len(annotations)}
    return _Part(
        entry={"format": "coco", "root": "coco", "annotations": files,
               "images": {"train2017": "coco/train2017", "val2017": "coco/val2017"}, "classes": list(SHAPES)},
        counts=counts,
    )


# --- ADE20K-style semantic segmentation --------------------------------------------------------------
def _build_ade(root: Path, prof: WorldProfile, seed: int) -> _Part:
    rng = _rng(seed, "ade")
    size = prof.dense_image_size
    num_classes = len(SEG_CLASSES)
    train_hist = np.zeros(num_classes + 1, dtype=np.int64)
    val_labels = []
    for split, prefix, n in zip(("training", "validation"), ("ADE_train", "ADE_val"), prof.ade_splits):
        for k in range(1, n + 1):
            scene = sample_scene(rng, size, max_objects=prof.dense_max_objects, scale=_DENSE_SCALE)
            label = render_labels(scene)
            writers.save_image(render(scene), root / "ade" / "images" / split / f"{prefix}_{k:08d}.jpg")
            writers.save_image(label, root / "ade" / "annotations" / split / f"{prefix}_{k:08d}.png")
            array = np.asarray(label)
            if split == "training":
                train_hist += np.bincount(array.ravel(), minlength=num_classes + 1)
            else:
                val_labels.append(array)
    writers.write_json(list(SEG_CLASSES), root / "ade" / "classes.json")
    return _Part(
        entry={"format": "ade20k", "root": "ade",
               "images": {"training": "ade/images/training", "validation": "ade/images/validation"},
               "annotations": {"training": "ade/annotations/training", "validation": "ade/annotations/validation"},
               "classes_file": "ade/classes.json", "classes": list(SEG_CLASSES), "reduce_zero_label": True},
        counts={"images": dict(zip(("training", "validation"), prof.ade_splits)), "classes": num_classes},
        baselines=segmentation_prior(train_hist, val_labels, num_classes),
    )


# --- SentencePiece model ------------------------------------------------------------------------------
def _strip_model_prefix(model: Path, prefix: str) -> None:
    """SentencePiece stores the (temporary, absolute) ``model_prefix`` inside the ``.model`` file;
    replace it by the world-relative ``prefix`` so that the file depends only on the seed."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.read_bytes())
    proto.trainer_spec.model_prefix = prefix
    model.write_bytes(proto.SerializeToString(deterministic=True))


def _build_spm(root: Path, prof: WorldProfile, seed: int, texts: list[str]) -> _Part:
    from backbones.tokenizers.text import TextTokenizer, train_sentencepiece

    # A soft limit: a small world may not support spm_vocab_size pieces; the manifest records the real size.
    model = train_sentencepiece(texts, root / "spm" / "world", prof.spm_vocab_size, seed=seed, hard_vocab_limit=False)
    _strip_model_prefix(model, "spm/world")
    tokenizer = TextTokenizer(model)
    return _Part(
        entry={"format": "sentencepiece", "model": "spm/world.model", "vocab": "spm/world.vocab"},
        counts={"pieces": tokenizer.spm_size, "vocab_size": tokenizer.vocab_size, "training_lines": len(texts)},
    )


# --- manifest, README, atomic publication ------------------------------------------------------------
def _collect_paths(entry, out: set[str]) -> None:
    skip = {"format", "url", "members", "classes", "labels", "repo"}
    if isinstance(entry, dict):
        for key, value in entry.items():
            if key not in skip:
                _collect_paths(value, out)
    elif isinstance(entry, list):
        for value in entry:
            _collect_paths(value, out)
    elif isinstance(entry, str):
        out.add(entry)


def _readme(manifest: dict) -> str:
    lines = [
        f"# {WORLD_NAME} (profile `{manifest['profile']}`, seed {manifest['seed']}, version {manifest['version']})",
        "",
        "Procedurally generated shapes on varied backgrounds, written in the real data-set formats. Generated by",
        "`harness.world.build_world`; do not edit by hand (rebuild instead). `world.json` is the manifest.",
        "",
        "## Data sets",
        "",
        "| data set | format | paths |",
        "|---|---|---|",
    ]
    for name, entry in manifest["datasets"].items():
        paths = set()
        _collect_paths(entry, paths)
        lines.append(f"| {name} | {entry['format']} | {', '.join(f'`{p}`' for p in sorted(paths))} |")
    lines += [
        "",
        "## Reading it with the official / library loaders",
        "",
        "- BEiT-3 `datasets.py`: retrieval and captioning `data_path=coco` (Karpathy `dataset_coco.json`);",
        "  Flickr30K `data_path=flickr30k, karpathy_path=flickr30k`; VQAv2 `data_path=coco,",
        "  annotation_data_path=coco/vqa`; NLVR2 `data_path=nlvr2, nlvr_repo_path=.` (this directory);",
        "  ImageNet `train_data_path=imagenet/train, val_data_path=imagenet/val`.",
        "- mmdet `CocoDataset(data_root='coco', ann_file='annotations/instances_train2017.json',",
        "  data_prefix=dict(img='train2017/'), metainfo=dict(classes=('circle', 'square', 'triangle')))`.",
        "- mmseg: `BaseSegDataset(data_root='ade', img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True,",
        "  metainfo=dict(classes=<ade/classes.json>))`; `ADE20KDataset` itself rejects class names outside its",
        "  150 (with its default metainfo it reads the files, but names labels 1..6 'wall', 'building', ...).",
        "- WebDataset: `webdataset.WebDataset(<pairs url>).decode('pil').to_tuple('png', 'txt')`.",
        "- Text: `spm/world.model` is an XLM-R-layout SentencePiece model (`backbones.tokenizers.TextTokenizer`).",
    ]
    lines += ["", "## Counts", ""]
    for name, counts in manifest["counts"].items():
        lines.append(f"- **{name}**: `{json.dumps(counts)}`")
    lines += ["", "## Prior-only baselines (image-blind, measured on val / dev)", "",
              "A model that uses the images must beat these.", "", "| task | baseline | value |", "|---|---|---|"]
    for task, values in manifest["baselines"].items():
        for key, value in values.items():
            lines.append(f"| {task} | {key} | {json.dumps(value)} |")
    lines += ["", "## Vocabulary", "", f"`{json.dumps(manifest['vocabulary'])}`", ""]
    return "\n".join(lines)


def _build_into(root: Path, prof: WorldProfile, seed: int) -> dict:
    coco, vqa = _build_coco_and_vqa(root, prof, seed)
    parts = {
        "image_only": _build_in21k(root, prof, seed),
        "text": _build_text(root, prof, seed),
        "pairs": _build_pairs(root, prof, seed),
        "coco_karpathy": coco,
        "flickr30k": _build_flickr30k(root, prof, seed),
        "vqav2": vqa,
        "nlvr2": _build_nlvr2(root, prof, seed),
        "imagenet": _build_imagenet(root, prof, seed),
        "coco_instances": _build_instances(root, prof, seed),
        "ade20k": _build_ade(root, prof, seed),
    }
    # Distinct lines in first-seen order: questions and class names repeat a lot.
    texts = list(dict.fromkeys(t for part in parts.values() for t in part.texts))
    parts["spm"] = _build_spm(root, prof, seed, texts)
    paths: set[str] = set()
    for part in parts.values():
        _collect_paths(part.entry, paths)
    manifest = {
        "name": WORLD_NAME,
        "version": VERSION,
        "profile": prof.name,
        "seed": seed,
        "config": prof.to_dict(),
        "datasets": {name: part.entry for name, part in parts.items()},
        "counts": {name: part.counts for name, part in parts.items()},
        "baselines": {name: part.baselines for name, part in parts.items() if part.baselines},
        "vocabulary": VOCABULARY,
        "paths": sorted(paths),
    }
    (root / "README.md").write_text(_readme(manifest), encoding="utf-8")
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def load_manifest(world_dir: str | Path) -> dict:
    """The manifest of a built world; ``FileNotFoundError`` if the directory holds none."""
    path = Path(world_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {world_dir} is not a built world (run build_world)")
    return json.loads(path.read_text(encoding="utf-8"))


def _is_complete(world_dir: Path, profile: str, seed: int) -> bool:
    try:
        manifest = load_manifest(world_dir)
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if (manifest.get("version"), manifest.get("profile"), manifest.get("seed")) != (VERSION, profile, seed):
        return False
    return all((world_dir / p).exists() for p in manifest.get("paths", []))


def _publish(tmp: Path, out: Path, replace: bool) -> None:
    """Move the finished world ``tmp`` to ``out``; an existing world there is replaced only if
    ``replace`` (the old one is renamed aside first, then deleted)."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if out.exists() and replace:
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        try:
            os.rename(tmp, out)
        except OSError:
            os.replace(old / out.name, out)  # put the previous world back
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def _build(out: Path, prof: WorldProfile, seed: int, replace: bool) -> dict:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; choose another output directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise FileExistsError(f"{out} is not empty and holds no {MANIFEST_NAME}: refusing to replace it; "
                              "choose a new or empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        manifest = _build_into(tmp, prof, seed)
        _publish(tmp, out, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def build_world(out_dir: str | Path, profile: str = "smoke", seed: int = 0) -> dict:
    """Write the benchmark world to ``out_dir`` and return its manifest (also ``out_dir/world.json``).

    The world is built in a temporary directory beside ``out_dir`` and renamed into place when
    complete; a previous world in ``out_dir`` is replaced, any other non-empty directory is refused.

    Args:
        out_dir: destination directory (created).
        profile: one of :data:`PROFILES` (``"smoke"``: seconds, tests; ``"mini"``: learnable in minutes).
        seed: seed of every random stream; the same seed gives identical files.

    Raises:
        ValueError: unknown profile.
        FileExistsError: ``out_dir`` is a file, or a non-empty directory that is not a world.
    """
    prof = get_profile(profile)
    return _build(Path(out_dir).absolute(), prof, int(seed), replace=True)


def world_dir_name(profile: str, seed: int = 0) -> str:
    """Directory name of a world under a data root: ``{profile}-seed{seed}-v{VERSION}``."""
    return f"{profile}-seed{seed}-v{VERSION}"


def ensure_world(profile: str = "smoke", root: str | Path | None = None, seed: int = 0) -> Path:
    """Path of the world ``{root}/{profile}-seed{seed}-v{VERSION}``, building it first if it is missing
    or incomplete (its manifest does not match or a listed path is missing).

    Args:
        profile: one of :data:`PROFILES`.
        root: directory holding worlds; default ``$BEIT3_DATA_ROOT`` if set, else ``./data/world``.
        seed: world seed.
    """
    prof = get_profile(profile)
    if root is None:
        root = os.environ.get("BEIT3_DATA_ROOT") or Path("data") / "world"
    world = Path(root).absolute() / world_dir_name(prof.name, seed)
    if _is_complete(world, prof.name, seed):
        return world
    from harness.locks import exclusive

    with exclusive(world, f"world {world.name}"):  # one builder; the others wait, then find it complete
        if _is_complete(world, prof.name, seed):
            return world
        _build(world, prof, seed, replace=(world / MANIFEST_NAME).is_file())
    return world

