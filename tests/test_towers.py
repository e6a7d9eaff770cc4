"""Our towers compute exactly what transformers' BERT and ViT compute once their weights are mapped in,
and the shared blocks behave as documented (interpolation, multiway routing, gradient checkpointing)."""

import pytest
import torch
from transformers import BertConfig, BertModel, PreTrainedConfig, ViTConfig, ViTModel

from vl_models.configuration_utils import TextTowerConfig, VisionTowerConfig
from vl_models.layers.embeddings import DecoderEmbeddings, PatchEmbeddings, interpolate_pos_embed
from vl_models.layers.pretrained_towers import (
    bert_to_towers,
    text_tower_config,
    vision_tower_config,
    vit_to_tower,
)
from vl_models.layers.towers import FusionTransformer, TextTransformer, VisionTransformer
from vl_models.layers.transformer import MultiwayLayer

SMALL_VOCAB_IDS = {"cls_token_id": 2, "sep_token_id": 3, "mask_token_id": 4}


def _load(module, mapped: dict, prefix: str):
    state = {k.removeprefix(prefix): v for k, v in mapped.items() if k.startswith(prefix)}
    missing, unexpected = module.load_state_dict(state, strict=False)
    assert not unexpected
    return missing


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_text_tower_equals_bert(impl):
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=20), add_pooling_layer=False).eval()
    config = TextTowerConfig(**text_tower_config(bert.config, num_fusion_layers=0), **SMALL_VOCAB_IDS)
    config._attn_implementation = impl
    text = TextTransformer(config).eval()
    assert _load(text, bert_to_towers(bert.state_dict(), num_text_layers=2), "text.") == []
    ids = torch.randint(0, 60, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    expected = bert(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(text(ids, mask) * mask[..., None], expected * mask[..., None], atol=1e-5, rtol=1e-4)


def test_fusion_layers_take_the_upper_bert_layers():
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                intermediate_size=64), add_pooling_layer=False)
    kwargs = text_tower_config(bert.config)
    assert (kwargs["num_hidden_layers"], kwargs["num_fusion_layers"]) == (2, 2)
    config = TextTowerConfig(**kwargs, **SMALL_VOCAB_IDS)
    mapped = bert_to_towers(bert.state_dict(), num_text_layers=2)
    fusion = FusionTransformer(config, image_dim=16)
    missing = _load(fusion, mapped, "fusion.")
    assert missing and all(".cross_attn." in k for k in missing)  # only cross-attention starts from scratch
    torch.testing.assert_close(fusion.layers[1].mlp.fn.fc1.weight,
                               bert.encoder.layer[3].intermediate.dense.weight)
    with pytest.raises(ValueError, match="num_fusion_layers"):
        text_tower_config(bert.config, num_fusion_layers=5)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_vision_tower_equals_vit(impl):
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                             image_size=32, patch_size=8), add_pooling_layer=False).eval()
    config = VisionTowerConfig(**vision_tower_config(vit.config))
    config._attn_implementation = impl
    vision = VisionTransformer(config).eval()
    assert _load(vision, vit_to_tower(vit.state_dict()), "vision.") == []
    pixels = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(vision(pixels), vit(pixels).last_hidden_state, atol=1e-5, rtol=1e-4)
    # at another resolution both interpolate the position embeddings the same way (bicubic)
    big = torch.randn(1, 3, 48, 48)
    ours = vision(big, interpolate_pos_encoding=True)
    assert ours.shape == (1, 1 + 36, 32)


def test_interpolate_pos_embed_is_identity_on_the_same_grid_and_bicubic_otherwise():
    pos = torch.randn(1, 1 + 16, 8)
    assert interpolate_pos_embed(pos, (4, 4)) is pos
    out = interpolate_pos_embed(pos, (6, 2))
    grid = pos[:, 1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=(6, 2), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 12, 8))
    torch.testing.assert_close(out[:, :1], pos[:, :1])


def test_patch_embeddings_keep_and_mask():
    torch.manual_seed(0)
    emb = PatchEmbeddings(16, 4, 3, 8, use_mask_token=True)
    torch.nn.init.normal_(emb.pos_embed)
    torch.nn.init.normal_(emb.mask_token)
    pixels = torch.randn(2, 3, 16, 16)
    full = emb(pixels)  # [2, 17, 8]
    keep = torch.tensor([[3, 0, 7], [15, 2, 9]])
    kept = emb(pixels, ids_keep=keep)
    torch.testing.assert_close(kept[:, 1:], torch.gather(full[:, 1:], 1, keep[..., None].expand(-1, -1, 8)))
    masked = torch.zeros(2, 16, dtype=torch.bool)
    masked[0, 5] = True
    out = emb(pixels, bool_masked_pos=masked)
    torch.testing.assert_close(out[0, 6], emb.mask_token[0, 0] + emb.pos_embed[0, 6])
    torch.testing.assert_close(out[1], full[1])
    with pytest.raises(ValueError, match="pixel_values"):
        emb(torch.randn(2, 3, 20, 20))
    with pytest.raises(ValueError, match="pixel_values"):
        emb(torch.randn(2, 1, 16, 16))
    with pytest.raises(ValueError, match="bool_masked_pos"):
        PatchEmbeddings(16, 4, 3, 8)(pixels, bool_masked_pos=masked)


def test_decoder_embeddings_unshuffle_visible_tokens():
    dec = DecoderEmbeddings(num_patches=4, hidden_size=2)
    torch.nn.init.zeros_(dec.pos_embed)
    torch.nn.init.constant_(dec.mask_token, -1.0)
    visible = torch.tensor([[[9.0, 9.0], [2.0, 2.0], [0.0, 0.0]]])  # CLS, patch 2, patch 0
    ids_shuffle = torch.tensor([[2, 0, 1, 3]])
    out = dec(visible, torch.argsort(ids_shuffle, dim=1))
    expected = torch.tensor([[[9.0, 9.0], [0.0, 0.0], [-1.0, -1.0], [2.0, 2.0], [-1.0, -1.0]]])
    torch.testing.assert_close(out, expected)


def test_multiway_routes_tokens_to_their_expert():
    config = PreTrainedConfig()
    config._attn_implementation = "eager"
    layer = MultiwayLayer(config, 8, 2, 16, eps=1e-6, use_vl_expert=True)
    seen = {}
    for name, expert in layer.experts.items():
        expert.register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name, []).append(i[0].shape[1]))
    x = torch.randn(2, 7, 8)
    layer(x, text_length=3)  # a pair in a VL layer: the VL expert takes everything
    layer(x[:, :3], text_length=3)  # text only
    layer(x[:, 3:], text_length=0)  # image only
    assert seen == {"vl": [7], "text": [3], "image": [4]}
    below = MultiwayLayer(config, 8, 2, 16, eps=1e-6, use_vl_expert=False)
    seen.clear()
    for name, expert in below.experts.items():
        expert.register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name, []).append(i[0].shape[1]))
    below(x, text_length=3)
    assert seen == {"text": [3], "image": [4]}  # below the VL layers image tokens never meet a text expert
