"""A tiny BEiT-3 regression task for trainer tests; also runnable as a script (the SIGKILL test).

    python tests/harness/toy_training.py OUT_DIR MAX_STEPS [resume]
"""
import sys

import torch
from torch import nn

import backbones
from harness.config import TrainConfig
from harness.train import train


class ToyModel(nn.Module):
    """Tiny backbone (drop path on, so the RNG state matters) + a linear head regressing a target."""

    def __init__(self):
        super().__init__()
        backbone = backbones.create_model(
            "beit3_tiny_patch16_224", img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2,
            vocab_size=20, drop_path_rate=0.2,
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
    """Batch ``i`` is a pure function of (seed, i): the data position is all the state there is."""

    samples_per_batch = 4

    def __init__(self, seed=0, nan_at=None):
        self.seed, self.position, self.nan_at = seed, 0, nan_at

    def next_batch(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.position)
        self.position += 1
        image = torch.randn(4, 3, 16, 16, generator=gen)
        batch = {
            "image": image,
            "text": torch.randint(3, 20, (4, 5), generator=gen),
            "target": image.mean(dim=(1, 2, 3)) * 3,
        }
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


def run(out_dir, max_steps, resume=False, **overrides):
    torch.manual_seed(1234)  # model init; identical in every process
    model = ToyModel()
    return train(toy_config(out_dir, max_steps, resume=resume, **overrides), model, ToyData())


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(sys.argv[1], int(sys.argv[2]), resume=len(sys.argv) > 3)
