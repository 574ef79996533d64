"""TextTokenizer against transformers' XLMRobertaTokenizer (the tokenizer the official BEiT-3 code uses)."""

import random
import shutil

import pytest
import torch
from transformers import XLMRobertaTokenizer

from backbones.tokenizers import TextTokenizer, train_sentencepiece

SENTENCES = [
    "A man rides a red Bicycle down the street.",
    "Two DOGS play with 3 balls, near 1024 trees!",
    "what colour is the cat's hat? (it's blue)",
    "  extra   spaces\tand tabs  ",
    "ünknown 漢字 symbols ☃ and émojis 🙂",
    "Ｆｕｌｌｗｉｄｔｈ and ligature ﬁ",
    "",
    "a <mask> dog sits<mask>on x<s>y </s> <pad> <unk>",  # literal special tokens stay whole
]


def _corpus(num_lines: int = 400) -> list[str]:
    rng = random.Random(0)
    words = (
        "a the man woman dog cat red blue green bicycle street ball tree play rides sits on near with "
        "two three is what colour hat A The Man Dog Red Blue 1 2 3 10 42 2024 , . ! ? ( ) '"
    ).split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 14))) for _ in range(num_lines)]


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("spm")
    corpus_file = root / "corpus.txt"
    corpus_file.write_text("\n".join(_corpus()) + "\n", encoding="utf-8")
    return train_sentencepiece(corpus_file, root / "model" / "toy", vocab_size=80)


@pytest.fixture(scope="module")
def hf_tokenizer(spm_model, tmp_path_factory):
    # from_pretrained on a folder with sentencepiece.bpe.model works for transformers 4 (slow) and 5.
    folder = tmp_path_factory.mktemp("hf")
    shutil.copy(spm_model, folder / "sentencepiece.bpe.model")
    return XLMRobertaTokenizer.from_pretrained(str(folder))


def test_special_ids_match_xlmr(spm_model, hf_tokenizer):
    tok = TextTokenizer(spm_model)
    assert (tok.bos_id, tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2, 3)
    assert tok.bos_id == hf_tokenizer.bos_token_id
    assert tok.pad_id == hf_tokenizer.pad_token_id
    assert tok.eos_id == hf_tokenizer.eos_token_id
    assert tok.unk_id == hf_tokenizer.unk_token_id
    assert tok.mask_id == hf_tokenizer.mask_token_id == 80 + 1
    assert tok.vocab_size == len(hf_tokenizer) == 80 + 2


@pytest.mark.parametrize("text", SENTENCES)
def test_ids_match_xlmr(spm_model, hf_tokenizer, text):
    tok = TextTokenizer(spm_model)
    hf_ids = hf_tokenizer.convert_tokens_to_ids(hf_tokenizer.tokenize(text))
    assert tok.tokenize(text) == hf_tokenizer.tokenize(text)
    assert tok.encode(text) == hf_ids
    assert [tok.bos_id] + tok.encode(text) + [tok.eos_id] == hf_tokenizer(text)["input_ids"]
    assert tok.convert_tokens_to_ids(tok.tokenize(text)) == hf_ids


def test_unknown_characters_and_case(spm_model):
    tok = TextTokenizer(spm_model)
    ids = tok.encode("☃ 漢字")
    assert tok.unk_id in ids
    assert tok.encode("Red") != tok.encode("red")  # case is kept
    assert max(tok.encode(" ".join(SENTENCES[:-1]))) < tok.mask_id  # plain text never yields <mask>


def test_call_builds_official_segment(spm_model):
    tok = TextTokenizer(spm_model)
    batch = tok(["a red dog", "the man rides a blue bicycle near two green trees"], max_len=8)
    assert batch["text_ids"].dtype == torch.long and batch["text_ids"].shape == (2, 8)
    short = tok.encode("a red dog")
    n = len(short) + 2
    assert batch["text_ids"][0].tolist() == [0] + short + [2] + [1] * (8 - n)
    assert batch["padding_mask"][0].tolist() == [0] * n + [1] * (8 - n)
    long_ids = tok.encode("the man rides a blue bicycle near two green trees")
    assert batch["text_ids"][1].tolist() == [0] + long_ids[:6] + [2]
    assert batch["padding_mask"][1].tolist() == [0] * 8
    assert tok("a red dog", max_len=8)["text_ids"].shape == (1, 8)
    assert tok.segment([], 4) == ([0, 2, 1, 1], [0, 0, 1, 1])
    with pytest.raises(ValueError, match="max_len"):
        tok.segment([5], 1)


def test_decode_round_trip(spm_model, hf_tokenizer):
    tok = TextTokenizer(spm_model)
    text = "A man rides a red bicycle."
    batch = tok([text, "two dogs"], max_len=20)
    assert tok.decode(tok.encode(text)) == text
    assert tok.batch_decode(batch["text_ids"]) == [text, "two dogs"]
    assert tok.decode(batch["text_ids"][1], skip_special_tokens=False).startswith("<s> two dogs </s> <pad>")
    assert tok.decode(tok.encode(text)) == hf_tokenizer.decode(tok.encode(text), skip_special_tokens=True)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_training_is_deterministic_and_accepts_lines(tmp_path):
    lines = _corpus(200)
    first = TextTokenizer(train_sentencepiece(lines, tmp_path / "a" / "m", vocab_size=60, seed=3))
    second = TextTokenizer(train_sentencepiece(iter(lines), tmp_path / "b" / "m", vocab_size=60, seed=3))
    pieces = lambda t: [(t.sp.IdToPiece(i), t.sp.GetScore(i)) for i in range(t.spm_size)]  # noqa: E731
    assert pieces(first) == pieces(second)
    assert [first.sp.IdToPiece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.model"):
        TextTokenizer(tmp_path / "missing.model")
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"definitely not a protobuf")
    with pytest.raises(ValueError, match="corrupt.model"):
        TextTokenizer(corrupt)
    with pytest.raises(ValueError, match="vocab_size"):
        train_sentencepiece(["a b c"], tmp_path / "tiny", vocab_size=500)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        train_sentencepiece(tmp_path / "nope.txt", tmp_path / "x", vocab_size=10)
