"""Pretraining sources: WebDataset shards, image folders, text corpora (tiny fixtures)."""

import io
import json
import os

import numpy as np
import pytest
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from tasks.data.images import DataError
from tasks.data.pretraining import ImageFolderSource, ImageTextShards, TextCorpus


def _jpeg(value):
    buf = io.BytesIO()
    Image.fromarray(np.full((6, 8, 3), value, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _png(value):
    buf = io.BytesIO()
    Image.fromarray(np.full((6, 8, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_shard(path, samples):
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return str(path)


@pytest.fixture()
def shards(tmp_path):
    paths = []
    for s in range(4):
        samples = [{"__key__": f"s{s}_{i:03d}", "jpg": _jpeg(40 * s + i), "txt": f"caption {s} {i}"} for i in range(2)]
        samples.append({"__key__": f"s{s}_002", "png": _png(9), "json": json.dumps({"caption": f"json caption {s}"})})
        paths.append(write_shard(tmp_path / f"pairs-{s:03d}.tar", samples))
    return paths


def _keys(dataset):
    return [item["key"] for item in dataset]


def test_shards_yield_pairs_in_order(shards, tmp_path):
    dataset = ImageTextShards(str(tmp_path / "pairs-{000..003}.tar"), tokenizer=str.split, rank=0, world_size=1)
    items = list(dataset)
    assert len(items) == 12 and items[0]["key"] == "s0_000" and items[0]["text"] == "caption 0 0"
    assert items[0]["tokens"] == ["caption", "0", "0"] and items[0]["shard"] == shards[0]
    assert items[0]["image"].mode == "RGB" and items[0]["image"].size == (8, 6)
    assert items[2]["text"] == "json caption 0"  # png + json caption
    globbed = ImageTextShards(str(tmp_path / "pairs-*.tar"), transform=lambda im: im.size, rank=0, world_size=1)
    assert globbed.shards == shards and next(iter(globbed))["image"] == (8, 6)


def test_shards_split_across_ranks_and_workers(shards):
    rank0 = ImageTextShards(shards, rank=0, world_size=2)
    rank1 = ImageTextShards(shards, rank=1, world_size=2)
    assert rank0.shards_for(0) == [shards[0], shards[2]] and rank1.shards_for(1) == [shards[1], shards[3]]
    assert rank0.shards_for(0, worker=1, num_workers=2) == [shards[2]]
    keys0, keys1 = _keys(rank0), _keys(rank1)
    assert len(keys0) == len(keys1) == 6 and not set(keys0) & set(keys1)
    loader = DataLoader(rank1, batch_size=None, num_workers=2, collate_fn=lambda item: item["key"])
    assert sorted(loader) == sorted(keys1)  # each worker reads its own shard, nothing twice


def test_shard_shuffle_is_seeded_per_epoch(shards):
    dataset = ImageTextShards(shards, rank=0, world_size=1, shuffle_shards=True, seed=1)
    first = dataset.shards_for(0)
    assert sorted(first) == shards and dataset.shards_for(0) == first
    orders = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        orders.add(tuple(dataset.shards_for(0)))
    assert len(orders) > 1


def test_truncated_shard_names_shard_and_last_good_key(shards, tmp_path):
    data = open(shards[1], "rb").read()
    with tarfile_members(shards[1]) as members:
        cut = members["s1_001.jpg"].offset_data + 100  # inside the data of the second sample's image
    truncated = tmp_path / "trunc.tar"
    truncated.write_bytes(data[:cut])
    with pytest.raises(DataError, match=r"shard .*trunc\.tar is truncated or corrupt after key 's1_000' .*in progress, 's1_001'"):
        list(ImageTextShards([str(truncated)], rank=0, world_size=1))
    boundary = tmp_path / "boundary.tar"  # cut after a whole member: tarfile alone would not notice
    with tarfile_members(shards[1]) as members:
        boundary.write_bytes(data[: members["s1_001.jpg"].offset])
    with pytest.raises(DataError, match=r"boundary\.tar ends early .* after key None .*in progress, 's1_000'"):
        list(ImageTextShards([str(boundary)], rank=0, world_size=1))
    dataset = ImageTextShards([shards[0], str(truncated), shards[2]], rank=0, world_size=1, skip_bad=True)
    keys = _keys(dataset)
    assert keys == ["s0_000", "s0_001", "s0_002", "s1_000", "s2_000", "s2_001", "s2_002"]
    assert dataset.num_bad_shards == 1 and dataset.num_skipped == 0


class tarfile_members:
    """Context manager mapping the member names of a tar file to their TarInfo (offsets)."""

    def __init__(self, path):
        import tarfile

        self.tar = tarfile.open(path)

    def __enter__(self):
        return {m.name: m for m in self.tar.getmembers()}

    def __exit__(self, *exc):
        self.tar.close()


def test_bad_samples_inside_a_shard(tmp_path):
    path = write_shard(tmp_path / "bad.tar", [
        {"__key__": "ok", "jpg": _jpeg(1), "txt": "fine"},
        {"__key__": "corrupt", "jpg": b"not a jpeg", "txt": "broken image"},
        {"__key__": "nocap", "jpg": _jpeg(2)},
        {"__key__": "noimg", "txt": "only text"},
        {"__key__": "badjson", "jpg": _jpeg(3), "json": json.dumps({"url": "x"})},
    ])
    with pytest.raises(DataError, match=r"cannot decode image .*bad\.tar:corrupt"):
        list(ImageTextShards([path], rank=0, world_size=1))
    dataset = ImageTextShards([path], rank=0, world_size=1, skip_bad=True)
    assert _keys(dataset) == ["ok"] and dataset.num_skipped == 4


def test_sample_without_caption_and_empty_sources(tmp_path):
    path = write_shard(tmp_path / "nocap.tar", [{"__key__": "a", "jpg": _jpeg(1)}])
    with pytest.raises(DataError, match=r"nocap\.tar:a has no caption"):
        list(ImageTextShards([path], rank=0, world_size=1))
    with pytest.raises(DataError, match="yielded no samples"):
        list(ImageTextShards([path], rank=0, world_size=1, skip_bad=True))
    with pytest.raises(DataError, match=r"no shards match .*missing-\*\.tar"):
        ImageTextShards(str(tmp_path / "missing-*.tar"))
    with pytest.raises(DataError, match="shard files not found"):
        ImageTextShards([str(tmp_path / "absent.tar")])
    with pytest.raises(DataError, match="1 shards for 2 ranks"):
        ImageTextShards([path], rank=1, world_size=2)
    with pytest.raises(ValueError, match="rank < world_size"):
        ImageTextShards([path], rank=2, world_size=2)


def test_image_folder_source(tmp_path):
    root = tmp_path / "imgs"
    (root / "b" / "c").mkdir(parents=True)
    Image.new("L", (4, 4), 5).save(root / "b" / "c" / "z.PNG")
    Image.new("RGB", (4, 4)).save(root / "a.jpg")
    (root / "readme.txt").write_text("x")
    source = ImageFolderSource(str(root))
    assert source.paths == ["a.jpg", os.path.join("b", "c", "z.PNG")]
    assert source[1]["image"].mode == "RGB" and source[1]["image_path"] == os.path.join("b", "c", "z.PNG")
    (root / "a.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"a\.jpg"):
        source[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        ImageFolderSource(str(tmp_path / "empty"))


def test_text_corpus_reads_txt_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\n\nsecond doc\n")
    (tmp_path / "b.jsonl").write_text('{"text": "third doc"}\n{"text": "  "}\n{"text": "fourth doc", "id": 3}\n')
    corpus = TextCorpus([str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")], tokenizer=len, rank=0, world_size=1)
    items = list(corpus)
    assert [i["text"] for i in items] == ["first doc", "second doc", "third doc", "fourth doc"]
    assert items[1]["source"].endswith("a.txt:3") and items[3]["source"].endswith("b.jsonl:3")
    assert items[0]["tokens"] == 9
    assert [i["text"] for i in TextCorpus(str(tmp_path), rank=0, world_size=1)] == [i["text"] for i in items]
    by_file = [[i["text"] for i in TextCorpus(str(tmp_path), rank=r, world_size=2)] for r in range(2)]
    assert by_file == [["first doc", "second doc"], ["third doc", "fourth doc"]]
    by_line = [[i["text"] for i in TextCorpus(str(tmp_path / "a.txt"), rank=r, world_size=2)] for r in range(2)]
    assert by_line == [["first doc"], ["second doc"]]


def test_text_corpus_bad_lines_and_empty(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": broken\n{"title": "no text"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON line"):
        list(TextCorpus(str(bad), rank=0, world_size=1))
    corpus = TextCorpus(str(bad), rank=0, world_size=1, skip_bad=True)
    assert [i["text"] for i in corpus] == ["ok"] and corpus.num_skipped == 2
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n")
    with pytest.raises(DataError, match=r"yielded no documents from .*blank\.txt"):
        list(TextCorpus(str(blank), rank=0, world_size=1))
    with pytest.raises(DataError, match="path not found"):
        TextCorpus(str(tmp_path / "absent.txt"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match=r"no \.txt/\.jsonl files"):
        TextCorpus(str(tmp_path / "empty_dir"))
    with pytest.raises(ValueError, match="unsupported text files"):
        TextCorpus([str(tmp_path / "bad.jsonl"), str(_touch(tmp_path / "x.csv"))])


def _touch(path):
    path.write_text("a,b\n")
    return path
