"""VL-BEiT at size tiny: the relative position bias against BEiT's formula, expert routing per pass, text-only /
image-only / paired / mixed batches, the MIM and MVLM losses against per-position references, the visual tokenizer
(deterministic codes, its own training loss, save/load) and where the MIM targets come from."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError as ConfigError
from PIL import Image
from torch import nn
from transformers import AutoModel, AutoModelForPreTraining, AutoProcessor

import vl_models
from conftest import make_batch
from vl_models.data.collators import PreTrainingCollator
from vl_models.layers.relative_position import RelativePositionBias, relative_position_index
from vl_models.models.vl_beit import (
    VlBeitForImageClassification,
    VlBeitForPreTraining,
    VlBeitTokenizerConfig,
    VlBeitVisualTokenizer,
    tokenizer_config,
)
from vl_models.training.data import mix_sources
from vl_models.training.loop import load_quietly

NO_DROPOUT = {"text_config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}
N = 16  # tiny: 32x32 images in 8x8 patches


def tiny(**overrides):
    return vl_models.get_config("vl_beit", "tiny", **overrides)


def build(seed=0, **overrides) -> VlBeitForPreTraining:
    torch.manual_seed(seed)
    return VlBeitForPreTraining(tiny(**overrides))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_relative_position_index_matches_beit_formula():
    h, w = 2, 3
    index = relative_position_index((h, w))
    offsets = (2 * h - 1) * (2 * w - 1)
    for i in range(h * w):
        for j in range(h * w):
            dy, dx = i // w - j // w, i % w - j % w
            assert index[1 + i, 1 + j] == (dy + h - 1) * (2 * w - 1) + (dx + w - 1)
    assert (index[0, 1:] == offsets).all() and (index[1:, 0] == offsets + 1).all() and index[0, 0] == offsets + 2
    bias_module = RelativePositionBias((h, w), num_heads=2, num_layers=3)
    nn.init.normal_(bias_module.table)
    bias = bias_module(text_length=4)  # [layers, H, 4 + 1 + 6, ...]
    assert bias.shape == (3, 2, 11, 11)
    assert bias[:, :, :4].abs().sum() == 0 and bias[:, :, :, :4].abs().sum() == 0  # text tokens: no bias
    table = bias_module.table.view(-1, 3, 2)
    torch.testing.assert_close(bias[1, 0, 4:, 4:], table[index, 1, 0])


def test_locality_prior_starts_the_bias_at_minus_slope_times_distance_and_loaded_tables_win(tmp_path):
    """The tiny/small presets start the relative position bias as a distance prior (head h of a layer: slope
    2 * 2^-h); the CLS entries keep their init; from_pretrained keeps the saved table instead of the prior."""
    config = vl_models.get_config("vl_beit", "tiny")
    assert config.relative_position_init == "locality"
    assert vl_models.get_config("vl_beit", "base").relative_position_init == "normal"
    model = VlBeitForPreTraining(config)
    bias = model.vl_beit.relative_position
    heads, grid = bias.num_heads, bias.grid
    scores = bias()  # [layers, H, 1 + N, 1 + N]
    for h in range(heads):
        slope = 2.0 * 2.0 ** -h
        for i, j in ((0, 1), (0, grid[1]), (0, grid[1] + 1), (5, 5), (3, 12)):
            (yi, xi), (yj, xj) = divmod(i, grid[1]), divmod(j, grid[1])
            distance = ((yi - yj) ** 2 + (xi - xj) ** 2) ** 0.5
            assert torch.allclose(scores[:, h, 1 + i, 1 + j], torch.tensor(-slope * distance), atol=1e-6)
    assert scores[0, :, 0, 1:].std(-1).max() == 0 and scores[0, :, 0, 0].abs().max() < 1  # CLS: one learned value
    with torch.no_grad():
        bias.table.add_(1.5)
    model.save_pretrained(tmp_path)
    loaded = VlBeitForPreTraining.from_pretrained(tmp_path)
    assert torch.equal(loaded.vl_beit.relative_position.table, bias.table)
    with pytest.raises(ConfigError, match="relative_position_init"):
        vl_models.get_config("vl_beit", "tiny", relative_position_init="alibi")


def test_relative_position_bias_resamples_to_another_grid():
    """Fine-tuning at a higher resolution: offsets scale with the grid, so the zero offset, the largest offsets
    (the corners) and the CLS entries keep their learned values; the model runs on the larger grid."""
    module = RelativePositionBias((3, 4), num_heads=2, num_layers=1)
    nn.init.normal_(module.table)
    assert module.table_for((3, 4)) is module.table
    bigger = module.table_for((5, 7))  # offsets: 5 x 7 -> 9 x 13
    assert bigger.shape == (9 * 13 + 3, 2)
    old = module.table[:-3].view(5, 7, 2)
    new = bigger[:-3].view(9, 13, 2)
    for (oy, ox), (ny, nx) in [((2, 3), (4, 6)), ((0, 0), (0, 0)), ((4, 6), (8, 12)), ((0, 6), (0, 12))]:
        torch.testing.assert_close(new[ny, nx], old[oy, ox])
    torch.testing.assert_close(bigger[-3:], module.table[-3:])
    assert module(text_length=2, grid=(5, 7)).shape == (1, 2, 2 + 1 + 35, 2 + 1 + 35)

    model = build(**NO_DROPOUT).eval()
    with torch.no_grad():
        model.vl_beit.relative_position.table.normal_()
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.vl_beit.encode_image(pixels, interpolate_pos_encoding=True),
                               model.vl_beit.encode_image(pixels))  # the learned grid: nothing resampled
    large = torch.randn(2, 3, 48, 48)
    assert model.vl_beit.encode_image(large, interpolate_pos_encoding=True).shape == (2, 1 + 36, 32)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model.vl_beit._position_bias(large, 0)


def test_eager_and_sdpa_agree_with_a_strong_position_bias_and_padding():
    model = build(**NO_DROPOUT).eval()
    with torch.no_grad():
        model.vl_beit.relative_position.table.normal_(0, 3.0)  # large enough to change every attention row
    batch = make_batch(model.config)
    outs = {}
    for impl in ("eager", "sdpa"):
        model.config.vision_config._attn_implementation_internal = impl
        outs[impl] = model.vl_beit.encode_pair(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(outs["sdpa"], outs["eager"], atol=1e-5, rtol=1e-4)
    model.config.vision_config._attn_implementation_internal = "eager"
    with torch.no_grad():
        model.vl_beit.relative_position.table.zero_()
    assert not torch.allclose(model.vl_beit.encode_pair(batch["pixel_values"], batch["input_ids"],
                                                        batch["attention_mask"]), outs["eager"], atol=1e-3)


def expert_calls(model) -> list:
    calls = []
    for i, layer in enumerate(model.vl_beit.layers):
        for name, expert in layer.experts.items():
            expert.register_forward_hook(lambda m, a, o, i=i, name=name: calls.append((i, name, a[0].shape[1])))
    return calls


def test_routing_keeps_modalities_apart_below_the_vl_layers():
    model = build(vision_config={"num_hidden_layers": 3}, num_vl_layers=1).eval()
    calls = expert_calls(model)
    batch = make_batch(model.config)
    t = batch["input_ids"].shape[1]
    model.vl_beit.encode_text(batch["input_ids"], batch["attention_mask"])
    assert calls == [(i, "text", t) for i in range(3)]  # text alone: the language expert in every layer
    calls.clear()
    model.vl_beit.encode_image(batch["pixel_values"])
    assert calls == [(i, "image", 1 + N) for i in range(3)]
    calls.clear()
    model.vl_beit.encode_pair(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    assert calls == [(0, "text", t), (0, "image", 1 + N), (1, "text", t), (1, "image", 1 + N), (2, "vl", t + 1 + N)]


def test_text_only_image_only_paired_and_mixed_batches():
    model = build().train()
    batch = make_batch(model.config)
    text = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], generator=gen())
    assert torch.isfinite(text.loss_mlm) and text.loss_mim is None and text.loss_mvlm is None
    torch.testing.assert_close(text.loss, text.loss_mlm)
    image = model(pixel_values=batch["pixel_values"], generator=gen())
    assert torch.isfinite(image.loss_mim) and image.loss_mlm is None and image.loss_mvlm is None
    assert image.image_mask.sum(1).eq(model.config.num_masking_patches).all()
    # a mixed batch: 4 pairs, 3 text-only rows, 2 image-only rows, without borrowing from the pairs
    model = build(unimodal_from_pairs=False).train()
    other = make_batch(model.config, batch_size=3, seq_len=7, seed=1)
    out = model(**batch, text_input_ids=other["input_ids"], text_attention_mask=other["attention_mask"],
                image_pixel_values=other["pixel_values"][:2], generator=gen())
    assert all(torch.isfinite(out[k]) for k in ("loss_mlm", "loss_mim", "loss_mvlm"))
    out.loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    pairs_only = model(**batch, generator=gen())
    assert pairs_only.loss_mlm is None and pairs_only.loss_mim is None
    torch.testing.assert_close(pairs_only.loss, pairs_only.loss_mvlm)


def test_mim_and_mvlm_losses_match_per_position_references():
    model = build(**NO_DROPOUT).eval()
    batch = make_batch(model.config)
    mask = torch.zeros(4, N, dtype=torch.bool)
    mask[:, [1, 5, 6, 9]] = True
    labels = torch.full_like(batch["input_ids"], -100)
    labels[:, 3] = batch["input_ids"][:, 3]
    masked = batch["input_ids"].clone()
    masked[:, 3] = model.config.text_config.mask_token_id
    out = model(**batch, mlm_input_ids=masked, mlm_labels=labels, bool_masked_pos=mask, generator=gen())
    assert torch.equal(out.image_mask, mask)
    targets = model.mim_targets(batch["pixel_values"])
    # image-only MIM (the pairs' images, same mask): CE at every masked patch, one by one
    hidden = model.vl_beit.encode_image(batch["pixel_values"], bool_masked_pos=mask)
    ce = [F.cross_entropy(model.mim_head(hidden[b, 1 + n])[None], targets[b, n][None])
          for b in range(4) for n in range(N) if mask[b, n]]
    torch.testing.assert_close(out.loss_mim, torch.stack(ce).mean())
    hits = model.mim_head(hidden[:, 1:][mask]).argmax(-1) == targets[mask]
    torch.testing.assert_close(out.mim_accuracy, hits.float().mean())
    assert not out.mim_accuracy.requires_grad
    # MVLM: the masked caption and masked patches, read from one joint pass
    joint = model.vl_beit.encode_pair(batch["pixel_values"], masked, batch["attention_mask"], bool_masked_pos=mask)
    t = masked.shape[1]
    text_ce = torch.stack([F.cross_entropy(model.mlm_head(joint[b, 3])[None], labels[b, 3][None]) for b in range(4)])
    image_ce = [F.cross_entropy(model.mim_head(joint[b, t + 1 + n])[None], targets[b, n][None])
                for b in range(4) for n in range(N) if mask[b, n]]
    torch.testing.assert_close(out.loss_mvlm, text_ce.mean() + torch.stack(image_ce).mean())
    torch.testing.assert_close(out.mlm_logits, model.mlm_head(joint[:, 3]))
    # accuracies: top-1 at the same positions, detached (the training log averages them)
    text_hits = model.mlm_head(joint[:, 3]).argmax(-1) == labels[:, 3]
    image_hits = model.mim_head(joint[:, t + 1:][mask]).argmax(-1) == targets[mask]
    torch.testing.assert_close(out.mvlm_text_accuracy, text_hits.float().mean())
    torch.testing.assert_close(out.mvlm_image_accuracy, image_hits.float().mean())
    assert 0 <= out.mlm_accuracy <= 1 and not out.mlm_accuracy.requires_grad


def test_pairs_mask_more_text_than_text_only_rows():
    model = build(mvlm_probability=0.5, mlm_probability=0.15).eval()
    text = model.config.text_config
    ids = make_batch(model.config, batch_size=32, seq_len=24)["input_ids"]
    ids[1, -3:] = text.sep_token_id  # no padding in this batch
    pair = model(pixel_values=torch.randn(32, 3, 32, 32), input_ids=ids, generator=gen())
    alone = model(input_ids=ids, generator=gen())
    content = 32 * 22
    assert 0.4 < pair.mlm_logits.shape[0] / content < 0.6
    assert 0.1 < alone.mlm_logits.shape[0] / content < 0.2


def test_tokenizer_codes_are_deterministic_and_it_trains_on_its_own(tmp_path):
    torch.manual_seed(0)
    tokenizer = VlBeitVisualTokenizer(tokenizer_config("tiny"))
    pixels = torch.randn(4, 3, 32, 32)
    tokenizer.eval()
    first = tokenizer.get_codebook_indices(pixels)
    assert first.shape == (4, N) and first.dtype == torch.long
    assert torch.equal(tokenizer.get_codebook_indices(pixels), first)
    out = tokenizer.eval()(pixel_values=pixels)
    assert torch.equal(out.indices, first)  # eval forward touches no codebook state either
    assert torch.equal(tokenizer.get_codebook_indices(pixels), first)
    tokenizer.train()
    out = tokenizer(pixel_values=pixels, generator=gen())
    torch.testing.assert_close(out.loss, out.loss_vq + out.loss_rec)
    assert out.reconstruction.shape == (4, N, 8 * 8 * 3)
    out.loss.backward()
    assert [n for n, p in tokenizer.named_parameters() if p.requires_grad and p.grad is None] == []
    tokenizer.eval().save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is VlBeitVisualTokenizer
    assert torch.equal(loaded.get_codebook_indices(pixels), tokenizer.get_codebook_indices(pixels))


@pytest.mark.parametrize("encoder", ["vit", "patch"])
def test_a_frozen_encoder_tokenizer_learns_only_its_codebook(encoder):
    """freeze_encoder: the codes are an online k-means of the random encoder's features (BEST-RQ's quantizer)."""
    torch.manual_seed(0)
    tokenizer = VlBeitVisualTokenizer(tokenizer_config("tiny", freeze_encoder=True, encoder=encoder)).train()
    encoder = {n: p.clone() for n, p in tokenizer.named_parameters() if n.startswith(("encoder.", "encode_task."))}
    assert encoder and not any(tokenizer.get_parameter(n).requires_grad for n in encoder)
    optimizer = torch.optim.AdamW([p for p in tokenizer.parameters() if p.requires_grad], lr=1e-2)
    codes = tokenizer.quantizer.codes().clone()
    for step in range(3):
        out = tokenizer(pixel_values=torch.randn(4, 3, 32, 32), generator=gen(step))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(tokenizer.get_parameter(n), value) for n, value in encoder.items())
    assert not torch.equal(tokenizer.quantizer.codes(), codes)  # k-means init, then EMA updates


def test_the_patch_local_tokenizer_codes_a_patch_by_its_own_pixels_wherever_it_is():
    torch.manual_seed(0)
    tokenizer = VlBeitVisualTokenizer(tokenizer_config("tiny", encoder="patch", freeze_encoder=True)).eval()
    assert not any(k.startswith("encoder.") and "pos" in k for k in tokenizer.state_dict())
    pixels = torch.randn(3, 3, 32, 32)
    pixels[:, :, 8:16, 0:8] = pixels[:, :, 24:32, 16:24]  # patch 4 (row 1, col 0) = patch 14 (row 3, col 2)
    pixels[1, :, 0:8, 8:16] = pixels[0, :, 16:24, 24:32]  # image 1's patch 1 = image 0's patch 11
    codes = tokenizer.get_codebook_indices(pixels)  # [3, N]
    assert torch.equal(codes[:, 4], codes[:, 14]) and codes[1, 1] == codes[0, 11]
    other = pixels.clone()
    other[:, :, 0:8, 0:8] = torch.randn(3, 3, 8, 8)  # a change in one patch leaves the other patches' codes alone
    assert torch.equal(tokenizer.get_codebook_indices(other)[:, 1:], codes[:, 1:])
    with pytest.raises(ValueError, match="pixel_values"):
        tokenizer.get_codebook_indices(torch.randn(2, 3, 64, 64))


def test_the_patch_local_tokenizer_gives_a_repeated_patch_one_code_that_survives_noise(tmp_path):
    """Shapes-like batches: mostly identical black patches. The codebook's k-means init counts each distinct
    patch once, so no two codes sit on the background and its code does not flip with pixel noise."""
    torch.manual_seed(0)
    tokenizer = VlBeitVisualTokenizer(tokenizer_config("tiny", encoder="patch", freeze_encoder=True)).train()
    pixels = torch.full((8, 3, 32, 32), -2.0)
    for i in range(8):  # a coloured square per image, at varying places and colours
        pixels[i, i % 3, 4 * (i % 4):4 * (i % 4) + 9, 2 * i:2 * i + 9] = 2.0
    out = tokenizer(pixel_values=pixels, generator=gen())
    out.loss.backward()
    codes = tokenizer.quantizer.codes()
    assert torch.cdist(codes, codes).add(torch.eye(len(codes)) * 9).min() > 1e-3  # no two codes coincide
    tokenizer.eval()
    first = tokenizer.get_codebook_indices(pixels)
    background = first[0, -1]
    assert (first == background).sum() > N * 8 // 2 and (first[:, 0] != background).any()
    noisy = pixels + 0.01 * torch.randn(pixels.shape, generator=gen(1))
    assert torch.equal(tokenizer.get_codebook_indices(noisy), first)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is VlBeitVisualTokenizer and loaded.config.encoder == "patch"
    assert type(loaded.encoder) is type(tokenizer.encoder)
    assert torch.equal(loaded.get_codebook_indices(pixels), first)


def test_tokenizer_config_refuses_an_unknown_encoder():
    with pytest.raises(ConfigError, match=r"`encoder` must be one of \['vit', 'patch'\], got 'cnn'"):
        tokenizer_config("tiny", encoder="cnn")
    with pytest.raises(ConfigError, match="encoder"):
        tiny(tokenizer_config={"encoder": "conv"})
    assert tokenizer_config("base").encoder == "vit"


def test_tokenizer_reconstructs_teacher_features():
    config = tokenizer_config("tiny", reconstruction_target="features", teacher_dim=12)
    tokenizer = VlBeitVisualTokenizer(config).train()
    pixels, teacher = torch.randn(2, 3, 32, 32), torch.randn(2, N, 12)
    out = tokenizer(pixel_values=pixels, teacher_features=teacher)
    expected = (1 - F.cosine_similarity(out.reconstruction, teacher, dim=-1)).mean()
    torch.testing.assert_close(out.loss_rec, expected)
    with pytest.raises(ValueError, match="teacher_features"):
        tokenizer(pixel_values=pixels)
    with pytest.raises(ValueError, match="teacher_features"):
        tokenizer(pixel_values=pixels, teacher_features=teacher[:, :3])
    with pytest.raises(ConfigError, match="teacher_dim"):
        VlBeitTokenizerConfig(reconstruction_target="features")


def test_a_trained_tokenizer_becomes_part_of_the_model(tmp_path):
    torch.manual_seed(1)
    tokenizer = VlBeitVisualTokenizer(tokenizer_config("tiny"))
    model = build()
    pixels = make_batch(model.config)["pixel_values"]
    assert not torch.equal(model.mim_targets(pixels), tokenizer.get_codebook_indices(pixels))
    model.set_visual_tokenizer(tokenizer)
    assert torch.equal(model.mim_targets(pixels), tokenizer.eval().get_codebook_indices(pixels))
    assert not any(p.requires_grad for p in tokenizer.parameters())
    model.train()
    assert not model.visual_tokenizer.training
    model.save_pretrained(tmp_path)
    loaded = AutoModelForPreTraining.from_pretrained(tmp_path)
    assert torch.equal(loaded.mim_targets(pixels), model.mim_targets(pixels))
    with pytest.raises(ValueError, match="visual_tokenizer"):
        model.set_visual_tokenizer(VlBeitVisualTokenizer(tokenizer_config("tiny", num_codes=8)))


class FixedTokenizer(nn.Module):
    """A frozen external tokenizer: the code of a patch is its quantised mean brightness."""

    def forward(self, pixel_values):
        patches = F.avg_pool2d(pixel_values.mean(1, keepdim=True), 8).flatten(1)  # [B, N]
        return ((patches.clamp(-1, 1) + 1) * 15.99).long()


def test_any_frozen_tokenizer_gives_the_targets_and_stays_out_of_checkpoints(tmp_path):
    model = VlBeitForPreTraining(tiny(), visual_tokenizer=FixedTokenizer())
    batch = make_batch(model.config)
    assert torch.equal(model.mim_targets(batch["pixel_values"]), FixedTokenizer()(batch["pixel_values"]))
    assert not any(k.startswith("visual_tokenizer.") for k in model.state_dict())
    model.train()(**batch, generator=gen()).loss.backward()
    model.save_pretrained(tmp_path)
    loaded = VlBeitForPreTraining.from_pretrained(tmp_path, visual_tokenizer=FixedTokenizer())
    assert torch.equal(loaded.mim_targets(batch["pixel_values"]), model.mim_targets(batch["pixel_values"]))


def test_bad_inputs_name_the_argument():
    model = build().eval()
    batch = make_batch(model.config)
    with pytest.raises(ValueError, match="bool_masked_pos"):
        model(**batch, bool_masked_pos=torch.zeros(4, N + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="image_bool_masked_pos"):
        model(image_pixel_values=batch["pixel_values"], image_bool_masked_pos=torch.zeros(4, N))
    with pytest.raises(ValueError, match="text_input_ids"):
        model(input_ids=batch["input_ids"], text_input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="text_mlm_labels"):
        model(text_input_ids=batch["input_ids"], text_mlm_input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="attention_mask"):
        model(**{**batch, "attention_mask": batch["attention_mask"][:, :5]})
    with pytest.raises(ValueError, match="none of them"):
        model()
    with pytest.raises(ValueError, match="pixel_values|interpolate_pos_encoding"):
        model.vl_beit.encode_image(torch.randn(2, 3, 48, 48))


def test_invalid_configs_fail_when_built():
    with pytest.raises(ConfigError, match="hidden_size"):
        tiny(text_config={"hidden_size": 64, "num_attention_heads": 2})
    with pytest.raises(ConfigError, match="num_vl_layers"):
        tiny(num_vl_layers=3)
    with pytest.raises(ConfigError, match="tokenizer_config"):
        tiny(tokenizer_config={"vision_config": {"image_size": 64, "patch_size": 8}})
    with pytest.raises(ConfigError, match="mim_mask_ratio"):
        tiny(mim_mask_ratio=1.0)
    with pytest.raises(ConfigError, match="mvlm_probability"):
        tiny(mvlm_probability=1.5)
    config = tiny()
    assert not hasattr(config, "queue_size") and config.num_masking_patches == round(0.4 * N)
    assert vl_models.get_config("vl_beit", "base").num_masking_patches == 78
    assert vl_models.get_config("vl_beit", "base").tokenizer_config.num_codes == 8192


def test_image_classification_reads_the_vision_path_alone():
    config = tiny(id2label={i: str(i) for i in range(5)})
    model = VlBeitForImageClassification(config).train()
    calls = expert_calls(model)
    out = model(pixel_values=torch.randn(3, 3, 32, 32), labels=torch.tensor([0, 4, 2]))
    assert out.logits.shape == (3, 5) and {name for _, name, _ in calls} == {"image"}
    out.loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_image_classification_applies_one_final_norm_as_beit(tmp_path):
    # BEiT with mean pooling: patch states of the last layer before any norm -> mean -> fc_norm -> classifier
    config = tiny(id2label={i: str(i) for i in range(5)})
    torch.manual_seed(1)
    model = VlBeitForImageClassification(config).eval()
    nn.init.normal_(model.fc_norm.weight)
    nn.init.normal_(model.fc_norm.bias)
    states, norms = [], []
    model.vl_beit.layers[-1].register_forward_hook(lambda m, a, o: states.append(o))
    model.vl_beit.norm.register_forward_hook(lambda m, a, o: norms.append(o))
    pixels = torch.randn(3, 3, 32, 32)
    logits = model(pixel_values=pixels).logits
    assert norms == []  # the backbone's own final norm is skipped
    pooled = F.layer_norm(states[0][:, 1:].mean(1), (32,), model.fc_norm.weight, model.fc_norm.bias,
                          config.vision_config.layer_norm_eps)
    torch.testing.assert_close(logits, pooled @ model.classifier.weight.T + model.classifier.bias)
    assert not any(p.requires_grad for p in model.vl_beit.norm.parameters())
    # the key names are the pre-training checkpoint's: it loads with only the head fresh, and a saved
    # classifier loads back whole
    build().save_pretrained(tmp_path / "pretrained")
    loaded, info = load_quietly(VlBeitForImageClassification.from_pretrained, tmp_path / "pretrained",
                                id2label=config.id2label)
    assert {k.split(".")[0] for k in info["missing_keys"]} == {"fc_norm", "classifier"}
    model.save_pretrained(tmp_path / "classifier")
    again, info = load_quietly(VlBeitForImageClassification.from_pretrained, tmp_path / "classifier")
    assert not info["missing_keys"] and not info["unexpected_keys"]
    torch.testing.assert_close(again(pixel_values=pixels).logits, logits)


def test_processor_round_trip_and_unimodal_calls(tmp_path):
    processor = vl_models.build_processor("vl_beit", "tiny")
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is vl_models.VlBeitProcessor
    image = torch.rand(3, 32, 32)
    assert set(loaded(text=["a red circle"])) == {"input_ids", "attention_mask"}
    assert set(loaded(images=[image])) == {"pixel_values"}
    model = build().eval()
    out = model(**loaded(images=[image, image], text=["a red circle", "two squares"]), generator=gen())
    assert torch.isfinite(out.loss)


def test_collator_sorts_a_mixed_batch_by_kind_and_the_model_trains_on_it():
    g = gen(5)
    pil = [Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).byte().numpy()) for _ in range(3)]
    pairs = datasets.Dataset.from_dict({"image": pil[:2], "captions": [["a red circle"], ["two blue squares"]],
                                        "image_id": [0, 1]}).cast_column("image", datasets.Image())
    texts = datasets.Dataset.from_dict({"captions": [["a green triangle left of a circle"]]})
    only_images = datasets.Dataset.from_dict({"image": pil[2:]}).cast_column("image", datasets.Image())
    mixed = mix_sources(pairs, texts, only_images)
    assert len(mixed) == 4 and mixed[2]["image"] is None and mixed[3]["captions"] == []
    config = tiny()
    processor = vl_models.build_processor("vl_beit", "tiny")
    collator = PreTrainingCollator(processor, config, VlBeitForPreTraining, seed=3)
    batch = collator([{**mixed[i], "__index__": i} for i in (3, 0, 2, 1)])
    assert batch["pixel_values"].shape[0] == 2 and batch["text_input_ids"].shape[0] == 1
    assert batch["image_pixel_values"].shape[0] == 1
    assert batch["bool_masked_pos"].sum(1).eq(config.num_masking_patches).all()
    assert batch["image_bool_masked_pos"].shape == (1, N)
    assert {"mlm_input_ids", "mlm_labels", "text_mlm_input_ids", "text_mlm_labels"} <= set(batch)
    # the same rows in another order draw the same masks (per-sample generators)
    again = collator([{**mixed[i], "__index__": i} for i in (1, 2, 0, 3)])
    assert torch.equal(again["text_mlm_labels"], batch["text_mlm_labels"])
    assert torch.equal(again["image_bool_masked_pos"], batch["image_bool_masked_pos"])
    model = build(unimodal_from_pairs=False).train()
    out = model(**batch, generator=gen())
    assert all(torch.isfinite(out[k]) for k in ("loss_mlm", "loss_mim", "loss_mvlm"))
    assert torch.equal(out.image_mask, batch["bool_masked_pos"])


@pytest.mark.slow
def test_pretrain_script_trains_and_pushes_the_tokenizer_then_vl_beit_on_mixed_data(tmp_path, monkeypatch):
    """The tokenizer run ends with --push_to_hub (a Hub-compatible server on 127.0.0.1); VL-BEiT then takes the
    tokenizer by its Hub id, and `AutoModel` loads it from there (with vl_models imported, or as remote code)."""
    import importlib.util
    import json
    from pathlib import Path

    from hub_server import HubServer
    from vl_models.hub import auto_map, validate_card

    path = Path(__file__).resolve().parents[1] / "examples" / "pretrain.py"
    spec = importlib.util.spec_from_file_location("vl_examples_pretrain_vl_beit", path)
    pretrain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain)
    common = ["--size", "tiny", "--num_train_images", "24", "--num_val_images", "8", "--per_device_train_batch_size",
              "8", "--max_train_steps", "2", "--eval_steps", "0", "--logging_steps", "1"]
    server = HubServer(tmp_path / "hub").start()
    try:
        monkeypatch.setenv("HF_TOKEN", "test-token")
        server.use_in_process(monkeypatch)  # pretrain.main runs in this process
        pretrain.main(["--method", "vl_beit_tokenizer", *common, "--output_dir", str(tmp_path / "tok"),
                       "--push_to_hub", "--hub_model_id", "org/tiny-tok"])
        text_file = tmp_path / "texts.txt"
        text_file.write_text("a red circle\n\ntwo blue squares above a triangle\n")
        pretrain.main(["--method", "vl_beit", *common, "--text_data", str(text_file), "--image_data", "shapes",
                       "--visual_tokenizer", "org/tiny-tok", "--output_dir", str(tmp_path / "vl_beit")])
        from_hub = AutoModel.from_pretrained("org/tiny-tok")
        remote = AutoModel.from_pretrained("org/tiny-tok", trust_remote_code=True)
        processor = AutoProcessor.from_pretrained("org/tiny-tok")
        _, tree = server.store.head("models", "org/tiny-tok", "main")
    finally:
        server.stop()
    assert type(from_hub) is VlBeitVisualTokenizer and type(remote) is VlBeitVisualTokenizer
    config = json.loads((tree / "config.json").read_text())
    assert config["auto_map"] == auto_map("vl_beit", "vl_beit_tokenizer") == {
        "AutoConfig": "configuration_vl_beit.VlBeitTokenizerConfig",
        "AutoModel": "tokenizer_vl_beit.VlBeitVisualTokenizer"}
    card = validate_card((tree / "README.md").read_text())
    assert card.data.pipeline_tag == "image-feature-extraction" and "--visual_tokenizer org/tiny-tok" in card.text
    assert (tree / "tokenizer_vl_beit.py").is_file() and (tree / "processor_config.json").is_file()
    tokenizer = VlBeitVisualTokenizer.from_pretrained(tmp_path / "tok").eval()
    model = AutoModelForPreTraining.from_pretrained(tmp_path / "vl_beit")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    pixels = processor(images=image)["pixel_values"]
    codes = tokenizer.get_codebook_indices(pixels)
    assert codes.shape == (1, N) and torch.equal(model.mim_targets(pixels), codes)
    assert torch.equal(from_hub.eval().get_codebook_indices(pixels), codes)
