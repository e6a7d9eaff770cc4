"""Evaluation used by the scripts: zero-shot and fine-tuned retrieval, VQA, grounding (supervised box regression or
weakly supervised Grad-CAM ranking of proposals), NLVR2, semantic segmentation.

Metrics come from `vl_models.metrics.functional` (plain numpy: no `evaluate` import, which would also be
shadowed by examples/evaluate.py when a script runs from that folder).
"""

from __future__ import annotations

import argparse
import math

import datasets
import numpy as np
import torch
import torch.nn.functional as F

from ..data.collators import TASK_COLLATORS, load_image
from ..layers.gradcam import itm_gradcam, score_proposals
from ..metrics.functional import box_iou, grounding_accuracy, mean_iou, nlvr2_accuracy, retrieval_recall
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
# grounding's two protocols: "supervised" regresses a box (`XForVisualGrounding`, trained on boxes); "weak" is ALBEF's
# weakly supervised protocol: ITC + ITM fine-tuning on the expressions (`XForImageTextRetrieval`, no box), then
# Grad-CAM of the ITM score ranks the given proposals (`evaluate_weak_grounding`)
GROUNDING_PROTOCOLS = ("supervised", "weak")


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


def add_grounding_args(parser: argparse.ArgumentParser) -> None:
    """The grounding-protocol flags of examples/finetune.py and examples/evaluate.py."""
    g = parser.add_argument_group("grounding")
    g.add_argument("--grounding_protocol", default="supervised", choices=GROUNDING_PROTOCOLS,
                   help="supervised: box regression trained on boxes (XForVisualGrounding); weak: ALBEF's weakly "
                        "supervised protocol, ITC + ITM fine-tuning on the expressions without boxes "
                        "(XForImageTextRetrieval), evaluated by ranking --proposals with Grad-CAM")
    g.add_argument("--gradcam_layer", type=int, default=None,
                   help="weak protocol: the fusion layer whose text-to-image attention Grad-CAM reads (default: "
                        "ALBEF's depth, the 3rd of 6 fusion layers; layers.gradcam.default_layer)")


def grounding_model_task(task: str, protocol: str) -> str:
    """The task whose model class serves `task` under `protocol`: weak grounding trains and ranks with the
    retrieval class (its ITC + ITM loss and ITM head)."""
    return "retrieval" if task == "grounding" and protocol == "weak" else task


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


def row_proposals(row: dict) -> list[list[float]]:
    """A grounding row's proposals, normalised (cx, cy, w, h): its `proposals` (a detections file's, RefCOCO) or
    its scene's objects (Shapes)."""
    if row.get("proposals") is not None:
        return [list(box) for box in row["proposals"]]
    if row.get("objects") is not None:
        return [list(obj["box"]) for obj in row["objects"]]
    raise UserError("weakly supervised grounding ranks proposals: give --proposals (a detections .json such as "
                    "ALBEF's dets.json) with RefCOCO data")


def evaluate_weak_grounding(model, processor, ds: datasets.Dataset, device, *, batch_size: int = 32,
                            layer: int | None = None, max_examples: int | None = None,
                            iou_threshold: float = 0.5) -> dict:
    """ALBEF's weakly supervised grounding with an `XForImageTextRetrieval` model: per (image, expression), the
    Grad-CAM map of the ITM score (`layers.gradcam.itm_gradcam`, fusion layer `layer`) ranks the row's proposals
    (`row_proposals`; `score_proposals`: sum inside the box / area ** 0.5 on the map upsampled to the image) and
    the best one is the answer. Metrics: `accuracy` (IoU >= `iou_threshold` with the referred box) and `mean_iou`
    of the picked proposals; `chance_accuracy`, the expected accuracy of a uniformly random proposal;
    `proposal_upper_bound`, the share of rows where some proposal reaches the threshold; `accuracy_<split>` per
    value of a `split` column that holds several (RefCOCO+'s testA / testB). A row without proposals counts as a
    miss."""
    model.eval()
    rows = ds.select(range(min(len(ds), max_examples))) if max_examples else ds
    picks, refs, chance, reachable, splits = [], [], [], [], []
    for start in range(0, len(rows), batch_size):
        batch_rows, images = [], []
        for row in rows.select(range(start, min(start + batch_size, len(rows)))):
            image = load_image(row["image"])
            if image is not None:
                batch_rows.append(row)
                images.append(image)
        if not batch_rows:
            continue
        inputs = processor(images=images, text=[row["expression"] for row in batch_rows], return_tensors="pt")
        maps = itm_gradcam(model, inputs["pixel_values"].to(device), inputs["input_ids"].to(device),
                           inputs["attention_mask"].to(device), layer=layer).cpu()  # [B, h, w]
        for row, image, heat in zip(batch_rows, images, maps):
            proposals = np.asarray(row_proposals(row), dtype=np.float64).reshape(-1, 4)
            box = np.asarray(row["box"], dtype=np.float64)
            if len(proposals) == 0:
                picks.append(np.zeros(4))
            else:
                scores = score_proposals(heat, torch.from_numpy(proposals), (image.height, image.width))
                picks.append(proposals[int(scores.argmax())])
                hits = box_iou(proposals, np.repeat(box[None], len(proposals), 0)) >= iou_threshold
                chance.append(float(hits.mean()))
                reachable.append(float(hits.any()))
            refs.append(box)
            splits.append(row.get("split"))
    model.train()
    if not refs:
        return {}
    metrics = grounding_accuracy(np.stack(picks), np.stack(refs), iou_threshold=iou_threshold)
    # rows without proposals: a random pick cannot hit either
    metrics["chance_accuracy"] = float(np.sum(chance) / len(refs))
    metrics["proposal_upper_bound"] = float(np.sum(reachable) / len(refs))
    if len(set(splits) - {None}) > 1:
        hit = box_iou(np.stack(picks), np.stack(refs)) >= iou_threshold
        for name in sorted(set(splits) - {None}):
            chosen = np.asarray([s == name for s in splits])
            metrics[f"accuracy_{name}"] = float(hit[chosen].mean())
    return metrics


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
    "GROUNDING_PROTOCOLS",
    "PRIMARY_METRIC",
    "add_grounding_args",
    "eval_dataloader",
    "evaluate_classification",
    "evaluate_retrieval",
    "evaluate_weak_grounding",
    "grounding_model_task",
    "itc_similarity",
    "majority_baseline",
    "recall",
    "retrieval_inputs",
    "row_proposals",
    "segmentation_metrics",
    "task_class",
    "task_classes",
    "task_collator",
    "zero_shot_retrieval",
]
