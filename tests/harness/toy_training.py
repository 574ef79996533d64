"""A tiny BEiT-3 regression task for trainer tests; also runnable as a script (SIGKILL, torchrun).

    python tests/harness/toy_training.py OUT_DIR MAX_STEPS [resume]
    torchrun --nproc_per_node 2 tests/harness/toy_training.py OUT_DIR MAX_STEPS --no-drop-path [--fsdp]
"""
import argparse

import torch
from torch import nn

import backbones
from harness.config import TrainConfig
from harness.train import train


class ToyModel(nn.Module):
    """Tiny backbone (drop path on, so the RNG state matters) + a linear head regressing a target."""

    def __init__(self, drop_path_rate=0.2):
        super().__init__()
        backbone = backbones.create_model(
            "beit3_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2,
            vocab_size=20, drop_path_rate=drop_path_rate,
        )
        self.beit3 = backbone.beit3
        self.head = nn.Linear(16, 1)

    def get_num_layers(self):
        return 2

    def forward(self, batch):
        x = self.beit3(visual_tokens=batch["image"], textual_tokens=batch["text"])["encoder_out"]
        pred = self.head(x[:, 0]).squeeze(-1)
        loss = (pred - batch["target"]).pow(2).mean() * batch.get("scale", torch.tensor(1.0))
        return {"loss": loss, "mse": loss.detach()}


class ToyData:
    """Batch ``i`` is a pure function of (seed, i): the data position is all the state there is.

    Under DDP each rank takes its share of the same 4 samples, so N ranks see what one process sees.
    """

    def __init__(self, seed=0, nan_at=None, rank=0, world_size=1):
        self.seed, self.position, self.nan_at = seed, 0, nan_at
        self.rank, self.world_size = rank, world_size
        self.samples_per_batch = 4 // world_size

    def next_batch(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.position)
        self.position += 1
        image = torch.randn(4, 3, 16, 16, generator=gen)
        batch = {
            "image": image,
            "text": torch.randint(3, 20, (4, 5), generator=gen),
            "target": image.mean(dim=(1, 2, 3)) * 3,
        }
        share = slice(self.rank * self.samples_per_batch, (self.rank + 1) * self.samples_per_batch)
        batch = {k: v[share] for k, v in batch.items()}
        if self.nan_at is not None and self.position >= self.nan_at:
            batch["scale"] = torch.tensor(float("nan"))
        return batch

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def toy_config(out_dir, max_steps, **overrides):
    values = dict(task="toy", out_dir=str(out_dir), max_steps=max_steps, warmup_steps=2, lr=3e-3,
                  ckpt_interval=1, keep_last=3, log_interval=2, progress=False)
    values.update(overrides)
    return TrainConfig(**values)


def run(out_dir, max_steps, resume=False, drop_path_rate=0.2, info=None, **overrides):
    torch.manual_seed(1234)  # model init; identical in every process
    model = ToyModel(drop_path_rate)
    rank, world = (info.rank, info.world_size) if info is not None else (0, 1)
    config = toy_config(out_dir, max_steps, resume=resume, **overrides)
    return train(config, model, ToyData(rank=rank, world_size=world), info=info)


if __name__ == "__main__":
    from harness.distributed import process_group

    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("max_steps", type=int)
    parser.add_argument("resume", nargs="?", default="")
    parser.add_argument("--no-drop-path", action="store_true")
    parser.add_argument("--fsdp", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with process_group() as info:
        run(args.out_dir, args.max_steps, resume=bool(args.resume), info=info,
            drop_path_rate=0.0 if args.no_drop_path else 0.2, parallel="fsdp" if args.fsdp else "ddp")
