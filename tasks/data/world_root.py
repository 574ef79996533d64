"""Where a benchmark world is: the manifest file that marks a built world, and ``world:<profile>`` roots.

The world is built by ``harness.world`` (``harness data world``); tasks read a built one as a data root
(a directory holding :data:`MANIFEST_NAME`), and configs name one as ``root: "world:<profile>"``, which
the harness resolves to the built directory. Both floors read these names from here (tasks may not
import harness).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST_NAME", "ROOT_PREFIX", "is_world_dir", "load_manifest", "world_profile"]

MANIFEST_NAME = "world.json"
ROOT_PREFIX = "world:"


def world_profile(root: Any) -> str | None:
    """The world profile a data root names (``"world:mini"`` -> ``"mini"``); None for any other root.

    Raises:
        ValueError: ``root`` is ``"world:"`` without a profile.
    """
    if not (isinstance(root, str) and root.startswith(ROOT_PREFIX)):
        return None
    profile = root[len(ROOT_PREFIX):]
    if not profile:
        raise ValueError(f"data root {root!r} names no world profile: write {ROOT_PREFIX}<profile>, "
                         f"e.g. {ROOT_PREFIX}mini")
    return profile


def is_world_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a built benchmark world (it holds the manifest)."""
    return (Path(path) / MANIFEST_NAME).is_file()


def load_manifest(world_dir: str | os.PathLike) -> dict:
    """The manifest of a built world; ``FileNotFoundError`` if the directory holds none."""
    path = Path(world_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {world_dir} is not a built world (run build_world)")
    return json.loads(path.read_text(encoding="utf-8"))
