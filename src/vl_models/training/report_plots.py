"""Learning-curve plots of the study report: each loss term and the zero-shot retrieval metric of pre-training,
against updates and against wall-clock seconds, one line per method (mean over seeds, band = min..max).

matplotlib is optional: without it `plot_learning_curves` draws nothing and says so in its note."""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

RETRIEVAL_KEY = "eval/text_to_image_r1"


def curve_series(runs: list[dict], key: str, source: str = "log") -> dict[str, dict]:
    """{method: {"step", "time_s", "mean", "low", "high"}} of `key` over the updates every seed of the method
    logged (mean, min and max over seeds; time_s is the mean over seeds)."""
    by_method: dict[str, list[dict]] = {}
    for run in runs:
        points = {r["step"]: r for r in (run.get("pretrain") or {}).get(source, [])
                  if isinstance(r.get(key), int | float)}
        if points:
            by_method.setdefault(run["method"], []).append(points)
    out = {}
    for method, seeds in by_method.items():
        steps = sorted(set.intersection(*(set(p) for p in seeds)))
        if not steps:
            continue
        values = [[p[s][key] for p in seeds] for s in steps]
        out[method] = {"step": steps, "time_s": [sum(p[s]["time_s"] for p in seeds) / len(seeds) for s in steps],
                       "mean": [sum(v) / len(v) for v in values], "low": [min(v) for v in values],
                       "high": [max(v) for v in values]}
    return out


def curve_keys(runs: list[dict]) -> list[str]:
    """Every loss term logged by any run: "loss" first, then the objectives alphabetically."""
    keys = {k for run in runs for r in (run.get("pretrain") or {}).get("log", []) for k in r if k.startswith("loss")}
    return sorted(keys, key=lambda k: (k != "loss", k))


def _figure(plt, series: dict, title: str, ylabel: str, path: Path, colors: dict) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for method, s in series.items():
        for ax, x in zip(axes, ("step", "time_s")):
            ax.plot(s[x], s["mean"], label=method, linewidth=1.5, color=colors[method])
            ax.fill_between(s[x], s["low"], s["high"], color=colors[method], alpha=0.2, linewidth=0)
    axes[0].set_xlabel("pre-training update")
    axes[1].set_xlabel("wall-clock seconds")
    axes[0].set_ylabel(ylabel)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_learning_curves(runs: list[dict], images_dir: Path, prefix: str) -> tuple[list[tuple[str, Path]], str]:
    """Write one PNG per loss term and one for retrieval into `images_dir` -> ([(title, path)], note)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        note = "(matplotlib is not installed: no plots were drawn; install it and rebuild with `--report_only`.)"
        logger.warning("matplotlib is not installed: the report has no plots")
        return [], note
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    # one colour per method in every figure, in the order the runs come
    methods = list(dict.fromkeys(r["method"] for r in runs))
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    files = []
    for key in curve_keys(runs):
        series = curve_series(runs, key)
        path = images_dir / f"{prefix}_{key}.png"
        title = "total pre-training loss" if key == "loss" else f"pre-training {key}"
        _figure(plt, series, title, key, path, colors)
        files.append((title, path))
    # ITC retrieval during pre-training means something only where ITC is trained
    trained = [r for r in runs if "itc" in r.get("scorers", [])]
    series = curve_series(trained, RETRIEVAL_KEY, source="evals")
    note = ""
    if series:
        path = images_dir / f"{prefix}_retrieval.png"
        title = "zero-shot ITC retrieval on the validation split (text→image R@1)"
        _figure(plt, series, title, "R@1", path, colors)
        files.append((title, path))
        left_out = sorted({r["method"] for r in runs} - set(series))
        if left_out:
            note = (f"The retrieval curve leaves out {', '.join(left_out)}: no ITC objective, so their ITC features "
                    "stay random during pre-training.")
    return files, note


__all__ = ["RETRIEVAL_KEY", "curve_keys", "curve_series", "plot_learning_curves"]
