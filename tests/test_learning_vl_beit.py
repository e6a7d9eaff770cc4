"""VL-BEiT learns: at size tiny on Shapes, its visual tokenizer (100 updates) and then VL-BEiT (400 updates, batch 32,
the preset's lr 3e-4, 50 warm-up updates) trained with the library's collator, data loader, optimizer and schedule;
held-out masked-prediction accuracy against the unigram baseline (always the most frequent training label). About
25 s on one core. The run is bench/learning_vl_beit.py's `run`; docs/methods/vl_beit.md, "Does it learn?"."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "learning_vl_beit.py"


def _bench():
    spec = importlib.util.spec_from_file_location("vl_bench_learning_vl_beit", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the measured numbers are one thread's; a second thread only waits at barriers
    try:
        return _bench().run("tiny", tokenizer_steps=100, steps=400, batch_size=32, seed=0)
    finally:
        torch.set_num_threads(threads)


def test_the_visual_tokenizer_uses_its_codes_and_they_are_deterministic(report):
    targets = report["targets"]
    first, last = report["tokenizer_loss_rec"]
    assert last < 0.8 * first, report["tokenizer_loss_rec"]  # measured: 0.99 -> 0.64
    # measured: perplexity 2.1 over 16 of the 32 codes; an untrained codebook collapsed onto one code reads ~1
    assert targets["perplexity"] > 1.5 and targets["codes_used"] >= 8, targets
    assert targets["stable_under_noise"] > 0.98, targets  # a target must not flip with pixel noise of std 0.01


def test_mlm_and_mvlm_text_accuracy_far_above_the_unigram_baseline(report):
    before, after = report["before"], report["after"]
    assert before["mlm_accuracy"] < 0.05 and before["mvlm_text_accuracy"] < 0.05, before
    # measured: 0.36 (text-only rows) and 0.34 (pairs) against 0.20 for the most frequent token
    assert after["mlm_accuracy"] > after["unigram_mlm"] + 0.1, after
    assert after["mvlm_text_accuracy"] > after["unigram_mlm"] + 0.1, after


def test_mim_learns_at_least_the_unigram_distribution(report):
    after = report["after"]
    # from 0.01 at initialisation to the most frequent code (the background's) everywhere
    assert report["before"]["mim_accuracy"] < after["unigram_mim"] - 0.5
    assert after["mim_accuracy"] >= after["unigram_mim"] - 0.01, after
    assert after["mvlm_image_accuracy"] >= after["unigram_mim"] - 0.01, after


def test_a_patch_local_tokenizer_keeps_the_objects_off_the_background_code(report):
    """The MIM targets alone (no VL-BEiT updates): the patch-local encoder's codes follow the objects where the
    trained ViT tokenizer's do not, and survive pixel noise. About 5 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        patch = _bench().run("tiny", tokenizer_steps=100, steps=0, batch_size=32, seed=0,
                             tokenizer_overrides={"encoder": "patch", "freeze_encoder": True})["targets"]
    finally:
        torch.set_num_threads(threads)
    # measured: 61% of the object patches on the background's code (ViT, trained) against 5% (patch-local)
    assert report["targets"]["object_patches_with_background_code"] > 0.4, report["targets"]
    assert patch["object_patches_with_background_code"] < 0.1, patch
    assert patch["stable_under_noise"] > 0.98 and patch["perplexity"] > 4, patch  # measured: 0.998, 5.5


@pytest.mark.xfail(strict=True, reason=(
    "known: on Shapes, MIM's accuracy does not beat the unigram baseline within 1500 updates (tiny) or 300 "
    "(small): 60-91% of masked targets are the background's code and it stays the most likely at every masked "
    "patch, with the trained ViT tokenizer (most object patches on that code) and with the patch-local one "
    "(objects off it; MIM's cross-entropy beats the unigram's at small only) (docs/methods/vl_beit.md, "
    "'Does it learn?'); remove this marker once it learns"))
def test_mim_accuracy_above_the_unigram_baseline(report):
    after = report["after"]
    assert after["mim_accuracy"] > after["unigram_mim"] + 0.02, after
    assert after["mim_accuracy_object_patches"] > after["unigram_mim_object_patches"] + 0.05, after
