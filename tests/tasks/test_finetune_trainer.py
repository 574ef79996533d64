"""A fine-tuning task through the real trainer: build_data + training_step + harness.train.train,
and a run that crashes and resumes ends bit-identical to an uninterrupted one."""
import pytest
import torch

import tasks
from backbones.tokenizers import TextTokenizer


def run(world, out_dir, *, resume=False, crash_at=None):
    from harness.config import TrainConfig
    from harness.train import train

    vocab_size = TextTokenizer(world / "spm" / "world.model").vocab_size
    overrides = {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2,
                 "vocab_size": vocab_size, "drop_path_rate": 0.1}
    cfg = TrainConfig(task="nlvr2", model_overrides=overrides, data={"root": str(world), "batch_size": 4},
                      max_steps=6, warmup_steps=1, lr=1e-3, ckpt_interval=2, log_interval=1, out_dir=str(out_dir),
                      progress=False, resume=resume, seed=3)
    torch.manual_seed(0)
    model = tasks.build_model(cfg.task, cfg.model, **cfg.model_overrides)
    data = tasks.build_data(cfg.task, cfg.data, model=model, seed=cfg.seed)
    if crash_at is not None:
        original = data.next_batch

        def crashing():
            if data.step == crash_at:
                raise KeyboardInterrupt
            return original()

        data.next_batch = crashing
    return train(cfg, model, data, step_fn=tasks.training_step(cfg.task))


def test_nlvr2_trains_through_the_trainer_and_resumes_bit_identically(world, tmp_path):
    from harness.checkpointing import latest_checkpoint, load_checkpoint_file

    result = run(world, tmp_path / "straight")
    assert result.step == 6 and result.samples_seen == 24
    assert {"loss", "acc", "grad_norm"} <= result.losses.keys() and torch.isfinite(torch.tensor(result.losses["loss"]))

    with pytest.raises(KeyboardInterrupt):
        run(world, tmp_path / "crashed", crash_at=5)  # in step 6, after the checkpoint of step 4
    resumed = run(world, tmp_path / "crashed", resume=True)
    assert resumed.resumed_from_step == 4
    straight = load_checkpoint_file(latest_checkpoint(tmp_path / "straight"))
    crashed = load_checkpoint_file(latest_checkpoint(tmp_path / "crashed"))
    assert straight["data"] == crashed["data"] and straight["data"]["step"] == 6
    for key, value in straight["model"].items():
        assert torch.equal(value, crashed["model"][key]), key
