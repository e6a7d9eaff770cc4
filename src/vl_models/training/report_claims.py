"""Each paper's claim, checked against ALBEF from the study's numbers.

A claim names a method, the metrics it is about and what "better" means. `compare` decides each metric from
the means and the spread over seeds (a difference counts when it exceeds twice its standard error), and
`check_claim` writes the verdict and its reasons from those decisions: nothing is pre-written but the claims.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BASELINE = "albef"
MARGIN_SE = 2.0  # a difference counts when it exceeds this many standard errors of the difference

LABELS = {
    "zs_t2i_mean": "zero-shot text→image recall, ITM re-ranking (mean of R@1/5/10)",
    "zsc_t2i_mean": "zero-shot text→image recall, ITC alone (mean of R@1/5/10)",
    "hn_itm": "hard-negative accuracy of ITM",
    "hn_itc": "hard-negative accuracy of ITC",
    "vqa": "fine-tuned VQA accuracy",
    "grounding": "fine-tuned grounding accuracy",
    "nlvr2": "fine-tuned NLVR2 accuracy",
    "step_time_s": "seconds per pre-training update",
    "converge_steps": "updates to 90% of the MLM-loss drop",
}


@dataclass(frozen=True)
class Claim:
    method: str
    text: str
    metrics: tuple[str, ...]
    higher_is_better: bool = True
    kind: str = "better"  # "better": ahead on every metric; "competitive": behind on none


CLAIMS = (
    Claim("vlmae", "VLMAE grounds better than ALBEF", ("grounding",)),
    Claim("vlmae", "VLMAE retrieves better than ALBEF", ("zs_t2i_mean",)),
    Claim("vlmae", "VLMAE pre-trains with faster steps than ALBEF", ("step_time_s",), higher_is_better=False),
    Claim("vq_mim", "VQ-MIM answers VQA better than ALBEF (codebook MIM targets)", ("vqa",)),
    Claim("vq_mim", "VQ-MIM retrieves better than ALBEF", ("zs_t2i_mean",)),
    Claim("vilta", "ViLTA converges faster than ALBEF", ("converge_steps",), higher_is_better=False),
    Claim("vilta", "ViLTA's ITM tells hard negatives apart better than ALBEF's", ("hn_itm",)),
    Claim("vilta", "ViLTA retrieves better than ALBEF", ("zs_t2i_mean",)),
    Claim("vl_beit", "VL-BEiT (one shared backbone) is competitive with ALBEF on every task",
          ("vqa", "grounding", "nlvr2", "zs_t2i_mean"), kind="competitive"),
)


def stats(values) -> tuple[float, float, int] | None:
    """(mean, sample std, n) of the values that are not None; None when there are none."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std, len(values)


def compare(method: tuple, baseline: tuple, higher_is_better: bool = True) -> dict:
    """One metric, method vs baseline, each (mean, std, n) -> {"gain" (positive = the method is better), "margin"
    (MARGIN_SE standard errors of the difference; None with one seed), "outcome": "better" | "worse" | "within
    spread" | "no spread (1 seed)"}."""
    (m_mean, m_std, m_n), (b_mean, b_std, b_n) = method, baseline
    gain = (m_mean - b_mean) if higher_is_better else (b_mean - m_mean)
    margin = MARGIN_SE * math.sqrt(m_std ** 2 / m_n + b_std ** 2 / b_n)
    if min(m_n, b_n) < 2:  # one seed: no spread to tell a difference from noise
        return {"gain": gain, "margin": None, "outcome": "no spread (1 seed)"}
    outcome = "better" if gain > margin else "worse" if gain < -margin else "within spread"
    return {"gain": gain, "margin": margin, "outcome": outcome}


def _num(value: float, metric: str) -> str:
    return f"{value:.3f}" if metric != "converge_steps" else f"{value:.0f}"


def _stat(value: tuple, metric: str) -> str:
    mean, std, n = value
    return _num(mean, metric) + (f" ± {_num(std, metric)}" if n > 1 else "") + f" (n={n})"


def check_claim(claim: Claim, agg: dict, chance: dict, budget: dict, runs: list[dict]) -> str:
    """Markdown for one claim: the verdict ("holds" / "does not hold" / "cannot be checked"), one line per
    metric with the numbers, and the reasons the numbers give when it does not hold."""
    mine, base = agg[claim.method], agg[BASELINE]
    lines, reasons, outcomes = [], [], []
    for metric in claim.metrics:
        label = LABELS.get(metric, metric)
        if mine.get(metric) is None or base.get(metric) is None:
            who = claim.method if mine.get(metric) is None else BASELINE
            lines.append(f"  - {label}: not measured for {who}"
                         + (" (it pre-trains neither ITC nor ITM)" if metric.startswith(("zs_", "hn_")) else ""))
            continue
        result = compare(mine[metric], base[metric], claim.higher_is_better)
        outcomes.append(result["outcome"])
        sign, word = ("+", "better") if result["gain"] >= 0 else ("−", "worse")
        margin = f" (margin {_num(result['margin'], metric)})" if result["margin"] is not None else ""
        lines.append(f"  - {label}: {claim.method} {_stat(mine[metric], metric)} vs {BASELINE} "
                     f"{_stat(base[metric], metric)}; {claim.method} {sign}{_num(abs(result['gain']), metric)} "
                     f"{word}{margin} → **{result['outcome']}**")
        reasons += _reasons(metric, label, result, mine[metric], base[metric], chance.get(metric))
    if not outcomes:
        verdict = "cannot be checked"
    elif claim.kind == "competitive":
        verdict = "holds" if "worse" not in outcomes else "does not hold"
    else:
        verdict = "holds" if all(o == "better" for o in outcomes) else "does not hold"
    if verdict == "holds" and len(outcomes) < len(claim.metrics):
        verdict = "holds on what was measured"
    out = [f"- **{claim.text}: {verdict}** at this scale.", *lines]
    if verdict == "does not hold" and reasons:
        out.append("  - Why it may not hold here: " + " ".join(dict.fromkeys(reasons)) + _scale(budget, runs))
    return "\n".join(out)


def _reasons(metric, label, result, mine, base, chance) -> list[str]:
    out = []
    if result["outcome"] == "better":
        return out
    margin = result["margin"] or 0.0
    if chance is not None and max(mine[0], base[0]) <= chance + max(margin, 0.02):
        out.append(f"Both are at chance level for {label} ({chance:.3f}): at this budget neither model has learned it, "
                   "so the comparison cannot separate them.")
    if result["outcome"] == "within spread":
        out.append(f"The {label} difference is within the seed-to-seed spread over {min(mine[2], base[2])} seeds: "
                   "more seeds or a longer run would be needed to separate them.")
    elif result["margin"] is None:
        out.append(f"With one seed there is no spread to tell the {label} difference from noise.")
    elif result["outcome"] == "worse":
        out.append(f"{BASELINE} is ahead on {label} beyond the spread.")
    if metric == "step_time_s":
        out.append("Step times were measured on the study's machine while it ran; other work on it adds noise.")
    return out


def _scale(budget: dict, runs: list[dict]) -> str:
    loads = [r["loadavg"][0] for r in runs if r.get("loadavg")]
    cores = next((r["machine"].get("cpu_count") for r in runs if r.get("machine")), None)
    busy = (f" The machine's load average was up to {max(loads):.1f} on {cores} cores during the runs."
            if loads and cores and max(loads) > cores else "")
    return (f" Scale: `{budget.get('size')}` models, {budget.get('pretrain_steps')} pre-training updates of batch "
            f"{budget.get('batch_size')} on {budget.get('num_train_images')} synthetic Shapes images; the papers "
            "pre-train base-size models on millions of web image-text pairs for 100k+ updates." + busy)


__all__ = ["BASELINE", "CLAIMS", "LABELS", "Claim", "check_claim", "compare", "stats"]
