"""SentencePiece text tokenizer with the official BEiT-3 (XLM-R / fairseq) id conventions.

BEiT-3 tokenizes text with ``transformers.XLMRobertaTokenizer("beit3.spm")``. That tokenizer does not
use the SentencePiece ids directly: it follows fairseq's dictionary layout

    ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, spm piece ``i`` (for ``i >= 3``) -> ``i + 1``,
    ``<mask>`` = ``len(spm) + 1``  (vocabulary size ``len(spm) + 2``).

The ``.model`` file itself must therefore hold ``<unk>``, ``<s>``, ``</s>`` as pieces 0, 1, 2 (the
SentencePiece defaults, which XLM-R's file uses); :func:`train_sentencepiece` trains models with exactly
that layout. :class:`TextTokenizer` reimplements the mapping on top of the ``sentencepiece`` library so
that ``backbones`` needs no ``transformers`` dependency; the tests check it id-for-id against
``XLMRobertaTokenizer``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import sentencepiece as spm
import torch

__all__ = ["TextTokenizer", "train_sentencepiece"]

# Layout of the .model file expected by XLMRobertaTokenizer (checked by TextTokenizer on load).
_SPM_UNK, _SPM_BOS, _SPM_EOS = 0, 1, 2
_FAIRSEQ_OFFSET = 1


def train_sentencepiece(
    corpus: str | Path | Iterable[str],
    model_prefix: str | Path,
    vocab_size: int,
    *,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    seed: int = 0,
    hard_vocab_limit: bool = True,
) -> Path:
    """Train a SentencePiece model in the XLM-R layout and return the path of the ``.model`` file.

    The model has ``<unk>``=0, ``<s>``=1, ``</s>``=2 and no pad piece (pad lives only in the fairseq
    dictionary built by :class:`TextTokenizer`), the NFKC normalisation of XLM-R, case kept, no byte
    fallback (unseen characters become ``<unk>``). Training is single-threaded, unshuffled and seeded,
    so the same corpus and arguments give the same file.

    Args:
        corpus: path of a UTF-8 text file (one sentence per line) or an iterable of lines.
        model_prefix: output prefix; ``<prefix>.model`` and ``<prefix>.vocab`` are written (parent
            directories are created).
        vocab_size: number of SentencePiece pieces (the :class:`TextTokenizer` vocabulary is two larger).
        model_type: ``"unigram"`` (XLM-R's choice), ``"bpe"``, ``"char"`` or ``"word"``.
        character_coverage: fraction of characters covered by the model (1.0 keeps every character).
        seed: seed of SentencePiece's random generator.
        hard_vocab_limit: if False, a corpus too small for ``vocab_size`` yields a smaller vocabulary
            instead of an error.

    Returns:
        Path of the written ``.model`` file.
    """
    if vocab_size < 4:
        raise ValueError(f"vocab_size must be >= 4 (3 special pieces + 1), got {vocab_size}")
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)

    options = dict(
        model_prefix=str(model_prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        unk_id=_SPM_UNK,
        bos_id=_SPM_BOS,
        eos_id=_SPM_EOS,
        pad_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        hard_vocab_limit=hard_vocab_limit,
        byte_fallback=False,
        normalization_rule_name="nmt_nfkc",
        minloglevel=2,
    )
    if isinstance(corpus, (str, Path)):
        path = Path(corpus)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece corpus file not found: {path}")
        options["input"] = str(path)
    else:
        # SentencePiece stops reading a sentence_iterator at the first non-str item; check up front.
        lines = [line for line in corpus]
        bad = next((i for i, line in enumerate(lines) if not isinstance(line, str)), None)
        if bad is not None:
            raise TypeError(f"corpus line {bad} is {type(lines[bad]).__name__}, expected str")
        if not any(line.strip() for line in lines):
            raise ValueError("corpus is empty: give at least one non-blank line")
        options["sentence_iterator"] = iter(lines)

    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(**options)
    except RuntimeError as err:
        raise ValueError(
            f"SentencePiece training failed for {model_prefix}: {err} "
            "(for a small corpus lower vocab_size or pass hard_vocab_limit=False)"
        ) from err
    return model_prefix.with_name(model_prefix.name + ".model")


class TextTokenizer:
    """BEiT-3 text tokenizer: a SentencePiece model under the XLM-R / fairseq id layout.

    Ids agree with ``transformers.XLMRobertaTokenizer(vocab_file=model_file)``: ``bos_id=0``,
    ``pad_id=1``, ``eos_id=2``, ``unk_id=3``, spm piece ``i`` -> ``i + 1``, ``mask_id = len(spm) + 1``,
    ``vocab_size = len(spm) + 2``. Case is kept (BEiT-3 does not lowercase).

    Args:
        model_file: path of a SentencePiece ``.model`` with ``<unk>``, ``<s>``, ``</s>`` as pieces 0-2
            (e.g. the official ``beit3.spm`` or one written by :func:`train_sentencepiece`).
    """

    bos_token, pad_token, eos_token, unk_token, mask_token = "<s>", "<pad>", "</s>", "<unk>", "<mask>"

    def __init__(self, model_file: str | Path):
        self.model_file = Path(model_file)
        if not self.model_file.is_file():
            raise FileNotFoundError(f"SentencePiece model file not found: {self.model_file}")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(self.model_file))
        except (OSError, RuntimeError) as err:
            raise ValueError(
                f"{self.model_file} is not a valid SentencePiece .model file ({err}); "
                "re-download it or train one with train_sentencepiece()"
            ) from err
        expected = {_SPM_UNK: "<unk>", _SPM_BOS: "<s>", _SPM_EOS: "</s>"}
        found = {i: self.sp.IdToPiece(i) for i in expected if i < self.sp.GetPieceSize()}
        if found != expected:
            raise ValueError(
                f"{self.model_file}: pieces 0-2 are {found}, expected {expected} (the XLM-R layout); "
                "train the model with unk_id=0, bos_id=1, eos_id=2, pad_id=-1"
            )
        self.spm_size = self.sp.GetPieceSize()
        self.bos_id, self.pad_id, self.eos_id, self.unk_id = 0, 1, 2, 3
        self.mask_id = self.spm_size + _FAIRSEQ_OFFSET
        self.vocab_size = self.spm_size + 2
        self.special_ids = (self.bos_id, self.pad_id, self.eos_id, self.unk_id, self.mask_id)
        self._special_tokens = {
            self.bos_id: self.bos_token,
            self.pad_id: self.pad_token,
            self.eos_id: self.eos_token,
            self.unk_id: self.unk_token,
            self.mask_id: self.mask_token,
        }
        self._special_by_token = {tok: i for i, tok in self._special_tokens.items()}
        # Like XLMRobertaTokenizer, literal special-token strings in the text are kept whole.
        alternatives = sorted(self._special_by_token, key=len, reverse=True)
        self._special_pattern = re.compile("(" + "|".join(re.escape(t) for t in alternatives) + ")")

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_file={os.fspath(self.model_file)!r}, vocab_size={self.vocab_size})"

    # --- id mapping -------------------------------------------------------------------------------
    def _spm_to_id(self, spm_id: int) -> int:
        if spm_id == _SPM_UNK:
            return self.unk_id
        if spm_id in (_SPM_BOS, _SPM_EOS):  # never produced by EncodeAsIds on plain text
            return self.bos_id if spm_id == _SPM_BOS else self.eos_id
        return spm_id + _FAIRSEQ_OFFSET

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        """Map pieces to ids (special token strings included; unknown pieces -> ``unk_id``)."""
        out = []
        for tok in tokens:
            if tok in self._special_by_token:
                out.append(self._special_by_token[tok])
            else:
                out.append(self._spm_to_id(self.sp.PieceToId(tok)))
        return out

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """Map ids to pieces; raises ``ValueError`` for ids outside ``[0, vocab_size)``."""
        out = []
        for i in ids:
            i = int(i)
            if i in self._special_tokens:
                out.append(self._special_tokens[i])
            elif 0 <= i < self.vocab_size:
                out.append(self.sp.IdToPiece(i - _FAIRSEQ_OFFSET))
            else:
                raise ValueError(f"token id {i} outside the vocabulary [0, {self.vocab_size})")
        return out

    # --- text <-> ids -----------------------------------------------------------------------------
    def _split_special(self, text: str) -> list[str]:
        return [part for part in self._special_pattern.split(text) if part]

    def tokenize(self, text: str) -> list[str]:
        """SentencePiece pieces of ``text``; literal ``<s>``, ``<mask>``, ... stay single tokens."""
        tokens: list[str] = []
        for part in self._split_special(text):
            if part in self._special_by_token:
                tokens.append(part)
            else:
                tokens.extend(self.sp.EncodeAsPieces(part))
        return tokens

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without added bos/eos (``tokenize`` + ``convert_tokens_to_ids``)."""
        ids: list[int] = []
        for part in self._split_special(text):
            if part in self._special_by_token:
                ids.append(self._special_by_token[part])
            else:
                ids.extend(self._spm_to_id(i) for i in self.sp.EncodeAsIds(part))
        return ids

    def segment(self, ids: Sequence[int], max_len: int) -> tuple[list[int], list[int]]:
        """Official ``_get_text_segment``: ``[bos] + ids[:max_len-2] + [eos]``, right-padded.

        Returns:
            ``(text_ids, padding_mask)``, both of length ``max_len``; ``padding_mask`` is 1 on pad slots.
        """
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 to hold <s> and </s>, got {max_len}")
        body = [int(i) for i in ids][: max_len - 2]
        tokens = [self.bos_id] + body + [self.eos_id]
        num_tokens = len(tokens)
        text_ids = tokens + [self.pad_id] * (max_len - num_tokens)
        padding_mask = [0] * num_tokens + [1] * (max_len - num_tokens)
        return text_ids, padding_mask

    def __call__(self, texts: str | Sequence[str], max_len: int = 64) -> dict[str, torch.Tensor]:
        """Tokenize a string or a batch into ``text_ids`` / ``padding_mask`` LongTensors ``[B, max_len]``."""
        if isinstance(texts, str):
            texts = [texts]
        rows = [self.segment(self.encode(t), max_len) for t in texts]
        text_ids = torch.tensor([r[0] for r in rows], dtype=torch.long).reshape(len(rows), max_len)
        padding_mask = torch.tensor([r[1] for r in rows], dtype=torch.long).reshape(len(rows), max_len)
        return {"text_ids": text_ids, "padding_mask": padding_mask}

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``.

        With ``skip_special_tokens`` the five special ids (bos, pad, eos, unk, mask) are dropped, as in
        ``XLMRobertaTokenizer.decode``; otherwise they are rendered as ``<s>``, ``<pad>``, ... between the
        decoded stretches of ordinary pieces.
        """
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        parts: list[str] = []
        pieces: list[str] = []
        for i in ids:
            i = int(i)
            if i in self._special_tokens:
                if skip_special_tokens:
                    continue
                if pieces:
                    parts.append(self.sp.DecodePieces(pieces))
                    pieces = []
                parts.append(self._special_tokens[i])
            else:
                pieces.extend(self.convert_ids_to_tokens([i]))
        if pieces:
            parts.append(self.sp.DecodePieces(pieces))
        return " ".join(part for part in parts if part)

    def batch_decode(self, batch: Sequence[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = True) -> list[str]:
        """``decode`` applied to every row of ``batch``."""
        if isinstance(batch, torch.Tensor):
            batch = batch.tolist()
        return [self.decode(row, skip_special_tokens=skip_special_tokens) for row in batch]
