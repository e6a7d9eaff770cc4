"""Pre-training learns: examples/pretrain.py with its default flags at the `small` preset, a short run on Shapes,
then `learning_signals` on held-out pairs far from what a model that learned nothing gets.

Each run takes about a minute on one core. Before the CPU presets dropped the feature queue, the image features of
these runs stayed collapsed (mean cosine between different images 1.000) and in-batch ITC sat at chance; before
the collator's MLM labels reached ViLTA's teacher check, ViLTA distilled uniform soft labels. docs/methods.md,
"Learning from scratch", has the longer runs these stand for.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForPreTraining, AutoProcessor

from vl_models.data.collators import PreTrainingCollator, WithIndex
from vl_models.training import load_captions
from vl_models.training.learning import learning_signals
from vl_models.training.runner import load_script

ROOT = Path(__file__).resolve().parents[1]
UPDATES = 150
SIZE = "small"


def _pretrain(method: str, output_dir: Path, *extra: str):
    pretrain = load_script(ROOT / "examples" / "pretrain.py")
    pretrain.main(["--method", method, "--size", SIZE, "--data", "shapes", "--num_train_images", "1600",
                   "--num_val_images", "0", "--max_train_steps", str(UPDATES), "--eval_steps", "0",
                   "--checkpointing_steps", "0", "--logging_steps", "50", "--output_dir", str(output_dir),
                   "--seed", "0", *extra])
    model = AutoModelForPreTraining.from_pretrained(output_dir)
    return model, AutoProcessor.from_pretrained(output_dir)


def _held_out_signals(model, processor) -> dict:
    """`learning_signals` on 64 Shapes test pairs (images the run never saw), masks drawn by the collator."""
    test = load_captions("shapes", num_train=0, num_val=0, num_test=64, seed=0, splits=("test",))[0]["test"]
    collator = PreTrainingCollator(processor, model.config, type(model), seed=1, image_masking=False)
    rows = WithIndex(test)
    batch = collator([rows[i] for i in range(len(rows))])
    torch.manual_seed(0)
    return learning_signals(model, batch)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["albef", "vlmae", "vq_mim"])
def test_align_fuse_methods_learn_itc_and_mlm_from_scratch(method, tmp_path):
    model, processor = _pretrain(method, tmp_path)
    signals = _held_out_signals(model, processor)
    assert signals["image_feature_cosine"] < 0.8, signals  # 0.996 at initialisation, 1.000 with the queue
    assert signals["text_feature_cosine"] < 0.95, signals
    assert signals["itc_accuracy"] > 5 * signals["chance_itc_accuracy"], signals
    assert signals["mlm_accuracy"] > signals["mlm_unigram_accuracy"] + 0.15, signals


@pytest.mark.slow
def test_vilta_learns_itm_and_mlm_from_scratch(tmp_path):
    model, processor = _pretrain("vilta", tmp_path)
    signals = _held_out_signals(model, processor)
    assert signals["itm_accuracy"] > signals["chance_itm_accuracy"] + 0.15, signals
    assert signals["mlm_accuracy"] > signals["mlm_unigram_accuracy"] + 0.15, signals
