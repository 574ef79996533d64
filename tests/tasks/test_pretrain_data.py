"""PretrainingData: batch schema, masking rates, determinism, exact resume, stats, ranks, errors."""

import io
import random

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from backbones.tokenizers import PatchCodebookTokenizer, TextTokenizer, train_sentencepiece
from tasks.data.images import DataError
from tasks.data.pretraining import ImageFolderSource, ImageTextShards, TextCorpus
from tasks.pretrain_data import PretrainImageTransform, PretrainingData

WORDS = "a the man woman dog cat red blue green ball tree play rides sits on near with".split()
NUM_CODES = 16


@pytest.fixture(scope="module")
def text_tokenizer(tmp_path_factory):
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))) for _ in range(200)]
    return TextTokenizer(train_sentencepiece(lines, tmp_path_factory.mktemp("spm") / "toy", vocab_size=40))


@pytest.fixture(scope="module")
def visual_tokenizer():
    return PatchCodebookTokenizer(torch.rand(NUM_CODES, 48, generator=torch.Generator().manual_seed(0)),
                                  patch_size=16, pool=4)


def sentences(count, seed=0, low=3, high=14):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(count)]


def images(count, seed=0, size=(40, 48)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g) for _ in range(count)]


def make(text_tokenizer, visual_tokenizer, **kwargs):
    defaults = dict(images=images(5), texts=sentences(7), pairs=list(zip(images(6, seed=1), sentences(6, seed=1))),
                    text_tokenizer=text_tokenizer, visual_tokenizer=visual_tokenizer, img_size=64, patch_size=16,
                    batch_size=2, max_text_len=8, max_pair_text_len=12, seed=3)
    return PretrainingData(**{**defaults, **kwargs})


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):  # num_masked: host-side counts
            assert a[key] == b[key], key
            continue
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def expected_masked(padding, prob):
    candidates = (padding == 0).sum(1) - 2  # <s> and </s> are never masked
    return torch.tensor([min(n, max(1, round(n * prob))) if n > 0 else 0 for n in candidates.tolist()])


def test_batch_schema_and_masking_rates(text_tokenizer, visual_tokenizer):
    data = make(text_tokenizer, visual_tokenizer)
    batch = data.next_batch()
    shapes = {
        "image": ((2, 3, 64, 64), torch.float32), "image_mask": ((2, 16), torch.bool),
        "image_codes": ((2, 16), torch.long), "text_ids": ((2, 8), torch.long),
        "text_padding_mask": ((2, 8), torch.long), "text_labels": ((2, 8), torch.long),
        "pair_image": ((2, 3, 64, 64), torch.float32), "pair_text_ids": ((2, 12), torch.long),
        "pair_padding_mask": ((2, 12), torch.long), "pair_text_labels": ((2, 12), torch.long),
        "model_seed": ((), torch.long),
    }
    assert set(batch) == set(shapes) | {"num_masked"}
    assert batch["num_masked"] == {"image_mask": 12, "text_labels": int((batch["text_labels"] != -100).sum()),
                                   "pair_text_labels": int((batch["pair_text_labels"] != -100).sum())}
    for key, (shape, dtype) in shapes.items():
        assert tuple(batch[key].shape) == shape and batch[key].dtype == dtype, key
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1  # mean = std = 0.5
    assert torch.equal(batch["image_mask"].sum(1), torch.tensor([6, 6]))  # round(0.4 * 16)
    assert 0 <= int(batch["image_codes"].min()) and int(batch["image_codes"].max()) < NUM_CODES
    for prefix, ids, prob in (("text", "text_ids", 0.15), ("pair", "pair_text_ids", 0.5)):
        padding = batch[f"{prefix}_padding_mask"]
        labels = batch[f"{prefix}_text_labels" if prefix == "pair" else "text_labels"]
        assert torch.equal((labels != -100).sum(1), expected_masked(padding, prob))
        assert (labels[padding == 1] == -100).all()
        assert (batch[ids][:, 0] == text_tokenizer.bos_id).all()
        assert (batch[ids][padding == 1] == text_tokenizer.pad_id).all()


def test_batches_are_seeded_and_leave_global_rngs_alone(text_tokenizer, visual_tokenizer):
    torch.manual_seed(123)
    first = [make(text_tokenizer, visual_tokenizer).next_batch() for _ in range(1)]
    torch_state, numpy_state, python_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    data = make(text_tokenizer, visual_tokenizer)
    run = [data.next_batch() for _ in range(4)]
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    assert np.array_equal(np.random.get_state()[1], numpy_state[1])
    torch.manual_seed(999)
    again = make(text_tokenizer, visual_tokenizer)
    for a, b in zip(run, [again.next_batch() for _ in range(4)]):
        assert_same(a, b)
    assert_same(first[0], run[0])
    other = make(text_tokenizer, visual_tokenizer, seed=4).next_batch()
    assert not torch.equal(other["image"], run[0]["image"])
    assert run[0]["model_seed"] != run[1]["model_seed"]


def _roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def check_resume(build, total=7, cut=3):
    uninterrupted = build()
    reference = [uninterrupted.next_batch() for _ in range(total)]
    first = build()
    for _ in range(cut):
        first.next_batch()
    state = _roundtrip(first.state_dict())
    resumed = build()
    resumed.load_state_dict(state)
    for expected in reference[cut:]:
        assert_same(resumed.next_batch(), expected)
    assert resumed.stats() == uninterrupted.stats()
    return uninterrupted


def test_resume_is_bit_identical_across_epochs(text_tokenizer, visual_tokenizer):
    data = check_resume(lambda: make(text_tokenizer, visual_tokenizer))
    stats = data.stats()
    assert stats["image_epoch"] >= 2 and stats["pair_epoch"] >= 1  # 5 images, 2 a step, 7 steps


@pytest.fixture()
def file_sources(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images(5, seed=2)):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:02d}.png")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(sentences(6, seed=3, low=5, high=20)) + "\n", encoding="utf-8")
    shards = []
    pair_images, captions = images(8, seed=4), sentences(8, seed=4)
    for s in range(2):
        path = tmp_path / f"pairs-{s}.tar"
        with wds.TarWriter(str(path)) as sink:
            for i in range(4 * s, 4 * s + 4):
                buf = io.BytesIO()
                Image.fromarray(pair_images[i].permute(1, 2, 0).numpy()).save(buf, format="PNG")
                sink.write({"__key__": f"k{i:03d}", "png": buf.getvalue(), "txt": captions[i]})
        shards.append(str(path))
    return folder, corpus, shards


def test_resume_with_folder_corpus_and_shards(text_tokenizer, visual_tokenizer, file_sources):
    folder, corpus, shards = file_sources

    def build():
        return make(text_tokenizer, visual_tokenizer, images=ImageFolderSource(folder),
                    texts=TextCorpus(corpus, rank=0, world_size=1),
                    pairs=ImageTextShards(shards, rank=0, world_size=1, shuffle_shards=True, seed=5),
                    batch_size=3, shuffle_buffer=3)

    data = check_resume(build, total=6, cut=4)
    assert data.stats()["pair_epoch"] >= 2  # 8 pairs, 3 a step


def test_streams_mixture_and_batch_sizes(text_tokenizer, visual_tokenizer):
    only_images = make(text_tokenizer, visual_tokenizer, streams=("image",)).next_batch()
    assert set(only_images) == {"image", "image_mask", "image_codes", "model_seed", "num_masked"}
    mixed = make(text_tokenizer, visual_tokenizer, mixture=(2, 1, 0)).next_batch()
    assert mixed["image"].shape[0] == 4 and mixed["text_ids"].shape[0] == 2 and "pair_image" not in mixed
    sized = make(text_tokenizer, visual_tokenizer, batch_size={"text": 3, "pair": 1})
    batch = sized.next_batch()
    assert sized.streams == ("text", "pair") and batch["text_ids"].shape[0] == 3 and batch["pair_image"].shape[0] == 1
    masked_pairs = make(text_tokenizer, visual_tokenizer, streams=("pair",), pair_image_mask_ratio=0.25).next_batch()
    assert torch.equal(masked_pairs["pair_image_mask"].sum(1), torch.tensor([4, 4]))
    assert masked_pairs["pair_image_codes"].shape == (2, 16)
    with pytest.raises(ValueError, match="source"):
        make(text_tokenizer, visual_tokenizer, images=None, streams=("image",))
    with pytest.raises(ValueError, match="unknown stream"):
        make(text_tokenizer, visual_tokenizer, streams=("video",))
    with pytest.raises(ValueError, match="visual_tokenizer"):
        make(text_tokenizer, None)
    with pytest.raises(ValueError, match="text_tokenizer"):
        make(None, visual_tokenizer, streams=("text",))


def test_long_documents_become_consecutive_chunks(text_tokenizer, visual_tokenizer):
    document = " ".join(WORDS * 2)
    ids = text_tokenizer.encode(document)
    data = make(text_tokenizer, visual_tokenizer, texts=[document], streams=("text",), batch_size=1,
                text_mask_prob=0.0)
    chunks = []
    for _ in range(-(-len(ids) // 6)):  # max_text_len 8 = <s> + 6 + </s>
        batch = data.next_batch()
        clean = torch.where(batch["text_labels"] != -100, batch["text_labels"], batch["text_ids"])[0]
        chunks.append(clean[1:][batch["text_padding_mask"][0, 1:] == 0][:-1].tolist())
    assert sum(chunks, []) == ids
    assert data.stats()["text_epoch"] == 0 and data.next_batch() and data.stats()["text_epoch"] == 1


def test_stats_count_what_was_seen(text_tokenizer, visual_tokenizer):
    data = make(text_tokenizer, visual_tokenizer)
    tokens = pair_tokens = 0
    for _ in range(3):
        batch = data.next_batch()
        tokens += int((batch["text_padding_mask"] == 0).sum())
        pair_tokens += int((batch["pair_padding_mask"] == 0).sum())
    stats = data.stats()
    assert (stats["steps"], stats["images"], stats["texts"], stats["pairs"]) == (3, 6, 6, 6)
    assert stats["text_tokens"] == tokens and stats["pair_text_tokens"] == pair_tokens


def test_ranks_read_disjoint_halves_of_a_sequence(text_tokenizer, visual_tokenizer):
    texts = [f"{a} {b}" for a in WORDS[:4] for b in WORDS[4:8]]  # 16 distinct documents

    def seen(rank):
        data = make(text_tokenizer, visual_tokenizer, texts=texts, streams=("text",), batch_size=4,
                    rank=rank, world_size=2)
        out = set()
        for _ in range(2):  # 8 documents per rank per epoch
            batch = data.next_batch()
            clean = torch.where(batch["text_labels"] != -100, batch["text_labels"], batch["text_ids"])
            out |= {tuple(row[pad == 0].tolist()) for row, pad in zip(clean, batch["text_padding_mask"])}
        assert data.stats()["text_epoch"] == 0
        return out

    zero, one = seen(0), seen(1)
    assert len(zero) == len(one) == 8 and not zero & one


def test_empty_sources_are_named(text_tokenizer, visual_tokenizer, tmp_path):
    with pytest.raises(DataError, match="image source list of 0 items"):
        make(text_tokenizer, visual_tokenizer, images=[])
    blank = make(text_tokenizer, visual_tokenizer, texts=["", ""], streams=("text",))
    with pytest.raises(DataError, match="text source list of 2 items yielded no samples"):
        blank.next_batch()
    corpus = tmp_path / "blank.txt"
    corpus.write_text("\n\n", encoding="utf-8")
    from_file = make(text_tokenizer, visual_tokenizer, texts=TextCorpus(corpus, rank=0, world_size=1),
                     streams=("text",))
    with pytest.raises(DataError, match="blank.txt"):
        from_file.next_batch()
    with pytest.raises(DataError, match="fewer than the 4 ranks"):
        make(text_tokenizer, visual_tokenizer, images=images(3), rank=0, world_size=4)
    bad_pair = make(text_tokenizer, visual_tokenizer, pairs=["just a caption"], streams=("pair",), batch_size=1)
    with pytest.raises(DataError, match="pair item"):
        bad_pair.next_batch()


def test_load_state_checks_what_the_state_depends_on(text_tokenizer, visual_tokenizer):
    data = make(text_tokenizer, visual_tokenizer)
    data.next_batch()
    state = data.state_dict()
    other = make(text_tokenizer, visual_tokenizer, seed=9)
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state)
    other.load_state_dict(state, strict=False)
    assert other.step == 1
    with pytest.raises(ValueError, match="version"):
        other.load_state_dict({**state, "version": 0})


def test_image_transform_is_driven_by_its_generator():
    image = images(1, size=(50, 70))[0]
    transform = PretrainImageTransform(32, color_jitter=0.4)
    a = transform(image, torch.Generator().manual_seed(0))
    b = transform(image, torch.Generator().manual_seed(0))
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, transform(image, torch.Generator().manual_seed(1)))
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    torch.testing.assert_close(transform(pil, torch.Generator().manual_seed(0)), a)
    flipped = PretrainImageTransform(32, hflip=1.0)(image, torch.Generator().manual_seed(0))
    kept = PretrainImageTransform(32, hflip=0.0)(image, torch.Generator().manual_seed(0))
    torch.testing.assert_close(flipped, kept.flip(-1))
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = transform.crop_params(50, 70, g)
        assert 0 <= top and top + h <= 50 and 0 <= left and left + w <= 70 and h > 0 and w > 0


def test_visual_tokenizer_with_another_patch_size(text_tokenizer):
    small_patches = PatchCodebookTokenizer(torch.rand(NUM_CODES, 48), patch_size=8, pool=4)
    data = PretrainingData(images=images(2), text_tokenizer=text_tokenizer, visual_tokenizer=small_patches,
                           img_size=32, patch_size=16, batch_size=2)
    assert data.next_batch()["image_codes"].shape == (2, 4)  # the tokenizer sees a 16x16 view: 2x2 patches

    class WrongGrid:
        patch_size = 16

        def get_codebook_indices(self, x):
            return torch.zeros(x.shape[0], 5, dtype=torch.long)

    broken = PretrainingData(images=images(2), text_tokenizer=text_tokenizer, visual_tokenizer=WrongGrid(),
                             img_size=32, patch_size=16, batch_size=2)
    with pytest.raises(ValueError, match="codes of shape"):
        broken.next_batch()


def test_samples_per_batch_counts_every_stream():
    from tasks.pretrain_data import PretrainingData

    data = PretrainingData.__new__(PretrainingData)
    data.batch_sizes = {"image": 4, "text": 4, "pair": 8}
    data.streams = ("image", "pair")
    assert data.samples_per_batch == 12


def test_codes_outside_the_tokenizer_s_codebook_are_refused_where_they_are_made(text_tokenizer, visual_tokenizer):
    class Broken:
        patch_size, num_codes = 16, NUM_CODES

        def get_codebook_indices(self, images):
            return visual_tokenizer.get_codebook_indices(images) + NUM_CODES

    with pytest.raises(ValueError, match=f"outside its codebook of {NUM_CODES}: check its checkpoint"):
        make(text_tokenizer, Broken(), streams=("image",)).next_batch()

