"""Captioning: the official BEiT3ForCaptioning model, its training helpers and its beam search."""
import copy
import math
import re
from pathlib import Path

import pytest
import torch

import backbones
import tasks
from backbones.tokenizers import TextTokenizer, train_sentencepiece
from tasks.captioning import (
    CAPTIONING_RECIPES,
    BEiT3ForCaptioning,
    BertCaptioningLoss,
    SpecialTokens,
    captioning_attention_mask,
    captioning_loss,
    collate_eval,
    collate_train,
    decode_captions,
    generate,
    mask_caption_tokens,
    predict_captions,
)

DUMP = Path(__file__).parents[1] / "assets" / "beit3-base-state-dict-keys.txt"
TINY = dict(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, vocab_size=100)
NUM_IMAGE_TOKENS = (32 // 16) ** 2 + 1
SPECIAL = SpecialTokens(bos=0, eos=2, mask=99, pad=1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Decoding runs many tiny ops; two OpenMP threads on the shared 2-core machine make them crawl.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed=0, eos_bias=2.0, **overrides):
    """Random tiny captioner whose captions vary in content and length (some end early on EOS)."""
    torch.manual_seed(seed)
    model = tasks.build_model("captioning", "beit3_tiny_patch16_224", **{**TINY, **overrides}).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim > 1:
                param.normal_(0.0, 0.3)
        model.mlm_head.bias[SPECIAL.eos] += eos_bias
    return model


def images(n=5, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------ model
def dump_section(title):
    keys, inside = {}, False
    for line in DUMP.read_text().splitlines():
        if line.startswith("## "):
            inside = line[3:].split()[0] == title
            continue
        match = re.match(r"^(\S+) \(([\d, ]*)\)", line)
        if inside and match:
            keys[match.group(1)] = tuple(int(n) for n in match.group(2).replace(" ", "").split(",") if n)
    return keys


def test_base_480_state_dict_equals_official_dump():
    with torch.device("meta"):
        model = tasks.build_model("captioning", "beit3_base_patch16_480")
    assert isinstance(model, BEiT3ForCaptioning)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # The dump lists the task model's non-layer keys; its layer keys are the backbone's.
    want = dump_section("beit3_base_patch16_480_captioning")
    assert list(want)[-2:] == ["mlm_head.weight", "mlm_head.bias"]
    non_layer = {k: v for k, v in got.items() if ".encoder.layers." not in k}
    assert non_layer == want and list(non_layer) == list(want)
    with torch.device("meta"):
        backbone = backbones.create_model("beit3_base_patch16_480")
    layer_keys = {k: tuple(v.shape) for k, v in backbone.state_dict().items() if ".encoder.layers." in k}
    assert {k: v for k, v in got.items() if ".encoder.layers." in k} == layer_keys
    assert sum(p.numel() for p in model.parameters()) == 270_751_754
    assert got["mlm_head.weight"] == (64010, 768)


def test_head_init_is_truncated_normal_002():
    torch.manual_seed(0)
    model = tasks.build_model("captioning", "beit3_tiny_patch16_224", embed_dim=64, num_heads=2, depth=1,
                              img_size=32, vocab_size=4000)
    weight = model.mlm_head.weight
    assert weight.abs().max() <= 0.02 and weight.std().item() == pytest.approx(0.0108, rel=0.05)  # 0.54 sigma
    assert torch.count_nonzero(model.mlm_head.bias) == 0


def test_attention_mask_is_the_official_uni_mask():
    blocked = captioning_attention_mask(2, 3)
    want = torch.tensor([
        [0, 0, 1, 1, 1],  # image tokens: image only
        [0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1],  # text token i: image + text 0..i
        [0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0],
    ])
    assert blocked.dtype == torch.long and torch.equal(blocked, want)


@torch.no_grad()
def test_training_forward_masked_positions_and_causality():
    model = tiny_model()
    image = images(2)
    text = torch.randint(3, 99, (2, 6), generator=torch.Generator().manual_seed(2))
    padding = torch.zeros(2, 6, dtype=torch.long)
    padding[1, 4:] = 1
    positions = torch.zeros(2, 6, dtype=torch.bool)
    positions[0, [1, 4]] = positions[1, 2] = True

    all_logits, _ = model(image, text, padding, None)
    masked_logits, state = model(image, text, padding, positions)
    assert all_logits.shape == (2, 6, 100) and masked_logits.shape == (3, 100) and state is None
    torch.testing.assert_close(masked_logits, all_logits[positions])

    later = text.clone()
    later[:, 3:] = torch.randint(3, 99, (2, 3))
    changed, _ = model(image, later, padding, None)
    torch.testing.assert_close(changed[:, :3], all_logits[:, :3])  # text i sees text 0..i only
    assert not torch.allclose(changed[:, 3:], all_logits[:, 3:])
    other_image, _ = model(images(2, seed=9), text, padding, None)
    assert not torch.allclose(other_image[:, 0], all_logits[:, 0])  # text sees the image

    # Image tokens see no text: their encoder outputs do not move when the caption does.
    mask = captioning_attention_mask(NUM_IMAGE_TOKENS, 6)
    first = model.beit3(textual_tokens=text, visual_tokens=image, attn_mask=mask)["encoder_out"]
    second = model.beit3(textual_tokens=later, visual_tokens=image, attn_mask=mask)["encoder_out"]
    torch.testing.assert_close(first[:, :NUM_IMAGE_TOKENS], second[:, :NUM_IMAGE_TOKENS])


@torch.no_grad()
def test_decoding_step_equals_full_forward_at_the_mask():
    """A cached step [prev, MASK] gives the logits the full forward gives at the trailing MASK."""
    model = tiny_model()
    image = images(2)
    caption = torch.tensor([[0, 17, 42, 99], [0, 5, 61, 99]])  # <s> w1 w2 MASK
    full, _ = model(image, caption, torch.zeros_like(caption), None)

    state = {}
    first, _ = model(image, caption[:, :2], torch.zeros(2, 2, dtype=torch.long), None, text_len=2,
                     incremental_state=state)
    torch.testing.assert_close(first[:, 0], full[:, 0], atol=1e-5, rtol=0)
    for layer in state.values():  # drop the k/v of position 1 (w1 fed as if it were the MASK)
        layer["prev_key"], layer["prev_value"] = layer["prev_key"][:, :, :-1], layer["prev_value"][:, :, :-1]
    step, _ = model(None, caption[:, 1:3], None, None, text_len=3, incremental_state=state)
    torch.testing.assert_close(step, full[:, 1:3], atol=1e-5, rtol=0)
    assert state[0]["prev_key"].shape[2] == NUM_IMAGE_TOKENS + 3


# --------------------------------------------------------------------------------------- bad input
def test_caption_longer_than_the_position_table_is_an_error():
    model = tiny_model(max_text_positions=12)
    text = torch.randint(3, 99, (1, 11))
    with pytest.raises(ValueError, match=r"at most 10 tokens.*truncate captions to 10 tokens"):
        model(images(1), text, torch.zeros_like(text), None)
    with pytest.raises(ValueError, match=r"max_len=12 .* use max_len <= 11"):
        generate(model, images(1), SPECIAL, max_len=12)
    generate(model, images(1), SPECIAL, max_len=11)  # the longest that fits


def test_decoding_step_without_cache_and_other_misuse_are_errors():
    model = tiny_model()
    text = torch.tensor([[5, 99]])
    with pytest.raises(ValueError, match="incremental_state"):
        model(None, text, None, None, text_len=3)
    with pytest.raises(ValueError, match="text_len=3 but text_ids has 2"):
        model(images(1), text, torch.zeros_like(text), None, text_len=3)
    with pytest.raises(ValueError, match="mask id 120 is outside"):
        generate(model, images(1), dict(bos=0, eos=2, mask=120, pad=1))
    with pytest.raises(KeyError, match="pad"):
        generate(model, images(1), dict(bos=0, eos=2, mask=99))


def test_empty_evaluation_split_is_an_error():
    with pytest.raises(ValueError, match="empty evaluation split"):
        predict_captions(tiny_model(), [], SPECIAL)
    with pytest.raises(ValueError, match="empty batch"):
        collate_eval([])


# ---------------------------------------------------------------------------------- beam search
@pytest.mark.parametrize("num_beams", [1, 3])
def test_cached_and_uncached_decoding_give_the_same_captions(num_beams):
    model = tiny_model()
    batch = images(5)
    cached, cached_scores = generate(model, batch, SPECIAL, num_beams=num_beams, return_scores=True)
    full, full_scores = generate(model, batch, SPECIAL, num_beams=num_beams, use_cache=False, return_scores=True)
    assert torch.equal(cached, full)
    assert cached_scores == pytest.approx(full_scores, abs=1e-5)
    # The comparison is not vacuous: captions differ between images and some stop early on EOS.
    assert len(set(map(tuple, cached.tolist()))) == 5
    assert (cached[:, 0] == SPECIAL.bos).all()
    lengths = []
    for row in cached.tolist():  # <s> words </s> <pad>...: the first </s> closes the caption
        length = row.index(SPECIAL.eos) + 1
        assert all(token == SPECIAL.pad for token in row[length:])
        lengths.append(length)
    assert min(lengths) < 31 and max(lengths) == 31  # 31 = <s> + 29 words (max_len - 3) + </s>


def test_beam_width_changes_the_search():
    model = tiny_model()
    assert not torch.equal(generate(model, images(5), SPECIAL, num_beams=1), generate(model, images(5), SPECIAL))


@torch.no_grad()
def test_decoding_steps_feed_official_positions_mask_rows_and_cache():
    """Step c >= 3 feeds [prev, MASK] at positions (c, c+1), mask rows (2, I + c), cache I + c - 2."""
    model = tiny_model(eos_bias=-100.0)  # no EOS: every step runs
    calls = []
    inner = model.beit3

    class Recorder(torch.nn.Module):
        def forward(self, **kwargs):
            state = kwargs["incremental_state"]
            cached = state[0]["prev_key"].shape[2] if state and "prev_key" in state[0] else 0
            calls.append((kwargs["positions"], tuple(kwargs["attn_mask"].shape), cached,
                          kwargs["textual_tokens"].clone(), kwargs["visual_tokens"] is None))
            return inner(**kwargs)

    recorded = copy.deepcopy(model)
    recorded.beit3 = Recorder()
    ids = generate(recorded, images(2), SPECIAL, max_len=8)
    assert len(calls) == 8 - 2  # cur_len 2..7; the official's extra step at cur_len == max_len adds nothing
    positions, mask_shape, cached, tokens, no_image = calls[0]
    assert positions is None and mask_shape == (NUM_IMAGE_TOKENS + 2,) * 2 and cached == 0 and not no_image
    assert tokens.tolist() == [[0, 99], [0, 99]]  # one row per image: the beams are copies at step 1
    for cur_len, (positions, mask_shape, cached, tokens, no_image) in enumerate(calls[1:], start=3):
        assert no_image and positions.tolist() == [[cur_len, cur_len + 1]]
        assert mask_shape == (2, NUM_IMAGE_TOKENS + cur_len) and cached == NUM_IMAGE_TOKENS + cur_len - 2
        assert tokens.shape == (2 * 3, 2) and (tokens[:, 1] == SPECIAL.mask).all()
    # Forced end at max_len: <s> + max_len - 3 words + </s>.
    assert [row.index(SPECIAL.eos) + 1 for row in ids.tolist()] == [8 - 1, 8 - 1]


class ScriptedModel(torch.nn.Module):
    """Next-word probabilities by caption prefix, for hand-checked beam searches (no-cache path)."""

    vocab = 6  # 0 <s>, 1 <pad>, 2 </s>, 3 A, 4 B, 5 MASK

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.calls = 0
        self.max_text_positions = 1024
        self.mlm_head = torch.nn.Linear(1, self.vocab)

    def forward(self, image, text_ids, padding_mask, language_masked_pos, text_len=None, incremental_state=None):
        assert incremental_state is None
        self.calls += 1
        rows = []
        for row in text_ids.tolist():
            probs = torch.full((self.vocab,), 1e-6)
            for word, p in self.table.get(tuple(row[1:-1]), {}).items():
                probs[word] = p
            rows.append(probs.log())
        return torch.stack(rows), None


SCRIPTED = SpecialTokens(bos=0, eos=2, mask=5, pad=1)
A, B, EOS = 3, 4, 2


def test_length_penalty_and_eos_candidates_by_hand():
    # Step 1: EOS (.45) closes "<s>" with score log .45 / 2^.6 = -0.527; A (.40) continues.
    # Step 2: EOS (.95) closes "<s> A" with log(.4 * .95) / 3^.6 = -0.501: better, it wins.
    # Step 3: no beam can beat it any more (is_done: -0.501 >= log(.4*.04*.9) / 5^.6), so it stops.
    table = {(): {EOS: 0.45, A: 0.40, B: 0.15}, (A,): {EOS: 0.95, B: 0.04, A: 0.01}, (A, B): {A: 0.9, B: 0.1}}
    model = ScriptedModel(table)
    ids, scores = generate(model, torch.zeros(1, 3, 4, 4), SCRIPTED, num_beams=1, max_len=6,
                           use_cache=False, return_scores=True)
    assert ids.tolist() == [[0, A, EOS, 1, 1, 1]]
    assert scores[0] == pytest.approx(math.log(0.4 * 0.95) / 3**0.6, rel=1e-4)
    # Without length normalisation the short caption wins.
    ids = generate(model, torch.zeros(1, 3, 4, 4), SCRIPTED, num_beams=1, max_len=6, length_penalty=0.0,
                   use_cache=False)
    assert ids.tolist() == [[0, EOS, 1, 1, 1, 1]]


def test_search_stops_once_no_beam_can_win_by_hand():
    # "<s>" closes at step 1 with log .5 / 2^.6 = -0.457. At step 2 the best beam has summed log-prob s;
    # the official stops when -0.457 >= s / (max_len - 1)^.6, i.e. s <= -1.201 for max_len 6.
    start = {EOS: 0.5, A: 0.45, B: 0.05}
    for follow, calls in ((0.624, 2), (0.70, 3)):  # s = log(.45 * .624) = -1.270: stop; log(.315) = -1.155: go on
        model = ScriptedModel({(): start, (A,): {A: follow, B: 1 - follow}})
        ids = generate(model, torch.zeros(1, 3, 4, 4), SCRIPTED, num_beams=1, max_len=6, use_cache=False)
        assert ids.tolist() == [[0, EOS, 1, 1, 1, 1]] and model.calls == calls


def test_forced_end_keeps_max_len_minus_3_words_by_hand():
    # Never EOS: at cur_len = max_len - 1 every candidate closes a hypothesis and its word is dropped.
    table = {(): {A: 0.9, B: 0.1}, (A,): {B: 0.8, A: 0.2}, (A, B): {A: 0.7, B: 0.3}}
    ids = generate(ScriptedModel(table), torch.zeros(1, 3, 4, 4), SCRIPTED, num_beams=1, max_len=5,
                   use_cache=False)
    assert ids.tolist() == [[0, A, B, EOS, 1]]


def test_beams_keep_the_best_of_three_candidates_each_by_hand():
    # Two beams: greedy takes A (.6) then A|A (.55) = .33; beam search also keeps B (.4), and B|B (.9) = .36.
    table = {(): {A: 0.6, B: 0.4}, (A,): {A: 0.55, B: 0.45}, (B,): {B: 0.9, A: 0.1},
             (A, A): {EOS: 1.0}, (A, B): {EOS: 1.0}, (B, B): {EOS: 1.0}, (B, A): {EOS: 1.0}}
    model = ScriptedModel(table)
    greedy = generate(model, torch.zeros(1, 3, 4, 4), SCRIPTED, num_beams=1, max_len=8, use_cache=False)
    beam = generate(model, torch.zeros(1, 3, 4, 4), SCRIPTED, num_beams=2, max_len=8, use_cache=False)
    assert greedy[0, :4].tolist() == [0, A, A, EOS]
    assert beam[0, :4].tolist() == [0, B, B, EOS]


def test_generate_restores_training_mode():
    model = tiny_model().train()
    generate(model, images(1), SPECIAL, max_len=5)
    assert model.training


def test_decoding_through_torchscale_gives_the_same_captions():
    """Our forward's calls (masks, positions, cache surgery) driven through torchscale's BEiT3."""
    pytest.importorskip("torchscale", reason="torchscale 0.3.0 is the test-only oracle (make setup)")
    from torchscale.architecture.config import EncoderConfig
    from torchscale.model.BEiT3 import BEiT3 as OfficialBEiT3

    model = tiny_model()
    official = OfficialBEiT3(EncoderConfig(
        img_size=32, patch_size=16, vocab_size=100, multiway=True, layernorm_embedding=False,
        normalize_output=True, no_output_layer=True, drop_path_rate=0.0, encoder_embed_dim=32,
        encoder_attention_heads=2, encoder_ffn_embed_dim=128, encoder_layers=2,
    )).eval()
    official.load_state_dict(model.beit3.state_dict())
    oracle = copy.deepcopy(model)
    oracle.beit3 = official

    batch = images(4)
    text = torch.randint(3, 99, (4, 7), generator=torch.Generator().manual_seed(3))
    padding = torch.zeros_like(text)
    padding[0, 5:] = 1
    with torch.no_grad():
        torch.testing.assert_close(oracle(batch, text, padding, None)[0], model(batch, text, padding, None)[0],
                                   atol=1e-5, rtol=0)
    assert torch.equal(generate(oracle, batch, SPECIAL), generate(model, batch, SPECIAL))


# ------------------------------------------------------------------------------------ training
def test_mask_caption_tokens_counts_and_positions():
    lengths = [2, 3, 5, 10, 32]
    text = torch.full((len(lengths), 32), 1)
    padding = torch.ones_like(text)
    for row, n in enumerate(lengths):
        text[row, :n] = torch.tensor([0] + list(range(10, 10 + n - 2)) + [2])
        padding[row, :n] = 0
    gen = torch.Generator().manual_seed(0)
    for prob in (0.5, 0.6, 0.7):
        _, masked = mask_caption_tokens(text, padding, mask_prob=prob, mask_id=99, vocab_size=100, generator=gen)
        # max(1, min(int(n p + .5), n - 1)): round half up, as the official (5 * .5 -> 3, not 2).
        want = [max(1, min(int(n * prob + 0.5), n - 1)) for n in lengths]
        assert masked.sum(dim=1).tolist() == want
        assert not masked[:, 0].any() and not masked[padding.bool()].any()
    assert want == [1, 2, 4, 7, 22] and [max(1, min(int(5 * 0.5 + 0.5), 4))] == [3]

    eos_masked = 0
    for _ in range(50):
        _, masked = mask_caption_tokens(text, padding, mask_prob=0.6, mask_id=99, vocab_size=100, generator=gen)
        eos_masked += int(masked[3, 9])
    assert eos_masked > 0  # </s> can be masked (it is one of positions 1..n-1)


def test_mask_caption_tokens_replacements_and_determinism():
    text = torch.cat([torch.zeros(400, 1), torch.full((400, 30), 50), torch.full((400, 1), 2)], dim=1).long()
    padding = torch.zeros_like(text)
    corrupted, masked = mask_caption_tokens(text, padding, mask_prob=0.7, mask_id=99, vocab_size=64,
                                            generator=torch.Generator().manual_seed(0))
    new = corrupted[masked]
    original = text[masked]
    frac_mask = (new == 99).float().mean().item()
    frac_keep = (new == original).float().mean().item()
    frac_random = 1 - frac_mask - frac_keep
    assert frac_mask == pytest.approx(0.8, abs=0.02) and frac_keep == pytest.approx(0.1, abs=0.02)
    assert frac_random == pytest.approx(0.1, abs=0.02)
    random_ids = new[(new != 99) & (new != original)]
    assert random_ids.min() >= 3 and random_ids.max() < 64
    assert torch.equal(corrupted[~masked], text[~masked])
    again, again_masked = mask_caption_tokens(text, padding, mask_prob=0.7, mask_id=99, vocab_size=64,
                                              generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, corrupted) and torch.equal(again_masked, masked)
    with pytest.raises(ValueError, match=r"rows \[0\] have fewer than 2 real tokens"):
        mask_caption_tokens(text[:1, :1], padding[:1, :1], mask_id=99, vocab_size=64,
                            generator=torch.Generator())


def test_bert_captioning_loss_by_hand_and_drop_worst():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 7, generator=gen)
    target = torch.randint(0, 7, (10,), generator=gen)
    # eps = 0: plain cross-entropy.
    plain = BertCaptioningLoss(label_smoothing=0.0, drop_worst_ratio=0.0)
    torch.testing.assert_close(plain(logits, target, 0), torch.nn.functional.cross_entropy(logits, target))
    # eps = 0.1: sum_c q_c (log q_c - log p_c), q = .9 on the target and .1 / 6 elsewhere.
    criterion = BertCaptioningLoss(label_smoothing=0.1, drop_worst_ratio=0.2, drop_worst_after=100)
    log_p = logits.log_softmax(dim=1)
    q = torch.full_like(logits, 0.1 / 6)
    q[torch.arange(10), target] = 0.9
    per_token = (q * (q.log() - log_p)).sum(dim=1)
    torch.testing.assert_close(criterion(logits, target, 100), per_token.mean())  # not yet: iteration 100
    torch.testing.assert_close(criterion(logits, target, 101), per_token.sort().values[:8].mean())  # worst 2 out
    with pytest.raises(ValueError, match="no masked tokens"):
        criterion(logits[:0], target[:0], 0)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    corpus = [
        "a man riding a horse on a beach", "two dogs play in the snow", "a red bus on a city street",
        "a cat sleeping on a sofa", "people walking in a park", "a plate of food with vegetables",
        "a small boat on the river", "a woman holding an umbrella in the rain",
    ] * 4
    path = train_sentencepiece(corpus, tmp_path_factory.mktemp("spm") / "cap", vocab_size=60,
                               hard_vocab_limit=False)
    return TextTokenizer(path)


def test_training_batch_loss_and_decoding_with_the_text_tokenizer(tokenizer):
    model = tiny_model(vocab_size=tokenizer.vocab_size).train()
    items = [{"image": img, "text": text, "image_id": i}
             for i, (img, text) in enumerate(zip(images(3), ["a man riding a horse", "two dogs", "a cat"]))]
    batch = collate_train(items, tokenizer, generator=torch.Generator().manual_seed(0), max_len=12, mask_prob=0.7)
    assert batch["language_tokens"].shape == (3, 12) and batch["language_masked_pos"].any(dim=1).all()
    out = captioning_loss(model, batch, BertCaptioningLoss(), global_step=0)
    assert torch.isfinite(out["loss"]) and 0 <= out["acc"] <= 1
    out["loss"].backward()
    assert model.mlm_head.weight.grad is not None

    with pytest.raises(ValueError, match="no caption text"):
        collate_train([{**items[0], "text": None}], tokenizer, generator=torch.Generator())

    model.eval()
    eval_batch = collate_eval([{"image": img, "image_id": 7 + i} for i, img in enumerate(images(2))])
    predictions = predict_captions(model, [eval_batch], tokenizer, max_len=10)
    ids = generate(model, eval_batch["image"], tokenizer, max_len=10)
    assert predictions == dict(zip([7, 8], decode_captions(ids, tokenizer)))
    assert predictions[7] == tokenizer.decode(ids[0], skip_special_tokens=True)
    assert all(isinstance(c, str) for c in predictions.values())


def test_recipes_follow_get_started_and_table_13():
    base, large, giant = (CAPTIONING_RECIPES[k] for k in ("base", "large", "giant"))
    assert (base["lr"], large["lr"], giant["lr"]) == (4e-5, 8e-6, 8e-6)
    assert base["mask_prob"] == large["mask_prob"] == 0.7 and giant["mask_prob"] == 0.6
    assert base["num_max_bpe_tokens"] == 32 and base["batch_size"] == giant["batch_size"] == 256
    assert giant["steps"] == 16000 and giant["warmup_steps"] == 1600 and giant["img_size"] == 392
