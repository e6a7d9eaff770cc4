"""examples/study.py on a micro budget (per-run JSON, the report, resume), and the report's numbers: claims decided
from constructed results, the aggregation, the convergence measure, the hard-negative probe."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

import vl_models
from vl_models.data import build_shapes
from vl_models.data.collators import load_image
from vl_models.training import probes, report
from vl_models.training.report_claims import compare, stats
from vl_models.training.report_plots import curve_series
from vl_models.training.runner import load_script

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["albef", "vlmae"]
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these are tiny models, and a second OpenMP thread spinning on a busy shared machine
    costs far more than it gives."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def study(tmp_path_factory, one_thread):
    """One micro study of two methods, one seed: (module, folder, argv, summary)."""
    out = tmp_path_factory.mktemp("study")
    argv = ["--budget", "micro", "--methods", *METHODS, "--seeds", "0", "--output_dir", str(out / "study"),
            "--report", str(out / "docs" / "results.md"), "--images_dir", str(out / "docs" / "images" / "results")]
    module = load_script(ROOT / "examples" / "study.py")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(out / "hf_home"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        summary = module.main(argv)
    return module, out, argv, summary


def test_micro_study_writes_one_result_per_run(study):
    _, out, _, summary = study
    assert summary["failed"] == [] and sorted(summary["done"]) == [(m, 0) for m in METHODS]
    for method in METHODS:
        folder = out / "study" / "runs" / method / "seed0"
        run = json.loads((folder / "result.json").read_text())
        assert run["method"] == method and run["budget"]["size"] == "tiny"
        assert set(run["scorers"]) == {"itc", "itm"}  # both pre-train ITC and ITM
        # zero-shot both ways: ITC alone ranks by similarity, ITM re-ranks the top 16 (of 8: every image)
        assert {"text_to_image_r1", "image_to_text_r10"} <= set(run["zero_shot"]) & set(run["zero_shot_itc"])
        assert run["budget"]["itm_k"] == 16
        hard = run["hard_negatives"]
        assert hard["num_comparisons"] > 0 and 0 <= hard["itc"] <= 1 and 0 <= hard["itm"] <= 1
        assert set(hard["itm_by_kind"]) == set(hard["kinds"])
        assert set(run["finetune"]) == {"vqa", "grounding", "nlvr2"}
        assert 0 <= run["finetune"]["grounding"]["metrics"]["accuracy"] <= 1
        log = run["pretrain"]["log"]
        assert [r["step"] for r in log] == [1, 2, 3, 4]  # logging_steps 1, 4 updates
        assert all("loss_itc" in r and "loss_mlm" in r for r in log)
        times = [r["time_s"] for r in log]
        assert times == sorted(times) and times[0] >= 0
        assert [r["step"] for r in run["pretrain"]["evals"]] == [2, 4]
        assert run["pretrain"]["step_time_s"] > 0 and run["cpu_s"] > 0
        assert run["photos"]["photos"] == list(probes.PHOTO_CAPTIONS)
        assert not list(folder.glob("**/*.safetensors"))  # weights are dropped unless --keep_models


def test_report_has_the_tables_and_claims(study):
    _, out, _, _ = study
    text = (out / "docs" / "results.md").read_text()
    for heading in ("Summary", "Zero-shot retrieval", "One-attribute hard negatives", "Fine-tuned", "Cost and "
                    "convergence", "Claims against ALBEF", "Learning curves", "Real photos"):
        assert f"### {heading}" in text
    for method in METHODS:
        assert text.count(f"| {method} |") >= 6  # a row in every per-method table, two in zero-shot
        assert f"| {method} | ITC |" in text and f"| {method} | ITM, top 16 |" in text
    assert "VLMAE grounds better than ALBEF: does not hold" in text  # one seed: no spread, so never "holds"
    assert "no spread (1 seed)" in text
    assert "VQ-MIM" not in text and "ViLTA" not in text  # claims of methods that did not run are left out
    if HAS_MATPLOTLIB:
        assert (out / "docs" / "images" / "results" / "study_loss_itc.png").is_file()
        assert "![" in text
    else:
        assert "matplotlib is not installed" in text


def test_resume_skips_finished_runs_and_report_only_rebuilds(study):
    module, out, argv, _ = study
    result = out / "study" / "runs" / "albef" / "seed0" / "result.json"
    before = result.stat().st_mtime_ns
    (out / "docs" / "results.md").unlink()
    summary = module.main([*argv, "--resume"])
    assert summary["done"] == [] and result.stat().st_mtime_ns == before
    assert (out / "docs" / "results.md").is_file()
    budget = json.loads(result.read_text())["budget"]
    assert module.finished(result.parent, budget)
    other = module.budget_of(module.parse_args([*argv, "--finetune_steps", "3"]))
    assert not module.finished(result.parent, other)  # another budget: --resume re-runs it
    (out / "docs" / "results.md").unlink()
    assert module.main([*argv, "--report_only"])["done"] == []
    assert "### Claims against ALBEF" in (out / "docs" / "results.md").read_text()


def test_vilta_distils_from_a_teacher_trained_in_the_first_half_of_its_budget(tmp_path):
    out = tmp_path / "study"
    module = load_script(ROOT / "examples" / "study.py")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(tmp_path / "hf_home"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        summary = module.main(["--budget", "micro", "--methods", "vilta", "--seeds", "0", "--tasks", "vqa",
                               "--output_dir", str(out), "--report", str(tmp_path / "results.md"),
                               "--images_dir", str(tmp_path / "images"), "--keep_models"])
    assert summary["failed"] == []
    run_dir = out / "runs" / "vilta" / "seed0"
    run = json.loads((run_dir / "result.json").read_text())
    assert run["teacher"]["wall_s"] > 0 and run["tokenizer"] is None
    # ViLTA pre-trains ITM without ITC: no ITC ranking, and its ITM ranks every test pair
    assert run["zero_shot_itc"] is None and run["zero_shot_itm_k"] == 8 and run["zero_shot"]["text_to_image_r1"] >= 0
    assert "| vilta | ITM, every pair |" in (tmp_path / "results.md").read_text()
    assert [r["step"] for r in run["pretrain"]["log"]] == [1, 2]  # micro: 4 updates, the second half distils
    assert json.loads((run_dir / "teacher" / "config.json").read_text())["alpha"] == 0  # the tiny preset's
    assert json.loads((run_dir / "pretrain" / "config.json").read_text())["alpha"] == 0.4
    teacher = vl_models.ViltaForPreTraining.from_pretrained(run_dir / "teacher")
    student = vl_models.ViltaForPreTraining.from_pretrained(run_dir / "pretrain")
    # the second stage's frozen teacher is the first stage's language encoder, untouched since
    first = teacher.vilta.text.state_dict()
    for name, value in student.teacher.text.state_dict().items():
        assert torch.equal(value, first[name]), name


def fake_study(folder: Path, grounding: dict[str, list[float]]) -> Path:
    """A study folder with constructed result.json files (only fine-tuned grounding measured)."""
    budget = {"budget": "cpu", "size": "small", "pretrain_steps": 100, "batch_size": 32, "num_test_images": 100,
              "num_train_images": 1600}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.json").write_text(json.dumps({"budget": budget, "methods": list(grounding)}))
    for method, values in grounding.items():
        for seed, value in enumerate(values):
            run = {"method": method, "seed": seed, "budget": budget,
                   "finetune": {"grounding": {"metrics": {"accuracy": value, "mean_iou": value / 2}}}}
            path = folder / "runs" / method / f"seed{seed}" / "result.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(run))
    return folder


@pytest.mark.parametrize("vlmae, verdict, reason", [
    ([0.60, 0.62, 0.61], "holds", None),
    ([0.20, 0.22, 0.21], "does not hold", "albef is ahead on fine-tuned grounding accuracy beyond the spread"),
    ([0.39, 0.43, 0.41], "does not hold", "within the seed-to-seed spread over 3 seeds"),
])
def test_claim_verdict_follows_the_numbers(tmp_path, vlmae, verdict, reason):
    folder = fake_study(tmp_path / "study", {"albef": [0.40, 0.42, 0.41], "vlmae": vlmae})
    text = report.write_report([folder], tmp_path / "results.md", tmp_path / "images").read_text()
    assert f"**VLMAE grounds better than ALBEF: {verdict}** at this scale." in text
    mean = sum(vlmae) / 3
    assert f"vlmae {mean:.3f} ± {stats(vlmae)[1]:.3f} (n=3) vs albef 0.410 ± 0.010 (n=3)" in text
    claim = text.split("VLMAE grounds better than ALBEF")[1].split("\n- **")[0]
    if reason:
        assert reason in claim
    else:
        assert "Why it may not hold" not in claim
    assert "VLMAE retrieves better than ALBEF: cannot be checked" in text  # retrieval was not measured


def test_stats_and_compare_match_a_hand_computation():
    assert stats([1.0, 2.0, 3.0]) == (2.0, 1.0, 3) and stats([None, 4.0]) == (4.0, 0.0, 1) and stats([None]) is None
    result = compare((3.0, 1.0, 3), (1.0, 0.5, 2))
    margin = 2 * math.sqrt(1.0 / 3 + 0.25 / 2)
    assert result["gain"] == 2.0 and result["margin"] == pytest.approx(margin) and result["outcome"] == "better"
    assert compare((3.0, 1.0, 3), (1.0, 0.5, 2), higher_is_better=False)["outcome"] == "worse"
    assert compare((1.1, 1.0, 3), (1.0, 0.5, 2))["outcome"] == "within spread"
    assert compare((5.0, 0.0, 1), (1.0, 0.0, 3))["outcome"] == "no spread (1 seed)"


def test_run_metrics_convergence_and_curves():
    log = [{"step": s, "time_s": 2.0 * s, "loss": 10.0 - s, "loss_mlm": v} for s, v in
           zip((1, 2, 3, 4, 5), (8.0, 5.0, 3.0, 2.1, 2.0))]
    run = {"method": "albef", "pretrain": {"log": log, "evals": []}}
    metrics = report.run_metrics(run)
    # 90% of the drop 8 -> 2 is reached at 2.6 or below: update 4 (loss 2.1), 8 s
    assert metrics["converge_steps"] == 4.0 and metrics["converge_s"] == 8.0 and metrics["final_loss"] == 5.0
    other = {"method": "albef", "pretrain": {"log": [{**r, "loss": r["loss"] + 2, "time_s": r["time_s"] + 1}
                                                     for r in log]}}
    series = curve_series([run, other], "loss")["albef"]
    assert series["step"] == [1, 2, 3, 4, 5]
    assert series["mean"] == [10.0 - s + 1 for s in range(1, 6)] and series["low"][0] == 9.0
    assert series["high"][0] == 11.0 and series["time_s"][0] == 2.5


def test_hard_negative_accuracy_matches_pairwise_scores():
    torch.manual_seed(0)
    model, processor = vl_models.build("albef", "tiny", task="retrieval")
    model.eval()
    ds = build_shapes(0, 0, 4, tasks=("captions",))["captions_test"]
    result = probes.hard_negative_accuracy(model, processor, ds, ("itc", "itm"))
    wins, count = {"itc": 0, "itm": 0}, 0
    for row in ds:  # the plain reference: one forward per (image, caption) pair
        image = load_image(row["image"])
        for negative in row["negatives"]:
            scores = []
            for text in (row["captions"][0], negative):
                inputs = processor(images=[image], text=[text], return_tensors="pt")
                with torch.no_grad():
                    out = model(**inputs, return_loss=False)
                scores.append((out.logits_per_image[0, 0].item(), out.itm_logits.softmax(-1)[0, 1].item()))
            wins["itc"] += scores[0][0] > scores[1][0]
            wins["itm"] += scores[0][1] > scores[1][1]
            count += 1
    assert result["num_comparisons"] == count
    assert result["itc"] == pytest.approx(wins["itc"] / count) and result["itm"] == pytest.approx(wins["itm"] / count)
    assert probes.hard_negative_accuracy(model, processor, ds, ())["itm"] is None  # an untrained scorer is not scored
