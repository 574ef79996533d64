"""Task models for VQAv2, NLVR2, retrieval and ImageNet: official keys, forward, init, losses, loading."""
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import backbones
import tasks
from tasks import imagenet, nlvr2, retrieval, vqav2
from tasks.heads import transform_is_train

DUMP = Path(__file__).parents[1] / "assets" / "beit3-base-state-dict-keys.txt"
TINY = "beit3_tiny_patch16_224"
TINY_KW = dict(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, vocab_size=100)


def parse_dump():
    """(backbone keys, {section: (keys, total_params)}) from the official dump, in file order."""
    backbone, sections, current = {}, {}, None
    for line in DUMP.read_text().splitlines():
        header = re.match(r"^## (\S+)\s+total_params=(\d+)", line)
        if header:
            current = header.group(1)
            sections[current] = ({}, int(header.group(2)))
            continue
        if line.startswith("#"):
            current = None if line.startswith("##") else current
            continue
        key = re.match(r"^([a-z_]\S*) \(([\d, ]*)\)", line)
        if key:
            shape = tuple(int(n) for n in key.group(2).replace(" ", "").split(",") if n)
            (sections[current][0] if current else backbone)[key.group(1)] = shape
    return backbone, sections


def official_task_keys(section):
    backbone, sections = parse_dump()
    keys, total = sections[section]
    layers = [(k, v) for k, v in backbone.items() if ".encoder.layers." in k]
    ordered = []
    for key, shape in keys.items():
        ordered.append((key, shape))
        if key == "beit3.encoder.embed_positions.B.weight":
            ordered += layers
    return ordered, total


BASE_CASES = [
    ("vqav2", "beit3_base_patch16_480", {"num_classes": 3129}, "beit3_base_patch16_480_vqav2"),
    ("nlvr2", "beit3_base_patch16_224", {}, "beit3_base_patch16_224_nlvr2"),
    ("retrieval", "beit3_base_patch16_384", {}, "beit3_base_patch16_384_retrieval"),
    ("imagenet", "beit3_base_patch16_224", {"num_classes": 1000}, "beit3_base_patch16_224_imageclassification"),
    ("imagenet", "beit3_base_patch16_384", {"classifier": "retrieval"}, "beit3_base_patch16_384_retrieval"),
]


@pytest.mark.parametrize("task,model_name,kwargs,section", BASE_CASES)
def test_base_task_models_equal_official_dump(task, model_name, kwargs, section):
    with torch.device("meta"):
        model = tasks.build_model(task, model_name, **kwargs)
    want, total = official_task_keys(section)
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert [k for k, _ in got] == [k for k, _ in want]
    assert got == want
    assert sum(p.numel() for p in model.parameters()) == total


def test_imagenet_vision_only_count_matches_readme_87m():
    with torch.device("meta"):
        model = tasks.build_model("imagenet", "beit3_base_patch16_224")
    vision = sum(p.numel() for n, p in model.named_parameters() if ".B." not in n and "text_embed" not in n)
    assert vision == 86_662_120


def tiny(task, **kwargs):
    return tasks.build_model(task, TINY, **{**TINY_KW, **kwargs})


def inputs(batch=3, length=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, 32, 32, generator=g)
    text = torch.randint(3, 100, (batch, length), generator=g)
    pad = torch.zeros(batch, length, dtype=torch.long)
    pad[0, 4:] = 1
    return image, text, pad


def test_normalize_output_defaults_and_overrides_pass_through():
    assert tiny("vqav2", num_classes=5).beit3.encoder.layer_norm is None
    assert tiny("imagenet", num_classes=5).beit3.encoder.layer_norm is None
    assert tiny("nlvr2").beit3.encoder.layer_norm is not None
    assert tiny("retrieval").beit3.encoder.layer_norm is not None
    assert tiny("imagenet", classifier="retrieval").beit3.encoder.layer_norm is not None
    model = tiny("vqav2", num_classes=5, drop_path_rate=0.1, normalize_output=True)
    assert model.config.drop_path_rate == 0.1 and model.config.embed_dim == 32
    assert model.beit3.encoder.layer_norm is not None  # the caller wins
    with pytest.raises(TypeError, match="unknown override"):
        tiny("nlvr2", not_an_option=1)
    with pytest.raises(ValueError, match="unknown ImageNet classifier"):
        tiny("imagenet", classifier="knn")
    with pytest.raises(ValueError, match="num_classes is not an option"):
        tiny("imagenet", classifier="retrieval", num_classes=10)


def test_vqa_forward_is_pooler_on_image_cls_then_head():
    model = tiny("vqav2", num_classes=7).eval()
    image, text, pad = inputs()
    logits = model(image=image, question=text, padding_mask=pad, labels=torch.zeros(3, 7))
    x = model.beit3(textual_tokens=text, visual_tokens=image, text_padding_position=pad)["encoder_out"]
    pooled = torch.tanh(model.pooler.dense(model.pooler.norm(x[:, 0])))
    want = model.head[3](F.gelu(model.head[1](model.head[0](pooled))))
    assert logits.shape == (3, 7)
    torch.testing.assert_close(logits, want)


def test_nlvr2_forward_concatenates_both_pairs():
    model = tiny("nlvr2").eval()
    image, text, pad = inputs()
    image_b = image.flip(0)
    logits = model(image_a=image, image_b=image_b, text_description=text, padding_mask=pad)
    feats = []
    for img in (image, image_b):
        out = model.beit3(textual_tokens=text, visual_tokens=img, text_padding_position=pad)
        x, split = out["encoder_out"], out["multiway_split_position"]
        assert split == 1 + 4  # image CLS + 2x2 patches, then the text BOS
        feats += [x[:, 0], x[:, split]]
    torch.testing.assert_close(logits, model.head(torch.cat(feats, dim=-1)), atol=1e-6, rtol=1e-5)
    swapped = model(image_a=image_b, image_b=image, text_description=text, padding_mask=pad)
    assert not torch.allclose(swapped, logits)  # order matters: [a; b]


def test_retrieval_forward_features_and_loss():
    model = tiny("retrieval").eval()
    image, text, pad = inputs()
    vision, language = model(image=image, text_description=text, padding_mask=pad, only_infer=True)
    torch.testing.assert_close(vision.norm(dim=-1), torch.ones(3))
    x_txt = model.beit3(textual_tokens=text, text_padding_position=pad)["encoder_out"]
    torch.testing.assert_close(language, F.normalize(model.language_head(x_txt[:, 0]), dim=-1))
    only_image = model(image=image, only_infer=True)
    assert only_image[1] is None and torch.allclose(only_image[0], vision)
    loss, v2, l2 = model(image=image, text_description=text, padding_mask=pad)
    scale = math.exp(math.log(1 / 0.07))
    labels = torch.arange(3)
    want = (F.cross_entropy(scale * vision @ language.t(), labels)
            + F.cross_entropy(scale * language @ vision.t(), labels)) / 2
    torch.testing.assert_close(loss, want)
    with pytest.raises(ValueError, match="needs both image and text_description"):
        model(image=image)


def test_retrieval_logit_scale_is_not_clamped():
    model = tiny("retrieval")
    assert model.logit_scale.shape == () and model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    with torch.no_grad():
        model.logit_scale.fill_(8.0)  # exp(8) = 2981 > CLIP's clamp of 100
    feats = F.normalize(torch.randn(4, 32), dim=-1)
    _, logits, _ = retrieval.clip_loss(feats, feats, model.logit_scale.exp())
    torch.testing.assert_close(logits, math.exp(8.0) * feats @ feats.t())


def test_imagenet_forward_is_mean_of_patch_tokens():
    model = tiny("imagenet", num_classes=10).eval()
    image, _, _ = inputs()
    x = model.beit3(visual_tokens=image)["encoder_out"]
    torch.testing.assert_close(model(image), model.head(model.fc_norm(x[:, 1:].mean(1))))
    assert tiny("imagenet", num_classes=0)(image).shape == (3, 32)


class CharTokenizer:
    """(texts, max_len) -> {"text_ids", "padding_mask"}: [bos] + one id per character + [eos]."""

    def __call__(self, texts, max_len=64):
        ids = torch.ones(len(texts), max_len, dtype=torch.long)
        pad = torch.ones(len(texts), max_len, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [0] + [3 + ord(c) % 90 for c in text][: max_len - 2] + [2]
            ids[row, : len(tokens)] = torch.tensor(tokens)
            pad[row, : len(tokens)] = 0
        return {"text_ids": ids, "padding_mask": pad}


def test_imagenet_retrieval_classifier_is_cosine_with_class_name_embeddings():
    model = tiny("imagenet", classifier="retrieval").eval()
    image, _, _ = inputs()
    names = ["tench", "goldfish", "great white shark", "tiger shark"]
    templates = ("{}", "a photo of a {}.")
    with pytest.raises(ValueError, match="build_class_embeddings"):
        model(image)
    emb = model.build_class_embeddings(names, CharTokenizer(), templates=templates, max_len=24, batch_size=3)
    assert emb.shape == (4, 32)
    # One class by hand: both templates encoded by the language branch, averaged, normalised.
    tokens = CharTokenizer()(["goldfish", "a photo of a goldfish."], max_len=24)
    by_hand = F.normalize(model.encode_text(tokens["text_ids"], tokens["padding_mask"]).mean(0), dim=-1)
    torch.testing.assert_close(emb[1], by_hand, atol=1e-6, rtol=1e-5)
    logits = model(image)
    want = model.logit_scale.exp() * model.encode_image(image) @ emb.t()
    torch.testing.assert_close(logits, want)
    # Training path: class-name tokens passed in, gradients reach the language branch.
    tokens = CharTokenizer()([t.format(n) for n in names for t in templates], max_len=24)
    model.train()
    out = model(image, tokens["text_ids"], tokens["padding_mask"], num_templates=2)
    imagenet.loss(out, torch.tensor([0, 1, 3])).backward()
    assert model.language_head.weight.grad is not None and model.vision_head.weight.grad is not None
    assert "class_embeddings" not in model.state_dict()


def test_head_init_is_official():
    def check_linear(linear, scale=1.0):
        assert linear.weight.abs().max() <= 0.02 * scale + 1e-9
        if linear.bias is not None:
            assert torch.count_nonzero(linear.bias) == 0
        assert linear.weight.std().item() == pytest.approx(0.02 * 0.5396 * scale, rel=0.2)  # N(0,.02) cut at ±1σ

    def check_norm(norm):
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)

    vqa = tiny("vqav2", num_classes=300)
    check_norm(vqa.pooler.norm), check_linear(vqa.pooler.dense), check_linear(vqa.head[0])
    check_norm(vqa.head[1]), check_linear(vqa.head[3])
    nl = tiny("nlvr2")
    check_norm(nl.head.norm1), check_norm(nl.head.norm2)
    check_linear(nl.head.dense1, scale=0.001)
    assert nl.head.dense2.weight.abs().max() <= 0.02 * 0.001 + 1e-12
    ret = tiny("retrieval")
    assert ret.vision_head.bias is None and ret.language_head.bias is None
    check_linear(ret.vision_head), check_linear(ret.language_head)
    cls = tiny("imagenet", num_classes=500)
    check_norm(cls.fc_norm), check_linear(cls.head, scale=0.001)


def test_losses_match_the_official_definitions():
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    soft = torch.tensor([[1.0, 0.0, 0.3], [0.0, 0.6, 0.0]])
    by_hand = sum(
        -(t * math.log(1 / (1 + math.exp(-z))) + (1 - t) * math.log(1 - 1 / (1 + math.exp(-z))))
        for row_z, row_t in zip(logits.tolist(), soft.tolist()) for z, t in zip(row_z, row_t)
    ) / 2  # summed over answers, averaged over the batch
    assert vqav2.loss(logits.half(), soft).dtype == torch.float32
    assert vqav2.loss(logits, soft).item() == pytest.approx(by_hand, rel=1e-6)
    labels = torch.tensor([0, 1])
    assert nlvr2.loss(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item())
    torch.testing.assert_close(imagenet.loss(logits, labels), LabelSmoothingCrossEntropy(0.1)(logits, labels))
    torch.testing.assert_close(imagenet.loss(logits, labels, label_smoothing=0.0), F.cross_entropy(logits, labels))
    mixed = torch.tensor([[0.7, 0.3, 0.0], [0.1, 0.1, 0.8]])
    torch.testing.assert_close(imagenet.loss(logits, mixed), SoftTargetCrossEntropy()(logits, mixed))
    with pytest.raises(ValueError, match="same shape"):
        vqav2.loss(logits, soft[:, :2])


def test_clip_loss_single_process():
    img, txt = F.normalize(torch.randn(3, 8), dim=-1), F.normalize(torch.randn(3, 8), dim=-1)
    total, per_image, per_text = retrieval.clip_loss(img, txt, 10.0)
    labels = torch.arange(3)
    want = (F.cross_entropy(10 * img @ txt.t(), labels) + F.cross_entropy(10 * txt @ img.t(), labels)) / 2
    torch.testing.assert_close(total, want)
    assert retrieval.loss(img, txt, 10.0).item() == pytest.approx(want.item())


def test_task_model_surface_for_the_optimizer():
    model = tiny("retrieval")
    assert model.get_num_layers() == 2
    assert model.no_weight_decay() == {
        "logit_scale", "beit3.encoder.embed_positions.A.weight", "beit3.vision_embed.cls_token"}
    model.set_grad_checkpointing()
    assert model.beit3.encoder.grad_checkpointing
    from tasks.heads import PRETRAINING_HEADS

    assert tiny("vqav2", num_classes=4).pretrained_drop_patterns() == (
        *PRETRAINING_HEADS, "beit3.encoder.layer_norm.*", "pooler.*", "head.*")
    assert tiny("nlvr2").pretrained_drop_patterns() == (*PRETRAINING_HEADS, "head.*")


def test_vlmo_pretraining_checkpoint_starts_a_fine_tune():
    """The staged recipe's heads (ITC, VL-branch ITC, ITM, MIM, MLM) are all dropped, the rest loads strictly."""
    vlmo = tasks.build_model("pretrain_vlmo", TINY, layout="paper", num_visual_tokens=16, **TINY_KW)
    model = tasks.build_model("nlvr2", TINY, layout="paper", vl_ffn_layers=vlmo.config.vl_ffn_layers, **TINY_KW)
    backbones.load_checkpoint(model, {"model": vlmo.state_dict()}, drop=model.pretrained_drop_patterns())
    torch.testing.assert_close(model.beit3.encoder.layers[1].ffn.VL.fc1.weight, vlmo.beit3.encoder.layers[1].ffn.VL.fc1.weight)


# ------------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("task,kwargs", [
    ("vqav2", {"num_classes": 9}), ("nlvr2", {}), ("retrieval", {}), ("imagenet", {"num_classes": 9}),
    ("imagenet", {"classifier": "retrieval"}),
])
def test_saved_task_state_dict_loads_strictly(tmp_path, task, kwargs):
    torch.manual_seed(1)
    source = tiny(task, **kwargs)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": source.state_dict()}, path)
    torch.manual_seed(2)
    target = tiny(task, **kwargs)
    backbones.load_checkpoint(target, path)
    for key, value in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, msg=key)


def test_vqa_head_of_another_answer_count_needs_drop(tmp_path):
    torch.manual_seed(1)
    official = tiny("vqav2", num_classes=3000)
    path = tmp_path / "official_vqa.pth"
    torch.save({"model": official.state_dict()}, path)
    model = tiny("vqav2", num_classes=3129)
    before = model.head[3].weight.clone()
    mismatch = r"head\.3\.weight: expected \[3129, 64\], found \[3000, 64\]"
    with pytest.raises(backbones.CheckpointError, match=mismatch):
        backbones.load_checkpoint(model, path)
    with pytest.raises(ValueError, match="3129 answers but the checkpoint's VQA head has 3000 classes"):
        vqav2.check_answer_vocab(path, [f"a{i}" for i in range(3129)])
    backbones.load_checkpoint(model, path, drop=["head.*"])
    torch.testing.assert_close(model.pooler.dense.weight, official.pooler.dense.weight)
    torch.testing.assert_close(model.beit3.text_embed.weight, official.beit3.text_embed.weight)
    torch.testing.assert_close(model.head[3].weight, before)  # re-initialised, not loaded
    with pytest.raises(backbones.CheckpointError, match="missing key"):  # other keys stay strict
        backbones.load_checkpoint(model, {k: v for k, v in official.state_dict().items() if "pooler" not in k},
                                  drop=["head.*"])


def test_pretraining_checkpoint_starts_a_fine_tune(tmp_path):
    pretrained = backbones.create_model(TINY, **TINY_KW)  # has the final LayerNorm
    state = {**pretrained.state_dict(), "mlm_head.weight": torch.zeros(100, 32), "mlm_head.bias": torch.zeros(100)}
    model = tiny("vqav2", num_classes=5)
    with pytest.raises(backbones.CheckpointError, match="unexpected key"):
        backbones.load_checkpoint(model, {"model": state})
    backbones.load_checkpoint(model, {"model": state}, drop=model.pretrained_drop_patterns())
    torch.testing.assert_close(model.beit3.vision_embed.proj.weight, pretrained.beit3.vision_embed.proj.weight)


def test_check_answer_vocab(tmp_path):
    model = tiny("vqav2", num_classes=4)
    vocab = ["yes", "no", "2", "red"]
    assert vqav2.check_answer_vocab(model, vocab) == 4
    assert vqav2.check_answer_vocab({"model": model.state_dict()}, {a: i for i, a in enumerate(vocab)}) == 4
    with pytest.raises(ValueError, match=r"3 answers .* 4 classes.*drop=\['head\.\*'\]"):
        vqav2.check_answer_vocab(model, vocab[:3])
    with pytest.raises(ValueError, match="without gaps"):
        vqav2.check_answer_vocab(model, {"yes": 0, "no": 1, "2": 2, "red": 5})
    with pytest.raises(ValueError, match="no VQA answer head"):
        vqav2.check_answer_vocab(tiny("nlvr2"), vocab)


def test_predictions_from_logits():
    logits = torch.tensor([[0.1, 0.9, 0.0], [2.0, 2.0, 1.0]])
    assert vqav2.predictions_from_logits(logits, torch.tensor([7, 8]), ["yes", "no", "2"]) == {7: "no", 8: "yes"}
    with pytest.raises(ValueError, match="answer vocabulary of 2"):
        vqav2.predictions_from_logits(logits, [7, 8], ["yes", "no"])


# ---------------------------------------------------------------------------------- quirks / transforms
def test_transform_is_train_quirks():
    for quirks in ("fixed", "official"):
        assert transform_is_train("train", quirks)
        assert not transform_is_train("test", quirks)
    assert not transform_is_train("val", "fixed") and transform_is_train("val", "official")
    assert not transform_is_train("dev", "fixed") and transform_is_train("dev", "official")
    with pytest.raises(ValueError, match="unknown quirks"):
        transform_is_train("val", "buggy")


@pytest.mark.parametrize("module", [vqav2, nlvr2, retrieval, imagenet])
def test_build_transform_validation_split_follows_quirks(module):
    val = "dev" if module is nlvr2 else "val"
    augmented = lambda t: "RandomResizedCrop" in repr(t)  # noqa: E731
    assert augmented(module.build_transform("train", 64))
    assert not augmented(module.build_transform(val, 64, quirks="fixed"))
    assert augmented(module.build_transform(val, 64, quirks="official"))
    assert not augmented(module.build_transform("test", 64, quirks="official"))


def test_vqa_build_dataset_passes_quirks_to_the_reader(tmp_path):
    import json

    questions = {"data_subtype": "val2014", "questions": [
        {"image_id": 1, "question": "Is it?", "question_id": 10},
        {"image_id": 1, "question": "Is it really?", "question_id": 11},
    ]}
    def answers(text):
        return [{"answer": text, "answer_confidence": "yes", "answer_id": i + 1} for i in range(10)]

    annotations = {"annotations": [
        {"question_id": 10, "image_id": 1, "answer_type": "yes/no", "question_type": "is", "answers": answers("Yes")},
        {"question_id": 11, "image_id": 1, "answer_type": "yes/no", "question_type": "is", "answers": answers("yes")},
    ]}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    kwargs = dict(annotations_json=tmp_path / "a.json", answer_vocab=["yes", "no"], img_size=32)
    fixed = vqav2.build_dataset(tmp_path / "q.json", tmp_path, "val", **kwargs)
    official = vqav2.build_dataset(tmp_path / "q.json", tmp_path, "val", quirks="official", **kwargs)
    assert fixed.quirks == "fixed" and len(fixed) == 2 and "RandomResizedCrop" not in repr(fixed.transform)
    # The official reader counts raw answers: ten "Yes" miss the normalised vocabulary entry "yes".
    assert official.quirks == "official" and len(official) == 1 and official.num_unlabeled == 1
    assert "RandomResizedCrop" in repr(official.transform)
    with pytest.raises(ValueError, match="unknown quirks"):
        vqav2.build_dataset(tmp_path / "q.json", tmp_path, "val", quirks="buggy", **kwargs)


def test_select_positions_with_a_host_count_equals_boolean_indexing():
    from tasks.heads import select_positions

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 5, generator=generator)[:, 1:]  # a strided view, as the encoder-output slices
    for p in (0.0, 0.3, 1.0):
        positions = torch.rand(3, 6, generator=generator) < p
        expected = x[positions]
        assert torch.equal(select_positions(x, positions, int(positions.sum())), expected)
        assert torch.equal(select_positions(x, positions), expected)
        targets = torch.randint(0, 9, (3, 6), generator=generator)
        assert torch.equal(select_positions(targets, positions, int(positions.sum())), targets[positions])
