"""Block-wise image masking and BERT-style text masking."""

import numpy as np
import pytest
import torch

from tasks.data.masking import (
    IMAGE_MASK_RATIO,
    PAIR_MASK_PROB,
    TEXT_ONLY_MASK_PROB,
    BlockMaskGenerator,
    mask_text,
)


def test_paper_defaults():
    assert (TEXT_ONLY_MASK_PROB, PAIR_MASK_PROB, IMAGE_MASK_RATIO) == (0.15, 0.5, 0.4)
    assert BlockMaskGenerator().num_masking_patches == round(0.4 * 196)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(input_size=(14, 14)),
        dict(input_size=(14, 14), num_masking_patches=75),
        dict(input_size=(4, 4)),  # min_num_patches=16 is clamped
        dict(input_size=(2, 7), mask_ratio=0.5),
        dict(input_size=1, num_masking_patches=1),  # no block fits: random fill
    ],
)
def test_block_mask_exact_count(kwargs):
    gen = BlockMaskGenerator(**kwargs)
    rng = np.random.default_rng(0)
    for _ in range(50):
        mask = gen(rng)
        assert mask.dtype == bool and mask.shape == (gen.height, gen.width)
        assert int(mask.sum()) == gen.num_masking_patches


def test_block_mask_is_seeded():
    gen = BlockMaskGenerator()
    first = [gen(np.random.default_rng(7)) for _ in range(2)]
    assert np.array_equal(first[0], first[1])
    rng = np.random.default_rng(7)
    draws = [gen(rng) for _ in range(5)]
    assert any(not np.array_equal(draws[0], d) for d in draws[1:])
    assert not np.array_equal(gen(np.random.default_rng(7)), gen(np.random.default_rng(8)))


def test_single_block_is_a_rectangle_within_the_bounds():
    gen = BlockMaskGenerator(input_size=(14, 14), num_masking_patches=40, min_num_patches=16)
    rng = np.random.default_rng(1)
    aspects = []
    for _ in range(200):
        mask = np.zeros((14, 14), dtype=bool)
        added = gen.add_block(mask, 40, rng)
        if added == 0:
            continue
        rows, cols = np.nonzero(mask)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert h * w == added == int(mask.sum())  # a filled rectangle
        assert 1 <= added <= 40 and h < 14 and w < 14
        # sides are rounded from sqrt(area*aspect), sqrt(area/aspect) with area in [16, 40]
        assert np.sqrt(16 * 0.3) - 0.5 <= h <= np.sqrt(40 / 0.3) + 0.5
        aspects.append(h / w)
    assert len(aspects) > 150
    assert min(aspects) < 0.6 and max(aspects) > 1.6  # both orientations occur


def test_blocks_make_the_mask_clustered():
    # Block masks have far more masked 4-neighbours than a uniform random mask with the same count.
    gen = BlockMaskGenerator()
    rng = np.random.default_rng(3)

    def neighbour_pairs(m):
        return int((m[1:] & m[:-1]).sum() + (m[:, 1:] & m[:, :-1]).sum())

    block = np.mean([neighbour_pairs(gen(rng)) for _ in range(20)])
    uniform = []
    for _ in range(20):
        m = np.zeros(196, dtype=bool)
        m[rng.choice(196, gen.num_masking_patches, replace=False)] = True
        uniform.append(neighbour_pairs(m.reshape(14, 14)))
    assert block > 1.5 * np.mean(uniform)


def _batch(rows=2000, length=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, length + 1, (rows,), generator=g)
    ids = torch.randint(4, 1000, (rows, length), generator=g)
    positions = torch.arange(length).unsqueeze(0)
    padding = (positions >= lengths.unsqueeze(1)).long()
    ids[:, 0] = 0
    ids[torch.arange(rows), lengths - 1] = 2
    ids[padding.bool()] = 1
    return ids, padding


def test_mask_text_ratio_and_80_10_10():
    ids, padding = _batch(rows=8000)
    out, labels, masked = mask_text(ids, padding, mask_prob=0.15, mask_id=1001, vocab_size=1002,
                                    generator=torch.Generator().manual_seed(0))
    assert out.shape == ids.shape and out.dtype == torch.long and masked.dtype == torch.bool
    real = (padding == 0) & (ids != 0) & (ids != 2)
    n = real.sum(1)
    expected = torch.tensor([max(1, round(v * 0.15)) for v in n.tolist()])
    assert torch.equal(masked.sum(1), expected)
    assert not masked[~real].any()  # bos, eos and pad never masked
    assert torch.equal(labels[masked], ids[masked]) and (labels[~masked] == -100).all()
    assert torch.equal(out[~masked], ids[~masked])

    total = int(masked.sum())
    as_mask = int((out[masked] == 1001).sum()) / total
    changed = (out[masked] != 1001) & (out[masked] != ids[masked])
    kept = int((out[masked] == ids[masked]).sum()) / total
    assert total > 20000
    assert abs(as_mask - 0.8) < 0.02 and abs(int(changed.sum()) / total - 0.1) < 0.015
    assert abs(kept - 0.1) < 0.015  # includes ~0.1% random draws equal to the original
    replaced = out[masked][changed]
    assert int(replaced.min()) >= 3 and int(replaced.max()) < 1001


def test_mask_text_pairs_and_eos_option():
    ids, padding = _batch(rows=500)
    gen = torch.Generator().manual_seed(1)
    _, _, masked = mask_text(ids, padding, mask_prob=PAIR_MASK_PROB, mask_id=1001, vocab_size=1002,
                             generator=gen)
    real = ((padding == 0) & (ids != 0) & (ids != 2)).sum(1)
    assert torch.equal(masked.sum(1), torch.tensor([max(1, round(v * 0.5)) for v in real.tolist()]))
    _, _, masked = mask_text(ids, padding, mask_prob=1.0, mask_id=1001, vocab_size=1002, generator=gen,
                             special_ids=(0, 1))
    assert masked[ids == 2].all() and not masked[ids == 0].any() and not masked[padding.bool()].any()


def test_mask_text_determinism_and_edge_cases():
    ids, padding = _batch(rows=64)

    def run(seed):
        return mask_text(ids, padding, mask_prob=0.15, mask_id=1001, vocab_size=1002,
                         generator=torch.Generator().manual_seed(seed))

    a, b, c = run(5), run(5), run(6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[2], c[2])

    # a row with a single real token still gets one mask; a row with none gets none
    tiny = torch.tensor([[0, 50, 2, 1], [0, 2, 1, 1]])
    pad = torch.tensor([[0, 0, 0, 1], [0, 0, 1, 1]])
    _, labels, masked = mask_text(tiny, pad, mask_prob=0.15, mask_id=1001, vocab_size=1002,
                                  generator=torch.Generator().manual_seed(0))
    assert masked.tolist() == [[False, True, False, False], [False] * 4]
    assert labels.tolist() == [[-100, 50, -100, -100], [-100] * 4]
    with pytest.raises(ValueError, match="mask_prob"):
        mask_text(tiny, pad, mask_prob=1.5, mask_id=1001, vocab_size=1002, generator=torch.Generator())
    with pytest.raises(ValueError, match="padding_mask"):
        mask_text(tiny, pad[:, :2], mask_prob=0.5, mask_id=1001, vocab_size=1002, generator=torch.Generator())
