"""Table 2: parameter grouping, the giant against the paper, base/large against torchscale, rendering."""
import copy
import os
import re

import pytest

from harness.profiles import get_profile
from harness.tables import RunOptions, TableResult, attach_paper, get_table, load_paper, measurement, write_atomic
from harness.tables.render import to_markdown
from harness.tables.table2 import count_components, meta_parameter_sizes

D, F, V = 8, 32, 50  # embed dim, FFN dim, vocab of the fake name lists


def _ln(prefix):
    return [(f"{prefix}.weight", D), (f"{prefix}.bias", D)]


def _expert(layer, branch):
    p = f"beit3.encoder.layers.{layer}"
    return [
        (f"{p}.ffn.{branch}.fc1.weight", D * F), (f"{p}.ffn.{branch}.fc1.bias", F),
        (f"{p}.ffn.{branch}.ffn_layernorm.weight", F), (f"{p}.ffn.{branch}.ffn_layernorm.bias", F),
        (f"{p}.ffn.{branch}.fc2.weight", F * D), (f"{p}.ffn.{branch}.fc2.bias", D),
        *_ln(f"{p}.final_layer_norm.{branch}"),
    ]


def _attention(layer, branch):
    suffix = f".{branch}" if branch else ""
    p = f"beit3.encoder.layers.{layer}"
    names = [(f"{p}.self_attn.{m}_proj{suffix}.weight", D * D) for m in ("q", "k", "v", "out")]
    names += [(f"{p}.self_attn.{m}_proj{suffix}.bias", D) for m in ("q", "k", "v", "out")]
    return names + _ln(f"{p}.self_attn.inner_attn_ln{suffix}") + _ln(f"{p}.self_attn_layer_norm{suffix}")


EMBEDDINGS = [
    ("beit3.text_embed.weight", V * D), ("beit3.vision_embed.cls_token", D), ("beit3.vision_embed.mask_token", D),
    ("beit3.vision_embed.proj.weight", D * 3 * 16 * 16), ("beit3.vision_embed.proj.bias", D),
    ("beit3.encoder.embed_positions.A.weight", 7 * D), ("beit3.encoder.embed_positions.B.weight", 9 * D),
]
ATTN, EXPERT = 4 * (D * D + D) + 4 * D, 2 * D * F + F + D + 2 * F + 2 * D
EMBED = sum(n for _, n in EMBEDDINGS)


def _paper_layout_names(depth=3, vl_layers=1):
    names = list(EMBEDDINGS) + _ln("beit3.encoder.layer_norm")
    for i in range(depth):
        names += _attention(i, None) + _expert(i, "A") + _expert(i, "B")
        if i >= depth - vl_layers:
            names += _expert(i, "VL")
    return names + [("mlm_head.weight", D * V), ("mlm_head.bias", V), ("mim_head.weight", D * 12), ("mim_head.bias", 12)]


def _released_layout_names(depth=2):
    names = list(EMBEDDINGS) + _ln("beit3.encoder.layer_norm.A") + _ln("beit3.encoder.layer_norm.B")
    for i in range(depth):
        names += _attention(i, "A") + _attention(i, "B") + _expert(i, "A") + _expert(i, "B")
    return names


def test_grouping_of_paper_layout_names():
    names = _paper_layout_names(depth=3, vl_layers=1)
    counts = count_components(names)
    assert counts["shared_attention"] == 3 * ATTN
    assert counts["v_ffn"] == counts["l_ffn"] == 3 * EXPERT
    assert counts["vl_ffn"] == EXPERT
    assert counts["embeddings"] == EMBED
    assert counts["heads"] == D * V + V + D * 12 + 12
    assert counts["other"] == 2 * D
    assert counts["vision_attention"] == counts["language_attention"] == 0
    assert counts["total"] == sum(n for _, n in names) == sum(v for k, v in counts.items() if k != "total")


def test_grouping_of_released_layout_names():
    counts = count_components(_released_layout_names(depth=2))
    assert counts["vision_attention"] == counts["language_attention"] == 2 * ATTN
    assert counts["v_ffn"] == counts["l_ffn"] == 2 * EXPERT
    assert counts["shared_attention"] == counts["vl_ffn"] == counts["heads"] == 0
    assert counts["other"] == 4 * D


@pytest.mark.parametrize(
    "name", ["beit3.encoder.layers.0.ffn.C.fc1.weight", "beit3.pooler.weight", "beit3.encoder.layers.0.self_attn.q_proj.A.B.weight"]
)
def test_grouping_rejects_a_parameter_of_no_component(name):
    with pytest.raises(ValueError, match=re.escape(name)):
        count_components(_paper_layout_names() + [(name, 5)])


# ----------------------------------------------------------------------------- real backbones (meta)
@pytest.fixture(scope="module")
def result():
    return get_table("table2").run(get_profile("smoke"), RunOptions(seeds=1))


def _value(result, group, component):
    (value,) = result.frame.loc[(result.frame["group"] == group) & (result.frame["row"] == component), "value"]
    return value


def test_released_totals_match_torchscale(result):
    assert _value(result, "base", "total") == 220_987_392
    assert _value(result, "large", "total") == 672_702_464


def test_groups_sum_to_totals(result):
    for group in ("giant", "base", "large"):
        frame = result.frame
        parts = frame.loc[(frame["group"] == group) & ~frame["row"].isin(["total", "backbone"]), "value"]
        assert parts.sum() == _value(result, group, "total"), group
    assert _value(result, "giant", "backbone") == _value(result, "giant", "total") - _value(result, "giant", "heads")


def test_giant_matches_paper_table2(result):
    paper = {(r["group"], r["component"]): r["value"] for r in load_paper("table2")["rows"]}
    for component in ("shared_attention", "v_ffn", "l_ffn", "vl_ffn"):
        ours = _value(result, "giant", component)
        assert abs(ours - paper["giant", component]) / paper["giant", component] < 0.01, component
    assert abs(_value(result, "giant", "total") - 1.9e9) / 1.9e9 < 0.03
    for component in ("layers", "hidden_size", "mlp_size", "attention_heads"):
        assert _value(result, "giant_config", component) == paper["giant_config", component]


def test_real_tiny_paper_layout_is_fully_grouped():
    sizes, config = meta_parameter_sizes("beit3_tiny_patch16_224", "paper", heads=True)
    counts = count_components(sizes)
    d, f = config.embed_dim, config.ffn_dim
    assert counts["shared_attention"] == config.depth * (4 * (d * d + d) + 4 * d)
    assert counts["vl_ffn"] == config.vl_ffn_layers * (2 * d * f + f + d + 2 * f + 2 * d) > 0
    assert counts["heads"] == d * config.vocab_size + config.vocab_size + d * 8192 + 8192


# ----------------------------------------------------------------------------- rendering
def _fake_result(paper=None):
    rows = (
        measurement("giant_config", "layers", 40, label="layers"),
        measurement("giant", "v_ffn", 692_966_400, label="V-FFN (A)"),
        measurement("giant", "embeddings", 92_764_672, label="embeddings"),
        measurement("giant", "total", 1_950_050_186, label="total"),
        measurement("base", "total", 220_987_392, label="total"),
    )
    groups = {"giant_config": "configuration", "giant": "giant | paper layout", "base": "base"}
    result = TableResult.of("table2", rows, groups)
    if paper is None:
        return result
    return TableResult("table2", attach_paper(result.frame, paper), groups)


def _fake_paper():
    return {
        "table": "table2",
        "rows": [
            {"group": "giant_config", "component": "layers", "value": 40, "resolution": 1},
            {"group": "giant", "component": "v_ffn", "value": 692e6, "display": "692M", "resolution": 1e6},
            {"group": "giant", "component": "total", "value": 1.9e9, "display": "1.9B", "resolution": 1e8},
            {"group": "base", "component": "total", "value": 220_987_392, "display": "220,987,392", "resolution": 1},
        ],
    }


def test_render_is_pure_and_deterministic():
    spec, result, paper = get_table("table2"), _fake_result(), _fake_paper()
    result = _fake_result(paper)
    paper_before = copy.deepcopy(paper)
    first = to_markdown(spec.render(result, paper))
    assert first == to_markdown(spec.render(_fake_result(_fake_paper()), _fake_paper()))
    assert paper == paper_before
    lines = [re.sub(r" +", " ", line) for line in first.splitlines()]  # cells are padded to the column width
    assert lines[0] == "# Table 2: Model configuration of BEiT-3. The architecture layout follows ViT-giant"
    assert lines[2].startswith("giant (paper layout, with heads) has 1,950,050,186 parameters vs the paper's 1.9B (+2.63%)")
    assert lines[4] == "### configuration" and lines[6] == "| component | paper | ours | Δ | Δ% |"
    assert "| V-FFN (A) | 692M | 692,966,400 | +966,400 | +0.14% |" in lines
    assert "| embeddings | – | 92,764,672 | – | – |" in lines
    assert "| total | 220,987,392 | 220,987,392 | +0 | +0.00% |" in lines
    assert "### giant | paper layout" in lines
    # 692M and 1.9B are missed by more than half their last digit; 40 and the base total agree.
    assert "; 2/4 reference figures agree within their printed rounding; base totals match" in lines[2]


def test_paper_join_rejects_paper_rows_without_a_measurement():
    paper = _fake_paper()
    paper["rows"].append({"group": "giant", "component": "vl_ffn", "value": 52e6})
    with pytest.raises(ValueError, match="vl_ffn"):
        attach_paper(_fake_result().frame, paper)


def test_paper_file_is_checked(tmp_path):
    (tmp_path / "table2.json").write_text('{"table": "table3", "rows": []}')
    with pytest.raises(ValueError, match="expected 'table2'"):
        load_paper("table2", tmp_path)
    with pytest.raises(FileNotFoundError, match="table5"):
        load_paper("table5", tmp_path)


def test_write_atomic_replaces_without_leftovers(tmp_path):
    path = tmp_path / "sub" / "table2.md"
    write_atomic(path, "old\n")
    write_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["table2.md"]
    umask = os.umask(0o022)
    try:
        write_atomic(path, "readable\n")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644  # the umask's mode, not mkstemp's private 0600


def test_released_totals_are_labelled_as_counted_from_the_official_code(result):
    paper = load_paper("table2")
    for row in paper["rows"]:
        from_code = row["group"] in ("base", "large")
        assert (row.get("reference") == "official code") == from_code, row
        assert ("not a paper figure" in row["source"]) == from_code
    spec = get_table("table2")
    joined = TableResult("table2", attach_paper(result.frame, paper), result.groups)
    text = re.sub(r" +", " ", to_markdown(spec.render(joined, paper)))
    base = text.split("### beit3_base_patch16_224")[1]
    assert "(reference: counted from the official code, torchscale 0.3.0; not in the paper)" in base.splitlines()[0]
    assert "| component | official code | ours | Δ | Δ% |" in base
    giant = text.split("### beit3_giant_patch14_224, paper layout")[1].split("###")[0]
    assert "| component | paper | ours | Δ | Δ% |" in giant
