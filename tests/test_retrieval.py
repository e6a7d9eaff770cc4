"""Retrieval fine-tuning and inference as ALBEF's, against hand computations at toy size: ITC targets from image ids
over batch + queue mixed with the momentum model's soft targets, ITM hard negatives never of the same image, ranking
by ITC then re-scoring each query's top k by ITM + ITC; and `examples/finetune.py --task retrieval` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassClassValidationError
from torch import nn

import vl_models
from conftest import make_batch
from vl_models import AlbefForImageTextRetrieval, AlbefForPreTraining
from vl_models.data import build_shapes
from vl_models.data.collators import RetrievalCollator, WithIndex
from vl_models.layers.align_fuse import sample_hard_negatives
from vl_models.layers.tasks import ImageTextRetrievalMixin

ROOT = Path(__file__).resolve().parents[1]
NO_DROPOUT = {"text_config": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}


def albef_retrieval(**overrides) -> AlbefForImageTextRetrieval:
    torch.manual_seed(0)
    return AlbefForImageTextRetrieval(vl_models.get_config("albef", "tiny", **{**NO_DROPOUT, **overrides}))


def test_albef_itc_targets_are_same_id_positives_over_batch_and_queue_mixed_with_the_teacher():
    # momentum 1: the teacher stays put in a training forward, so the hand computation can use it as it is
    model = albef_retrieval(queue_size=4, alpha=0.4, momentum=1.0).train()
    with torch.no_grad():  # a teacher that differs from the student, so its soft targets are its own
        for p in model.momentum_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    dim = model.config.embed_dim
    g = torch.Generator().manual_seed(1)
    queued_images, queued_texts = (F.normalize(torch.randn(4, dim, generator=g), dim=-1) for _ in range(2))
    model.image_queue.features.copy_(queued_images)
    model.text_queue.features.copy_(queued_texts)
    model.image_id_queue.ids.copy_(torch.tensor([5, -1, 3, 9]))  # -1: a row from pre-training, no id
    for queue in (model.image_queue, model.text_queue):
        queue.ptr.fill_(2)
    batch = make_batch(model.config, batch_size=4)
    image_ids = torch.tensor([3, 3, 5, 7])  # pairs 0 and 1: two captions of one image

    # by hand: key ids [3, 3, 5, 7 | 5, -1, 3, 9] (batch | queue); each row's positives share its id, weight 1/count
    hard = torch.tensor([[1 / 3, 1 / 3, 0, 0, 0, 0, 1 / 3, 0],
                         [1 / 3, 1 / 3, 0, 0, 0, 0, 1 / 3, 0],
                         [0, 0, 1 / 2, 0, 1 / 2, 0, 0, 0],
                         [0, 0, 0, 1, 0, 0, 0, 0]])
    with torch.no_grad():
        student, teacher = model.base_model, model.momentum_model
        image_m = teacher.get_image_features(batch["pixel_values"])
        text_m = teacher.get_text_features(batch["input_ids"], batch["attention_mask"])
    image_s = student.get_image_features(batch["pixel_values"])
    text_s = student.get_text_features(batch["input_ids"], batch["attention_mask"])
    temp = model.temp.clamp(0.001, 0.5)
    image_keys, text_keys = torch.cat([image_m, queued_images]), torch.cat([text_m, queued_texts])
    targets_i2t = 0.4 * (image_m @ text_keys.t() / temp).softmax(-1) + 0.6 * hard
    targets_t2i = 0.4 * (text_m @ image_keys.t() / temp).softmax(-1) + 0.6 * hard
    sim_i2t, sim_t2i = image_s @ text_keys.t() / temp, text_s @ image_keys.t() / temp
    expected = (-(targets_i2t * sim_i2t.log_softmax(-1)).sum(-1).mean()
                - (targets_t2i * sim_t2i.log_softmax(-1)).sum(-1).mean()) / 2

    loss, local_i2t, local_t2i = model._retrieval_itc(
        image_s, text_s, temp, None, pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"], image_ids=image_ids, alpha=None, interpolate_pos_encoding=False)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(local_i2t, sim_i2t[:, :4])  # ITM's hard negatives come from the batch's columns
    torch.testing.assert_close(local_t2i, sim_t2i[:, :4])
    # the teacher's features and their ids entered the queue together at the pointer: rows 2, 3, 0, 1
    assert model.image_id_queue.ids.tolist() == [5, 7, 3, 3]
    torch.testing.assert_close(model.image_queue.features, image_m[[2, 3, 0, 1]])
    torch.testing.assert_close(model.text_queue.features, text_m[[2, 3, 0, 1]])
    assert int(model.image_queue.ptr) == 2

    # without ids each pair is its own only positive (pre-training's targets); alpha 0: the hard targets alone
    model.eval()
    image_keys, text_keys = torch.cat([image_m, model.image_queue.features]), torch.cat([text_m, model.text_queue.features])
    loss, _, _ = model._retrieval_itc(
        image_s, text_s, temp, None, pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"], image_ids=None, alpha=0.0, interpolate_pos_encoding=False)
    labels = torch.arange(4)
    expected = (F.cross_entropy(image_s @ text_keys.t() / temp, labels)
                + F.cross_entropy(text_s @ image_keys.t() / temp, labels)) / 2
    torch.testing.assert_close(loss, expected)


def test_retrieval_forward_trains_with_ids_and_the_old_loss_stays_available():
    model = albef_retrieval(queue_size=8).train()
    batch = make_batch(model.config)
    out = model(**batch, image_ids=torch.tensor([0, 0, 1, 2]), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert all(not p.requires_grad for p in model.momentum_model.parameters())
    with pytest.raises(ValueError, match="image_ids"):
        model(**batch, image_ids=torch.tensor([0, -1, 1, 2]))
    with pytest.raises(ValueError, match="image_ids"):
        model(**batch, image_ids=torch.tensor([0, 1, 2]))
    # "in_batch": the in-batch CLIP loss + ITM, no momentum model or queues
    old = albef_retrieval(queue_size=8, retrieval_loss="in_batch").train()
    assert not hasattr(old, "momentum_model") and not hasattr(old, "image_queue")
    assert torch.isfinite(old(**batch, generator=torch.Generator().manual_seed(0)).loss)
    with pytest.raises(StrictDataclassClassValidationError, match="retrieval_loss"):
        vl_models.get_config("albef", "tiny", retrieval_loss="albeff")


def test_retrieval_takes_the_momentum_model_and_queues_of_a_pretraining_checkpoint(tmp_path):
    torch.manual_seed(0)
    pre = AlbefForPreTraining(vl_models.get_config("albef", "tiny", queue_size=8))
    pre.train()(**make_batch(pre.config), generator=torch.Generator().manual_seed(0))  # the queue moves
    pre.save_pretrained(tmp_path)
    model, info = AlbefForImageTextRetrieval.from_pretrained(tmp_path, output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["image_id_queue.ids"]
    for name, tensor in model.state_dict().items():
        if name.startswith(("momentum_model.", "image_queue.", "text_queue.")):
            torch.testing.assert_close(tensor, pre.state_dict()[name], msg=name)
    assert (model.image_id_queue.ids == -1).all()  # pre-training's queued features have no image id
    model.check_loaded_keys(info, tmp_path)
    # a checkpoint fine-tuned "in_batch" has no momentum model: it starts as a copy of the student
    model.config.retrieval_loss = "in_batch"
    AlbefForImageTextRetrieval(model.config).save_pretrained(tmp_path / "in_batch")
    model, info = AlbefForImageTextRetrieval.from_pretrained(tmp_path / "in_batch", retrieval_loss="albef",
                                                             output_loading_info=True)
    model.check_loaded_keys(info, tmp_path / "in_batch")
    teacher = model.momentum_model.state_dict()
    for name, tensor in model.base_model.state_dict().items():
        torch.testing.assert_close(teacher[name], tensor, msg=name)


def test_hard_negatives_never_share_the_positive_image_id():
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])
    same = ids[:, None] == ids[None]
    # similarities that favour the same image strongly: unmasked, those would be drawn almost always
    sims = torch.where(same, 10.0, 0.0) + 0.1 * torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
    for uniform in (0.0, 0.5):
        for seed in range(50):
            neg_image, neg_text = sample_hard_negatives(sims, sims.t(), torch.Generator().manual_seed(seed),
                                                        uniform, same)
            assert (ids[neg_image] != ids).all() and (ids[neg_text] != ids).all()
    # one image in the whole batch: no true negative exists, any other row rather than the positive itself
    neg_image, neg_text = sample_hard_negatives(sims[:3, :3], sims[:3, :3], torch.Generator().manual_seed(0),
                                                0.0, torch.ones(3, 3, dtype=torch.bool))
    assert (neg_image != torch.arange(3)).all() and (neg_text != torch.arange(3)).all()


class _Backbone(nn.Module):
    """Image i and text t: ITC features whose product is S[i, t]; fusing them gives ITM match logit M[i, t]."""

    def __init__(self, sims):
        super().__init__()
        self.image_rows, self.text_rows = torch.eye(len(sims)), sims.t()

    def encode_image(self, pixel_values):
        return pixel_values.flatten(1).long()  # [I, 1]: the image's index

    def encode_text(self, input_ids, attention_mask):
        return input_ids  # [T, 1]: the text's index

    def image_feat(self, index):
        return self.image_rows[index[:, 0]]

    def text_feat(self, index):
        return self.text_rows[index[:, 0]]


class _Ranker(ImageTextRetrievalMixin, nn.Module):
    def __init__(self, sims, itm):
        nn.Module.__init__(self)
        self.base_model, self.itm = _Backbone(sims), itm
        self.itm_head = nn.Identity()

    def _fuse(self, images, texts, attention_mask, interpolate_pos_encoding=False):
        logits = torch.stack([torch.zeros(len(images)), self.itm[images[:, 0], texts[:, 0]]], dim=-1)
        return logits[:, None]  # [P, 1, 2]: position 0 goes to the (identity) ITM head


def test_rank_rescores_each_querys_top_k_with_itm_plus_itc():
    sims = torch.tensor([[0.9, 0.5, 0.1], [0.8, 0.7, 0.2], [0.3, 0.6, 0.4]])  # ITC, [image, text]
    itm = torch.tensor([[-1.0, 2.0, 5.0], [0.5, 0.1, 0.0], [3.0, -2.0, 1.0]])  # ITM match logits
    ranker = _Ranker(sims, itm)
    pixels, ids = torch.arange(3.0).view(3, 1, 1, 1), torch.arange(3).view(3, 1)
    image_to_text, text_to_image = ranker.rank(pixels, ids, k=2, per_direction=True)
    # by hand, k = 2. Image 0: texts 0, 1 re-scored (0.9 - 1 = -0.1, 0.5 + 2 = 2.5); text 2 (ITC 0.1) is not
    # re-scored despite its ITM 5 and stays last. Image 1: 0.8 + 0.5 = 1.3, 0.7 + 0.1 = 0.8. Image 2: texts 1, 2
    # (0.6 - 2 = -1.4, 0.4 + 1 = 1.4)
    assert image_to_text.argsort(dim=1, descending=True).tolist() == [[1, 0, 2], [0, 1, 2], [2, 1, 0]]
    torch.testing.assert_close(image_to_text[0, :2], torch.tensor([-0.1, 2.5]))
    # text 0: images 0, 1 (-0.1, 1.3); text 1: images 1, 2 (0.8, -1.4); text 2: images 2, 1 (1.4, 0.2)
    assert text_to_image.argsort(dim=0, descending=True).t().tolist() == [[1, 0, 2], [1, 2, 0], [2, 1, 0]]
    torch.testing.assert_close(text_to_image[[0, 1, 1, 2, 2, 1], [0, 0, 1, 1, 2, 2]],
                               torch.tensor([-0.1, 1.3, 0.8, -1.4, 1.4, 0.2]))
    # one matrix: a pair in either side's top k is re-scored; k past the gallery re-scores everything
    union = ranker.rank(pixels, ids, k=2)
    torch.testing.assert_close(union[1, 2], torch.tensor(0.2))  # in text 2's top 2, not in image 1's
    torch.testing.assert_close(ranker.rank(pixels, ids, k=256), sims + itm)
    torch.testing.assert_close(ranker.rank(pixels, ids, k=0), sims)


def test_retrieval_collator_passes_image_ids():
    ds = build_shapes(num_train=6, num_val=0, num_test=0, image_size=32, seed=3)["captions_train"]
    processor = vl_models.build_processor("albef", "tiny")
    data = WithIndex(ds)
    rows = [data[i] for i in (4, 1, 5)]
    batch = RetrievalCollator(processor)(rows)
    assert batch["image_ids"].tolist() == [ds[i]["image_id"] for i in (4, 1, 5)]
    # rows of one image each without an id column: the row index stands in; one row per caption: no ids
    no_id = WithIndex(ds.remove_columns("image_id"))
    assert RetrievalCollator(processor)([no_id[i] for i in (4, 1)])["image_ids"].tolist() == [4, 1]
    flat = [{"image": row["image"], "caption": row["captions"][0]} for row in rows]
    assert "image_ids" not in RetrievalCollator(processor)(flat)


@pytest.mark.slow
def test_finetune_retrieval_on_shapes_end_to_end(tmp_path):
    model, processor = vl_models.build("albef", "tiny", task="pretraining", queue_size=16)
    model.save_pretrained(tmp_path / "pre")
    processor.save_pretrained(tmp_path / "pre")
    out = tmp_path / "retrieval"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "finetune.py"), "--task", "retrieval", "--model_name_or_path",
         str(tmp_path / "pre"), "--output_dir", str(out), "--num_train_images", "24", "--num_val_images", "8",
         "--per_device_train_batch_size", "4", "--max_train_steps", "3", "--checkpointing_steps", "0",
         "--logging_steps", "1", "--seed", "0"],
        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    [record] = json.loads((out / "eval_results.json").read_text())
    assert record["task"] == "retrieval" and 0.0 <= record["metrics"]["text_to_image_r1"] <= 1.0
    tuned = AlbefForImageTextRetrieval.from_pretrained(out)
    assert tuned.config.retrieval_loss == "albef"
    ids = tuned.image_id_queue.ids
    # 3 updates x 4 pairs entered the queue with the data's image ids; the rest still holds pre-training's rows
    assert (ids >= 0).sum() == 12 and (ids[ids >= 0] < 24).all()
