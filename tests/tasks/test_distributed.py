"""all_gather_with_grad / clip_loss across two CPU processes (gloo) equal the single-process full batch."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from tasks.distributed import all_gather_with_grad, get_rank, get_world_size, is_distributed
from tasks.retrieval import clip_loss

WORLD = 2
PER_RANK = 3


def test_single_process_without_init():
    assert not is_distributed() and get_rank() == 0 and get_world_size() == 1
    x = torch.randn(4, 2, requires_grad=True)
    assert all_gather_with_grad(x) is x


def _features():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(WORLD * PER_RANK, 8, generator=g), dim=-1)
    text = F.normalize(torch.randn(WORLD * PER_RANK, 8, generator=g), dim=-1)
    return image, text


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        image, text = _features()
        rows = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        local_image = image[rows].clone().requires_grad_(True)
        local_text = text[rows].clone().requires_grad_(True)
        gathered = all_gather_with_grad(local_image)
        loss, per_image, _ = clip_loss(local_image, local_text, 5.0)
        loss.backward()
        torch.save({"loss": loss.detach(), "gathered": gathered.detach(), "per_image": per_image.detach(),
                    "grad_image": local_image.grad, "grad_text": local_text.grad},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_clip_loss_matches_the_full_batch(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    image, text = _features()
    full_image, full_text = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
    full_loss, full_per_image, _ = clip_loss(full_image, full_text, 5.0)
    full_loss.backward()

    for r, out in enumerate(ranks):
        rows = slice(r * PER_RANK, (r + 1) * PER_RANK)
        torch.testing.assert_close(out["gathered"], image)  # rank order
        torch.testing.assert_close(out["per_image"], full_per_image[rows])  # labels arange + rank * n
        # DDP averages parameter gradients over ranks; the feature gradient of each rank is the sum of
        # every rank's loss gradient, i.e. WORLD x the gradient of the mean (full-batch) loss.
        torch.testing.assert_close(out["grad_image"], WORLD * full_image.grad[rows])
        torch.testing.assert_close(out["grad_text"], WORLD * full_text.grad[rows])
    torch.testing.assert_close(sum(out["loss"] for out in ranks) / WORLD, full_loss.detach())
