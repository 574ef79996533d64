"""Command line: ``python -m harness.world --profile smoke --out DIR``."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from .build import build_world
from .profiles import PROFILES


def _size_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    """Build a world and print a one-line summary, then its prior-only baselines."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.world",
        description="Build the BEiT-3 benchmark world (synthetic data in the real data-set formats).",
        epilog="examples:\n  python -m harness.world --profile smoke --out data/world/smoke\n"
               "  python -m harness.world --profile mini --seed 1 --out /tmp/world-mini",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", default="smoke", choices=sorted(PROFILES), help="world size (default: smoke)")
    parser.add_argument("--out", required=True, type=Path, help="output directory (replaced if it holds a world)")
    parser.add_argument("--seed", default=0, type=int, help="seed of every random stream (default: 0)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    manifest = build_world(args.out, profile=args.profile, seed=args.seed)
    seconds = time.perf_counter() - start
    size_mb = _size_bytes(args.out) / 2**20
    print(f"built world profile={args.profile} seed={args.seed} at {args.out} in {seconds:.1f}s ({size_mb:.1f} MiB)")
    print(json.dumps(manifest["baselines"], indent=2))
    return 0
