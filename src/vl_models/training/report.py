"""The study report: per-run results (examples/study.py) -> mean ± std over seeds, each paper's claim checked
against ALBEF from those numbers, and docs/results.md with its plots. Nothing here states a conclusion that
the numbers do not produce: every verdict and every reason comes from `compare` and the run records."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .report_claims import BASELINE, CLAIMS, LABELS, check_claim, compare, stats
from .report_plots import plot_learning_curves

ZS_KEYS = ("text_to_image_r1", "text_to_image_r5", "text_to_image_r10", "image_to_text_r1", "image_to_text_r5",
           "image_to_text_r10")
KINDS = ("color", "shape", "size", "relation")


@dataclass
class Section:
    """One study folder: its study.json, the finished runs, the failed ones (method, seed, last error line)."""

    folder: Path
    study: dict
    runs: list[dict]
    failed: list[tuple[str, str, str]]


def load_section(folder: Path) -> Section:
    folder = Path(folder)
    study_file = folder / "study.json"
    study = json.loads(study_file.read_text()) if study_file.is_file() else {}
    runs, failed = [], []
    for path in sorted(folder.glob("runs/*/seed*/result.json")):
        runs.append(json.loads(path.read_text()))
    for path in sorted(folder.glob("runs/*/seed*/error.txt")):
        if not (path.parent / "result.json").is_file():
            lines = path.read_text().strip().splitlines() or [""]
            failed.append((path.parent.parent.name, path.parent.name, lines[-1]))
    budget = study.get("budget")
    if budget is not None:  # runs of another budget (an older study in the same folder) do not mix in
        runs = [r for r in runs if r.get("budget") == budget]
    return Section(folder, study, runs, failed)


def _converge(log: list[dict], key: str, fraction: float = 0.9) -> tuple[float | None, float | None]:
    """(update, seconds) at which `key` first covers `fraction` of its own drop from the first to the last log:
    how early a curve flattens, comparable across methods whose losses differ in definition and level."""
    points = [(r["step"], r["time_s"], r[key]) for r in log if isinstance(r.get(key), int | float)]
    if len(points) < 2 or points[0][2] <= points[-1][2]:
        return None, None
    target = points[0][2] - fraction * (points[0][2] - points[-1][2])
    step, seconds, _ = next(p for p in points if p[2] <= target)
    return float(step), float(seconds)


def run_metrics(run: dict) -> dict[str, float | None]:
    """The flat numbers of one run that the tables and claims aggregate (None: not measured)."""
    out: dict[str, float | None] = {}
    for prefix, key in (("zs", "zero_shot"), ("zsc", "zero_shot_itc")):  # ITM re-ranking the top k; ITC alone
        zs = run.get(key) or {}
        out.update({f"{prefix}_{k}": zs.get(k) for k in ZS_KEYS})
        t2i = [zs.get(f"text_to_image_r{k}") for k in (1, 5, 10)]
        out[f"{prefix}_t2i_mean"] = sum(t2i) / 3 if None not in t2i else None
    out["zs_itm_k"] = run.get("zero_shot_itm_k")
    hn = run.get("hard_negatives") or {}
    out["hn_itc"], out["hn_itm"] = hn.get("itc"), hn.get("itm")
    best = "itm" if hn.get("itm") is not None else "itc"
    for kind in KINDS:
        out[f"hn_{kind}"] = (hn.get(f"{best}_by_kind") or {}).get(kind)
    ft = {task: value["metrics"] for task, value in (run.get("finetune") or {}).items()}
    out["vqa"], out["vqa_majority"] = ft.get("vqa", {}).get("accuracy"), ft.get("vqa", {}).get("majority_baseline")
    out["grounding"], out["grounding_iou"] = ft.get("grounding", {}).get("accuracy"), ft.get("grounding", {}).get(
        "mean_iou")
    out["nlvr2"], out["nlvr2_majority"] = ft.get("nlvr2", {}).get("accuracy"), ft.get("nlvr2", {}).get(
        "majority_baseline")
    out["retrieval_ft"] = ft.get("retrieval", {}).get("text_to_image_r1")
    pre = run.get("pretrain") or {}
    log = pre.get("log") or []
    out["step_time_s"], out["samples_per_s"] = pre.get("step_time_s"), pre.get("samples_per_s")
    out["pretrain_wall_s"], out["pretrain_cpu_s"] = pre.get("wall_s"), pre.get("cpu_s")
    out["final_loss"] = log[-1].get("loss") if log else None
    key = "loss_mlm" if any("loss_mlm" in r for r in log) else "loss"
    out["converge_steps"], out["converge_s"] = _converge(log, key)
    photos = run.get("photos") or {}
    for scorer in ("itc", "itm"):
        out[f"photo_{scorer}"] = (photos.get(scorer) or {}).get("top1")
    params = run.get("num_parameters")
    out["params_m"] = params / 1e6 if params else None
    return {k: (float(v) if isinstance(v, int | float) and math.isfinite(v) else None) for k, v in out.items()}


def aggregate(runs: list[dict]) -> dict[str, dict[str, tuple[float, float, int] | None]]:
    """{method: {metric: (mean, std, n) or None}} over the seeds of each method, in the order runs come."""
    per_method: dict[str, list[dict]] = {}
    for run in runs:
        per_method.setdefault(run["method"], []).append(run_metrics(run))
    return {m: {k: stats([r[k] for r in rows]) for k in rows[0]} for m, rows in per_method.items()}


def fmt(value, digits: int = 3) -> str:
    """(mean, std, n) -> "0.412 ± 0.021"; one seed -> "0.412"; None -> "—"."""
    if value is None:
        return "—"
    mean, std, n = value
    return f"{mean:.{digits}f}" if n < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def render_section(section: Section, report_dir: Path, images_dir: Path, title: str) -> str:
    study, runs = section.study, section.runs
    budget, machine = study.get("budget", {}), study.get("machine", {})
    agg = aggregate(runs)
    order = study.get("methods") or []  # the registry's order (ALBEF first), as the study ran them
    methods = sorted(agg, key=lambda m: (order.index(m) if m in order else len(order), m))
    seeds = {m: sorted(r["seed"] for r in runs if r["method"] == m) for m in methods}
    cpu = sum(r.get("cpu_s", 0.0) for r in runs)
    wall = sum(r.get("wall_s", 0.0) for r in runs)
    where = machine.get("gpu") or f"{machine.get('processor', '?')} CPU, {machine.get('cpu_count', '?')} cores"
    out = [f"## {title}", ""]
    if machine.get("device") == "cuda":
        out += [f"**Every figure in this section comes from a GPU run ({where}).**", ""]
    out += [f"- Budget `{budget.get('budget', '?')}`: size `{budget.get('size')}`, {budget.get('pretrain_steps')} "
            f"pre-training updates of batch {budget.get('batch_size')} on {budget.get('num_train_images')} Shapes "
            f"images, {budget.get('finetune_steps')} fine-tuning updates per task, {budget.get('num_test_images')} "
            f"test images (Shapes seed {budget.get('eval_seed')}, the same for every run).",
            "- Methods and seeds: " + ", ".join(f"{m} ({len(s)}: {' '.join(map(str, s))})"
                                                 for m, s in seeds.items()) + ".",
            f"- Machine: {where}; torch {machine.get('torch', '?')} with {machine.get('torch_threads', '?')} threads; "
            f"{machine.get('platform', '?')}.",
            f"- Time: {cpu / 60:.1f} CPU-minutes, {wall / 60:.1f} wall-minutes over {len(runs)} runs (CPU time counts "
            f"every thread of the process).", ""]
    if section.failed:
        out += ["Failed runs (not in the tables): " + "; ".join(f"{m} {s}: `{e}`" for m, s, e in section.failed),
                ""]
    if not runs:
        return "\n".join([*out, "No finished runs.", ""])
    out += _summary(agg, methods)
    out += _tables(agg, methods, study, budget)
    out += ["### Claims against ALBEF", ""]
    if BASELINE not in agg:
        out += [f"No {BASELINE} runs: the claims compare against it.", ""]
    else:
        recall = 16 / (3 * budget["num_test_images"]) if budget.get("num_test_images") else None
        chance = {"zs_t2i_mean": recall, "zsc_t2i_mean": recall,
                  "hn_itm": 0.5, "hn_itc": 0.5,
                  "grounding": (study.get("baselines") or {}).get("grounding_mean_box", {}).get("accuracy")}
        for name in ("vqa", "nlvr2"):
            chance[name] = (agg[BASELINE].get(f"{name}_majority") or (None,))[0]
        for claim in CLAIMS:
            if claim.method in agg:
                out += [check_claim(claim, agg, chance, budget, runs), ""]
    out += _plots(section, report_dir, images_dir, section.folder.name)  # the folder: unique per section
    out += _photos(agg, methods, runs)
    return "\n".join(out)


SUMMARY = (("zs_t2i_mean", True), ("zsc_t2i_mean", True), ("hn_itm", True), ("hn_itc", True), ("vqa", True), ("grounding", True),
           ("nlvr2", True), ("step_time_s", False), ("converge_steps", False))


def _summary(agg, methods) -> list[str]:
    """Best method per measure, and whether it is ahead of the runner-up beyond the seed spread."""
    rows = []
    for metric, higher in SUMMARY:
        have = sorted((m for m in methods if agg[m].get(metric)), key=lambda m: agg[m][metric][0], reverse=higher)
        if not have:
            continue
        best = have[0]
        digits = 0 if metric == "converge_steps" else 3
        if len(have) < 2:
            rows.append([LABELS[metric], best, fmt(agg[best][metric], digits), "—", "—", "—"])
            continue
        second = have[1]
        outcome = compare(agg[best][metric], agg[second][metric], higher)["outcome"]
        rows.append([LABELS[metric], best, fmt(agg[best][metric], digits), second, fmt(agg[second][metric], digits),
                     "yes" if outcome == "better" else "no" if outcome == "within spread" else outcome])
    return ["### Summary: the best method per measure", "",
            table(["measure", "best", "value", "runner-up", "value", "ahead beyond the seed spread?"], rows), ""]


def _itm_ranker(k, num_test) -> str:
    if k is None:  # a study from before zero-shot was reported both ways
        return "ITM"
    return "ITM, every pair" if k == num_test else f"ITM, top {k:.0f}"


def _tables(agg, methods, study, budget) -> list[str]:
    n = budget.get("num_test_images")
    k = budget.get("itm_k")
    itm_k = {m: (agg[m].get("zs_itm_k") or (k,))[0] for m in methods}
    zs_rows = [[m, ranker, *(fmt(agg[m][f"{prefix}_{key}"]) for key in ZS_KEYS)] for m in methods
               for prefix, ranker in (("zsc", "ITC"), ("zs", _itm_ranker(itm_k[m], n)))]
    out = ["### Zero-shot retrieval (Shapes test split)", "",
           f"ITC ranks every pair by itself, and ITM re-ranks each query's top {k} by ITC (ALBEF's inference); a "
           "method that pre-trains ITM without ITC ranks every pair by ITM. A method that pre-trains neither "
           "(—) has no zero-shot retrieval.", "",
           table(["method", "ranked by", "T→I R@1", "T→I R@5", "T→I R@10", "I→T R@1", "I→T R@5", "I→T R@10"],
                 zs_rows),
           "", f"Chance: T→I R@k = k/{n}.", "",
           "### One-attribute hard negatives", "",
           "Does the model score an image's caption above the same caption with one word changed (colour, shape, "
           "size or relation)? Ties count as errors; chance is 0.5. Per-kind columns use ITM when the method has it, "
           "else ITC.", "",
           table(["method", "ITC", "ITM", *KINDS],
                 [[m, fmt(agg[m]["hn_itc"]), fmt(agg[m]["hn_itm"]), *(fmt(agg[m][f"hn_{k}"]) for k in KINDS)]
                  for m in methods]), "",
           "### Fine-tuned (Shapes test split)", ""]
    base = agg[methods[0]]
    box = (study.get("baselines") or {}).get("grounding_mean_box", {})
    rows = [[m, fmt(agg[m]["vqa"]), fmt(agg[m]["grounding"]), fmt(agg[m]["grounding_iou"]), fmt(agg[m]["nlvr2"]),
             fmt(agg[m]["retrieval_ft"])] for m in methods]
    rows.append(["*chance*", fmt(base["vqa_majority"]), f"{box['accuracy']:.3f}" if box else "—",
                 f"{box['mean_iou']:.3f}" if box else "—", fmt(base["nlvr2_majority"]), f"{1 / n:.3f}" if n else "—"])
    out += [table(["method", "VQA accuracy", "grounding acc (IoU≥0.5)", "grounding mean IoU", "NLVR2 accuracy",
                   "retrieval T→I R@1"], rows), "",
            "Chance: VQA and NLVR2 the majority answer, grounding the mean training box, retrieval 1/N. — : task not "
            "run.", "", "### Cost and convergence", ""]
    rows = [[m, fmt(agg[m]["params_m"], 2), fmt(agg[m]["step_time_s"], 3), fmt(agg[m]["pretrain_wall_s"], 0),
             fmt(agg[m]["pretrain_cpu_s"], 0), fmt(agg[m]["final_loss"]), fmt(agg[m]["converge_steps"], 0),
             fmt(agg[m]["converge_s"], 0)] for m in methods]
    out += [table(["method", "trainable parameters (M)", "s / update", "pre-train wall s", "pre-train CPU s", "final loss",
                   "updates to 90% of MLM drop", "seconds to 90%"], rows), "",
            "s / update: batch / samples per second, the median over the logging windows (evaluation excluded). "
            "Convergence: the update at which a method's own MLM loss first covers 90% of its drop from the first "
            "to the last log (how early its curve flattens; losses differ in definition, so levels are not "
            "compared).", ""]
    return out


def _plots(section: Section, report_dir: Path, images_dir: Path, prefix: str) -> list[str]:
    order = section.study.get("methods") or []
    runs = sorted(section.runs, key=lambda r: (order.index(r["method"]) if r["method"] in order else len(order),
                                               r["method"], r["seed"]))
    files, note = plot_learning_curves(runs, images_dir, prefix)
    out = ["### Learning curves", ""]
    if note:
        out += [note, ""]
    for title, path in files:
        rel = Path(_relpath(path, report_dir))
        out += [f"**{title}**", "", f"![{title}]({rel.as_posix()})", ""]
    return out


def _relpath(path: Path, start: Path) -> str:
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())


def _photos(agg, methods, runs) -> list[str]:
    first = {}
    for run in runs:
        first.setdefault(run["method"], run)
    photos = next((r["photos"]["photos"] for r in runs if r.get("photos")), [])
    if not photos:
        return []
    chance = 1 / len(photos)
    out = ["### Real photos (sanity check, not a benchmark)", "",
           f"scikit-image's sample photos ({', '.join(photos)}), one caption written for each; each model ranks all "
           f"{len(photos)} captions for each photo. Top-1: the photo's own caption ranked first (chance "
           f"{chance:.3f}). The models saw only synthetic shapes, so near-chance numbers are expected: this checks "
           "that the pipelines run end to end on real images of any size, not what the methods can do.", "",
           table(["method", "ITC top-1", "ITM top-1", *(f"{p}: first caption" for p in photos)],
                 [[m, fmt(agg[m]["photo_itc"]), fmt(agg[m]["photo_itm"]), *_top_captions(first[m], len(photos))]
                  for m in methods]), "",
           "The caption columns are the first seed's, by ITM when the method pre-trained it, else ITC.", ""]
    return out


def _top_captions(run: dict, count: int) -> list[str]:
    photos = run.get("photos") or {}
    scorer = photos.get("itm") or photos.get("itc")
    return scorer["top_caption"] if scorer else ["—"] * count


def write_report(study_dirs: list[Path], path: Path, images_dir: Path) -> Path:
    """Render every study folder (the first is the main one; others, e.g. a GPU run, follow) into `path`."""
    start = time.process_time()
    path, images_dir = Path(path), Path(images_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    body = []
    for i, folder in enumerate(study_dirs):
        section = load_section(folder)
        kind = (section.study.get("budget") or {}).get("budget", Path(folder).name)
        title = f"{'Main study' if i == 0 else 'Additional study'}: budget `{kind}` ({Path(folder).as_posix()})"
        body.append(render_section(section, path.parent, images_dir, title))
    head = ["# Results: which method should I pre-train?", "",
            "Generated by `make results` (`examples/study.py`, docs/study.md) from the runs' `result.json` files; "
            f"do not edit by hand. Written {time.strftime('%Y-%m-%d %H:%M %Z')}.", "",
            "Every number is a mean ± standard deviation over seeds (one seed: the value alone). Claims are checked "
            f"against {BASELINE} with the same budget; a difference counts only when it exceeds twice its standard "
            "error over seeds.", ""]
    text = "\n".join(head + body)
    text += f"\n---\nReport built in {time.process_time() - start:.1f} CPU-seconds.\n"
    path.write_text(text)
    return path


__all__ = ["KINDS", "Section", "aggregate", "fmt", "load_section", "render_section", "run_metrics", "table",
           "write_report"]
