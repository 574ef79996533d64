"""Caption decoding with the KV cache against recomputing the whole sequence at every step.

Both paths run the same beam search (``tasks.captioning.generate``) on the same model and images and
must return the same captions; the difference is the model work per step. With the cache, a step
after the first feeds two tokens (previous word + MASK) against the cached keys/values; without it,
a step re-encodes the image and the whole caption so far for every beam. The model's weights are
random with the EOS logit pushed down, so every caption runs to ``max_len`` (the fixed-length case
the speed-up is quoted for).

    python benchmarks/bench_captioning.py                      # base-ish 6 x 384 at 224, 2 images
    python benchmarks/bench_captioning.py --images 4 --depth 12 --embed-dim 768 --rounds 1
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import tasks
from tasks.captioning import SpecialTokens, generate


def build(args: argparse.Namespace) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    model = tasks.build_model(
        "captioning", "beit3_base_patch16_224", img_size=args.img_size, embed_dim=args.embed_dim,
        depth=args.depth, num_heads=args.embed_dim // 64, vocab_size=args.vocab_size,
    ).eval()
    with torch.no_grad():
        model.mlm_head.bias[2] -= 100.0  # no EOS: every caption is max_len long
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--embed-dim", type=int, default=384)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--vocab-size", type=int, default=64010)
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds per path (alternating)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (0: leave the default). 1, because the per-step ops of cached decoding "
                        "are tiny and multi-threaded OpenMP on a busy shared machine slows them down many times")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build(args)
    special = SpecialTokens(bos=0, eos=2, mask=args.vocab_size - 9, pad=1)  # 64001 for the real vocabulary
    images = torch.randn(args.images, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(1))
    run = {
        cache: (lambda cache=cache: generate(model, images, special, num_beams=args.beams, max_len=args.max_len,
                                             use_cache=cache))
        for cache in (True, False)
    }
    run[True]()  # warm-up (allocator, kernels)

    times: dict[bool, list[float]] = {True: [], False: []}
    outputs = {}
    for _ in range(args.rounds):
        for cache in (True, False):
            start = time.perf_counter()
            outputs[cache] = run[cache]()
            times[cache].append(time.perf_counter() - start)

    same = torch.equal(outputs[True], outputs[False])
    lengths = (outputs[True] != special.pad).sum(dim=1).tolist()
    cached, full = statistics.median(times[True]), statistics.median(times[False])
    print(f"model: D={args.embed_dim} depth={args.depth} img={args.img_size} "
          f"({(args.img_size // 16) ** 2 + 1} image tokens) vocab={args.vocab_size}; torch threads "
          f"{torch.get_num_threads()}; {args.images} images x {args.beams} beams, max_len {args.max_len}")
    print(f"caption lengths (incl. <s> </s>): {lengths}; same captions with and without cache: {same}")
    print(f"with KV cache:    {cached:8.3f} s  (median of {args.rounds}; {cached / args.images:.3f} s/image)")
    print(f"without KV cache: {full:8.3f} s  (median of {args.rounds}; {full / args.images:.3f} s/image)")
    print(f"speed-up: {full / cached:.1f}x")
    if not same:
        raise SystemExit("captions differ between the cached and the uncached decoding")


if __name__ == "__main__":
    main()
