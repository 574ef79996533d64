"""Build the benchmark world: every data set in its real on-disk format, from one seed.

Each data set is written by its own module (:mod:`.coco_karpathy`, :mod:`.vqav2`, :mod:`.flickr30k`,
:mod:`.pairs`, :mod:`.text`, :mod:`.nlvr2`, :mod:`.imagenet`, :mod:`.image_only`, :mod:`.coco_instances`,
:mod:`.ade20k`, then :mod:`.spm` on their text) and draws from its own random stream
``numpy.random.default_rng([seed, stream])``, so the same seed gives byte-identical files and adding a
data set never changes another one. A world is written into a temporary directory beside its
destination and renamed into place at the end, so an interrupted build never leaves a half-written world.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from tasks.data.world_root import MANIFEST_NAME, load_manifest, world_profile

from . import ade20k, coco_instances, coco_karpathy, flickr30k, image_only, imagenet, nlvr2, pairs, spm, text, vqav2
from .controls import CONTROLS
from .profiles import WorldProfile, get_profile
from .readme import WORLD_NAME, collect_paths, render_readme
from .scenes import BACKGROUND_COLORS, SIZES

__all__ = ["VERSION", "MANIFEST_NAME", "build_world", "ensure_world", "load_manifest", "resolve_world_root",
           "world_dir_name"]

VERSION = "2"


def _build_into(root: Path, prof: WorldProfile, seed: int) -> dict:
    coco, coco_images = coco_karpathy.build(root, prof, seed)
    vqa, questions = vqav2.build(root, prof, seed, coco_images)
    # The tokenizer's training lines keep the world's order: each COCO image's captions, then its questions.
    coco.texts = [line for image, asked in zip(coco_images, questions) for line in (*image.captions, *asked)]
    parts = {
        "image_only": image_only.build(root, prof, seed),
        "text": text.build(root, prof, seed),
        "pairs": pairs.build(root, prof, seed),
        "coco_karpathy": coco,
        "flickr30k": flickr30k.build(root, prof, seed),
        "vqav2": vqa,
        "nlvr2": nlvr2.build(root, prof, seed),
        "imagenet": imagenet.build(root, prof, seed),
        "coco_instances": coco_instances.build(root, prof, seed),
        "ade20k": ade20k.build(root, prof, seed),
    }
    # Distinct lines in first-seen order: questions and class names repeat a lot.
    texts = list(dict.fromkeys(t for part in parts.values() for t in part.texts))
    parts["spm"] = spm.build(root, prof, seed, texts)
    paths: set[str] = set()
    for part in parts.values():
        collect_paths(part.entry, paths)
    manifest = {
        "name": WORLD_NAME,
        "version": VERSION,
        "profile": prof.name,
        "seed": seed,
        "config": prof.to_dict(),
        "datasets": {name: part.entry for name, part in parts.items()},
        "counts": {name: part.counts for name, part in parts.items()},
        "baselines": {name: part.baselines for name, part in parts.items() if part.baselines},
        "vocabulary": {"shapes": list(prof.shapes), "colors": list(prof.colors), "sizes": list(SIZES),
                       "background_colors": list(BACKGROUND_COLORS), "question_families": list(prof.question_families),
                       "statement_templates": list(prof.statement_templates)},
        "controls": CONTROLS,
        "paths": sorted(paths),
    }
    (root / "README.md").write_text(render_readme(manifest), encoding="utf-8")
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _is_complete(world_dir: Path, prof: WorldProfile, seed: int) -> bool:
    try:
        manifest = load_manifest(world_dir)
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if (manifest.get("version"), manifest.get("profile"), manifest.get("seed")) != (VERSION, prof.name, seed):
        return False
    if manifest.get("config") != prof.to_dict():  # the profile's sizes or difficulty changed since
        return False
    return all((world_dir / p).exists() for p in manifest.get("paths", []))


def _publish(tmp: Path, out: Path, replace: bool) -> None:
    """Move the finished world ``tmp`` to ``out``; an existing world there is replaced only if
    ``replace`` (the old one is renamed aside first, then deleted)."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if out.exists() and replace:
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        try:
            os.rename(tmp, out)
        except OSError:
            os.replace(old / out.name, out)  # put the previous world back
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def _build(out: Path, prof: WorldProfile, seed: int, replace: bool) -> dict:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; choose another output directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise FileExistsError(f"{out} is not empty and holds no {MANIFEST_NAME}: refusing to replace it; "
                              "choose a new or empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        manifest = _build_into(tmp, prof, seed)
        _publish(tmp, out, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def build_world(out_dir: str | Path, profile: str = "smoke", seed: int = 0) -> dict:
    """Write the benchmark world to ``out_dir`` and return its manifest (also ``out_dir/world.json``).

    The world is built in a temporary directory beside ``out_dir`` and renamed into place when
    complete; a previous world in ``out_dir`` is replaced, any other non-empty directory is refused.

    Args:
        out_dir: destination directory (created).
        profile: one of :data:`PROFILES` (``"smoke"``: seconds, tests; ``"mini"``: learnable in minutes).
        seed: seed of every random stream; the same seed gives identical files.

    Raises:
        ValueError: unknown profile.
        FileExistsError: ``out_dir`` is a file, or a non-empty directory that is not a world.
    """
    prof = get_profile(profile)
    return _build(Path(out_dir).absolute(), prof, int(seed), replace=True)


def world_dir_name(profile: str, seed: int = 0) -> str:
    """Directory name of a world under a data root: ``{profile}-seed{seed}-v{VERSION}``."""
    return f"{profile}-seed{seed}-v{VERSION}"


def resolve_world_root(root: str) -> str:
    """The built world's directory for a ``world:<profile>`` or ``world:<profile>:<seed>`` data root
    (seed 0 by default; built on first use under the default root, see :func:`ensure_world`); any other
    root unchanged. Another seed draws an independent world of the same profile: the calibration data
    of ``benchmarks/sweep_mini_finetune.py``, disjoint from every reported split."""
    world = world_profile(root)
    if world is None:
        return root
    profile, _, seed = world.partition(":")
    if seed and not seed.isdigit():
        raise ValueError(f"data root {root!r}: the world seed {seed!r} is not a non-negative integer; "
                         "write world:<profile> or world:<profile>:<seed>, e.g. world:mini:1")
    return str(ensure_world(profile, seed=int(seed or 0)))


def ensure_world(profile: str = "smoke", root: str | Path | None = None, seed: int = 0) -> Path:
    """Path of the world ``{root}/{profile}-seed{seed}-v{VERSION}``, building it first if it is missing
    or incomplete (its manifest names another version, seed or profile configuration, or a listed path
    is missing).

    Args:
        profile: one of :data:`PROFILES`.
        root: directory holding worlds; default ``$BEIT3_DATA_ROOT`` if set, else ``./data/world``.
        seed: world seed.
    """
    prof = get_profile(profile)
    if root is None:
        root = os.environ.get("BEIT3_DATA_ROOT") or Path("data") / "world"
    world = Path(root).absolute() / world_dir_name(prof.name, seed)
    if _is_complete(world, prof, seed):
        return world
    from harness.locks import exclusive

    with exclusive(world, f"world {world.name}"):  # one builder; the others wait, then find it complete
        if _is_complete(world, prof, seed):
            return world
        _build(world, prof, seed, replace=(world / MANIFEST_NAME).is_file())
    return world

