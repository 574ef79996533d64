"""The benchmark world: build, on-disk formats, determinism, atomicity and reuse (smoke profile)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import tarfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import harness.world as world
from harness.world import build as world_build
from harness.world import coco_karpathy, oracle, scenes, writers
from harness.world.language import caption_variants, captions
from harness.world.scenes import sample_scene

COLORS_RGB = np.array(list(scenes.COLORS.values()))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world") / "smoke"
    manifest = world.build_world(out, profile="smoke", seed=0)
    return out, manifest


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- manifest ---------------------------------------------------------------------------------------
def test_manifest_lists_every_dataset_and_existing_paths(smoke):
    root, manifest = smoke
    assert _json(root / "world.json") == manifest
    assert (manifest["profile"], manifest["seed"], manifest["version"]) == ("smoke", 0, world.VERSION)
    expected = {"image_only", "text", "pairs", "coco_karpathy", "flickr30k", "vqav2", "nlvr2", "imagenet",
                "coco_instances", "ade20k", "spm"}
    assert set(manifest["datasets"]) == expected
    assert set(manifest["counts"]) == expected
    assert manifest["paths"], "manifest lists no paths"
    missing = [p for p in manifest["paths"] if not (root / p).exists()]
    assert not missing, f"manifest paths missing on disk: {missing}"
    assert manifest["config"] == world.PROFILES["smoke"].to_dict()
    readme = (root / "README.md").read_text()
    assert "Prior-only baselines" in readme and "per_question_type" in readme
    assert not list(root.parent.glob(".smoke.tmp-*")), "temporary build directory left behind"


def test_unknown_profile_raises_listing_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown world profile 'huge'.*mini.*smoke"):
        world.build_world(tmp_path / "w", profile="huge")
    with pytest.raises(ValueError, match="smoke"):
        world.ensure_world("huge", root=tmp_path)
    assert not (tmp_path / "w").exists()


# --- image-text sets --------------------------------------------------------------------------------
def test_karpathy_coco_and_flickr(smoke):
    root, manifest = smoke
    data = _json(root / "coco" / "dataset_coco.json")
    assert data["dataset"] == "coco"
    images = data["images"]
    splits = Counter(img["split"] for img in images)
    train, restval, val, test = manifest["config"]["coco_splits"]
    assert splits == {"train": train, "restval": restval, "val": val, "test": test}
    sentids = [s["sentid"] for img in images for s in img["sentences"]]
    assert len(sentids) == len(set(sentids)) == manifest["counts"]["coco_karpathy"]["captions"]
    assert [img["imgid"] for img in images] == list(range(len(images)))
    for img in images:
        assert set(img) == {"filepath", "sentids", "filename", "imgid", "split", "sentences", "cocoid"}
        assert img["filepath"] == ("train2014" if img["split"] == "train" else "val2014")
        assert img["filename"] == f"COCO_{img['filepath']}_{img['cocoid']:012d}.jpg"
        assert (root / "coco" / img["filepath"] / img["filename"]).is_file()
        assert len(img["sentences"]) == 5 and len({s["raw"] for s in img["sentences"]}) == 5
        assert img["sentids"] == [s["sentid"] for s in img["sentences"]]
        for s in img["sentences"]:
            assert s["imgid"] == img["imgid"]
            assert s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"].lower())
    gt = _json(root / "coco" / "coco_karpathy_test_gt.json")
    assert {i["id"] for i in gt["images"]} == {img["cocoid"] for img in images if img["split"] == "test"}
    assert len(gt["annotations"]) == 5 * len(gt["images"])

    flickr = _json(root / "flickr30k" / "dataset_flickr30k.json")
    assert flickr["dataset"] == "flickr30k"
    for img in flickr["images"]:
        assert (root / "flickr30k" / "flickr30k-images" / img["filename"]).is_file()
        assert len(img["sentences"]) == 5


def test_vqa_questions_and_annotations(smoke):
    root, _ = smoke
    vqa = root / "coco" / "vqa"
    questions = {s: _json(vqa / f"v2_OpenEnded_mscoco_{s}_questions.json")
                 for s in ("train2014", "val2014", "test-dev2015", "test2015")}
    for subset, data in questions.items():
        assert data["data_subtype"] == subset and data["task_type"] == "Open-Ended"
        image_dir = "test2015" if subset.startswith("test") else subset
        for q in data["questions"]:
            assert (root / "coco" / image_dir / f"COCO_{image_dir}_{q['image_id']:012d}.jpg").is_file()
            assert q["question_id"] // 1000 == q["image_id"] and q["question"].endswith("?")
    test_ids = {q["question_id"] for q in questions["test2015"]["questions"]}
    test_dev_ids = {q["question_id"] for q in questions["test-dev2015"]["questions"]}
    assert test_dev_ids and test_dev_ids < test_ids
    for subset in ("train2014", "val2014"):
        annotations = _json(vqa / f"v2_mscoco_{subset}_annotations.json")["annotations"]
        by_id = {q["question_id"]: q for q in questions[subset]["questions"]}
        assert [a["question_id"] for a in annotations] == list(by_id), "annotations and questions out of step"
        for a in annotations:
            assert by_id[a["question_id"]]["image_id"] == a["image_id"]
            assert [x["answer_id"] for x in a["answers"]] == list(range(1, 11))
            assert all(x["answer_confidence"] in ("yes", "maybe", "no") for x in a["answers"])
            raw = Counter(x["answer"] for x in a["answers"])
            assert raw.most_common(1)[0][0] == a["multiple_choice_answer"] and raw[a["multiple_choice_answer"]] >= 5
            assert a["answer_type"] in ("yes/no", "number", "other")
            assert a["question_type"] and by_id[a["question_id"]]["question"].lower().startswith(a["question_type"])
            if a["answer_type"] == "number":
                assert a["multiple_choice_answer"].isdigit()
            if a["answer_type"] == "yes/no":
                assert a["multiple_choice_answer"] in ("yes", "no")
    # Normalisation matters: some annotators write case / punctuation variants of the answer.
    all_answers = [x["answer"] for s in ("train2014", "val2014")
                   for a in _json(vqa / f"v2_mscoco_{s}_annotations.json")["annotations"] for x in a["answers"]]
    assert any(x != x.lower() or x.endswith(".") for x in all_answers)


def test_webdataset_shards_hold_png_txt_pairs(smoke):
    root, manifest = smoke
    entry = manifest["datasets"]["pairs"]
    assert [Path(s).name for s in entry["shards"]] == ["pairs-000000.tar", "pairs-000001.tar"]
    total = 0
    for shard in entry["shards"]:
        with tarfile.open(root / shard) as tar:
            names = tar.getnames()
            keys = sorted({n.rsplit(".", 1)[0] for n in names})
            assert sorted(names) == sorted([f"{k}.png" for k in keys] + [f"{k}.txt" for k in keys])
            for k in keys:
                image = Image.open(io.BytesIO(tar.extractfile(f"{k}.png").read()))
                assert image.mode == "RGB" and image.size == (32, 32)
                assert tar.extractfile(f"{k}.txt").read().decode("utf-8").strip()
            total += len(keys)
    assert total == manifest["counts"]["pairs"]["pairs"]


def test_webdataset_library_reads_the_shards(smoke):
    wds = pytest.importorskip("webdataset")
    root, manifest = smoke
    urls = [str(root / s) for s in manifest["datasets"]["pairs"]["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("png", "txt"))
    assert len(samples) == manifest["counts"]["pairs"]["pairs"]
    assert all(isinstance(img, Image.Image) and isinstance(txt, str) for img, txt in samples)


def test_text_corpus_txt_and_jsonl_agree(smoke):
    root, manifest = smoke
    lines = (root / "text" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    docs = [row["text"] for row in _jsonl(root / "text" / "corpus.jsonl")]
    assert lines == docs and len(docs) == manifest["counts"]["text"]["documents"]
    words = Counter(w for d in docs for w in re.findall(r"[a-z]+", d.lower()))
    assert len(words) > 100, "corpus vocabulary too small for a non-trivial MLM"
    assert {"circle", "square", "triangle"} <= set(words)


def test_nlvr2_jsonl_and_official_image_paths(smoke):
    root, _ = smoke
    for split, prefix in (("train", "images/train"), ("dev", "dev"), ("test1", "test1")):
        rows = _jsonl(root / "nlvr2" / "data" / f"{split}.json")
        assert rows
        by_sentence: dict[str, list[str]] = {}
        for row in rows:
            assert row["label"] in ("True", "False")
            assert re.fullmatch(rf"{split}-\d+-\d+-\d+", row["identifier"])
            assert ("directory" in row) == (split == "train")
            # The official index rule (BEiT-3 datasets.py, NLVR2Dataset).
            path = Path(prefix) / str(row["directory"]) if "directory" in row else Path(prefix)
            path = path / "-".join(row["identifier"].split("-")[:-1])
            for suffix in ("-img0.png", "-img1.png"):
                assert (root / "nlvr2" / f"{path}{suffix}").is_file(), f"{split}: missing {path}{suffix}"
            set_key = "-".join(row["identifier"].split("-")[:2])
            by_sentence.setdefault(set_key, []).append(row["label"])
        for labels in by_sentence.values():
            assert len(labels) >= 2 and labels.count("True") == labels.count("False")


# --- vision sets ------------------------------------------------------------------------------------
def test_imagenet_class_folders(smoke):
    root, manifest = smoke
    classnames = _json(root / "imagenet" / "classnames.json")
    assert list(classnames) == sorted(classnames) and len(classnames) == manifest["counts"]["imagenet"]["classes"]
    per_train, per_val = manifest["config"]["imagenet_per_class"]
    for split, per_class in (("train", per_train), ("val", per_val)):
        folders = sorted(p.name for p in (root / "imagenet" / split).iterdir())
        assert folders == list(classnames)
        for wnid in folders:
            files = list((root / "imagenet" / split / wnid).glob("*.png"))
            assert len(files) == per_class
    color, shape = next(iter(classnames.values())).split()
    assert color in scenes.COLORS and shape in scenes.SHAPES
    image_only = list((root / manifest["datasets"]["image_only"]["root"]).rglob("*.jpg"))
    assert len(image_only) == manifest["counts"]["image_only"]["images"]


def test_coco_instances_load_with_pycocotools_and_match_pixels(smoke):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    root, manifest = smoke
    for split in ("train2017", "val2017"):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(root / "coco" / "annotations" / f"instances_{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["circle", "square", "triangle"]
        assert coco.getAnnIds(), f"{split}: no annotations"
        for ann in coco.loadAnns(coco.getAnnIds()):
            img = coco.imgs[ann["image_id"]]
            image = np.asarray(Image.open(root / "coco" / split / img["file_name"]).convert("RGB"))
            assert image.shape[:2] == (img["height"], img["width"])
            mask = coco.annToMask(ann).astype(bool)
            assert ann["iscrowd"] == 0 and ann["area"] == mask.sum() > 0
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(mask)
            assert x - 1 <= xs.min() and xs.max() <= x + w + 1 and y - 1 <= ys.min() and ys.max() <= y + h + 1
            # The mask covers pixels of one saturated shape colour (JPEG-tolerant).
            colour = np.median(image[mask], axis=0)
            assert np.abs(COLORS_RGB - colour).sum(axis=1).min() < 40


def test_ade_label_maps(smoke):
    root, manifest = smoke
    num_classes = manifest["counts"]["ade20k"]["classes"]
    assert _json(root / "ade" / "classes.json") == manifest["datasets"]["ade20k"]["classes"]
    for split in ("training", "validation"):
        images = sorted((root / "ade" / "images" / split).glob("*.jpg"))
        labels = sorted((root / "ade" / "annotations" / split).glob("*.png"))
        assert [p.stem for p in images] == [p.stem for p in labels] and images
        seen = set()
        for image_path, label_path in zip(images, labels):
            label = Image.open(label_path)
            assert label.mode == "L" and label.size == Image.open(image_path).size
            values = np.unique(np.asarray(label))
            assert values.min() >= 0 and values.max() <= num_classes
            seen |= set(values.tolist())
        assert 0 in seen and seen & {4, 5, 6}, f"{split}: labels {seen} lack the ignore value or shapes"


def test_sentencepiece_model_covers_the_world_text(smoke):
    from backbones.tokenizers.text import TextTokenizer

    root, manifest = smoke
    tokenizer = TextTokenizer(root / "spm" / "world.model")
    assert tokenizer.spm_size == manifest["counts"]["spm"]["pieces"] <= world.PROFILES["smoke"].spm_vocab_size
    question = _json(root / "coco" / "vqa" / "v2_OpenEnded_mscoco_train2014_questions.json")["questions"][0]
    ids = tokenizer.encode(question["question"])
    assert ids and tokenizer.unk_id not in ids
    assert tokenizer.decode(ids) == question["question"]


# --- baselines --------------------------------------------------------------------------------------
def test_prior_baselines_are_recorded_and_near_chance(smoke):
    _, manifest = smoke
    baselines = manifest["baselines"]
    assert set(baselines["vqav2"]) == {"majority", "per_question_type", "per_family", "per_question"}
    assert baselines["vqav2"]["majority"] <= 0.35  # the tiny smoke split is noisy; see test_world_language
    for key, value in baselines["nlvr2"].items():
        assert value <= 0.6, f"NLVR2 {key} prior {value} is far above chance"
    classes = manifest["counts"]["imagenet"]["classes"]
    assert baselines["imagenet"]["majority"] <= 1.5 / classes
    n_test = manifest["config"]["coco_splits"][3]
    assert baselines["coco_karpathy"]["retrieval_chance_r1"]["test"] == round(1 / n_test, 4)
    assert 0.0 <= baselines["ade20k"]["mIoU"] <= 0.5


def test_the_manifest_lists_every_control_and_the_difficulty(smoke):
    root, manifest = smoke
    controls = manifest["controls"]
    assert {"image_shuffled", "text_only", "nlvr2_pairwise", "retrieval_oracle", "retrieval_chance",
            "no_pretraining"} <= set(controls)
    for name, control in controls.items():
        assert control["what"] and control["computed_by"] and set(control["datasets"]) <= set(manifest["datasets"]), name
    vocabulary = manifest["vocabulary"]
    prof = world.PROFILES["smoke"]
    assert vocabulary["shapes"] == list(prof.shapes) and vocabulary["question_families"] == list(prof.question_families)
    assert "| retrieval_oracle |" in (root / "README.md").read_text(encoding="utf-8")


# --- determinism, atomicity, reuse ------------------------------------------------------------------
def test_same_seed_gives_identical_files_via_cli(smoke, tmp_path, capsys):
    root, _ = smoke
    assert world.main(["--profile", "smoke", "--seed", "0", "--out", str(tmp_path / "again")]) == 0
    assert "built world profile=smoke" in capsys.readouterr().out
    first, second = _hashes(root), _hashes(tmp_path / "again")
    assert first.keys() == second.keys()
    differing = [p for p in first if first[p] != second[p]]
    assert not differing, f"files differ between two builds with the same seed: {differing[:5]}"


def test_world_content_changes_only_with_its_version(smoke):
    # The committed hashes of the smoke world (seed 0) of this VERSION: code changes that alter any byte
    # of it must bump world.VERSION (worlds are cached by version) and rewrite the hash file.
    root, _ = smoke
    golden = _json(Path(__file__).with_name("world_smoke_seed0_sha256.json"))
    assert golden["version"] == world.VERSION, (
        f"world.VERSION is {world.VERSION} but {Path(__file__).with_name('world_smoke_seed0_sha256.json').name} "
        f"holds version {golden['version']}: rewrite it from a fresh smoke build (seed 0)")
    built = _hashes(root)
    changed = sorted(p for p in golden["sha256"].keys() | built.keys() if golden["sha256"].get(p) != built.get(p))
    assert not changed, f"world version {world.VERSION} changed content without a VERSION bump: {changed[:5]}"


def test_different_seed_changes_the_world(tmp_path):
    # Only the cheap part is compared: the COCO stream of seed 1 versus seed 0.
    parts = [coco_karpathy.build(tmp_path / f"s{seed}", world.PROFILES["smoke"], seed) for seed in (0, 1)]
    assert parts[0][0].texts != parts[1][0].texts


def test_failed_build_leaves_no_partial_world(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(writers, "write_jsonl", broken)
    out = tmp_path / "w"
    with pytest.raises(RuntimeError, match="disk on fire"):
        world.build_world(out, profile="smoke")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "temporary directory left behind"

    # A previous world survives a failed rebuild untouched.
    out.mkdir()
    (out / "world.json").write_text('{"old": true}')
    with pytest.raises(RuntimeError):
        world.build_world(out, profile="smoke")
    assert _json(out / "world.json") == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]


def test_refuses_to_replace_a_directory_that_is_not_a_world(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("do not delete")
    with pytest.raises(FileExistsError, match="precious"):
        world.build_world(out, profile="smoke")
    assert (out / "thesis.tex").read_text() == "do not delete"


def test_ensure_world_reuses_a_complete_world_and_repairs_a_broken_one(smoke, tmp_path, monkeypatch):
    root, _ = smoke
    target = tmp_path / world.world_dir_name("smoke", 0)
    assert target.name == f"smoke-seed0-v{world.VERSION}"
    shutil.copytree(root, target)

    calls = []
    real_build = world_build._build
    monkeypatch.setattr(world_build, "_build", lambda *a, **k: calls.append(a) or real_build(*a, **k))
    assert world.ensure_world("smoke", root=tmp_path) == target.absolute()
    assert calls == [], "a complete world was rebuilt"

    (target / "coco" / "vqa" / "v2_mscoco_val2014_annotations.json").unlink()
    assert world.ensure_world("smoke", root=tmp_path) == target.absolute()
    assert len(calls) == 1
    assert (target / "coco" / "vqa" / "v2_mscoco_val2014_annotations.json").is_file()


def test_ensure_world_default_root_from_environment(tmp_path, monkeypatch, smoke):
    root, _ = smoke
    monkeypatch.setenv("BEIT3_DATA_ROOT", str(tmp_path))
    shutil.copytree(root, tmp_path / world.world_dir_name("smoke", 0))
    monkeypatch.setattr(world_build, "_build", lambda *a, **k: pytest.fail("complete world rebuilt"))
    assert world.ensure_world("smoke") == (tmp_path / world.world_dir_name("smoke", 0)).absolute()
    # A profile whose sizes or difficulty changed (same name, same version) does not reuse it.
    rebuilt = []
    monkeypatch.setattr(world_build, "_build", lambda *a, **k: rebuilt.append(a))
    monkeypatch.setitem(world.PROFILES, "smoke", replace(world.PROFILES["smoke"], shapes=("circle", "square")))
    world.ensure_world("smoke")
    assert len(rebuilt) == 1


def test_world_roots_are_parsed_in_one_place(tmp_path, monkeypatch, smoke):
    from tasks.data.world_root import MANIFEST_NAME, is_world_dir, world_profile

    root, _ = smoke
    assert world.MANIFEST_NAME == MANIFEST_NAME and is_world_dir(root) and not is_world_dir(tmp_path)
    assert world_profile("world:mini") == "mini" and world_profile("data/vqav2") is None and world_profile(None) is None
    with pytest.raises(ValueError, match="names no world profile.*world:mini"):
        world_profile("world:")
    target = tmp_path / world.world_dir_name("smoke", 0)
    shutil.copytree(root, target)
    monkeypatch.setenv("BEIT3_DATA_ROOT", str(tmp_path))
    assert world.resolve_world_root("world:smoke") == str(target)
    assert world.resolve_world_root("data/vqav2") == "data/vqav2"
    with pytest.raises(ValueError, match="world seed 'x' is not a non-negative integer"):
        world.resolve_world_root("world:smoke:x")


# --- retrieval oracle -------------------------------------------------------------------------------
def test_every_drawn_caption_is_one_of_the_scene_s_variants_and_few_fit_another_scene():
    rng = np.random.default_rng(5)
    scenes = [sample_scene(rng, 64, max_objects=4) for _ in range(200)]
    for scene in scenes:
        assert set(captions(scene, rng, 5)) <= caption_variants(scene)
    # a caption names the background and its objects: it is rarely true of an unrelated scene
    shared = np.mean([len(caption_variants(a) & caption_variants(b)) > 0 for a, b in zip(scenes, scenes[1:])])
    assert shared < 0.5


def test_the_oracle_regenerates_the_built_test_split_and_ranks_indistinguishable_images_at_random(smoke):
    root, _ = smoke
    coco = _json(root / "coco" / "dataset_coco.json")["images"]
    built = [[s["raw"] for s in img["sentences"]] for img in coco if img["split"] == "test"]
    drawn = [list(img.captions) for _, split, img in coco_karpathy.images(world.PROFILES["smoke"], 0) if split == "test"]
    assert drawn == built  # the oracle reads the captions the world wrote
    assert set(oracle.world_retrieval_oracle("coco", "smoke", 0)) == {
        f"{d}_r{k}" for d in ("tr", "ir") for k in (1, 5, 10)}

    twin = sample_scene(np.random.default_rng(1), 64, max_objects=4)
    other = next(s for s in (sample_scene(np.random.default_rng(i), 64, max_objects=4) for i in range(2, 50))
                 if not caption_variants(s) & caption_variants(twin))
    caps = sorted(caption_variants(twin))
    recalls = oracle.retrieval_oracle([(twin, caps[:5]), (twin, caps[5:10]), (other, sorted(caption_variants(other))[:5])])
    # a twin's caption fits both twins: R@1 one half; 'other' is found for sure
    assert recalls["ir_r1"] == pytest.approx(100 * (10 * 0.5 + 5 * 1.0) / 15)
    assert recalls["ir_r5"] == 100.0
    # a twin's 10 fitting captions are half its own: the first is its own with probability 1/2;
    # the first 5 are all the other twin's with probability 1 / C(10, 5)
    assert recalls["tr_r1"] == pytest.approx(100 * (0.5 + 0.5 + 1.0) / 3)
    assert recalls["tr_r5"] == pytest.approx(100 * (2 * (1 - 1 / 252) + 1.0) / 3)
    with pytest.raises(ValueError, match="no retrieval oracle for data set 'ade20k'"):
        oracle.world_retrieval_oracle("ade20k", "smoke", 0)


def test_the_oracle_scores_the_galleries_the_retrieval_task_scores(monkeypatch):
    prof = replace(world.PROFILES["smoke"], retrieval_gallery_size=2)
    monkeypatch.setattr(oracle, "get_profile", lambda name: prof)
    test = [(img.scene, img.captions) for _, split, img in coco_karpathy.images(prof, 0) if split == "test"]
    per_gallery = [oracle.retrieval_oracle(test[start:start + 2]) for start in range(0, len(test), 2)]
    recalls = oracle.world_retrieval_oracle("coco", "smoke", 0)
    for key, value in recalls.items():  # equal galleries, equal captions per image: the plain mean
        assert value == pytest.approx(sum(g[key] for g in per_gallery) / len(per_gallery)), key
    assert coco_karpathy.chance_r1(prof, {"test": 6, "val": 5}) == {"test": 0.5, "val": 0.6}
