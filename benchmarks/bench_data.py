"""Throughput of the vision-language input pipeline: reader + official transform + DataLoader.

Writes synthetic JPEGs and a Karpathy-format ``dataset_coco.json`` into a temporary folder, then
times :class:`tasks.data.karpathy.KarpathyCaptions` (retrieval rows, 5 captions per image) with the
VL train transform (random resized crop + flip + RandomAugment) and the eval transform, through a
``DataLoader`` with 0 and 2 workers. With 0 workers the transforms run in the main process, timed
at torch's default thread count and at 1 thread: the small per-image tensor ops of RandomAugment can
be much slower with several intra-op threads on a busy machine. Prints samples/s per configuration.
Runs in well under a minute on 2 CPU cores with the defaults::

    .venv/bin/python benchmarks/bench_data.py
    .venv/bin/python benchmarks/bench_data.py --sizes 224 384 --num-images 64 --workers 0 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tasks.data.karpathy import KarpathyCaptions
from tasks.data.transforms import build_vl_transform

CAPTIONS_PER_IMAGE = 5


def write_synthetic_coco(root: str, num_images: int, size: int, seed: int = 0) -> str:
    """Write ``num_images`` random ``size``x``size`` JPEGs and their Karpathy file; return its path."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "val2014")
    os.makedirs(folder, exist_ok=True)
    records = []
    for i in range(num_images):
        name = f"COCO_val2014_{i:012d}.jpg"
        # smooth random images compress like photos, unlike white noise
        small = rng.integers(0, 256, (size // 8 + 1, size // 8 + 1, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BILINEAR).save(os.path.join(folder, name), quality=90)
        records.append({"filepath": "val2014", "filename": name, "split": "test", "cocoid": i, "imgid": i,
                        "sentences": [{"raw": f"a synthetic picture number {i} caption {j}"}
                                      for j in range(CAPTIONS_PER_IMAGE)]})
    path = os.path.join(root, "dataset_coco.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"dataset": "coco", "images": records}, f)
    return path


def time_loader(dataset, num_workers: int, batch_size: int, max_samples: int) -> float:
    """Samples per second over ``max_samples`` samples (worker start-up included)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0))
    seen = 0
    start = time.perf_counter()
    for batch in loader:
        seen += batch["image"].shape[0]
        if seen >= max_samples:
            break
    return seen / (time.perf_counter() - start)


def run_benchmark(sizes, workers, num_images: int, batch_size: int, max_samples: int,
                  main_threads=(None,)) -> list[dict]:
    """Time every (size, transform, workers[, main-process threads]) configuration.

    With ``num_workers=0`` the transforms run in this process, at each torch thread count of
    ``main_threads`` (``None`` = torch's default); DataLoader workers always run one thread each.
    """
    rows = []
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        for size in sizes:
            root = os.path.join(tmp, str(size))
            json_path = write_synthetic_coco(root, num_images, size)
            for mode, transform in (("train+randaug", build_vl_transform(True, size, randaug=True)),
                                    ("eval", build_vl_transform(False, size))):
                dataset = KarpathyCaptions(json_path, root, "test", transform=transform)
                torch.manual_seed(0)
                dataset[0]  # warm-up: lazy initialisation of PIL/torchvision kernels
                for num_workers in workers:
                    thread_counts = [t or default_threads for t in main_threads] if num_workers == 0 else [None]
                    for threads in dict.fromkeys(thread_counts):
                        if threads is not None:
                            torch.set_num_threads(threads)
                        rate = time_loader(dataset, num_workers, batch_size, min(max_samples, len(dataset)))
                        torch.set_num_threads(default_threads)
                        rows.append({"size": size, "transform": mode, "workers": num_workers,
                                     "threads": threads if threads is not None else "1/worker",
                                     "samples_per_s": rate})
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| image | transform     | workers | torch threads | samples/s |",
             "|------:|---------------|--------:|--------------:|----------:|"]
    for r in rows:
        lines.append(f"| {r['size']:>5} | {r['transform']:<13} | {r['workers']:>7} | {r['threads']!s:>13} "
                     f"| {r['samples_per_s']:>9.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224], help="image side (source and output)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader num_workers values")
    parser.add_argument("--num-images", type=int, default=48, help="synthetic images per size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-samples", type=int, default=192, help="samples timed per configuration")
    parser.add_argument("--main-threads", type=int, nargs="+", default=[0, 1],
                        help="torch threads for the num_workers=0 runs (0 = torch's default)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = run_benchmark(args.sizes, args.workers, args.num_images, args.batch_size, args.max_samples,
                         main_threads=[t or None for t in args.main_threads])
    print(f"VL input pipeline (KarpathyCaptions + build_vl_transform + DataLoader); {os.cpu_count()} CPUs, "
          f"torch default threads {torch.get_num_threads()}")
    print(format_table(rows))
    print(f"total {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
