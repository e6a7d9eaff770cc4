"""Attention: the eager kernel against a plain reference, sdpa against eager (forward and gradients), masks."""

import pytest
import torch
from transformers import PreTrainedConfig

from vl_models.layers.attention import Attention, eager_attention_forward, key_padding_mask


def make_config(impl: str) -> PreTrainedConfig:
    config = PreTrainedConfig()
    config._attn_implementation = impl
    return config


def reference_attention(attn: Attention, x, kv, pad):
    """softmax(QK^T / sqrt(d) with padded keys removed) V, head by head, in float64."""
    b, lq, _ = x.shape
    h, d = attn.num_heads, attn.head_dim
    q = attn.q_proj(x).double().view(b, lq, h, d).transpose(1, 2)
    k = attn.k_proj(kv).double().view(b, kv.shape[1], h, d).transpose(1, 2)
    v = attn.v_proj(kv).double().view(b, kv.shape[1], h, d).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / d**0.5
    if pad is not None:
        scores = scores.masked_fill(pad[:, None, None, :] == 0, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, lq, h * d)
    return attn.out_proj(out.float())


def inputs(cross: bool, padded: bool, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 16, generator=g)
    kv = torch.randn(3, 7, 12, generator=g) if cross else x
    pad = None
    if padded:
        pad = torch.ones(3, kv.shape[1], dtype=torch.long)
        pad[1, -2:] = 0
        pad[2, -4:] = 0
    return x, kv, pad


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_eager_matches_reference(cross, padded):
    torch.manual_seed(0)
    config = make_config("eager")
    attn = Attention(config, 16, 4, kv_dim=12 if cross else None)
    x, kv, pad = inputs(cross, padded)
    mask = key_padding_mask(config, x, pad, keys=kv if cross else None)
    out, _ = attn(x, mask, key_value_states=kv if cross else None)
    torch.testing.assert_close(out, reference_attention(attn, x, kv, pad), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_sdpa_matches_eager_forward_and_gradients(cross, padded):
    results = {}
    for impl in ("eager", "sdpa"):
        torch.manual_seed(0)
        config = make_config(impl)
        attn = Attention(config, 16, 4, kv_dim=12 if cross else None)
        x, kv, pad = inputs(cross, padded)
        x.requires_grad_(True)
        mask = key_padding_mask(config, x, pad, keys=kv if cross else None)
        out, _ = attn(x, mask, key_value_states=kv if cross else None)
        if pad is not None and not cross:
            out = out * pad[..., None]  # padded queries carry no meaning
        out.square().sum().backward()
        results[impl] = (out.detach(), x.grad, attn.q_proj.weight.grad, attn.v_proj.weight.grad)
    for eager, sdpa in zip(results["eager"], results["sdpa"]):
        torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-4)


def test_padding_keys_do_not_influence_output():
    config = make_config("sdpa")
    attn = Attention(config, 16, 4)
    x, _, pad = inputs(False, True)
    mask = key_padding_mask(config, x, pad)
    out1, _ = attn(x, mask)
    x2 = x.clone()
    x2[1, -2:] = 100.0  # change only padded tokens of sample 1
    out2, _ = attn(x2, key_padding_mask(config, x2, pad))
    torch.testing.assert_close(out1[1, :-2], out2[1, :-2])


def test_position_bias_is_added_to_scores():
    config = make_config("eager")
    attn = Attention(config, 8, 2)
    x = torch.randn(1, 3, 8)
    bias = torch.zeros(1, 2, 3, 3)
    bias[..., 0] = -1e9  # forbid attending to token 0
    q = attn.q_proj(x).view(1, 3, 2, 4).transpose(1, 2)
    k = attn.k_proj(x).view(1, 3, 2, 4).transpose(1, 2)
    v = attn.v_proj(x).view(1, 3, 2, 4).transpose(1, 2)
    _, weights = eager_attention_forward(attn, q, k, v, None, scaling=0.5, position_bias=bias)
    assert torch.all(weights[..., 0] < 1e-6)
    out_eager, _ = attn(x, position_bias=bias)
    attn.config._attn_implementation = "sdpa"
    out_sdpa, _ = attn(x, position_bias=bias)
    torch.testing.assert_close(out_sdpa, out_eager, atol=1e-5, rtol=1e-5)


def test_bad_inputs_name_the_argument():
    config = make_config("eager")
    attn = Attention(config, 16, 4, kv_dim=12)
    with pytest.raises(ValueError, match="hidden_states"):
        attn(torch.randn(2, 16))
    with pytest.raises(ValueError, match="hidden_states"):
        attn(torch.randn(2, 3, 15))
    with pytest.raises(ValueError, match="hidden_states"):
        attn(torch.ones(2, 3, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="key_value_states"):
        attn(torch.randn(2, 3, 16), key_value_states=torch.randn(2, 4, 16))
    with pytest.raises(ValueError, match="key_value_states"):
        attn(torch.randn(2, 3, 16), key_value_states=torch.randn(3, 4, 12))
    with pytest.raises(ValueError, match="attention_mask"):
        key_padding_mask(config, torch.randn(2, 3, 16), torch.ones(2, 4))
    with pytest.raises(ValueError, match="attention_mask"):
        key_padding_mask(config, torch.randn(2, 3, 16), torch.ones(2, 3, 1))
    with pytest.raises(ValueError, match="divisible"):
        Attention(config, 10, 4)
