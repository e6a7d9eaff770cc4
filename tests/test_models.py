"""One suite over every registered method at size tiny: the contract each `XForPreTraining`, `XModel` and
downstream class keeps (losses, gradients, save/load, attention kernels, masking, bad input)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

import vl_models
from conftest import make_batch
from vl_models.layers.align_fuse import sample_hard_negatives
from vl_models.layers.attention import Attention

METHODS = vl_models.list_methods()
NO_DROPOUT = {"text_config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}
# what differs between the families: ALBEF-style methods keep an EMA teacher (`momentum_*`) and queues; ViLTA keeps
# a frozen language teacher (`teacher.*`), has no ITC by default and freezes its unused ITC projections; VL-BEiT's
# frozen target source is its visual tokenizer, and its ITC projections wait for retrieval fine-tuning
TEACHER_PREFIX = {"vilta": "teacher.", "vl_beit": "visual_tokenizer."}
FROZEN_PREFIXES = {"vilta": ("teacher.", "temp", "vilta.vision_proj.", "vilta.text_proj."),
                   "vl_beit": ("visual_tokenizer.", "vl_beit.vision_proj.", "vl_beit.text_proj.")}
ITC_ON = {"vilta": {"itc_weight": 1.0}}


# the tiny preset trains without a feature queue (it learns from scratch); the suite keeps the queue's code tested
WITH_QUEUE = {"queue_size": 32}


def tiny(method, **overrides):
    queue = WITH_QUEUE if method not in TEACHER_PREFIX else {}
    return vl_models.get_config(method, "tiny", **{**queue, **overrides})


def build(method, cls=None, seed=0, **overrides):
    torch.manual_seed(seed)
    spec = vl_models.get_method(method)
    return (cls or spec.pretraining_class)(tiny(method, **overrides))


def losses_of(out) -> dict:
    return {k: v for k, v in out.items() if k.startswith("loss_")}


@pytest.mark.parametrize("method", METHODS)
def test_pretraining_returns_every_loss_and_every_parameter_learns(method):
    model = build(method).train()
    out = model(**make_batch(model.config), generator=torch.Generator().manual_seed(0))
    assert set(losses_of(out)) == {f"loss_{name}" for name in vl_models.get_method(method).objectives}
    assert all(torch.isfinite(v) for v in losses_of(out).values())
    cfg = model.config
    weighted = sum(getattr(cfg, f"{k[5:]}_weight") * v for k, v in losses_of(out).items())
    torch.testing.assert_close(out.loss, weighted)
    out.loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    without = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert without == [], f"parameters without a gradient (DDP would fail): {without[:5]}"
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    # only the teacher (and what a method documents as unused) is frozen
    assert frozen and all(n.startswith(FROZEN_PREFIXES.get(method, ("momentum_",))) for n in frozen)


@pytest.mark.parametrize("method", METHODS)
def test_generator_makes_pretraining_reproducible_and_collator_masks_are_used(method):
    model = build(method).eval()
    batch = make_batch(model.config)
    run = [losses_of(model(**batch, generator=torch.Generator().manual_seed(7))) for _ in range(2)]
    for key in run[0]:
        torch.testing.assert_close(run[0][key], run[1][key])
    # masks and labels from a collator replace the ones drawn inside
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, 2] = batch["input_ids"][:, 2]
    masked = batch["input_ids"].clone()
    masked[:, 2] = model.config.text_config.mask_token_id
    out = model(**batch, mlm_input_ids=masked, mlm_labels=labels, generator=torch.Generator().manual_seed(7))
    assert out.mlm_logits.shape == (batch["input_ids"].shape[0], model.config.text_config.vocab_size)
    with pytest.raises(ValueError, match="mlm_labels"):
        model(**batch, mlm_input_ids=masked)


@pytest.mark.parametrize("method", METHODS)
def test_itc_without_queue_and_distillation_is_the_clip_loss(method):
    """With alpha = 0, no queue and teacher == student, ALBEF's ITC reduces to the symmetric InfoNCE loss."""
    from vl_models.layers.losses import contrastive_loss

    if not hasattr(tiny(method), "itc_weight"):
        pytest.skip(f"{method} pre-trains without ITC")
    model = build(method, queue_size=0, alpha=0.0, **ITC_ON.get(method, {}), **NO_DROPOUT).eval()
    if method == "vlmae":
        model.config.mask_ratio = 0.0
    batch = make_batch(model.config)
    out = model(**batch, generator=torch.Generator().manual_seed(0))
    backbone = model.base_model
    image_feat = backbone.get_image_features(batch["pixel_values"])
    text_feat = backbone.get_text_features(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(out.loss_itc, contrastive_loss(image_feat, text_feat, model.temp),
                               atol=1e-5, rtol=1e-5)


def test_hard_negatives_are_never_the_positive():
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(5, 5) * 10 + torch.eye(5) * 50  # the positive dominates the softmax
    for _ in range(50):
        neg_image, neg_text = sample_hard_negatives(sim, sim.t(), g)
        assert (neg_image != torch.arange(5)).all() and (neg_text != torch.arange(5)).all()
    # sampling follows similarity: a much more similar negative is drawn almost always
    sim = torch.zeros(3, 3)
    sim[0, 2] = sim[2, 0] = 20.0
    picks = [int(sample_hard_negatives(sim, sim, g)[1][0]) for _ in range(50)]
    assert picks.count(2) >= 48


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip_keeps_outputs_momentum_and_queues(method, tmp_path):
    model = build(method).train()
    batch = make_batch(model.config)
    model(**batch, generator=torch.Generator().manual_seed(0))  # moves the queues and the teacher
    model.eval()
    model.save_pretrained(tmp_path)
    for loader in (vl_models.get_method(method).pretraining_class, AutoModelForPreTraining):
        loaded = loader.from_pretrained(tmp_path).eval()
        assert type(loaded) is type(model)
        ours, theirs = model.state_dict(), loaded.state_dict()
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), key
        a = model(**batch, generator=torch.Generator().manual_seed(1))
        b = loaded(**batch, generator=torch.Generator().manual_seed(1))
        for key in losses_of(a):
            torch.testing.assert_close(a[key], b[key])
    keys = list(model.state_dict())
    if method in TEACHER_PREFIX:
        assert any(k.startswith(TEACHER_PREFIX[method]) for k in keys)
    else:
        assert any("queue" in k for k in keys) and any("momentum_model" in k for k in keys)
    # loading keeps frozen what the constructor froze (transformers re-creates parameters as trainable)
    assert [n for n, p in loaded.named_parameters() if not p.requires_grad] == [
        n for n, p in model.named_parameters() if not p.requires_grad]
    assert isinstance(AutoConfig.from_pretrained(tmp_path), vl_models.get_method(method).config_class)


@pytest.mark.parametrize("method", METHODS)
def test_base_model_and_downstream_heads_load_from_a_pretraining_checkpoint(method, tmp_path):
    model = build(method)
    model.save_pretrained(tmp_path)
    base = AutoModel.from_pretrained(tmp_path)
    assert type(base) is vl_models.get_method(method).model_class
    torch.testing.assert_close(base.get_input_embeddings().weight, model.base_model.get_input_embeddings().weight)
    for task, cls in vl_models.get_method(method).task_classes.items():
        head, info = cls.from_pretrained(tmp_path, output_loading_info=True)
        assert any(k.startswith(TEACHER_PREFIX.get(method, "momentum_")) for k in info["unexpected_keys"]), task
        assert [n for n, p in head.named_parameters() if not p.requires_grad] == [
            n for n, p in cls(head.config).named_parameters() if not p.requires_grad], task
        if task == "retrieval" and hasattr(model, "itm_head"):  # its ITM head and temperature come from pre-training
            # (and ALBEF's momentum model and queues; only the queue's image ids are new)
            assert not [k for k in info["missing_keys"] if not k.startswith("image_id_queue.")]
        else:
            assert info["missing_keys"], task  # the task head starts from scratch and is reported
        assert all(not k.startswith(method + ".") for k in info["missing_keys"]), task


@pytest.mark.parametrize("method", METHODS)
def test_eager_and_sdpa_agree(method, tmp_path):
    build(method, **NO_DROPOUT).save_pretrained(tmp_path)
    batch = make_batch(AutoConfig.from_pretrained(tmp_path))
    outs = {}
    for impl in ("eager", "sdpa"):
        model = AutoModelForPreTraining.from_pretrained(tmp_path, attn_implementation=impl).eval()
        assert model.config.text_config._attn_implementation == impl
        outs[impl] = losses_of(model(**batch, generator=torch.Generator().manual_seed(0)))
    for key in outs["eager"]:
        torch.testing.assert_close(outs["sdpa"][key], outs["eager"][key], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_gradient_checkpointing_gives_the_same_gradients(method):
    grads = []
    for checkpointing in (False, True):
        model = build(method, **NO_DROPOUT).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(**make_batch(model.config), generator=torch.Generator().manual_seed(0)).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("task", ["retrieval", "vqa", "grounding", "nlvr2"])
def test_downstream_forward_backward(method, task):
    cls = vl_models.get_method(method).task_classes[task]
    model = build(method, cls=cls, **({"id2label": {i: f"a{i}" for i in range(7)}} if task == "vqa" else {}))
    batch = make_batch(model.config)
    b = batch["input_ids"].shape[0]
    if task == "vqa":
        batch["labels"] = torch.rand(b, 7)
    elif task == "grounding":
        batch["labels"] = torch.tensor([[0.5, 0.5, 0.2, 0.3]]).repeat(b, 1)
    elif task == "nlvr2":
        batch["pixel_values"] = torch.stack([batch["pixel_values"], batch["pixel_values"].flip(0)], dim=1)
        batch["labels"] = torch.tensor([0, 1] * (b // 2))
    model.train()
    out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    without = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert without == []
    if task == "vqa":
        assert out.logits.shape == (b, 7)
    if task == "grounding":
        assert out.pred_boxes.shape == (b, 4) and ((out.pred_boxes >= 0) & (out.pred_boxes <= 1)).all()
        grid = model.config.vision_config.image_size // model.config.vision_config.patch_size
        assert out.patch_logits.shape == (b, grid * grid)
        # the answer is the box of the most likely patch, and the score that patch's probability
        assert torch.equal(out.scores, out.patch_logits.softmax(-1).max(-1).values)


@pytest.mark.parametrize("method", METHODS)
def test_retrieval_rank_reranks_the_top_k_with_itm(method):
    model = build(method, cls=vl_models.get_method(method).task_classes["retrieval"]).eval()
    batch = make_batch(model.config, batch_size=5)
    scores = model.rank(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], k=2, batch_size=3)
    assert scores.shape == (5, 5)
    image, text = torch.arange(5).repeat_interleave(5), torch.arange(5).repeat(5)  # every (image, text) pair
    with torch.no_grad():
        itc = model.base_model.get_image_features(batch["pixel_values"]) @ model.base_model.get_text_features(
            batch["input_ids"], batch["attention_mask"]).t()
        itm = model(pixel_values=batch["pixel_values"][image], input_ids=batch["input_ids"][text],
                    attention_mask=batch["attention_mask"][text]).itm_logits[:, 1].view(5, 5)
    none = torch.zeros(5, 5, dtype=torch.bool)
    reranked = none.scatter(1, itc.topk(2, dim=1).indices, True) | none.scatter(0, itc.topk(2, dim=0).indices, True)
    # ALBEF: a re-ranked pair scores ITM (match logit) + ITC, above every other pair, which keep their ITC order
    torch.testing.assert_close(scores[reranked], (itm + itc)[reranked], atol=1e-5, rtol=1e-4)
    assert scores[reranked].min() > scores[~reranked].max()
    gap = scores[~reranked] - itc[~reranked]
    torch.testing.assert_close(gap, torch.full_like(gap, float(gap[0])))
    # k = 0 ranks by ITC alone: the same similarities, nothing re-scored
    only_itc = model.rank(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], k=0, batch_size=3)
    torch.testing.assert_close(only_itc, itc)
    with pytest.raises(ValueError, match="`k` must be an int >= 0"):
        model.rank(batch["pixel_values"], batch["input_ids"], batch["attention_mask"], k=-1)


@pytest.mark.parametrize("method", METHODS)
def test_retrieval_fine_tunes_at_a_higher_resolution(method):
    """`interpolate_pos_encoding` reaches every pass of the retrieval loss, the hard negatives' fusion included
    (VL-BEiT's fusion is a joint pass from the pixels), and its ITM logits are those `rank` re-scores with."""
    model = build(method, cls=vl_models.get_method(method).task_classes["retrieval"], **NO_DROPOUT)
    batch = make_batch(model.config)
    vision = model.config.vision_config
    side = vision.image_size + 2 * vision.patch_size
    batch["pixel_values"] = torch.nn.functional.interpolate(batch["pixel_values"], size=(side, side))
    out = model.train()(**batch, interpolate_pos_encoding=True, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.logits_per_image.shape == (4, 4)
    model.eval()
    at_base = make_batch(model.config, batch_size=3)
    scores = model.rank(at_base["pixel_values"], at_base["input_ids"], at_base["attention_mask"], k=3)
    out = model(**at_base, return_loss=False)
    match = out.itm_logits[:, 1] + out.logits_per_image.diagonal() * model.temp.clamp(0.001, 0.5)  # ITM + ITC
    torch.testing.assert_close(scores.diagonal(), match, atol=1e-5, rtol=1e-4)


def test_vlmae_student_sees_only_the_visible_patches():
    model = build("vlmae", align_on_masked_image=True).train()  # base and large: one pass over the visible patches
    n = model.config.vision_config.num_patches
    seen = []
    model.vlmae.vision.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    model.momentum_model.vision.register_forward_hook(lambda m, i, o: seen.append(("teacher", o.shape[1])))
    for ratio in (0.75, 0.5, 0.3):
        seen.clear()
        model.config.mask_ratio = ratio
        out = model(**make_batch(model.config), generator=torch.Generator().manual_seed(0))
        assert seen[0] == 1 + math.ceil((1 - ratio) * n)  # the student: visible patches + CLS, nothing else
        assert [s for s in seen if isinstance(s, int)] == [seen[0]]
        assert ("teacher", 1 + n) in seen  # the momentum encoder sees the full image
        assert out.image_mask.sum(1).eq(n - (seen[0] - 1)).all()
        assert out.reconstruction.shape == (4, n - (seen[0] - 1), model.config.vision_config.patch_size**2 * 3)


def test_vlmae_aligns_on_the_full_image_when_asked():
    """The CPU presets' setting: ITC, ITM and MLM read a second student pass over the full image; the decoder
    still reconstructs from the visible patches."""
    model = build("vlmae").train()
    assert model.config.align_on_masked_image is False  # the tiny preset
    n = model.config.vision_config.num_patches
    seen = []
    model.vlmae.vision.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    model.momentum_model.vision.register_forward_hook(lambda m, i, o: seen.append(("teacher", o.shape[1])))
    batch = make_batch(model.config)
    out = model(**batch, generator=torch.Generator().manual_seed(0))
    visible = 1 + math.ceil((1 - model.config.mask_ratio) * n)
    assert [s for s in seen if isinstance(s, int)] == [visible, 1 + n]
    assert out.reconstruction.shape[1] == n - (visible - 1)
    model.config.align_on_masked_image = True
    masked = model(**batch, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(out.loss_itc, masked.loss_itc)  # the alignment losses read other features


def test_vlmae_collator_image_mask_is_used():
    from vl_models.layers.masking import random_masking

    model = build("vlmae").eval()
    n = model.config.vision_config.num_patches
    mask = random_masking(4, n, 0.5, generator=torch.Generator().manual_seed(1)).mask
    out = model(**make_batch(model.config), image_mask=mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.image_mask, mask)


@pytest.mark.parametrize("method", METHODS)
def test_bad_inputs_name_the_argument(method):
    model = build(method).eval()
    batch = make_batch(model.config)
    if getattr(model, "supports_unimodal_inputs", False):  # text-only and image-only batches are valid data
        assert torch.isfinite(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).loss)
        assert torch.isfinite(model(pixel_values=batch["pixel_values"]).loss)
    else:
        with pytest.raises(ValueError, match="pixel_values"):
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        with pytest.raises(ValueError, match="input_ids"):
            model(pixel_values=batch["pixel_values"])
    with pytest.raises(ValueError, match="batch sizes"):
        model(pixel_values=batch["pixel_values"][:3], input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="pixel_values"):
        model(pixel_values=batch["pixel_values"][0], input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="pixel_values"):
        model(pixel_values=batch["pixel_values"][:, :, :16], input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"].float())
    with pytest.raises(ValueError, match="input_ids"):
        model(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"] + 10_000)
    if hasattr(model, "itm_head"):  # ITM draws its negatives in the batch
        with pytest.raises(ValueError, match="at least 2"):
            model(**{k: v[:1] for k, v in batch.items()})
    with pytest.raises(ValueError, match="neither"):
        model.base_model()


@pytest.mark.parametrize("method", METHODS)
def test_invalid_config_values_fail_when_built(method):
    from huggingface_hub.errors import StrictDataclassClassValidationError as ConfigError

    with pytest.raises(ConfigError, match="divisible"):
        tiny(method, vision_config={"hidden_size": 30, "num_attention_heads": 4})
    with pytest.raises(ConfigError, match="temperature"):
        tiny(method, temperature=0.9)
    with pytest.raises(ConfigError, match="image_size"):
        tiny(method, vision_config={"image_size": 30})
    # every field's declared type is checked (the config modules must not postpone annotations: strict skips
    # string annotations), so a flag's "False" is no truthy string in a bool field
    from huggingface_hub.errors import StrictDataclassFieldValidationError as FieldError

    with pytest.raises(FieldError, match="expected bool, got str"):
        tiny(method, tie_word_embeddings="False")
    with pytest.raises(FieldError, match="expected bool, got str"):
        tiny(method, vision_config={"qkv_bias": "False"})
    if method == "vlmae":
        with pytest.raises(ConfigError, match="mask_ratio"):
            tiny(method, mask_ratio=1.0)
    if method == "vq_mim":
        with pytest.raises(ConfigError, match="mim_mask_ratio"):
            tiny(method, mim_mask_ratio=1.0)
        with pytest.raises(ConfigError, match="num_codes"):
            tiny(method, num_codes=1)


@pytest.mark.parametrize("method", METHODS)
def test_presets(method):
    base = vl_models.get_config(method, "base")
    assert (base.vision_config.image_size, base.vision_config.patch_size, base.vision_config.hidden_size) == (
        224, 16, 768)
    assert base.vision_config.num_hidden_layers == 12
    assert base.text_config.hidden_size == 768 and base.text_config.vocab_size == 30522
    if method == "vilta":  # a whole BERT-base language encoder + METER's 6 co-attention layers
        assert (base.text_config.num_hidden_layers, base.text_config.num_fusion_layers) == (12, 6)
    else:  # ALBEF splits BERT-base into 6 text + 6 fusion layers
        assert base.text_config.num_hidden_layers + base.text_config.num_fusion_layers == 12
    large = vl_models.get_config(method, "large")
    assert large.vision_config.hidden_size == 1024
    assert vl_models.get_config(method, "tiny", embed_dim=8).embed_dim == 8
    with pytest.raises(ValueError, match="size"):
        vl_models.get_config(method, "huge")
    with pytest.raises(ValueError, match="method"):
        vl_models.get_config("nope", "tiny")
    with pytest.raises(ValueError, match="task"):
        vl_models.build(method, "tiny", task="captioning")
    model, processor = vl_models.build(method, "tiny", task="vqa")
    assert type(model) is vl_models.get_method(method).task_classes["vqa"]
    assert isinstance(processor, vl_models.get_method(method).processor_class)


# -- the MLM decoder tied to the word embeddings ----------------------------------------------------------------------

# (teacher MLM head, teacher word embeddings) of each family; VL-BEiT has no text teacher
TEACHER_MLM = {"vilta": ("teacher.mlm_head", "teacher.text.embeddings.word_embeddings"), "vl_beit": None}
ALIGN_FUSE_TEACHER = ("momentum_mlm_head", "momentum_model.text.embeddings.word_embeddings")


def mlm_pairs(model, method):
    """[(decoder, word embeddings)] of the student and, where there is one, the teacher."""
    pairs = [(model.get_output_embeddings(), model.get_input_embeddings())]
    teacher = TEACHER_MLM.get(method, ALIGN_FUSE_TEACHER)
    if teacher is not None:
        pairs.append((model.get_submodule(teacher[0]).decoder, model.get_submodule(teacher[1])))
    return pairs


def assert_tied(model, method):
    pairs = mlm_pairs(model, method)
    assert pairs[0][0] is model.mlm_head.decoder
    for decoder, embeddings in pairs:
        assert decoder.weight is embeddings.weight
        assert decoder.weight.data_ptr() == embeddings.weight.data_ptr()
        assert decoder.out_features == embeddings.num_embeddings == decoder.bias.shape[0]
    if len(pairs) > 1:  # each head reads its own model's embeddings, never the other's
        assert pairs[0][0].weight.data_ptr() != pairs[1][0].weight.data_ptr()


@pytest.mark.parametrize("method", METHODS)
def test_mlm_decoder_is_the_word_embeddings_for_student_and_teacher(method, tmp_path):
    from safetensors import safe_open

    from vl_models.training import param_groups

    model = build(method)
    assert model.config.tie_word_embeddings is True
    assert model.config.get_text_config() is model.config.text_config
    assert_tied(model, method)
    for _, embeddings in mlm_pairs(model, method)[1:]:  # the teacher starts as the student
        torch.testing.assert_close(embeddings.weight, model.get_input_embeddings().weight, rtol=0, atol=0)
    # listed once, as an embedding (no weight decay), never under the decoder's name
    names = [n for g in param_groups(model, 0.1) for n in g["names"]]
    embedding_name = next(n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight)
    assert embedding_name in next(g["names"] for g in param_groups(model, 0.1) if g["weight_decay"] == 0.0)
    assert "mlm_head.decoder.weight" not in names
    # saved once; loaded tied, without a missing key
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert not {k for k in keys if k.endswith("mlm_head.decoder.weight")}
    loaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert_tied(loaded, method)
    for (decoder, _), (decoder_l, _) in zip(mlm_pairs(model, method), mlm_pairs(loaded, method)):
        assert torch.equal(decoder_l.weight, decoder.weight) and torch.equal(decoder_l.bias, decoder.bias)
    # untied on request: the decoder has a weight of its own, saved and loaded as such
    untied = build(method, tie_word_embeddings=False)
    for decoder, embeddings in mlm_pairs(untied, method):
        assert decoder.weight is not embeddings.weight
    untied.save_pretrained(tmp_path / "untied")
    loaded = type(model).from_pretrained(tmp_path / "untied")
    for (decoder, embeddings), (decoder_l, embeddings_l) in zip(mlm_pairs(untied, method),
                                                                mlm_pairs(loaded, method)):
        assert decoder_l.weight is not embeddings_l.weight
        assert torch.equal(decoder_l.weight, decoder.weight) and torch.equal(embeddings_l.weight, embeddings.weight)


@pytest.mark.parametrize("method", METHODS)
def test_checkpoint_saved_before_tying_loads_its_own_decoder(method, tmp_path):
    """A checkpoint from before the tie: both tensors saved, different, and no `tie_word_embeddings` in its config.
    transformers keeps them apart (with a warning) rather than dropping the saved decoder."""
    import json

    old = build(method, tie_word_embeddings=False)
    old.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["tie_word_embeddings"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = type(old).from_pretrained(tmp_path)
    assert loaded.config.tie_word_embeddings is True
    for key, value in old.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("method", [m for m in METHODS if m not in TEACHER_MLM])
def test_momentum_update_moves_a_tied_teacher_weight_once(method):
    from vl_models.layers.momentum import momentum_update

    model = build(method)
    student, teacher = model.get_input_embeddings().weight, model.momentum_model.get_input_embeddings().weight
    with torch.no_grad():
        student.fill_(1.0)
        teacher.zero_()
    momentum_update(model.momentum_pairs(), 0.5)
    assert torch.equal(teacher, torch.full_like(teacher, 0.5))  # not 0.75: the decoder is the same tensor
    assert model.momentum_mlm_head.decoder.weight is teacher


@pytest.mark.parametrize("method", METHODS)
def test_resize_token_embeddings_grows_the_vocabulary_everywhere(method, tmp_path):
    model = build(method, **NO_DROPOUT).eval()
    old = model.config.text_config.vocab_size
    new = old + 6
    before = [(d.weight.detach().clone(), d.bias.detach().clone()) for d, _ in mlm_pairs(model, method)]
    model.resize_token_embeddings(new)
    assert model.config.text_config.vocab_size == new
    assert_tied(model, method)
    pairs = mlm_pairs(model, method)
    for (decoder, embeddings), (weight, bias) in zip(pairs, before):
        assert embeddings.num_embeddings == new and embeddings.weight.shape == (new, weight.shape[1])
        assert torch.equal(decoder.weight[:old], weight) and torch.equal(decoder.bias[:old], bias)
        # a teacher keeps its own rows and starts the new ones where the student does
        assert torch.equal(decoder.weight[old:], pairs[0][0].weight[old:])
        assert torch.equal(decoder.bias[old:], pairs[0][0].bias[old:])
    assert all(p.requires_grad for p in (pairs[0][0].weight, pairs[0][0].bias))
    assert all(not p.requires_grad for d, _ in pairs[1:] for p in (d.weight, d.bias))

    batch = make_batch(model.config)
    batch["input_ids"][:, 2] = new - 1  # a new token, as text and as an MLM label
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, 2] = new - 1
    masked = batch["input_ids"].clone()
    masked[:, 2] = model.config.text_config.mask_token_id
    out = model(**batch, mlm_input_ids=masked, mlm_labels=labels, generator=torch.Generator().manual_seed(0))
    assert out.mlm_logits.shape[-1] == new and torch.isfinite(out.loss)

    model.save_pretrained(tmp_path)
    loaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert loaded.config.text_config.vocab_size == new
    assert_tied(loaded, method)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    # the backbone and every downstream class resize their text tower (they have no MLM head)
    for cls in (vl_models.get_method(method).model_class, *vl_models.get_method(method).task_classes.values()):
        other = cls(tiny(method, **({"id2label": {0: "no", 1: "yes"}})))
        other.resize_token_embeddings(new)
        assert other.get_input_embeddings().weight.shape[0] == new == other.config.text_config.vocab_size
        assert other.get_output_embeddings() is None


@pytest.mark.parametrize("method", METHODS)
def test_models_that_cross_attend_to_padded_keys_refuse_flash_attention(method):
    """transformers' flash-attention path unpads the queries with the key padding mask (it assumes queries and keys
    are one sequence), so cross-attention to padded keys (image queries to caption tokens) gives wrong outputs:
    such a model must not claim flash support. Every Attention call of a pre-training and every task forward on
    padded captions is recorded; the rule is checked, whatever the kernel, without a GPU."""
    padded_cross = []

    def record(module, args, kwargs):
        named = dict(zip(("hidden_states", "attention_mask", "key_value_states"), args)) | kwargs
        if named.get("key_value_states") is not None and named.get("attention_mask") is not None:
            padded_cross.append(module)

    spec = vl_models.get_method(method)
    for task, cls in {"pretraining": spec.pretraining_class, **spec.task_classes}.items():
        padded_cross.clear()
        model = build(method, cls)
        hooks = [m.register_forward_pre_hook(record, with_kwargs=True) for m in model.modules()
                 if isinstance(m, Attention)]
        batch = make_batch(model.config)
        if task == "nlvr2":
            batch["pixel_values"] = torch.stack([batch["pixel_values"], batch["pixel_values"].flip(0)], dim=1)
        with torch.no_grad():
            model(**batch)
        for hook in hooks:
            hook.remove()
        if padded_cross:
            assert cls._supports_flash_attn is False, f"{cls.__name__} cross-attends to padded keys"
