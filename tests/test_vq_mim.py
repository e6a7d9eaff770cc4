"""VQ-MIM at size tiny: MIM targets are the nearest codes of the projected teacher features (never through a full
distance matrix), the MIM loss against a reference CE at masked patches only, the VQ objective against its
formula, codebook state through save/load and dead-code restarts, a frozen codebook, an external frozen
tokenizer, and the shared MIM head on its own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError as ConfigError
from torch import nn
from torch.profiler import ProfilerActivity, profile

from conftest import make_batch
from vl_models.kernels import nearest_code_reference
from vl_models.layers.mim import CodebookTargets, MaskedImageModelingHead, TokenizerTargets
from vl_models.models.vq_mim import (
    METHOD,
    VqMimConfig,
    VqMimForPreTraining,
    VqMimForQuestionAnswering,
    VqMimModel,
)
from vl_models.presets import merge, tower_preset

NO_DROPOUT = {"text_config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}
K, N = 32, 16  # tiny preset: 32 codes; 32x32 images in 8x8 patches


def tiny(**overrides) -> VqMimConfig:
    """What `get_config("vq_mim", "tiny", **overrides)` gives once VQ-MIM is registered."""
    return VqMimConfig(**merge(merge(tower_preset("tiny"), METHOD.presets["tiny"]), overrides))


def build(seed=0, tokenizer=None, **overrides) -> VqMimForPreTraining:
    torch.manual_seed(seed)
    return VqMimForPreTraining(tiny(**overrides), visual_tokenizer=tokenizer)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def record(module, inputs=False) -> list:
    """Outputs (or (args, kwargs, output)) of every call of `module`."""
    calls = []

    def hook(mod, args, kwargs, out):
        calls.append((args, kwargs, out) if inputs else out)

    module.register_forward_hook(hook, with_kwargs=True)
    return calls


def snapshot(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def teacher_patches(model, pixel_values):
    with torch.no_grad():
        return model.momentum_model.encode_image(pixel_values)[:, 1:]  # [B, N, Dv]


class PatchColourTokenizer(nn.Module):
    """A stand-in for a frozen visual tokenizer: one code per patch from a linear score of its mean colour."""

    def __init__(self, patch_size=8, num_codes=K):
        super().__init__()
        self.patch_size, self.num_codes = patch_size, num_codes
        self.score = nn.Linear(3, 1)
        with torch.no_grad():
            self.score.weight.fill_(4.0)
            self.score.bias.fill_(0.1)

    def forward(self, pixel_values):
        colour = F.avg_pool2d(pixel_values, self.patch_size).flatten(2).transpose(1, 2)  # [B, N, 3]
        prob = torch.sigmoid(self.score(colour).squeeze(-1))  # [B, N]
        return (prob * self.num_codes).long().clamp(max=self.num_codes - 1)


# -- config ------------------------------------------------------------------------------------------------------


def test_config_has_a_mask_token_and_rejects_bad_values():
    assert tiny().vision_config.use_mask_token and tiny().num_codes == K
    assert VqMimConfig(vision_config={"use_mask_token": False}).vision_config.use_mask_token
    bad = [("num_codes", 1), ("code_dim", 0), ("codebook_decay", 1.0), ("codebook_decay", 0.0),
           ("commitment_weight", -0.1), ("dead_code_after", 0), ("vq_reconstruction", "l2"),
           ("mim_mask_ratio", 0.0), ("mim_mask_ratio", 1.0), ("mim_fusion_layers", -1), ("vq_weight", -1.0)]
    for field, value in bad:
        with pytest.raises(ConfigError, match=field):
            tiny(**{field: value})


# -- targets -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cosine", [True, False])
def test_targets_are_the_nearest_codes_of_the_projected_teacher_features(cosine):
    model = build(cosine_codes=cosine).train()
    batch = make_batch(model.config)
    model(**batch, generator=gen())  # k-means init: the codes now sit among the features
    model.eval()
    calls = record(model.mim_head.target, inputs=True)
    model(**batch, generator=gen(1))
    _, kwargs, out = calls[0]
    teacher = teacher_patches(model, batch["pixel_values"])
    torch.testing.assert_close(kwargs["features"], teacher)  # the momentum encoder's full-image patches
    target = model.mim_head.target
    with torch.no_grad():
        z = target.encoder(teacher).reshape(-1, model.config.code_dim)
    reference = nearest_code_reference(z, target.quantizer.codes(), cosine=cosine).view(4, N)
    assert torch.equal(out.indices, reference)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        lookup = model.mim_targets(batch["pixel_values"])
    assert torch.equal(lookup, reference)
    ops = {event.key for event in prof.key_averages()}
    assert not any("cdist" in op or "one_hot" in op for op in ops), sorted(ops)
    with profile(activities=[ProfilerActivity.CPU]) as prof:  # the check sees the full-matrix reference
        nearest_code_reference(z, target.quantizer.codes())
    assert any("cdist" in event.key for event in prof.key_averages())


def test_output_carries_codebook_statistics_of_the_targets():
    model = build().eval()
    calls = record(model.mim_head.target)
    out = model(**make_batch(model.config), generator=gen())
    counts = torch.bincount(calls[0].indices.flatten(), minlength=K).float()
    p = counts[counts > 0] / counts.sum()
    torch.testing.assert_close(out.codebook_perplexity, torch.exp(-(p * p.log()).sum()))
    torch.testing.assert_close(out.codebook_usage, (counts > 0).float().mean())
    assert 1.0 <= out.codebook_perplexity <= K
    assert out.image_mask.shape == (4, N) and out.image_mask.sum(1).eq(round(0.4 * N)).all()
    cfg = model.config
    weighted = sum(getattr(cfg, f"{k[5:]}_weight") * v for k, v in out.items() if k.startswith("loss_"))
    torch.testing.assert_close(out.loss, weighted)


# -- losses ------------------------------------------------------------------------------------------------------


def test_loss_mim_is_cross_entropy_at_the_masked_patches_only():
    model = build(**NO_DROPOUT).eval()
    batch = make_batch(model.config)
    calls = record(model.mim_head, inputs=True)
    out = model(**batch, generator=gen())
    (hidden, mask), _, mim = calls[0]
    targets = model.mim_targets(batch["pixel_values"])
    assert torch.equal(mim.target_indices, targets) and torch.equal(mask, out.image_mask)
    with torch.no_grad():
        logits = model.mim_head.classifier(hidden)  # [B, N, K] at every patch, for the reference only
    per_patch = F.cross_entropy(logits.reshape(-1, K), targets.reshape(-1), reduction="none").view(4, N)
    torch.testing.assert_close(out.loss_mim, (per_patch * mask).sum() / mask.sum())
    assert mim.logits.shape == (int(mask.sum()), K)  # only masked patches reach the classifier


@pytest.mark.parametrize("decay", [0.99, None])
def test_loss_vq_is_commitment_plus_feature_reconstruction(decay):
    model = build(codebook_decay=decay).eval()
    batch = make_batch(model.config)
    out = model(**batch, generator=gen())
    target = model.mim_head.target
    teacher = teacher_patches(model, batch["pixel_values"])
    with torch.no_grad():
        z = F.normalize(target.encoder(teacher), dim=-1)  # cosine codes
        codes = target.quantizer.codes()
        q = codes[nearest_code_reference(z.reshape(-1, z.shape[-1]), codes, cosine=True)].view_as(z)
        mse = ((z - q) ** 2).mean()
        vq = 0.25 * mse + (0.0 if decay else mse)  # gradient mode adds VQ-VAE's codebook term
        recon = (1 - F.cosine_similarity(target.decoder(q), teacher, dim=-1)).mean()
    torch.testing.assert_close(out.loss_vq, vq + recon)


@pytest.mark.parametrize("layers", [0, 1])
def test_mim_reads_the_caption_only_through_the_mim_fusion_layers(layers):
    model = build(mim_fusion_layers=layers, **NO_DROPOUT).eval()
    batch = make_batch(model.config)
    other = make_batch(model.config, seed=5)
    a = model(**batch, generator=gen()).loss_mim
    b = model(**{**batch, "input_ids": other["input_ids"]}, generator=gen()).loss_mim
    if layers:  # at initialisation the caption moves the MIM loss only slightly: any change shows the path
        assert not torch.equal(a, b)
    else:  # no path from the caption: the same computation on the same image gives the same bits
        assert torch.equal(a, b)


@pytest.mark.parametrize("overrides", [
    {"codebook_decay": None, "vq_reconstruction": "none"},
    {"vq_reconstruction": "smooth_l1", "cosine_codes": False, "kmeans_init": False},
    {"align_on_masked_image": True, "mim_fusion_layers": 0},
])
def test_every_trainable_parameter_learns_in_each_codebook_mode(overrides):
    model = build(**overrides).train()
    model(**make_batch(model.config), generator=gen()).loss.backward()
    without = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert without == []
    assert isinstance(model.mim_head.target.quantizer.codebook, nn.Parameter) == (overrides.get("codebook_decay",
                                                                                               0.99) is None)


# -- what the student sees ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("on_masked", [False, True])
def test_alignment_sees_the_full_image_and_mim_the_masked_one(on_masked):
    model = build(align_on_masked_image=on_masked).train()
    calls = record(model.vq_mim.vision.embeddings, inputs=True)
    out = model(**make_batch(model.config), generator=gen())
    masks = [kwargs.get("bool_masked_pos") for _, kwargs, _ in calls]
    assert len(masks) == (1 if on_masked else 2)  # a second, unmasked pass for ITC / ITM / MLM by default
    assert sum(m is not None for m in masks) == 1
    assert torch.equal(next(m for m in masks if m is not None), out.image_mask)


def test_collator_image_mask_is_used_and_checked():
    model = build().eval()
    batch = make_batch(model.config)
    mask = torch.zeros(4, N, dtype=torch.bool)
    mask[:, :5] = True
    mask[0, 9] = True  # rows may differ in count: masked patches are replaced, not dropped
    calls = record(model.mim_head)
    out = model(**batch, image_mask=mask, generator=gen())
    assert torch.equal(out.image_mask, mask) and calls[0].labels.shape == (21,)
    with pytest.raises(ValueError, match="image_mask"):
        model(**batch, image_mask=mask[:, :8])
    with pytest.raises(ValueError, match="image_mask"):
        model(**batch, image_mask=mask.long())


def test_mask_token_trains_in_pretraining_only_also_after_loading(tmp_path):
    model = build()
    assert model.vq_mim.vision.embeddings.mask_token.requires_grad
    assert not model.momentum_model.vision.embeddings.mask_token.requires_grad
    model.save_pretrained(tmp_path)
    assert VqMimForPreTraining.from_pretrained(tmp_path).vq_mim.vision.embeddings.mask_token.requires_grad
    for cls in (VqMimModel, VqMimForQuestionAnswering):
        for loaded in (cls(tiny()), cls.from_pretrained(tmp_path)):
            assert not loaded.base_model.vision.embeddings.mask_token.requires_grad, cls.__name__


# -- codebook state ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decay", [0.9, None])
def test_codebook_state_survives_save_and_load_exactly(decay, tmp_path):
    model = build(codebook_decay=decay, dead_code_after=2, **NO_DROPOUT).train()
    quantizer = model.mim_head.target.quantizer
    initial = snapshot(quantizer)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for step in range(2):
        model(**make_batch(model.config, seed=step), generator=gen(step)).loss.backward()
        opt.step()
        opt.zero_grad()
    trained = snapshot(quantizer)
    changed = {k for k in trained if not torch.equal(trained[k], initial[k])}
    assert {"codebook", "initted"} <= changed and (decay is None or {"cluster_size", "embed_sum"} <= changed)
    model.save_pretrained(tmp_path)
    loaded = VqMimForPreTraining.from_pretrained(tmp_path)
    assert loaded.config.codebook_decay == decay
    ours, theirs = snapshot(model.mim_head.target), snapshot(loaded.mim_head.target)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
    # both continue identically: the same targets now and the same codebook after one more step
    batch = make_batch(model.config, seed=9)
    assert torch.equal(model.eval().mim_targets(batch["pixel_values"]), loaded.mim_targets(batch["pixel_values"]))
    for m in (model, loaded):
        m.train()(**batch, generator=gen(9))
    after, after_loaded = snapshot(quantizer), snapshot(loaded.mim_head.target.quantizer)
    for key in after:
        assert torch.equal(after[key], after_loaded[key]), key


def test_dead_codes_are_restarted_after_the_configured_number_of_steps():
    model = build(kmeans_init=False, cosine_codes=False, dead_code_after=2).train()
    quantizer = model.mim_head.target.quantizer
    with torch.no_grad():  # four codes far from every feature: never chosen
        quantizer.codebook[:4] = 1e3
        quantizer.embed_sum[:4] = 1e3 * quantizer.cluster_size[:4, None]
    inputs = record(quantizer, inputs=True)
    batch = make_batch(model.config)
    model(**batch, generator=gen(0))
    assert quantizer.steps_since_used[:4].eq(1).all() and quantizer.codebook[:4].abs().min() > 100
    model(**batch, generator=gen(1))
    assert quantizer.steps_since_used[:4].eq(0).all()
    z = inputs[-1][0][0].detach().reshape(-1, model.config.code_dim)  # this step's projected features
    revived = quantizer.codebook[:4]
    # each revived code is a copy of one of them: compared exactly (a distance would carry cdist's rounding)
    assert (revived[:, None] == z[None]).all(-1).any(-1).all()
    used = torch.bincount(model.mim_targets(batch["pixel_values"]).flatten(), minlength=K)
    assert used[:4].sum() > 0  # and they are chosen again


def test_frozen_codebook_gives_the_same_targets_whatever_the_generator():
    model = build(freeze_codebook=True).train()
    target = model.mim_head.target
    assert not target.training and not any(p.requires_grad for p in target.parameters())
    before = snapshot(target)
    calls = record(target)
    batch = make_batch(model.config)
    for seed in range(3):  # different image masks, text masks and negatives; no k-means, EMA or restarts
        model(**batch, generator=gen(seed)).loss.backward()
    assert all(torch.equal(v, before[k]) for k, v in snapshot(target).items())
    assert all(torch.equal(c.indices, calls[0].indices) for c in calls)
    assert torch.equal(model.mim_targets(batch["pixel_values"]), calls[0].indices)
    # a learned codebook starts with k-means on the first batch, drawn from the generator: targets depend on it
    learned = []
    for seed in (0, 1):
        model = build().train()
        learned.append(record(model.mim_head.target))
        model(**batch, generator=gen(seed))
    assert not torch.equal(learned[0][0].indices, learned[1][0].indices)


def test_a_frozen_codebook_stays_frozen_after_loading(tmp_path):
    build(freeze_codebook=True).save_pretrained(tmp_path)
    model = VqMimForPreTraining.from_pretrained(tmp_path).train()
    before = snapshot(model.mim_head.target)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**make_batch(model.config), generator=gen()).loss.backward()
    opt.step()
    assert not model.mim_head.target.training
    assert all(torch.equal(v, before[k]) for k, v in snapshot(model.mim_head.target).items())


# -- external tokenizer ------------------------------------------------------------------------------------------


def test_an_external_frozen_tokenizer_provides_the_targets(tmp_path):
    tokenizer = PatchColourTokenizer()
    model = build(tokenizer=tokenizer, **NO_DROPOUT).train()
    assert isinstance(model.mim_head.target, TokenizerTargets)
    batch = make_batch(model.config)
    calls = record(model.mim_head)
    out = model(**batch, generator=gen())
    expected = tokenizer(batch["pixel_values"])
    assert torch.equal(calls[0].target_indices, expected) and expected.unique().numel() > 1
    assert out.loss_vq == 0 and torch.isfinite(out.loss_mim)
    out.loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert not tokenizer.training and not any(p.requires_grad for p in tokenizer.parameters())
    assert not any("tokenizer" in k for k in model.state_dict())  # the checkpoint holds our weights only
    model.save_pretrained(tmp_path)
    fresh = PatchColourTokenizer()
    loaded, info = VqMimForPreTraining.from_pretrained(tmp_path, visual_tokenizer=fresh, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert loaded.mim_head.target.tokenizer is fresh and torch.equal(fresh.score.weight, torch.full((1, 3), 4.0))
    a = model.eval()(**batch, generator=gen(3))
    b = loaded(**batch, generator=gen(3))
    torch.testing.assert_close(a.loss_mim, b.loss_mim)


def test_an_external_tokenizer_is_checked():
    with pytest.raises(ValueError, match="visual_tokenizer"):
        build(tokenizer=lambda pixels: pixels)
    batch = make_batch(tiny())
    for bad in (nn.Flatten(), PatchColourTokenizer(num_codes=1000)):  # float output; codes beyond K
        with pytest.raises(ValueError, match="visual_tokenizer"):
            build(tokenizer=bad)(**batch, generator=gen())


def test_a_learned_codebook_loaded_with_a_tokenizer_keeps_the_tokenizer_weights(tmp_path):
    build().save_pretrained(tmp_path)
    tokenizer = PatchColourTokenizer()
    VqMimForPreTraining.from_pretrained(tmp_path, visual_tokenizer=tokenizer)
    assert torch.equal(tokenizer.score.weight, torch.full((1, 3), 4.0))  # not re-initialised
    assert torch.equal(tokenizer.score.bias, torch.full((1,), 0.1))


# -- the shared head on its own (VL-BEiT uses it) ----------------------------------------------------------------


def test_mim_head_with_a_learned_codebook_trains_every_part():
    torch.manual_seed(0)
    head = MaskedImageModelingHead(12, CodebookTargets(12, 8, 4, kmeans_init=False)).train()
    hidden, features = torch.randn(2, 5, 12, requires_grad=True), torch.randn(2, 5, 12)
    mask = torch.tensor([[True, False, True, False, False], [False, False, False, True, True]])
    out = head(hidden, mask, features=features, generator=gen())
    assert out.logits.shape == (4, 8) and torch.equal(out.labels, out.target_indices[mask])
    (out.loss + out.codebook_loss).backward()
    assert all(p.grad is not None for p in head.parameters())
    assert CodebookTargets(12, 8, 4, reconstruction="none").decoder is None
    with pytest.raises(ValueError, match="features"):
        head(hidden, mask)
    with pytest.raises(ValueError, match="bool_masked_pos"):
        head(hidden, mask[:, :3], features=features)
    with pytest.raises(ValueError, match="reconstruction"):
        CodebookTargets(12, 8, 4, reconstruction="l1")


def test_mim_head_with_a_tokenizer_needs_pixels():
    head = MaskedImageModelingHead(12, TokenizerTargets(PatchColourTokenizer(), K))
    pixels = torch.randn(2, 3, 32, 32, generator=gen())
    mask = torch.zeros(2, N, dtype=torch.bool)
    mask[:, ::3] = True
    out = head(torch.randn(2, N, 12), mask, pixel_values=pixels)
    assert out.codebook_loss is None and torch.equal(out.target_indices, PatchColourTokenizer()(pixels))
    with pytest.raises(ValueError, match="pixel_values"):
        head(torch.randn(2, N, 12), mask)
