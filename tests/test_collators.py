"""Collators: shapes and labels, masks equal to the masking functions called with the per-sample generator,
reproducibility (per sample, whatever the batch), unreadable images skipped and counted."""

from __future__ import annotations

import io
import logging
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
