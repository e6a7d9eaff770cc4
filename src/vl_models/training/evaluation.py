"""Evaluation used by the scripts: zero-shot and fine-tuned retrieval, VQA, grounding, NLVR2.

Metrics come from `vl_models.metrics.functional` (plain numpy: no `evaluate` import, which would also be
shadowed by examples/evaluate.py when a script runs from that folder).
"""

from __future__ import annotations

import datasets
import numpy as np
import torch

from ..data.collators import TASK_COLLATORS, load_image
from ..metrics.functional import grounding_accuracy, nlvr2_accuracy, retrieval_recall
from .data import make_dataloader

# the number that each task's table reports first
PRIMARY_METRIC = {"retrieval": "text_to_image_r1", "vqa": "accuracy", "grounding": "accuracy", "nlvr2": "accuracy"}
TASKS = tuple(PRIMARY_METRIC)  # the downstream tasks finetune.py and evaluate.py take


def retrieval_inputs(ds: datasets.Dataset, processor, max_images: int | None = None) -> dict:
    """Every image and every caption of a caption split -> `pixel_values` [I, C, H, W], `input_ids` /
    `attention_mask` [T, L], `text_to_image` [T] (an image owns all its captions). Unreadable images are
    left out with their captions."""
    rows = ds.select(range(min(len(ds), max_images))) if max_images else ds
    images, texts, owner = [], [], []
    for row in rows:
        image = load_image(row["image"])
        if image is None:
            continue
        captions = [row["caption"]] if "caption" in row else list(row["captions"])
        owner += [len(images)] * len(captions)
        images.append(image)
        texts += captions
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    text = processor(text=texts, return_tensors="pt")
    return {"pixel_values": pixels, "input_ids": text["input_ids"], "attention_mask": text["attention_mask"],
            "text_to_image": owner}


@torch.no_grad()
def itc_similarity(backbone, inputs: dict, device, batch_size: int = 128) -> torch.Tensor:
    """[I, T] cosine similarity of the ITC features of an `XModel` (zero-shot retrieval without re-ranking)."""
    image = torch.cat([backbone.get_image_features(p.to(device)) for p in inputs["pixel_values"].split(batch_size)])
    text = torch.cat([backbone.get_text_features(i.to(device), m.to(device)) for i, m in
                      zip(inputs["input_ids"].split(batch_size), inputs["attention_mask"].split(batch_size))])
    return (image.float() @ text.float().t()).cpu()


def recall(similarity: torch.Tensor, text_to_image, ks=(1, 5, 10)) -> dict:
    result = retrieval_recall(similarity.float().numpy(), text_to_image, ks=ks)
    result["chance_text_to_image_r1"] = 1.0 / similarity.shape[0]
    return result


def zero_shot_retrieval(model, inputs: dict, device, *, batch_size: int = 128) -> dict:
    """ITC recall@1/5/10 of a pre-training model (anything with `base_model.get_image_features`) on
    `retrieval_inputs(...)`; no ITM re-ranking."""
    was_training = model.training
    model.eval()
    result = recall(itc_similarity(model.base_model, inputs, device, batch_size), inputs["text_to_image"])
    model.train(was_training)
    return result


@torch.no_grad()
def evaluate_retrieval(model, processor, ds: datasets.Dataset, device, *, k: int = 256, max_images: int | None = None,
                       batch_size: int = 128) -> dict:
    """`XForImageTextRetrieval.rank` (ALBEF's inference: ITC ranks everything, each query's top k, capped at the
    gallery, re-scored by ITM + ITC) -> recall@1/5/10; image->text from the images' top-k matrix, text->image from
    the texts', as ALBEF scores them."""
    model.eval()
    inputs = retrieval_inputs(ds, processor, max_images)
    image_to_text, text_to_image = model.rank(inputs["pixel_values"].to(device), inputs["input_ids"].to(device),
                                              inputs["attention_mask"].to(device), k=k, batch_size=batch_size,
                                              per_direction=True)
    result = recall(image_to_text.cpu(), inputs["text_to_image"])
    result.update({key: value for key, value in recall(text_to_image.cpu(), inputs["text_to_image"]).items()
                   if key.startswith("text_to_image_")})
    result["mean_recall"] = float(np.mean([v for key, v in result.items() if key.startswith(("image_to_text_r",
                                                                                              "text_to_image_r"))]))
    return result


def task_collator(task: str, processor, *, num_labels: int | None = None, train: bool = True, seed: int = 0):
    if task == "vqa":
        return TASK_COLLATORS[task](processor, num_labels)
    if task == "retrieval":
        return TASK_COLLATORS[task](processor, random_caption=train, seed=seed)
    return TASK_COLLATORS[task](processor)


@torch.no_grad()
def evaluate_classification(task: str, model, dataloader, accelerator) -> dict:
    """VQA (soft-score accuracy), grounding (IoU >= 0.5 accuracy, mean IoU) or NLVR2 (accuracy) over a
    prepared data loader; predictions are gathered from every process."""
    model.eval()
    predictions, references = [], []
    for batch in dataloader:
        labels = batch.pop("labels")
        out = model(**batch)
        prediction = out.pred_boxes if task == "grounding" else out.logits.argmax(-1)
        prediction, labels = accelerator.gather_for_metrics((prediction, labels))
        predictions.append(prediction.float().cpu())
        references.append(labels.float().cpu())
    model.train()
    if not predictions:
        return {}
    pred, ref = torch.cat(predictions), torch.cat(references)
    if task == "vqa":  # the soft score of the predicted answer (VQA accuracy with the dataset's scores)
        return {"accuracy": float(ref[torch.arange(len(pred)), pred.long()].mean())}
    if task == "grounding":
        return grounding_accuracy(pred.numpy(), ref.numpy())
    return nlvr2_accuracy(pred.long().tolist(), ref.long().tolist())


def majority_baseline(task: str, ds: datasets.Dataset) -> float | None:
    """The accuracy of always giving the most common answer (VQA, NLVR2): the chance level to beat."""
    if task == "vqa":
        counts = np.bincount([row[0] for row in ds["labels"] if row]) if len(ds) else np.zeros(1)
        return float(counts.max() / max(1, len(ds)))
    if task == "nlvr2":
        labels = np.asarray(ds["label"])
        return float(max(labels.mean(), 1 - labels.mean())) if len(labels) else None
    return None


def eval_dataloader(task, ds, processor, batch_size, *, num_labels=None):
    return make_dataloader(ds, task_collator(task, processor, num_labels=num_labels, train=False), batch_size,
                           shuffle=False)


__all__ = [
    "PRIMARY_METRIC",
    "eval_dataloader",
    "evaluate_classification",
    "evaluate_retrieval",
    "itc_similarity",
    "majority_baseline",
    "recall",
    "retrieval_inputs",
    "task_collator",
    "zero_shot_retrieval",
]
