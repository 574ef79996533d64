"""The table registry: every table's caption, the module that defines it, and lookup by name.

A table module registers its spec class (lm-eval/timm style)::

    @register_table("table2")
    class Table2(TableSpec): ...

The modules are imported on first lookup (``TABLE_MODULES``), so nothing here imports a table and
no table imports this package's ``__init__``.
"""
from __future__ import annotations

import importlib
from typing import Callable, TypeVar

from harness.profiles import unknown_name_error
from harness.tables.types import TableSpec

# Captions of the paper's tables (arXiv 2208.10442v2 numbering; abridged). Tables 11-17 are the
# hyperparameter appendix, which the recipes implement rather than reproduce.
CAPTIONS: dict[str, str] = {
    "table1": "Overview of BEiT-3 results on various vision and vision-language benchmarks",
    "table2": "Model configuration of BEiT-3. The architecture layout follows ViT-giant",
    "table3": "Pretraining data of BEiT-3. All the data are academically accessible",
    "table4": "Results of visual question answering, visual reasoning, and image captioning tasks",
    "table5": "Finetuning results of image-to-text and text-to-image retrieval on COCO and Flickr30K",
    "table6": "Zero-shot image-to-text and text-to-image retrieval on Flickr30K",
    "table7": "Results of object detection and instance segmentation on COCO benchmark",
    "table8": "Results of semantic segmentation on ADE20K",
    "table9": "Top-1 accuracy on ImageNet-1K",
    "table10": "Finetuning results of image-text retrieval on COCO and Flickr30K without intermediate finetuning",
}
# Tables of the harness's own, with no counterpart in the paper (and no results/paper file): listed
# after the paper's.
HARNESS_CAPTIONS: dict[str, str] = {
    "compare": "BEiT-3 MDM vs VLMo staged vs no pretraining, paired over seeds, on every vision-language task",
    "released": "The released finetuned checkpoints (base, large): published vs measured, same weights",
}
# Table name -> the module that registers it (imported on first lookup).
TABLE_MODULES: dict[str, str] = {
    "table1": "harness.tables.table1",
    "table2": "harness.tables.table2",
    "table3": "harness.tables.table3",
    "table4": "harness.tables.table4",
    "table5": "harness.tables.table5",
    "table6": "harness.tables.table6",
    "table7": "harness.tables.table7",
    "table8": "harness.tables.table8",
    "table9": "harness.tables.table9",
    "table10": "harness.tables.table10",
    "compare": "harness.tables.compare_recipes",
    "released": "harness.tables.released",
}


def captions() -> dict[str, str]:
    """Every table's caption: the paper's in the paper's order, then the harness's own."""
    return {**CAPTIONS, **HARNESS_CAPTIONS}


class TableNotImplementedError(NotImplementedError):
    """A paper table the harness knows the caption of but cannot regenerate yet."""


_TABLES: dict[str, TableSpec] = {}
_SpecT = TypeVar("_SpecT", bound=type[TableSpec])


def register_table(name: str) -> Callable[[_SpecT], _SpecT]:
    """Class decorator: registers one instance of a ``TableSpec`` subclass under ``name``."""
    if name not in captions():
        raise ValueError(f"{name!r} is neither a table of the paper nor of the harness; known: {', '.join(captions())}")

    def decorator(cls: _SpecT) -> _SpecT:
        if name in _TABLES:
            raise KeyError(f"table {name!r} is already registered (by {type(_TABLES[name]).__name__})")
        _TABLES[name] = cls(name=name, title=captions()[name])
        return cls

    return decorator


def _load(name: str) -> None:
    if name not in _TABLES and name in TABLE_MODULES:
        importlib.import_module(TABLE_MODULES[name])


def list_tables(available_only: bool = True) -> list[str]:
    """Names of the registered tables, or of all tables, in the paper's order (the harness's own last)."""
    for name in TABLE_MODULES:
        _load(name)
    return [n for n in captions() if n in _TABLES or not available_only]


def get_table(name: str) -> TableSpec:
    """The registered spec of table ``name``.

    Raises:
        UnknownNameError: (a KeyError) ``name`` is no table of the paper or the harness; lists the known ones.
        TableNotImplementedError: the paper has the table but the harness cannot regenerate it yet.
    """
    _load(name)
    if name in _TABLES:
        return _TABLES[name]
    if name in CAPTIONS:
        raise TableNotImplementedError(
            f"{name} ({CAPTIONS[name]}) is not implemented yet; available tables: "
            f"{', '.join(list_tables())}."
        )
    raise unknown_name_error("table", name, captions())
