"""tasks.finetune_data: the deterministic, resumable sampler shared by the fine-tuning tasks."""
import itertools
import json
import random

import numpy as np
import pytest
import torch
from torch.utils.data import IterableDataset

from tasks.data.images import DataError
from tasks.finetune_data import (
    FinetuneData,
    TransformFields,
    derive_seed,
    eval_batches,
    load_text_tokenizer,
    merge_config,
    resolve_root,
    seeded_global_rngs,
)


class Augmented:
    """A map-style reader whose items draw from all three global RNGs, as the official transforms do."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        noise = random.random() + float(np.random.rand()) + torch.rand(()).item()
        return {"index": index, "noise": noise}


def collate(items, generator=None):
    return {"index": torch.tensor([i["index"] for i in items]),
            "noise": torch.tensor([i["noise"] for i in items], dtype=torch.float64),
            "batch_draw": torch.rand(2, generator=generator) + float(np.random.rand())}


def make(size=10, **kwargs):
    kwargs = {"batch_size": 3, "seed": 5, **kwargs}
    return FinetuneData(Augmented(size), collate, **kwargs)


def take(data, n):
    return [data.next_batch() for _ in range(n)]


def assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key], key


def test_batches_are_a_function_of_seed_and_position_not_of_the_global_rng():
    first = take(make(), 7)
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    assert_same(first, take(make(), 7))
    other = take(make(seed=6), 7)
    assert not all(torch.equal(a["noise"], b["noise"]) for a, b in zip(first, other))


def test_reading_leaves_the_global_rngs_untouched():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = (torch.rand(()).item(), float(np.random.rand()), random.random())
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    take(make(), 2)
    assert (torch.rand(()).item(), float(np.random.rand()), random.random()) == expected


def test_epochs_are_permutations_with_the_tail_dropped_and_ranks_disjoint():
    data = make(size=10)  # 3 batches of 3 per epoch, one item dropped
    assert data.batches_per_epoch == 3
    epoch0 = torch.cat([b["index"] for b in take(data, 3)]).tolist()
    epoch1 = torch.cat([b["index"] for b in take(data, 3)]).tolist()
    assert len(set(epoch0)) == 9 and len(set(epoch1)) == 9 and epoch0 != epoch1
    assert data.epoch == 2
    ranks = [make(size=12, batch_size=2, rank=r, world_size=3) for r in range(3)]
    seen = [torch.cat([b["index"] for b in take(d, 2)]).tolist() for d in ranks]
    assert sorted(itertools.chain(*seen)) == list(range(12))  # one epoch: every item once, on exactly one rank


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_gives_the_same_next_batches(num_workers):
    straight = take(make(num_workers=num_workers), 8)
    data = make(num_workers=num_workers)
    take(data, 5)
    state = json.loads(json.dumps(data.state_dict()))  # survives a checkpoint round trip
    resumed = make(num_workers=num_workers)
    resumed.load_state_dict(state)
    assert_same(straight[5:], take(resumed, 3))


def test_workers_give_the_batches_of_the_main_process():
    assert_same(take(make(), 4), take(make(num_workers=1), 4))


def test_a_state_of_another_run_is_refused():
    state = make().state_dict()
    with pytest.raises(ValueError, match="batch_size: saved 3 vs now 2"):
        make(batch_size=2).load_state_dict(state)
    make(batch_size=2).load_state_dict(state, strict=False)


def test_too_few_items_for_one_batch_per_rank_is_an_error():
    with pytest.raises(DataError, match="4 items: not enough for one batch of 3 on each of 2 rank"):
        make(size=4, world_size=2)


def test_step_key_counts_optimizer_steps():
    steps = [b["global_step"] for b in take(make(step_key="global_step", steps_per_update=2), 5)]
    assert steps == [0, 0, 1, 1, 2]


class Stream(IterableDataset):
    def __init__(self, size):
        self.size = size

    def __iter__(self):
        return iter([{"image": torch.full((1,), float(i)), "index": i, "noise": 0.0} for i in range(self.size)])


def test_iterable_sources_stream_and_resume_mid_epoch():
    def stream_data():
        return FinetuneData(Stream(7), collate, batch_size=3, seed=0, shuffle_buffer=4,
                            item_fn=TransformFields(lambda x: x + torch.rand(1)))

    straight = stream_data()
    batches = take(straight, 5)
    assert sorted(torch.cat([b["index"] for b in batches[:3]]).tolist()[:7]) == list(range(7))  # epoch 0
    data = stream_data()
    take(data, 3)
    resumed = stream_data()
    resumed.load_state_dict(data.state_dict())
    assert resumed.state_dict()["reader"] == {"epoch": 1, "position": 2}
    assert_same(batches[3:], take(resumed, 2))


def test_eval_batches_keep_order_and_seed_items():
    batches = list(eval_batches(Augmented(5), collate, 2))
    assert [b["index"].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    again = list(eval_batches(Augmented(5), collate, 2))
    assert all(torch.equal(a["noise"], b["noise"]) for a, b in zip(batches, again))


def test_seeded_global_rngs_and_seed_derivation():
    with seeded_global_rngs(3):
        a = (random.random(), float(np.random.rand()), torch.rand(()).item())
    with seeded_global_rngs(3):
        assert (random.random(), float(np.random.rand()), torch.rand(()).item()) == a
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3) != derive_seed(1, 2, 4)
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(-1)


def test_config_keys_and_roots(tmp_path):
    with pytest.raises(ValueError, match="unknown key.*batchsize \\(did you mean batch_size"):
        merge_config({"batchsize": 2}, {"batch_size": 1, "root": None}, "toy")
    with pytest.raises(ValueError, match="needs 'root'"):
        resolve_root({}, "vqav2")
    plain = resolve_root({"root": str(tmp_path)}, "vqav2")
    assert plain.data == plain.base == tmp_path and plain.manifest is None
    with pytest.raises(ValueError, match="needs 'tokenizer'"):
        load_text_tokenizer(None, plain)
    (tmp_path / "world.json").write_text(json.dumps({"datasets": {"vqav2": {"root": "coco"}, "pairs": {}}}))
    world = resolve_root({"root": str(tmp_path)}, "vqav2")
    assert world.data == tmp_path / "coco" and world.file("vqa/q.json") == tmp_path / "coco/vqa/q.json"
    assert resolve_root({"root": str(tmp_path)}, "pairs").data == tmp_path
    with pytest.raises(KeyError, match="has no 'nlvr2' data set"):
        resolve_root({"root": str(tmp_path)}, "nlvr2")
