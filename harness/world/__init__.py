"""The benchmark world: a seeded synthetic universe of shapes written in the real data-set formats.

``build_world(out_dir, profile, seed)`` writes it (ImageNet-21K-style image folder, text corpus,
WebDataset caption shards, Karpathy COCO / Flickr30K, VQAv2, NLVR2, ImageNet class folders, COCO
instances, ADE20K and a SentencePiece model) so that the project's real readers serve it unchanged;
``ensure_world(profile, root, seed)`` builds it once and reuses it. ``python -m harness.world --help``.
"""

from .build import (
    MANIFEST_NAME,
    VERSION,
    build_world,
    ensure_world,
    load_manifest,
    resolve_world_root,
    world_dir_name,
)
from .cli import main
from .profiles import PROFILES, WorldProfile, get_profile

__all__ = [
    "VERSION",
    "MANIFEST_NAME",
    "PROFILES",
    "WorldProfile",
    "get_profile",
    "build_world",
    "ensure_world",
    "load_manifest",
    "resolve_world_root",
    "world_dir_name",
    "main",
]
