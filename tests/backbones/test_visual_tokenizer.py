"""VQ-KD tokenizer (state-dict layout, code path, checkpoint loading) and the fitted patch codebook."""

from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from backbones.tokenizers import (
    PatchCodebookTokenizer,
    VQKDTokenizer,
    build_visual_tokenizer,
    load_vqkd_checkpoint,
)
from backbones.tokenizers.vqkd import VQKDCheckpointError

KEYS_FILE = Path(__file__).resolve().parents[1] / "assets" / "beit2-vqkd-tokenizer-keys.txt"
TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_codes=64, code_dim=8,
            decoder_depth=1, decoder_out_dim=16)


def _reference_keys() -> list[tuple[str, tuple[int, ...]]]:
    rows = []
    for line in KEYS_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split()
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s)))
    return rows


def _images(n: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_base_state_dict_matches_released_tokenizer():
    with torch.device("meta"):
        model = VQKDTokenizer()
    reference = _reference_keys()
    assert len(reference) == 220
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == reference
    assert sum(v.numel() for v in model.state_dict().values()) == 109_369_889
    assert model.num_patches == 196 and model.num_codes == 8192


def test_codes_match_an_independent_beit_encoder():
    # timm's Beit (abs pos-emb, q/v biases, fc_norm) shares the encoder's key layout: use it as the oracle.
    timm_beit = pytest.importorskip("timm.models.beit")
    model = VQKDTokenizer(**TINY)
    oracle = timm_beit.Beit(
        img_size=32, patch_size=8, num_classes=0, embed_dim=32, depth=2, num_heads=4, use_abs_pos_emb=True,
        use_rel_pos_bias=False, use_fc_norm=True, init_values=None,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
    ).eval()
    oracle.load_state_dict(model.encoder.state_dict(), strict=True)
    images = _images()
    with torch.no_grad():
        tokens = oracle.forward_features(images * 255.0 / 127.5 - 1.0)[:, 1:]  # norm is Identity here
        z = F.normalize(model.encode_task_layer(oracle.fc_norm(tokens)), dim=-1)
        expected = (z @ model.quantize.embedding.weight.t()).argmax(-1)
    torch.testing.assert_close(model.encode(images), z, atol=1e-5, rtol=1e-5)
    assert torch.equal(model.get_codebook_indices(images), expected)


def test_codes_shape_range_determinism_and_no_buffer_updates():
    model = VQKDTokenizer(**TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = _images(4)
    codes = model.get_codebook_indices(images)
    assert codes.dtype == torch.long and codes.shape == (4, 16)
    assert int(codes.min()) >= 0 and int(codes.max()) < TINY["num_codes"]
    assert torch.equal(codes, model.get_codebook_indices(images))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(model.get_codebook_indices(images[:1]), codes[:1])  # no batch-dependent scaling
    assert model.decode(codes).shape == (4, 16, TINY["decoder_out_dim"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.get_codebook_indices(images * 255)
    with pytest.raises(ValueError, match="32x32"):
        model.get_codebook_indices(_images(1, size=48))


@pytest.mark.parametrize("layout", ["model", "state_dict", "raw"])
def test_checkpoint_loads_strictly(tmp_path, layout):
    model = VQKDTokenizer(**TINY, seed=1)
    state = dict(model.state_dict())
    state["teacher_model.visual.proj"] = torch.zeros(3)  # training-only keys are dropped
    state["scaling_layer.shift"] = torch.zeros(3)
    path = tmp_path / "vqkd.pth"
    torch.save(state if layout == "raw" else {layout: state, "epoch": 3}, path)
    loaded = load_vqkd_checkpoint(path, **TINY)
    images = _images()
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(loaded.get_codebook_indices(images), model.get_codebook_indices(images))
    via_cfg = build_visual_tokenizer({"type": "vqkd", "checkpoint": str(path), **TINY})
    assert torch.equal(via_cfg.get_codebook_indices(images), model.get_codebook_indices(images))


def test_wrong_checkpoint_gives_one_clear_error(tmp_path):
    state = VQKDTokenizer(**TINY).state_dict()
    del state["encoder.fc_norm.bias"]
    state["encoder.head.weight"] = torch.zeros(2, 2)
    state["quantize.embedding.weight"] = torch.zeros(65, 8)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(VQKDCheckpointError) as info:
        load_vqkd_checkpoint(path, **TINY)
    message = str(info.value)
    assert "bad.pth" in message and "encoder.fc_norm.bias" in message and "encoder.head.weight" in message
    assert "quantize.embedding.weight (checkpoint (65, 8), model (64, 8))" in message
    with pytest.raises(VQKDCheckpointError, match="missing"):
        load_vqkd_checkpoint(path)  # base config against a tiny file
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_vqkd_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(VQKDCheckpointError, match="junk.pth"):
        load_vqkd_checkpoint(tmp_path / "junk.pth")


def _colour_grid_images(num_batches: int = 3, batch: int = 6, seed: int = 0):
    """64x64 images made of 16x16 patches, each one of 4 colours or a striped pattern, with slight noise."""
    g = torch.Generator().manual_seed(seed)
    palette = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.1]])
    stripes = (torch.arange(16) // 4 % 2).float().view(1, 16, 1).expand(3, 16, 16)
    batches, labels = [], []
    for _ in range(num_batches):
        kind = torch.randint(0, 5, (batch, 4, 4), generator=g)
        img = torch.empty(batch, 3, 64, 64)
        for b in range(batch):
            for i in range(4):
                for j in range(4):
                    k = int(kind[b, i, j])
                    patch = stripes if k == 4 else palette[k].view(3, 1, 1).expand(3, 16, 16)
                    img[b, :, 16 * i : 16 * i + 16, 16 * j : 16 * j + 16] = patch
        img = (img + 0.03 * torch.randn(img.shape, generator=g)).clamp(0, 1)
        batches.append(img)
        labels.append(kind.flatten(1))
    return batches, labels


def test_codebook_recovers_distinct_patches_and_is_deterministic(tmp_path):
    batches, labels = _colour_grid_images()
    tok = PatchCodebookTokenizer.fit(batches, num_codes=5, patch_size=16, seed=0)
    codes = torch.cat([tok.get_codebook_indices(b) for b in batches])
    truth = torch.cat(labels)
    assert codes.shape == truth.shape and codes.dtype == torch.long
    # one code per kind of patch, and different kinds get different codes
    mapping = {int(k): set(codes[truth == k].tolist()) for k in truth.unique()}
    assert all(len(v) == 1 for v in mapping.values())
    assert len({next(iter(v)) for v in mapping.values()}) == 5

    again = PatchCodebookTokenizer.fit(batches, num_codes=5, patch_size=16, seed=0)
    assert torch.equal(again.codebook, tok.codebook)
    projected = PatchCodebookTokenizer.fit(batches, num_codes=5, patch_size=16, seed=0, projection_dim=6)
    assert projected.codebook.shape == (5, 6)

    path = tok.save(tmp_path / "codebook" / "tok.pt")
    loaded = PatchCodebookTokenizer.load(path)
    assert torch.equal(loaded.get_codebook_indices(batches[0]), tok.get_codebook_indices(batches[0]))
    built = build_visual_tokenizer({"type": "codebook", "path": path})
    assert torch.equal(built.get_codebook_indices(batches[1]), tok.get_codebook_indices(batches[1]))


def test_codebook_bad_inputs(tmp_path):
    batches, _ = _colour_grid_images(num_batches=1)
    with pytest.raises(ValueError, match="patches to fit"):
        PatchCodebookTokenizer.fit(batches, num_codes=1000, patch_size=16)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        PatchCodebookTokenizer.fit(batches, num_codes=2, patch_size=24)
    with pytest.raises(ValueError, match="no images"):
        PatchCodebookTokenizer.fit([], num_codes=2, patch_size=16)
    torch.save({"codebook": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt"):
        PatchCodebookTokenizer.load(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="known types"):
        build_visual_tokenizer({"type": "dall-e"})
    with pytest.raises(KeyError, match="checkpoint"):
        build_visual_tokenizer({"type": "vqkd"})
