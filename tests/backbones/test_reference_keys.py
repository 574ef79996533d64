"""The released layout reproduces the official state-dict dump (`tests/assets/…-keys.txt`)."""
import re
from pathlib import Path

import torch

import backbones

DUMP = Path(__file__).parents[1] / "assets" / "beit3-base-state-dict-keys.txt"


def official_backbone_keys() -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in DUMP.read_text().splitlines():
        if line.startswith("## "):  # task models follow the backbone section
            break
        match = re.match(r"^(beit3\.\S+) \(([\d, ]*)\)", line)
        if match:
            keys[match.group(1)] = tuple(int(n) for n in match.group(2).replace(" ", "").split(",") if n)
    return keys


def test_base_backbone_equals_official_dump_in_order():
    with torch.device("meta"):
        model = backbones.create_model("beit3_base_patch16_224")
    want = official_backbone_keys()
    assert len(want) == 491
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(got) == list(want)
    assert got == want
    assert sum(p.numel() for p in model.parameters()) == 220_987_392


def test_large_backbone_count():
    with torch.device("meta"):
        model = backbones.create_model("beit3_large_patch16_224")
    assert sum(p.numel() for p in model.parameters()) == 672_702_464


def test_position_table_rows_per_resolution():
    for res, rows in [(224, 199), (384, 579), (480, 903), (768, 2307)]:
        with torch.device("meta"):
            model = backbones.create_model(f"beit3_base_patch16_{res}")
        assert model.state_dict()["beit3.encoder.embed_positions.A.weight"].shape == (rows, 768)


def test_no_output_norm_variant_drops_final_layernorm_keys():
    with torch.device("meta"):
        model = backbones.create_model("beit3_base_patch16_480", normalize_output=False)
    assert not any(k.startswith("beit3.encoder.layer_norm") for k in model.state_dict())
