"""The vl-* transformers pipelines: registration, which checkpoint supports which task, outputs equal to calling
the model directly, and clear errors for unsupported tasks and bad inputs. Tiny random models, offline."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, BertConfig, BertModel, pipeline
from transformers.pipelines import PIPELINE_REGISTRY, SUPPORTED_TASKS

import vl_models
from vl_models.pipelines import FILL_MASK, GROUNDING, MATCHING, PIPELINE_TASKS, TASKS, VQA, ZERO_SHOT

METHODS = vl_models.list_methods()
ANSWERS = {0: "yes", 1: "no", 2: "red", 3: "circle", 4: "2"}
HEADS = ("pretraining", "retrieval", "vqa", "grounding")
# methods we know: what their pre-training checkpoint supports (ViLTA trains no ITC by default)
PRETRAINING_TASKS = {
    "albef": [ZERO_SHOT, MATCHING, FILL_MASK],
    "vlmae": [ZERO_SHOT, MATCHING, FILL_MASK],
    "vq_mim": [ZERO_SHOT, MATCHING, FILL_MASK],
    "vilta": [MATCHING, FILL_MASK],
    "vl_beit": [FILL_MASK],  # MLM / MIM / masked VL modeling: no ITC or ITM before retrieval fine-tuning
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """method -> head -> folder with a tiny random model and its processor."""
    root = tmp_path_factory.mktemp("pipelines")
    folders = {}
    for method in METHODS:
        spec = vl_models.get_method(method)
        folders[method] = {}
        for head in HEADS:
            if head != "pretraining" and head not in spec.task_classes:
                continue
            torch.manual_seed(0)
            kwargs = {"num_labels": len(ANSWERS), "id2label": ANSWERS} if head == "vqa" else {}
            model, processor = vl_models.build(method, "tiny", task=head, **kwargs)
            folder = root / f"{method}_{head}"
            model.save_pretrained(folder)
            processor.save_pretrained(folder)
            folders[method][head] = str(folder)
    return folders


@pytest.fixture(scope="module")
def image():
    """Non-square, so boxes must scale x and y differently."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))


_LOADED: dict[str, tuple] = {}


def loaded(folder):
    """(model, processor) of a checkpoint folder, loaded once per session (loading dominates the test time)."""
    if folder not in _LOADED:
        _LOADED[folder] = (vl_models.pipelines.load_checkpoint(folder), AutoProcessor.from_pretrained(folder))
    return _LOADED[folder]


def make(task, folder):
    """`pipeline(task, model=folder)` on the cached model (test_folder_and_object_pipelines_agree covers the
    loading from the folder itself)."""
    model, processor = loaded(folder)
    return pipeline(task, model=model, processor=processor, device="cpu")


def inputs(folder, image=None, text=None):
    return AutoProcessor.from_pretrained(folder)(images=image, text=text, return_tensors="pt")


def test_tasks_registered_without_replacing_transformers_own():
    def impl_path(info):  # transformers names its own pipelines by dotted path; registered ones are classes
        impl = info["impl"]
        return impl if isinstance(impl, str) else f"{impl.__module__}.{impl.__name__}"

    builtin = {t for t, info in SUPPORTED_TASKS.items() if impl_path(info).startswith("transformers.")}
    for task in TASKS:
        assert task.startswith("vl-") and task not in builtin
        _, info, _ = PIPELINE_REGISTRY.check_task(task)
        assert info["impl"] is PIPELINE_TASKS[task]
    for task in ("zero-shot-image-classification", "fill-mask"):  # still transformers' own
        assert impl_path(SUPPORTED_TASKS[task]).startswith("transformers.")
    assert vl_models.VlVisualQuestionAnsweringPipeline is PIPELINE_TASKS[VQA]


@pytest.mark.parametrize("method", METHODS)
def test_supported_tasks_follow_the_head(method, checkpoints):
    for head, folder in checkpoints[method].items():
        model = loaded(folder)[0]
        assert vl_models.hub.task_of(model) == head  # loaded with the class the checkpoint was saved from
        supported = vl_models.supported_tasks(model)
        expected = {"retrieval": [ZERO_SHOT, MATCHING], "vqa": [VQA], "grounding": [GROUNDING],
                    "pretraining": PRETRAINING_TASKS.get(method, supported)}[head]
        assert supported == expected, (method, head)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("head", ["pretraining", "retrieval"])
def test_zero_shot_equals_itc_softmax(method, head, checkpoints, image):
    folder = checkpoints[method][head]
    if ZERO_SHOT not in vl_models.supported_tasks(loaded(folder)[0]):  # refused: test_unsupported_task_errors
        pytest.skip(f"{method} {head} has no trained ITC")
    pipe = make(ZERO_SHOT, folder)
    labels = ["red circle", "blue square", "two crosses"]
    result = pipe(image, candidate_labels=labels, hypothesis_template="a photo of {}.")
    model = pipe.model
    pixels = inputs(folder, image).pixel_values
    text = inputs(folder, text=[f"a photo of {label}." for label in labels])
    with torch.no_grad():
        if head == "retrieval":  # the head's own forward: one image repeated against every label
            logits = model(pixel_values=pixels.expand(len(labels), -1, -1, -1), **text).logits_per_image[0]
        else:
            image_feat = model.base_model(pixel_values=pixels).image_feat
            text_feat = model.base_model(**text).text_feat
            logits = (image_feat @ text_feat.t())[0] / model.temp.clamp(0.001, 0.5)
    probs = logits.softmax(-1)
    order = probs.argsort(descending=True).tolist()
    assert [r["label"] for r in result] == [labels[i] for i in order]
    assert [r["score"] for r in result] == pytest.approx(probs[order].tolist(), abs=1e-5)
    assert pipe(image, candidate_labels="red circle, blue square", top_k=1)[0]["label"] in labels[:2]


@pytest.mark.parametrize("method", METHODS)
def test_transformers_zero_shot_image_classification_serves_retrieval_heads(method, checkpoints, image):
    """The retrieval card's `pipeline_tag`: transformers' own pipeline loads the head from the folder
    (AutoModelForZeroShotImageClassification, the tokenizer, the image processor) and ranks as ours does."""
    folder = checkpoints[method]["retrieval"]
    theirs = pipeline("zero-shot-image-classification", model=folder, device="cpu")
    assert type(theirs.model) is vl_models.get_method(method).task_classes["retrieval"]
    ours = make(ZERO_SHOT, folder)
    labels = ["red circle", "blue square", "two crosses", "a green triangle"]
    images = [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    expected = [ours(i, candidate_labels=labels, hypothesis_template="a photo of {}.") for i in images]
    for batch_size in (1, 2):  # 2: two images against four labels in one forward (M != N)
        got = theirs(images, candidate_labels=labels, hypothesis_template="a photo of {}.", batch_size=batch_size)
        for result, want in zip(got, expected, strict=True):
            assert [r["label"] for r in result] == [r["label"] for r in want]
            assert [r["score"] for r in result] == pytest.approx([r["score"] for r in want], abs=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_retrieval_forward_scores_m_images_against_n_texts(method, checkpoints, image):
    """CLIP-style scoring (what transformers' pipeline calls): M images x N texts -> logits_per_image [M, N], the
    same numbers as the pair forward's ITC matrix; the loss still needs pairs."""
    folder = checkpoints[method]["retrieval"]
    model = loaded(folder)[0]
    pixels = inputs(folder, [image, image.rotate(90)]).pixel_values  # [2, 3, S, S]
    text = inputs(folder, text=["a red circle", "two blue squares", "a cross"])
    with torch.no_grad():
        out = model(pixel_values=pixels, **text)
        pairs = model(pixel_values=torch.cat([pixels, pixels[:1]]), **text).logits_per_image  # [3, 3]
    assert out.logits_per_image.shape == (2, 3) and out.itm_logits is None
    torch.testing.assert_close(out.logits_per_image, pairs[:2], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.t())
    with pytest.raises(ValueError, match="the retrieval loss needs pairs"):
        model(pixel_values=pixels, **text, return_loss=True)


@pytest.mark.parametrize("method", METHODS)
def test_transformers_zero_shot_object_detection_serves_grounding_heads(method, checkpoints, image):
    """The grounding card's `pipeline_tag`: transformers' pipeline gives its schema, one box per label (the head's),
    the box and score of our grounding pipeline; `threshold` (default 0.1) drops the less confident ones."""
    folder = checkpoints[method]["grounding"]
    theirs = pipeline("zero-shot-object-detection", model=folder, device="cpu")
    assert type(theirs.model) is vl_models.get_method(method).task_classes["grounding"]
    ours = make(GROUNDING, folder)
    labels = ["the red circle", "two blue squares", "a cross"]
    expected = {label: ours(image, label) for label in labels}
    got = theirs(image, candidate_labels=labels, threshold=0.0)
    assert sorted(r["label"] for r in got) == sorted(labels)
    assert [r["score"] for r in got] == sorted((r["score"] for r in got), reverse=True)
    for r in got:
        want = expected[r["label"]]
        assert r["score"] == pytest.approx(want["score"], abs=1e-6)
        assert list(r["box"].values()) == [int(v) for v in torch.tensor(want["box"]).tolist()]
        assert list(r["box"]) == ["xmin", "ymin", "xmax", "ymax"]
    threshold = sorted(r["score"] for r in got)[1]  # keeps the labels scored above it
    kept = theirs(image, candidate_labels=labels, threshold=threshold)
    assert [r["label"] for r in kept] == [r["label"] for r in got if r["score"] > threshold]
    assert theirs(image, candidate_labels=labels, threshold=0.0, top_k=1) == got[:1]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("head", ["pretraining", "retrieval"])
def test_matching_equals_itm_and_itc(method, head, checkpoints, image):
    folder = checkpoints[method][head]
    model = loaded(folder)[0]
    if MATCHING not in vl_models.supported_tasks(model):  # refused: test_unsupported_task_errors
        pytest.skip(f"{method} {head} has neither ITM nor trained ITC")
    pipe = make(MATCHING, folder)
    texts = ["a red circle", "two blue squares above a cross"]
    result = pipe(image, texts)
    pixels = inputs(folder, image).pixel_values.expand(len(texts), -1, -1, -1)
    text = inputs(folder, text=texts)
    with torch.no_grad():
        if head == "retrieval":  # the head's own forward on (image, text_i) pairs, and its ITC-then-ITM ranking
            out = model(pixel_values=pixels, **text)
            itm = out.itm_logits.softmax(-1)[:, 1]
            itc = out.logits_per_image[0] * model.temp.clamp(0.001, 0.5)
            ranked = model.rank(pixels[:1], **text, k=16)[0]  # ALBEF: ITM match logit + ITC similarity
            assert ranked.tolist() == pytest.approx((out.itm_logits[:, 1] + itc).tolist(), abs=1e-5)
        else:  # the backbone's forward: unimodal features and the fused pairs
            out = model.base_model(pixel_values=pixels, **text)
            itm = model.itm_head(out.multimodal_embeds[:, 0]).softmax(-1)[:, 1]
            itc = (out.image_feat * out.text_feat).sum(-1)
    assert [r["text"] for r in result] == texts
    assert [r["itm_score"] for r in result] == pytest.approx(itm.tolist(), abs=1e-5)
    if ZERO_SHOT in vl_models.supported_tasks(model):
        assert [r["itc_score"] for r in result] == pytest.approx(itc.tolist(), abs=1e-5)
    else:
        assert all(r["itc_score"] is None for r in result)
    assert pipe(image, "a red circle")[0]["itm_score"] == pytest.approx(itm[0].item(), abs=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_vqa_top_k_equals_head_sigmoid(method, checkpoints, image):
    folder = checkpoints[method]["vqa"]
    pipe = make(VQA, folder)
    question = "what color is the circle?"
    with torch.no_grad():
        probs = pipe.model(**inputs(folder, image, question)).logits[0].sigmoid()
    scores, ids = probs.topk(3)
    result = pipe(image, question, top_k=3)
    assert [r["answer"] for r in result] == [ANSWERS[i] for i in ids.tolist()]
    assert [r["score"] for r in result] == pytest.approx(scores.tolist(), abs=1e-5)
    assert len(pipe(image, question)) == 5  # default top_k, capped by the 5 answers
    assert pipe([image, image], question, top_k=3) == [result, result]
    assert pipe({"image": image, "question": question}, top_k=3) == result


def _xyxy(box, width, height):
    cx, cy, w, h = box.tolist()
    return [max(0, (cx - w / 2) * width), max(0, (cy - h / 2) * height),
            min(width, (cx + w / 2) * width), min(height, (cy + h / 2) * height)]


@pytest.mark.parametrize("method", METHODS)
def test_grounding_box_in_image_pixels(method, checkpoints, image, tmp_path):
    folder = checkpoints[method]["grounding"]
    pipe = make(GROUNDING, folder)
    text = "the red circle"
    with torch.no_grad():
        out = pipe.model(**inputs(folder, image, text))
    result = pipe(image, text)
    assert result["box"] == pytest.approx(_xyxy(out.pred_boxes[0], 56, 40), abs=1e-3)
    # the score is the chosen patch's probability: the largest in the head's map over the patches
    assert result["score"] == pytest.approx(out.patch_logits[0].softmax(-1).max().item(), abs=1e-6)
    assert result["text"] == text
    x0, y0, x1, y1 = result["box"]
    assert 0 <= x0 <= x1 <= 56 and 0 <= y0 <= y1 <= 40
    # the same pixels as a file path, an HWC array and a CHW tensor: the same box in the same coordinates
    path = tmp_path / "image.png"
    image.save(path)
    array = np.array(image)
    for same in (str(path), array, torch.from_numpy(array).permute(2, 0, 1)):
        assert pipe(same, text)["box"] == pytest.approx(result["box"], abs=1e-3)


@pytest.mark.parametrize("method", METHODS)
def test_fill_mask_equals_mlm_head_on_fused_text(method, checkpoints, image):
    folder = checkpoints[method]["pretraining"]
    pipe = make(FILL_MASK, folder)
    tokenizer = pipe.processor.tokenizer
    text = "a [MASK] circle left of a blue square"
    encoded = inputs(folder, image, text)
    position = encoded.input_ids[0].tolist().index(tokenizer.mask_token_id)
    with torch.no_grad():
        fused = pipe.model.base_model(**encoded).multimodal_embeds  # [1, L, D]
        probs = pipe.model.mlm_head(fused[0, position])[:len(tokenizer)].softmax(-1)
    scores, ids = probs.topk(4)
    result = pipe(image, text, top_k=4)
    assert [r["token"] for r in result] == ids.tolist()
    assert [r["score"] for r in result] == pytest.approx(scores.tolist(), abs=1e-5)
    assert result[0]["token_str"] == tokenizer.decode([ids[0].item()])
    assert "[MASK]" not in result[0]["sequence"] and result[0]["sequence"].endswith("left of a blue square")
    two = pipe(image, "a [MASK] circle left of a [MASK] square", top_k=2)
    assert len(two) == 2 and all(len(candidates) == 2 for candidates in two)


def test_fill_mask_targets_rank_only_the_given_tokens_with_their_full_vocabulary_scores(checkpoints, image, caplog):
    """As transformers' `fill-mask`: `targets` restricts the candidates (a str or a list), each keeps its score
    over the whole vocabulary, `top_k` is capped by the number of targets, a target that is no single token falls
    back to its first piece with a warning."""
    pipe = make(FILL_MASK, checkpoints[METHODS[0]]["pretraining"])
    tokenizer = pipe.processor.tokenizer
    text = "a [MASK] circle left of a blue square"
    everything = {r["token"]: r["score"] for r in pipe(image, text, top_k=len(tokenizer))}
    targets = ["red", "green", "blue"]
    result = pipe(image, text, targets=targets)
    ids = tokenizer.convert_tokens_to_ids(targets)
    assert sorted(r["token"] for r in result) == sorted(ids)  # top_k 5 capped at the 3 targets
    assert [r["score"] for r in result] == sorted((everything[i] for i in ids), reverse=True)
    assert [r["token"] for r in pipe(image, text, targets="green")] == [tokenizer.convert_tokens_to_ids("green")]
    assert len(pipe(image, text, targets=targets, top_k=2)) == 2
    first_piece = tokenizer("triangularly", add_special_tokens=False)["input_ids"][0]
    assert pipe(image, text, targets=["triangularly"])[0]["token"] == first_piece
    assert "'triangularly' is not one token of the vocabulary" in caplog.text
    for bad in ([], "", [3]):
        with pytest.raises(ValueError, match="`targets`"):
            pipe(image, text, targets=bad)


@pytest.mark.parametrize("method", METHODS)
def test_unsupported_task_errors(method, checkpoints):
    folder = checkpoints[method]["vqa"]
    with pytest.raises(ValueError, match=rf"method '{method}'.*'vl-visual-grounding'.*It supports: "
                                         r"'vl-visual-question-answering'$"):
        pipeline(GROUNDING, model=folder, device="cpu")
    pretraining = checkpoints[method]["pretraining"]
    supported = ", ".join(repr(t) for t in vl_models.supported_tasks(loaded(pretraining)[0]))
    with pytest.raises(ValueError, match=rf"method '{method}', a 'pretraining' checkpoint.*'{VQA}'.*"
                                         rf"--task vqa.*It supports: {re.escape(supported)}$"):
        make(VQA, pretraining)
    if ZERO_SHOT not in supported:
        with pytest.raises(ValueError, match=f"'{ZERO_SHOT}' pipeline, which needs trained ITC"):
            make(ZERO_SHOT, pretraining)


def test_bad_inputs(checkpoints, image):
    method = METHODS[0]
    vqa, grounding = make(VQA, checkpoints[method]["vqa"]), make(GROUNDING, checkpoints[method]["grounding"])
    zero_shot, fill = make(ZERO_SHOT, checkpoints[method]["retrieval"]), make(FILL_MASK, checkpoints[method]["pretraining"])
    with pytest.raises(ValueError, match="`image` must be a PIL image"):
        vqa(123, "what?")
    with pytest.raises(ValueError, match="`image` must be .*could not load 'no/such/file.png'"):
        grounding("no/such/file.png", "the circle")
    with pytest.raises(ValueError, match="`question` must be a non-empty str"):
        vqa(image, "  ")
    with pytest.raises(ValueError, match="pass `question`"):
        vqa(image)
    with pytest.raises(ValueError, match="`top_k` must be a positive int"):
        vqa(image, "what?", top_k=0)
    with pytest.raises(ValueError, match=r"unexpected keyword arguments \['topk'\]; it takes top_k"):
        vqa(image, "what?", topk=2)
    with pytest.raises(ValueError, match="same length, got 2 images and 3 texts"):
        grounding([image, image], ["a", "b", "c"])
    with pytest.raises(ValueError, match="`candidate_labels` is required"):
        zero_shot(image)
    with pytest.raises(ValueError, match="`candidate_labels` must be a str or a non-empty list"):
        zero_shot(image, candidate_labels=[])
    with pytest.raises(ValueError, match="`hypothesis_template` must contain"):
        zero_shot(image, candidate_labels=["a", "b"], hypothesis_template="a photo")
    with pytest.raises(ValueError, match="must contain the mask token '\\[MASK\\]'"):
        fill(image, "a red circle")
    with pytest.raises(ValueError, match="`images` must have 1 to 4 channels"):  # the processor's check
        vqa(np.zeros((8, 8, 7), dtype=np.uint8), "what?")


def test_folder_and_object_pipelines_agree(checkpoints, image):
    folder = checkpoints[METHODS[0]]["vqa"]
    from_folder = pipeline(VQA, model=folder, device="cpu")  # loads the checkpoint's class and processor
    assert type(from_folder.model) is type(loaded(folder)[0])
    assert from_folder(image, "what?") == make(VQA, folder)(image, "what?")


def test_a_processor_and_a_vl_models_model_are_required(checkpoints, tmp_path):
    model, processor = loaded(checkpoints[METHODS[0]]["vqa"])
    with pytest.raises(ValueError, match="`processor` must be a vl_models processor"):
        pipeline(VQA, model=model, device="cpu")
    model.save_pretrained(tmp_path)  # a folder without processor files
    with pytest.raises(ValueError, match=r"`processor` must be a vl_models processor \(save one next to the model"):
        pipeline(VQA, model=str(tmp_path), device="cpu")
    bert = BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8))
    with pytest.raises(ValueError, match="`model` must be a vl_models model .*BertModel with model_type 'bert'"):
        pipeline(VQA, model=bert, processor=processor, device="cpu")


# Batching: for any batch_size a pipeline gives what batch_size=1 gives. The inputs differ in image size and
# text length, so a batch pads its texts; scores may move by float rounding only (padding changes the attention's
# summation shapes), labels, answers, tokens and their order not at all.
BATCH_IMAGES = [Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))
                for seed, shape in enumerate([(40, 56, 3), (24, 24, 3), (64, 36, 3)])]
LABELS = ["red circle", "two small blue squares above a large cross", "cross"]
# task -> (head, key of the text in a dict input, per-image texts of different lengths, call keyword arguments)
BATCHED = {
    ZERO_SHOT: ("retrieval", None, None, {"candidate_labels": LABELS}),
    MATCHING: ("retrieval", "text", [["a red circle"], ["two small blue squares above a large cross", "a circle"],
                                     ["a cross", "a square", "a large red circle left of a small blue square"]], {}),
    VQA: ("vqa", "question", ["what?", "what color is the small circle left of the big square?", "is it red?"],
          {"top_k": 2}),
    GROUNDING: ("grounding", "text", ["the circle", "the small blue square right of the large red cross", "a cross"],
                {}),
    FILL_MASK: ("pretraining", "text", ["a [MASK]", "a large [MASK] circle left of a small blue [MASK]",
                                        "the [MASK] square"], {"top_k": 3}),
}
SCORE_KEYS = {"score", "itm_score", "itc_score"}
RANKED_BY = ("label", "answer", "token")  # what names a candidate in a ranked list (zero-shot, VQA, fill-mask)


def assert_same_ranking(got, expected, key, where):
    """Scores position by position within 1e-5, and each candidate with its own score: so the order is exact,
    except that candidates whose scores are within 1e-5 of each other (a random tiny model has near-ties) may
    swap, also across the top_k cut."""
    assert [g["score"] for g in got] == pytest.approx([e["score"] for e in expected], abs=1e-5), where
    by_key = {e[key]: e for e in expected}
    for i, candidate in enumerate(got):
        same = by_key.get(candidate[key])
        assert candidate["score"] == pytest.approx(expected[-1]["score"] if same is None else same["score"],
                                                   abs=1e-5), f"{where}[{i}]"
        if same is not None:
            assert {**candidate, "score": same["score"]} == same, f"{where}[{i}]"


def assert_same_results(got, expected, where=""):
    """Equal structure, texts and labels; scores within 1e-5 and boxes (pixels) within 1e-3."""
    assert type(got) is type(expected), where
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key, value in expected.items():
            if key in SCORE_KEYS and value is not None:
                assert got[key] == pytest.approx(value, abs=1e-5), f"{where}[{key!r}]"
            elif key == "box":
                assert got[key] == pytest.approx(value, abs=1e-3), f"{where}[{key!r}]"
            else:
                assert_same_results(got[key], value, f"{where}[{key!r}]")
    elif isinstance(expected, list):
        assert len(got) == len(expected), where
        key = next((k for k in RANKED_BY if expected and isinstance(expected[0], dict) and k in expected[0]), None)
        if key is not None:
            assert_same_ranking(got, expected, key, where)
            return
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_same_results(g, e, f"{where}[{i}]")
    else:
        assert got == expected, where


def batch_pipe(method, task, checkpoints):
    folder = checkpoints[method][BATCHED[task][0]]
    if task not in vl_models.supported_tasks(loaded(folder)[0]):  # refused: test_unsupported_task_errors
        pytest.skip(f"{method} {BATCHED[task][0]} does not support {task}")
    return make(task, folder)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("method", METHODS)
def test_batched_results_equal_one_at_a_time(method, task, checkpoints):
    pipe = batch_pipe(method, task, checkpoints)
    _, key, texts, kwargs = BATCHED[task]
    inputs = BATCH_IMAGES if key is None else [{"image": i, key: t} for i, t in zip(BATCH_IMAGES, texts)]
    one = pipe(inputs, **kwargs)
    assert len(one) == len(inputs)
    assert_same_results(one, [pipe(item, **kwargs) for item in inputs], "single")
    for batch_size in (2, 3, 4):  # a short last batch, one full batch, a batch larger than the inputs
        assert_same_results(pipe(inputs, batch_size=batch_size, **kwargs), one, f"batch_size={batch_size}")


@pytest.mark.parametrize("task", TASKS)
def test_batched_key_dataset_streams_equal_results(task, checkpoints):
    datasets = pytest.importorskip("datasets")
    from transformers.pipelines.pt_utils import KeyDataset

    pipe = batch_pipe(METHODS[0], task, checkpoints)
    _, key, texts, kwargs = BATCHED[task]
    text = () if key is None else (texts[1],)  # one text for every image of the dataset
    dataset = KeyDataset(datasets.Dataset.from_dict({"image": BATCH_IMAGES}), "image")
    one = pipe(BATCH_IMAGES, *text, **kwargs)
    assert_same_results(list(pipe(dataset, *text, **kwargs)), one, "batch_size=1")
    assert_same_results(list(pipe(dataset, *text, batch_size=2, **kwargs)), one, "batch_size=2")


def test_pipelines_ask_the_registry_not_the_hub_which_method_and_task_a_model_is():
    """Which method and which task a checkpoint is are registry questions (`vl_models.registry.method_of`,
    `task_of`); pipelines, cards and remote code ask there, and no import runs from pipelines/ up to hub/."""
    import ast

    from vl_models import hub, registry

    for path in (Path(vl_models.__file__).parent / "pipelines").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "hub" not in (node.module or "").split("."), f"{path.name} imports from {node.module}"
    assert hub.method_of is registry.method_of and hub.task_of is registry.task_of
    model = vl_models.get_method("albef").task_classes["vqa"]
    assert registry.task_of(model) == "vqa" and registry.method_of(model).name == "albef"
