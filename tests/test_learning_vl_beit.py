"""VL-BEiT learns: at size tiny on Shapes rendered at 64 px (8 x 8 patches: at the preset's 32 px an object fills one
or two of 16 patches and no predictor of a masked patch beats the unigram, see `context_table`), its visual tokenizer
(100 updates) and then VL-BEiT (600 updates, batch 32, the method's tiny lr 1e-3, 50 warm-up updates) trained with
the library's collator, data loader, optimizer and schedule; held-out masked-prediction accuracy against the unigram
baseline (always the most frequent training label). About a minute on one core. The run is
bench/learning_vl_beit.py's `run`; docs/methods/vl_beit.md, "Does it learn?"."""

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
        return _bench().run("tiny", tokenizer_steps=100, steps=600, batch_size=32, seed=0, image_size=64)
    finally:
        torch.set_num_threads(threads)


def test_the_visual_tokenizer_uses_its_codes_and_they_are_deterministic(report):
    targets = report["targets"]
    first, last = report["tokenizer_loss_rec"]
    assert last < 0.8 * first, report["tokenizer_loss_rec"]  # measured: 0.99 -> 0.26
    # measured: perplexity 2.2 over 20 of the 32 codes; an untrained codebook collapsed onto one code reads ~1
    assert targets["perplexity"] > 1.5 and targets["codes_used"] >= 8, targets
    assert targets["stable_under_noise"] > 0.98, targets  # a target must not flip with pixel noise of std 0.01


def test_mlm_and_mvlm_text_accuracy_far_above_the_unigram_baseline(report):
    before, after = report["before"], report["after"]
    assert before["mlm_accuracy"] < 0.05 and before["mvlm_text_accuracy"] < 0.05, before
    # measured: 0.52 (text-only rows) and 0.5 (pairs) against 0.20 for the most frequent token
    assert after["mlm_accuracy"] > after["unigram_mlm"] + 0.1, after
    assert after["mvlm_text_accuracy"] > after["unigram_mlm"] + 0.1, after


def test_mim_learns_at_least_the_unigram_distribution(report):
    after = report["after"]
    # from 0.01 at initialisation to the most frequent code (the background's) everywhere
    assert report["before"]["mim_accuracy"] < after["unigram_mim"] - 0.5
    assert after["mim_accuracy"] >= after["unigram_mim"] - 0.01, after
    assert after["mvlm_image_accuracy"] >= after["unigram_mim"] - 0.01, after


def test_a_patch_local_tokenizer_keeps_the_objects_off_the_background_code():
    """The MIM targets alone (no VL-BEiT updates): the patch-local encoder's codes follow the objects and survive
    pixel noise. About 10 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        patch = _bench().run("tiny", tokenizer_steps=100, steps=0, batch_size=32, seed=0, image_size=64,
                             tokenizer_overrides={"encoder": "patch", "freeze_encoder": True})["targets"]
    finally:
        torch.set_num_threads(threads)
    # measured: no object patch on the background's code (the trained ViT tokenizer: 16%), 100% stable, 2.6
    assert patch["object_patches_with_background_code"] < 0.05, patch
    assert patch["stable_under_noise"] > 0.98 and patch["perplexity"] > 2, patch


def test_mim_accuracy_above_the_unigram_baseline(report):
    """Masked patches are predicted from what is around them: beyond the unigram overall, far beyond it on the
    object patches, and at a lower held-out cross-entropy. Before the relative position bias started as a
    locality prior and the tiny/small lr was 1e-3, 600 updates ended at the unigram (object patches 0.02 against
    0.17); measured now: 0.836 against 0.820 overall, 0.30 against 0.17 on objects, cross-entropy 0.64 against 0.78.
    Overall the margin is small by nature: 82% of the targets are the background's code, and a lookup table
    from the 8 visible neighbours' codes scores the unigram overall (0.820) and 0.23 on objects."""
    after, targets = report["after"], report["targets"]
    assert targets["context_table_mim"] >= after["unigram_mim"] - 0.005, targets  # the targets allow no more
    assert after["mim_accuracy"] > after["unigram_mim"] + 0.008, after
    assert after["mim_accuracy_object_patches"] > after["unigram_mim_object_patches"] + 0.08, after
    assert after["mim_nll"] < 0.9 * after["unigram_mim_nll"], after
