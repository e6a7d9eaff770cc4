"""vl_models.processing: image conversion and pixel values against a plain PIL/numpy reference,
tokenizer training/reload, processor round trips, and the errors users see."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import PIL.Image
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import data as skdata
from transformers import AutoConfig, AutoProcessor, AutoTokenizer, BertConfig, PreTrainedConfig
from transformers import PreTrainedTokenizerFast as TokenizersBackend

from vl_models.processing import (
    SPECIAL_TOKENS,
    VlImageProcessor,
    VlProcessor,
    build_processor,
    caption_corpus,
    default_tokenizer,
    load_tokenizer,
    register_processing_classes,
    train_tokenizer,
)

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
RAW = dict(do_resize=False, do_rescale=False, do_normalize=False)  # pixel_values = the RGB values


class _ProcessingTestConfig(PreTrainedConfig):
    model_type = "vl_processing_test"


class _TestProcessor(VlProcessor):
    pass


AutoConfig.register(_ProcessingTestConfig.model_type, _ProcessingTestConfig, exist_ok=True)
register_processing_classes(_ProcessingTestConfig, _TestProcessor)


def reference_pixels(rgb: PIL.Image.Image, size: int) -> np.ndarray:
    """Plain pipeline: PIL bicubic resize, /255, ImageNet normalisation -> [3, S, S] float64."""
    resized = np.asarray(rgb.resize((size, size), PIL.Image.Resampling.BICUBIC), dtype=np.float64) / 255.0
    return ((resized - MEAN) / STD).transpose(2, 0, 1)


def raw_rgb(image) -> np.ndarray:
    return VlImageProcessor(**RAW)(image)["pixel_values"][0].permute(1, 2, 0).numpy()  # [H, W, 3]


# ---- image conversion ------------------------------------------------------------------------


def test_alpha_composited_on_white():
    rgba = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [100, 50, 20, 128]]], dtype=np.uint8)
    got = raw_rgb(PIL.Image.fromarray(rgba))
    np.testing.assert_array_equal(got[0, 0], [255, 255, 255])  # fully transparent -> white
    np.testing.assert_array_equal(got[0, 1], [10, 20, 30])  # opaque -> unchanged
    a = 128 / 255
    np.testing.assert_array_equal(got[0, 2], np.round(np.array([100, 50, 20]) * a + 255 * (1 - a)))


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (PIL.Image.fromarray(np.array([[77, 200]], dtype=np.uint8)), [[77] * 3, [200] * 3]),  # L
        (PIL.Image.fromarray(np.array([[True, False]])), [[255] * 3, [0] * 3]),  # 1
        (PIL.Image.fromarray(np.array([[[0, 0], [90, 255]]], dtype=np.uint8)), [[255] * 3, [90] * 3]),  # LA
        (PIL.Image.new("CMYK", (2, 1), (0, 255, 255, 0)), [[255, 0, 0]] * 2),
        (
            PIL.Image.fromarray(np.array([[65535, 257 * 100]], dtype=np.uint16)),
            [[255] * 3, [100] * 3],
        ),  # I;16
        (PIL.Image.fromarray(np.array([[65535, 257 * 7]], dtype=np.int32)), [[255] * 3, [7] * 3]),  # I
        (PIL.Image.fromarray(np.array([[1.0, 0.5]], dtype=np.float32)), [[255] * 3, [127.5] * 3]),  # F
    ],
    ids=["L", "1", "LA", "CMYK", "I;16", "I", "F"],
)
def test_pil_modes_to_rgb(image, expected):
    np.testing.assert_allclose(raw_rgb(image)[0], np.array(expected, dtype=np.float32), atol=1e-4)


def test_palette_with_transparency():
    image = PIL.Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 1
    np.testing.assert_array_equal(raw_rgb(image)[0], [[255, 0, 0], [255, 255, 255]])


def test_other_modes_follow_pil_conversion():
    rgb = PIL.Image.fromarray(skdata.coffee()[:8, :8])
    for mode in ("YCbCr", "HSV", "P", "RGBX"):
        converted = rgb.convert(mode)
        np.testing.assert_array_equal(raw_rgb(converted), np.asarray(converted.convert("RGB")), err_msg=mode)


# ---- pixel values ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "camera"])
def test_pixel_values_match_reference(name):
    photo = PIL.Image.fromarray(getattr(skdata, name)())  # camera is greyscale (mode L)
    out = VlImageProcessor(size=40)(photo)["pixel_values"]
    assert out.shape == (1, 3, 40, 40) and out.dtype == torch.float32
    np.testing.assert_allclose(out[0].numpy(), reference_pixels(photo.convert("RGB"), 40), atol=1e-6)


def test_matches_transformers_pil_processor():
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    photo = PIL.Image.fromarray(skdata.astronaut())
    theirs = ViTImageProcessorPil(
        size={"height": 32, "width": 32},
        resample=PIL.Image.Resampling.BICUBIC,
        image_mean=MEAN.tolist(),
        image_std=STD.tolist(),
    )
    expected = theirs(photo, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(VlImageProcessor(size=32)(photo)["pixel_values"], expected, atol=1e-5, rtol=0)


def test_numpy_torch_pil_inputs_agree():
    hwc = skdata.chelsea()  # [H, W, 3] uint8
    processor = VlImageProcessor(size=24)
    expected = processor(PIL.Image.fromarray(hwc))["pixel_values"]
    chw = torch.from_numpy(hwc).permute(2, 0, 1)
    for same in (hwc, np.ascontiguousarray(hwc.transpose(2, 0, 1)), chw, torch.from_numpy(hwc)):
        torch.testing.assert_close(processor(same)["pixel_values"], expected, atol=0, rtol=0)
    batch = processor(torch.stack([chw, chw]))["pixel_values"]  # a 4-D tensor is a batch
    torch.testing.assert_close(batch, expected.expand(2, -1, -1, -1), atol=0, rtol=0)
    # float [0, 1] inputs resize in float; PIL's two-pass uint8 resize rounds twice (< 1/255 / std apart)
    for close in (hwc / 255.0, chw.float() / 255):
        torch.testing.assert_close(processor(close)["pixel_values"], expected, atol=1 / 255 / 0.224, rtol=0)


def test_16_bit_and_float_inputs_scale_like_uint8():
    hwc = skdata.coffee()[:16, :16]
    expected = raw_rgb(hwc)
    np.testing.assert_allclose(raw_rgb(hwc.astype(np.uint16) * 257), expected, atol=1e-4)
    np.testing.assert_allclose(raw_rgb(hwc.astype(np.float64) / 255), expected, atol=1e-4)
    np.testing.assert_allclose(raw_rgb(hwc.astype(np.int64)), expected, atol=0)


def test_save_and_reload_image_processor(tmp_path):
    processor = VlImageProcessor(size=20, do_normalize=False, image_mean=[0.5] * 3)
    processor.save_pretrained(tmp_path)
    reloaded = VlImageProcessor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == processor.to_dict() and reloaded.image_size == 20
    photo = skdata.astronaut()
    torch.testing.assert_close(reloaded(photo)["pixel_values"], processor(photo)["pixel_values"])


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (None, "`images` must be a PIL image.*got NoneType"),
        ("cat.jpg", "`images` must be a PIL image.*got str"),
        ([], "`images` must be.*empty list"),
        ([np.zeros((4, 4, 3), np.uint8), 3], "`images` must be a PIL image.*got int"),
        (np.zeros((1, 2, 3, 4, 5), np.uint8), "`images` arrays must be.*shape \\(1, 2, 3, 4, 5\\)"),
        (np.zeros(7, np.uint8), "`images` arrays must be"),
        (np.zeros((0, 5, 3), np.uint8), "`images` must not be empty"),
        (PIL.Image.new("RGB", (0, 5)), "`images` must not be empty"),
        (np.full((4, 4, 3), np.nan, np.float32), "`images` must hold finite values"),
        (torch.full((3, 4, 4), float("inf")), "`images` must hold finite values"),
        (np.full((4, 4, 3), 200.0), "`images` with a float dtype must hold values in \\[0, 1\\]"),
        (np.full((4, 4), 300, np.int32), "`images` with dtype int32 must hold values in 0..255"),
        (np.zeros((6, 6, 6), np.uint8), "`images` must have 1 to 4 channels"),
        (np.zeros((4, 4, 3), np.complex64), "`images` must have a bool, integer or float dtype"),
    ],
)
def test_bad_images(bad, message):
    with pytest.raises(ValueError, match=message):
        VlImageProcessor(size=8)(bad)


def test_bad_size_and_convert_rgb_off():
    with pytest.raises(ValueError, match="`size` must be a positive int"):
        VlImageProcessor(size=0)
    with pytest.raises(ValueError, match="`size` must be a positive int"):
        VlImageProcessor(size={"height": 8, "width": 9})
    with pytest.raises(ValueError, match="`images` must have 3 channels when do_convert_rgb=False"):
        VlImageProcessor(size=8, do_convert_rgb=False)(skdata.camera())


@settings(max_examples=30, deadline=None)
@given(
    modes=st.lists(
        st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "np", "pt"]),
        min_size=1,
        max_size=3,
    ),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    size=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_random_images_give_finite_square_batches(modes, height, width, size, seed):
    rng = np.random.default_rng(seed)
    images = []
    for mode in modes:
        rgba = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
        if mode == "np":
            images.append(rng.random((height, width, int(rng.integers(1, 5)))))
        elif mode == "pt":
            images.append(torch.from_numpy(rgba[..., : int(rng.integers(1, 5))]).permute(2, 0, 1))
        elif mode == "I;16":
            images.append(PIL.Image.fromarray(rng.integers(0, 2**16, (height, width), dtype=np.uint16)))
        elif mode == "I":
            images.append(PIL.Image.fromarray(rng.integers(-9, 2**17, (height, width), dtype=np.int32)))
        elif mode == "F":
            images.append(PIL.Image.fromarray(rng.random((height, width), dtype=np.float32)))
        else:
            images.append(PIL.Image.fromarray(rgba).convert(mode))
    pixel_values = VlImageProcessor(size=size)(images)["pixel_values"]
    assert pixel_values.shape == (len(modes), 3, size, size) and pixel_values.dtype == torch.float32
    assert torch.isfinite(pixel_values).all()


# ---- tokenizers ------------------------------------------------------------------------------

CAPTIONS = [
    "a small red circle left of a large blue square",
    "how many green triangles are there?",
    "is there a yellow star above the purple cross?",
    "yes",
    "no",
    "three white circles",
] * 4


@pytest.mark.parametrize("lowercase", [True, False])
def test_train_tokenizer_save_reload_same_ids(tmp_path, lowercase):
    tokenizer = train_tokenizer(CAPTIONS, vocab_size=300, lowercase=lowercase, model_max_length=32)
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
    assert len(tokenizer) <= 300 and tokenizer.model_max_length == 32
    texts = ["A Small RED circle, right of a zebra!", "how many squares?"]
    expected = tokenizer(texts)["input_ids"]
    assert all(ids[0] == 2 and ids[-1] == 3 for ids in expected)  # [CLS] ... [SEP]
    assert 1 not in expected[0]  # unseen ASCII words split into pieces, never [UNK]
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(texts)["input_ids"] == expected and reloaded.model_max_length == 32
    assert (tokenizer.tokenize("Red") == tokenizer.tokenize("red")) == lowercase


def test_train_tokenizer_deterministic():
    # the tokenizers trainer alone numbers "##x" pieces in hash order and differs run to run
    vocabs = [
        train_tokenizer(CAPTIONS + ["Zebra, café!"], 250, lowercase=False).get_vocab() for _ in range(5)
    ]
    assert all(v == vocabs[0] for v in vocabs)
    assert train_tokenizer(caption_corpus(), 1000).get_vocab() == default_tokenizer().get_vocab()


@pytest.mark.parametrize(
    ("texts", "vocab_size", "message"),
    [
        ("a single string", 100, "`texts` must be an iterable of str"),
        (None, 100, "`texts` must be an iterable of str"),
        ([], 100, "`texts` must be a str or a non-empty list"),
        (["ok", ""], 100, "`texts` must be.*item 1"),
        (["ok", 3], 100, "`texts` must be.*item 1"),
        (["ok"], 0, "`vocab_size` must be a positive int"),
    ],
)
def test_train_tokenizer_bad_input(texts, vocab_size, message):
    with pytest.raises(ValueError, match=message):
        train_tokenizer(texts, vocab_size)


def test_default_tokenizer_covers_captions_and_is_fresh():
    tokenizer = default_tokenizer()
    assert len(caption_corpus()) >= 300
    captions = [
        "a small red circle left of a large blue square",
        "how many triangles are there?",
        "is there a green star below the yellow cross?",
        "which shape is next to the purple square?",
        "an astronaut holding a coffee cup next to a cat",
        "seven orange hexagons right of the moon",
    ]
    for ids in tokenizer(captions)["input_ids"]:
        assert tokenizer.unk_token_id not in ids
    words = [
        "red",
        "circle",
        "square",
        "triangle",
        "star",
        "left",
        "right",
        "above",
        "below",
        "how",
        "many",
        "what",
        "which",
        "yes",
        "no",
    ]
    assert all(len(tokenizer.tokenize(w)) == 1 for w in words)  # common words are whole tokens
    other = default_tokenizer()
    assert other is not tokenizer and other.get_vocab() == tokenizer.get_vocab()
    tokenizer.add_tokens(["[NEW]"])
    assert "[NEW]" not in default_tokenizer().get_vocab()


def test_load_tokenizer_checks_bert_style(tmp_path):
    tokenizer = train_tokenizer(CAPTIONS, 300)
    tokenizer.save_pretrained(tmp_path / "good")
    assert (
        load_tokenizer(tmp_path / "good")("a red circle")["input_ids"]
        == tokenizer("a red circle")["input_ids"]
    )
    no_mask = TokenizersBackend(
        tokenizer_object=tokenizer.backend_tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    )
    no_mask.save_pretrained(tmp_path / "no_mask")
    with pytest.raises(ValueError, match="`tokenizer` must be BERT-style.*has no mask_token"):
        load_tokenizer(tmp_path / "no_mask")
    with pytest.raises(ValueError, match="`tokenizer` must be a path"):
        load_tokenizer(3)


# ---- processor -------------------------------------------------------------------------------


def test_processor_outputs():
    processor = VlProcessor(VlImageProcessor(size=16))
    photos = [skdata.astronaut(), PIL.Image.fromarray(skdata.coffee())]
    out = processor(images=photos, text=["an astronaut", "a coffee cup on a saucer"])
    assert set(out) == {"pixel_values", "input_ids", "attention_mask"} == set(processor.model_input_names)
    assert (
        out["pixel_values"].shape == (2, 3, 16, 16) and out["input_ids"].shape == out["attention_mask"].shape
    )
    assert out["attention_mask"][0].tolist() == [int(t != 0) for t in out["input_ids"][0].tolist()]
    assert processor.batch_decode(out["input_ids"], skip_special_tokens=True) == [
        "an astronaut",
        "a coffee cup on a saucer",
    ]
    assert processor.decode(out["input_ids"][0], skip_special_tokens=True) == "an astronaut"
    assert set(processor(text="yes")) == {"input_ids", "attention_mask"}
    assert set(processor(images=photos[0])) == {"pixel_values"}
    # image options go to the image processor, the rest to the tokenizer
    routed = processor(
        images=photos[0], text="yes", size=8, padding="max_length", max_length=7, return_tensors="np"
    )
    assert routed["pixel_values"].shape == (1, 3, 8, 8) and routed["input_ids"].shape == (1, 7)
    with pytest.raises(ValueError, match="unexpected keyword arguments without `text`: \\['padding_side'\\]"):
        processor(images=photos[0], padding_side="left")


@pytest.mark.parametrize(
    ("images", "text", "message"),
    [
        (None, None, "`images` and `text` are both None"),
        (
            [skdata.camera()] * 2,
            ["one caption"],
            "`images` and `text` must have the same batch size, got 2 images",
        ),
        (None, 5, "`text` must be a str or a non-empty list of non-empty str, got int"),
        (None, [], "`text` must be a str or a non-empty list"),
        (None, ["fine", "  "], "`text` must be.*item 1"),
        (None, ["fine", None], "`text` must be.*item 1"),
    ],
)
def test_processor_bad_input(images, text, message):
    with pytest.raises(ValueError, match=message):
        VlProcessor(VlImageProcessor(size=8))(images=images, text=text)


def test_truncation_warns_once(caplog):
    processor = VlProcessor(max_length=6)
    long_text = "a small red circle left of a large blue square"
    with caplog.at_level(logging.WARNING, logger="vl_models.processing"):
        processor(text=["yes", "no"])
        assert not caplog.records
        first = processor(text=[long_text, "yes"])
        processor(text=long_text)
    assert first["input_ids"].shape == (2, 6) and first["input_ids"][0, -1] == 3  # still ends with [SEP]
    assert (
        len(caplog.records) == 1 and "1 of 2 texts are longer than max_length=6" in caplog.records[0].message
    )


def test_subclass_round_trip(tmp_path):
    processor = build_processor(_TestProcessor, image_size=28, max_length=12)
    processor.save_pretrained(tmp_path)
    texts = ["three red circles", "is there a zebra left of the moon?"]
    photo = skdata.rocket()
    expected = processor(images=[photo, photo], text=texts)
    for reloaded in (_TestProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(reloaded) is _TestProcessor and type(reloaded.image_processor) is VlImageProcessor
        assert reloaded.image_processor.to_dict() == processor.image_processor.to_dict()
        assert reloaded.max_length == 12
        got = reloaded(images=[photo, photo], text=texts)
        assert got["input_ids"].tolist() == expected["input_ids"].tolist()
        torch.testing.assert_close(got["pixel_values"], expected["pixel_values"])


def test_processor_pickles():
    processor = VlProcessor(VlImageProcessor(size=8))
    clone = pickle.loads(pickle.dumps(processor))
    out, expected = (
        clone(images=skdata.camera(), text="a man"),
        processor(images=skdata.camera(), text="a man"),
    )
    assert out["input_ids"].tolist() == expected["input_ids"].tolist()
    torch.testing.assert_close(out["pixel_values"], expected["pixel_values"])


def test_build_processor_tokenizer_choices(tmp_path):
    default = build_processor(VlProcessor, image_size=32)
    assert default.image_processor.image_size == 32 and default.max_length == 40
    assert default.tokenizer.get_vocab() == default_tokenizer().get_vocab()
    own = train_tokenizer(CAPTIONS, 300)
    assert build_processor(VlProcessor, image_size=8, tokenizer=own).tokenizer is own
    own.save_pretrained(tmp_path)
    loaded = build_processor(VlProcessor, image_size=8, tokenizer=str(tmp_path)).tokenizer
    assert loaded.get_vocab() == own.get_vocab()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(processor_class=dict, image_size=8), "`processor_class` must be VlProcessor"),
        (dict(processor_class=VlProcessor, image_size=0), "`image_size` must be a positive int"),
        (
            dict(processor_class=VlProcessor, image_size=8, max_length=0),
            "`max_length` must be an int >= 2",
        ),
        (
            dict(processor_class=VlProcessor, image_size=8, tokenizer=3.5),
            "`tokenizer` must be a transformers",
        ),
    ],
)
def test_build_processor_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_processor(**kwargs)


def test_register_rejects_transformers_config():
    with pytest.raises(ValueError, match="`config_class` must be our own config class"):
        register_processing_classes(BertConfig, _TestProcessor)
    with pytest.raises(ValueError, match="`processor_class` must be VlProcessor"):
        register_processing_classes(_ProcessingTestConfig, dict)
