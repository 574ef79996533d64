"""The one "did you mean" hint of the project: close names for a misspelt name or key."""
from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["did_you_mean"]


def did_you_mean(name: str, known: Iterable[str], n: int = 3) -> str:
    """``" (did you mean a, b?)"`` with up to ``n`` names of ``known`` close to ``name``, or ``""``.

    Written right after the unknown name: ``f"unknown key {key}{did_you_mean(key, valid)}"``.
    """
    close = difflib.get_close_matches(name, list(known), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""
