"""Shared by the fine-tuning tests: a tiny task model on the smoke world's tokenizer, a few AdamW steps."""
import torch

import tasks
from backbones.tokenizers import TextTokenizer

TINY = dict(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2)


def tiny_model(world, task, **overrides):
    tokenizer = TextTokenizer(world / "spm" / "world.model")
    torch.manual_seed(0)
    return tasks.build_model(task, "beit3_tiny_patch16_224", **{**TINY, "vocab_size": tokenizer.vocab_size, **overrides})


def train_steps(task, model, batch, steps, lr=2e-3):
    """``steps`` optimizer steps of the task's training step on one batch: (losses, last output)."""
    step = tasks.training_step(task)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        out = step(model, batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    return losses, out
