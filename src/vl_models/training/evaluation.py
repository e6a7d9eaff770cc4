"""Evaluation used by the scripts: zero-shot and fine-tuned retrieval, VQA, grounding, NLVR2, semantic segmentation.

Metrics come from `vl_models.metrics.functional` (plain numpy: no `evaluate` import, which would also be
shadowed by examples/evaluate.py when a script runs from that folder).
"""

from __future__ import annotations

import math

import datasets
import numpy as np
import torch
import torch.nn.functional as F

from ..data.collators import TASK_COLLATORS, load_image
from ..metrics.functional import grounding_accuracy, mean_iou, nlvr2_accuracy, retrieval_recall
from ..models.vl_beit import VlBeitForSemanticSegmentation
from ..registry import get_method, list_methods
from .data import UserError, make_dataloader

# the number that each task's table reports first
PRIMARY_METRIC = {"retrieval": "text_to_image_r1", "vqa": "accuracy", "grounding": "accuracy", "nlvr2": "accuracy",
                  "segmentation": "mean_iou"}
TASKS = tuple(PRIMARY_METRIC)  # the downstream tasks finetune.py and evaluate.py take
# vision-only tasks, outside `Method.task_classes` (the image-text tasks the pipelines, cards and shared tests loop
# over): method -> class, for the methods that have a head for them
VISION_TASK_CLASSES = {"segmentation": {"vl_beit": VlBeitForSemanticSegmentation}}


def task_classes(model_type: str) -> dict[str, type]:
    """task -> model class for a method: its `Method.task_classes` plus the vision tasks it has a head for."""
    classes = dict(get_method(model_type).task_classes)
    classes.update({task: by_method[model_type] for task, by_method in VISION_TASK_CLASSES.items()
                    if model_type in by_method})
    return classes


def task_class(model_type: str, task: str, where: str) -> type:
    """The model class of `task` for a checkpoint of `model_type`; a `UserError` naming the methods that have one
    when this method has not (`where`: the checkpoint, for the message)."""
    classes = task_classes(model_type)
    if task not in classes:
        able = [m for m in list_methods() if task in task_classes(m)]
        raise UserError(f"--task {task} needs a checkpoint of {' or '.join(able)}; {where} is {model_type}")
    return classes[task]


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


def task_collator(task: str, processor, *, num_labels: int | None = None, train: bool = True, seed: int = 0,
                  reduce_labels: bool = False):
    if task == "vqa":
        return TASK_COLLATORS[task](processor, num_labels)
    if task == "segmentation":
        return TASK_COLLATORS[task](processor, reduce_labels=reduce_labels, num_labels=num_labels)
    if task == "retrieval":
        return TASK_COLLATORS[task](processor, random_caption=train, seed=seed)
    return TASK_COLLATORS[task](processor)


def _prediction(task: str, out, labels: torch.Tensor) -> torch.Tensor:
    if task == "grounding":
        return out.pred_boxes
    if task == "segmentation":  # [B, H, W] class maps at the labels' size (the processor's), as the loss scores them
        return F.interpolate(out.logits.float(), size=labels.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
    return out.logits.argmax(-1)


def segmentation_metrics(pred: torch.Tensor, ref: torch.Tensor, id2label: dict) -> dict:
    """mean IoU, pixel accuracy and `iou_<class>` per class (the `mean_iou` metric: 255 ignored; a class absent from
    both predictions and references has no IoU and no key) from class maps [N, H, W]."""
    scores = mean_iou(list(pred.numpy()), list(ref.numpy()), num_labels=len(id2label))
    metrics = {"mean_iou": scores["mean_iou"], "pixel_accuracy": scores["overall_accuracy"]}
    metrics.update({f"iou_{id2label[i]}": iou for i, iou in enumerate(scores["per_category_iou"]) if not math.isnan(iou)})
    return metrics


@torch.no_grad()
def evaluate_classification(task: str, model, dataloader, accelerator) -> dict:
    """VQA (soft-score accuracy), grounding (IoU >= 0.5 accuracy, mean IoU), NLVR2 (accuracy) or segmentation
    (`segmentation_metrics`) over a prepared data loader; predictions are gathered from every process."""
    model.eval()
    predictions, references = [], []
    dtype = torch.int16 if task == "segmentation" else torch.float32  # class maps: 2 bytes a pixel, 255 included
    for batch in dataloader:
        labels = batch.pop("labels")
        prediction = _prediction(task, model(**batch), labels)
        prediction, labels = accelerator.gather_for_metrics((prediction, labels))
        predictions.append(prediction.to(dtype).cpu())
        references.append(labels.to(dtype).cpu())
    model.train()
    if not predictions:
        return {}
    pred, ref = torch.cat(predictions), torch.cat(references)
    if task == "segmentation":
        return segmentation_metrics(pred, ref, accelerator.unwrap_model(model).config.id2label)
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


def eval_dataloader(task, ds, processor, batch_size, *, num_labels=None, reduce_labels=False):
    return make_dataloader(ds, task_collator(task, processor, num_labels=num_labels, train=False,
                                             reduce_labels=reduce_labels), batch_size, shuffle=False)


__all__ = [
    "PRIMARY_METRIC",
    "eval_dataloader",
    "evaluate_classification",
    "evaluate_retrieval",
    "itc_similarity",
    "majority_baseline",
    "recall",
    "retrieval_inputs",
    "segmentation_metrics",
    "task_class",
    "task_classes",
    "task_collator",
    "zero_shot_retrieval",
]
