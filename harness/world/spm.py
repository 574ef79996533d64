"""The SentencePiece model of the world, trained on every text the other data sets wrote."""

from __future__ import annotations

from pathlib import Path

from .part import Part
from .profiles import WorldProfile

__all__ = ["build"]


def _strip_model_prefix(model: Path, prefix: str) -> None:
    """SentencePiece stores the (temporary, absolute) ``model_prefix`` inside the ``.model`` file;
    replace it by the world-relative ``prefix`` so that the file depends only on the seed."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.read_bytes())
    proto.trainer_spec.model_prefix = prefix
    model.write_bytes(proto.SerializeToString(deterministic=True))


def build(root: Path, prof: WorldProfile, seed: int, texts: list[str]) -> Part:
    """Train ``spm/world.{model,vocab}`` on ``texts`` (the other data sets' text, first-seen order)."""
    from backbones.tokenizers.text import TextTokenizer, train_sentencepiece

    # A soft limit: a small world may not support spm_vocab_size pieces; the manifest records the real size.
    model = train_sentencepiece(texts, root / "spm" / "world", prof.spm_vocab_size, seed=seed, hard_vocab_limit=False)
    _strip_model_prefix(model, "spm/world")
    tokenizer = TextTokenizer(model)
    return Part(
        entry={"format": "sentencepiece", "model": "spm/world.model", "vocab": "spm/world.vocab"},
        counts={"pieces": tokenizer.spm_size, "vocab_size": tokenizer.vocab_size, "training_lines": len(texts)},
    )
