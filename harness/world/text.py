"""The image-free text corpus (``text/corpus.txt`` and ``text/corpus.jsonl``, one document a line)."""

from __future__ import annotations

from pathlib import Path

from . import writers
from .language import corpus_document
from .part import Part, stream_rng
from .profiles import WorldProfile

__all__ = ["build"]


def build(root: Path, prof: WorldProfile, seed: int) -> Part:
    """Write the text corpus."""
    rng = stream_rng(seed, "text")
    docs = [corpus_document(rng) for _ in range(prof.corpus_documents)]
    writers.write_lines(docs, root / "text" / "corpus.txt")
    writers.write_jsonl(({"text": d} for d in docs), root / "text" / "corpus.jsonl")
    return Part(
        entry={"format": "text", "txt": "text/corpus.txt", "jsonl": "text/corpus.jsonl"},
        counts={"documents": len(docs)},
        texts=docs,
    )
