"""Readers of the downstream data-set formats, on tiny fixtures written in the real formats."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.data.imagenet import ImageNetFolder, ImageNetIndex, write_index
from tasks.data.images import DataError, decode_image, load_image
from tasks.data.karpathy import KarpathyCaptions, gt_captions
from tasks.data.nlvr2 import NLVR2
from tasks.data.vqa import (
    VQAv2,
    answer_score,
    build_answer_vocab,
    read_answer_vocab,
    rest_val_split,
    write_answer_vocab,
)


def write_image(path, value=100, size=(8, 6), mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, value // 2, 255 - value)).save(path)
    return path


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)
    return path


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------------------- images


def test_load_image_converts_to_rgb(tmp_path):
    path = write_image(str(tmp_path / "g.png"), value=7, mode="L")
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (8, 6) and image.getpixel((0, 0)) == (7, 7, 7)


def test_load_image_missing_names_file_and_record(tmp_path):
    with pytest.raises(DataError, match=r"not found: .*nope\.jpg \(record 'question 7'\)"):
        load_image(tmp_path / "nope.jpg", record="question 7")


def test_load_image_corrupt_and_truncated(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(DataError, match=r"cannot decode image .*bad\.jpg"):
        load_image(bad)
    full = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:600])
    with pytest.raises(DataError, match=r"cut\.jpg"):
        load_image(cut)
    with pytest.raises(DataError, match=r"shard\.tar:k1"):
        decode_image(b"\x89PNG broken", "shard.tar:k1")


# --------------------------------------------------------------------------------------- Karpathy


def _coco_record(split, cocoid, captions, folder="val2014"):
    name = f"COCO_{folder}_{cocoid:012d}.jpg"
    return {"filepath": folder, "filename": name, "split": split, "cocoid": cocoid, "imgid": cocoid,
            "sentids": list(range(len(captions))),
            "sentences": [{"raw": c, "tokens": c.lower().split(), "imgid": cocoid, "sentid": i}
                          for i, c in enumerate(captions)]}


@pytest.fixture()
def coco(tmp_path):
    records = [
        _coco_record("test", 1, ["A dog.", "A brown dog."]),
        _coco_record("train", 2, ["Two cats.", "Cats on a mat."], folder="train2014"),
        _coco_record("restval", 3, ["A bus."]),
        _coco_record("val", 4, ["A tree.", "Green tree."]),
        _coco_record("test", 5, ["A boat."]),
    ]
    for rec in records:
        write_image(str(tmp_path / "images" / rec["filepath"] / rec["filename"]), value=rec["cocoid"] * 10)
    path = write_json(str(tmp_path / "dataset_coco.json"), {"dataset": "coco", "images": records})
    return path, str(tmp_path / "images"), records


def test_karpathy_retrieval_rows_and_running_image_ids(coco):
    path, root, _ = coco
    train = KarpathyCaptions(path, root, "train", tokenizer=str.split)
    assert [(r["text"], r["image_id"]) for r in train.rows] == [("Two cats.", 0), ("Cats on a mat.", 0), ("A bus.", 1)]
    assert train.num_images == 2  # train + restval
    item = train[2]
    assert item["image_path"] == "val2014/COCO_val2014_000000000003.jpg"
    assert item["image"].mode == "RGB"
    assert np.allclose(item["image"].getpixel((0, 0)), (30, 15, 225), atol=2)  # the record's own image (JPEG)
    assert item["tokens"] == ["A", "bus."] and item["image_id"] == 1
    test = KarpathyCaptions(path, root, "test", transform=lambda im: torch.zeros(3, 2, 2))
    assert [r["image_id"] for r in test.rows] == [0, 0, 1]
    assert test[0]["image"].shape == (3, 2, 2)


def test_karpathy_captioning_rows(coco):
    path, root, _ = coco
    train = KarpathyCaptions(path, root, "train", task="captioning")
    assert [(r["text"], r["image_id"]) for r in train.rows] == [("Two cats.", 2), ("Cats on a mat.", 2), ("A bus.", 3)]
    test = KarpathyCaptions(path, root, "test", task="captioning", tokenizer=str.split)
    assert [(r["text"], r["image_id"]) for r in test.rows] == [(None, 1), (None, 5)]
    item = test[1]
    assert item["text"] is None and "tokens" not in item and item["image_id"] == 5
    assert test.gt_captions() == {1: ["A dog.", "A brown dog."], 5: ["A boat."]}
    assert gt_captions(path, "val") == {4: ["A tree.", "Green tree."]}


def test_karpathy_flickr_paths_and_ids(tmp_path):
    records = [{"filename": f"{i}.jpg", "imgid": i, "split": s, "sentids": [i], "sentences": [{"raw": f"cap {i}"}]}
               for i, s in enumerate(["train", "test", "test"])]
    path = write_json(str(tmp_path / "dataset_flickr30k.json"), {"dataset": "flickr30k", "images": records})
    for rec in records:
        write_image(str(tmp_path / "flickr30k-images" / rec["filename"]))
    test = KarpathyCaptions(path, str(tmp_path), "test", check_images=True)
    assert [(r["image_path"], r["image_id"]) for r in test.rows] == [("flickr30k-images/1.jpg", 0), ("flickr30k-images/2.jpg", 1)]
    assert test.gt_captions() == {1: ["cap 1"], 2: ["cap 2"]}


def test_karpathy_bad_records_name_file_and_index(coco, tmp_path):
    path, root, records = coco
    del records[3]["sentences"]
    bad = write_json(str(tmp_path / "bad.json"), {"images": records})
    with pytest.raises(DataError, match=r"bad\.json: images\[3\] has no key 'sentences'"):
        KarpathyCaptions(bad, root, "val")
    with pytest.raises(DataError, match=r"no usable images"):
        KarpathyCaptions(bad, root, "val", skip_bad=True)
    KarpathyCaptions(bad, root, "train")  # other splits' records are not this split's problem
    with pytest.raises(DataError, match="no 'images' list"):
        KarpathyCaptions(write_json(str(tmp_path / "x.json"), {"annotations": []}), root, "test")
    with pytest.raises(ValueError, match="unknown split"):
        KarpathyCaptions(path, root, "restval")


def test_karpathy_missing_and_corrupt_images(coco):
    path, root, records = coco
    os.remove(os.path.join(root, records[0]["filepath"], records[0]["filename"]))
    with pytest.raises(DataError, match=r"images\[0\] points to a missing image .*000000000001\.jpg"):
        KarpathyCaptions(path, root, "test", check_images=True)
    skipped = KarpathyCaptions(path, root, "test", check_images=True, skip_bad=True)
    assert skipped.num_skipped == 1 and [r["image_id"] for r in skipped.rows] == [0]  # ids stay contiguous
    lazy = KarpathyCaptions(path, root, "test")
    with pytest.raises(DataError, match=r"not found: .*000000000001\.jpg \(record .*images\[0\]"):
        lazy[0]
    with open(os.path.join(root, "val2014", records[4]["filename"]), "wb") as f:
        f.write(b"garbage")
    with pytest.raises(DataError, match=r"cannot decode image .*000000000005\.jpg \(record .*images\[4\]"):
        lazy[2]


# ------------------------------------------------------------------------------------------ VQAv2


def _answers(*pairs):
    out = []
    for answer, n in pairs:
        out += [answer] * n
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(out)]


@pytest.fixture()
def vqa(tmp_path):
    questions = [
        {"image_id": 42, "question": "Is it a dog?", "question_id": 42000},
        {"image_id": 42, "question": "How many legs?", "question_id": 42001},
        {"image_id": 7, "question": "What color?", "question_id": 7000},
    ]
    annotations = [
        {"question_id": 42000, "image_id": 42, "question_type": "is it", "answer_type": "yes/no",
         "multiple_choice_answer": "yes", "answers": _answers(("Yes", 4), ("yes", 3), ("no", 3))},
        {"question_id": 42001, "image_id": 42, "question_type": "how many", "answer_type": "number",
         "multiple_choice_answer": "four", "answers": _answers(("4", 2), ("four", 1), ("3", 7))},
        {"question_id": 7000, "image_id": 7, "question_type": "what color", "answer_type": "other",
         "multiple_choice_answer": "teal", "answers": _answers(("teal", 1), ("cyan", 9))},
    ]
    q = write_json(str(tmp_path / "v2_OpenEnded_mscoco_train2014_questions.json"),
                   {"data_subtype": "train2014", "questions": questions})
    a = write_json(str(tmp_path / "v2_mscoco_train2014_annotations.json"),
                   {"data_subtype": "train2014", "annotations": annotations})
    for image_id in (42, 7):
        write_image(str(tmp_path / "train2014" / f"COCO_train2014_{image_id:012d}.jpg"), value=image_id)
    return q, a, str(tmp_path)


def test_answer_vocab_counts_normalised_answers_in_first_seen_order(vqa, tmp_path):
    _, ann, _ = vqa
    extra = write_json(str(tmp_path / "val_ann.json"), {"annotations": [
        {"question_id": 1, "image_id": 1, "multiple_choice_answer": m, "answers": []}
        for m in ["Yes.", "4", "teal", "the teal"]]})
    assert build_answer_vocab([ann, extra], min_count=2) == ["yes", "4", "teal"]  # "four" -> "4"
    assert build_answer_vocab([ann, extra], min_count=1) == ["yes", "4", "teal"]
    with pytest.raises(DataError, match="no answer occurs 9 times"):
        build_answer_vocab([ann])
    vocab_file = str(tmp_path / "answer2label.txt")
    write_answer_vocab(["yes", "4"], vocab_file)
    assert read_answer_vocab(vocab_file) == ["yes", "4"]
    assert [answer_score(n) for n in range(6)] == [0.0, 0.3, 0.6, 0.9, 1.0, 1.0]


def test_vqa_targets_fixed_and_official_quirk(vqa):
    q, a, root = vqa
    vocab = ["yes", "4", "teal", "no"]
    fixed = VQAv2(q, root, a, vocab, tokenizer=str.split)
    by_qid = {ex.question_id: ex for ex in fixed.examples}
    # fixed: "Yes" and "yes" are the same answer (7 -> 1.0); "four" counts as "4" (3 -> 0.9)
    assert dict(zip(by_qid[42000].labels, by_qid[42000].scores)) == {0: 1.0, 3: 0.9}
    assert dict(zip(by_qid[42001].labels, by_qid[42001].scores)) == {1: 0.9}
    official = VQAv2(q, root, a, vocab, quirks="official")
    by_qid = {ex.question_id: ex for ex in official.examples}
    # official: raw "Yes" never matches the normalised vocabulary; "four" is not "4"
    assert dict(zip(by_qid[42000].labels, by_qid[42000].scores)) == {0: 0.9, 3: 0.9}
    assert dict(zip(by_qid[42001].labels, by_qid[42001].scores)) == {1: 0.6}
    item = fixed[0]
    assert item["question_id"] == 42000 and item["image_id"] == 42 and item["tokens"] == ["Is", "it", "a", "dog?"]
    assert item["image_path"] == "train2014/COCO_train2014_000000000042.jpg" and item["image"].mode == "RGB"
    torch.testing.assert_close(item["target"], torch.tensor([1.0, 0.0, 0.0, 0.9]))
    assert fixed.gt_answers()[7000]["answer_type"] == "other"


def test_vqa_drops_and_counts_unlabeled_questions(vqa):
    q, a, root = vqa
    dataset = VQAv2(q, root, a, ["yes"])
    assert [ex.question_id for ex in dataset.examples] == [42000] and dataset.num_unlabeled == 2
    kept = VQAv2(q, root, a, ["yes"], drop_unlabeled=False)
    assert len(kept) == 3 and kept.num_unlabeled == 0
    assert torch.equal(kept[2]["target"], torch.zeros(1))
    no_vocab = VQAv2(q, root, a)
    assert len(no_vocab) == 3 and "target" not in no_vocab[0]


def test_vqa_test_dev_has_no_targets_and_uses_test2015_images(tmp_path):
    q = write_json(str(tmp_path / "q.json"), {"data_subtype": "test-dev2015",
                                              "questions": [{"image_id": 9, "question": "Why?", "question_id": 9001}]})
    write_image(str(tmp_path / "test2015" / "COCO_test2015_000000000009.jpg"))
    dataset = VQAv2(q, str(tmp_path), answer_vocab=["yes"], check_images=True)
    item = dataset[0]
    assert item["image_path"] == "test2015/COCO_test2015_000000000009.jpg"
    assert item["question_id"] == 9001 and "target" not in item
    no_subtype = write_json(str(tmp_path / "questions.json"), {"questions": [{"image_id": 9, "question": "?", "question_id": 1}]})
    with pytest.raises(DataError, match="pass image_subdir"):
        VQAv2(no_subtype, str(tmp_path))
    assert VQAv2(no_subtype, str(tmp_path), image_subdir="test2015")[0]["image_id"] == 9


def test_vqa_question_without_annotation(vqa, tmp_path):
    q, a, root = vqa
    with open(a) as f:
        data = json.load(f)
    data["annotations"] = data["annotations"][:2]
    partial = write_json(str(tmp_path / "partial_ann.json"), data)
    with pytest.raises(DataError, match=r"partial_ann\.json has no annotation for question_id 7000"):
        VQAv2(q, root, partial)
    skipped = VQAv2(q, root, partial, skip_bad=True)
    assert len(skipped) == 2 and skipped.num_skipped == 1


def test_vqa_annotation_without_question_and_bad_records(vqa, tmp_path):
    q, a, root = vqa
    with open(a) as f:
        data = json.load(f)
    data["annotations"].append(dict(data["annotations"][0], question_id=99))
    extra = write_json(str(tmp_path / "extra_ann.json"), data)
    with pytest.raises(DataError, match=r"annotations\[3\] is for question_id 99, which is not in"):
        VQAv2(q, root, extra)
    bad_q = write_json(str(tmp_path / "bad_q.json"), {"data_subtype": "train2014", "questions": [{"image_id": 1}]})
    with pytest.raises(DataError, match=r"bad_q\.json: questions\[0\] has no str 'question'"):
        VQAv2(bad_q, root)
    with pytest.raises(DataError, match="not found"):
        VQAv2(str(tmp_path / "absent.json"), root)
    with pytest.raises(ValueError, match="unknown quirks"):
        VQAv2(q, root, quirks="vilt")


def test_vqa_missing_image(vqa):
    q, a, root = vqa
    os.remove(os.path.join(root, "train2014", "COCO_train2014_000000000007.jpg"))
    with pytest.raises(DataError, match=r"question_id 7000 points to a missing image"):
        VQAv2(q, root, a, check_images=True)
    assert VQAv2(q, root, a, check_images=True, skip_bad=True).num_skipped == 1
    lazy = VQAv2(q, root, a)
    with pytest.raises(DataError, match=r"COCO_train2014_000000000007\.jpg \(record 'question_id 7000'\)"):
        lazy[2]


def test_rest_val_split_is_seeded_and_disjoint(vqa):
    ids = list(range(100, 130)) * 2
    trainable, rest = rest_val_split(ids, num_rest=10, seed=0)
    assert len(rest) == 10 and len(trainable) == 20 and not set(rest) & set(trainable)
    assert set(rest) | set(trainable) == set(range(100, 130))
    assert rest_val_split(reversed(ids), num_rest=10, seed=0) == (trainable, rest)
    assert rest_val_split(ids, num_rest=10, seed=1)[1] != rest
    q, a, root = vqa
    assert [ex.image_id for ex in VQAv2(q, root, a, image_ids=[7]).examples] == [7]


# ------------------------------------------------------------------------------------------ NLVR2


def test_nlvr2_paths_labels_and_items(tmp_path):
    train = write_lines(str(tmp_path / "train.json"), [
        json.dumps({"identifier": "train-10171-0-0", "directory": 85, "sentence": "Two dogs.", "label": "True"}),
        "",
        json.dumps({"identifier": "train-3-1-2", "directory": 0, "sentence": "No dogs.", "label": "False"}),
    ])
    for name in ("train-10171-0-img0.png", "train-10171-0-img1.png"):
        write_image(str(tmp_path / "images" / "train" / "85" / name))
    dataset = NLVR2(train, str(tmp_path), "train", tokenizer=str.split, transform=lambda im: im.size)
    assert [(ex["image_path"], ex["label"]) for ex in dataset.examples] == [
        ("images/train/85/train-10171-0-img0.png", 1), ("images/train/0/train-3-1-img0.png", 0)]
    item = dataset[0]
    assert item["image2_path"] == "images/train/85/train-10171-0-img1.png"
    assert item["image"] == (8, 6) and item["image2"] == (8, 6)
    assert item["label"] == 1 and item["identifier"] == "train-10171-0-0" and item["tokens"] == ["Two", "dogs."]
    with pytest.raises(DataError, match=r"train-3-1-img0\.png \(record '.*train\.json:3 train-3-1-2'\)"):
        dataset[1]
    dev = write_lines(str(tmp_path / "dev.json"), [json.dumps({"identifier": "dev-5-2-1", "sentence": "s", "label": "False"})])
    assert NLVR2(dev, str(tmp_path), "dev").examples[0]["image2_path"] == "dev/dev-5-2-img1.png"
    test = write_lines(str(tmp_path / "test1.json"), [json.dumps({"identifier": "test1-5-2-1", "sentence": "s", "label": "True"})])
    assert NLVR2(test, str(tmp_path), "test1").examples[0]["image_path"] == "test1/test1-5-2-img0.png"


def test_nlvr2_bad_lines(tmp_path):
    good = json.dumps({"identifier": "dev-1-0-0", "sentence": "s", "label": "True"})
    path = write_lines(str(tmp_path / "dev.json"), [good, '{"identifier": "dev-2-0-0", "sent', good])
    with pytest.raises(DataError, match=r"dev\.json:2: malformed JSON line"):
        NLVR2(path, str(tmp_path), "dev")
    dataset = NLVR2(path, str(tmp_path), "dev", skip_bad=True)
    assert len(dataset) == 2 and dataset.num_skipped == 1
    bad_label = write_lines(str(tmp_path / "l.json"), [json.dumps({"identifier": "dev-1-0-0", "sentence": "s", "label": "yes"})])
    with pytest.raises(DataError, match=r"l\.json:1: label 'yes'"):
        NLVR2(bad_label, str(tmp_path), "dev")
    with pytest.raises(DataError, match=r"missing image .*dev-1-0-img0\.png"):
        NLVR2(path, str(tmp_path), "dev", check_images=True, skip_bad=False)
    with pytest.raises(DataError, match="no usable examples"):
        NLVR2(path, str(tmp_path), "dev", check_images=True, skip_bad=True)
    with pytest.raises(ValueError, match="unknown NLVR2 split"):
        NLVR2(path, str(tmp_path), "test")


# --------------------------------------------------------------------------------------- ImageNet


@pytest.fixture()
def imagenet(tmp_path):
    root = tmp_path / "imagenet"
    write_image(str(root / "train" / "n02" / "b.png"), value=2)
    write_image(str(root / "train" / "n01" / "a2.JPEG"), value=1)
    write_image(str(root / "train" / "n01" / "a1.jpg"), value=1)
    (root / "train" / "n01" / "notes.txt").write_text("not an image")
    write_image(str(root / "val" / "n02" / "c.JPEG"), value=3)
    return str(root)


def test_imagenet_folder_sorted_classes_and_train_indices_for_val(imagenet):
    train = ImageNetFolder(imagenet, "train")
    assert train.classes == ["n01", "n02"] and train.classnames is None
    assert train.index_rows() == [
        {"image_path": "train/n01/a1.jpg", "label": 0},
        {"image_path": "train/n01/a2.JPEG", "label": 0},
        {"image_path": "train/n02/b.png", "label": 1},
    ]
    val = ImageNetFolder(imagenet, "val", transform=lambda im: im.getpixel((0, 0)))
    assert val.index_rows() == [{"image_path": "val/n02/c.JPEG", "label": 1}]  # not 0
    assert val[0] == {"image": (3, 1, 252), "label": 1, "image_path": "val/n02/c.JPEG"}


def test_imagenet_index_roundtrip_and_classnames(imagenet, tmp_path):
    index = str(tmp_path / "imagenet.train.index.jsonl")
    write_index(ImageNetFolder(imagenet, "train").index_rows(), index)
    dataset = ImageNetIndex(index, imagenet)
    assert len(dataset) == 3 and dataset[2]["label"] == 1 and dataset[2]["image"].mode == "RGB"
    write_lines(os.path.join(imagenet, "classnames.txt"), ["n02 goldfish", "n01 tench, Tinca tinca"])
    assert ImageNetFolder(imagenet, "train").classnames == ["tench, Tinca tinca", "goldfish"]
    listed = write_json(str(tmp_path / "names.json"), ["tench", "goldfish"])
    assert ImageNetFolder(imagenet, "train", classnames=listed).classnames == ["tench", "goldfish"]
    keras = write_json(str(tmp_path / "k.json"), {"0": ["n01", "tench"], "1": ["n02", "goldfish"]})
    assert ImageNetFolder(imagenet, "train", classnames=keras).classnames == ["tench", "goldfish"]
    short = write_json(str(tmp_path / "short.json"), ["tench"])
    with pytest.raises(DataError, match="lists 1 class names, but there are 2"):
        ImageNetFolder(imagenet, "train", classnames=short)


def test_imagenet_errors(imagenet, tmp_path):
    os.makedirs(os.path.join(imagenet, "val", "n99"))
    with pytest.raises(DataError, match=r"class folders \['n99'\] that are not in"):
        ImageNetFolder(imagenet, "val")
    flat = tmp_path / "flat"
    write_image(str(flat / "val" / "ILSVRC2012_val_00000001.JPEG"))
    with pytest.raises(DataError, match="no class folders"):
        ImageNetFolder(str(flat), "val")
    with pytest.raises(DataError, match="split folder not found"):
        ImageNetFolder(imagenet, "test")
    bad_index = write_lines(str(tmp_path / "i.jsonl"), ['{"image_path": "x.jpg"}'])
    with pytest.raises(DataError, match=r"i\.jsonl:1"):
        ImageNetIndex(bad_index, imagenet)
