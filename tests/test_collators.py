"""Collators: shapes and labels, masks equal to the masking functions called with the per-sample generator,
reproducibility (per sample, whatever the batch), unreadable images skipped and counted."""

from __future__ import annotations

import importlib.util
import io
import logging
import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import vl_models
from vl_models.data import build_shapes
from vl_models.data.collators import (
    INDEX_KEY,
    GroundingCollator,
    Nlvr2Collator,
    PreTrainingCollator,
    RetrievalCollator,
    VqaCollator,
    WithIndex,
    load_image,
    sample_generator,
    sample_seed,
    whole_word_ids,
)
from vl_models.layers.masking import mask_text, random_masking


@pytest.fixture(scope="module")
def shapes():
    return build_shapes(num_train=12, num_val=0, num_test=0, image_size=32, seed=3)


@pytest.fixture(scope="module")
def vlmae():
    return vl_models.get_config("vlmae", "tiny"), vl_models.build_processor("vlmae", "tiny")


def rows(ds, indices):
    data = WithIndex(ds)
    return [data[i] for i in indices]


def test_with_index_adds_the_index_and_leaves_images_encoded(shapes):
    row = WithIndex(shapes["captions_train"])[4]
    assert row[INDEX_KEY] == 4
    assert isinstance(row["image"], dict) and row["image"]["bytes"][:4] == b"\x89PNG"
    assert load_image(row["image"]).size == (32, 32)


def test_sample_seed_is_stable_and_distinguishes_keys():
    assert sample_seed(0, 1, 2) == sample_seed(0, 1, 2)
    assert len({sample_seed(0, 1, 2), sample_seed(0, 2, 1), sample_seed(1, 1, 2), sample_seed("0/1", 2)}) == 3
    assert 0 <= sample_seed("x") < 2**63


def test_pretraining_batch_shapes_and_labels(shapes, vlmae):
    config, processor = vlmae
    batch = PreTrainingCollator(processor, config, vl_models.VlmaeForPreTraining)(rows(shapes["captions_train"],
                                                                                    range(6)))
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "mlm_input_ids", "mlm_labels", "image_mask"}
    ids, labels, masked = batch["input_ids"], batch["mlm_labels"], batch["mlm_input_ids"]
    assert batch["pixel_values"].shape == (6, 3, 32, 32)
    assert masked.shape == labels.shape == ids.shape
    chosen = labels != -100
    assert torch.equal(labels[chosen], ids[chosen])  # labels are the original tokens
    assert torch.equal(masked[~chosen], ids[~chosen])  # nothing else changes
    specials = torch.isin(ids, torch.tensor(config.text_config.special_token_ids))
    assert not (chosen & (specials | (batch["attention_mask"] == 0))).any()
    assert chosen.any(1).all()  # every caption has a masked token
    num_patches = config.vision_config.num_patches
    assert batch["image_mask"].shape == (6, num_patches)
    assert (batch["image_mask"].sum(1) == num_patches - 4).all()  # ceil(0.25 * 16) visible


def test_masks_equal_the_masking_functions_with_the_sample_generator(shapes, vlmae):
    config, processor = vlmae
    collator = PreTrainingCollator(processor, config, vl_models.VlmaeForPreTraining, seed=7)
    collator.set_epoch(2)
    batch = collator(rows(shapes["captions_train"], [3, 9]))
    for position, index in enumerate([3, 9]):
        generator = sample_generator(7, 2, index)
        captions = shapes["captions_train"][index]["captions"]
        caption = captions[int(torch.randint(len(captions), (1,), generator=generator))] if len(captions) > 1 \
            else captions[0]
        ids = processor(text=[caption])["input_ids"]
        text = config.text_config
        ref_ids, ref_labels = mask_text(ids, mask_token_id=text.mask_token_id, vocab_size=text.vocab_size,
                                        special_token_ids=text.special_token_ids,
                                        probability=config.mlm_probability, generator=generator)
        ref_mask = random_masking(1, config.vision_config.num_patches, config.mask_ratio, generator=generator).mask
        length = ids.shape[1]
        assert torch.equal(batch["input_ids"][position, :length], ids[0])
        assert torch.equal(batch["mlm_input_ids"][position, :length], ref_ids[0])
        assert torch.equal(batch["mlm_labels"][position, :length], ref_labels[0])
        assert (batch["mlm_labels"][position, length:] == -100).all()
        assert torch.equal(batch["image_mask"][position], ref_mask[0])


def test_a_sample_gets_the_same_masks_in_any_batch_and_new_ones_next_epoch(shapes, vlmae):
    config, processor = vlmae
    collator = PreTrainingCollator(processor, config, vl_models.VlmaeForPreTraining, seed=0)
    ds = shapes["captions_train"]
    first = collator(rows(ds, [0, 5, 7]))
    again = PreTrainingCollator(processor, config, vl_models.VlmaeForPreTraining, seed=0)(rows(ds, [0, 5, 7]))
    for key in first:
        assert torch.equal(first[key], again[key]), key
    other = collator(rows(ds, [11, 5, 2, 1]))  # sample 5 in another batch, another position, other padding
    length = int(first["attention_mask"][1].sum())
    assert torch.equal(other["image_mask"][1], first["image_mask"][1])
    assert torch.equal(other["mlm_input_ids"][1, :length], first["mlm_input_ids"][1, :length])
    collator.set_epoch(1)
    later = collator(rows(ds, [0, 5, 7]))
    assert not torch.equal(later["image_mask"], first["image_mask"])


def test_method_decides_which_masks(shapes, vlmae):
    _, processor = vlmae
    albef = vl_models.get_config("albef", "tiny")
    batch = PreTrainingCollator(processor, albef, vl_models.AlbefForPreTraining)(rows(shapes["captions_train"],
                                                                                   range(3)))
    assert "image_mask" not in batch and "mlm_labels" in batch
    plain = PreTrainingCollator(processor, albef, text_masking=False)(rows(shapes["captions_train"], range(3)))
    assert set(plain) == {"pixel_values", "input_ids", "attention_mask"}
    with pytest.raises(ValueError, match="mask_ratio"):
        PreTrainingCollator(processor, albef, image_masking="random")


def test_block_masking_exact_count(shapes, vlmae):
    config, processor = vlmae
    batch = PreTrainingCollator(processor, config, image_masking="block")(rows(shapes["captions_train"], range(4)))
    assert (batch["image_mask"].sum(1) == config.vision_config.num_patches - 4).all()
    with pytest.raises(ValueError, match="image_masking"):
        PreTrainingCollator(processor, config, image_masking="grid")
    beit_like = SimpleNamespace(vision_config=config.vision_config, num_masking_patches=5)  # a count, no ratio
    for kind in ("block", "random"):
        batch = PreTrainingCollator(processor, beit_like, text_masking=False, image_masking=kind)(
            rows(shapes["captions_train"], range(3)))
        assert (batch["image_mask"].sum(1) == 5).all(), kind


def test_pretraining_batch_trains_the_model(shapes, vlmae):
    config, processor = vlmae
    batch = PreTrainingCollator(processor, config, vl_models.VlmaeForPreTraining)(rows(shapes["captions_train"],
                                                                                    range(4)))
    torch.manual_seed(0)
    out = vl_models.VlmaeForPreTraining(config)(**batch, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    assert torch.equal(out.image_mask, batch["image_mask"])  # the collator's mask was used


def test_unreadable_image_is_skipped_and_counted(shapes, vlmae, caplog):
    config, processor = vlmae
    good = rows(shapes["captions_train"], range(3))
    bad = {**good[1], "image": {"bytes": b"not an image", "path": "broken.jpg"}, INDEX_KEY: 99}
    collator = PreTrainingCollator(processor, config, vl_models.VlmaeForPreTraining)
    with caplog.at_level(logging.WARNING, logger="vl_models.data.collators"):
        batch = collator([good[0], bad, good[2]])
    assert batch["input_ids"].shape[0] == 2 and collator.num_skipped == 1
    assert "broken.jpg (row 99)" in caplog.text and "1 skipped" in caplog.text
    with pytest.raises(ValueError, match="every image of this batch"):
        collator([bad])


# ---------------------------------------------------------------- whole-word masking

TOY = "a bluish triangle, unbelievably small"  # 'bluish' is 4 pieces, 'unbelievably' 9, ',' a word of its own
TOY_TOKENS = ["[CLS]", "a", "bl", "##u", "##is", "##h", "triangle", ",", "u", "##n", "##be", "##l", "##ie", "##v",
              "##a", "##b", "##ly", "small", "[SEP]"]
TOY_WORDS = [-1, 0, 1, 1, 1, 1, 2, 3, *[4] * 9, 5, -1]


def captioned(ds, indices, captions):
    """Rows of `ds` at `indices` (their images and indices) with the given captions instead of theirs."""
    return [{**row, "caption": caption} for row, caption in zip(rows(ds, indices), captions)]


def word_groups(words: list[int]) -> dict[int, list[int]]:
    groups = {}
    for position, word in enumerate(words):
        if word >= 0:
            groups.setdefault(word, []).append(position)
    return groups


def test_whole_word_ids_of_a_known_tokenization(vlmae):
    _, processor = vlmae
    texts = [TOY, "purple hexagons"]
    enc = processor(text=texts)
    assert processor.tokenizer.convert_ids_to_tokens(enc["input_ids"][0]) == TOY_TOKENS
    words = whole_word_ids(processor.tokenizer, texts, enc["input_ids"], enc["attention_mask"])
    assert words.tolist() == [TOY_WORDS, [-1, 0, 1, -1] + [-1] * 15]  # padding is -1 too
    short = processor(text=texts, max_length=8)  # truncated after "triangle", [SEP] last
    words = whole_word_ids(processor.tokenizer, texts, short["input_ids"], short["attention_mask"])
    assert words.tolist() == [[-1, 0, 1, 1, 1, 1, 2, -1], [-1, 0, 1, -1, -1, -1, -1, -1]]
    with pytest.raises(ValueError, match="whole-word masking: the tokenizer encodes text 0"):
        whole_word_ids(processor.tokenizer, texts, enc["input_ids"].flip(0), enc["attention_mask"].flip(0))


def test_whole_word_masking_masks_whole_words_of_the_toy_caption(shapes, vlmae):
    """40 samples of the toy caption (40 indices, so 40 draws): the masked positions are whole words, never [CLS],
    [SEP] or padding; the 4- and 9-piece words do get masked, whole. Per-token masking splits them."""
    config, processor = vlmae
    batch_rows = captioned(shapes["captions_train"], range(12), [TOY] * 12) * 4
    batch_rows = [{**row, INDEX_KEY: i} for i, row in enumerate(batch_rows)]
    groups = word_groups(TOY_WORDS)
    batch = PreTrainingCollator(processor, config, vl_models.VlmaeForPreTraining, whole_word_masking=True)(batch_rows)
    chosen = batch["mlm_labels"] != -100
    masked_words = set()
    for row in chosen:
        assert not row[[0, len(TOY_WORDS) - 1]].any()
        for word, positions in groups.items():
            assert row[positions].all() or not row[positions].any(), (word, row)
            masked_words |= {word} if row[positions].all() else set()
    assert {1, 4} <= masked_words
    per_token = PreTrainingCollator(processor, config, vl_models.VlmaeForPreTraining)(batch_rows)["mlm_labels"] != -100
    assert any(0 < int(row[groups[4]].sum()) < len(groups[4]) for row in per_token)


def test_whole_word_masking_of_a_mixed_batch(shapes):
    """VL-BEiT's mixed batches: the captions of pairs and the text-only rows are both masked by whole words."""
    config, processor = vl_models.get_config("vl_beit", "tiny"), vl_models.build_processor("vl_beit", "tiny")
    collator = PreTrainingCollator(processor, config, vl_models.VlBeitForPreTraining, whole_word_masking=True)
    pairs = [{**row, INDEX_KEY: i} for i, row in enumerate(captioned(shapes["captions_train"], range(8), [TOY] * 8))]
    texts = [{"image": None, "captions": [TOY], INDEX_KEY: 8 + i} for i in range(8)]
    batch = collator(pairs + texts)
    assert batch["mlm_labels"].shape == batch["text_mlm_labels"].shape == (8, len(TOY_WORDS))
    for labels in (batch["mlm_labels"], batch["text_mlm_labels"]):
        chosen = labels != -100
        assert chosen.any(1).all()
        for positions in word_groups(TOY_WORDS).values():
            assert (chosen[:, positions].all(1) | ~chosen[:, positions].any(1)).all()


def test_whole_word_masking_rate_and_determinism(shapes, vlmae):
    """Long captions of multi-piece words: about `mlm_probability` of the tokens are masked; a sample's masks
    depend on (seed, epoch, index) only and equal `mask_text` with the sample's generator and its word ids."""
    config, processor = vlmae
    ds, vocabulary = shapes["captions_train"], (TOY + " zebras quickly jumped purple hexagons").replace(",", "").split()
    captions = [" ".join(random.Random(i).choices(vocabulary, k=30)) for i in range(12)]
    collator = PreTrainingCollator(processor, config, vl_models.VlmaeForPreTraining, whole_word_masking=True, seed=7,
                                   max_length=128)
    counted = total = 0
    for epoch in range(6):  # 72 draws of 12 captions
        collator.set_epoch(epoch)
        batch = collator(captioned(ds, range(12), captions))
        words = whole_word_ids(processor.tokenizer, captions, batch["input_ids"], batch["attention_mask"])
        chosen = batch["mlm_labels"] != -100
        assert not chosen[words == -1].any()  # never [CLS], [SEP] or padding
        counted, total = counted + int(chosen.sum()), total + int((words >= 0).sum())
    assert abs(counted / total - config.mlm_probability) < 0.03
    collator.set_epoch(2)
    first = collator(captioned(ds, [3, 9], [captions[3], captions[9]]))
    other = collator(captioned(ds, [9, 1, 3], [captions[9], captions[1], captions[3]]))  # other batch and padding
    text = config.text_config
    for position, index, elsewhere in ((0, 3, 2), (1, 9, 0)):
        ids = processor(text=[captions[index]], max_length=128)["input_ids"]
        words = whole_word_ids(processor.tokenizer, [captions[index]], ids, torch.ones_like(ids))
        ref_ids, ref_labels = mask_text(ids, mask_token_id=text.mask_token_id, vocab_size=text.vocab_size,
                                        special_token_ids=text.special_token_ids, whole_word_ids=words,
                                        probability=config.mlm_probability, generator=sample_generator(7, 2, index))
        length = ids.shape[1]
        for batch, at in ((first, position), (other, elsewhere)):
            assert torch.equal(batch["mlm_input_ids"][at, :length], ref_ids[0])
            assert torch.equal(batch["mlm_labels"][at, :length], ref_labels[0])
    collator.set_epoch(3)
    assert not torch.equal(collator(captioned(ds, [3, 9], [captions[3], captions[9]]))["mlm_labels"],
                           first["mlm_labels"])


def test_whole_word_masking_refuses_a_slow_tokenizer_or_no_text_masking(vlmae):
    config, processor = vlmae
    slow = SimpleNamespace(tokenizer=SimpleNamespace(is_fast=False))
    with pytest.raises(ValueError, match="fast .*tokenizer"):
        PreTrainingCollator(slow, config, whole_word_masking=True)
    with pytest.raises(ValueError, match="needs text masking"):
        PreTrainingCollator(processor, config, text_masking=False, whole_word_masking=True)


@pytest.mark.slow
def test_pretrain_flag_reaches_the_collator(tmp_path, monkeypatch):
    """examples/pretrain.py --whole_word_masking: two updates of a tiny VLMAE with batches from a collator that masks
    whole words; a method without MLM (the visual tokenizer) exits 2 in one line."""
    spec = importlib.util.spec_from_file_location("vl_examples_pretrain_wwm",
                                                  Path(__file__).resolve().parents[1] / "examples" / "pretrain.py")
    pretrain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrain)
    made = []

    class Recording(PreTrainingCollator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)
            self.calls = 0

        def __call__(self, batch_rows):
            self.calls += 1
            return super().__call__(batch_rows)

    monkeypatch.setattr(pretrain, "PreTrainingCollator", Recording)
    tiny = ["--size", "tiny", "--num_train_images", "16", "--num_val_images", "4", "--per_device_train_batch_size",
            "4", "--max_train_steps", "2", "--checkpointing_steps", "0", "--eval_steps", "0", "--whole_word_masking"]
    pretrain.main(["--method", "vlmae", *tiny, "--output_dir", str(tmp_path / "vlmae")])
    assert len(made) == 1 and made[0].whole_word_masking and made[0].calls >= 2
    with pytest.raises(SystemExit) as exit_info:
        pretrain.run_cli(pretrain.main, ["--method", "vl_beit_tokenizer", *tiny, "--output_dir", str(tmp_path / "t")])
    assert exit_info.value.code == 2


def test_retrieval_collator_caption_choice(shapes, vlmae):
    _, processor = vlmae
    ds = shapes["captions_train"]
    batch = rows(ds, range(8))
    first = RetrievalCollator(processor, random_caption=False)(batch)
    expected = processor(text=[ds[i]["captions"][0] for i in range(8)])["input_ids"]
    assert torch.equal(first["input_ids"], expected)
    drawn = RetrievalCollator(processor, seed=1)(batch)
    assert torch.equal(drawn["input_ids"], RetrievalCollator(processor, seed=1)(batch)["input_ids"])
    decoded = processor.batch_decode(drawn["input_ids"], skip_special_tokens=True)
    for i, text in enumerate(decoded):
        assert text in ds[i]["captions"]


def test_vqa_collator_soft_scores(shapes, vlmae):
    _, processor = vlmae
    vqa = rows(shapes["vqa_train"], range(3))
    vqa[2] = {**vqa[2], "labels": [2, 5], "scores": [0.6, 1.0]}
    batch = VqaCollator(processor, 17)(vqa)
    expected = torch.zeros(3, 17)
    for i, row in enumerate(vqa):
        for label, score in zip(row["labels"], row["scores"]):
            expected[i, label] = score
    assert torch.equal(batch["labels"], expected)
    assert torch.equal(batch["input_ids"], processor(text=[r["question"] for r in vqa])["input_ids"])
    with pytest.raises(ValueError, match="outside the vocabulary of 4 answers"):
        VqaCollator(processor, 4)([{**vqa[0], "labels": [9], "scores": [1.0]}])


def test_grounding_and_nlvr2_collators(shapes, vlmae):
    _, processor = vlmae
    grounding = rows(shapes["grounding_train"], range(4))
    batch = GroundingCollator(processor)(grounding)
    assert torch.allclose(batch["labels"], torch.tensor([r["box"] for r in grounding]))
    nlvr2 = rows(shapes["nlvr2_train"], range(4))
    batch = Nlvr2Collator(processor)(nlvr2)
    assert batch["pixel_values"].shape == (4, 2, 3, 32, 32)
    right = processor(images=[load_image(r["image_right"]) for r in nlvr2])["pixel_values"]
    assert torch.equal(batch["pixel_values"][:, 1], right)
    assert batch["labels"].tolist() == [r["label"] for r in nlvr2] and batch["labels"].dtype == torch.long


def test_load_image_accepts_pil_bytes_and_paths(tmp_path):
    image = Image.new("RGB", (5, 4), (10, 20, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    (tmp_path / "a.png").write_bytes(buffer.getvalue())
    assert load_image(image) is image
    assert load_image({"bytes": buffer.getvalue(), "path": None}).size == (5, 4)
    assert load_image(str(tmp_path / "a.png")).getpixel((0, 0)) == (10, 20, 30)
    assert load_image({"bytes": None, "path": str(tmp_path / "missing.png")}) is None
