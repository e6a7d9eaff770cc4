"""The transformers `Trainer` route (docs/training.md, "With transformers' Trainer"): pre-training and every
downstream task train through `Trainer` with the package's collators, given `remove_unused_columns=False` (the
collators read the raw `image` / `captions` columns, which no `forward` argument names)."""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainingArguments

import vl_models
from vl_models.data.collators import PreTrainingCollator
from vl_models.processing import build_processor
from vl_models.training import load_task_data, task_collator


def _train(model, dataset, collator, tmp_path, **extra) -> list[dict]:
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=8, max_steps=3, logging_steps=1,
                             learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no",
                             remove_unused_columns=False, seed=0, **extra)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed, "no trainable parameter moved"
    return [r for r in trainer.state.log_history if "loss" in r]


@pytest.mark.parametrize("method", vl_models.list_methods())
def test_trainer_pretrains_every_method(method, tmp_path):
    spec = vl_models.get_method(method)
    torch.manual_seed(0)
    config = vl_models.get_config(method, "tiny")
    model = spec.pretraining_class(config)
    processor = build_processor(spec.processor_class, image_size=config.vision_config.image_size)
    data, _ = load_task_data("captions", "shapes", splits=("train",), num_train=32)
    logs = _train(model, data["train"], PreTrainingCollator(processor, config, type(model), seed=0), tmp_path)
    assert len(logs) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in logs)


@pytest.mark.parametrize("task", ["retrieval", "vqa", "grounding", "nlvr2"])
def test_trainer_fine_tunes_every_task(task, tmp_path):
    spec = vl_models.get_method("albef")
    data, info = load_task_data(task, "shapes", splits=("train",), num_train=32)
    config = vl_models.get_config("albef", "tiny")
    if task == "vqa":
        answers = info["answers"]
        config.id2label, config.label2id = dict(enumerate(answers)), {a: i for i, a in enumerate(answers)}
    torch.manual_seed(0)
    model = spec.task_classes[task](config)
    processor = build_processor(spec.processor_class, image_size=config.vision_config.image_size)
    collator = task_collator(task, processor, num_labels=config.num_labels if task == "vqa" else None, seed=0)
    logs = _train(model, data["train"], collator, tmp_path)
    assert len(logs) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in logs)
