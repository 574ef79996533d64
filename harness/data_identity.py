"""What data a run reads, as a short string that goes into its config hash: a changed data set is a new run.

- a generated benchmark world (``root: "world:<profile>[:<seed>]"``, or a directory holding
  ``world.json``): its profile, seed, generator version and a digest of the profile's sizes and
  difficulty (a world is a pure function of the four);
- a folder source (ImageFolder-style images, annotation files): a manifest digest, the sha256 of every
  file's relative path and size, so a deleted, added or truncated file changes it;
- a root that does not exist (a plan made on a machine without the data): ``missing:<root>``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from tasks.data.world_root import world_profile

# Caches the harness writes into a data root on first use (the fitted codebook tokenizer of
# tasks.pretrain_data): not part of what the run reads as data.
CACHE_DIRS = frozenset({"visual_tokenizer"})


def data_identity(data: Mapping[str, Any]) -> str:
    """The identity of ``data["root"]`` ("" when the data config names no root)."""
    root = data.get("root")
    if not root:
        return ""
    root = str(root)
    world = world_profile(root)  # the one parser of "world:<profile>[:<seed>]" roots
    if world is not None:
        from harness.world import VERSION, get_profile
        from harness.world.profiles import config_digest

        profile, _, seed = world.partition(":")
        digest = config_digest(get_profile(profile).to_dict())
        return f"world:{profile}:seed={seed or 0}:version={VERSION}:config={digest}"
    return _path_identity(str(Path(root).absolute()))


@functools.lru_cache(maxsize=64)
def _path_identity(root: str) -> str:
    # Cached per process: a command hashes the same config many times, and its data does not change meanwhile.
    path = Path(root)
    manifest = path / "world.json"
    if manifest.is_file():
        from harness.world.profiles import config_digest

        world = json.loads(manifest.read_text(encoding="utf-8"))
        return (f"world:{world.get('profile')}:seed={world.get('seed')}:version={world.get('version')}"
                f":config={config_digest(world.get('config', {}))}")
    if path.is_file():
        return f"file:{path.name}:{path.stat().st_size}"
    if not path.is_dir():
        return f"missing:{root}"
    return f"folder:{folder_digest(path)}"


def folder_digest(folder: Path) -> str:
    """sha256 over the sorted ``relative/path<TAB>size`` lines of every file under ``folder``."""
    lines = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in CACHE_DIRS)
        for name in files:
            if name.startswith("."):
                continue
            file = Path(current) / name
            lines.append(f"{file.relative_to(folder).as_posix()}\t{file.stat().st_size}")
    return hashlib.sha256("\n".join(sorted(lines)).encode("utf-8")).hexdigest()
