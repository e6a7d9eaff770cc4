"""The quality study: which method should I pre-train? Measured on the Shapes benchmark.

Pre-trains every registered method with the same budget (size, updates, batch, data) and several seeds, then
per run: zero-shot retrieval (ITC ranks, ITM re-ranks), the one-attribute hard-negative captions, a real-photo
sanity check (scikit-image's sample photos), fine-tuning + test evaluation of VQA, grounding and NLVR2. Each run
writes <output_dir>/runs/<method>/seed<k>/result.json; the report (docs/results.md: tables over seeds, each
paper's claim checked against ALBEF, learning curves as PNG) is rebuilt from those files.

    python examples/study.py                          # the CPU budget: 5 methods x 2 seeds
    python examples/study.py --resume                 # continue: finished runs are skipped
    python examples/study.py --report_only            # rebuild docs/results.md from finished runs
    python examples/study.py --report_only --include outputs/study-gpu   # add a GPU machine's study

Everything runs in this one process through examples/pretrain.py, finetune.py and evaluate.py (docs/study.md).
"""

from __future__ import annotations

import os

# see examples/demo.py: OpenMP threads must not spin on a busy machine; set before torch loads OpenMP
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import vl_models  # noqa: E402
from vl_models.data import build_shapes  # noqa: E402
from vl_models.training import probes, read_log, report  # noqa: E402
from vl_models.training.runner import Timer, load_script, mean_box_baseline  # noqa: E402

HERE = Path(__file__).resolve().parent
FINETUNE_TASKS = ("vqa", "grounding", "nlvr2", "retrieval")
# one budget per machine kind; "micro" is for tests
BUDGETS = {
    "micro": {"size": "tiny", "pretrain_steps": 4, "finetune_steps": 2, "batch_size": 4, "num_train_images": 16,
              "num_val_images": 8, "num_test_images": 8, "seeds": 1, "eval_steps": 2, "logging_steps": 1,
              "tokenizer_steps": 2},
    # cpu: long enough for every method to leave chance (tests/test_learning.py); two seeds, about 60 CPU-minutes
    "cpu": {"size": "small", "pretrain_steps": 400, "finetune_steps": 150, "batch_size": 32, "num_train_images": 1600,
            "num_val_images": 64, "num_test_images": 100, "seeds": 2, "eval_steps": 100, "logging_steps": 10,
            "tokenizer_steps": 100},
    "gpu": {"size": "small", "pretrain_steps": 3000, "finetune_steps": 1000, "batch_size": 64,
            "num_train_images": 20000, "num_val_images": 300, "num_test_images": 500, "seeds": 3, "eval_steps": 250,
            "logging_steps": 25, "tokenizer_steps": 750},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="gpu" if torch.cuda.is_available() else "cpu", choices=list(BUDGETS),
                   help="preset of every size/step/data flag below (a flag given explicitly wins)")
    p.add_argument("--methods", nargs="+", default=None,
                   help=f"methods to compare (default: every registered one, {vl_models.list_methods()})")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="seeds (default: the budget's count: 0 1 2)")
    p.add_argument("--size", default=None, choices=vl_models.SIZES, help="size preset of every model")
    p.add_argument("--pretrain_steps", type=int, default=None, help="pre-training updates of every method")
    p.add_argument("--finetune_steps", type=int, default=None, help="fine-tuning updates of every task")
    p.add_argument("--tasks", nargs="+", default=["vqa", "grounding", "nlvr2"], choices=FINETUNE_TASKS,
                   help="downstream tasks to fine-tune and test")
    p.add_argument("--batch_size", type=int, default=None, help="batch size of pre-training and fine-tuning")
    p.add_argument("--num_train_images", type=int, default=None, help="Shapes training images (per task)")
    p.add_argument("--num_val_images", type=int, default=None, help="Shapes validation images (learning curves)")
    p.add_argument("--num_test_images", type=int, default=None, help="Shapes test images of every evaluation")
    p.add_argument("--eval_steps", type=int, default=None, help="zero-shot retrieval every N pre-training updates")
    p.add_argument("--logging_steps", type=int, default=None, help="log the losses every N updates")
    p.add_argument("--tokenizer_steps", type=int, default=None,
                   help="updates of a visual tokenizer trained first for methods that take one (VL-BEiT); 0: none")
    p.add_argument("--finetune_learning_rate", type=float, default=3e-4,
                   help="fine-tuning learning rate (the task head's is 10x: finetune.py --head_learning_rate)")
    p.add_argument("--itm_k", type=int, default=16,
                   help="retrieval: ITM re-ranks each query's top k by ITC (ALBEF's inference: 16); zero-shot "
                        "retrieval is also reported by ITC alone")
    p.add_argument("--eval_seed", type=int, default=0, help="seed of the Shapes test split, fixed across seeds")
    p.add_argument("--output_dir", default=None, help="runs and study.json go here (default: outputs/study-BUDGET)")
    p.add_argument("--report", default="docs/results.md", help="the Markdown report to (re)write")
    p.add_argument("--images_dir", default="docs/images/results", help="where the report's PNG plots go")
    p.add_argument("--include", nargs="*", default=[],
                   help="other finished study folders to add to the report, e.g. a GPU run (each its own section)")
    p.add_argument("--resume", action="store_true", help="skip runs whose result.json exists with this budget")
    p.add_argument("--report_only", action="store_true", help="only rebuild the report from finished runs")
    p.add_argument("--keep_models", action="store_true", help="keep the model weights of every run (large)")
    args = p.parse_args(argv)
    for key, value in BUDGETS[args.budget].items():
        if key != "seeds" and getattr(args, key) is None:
            setattr(args, key, value)
    args.seeds = args.seeds if args.seeds is not None else list(range(BUDGETS[args.budget]["seeds"]))
    args.methods = args.methods or vl_models.list_methods()
    unknown = [m for m in args.methods if m not in vl_models.list_methods()]
    if unknown:
        p.error(f"--methods: unknown {unknown}; registered: {vl_models.list_methods()}")
    args.output_dir = Path(args.output_dir or f"outputs/study-{args.budget}")
    return args


def budget_of(args) -> dict:
    """What makes two runs comparable: a finished run counts for --resume only with the same budget."""
    keys = ("budget", "size", "pretrain_steps", "finetune_steps", "tasks", "batch_size", "num_train_images",
            "num_val_images", "num_test_images", "eval_steps", "logging_steps", "tokenizer_steps",
            "finetune_learning_rate", "itm_k", "eval_seed")
    return {k: getattr(args, k) for k in keys}


def finished(run_dir: Path, budget: dict) -> bool:
    """Has the run in `run_dir` finished with this budget (its result.json is written last, atomically)?"""
    path = Path(run_dir) / "result.json"
    return path.is_file() and json.loads(path.read_text()).get("budget") == budget


def machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": "cuda" if gpu else "cpu", "gpu": gpu}


class Study:
    """One study folder: the scripts, the shared evaluation data, and one `run(method, seed)` per run."""

    def __init__(self, args):
        self.args, self.budget = args, budget_of(args)
        self.pretrain, self.finetune, self.evaluate = (load_script(HERE / f"{n}.py")
                                                       for n in ("pretrain", "finetune", "evaluate"))
        self.hard_negatives = build_shapes(0, 0, args.num_test_images, seed=args.eval_seed,
                                           tasks=("captions",))["captions_test"]
        self.photos = probes.sample_photos()

    def run_dir(self, method: str, seed: int) -> Path:
        return self.args.output_dir / "runs" / method / f"seed{seed}"

    def finished(self, method: str, seed: int) -> bool:
        return finished(self.run_dir(method, seed), self.budget)

    def run(self, method: str, seed: int) -> dict:
        a, out = self.args, self.run_dir(method, seed)
        if out.exists():  # a run that failed or was killed: start clean (the log would append to the old one)
            shutil.rmtree(out)
        spec = vl_models.get_method(method)
        timer = Timer(f"{method} seed {seed}")
        wall, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
        data = ["--num_train_images", str(a.num_train_images), "--num_val_images", str(a.num_val_images)]
        common = ["--seed", str(seed), "--per_device_train_batch_size", str(a.batch_size), "--checkpointing_steps",
                  "0", "--logging_steps", str(a.logging_steps), *data]
        pre_dir, extra = out / "pretrain", []
        tokenizer_method = getattr(self.pretrain, "TOKENIZER_METHOD", None)
        if a.tokenizer_steps and tokenizer_method and hasattr(spec.pretraining_class, "set_visual_tokenizer"):
            timer.run("tokenizer", self.pretrain.main, [
                "--method", tokenizer_method, "--size", a.size, "--output_dir", str(out / "tokenizer"),
                "--max_train_steps", str(a.tokenizer_steps), "--eval_steps", "0", *common])
            extra = ["--visual_tokenizer", str(out / "tokenizer")]
        steps = a.pretrain_steps
        if hasattr(spec.pretraining_class, "reset_teacher"):
            # ViLTA distils from a frozen teacher that must know the captions' language (docs/methods/vilta.md):
            # the first half of its budget trains one (distillation off), the second half distils from it
            first, steps = steps // 2, steps - steps // 2
            timer.run("teacher", self.pretrain.main, [
                "--method", method, "--size", a.size, "--output_dir", str(out / "teacher"), "--max_train_steps",
                str(first), "--num_warmup_steps", str(max(1, first // 10)), "--eval_steps", "0", *common])
            alpha = vl_models.get_config(method, "base").alpha  # the paper's weight (the from-scratch preset's is 0)
            extra = ["--model_name_or_path", str(out / "teacher"), "--reset_teacher", "--config_overrides",
                     f"alpha={alpha}"]
        timer.run("pretrain", self.pretrain.main, [
            "--method", method, "--size", a.size, "--output_dir", str(pre_dir), "--max_train_steps",
            str(steps), "--num_warmup_steps", str(max(1, steps // 10)), "--eval_steps",
            str(a.eval_steps), "--eval_max_images", str(a.num_val_images), *common, *extra])
        model, processor, scorers = probes.load_probe_model(pre_dir)
        result = {"method": method, "seed": seed, "budget": self.budget, "machine": machine(),
                  "objectives": list(spec.objectives), "scorers": list(scorers), "paper": spec.paper,
                  "num_parameters": json.loads((pre_dir / "logs" / "config.json").read_text()).get("num_parameters"),
                  "hard_negatives": timer.run("hard negatives", probes.hard_negative_accuracy, model, processor,
                                              self.hard_negatives, scorers),
                  "photos": timer.run("photos", probes.photo_ranking, model, processor, scorers, self.photos,
                                      probes.PHOTO_CAPTIONS)}
        del model
        test = ["--split", "test", "--num_test_images", str(a.num_test_images), "--seed", str(a.eval_seed)]
        # zero-shot both ways: ITC ranks alone, and ITM re-ranks each query's top k (ALBEF's inference); without
        # ITC (ViLTA) ITM ranks every pair
        result["zero_shot_itm_k"] = a.itm_k if "itc" in scorers else a.num_test_images
        for key, k, needs in (("zero_shot_itc", 0, "itc"), ("zero_shot", result["zero_shot_itm_k"], "itm")):
            result[key] = timer.run(key.replace("_", "-"), self.evaluate.main, [
                "--model_name_or_path", str(pre_dir), "--task", "retrieval", "--itm_k", str(k),
                "--output_file", str(out / f"{key}.json"), *test])[0]["metrics"] if needs in scorers else None
        result["finetune"] = {}
        for task in a.tasks:
            folder = out / f"finetune-{task}"
            timer.run(f"finetune {task}", self.finetune.main, [
                "--task", task, "--model_name_or_path", str(pre_dir), "--output_dir", str(folder),
                "--max_train_steps", str(a.finetune_steps), "--num_warmup_steps", str(max(1, a.finetune_steps // 10)),
                "--eval_steps", "0", "--eval_max_images", str(a.num_val_images), "--learning_rate",
                str(a.finetune_learning_rate), "--itm_k", str(a.itm_k), *common])
            record = timer.run(f"test {task}", self.evaluate.main, [
                "--model_name_or_path", str(folder), "--itm_k", str(a.itm_k),
                "--output_file", str(folder / "test_results.json"), *test])[0]
            result["finetune"][task] = {"metrics": record["metrics"], **stage(timer, f"finetune {task}")}
        result["pretrain"] = {**pretrain_log(pre_dir / "logs" / "log.jsonl", a.batch_size),
                              **stage(timer, "pretrain", "teacher")}  # a teacher stage is pre-training too
        result["tokenizer"] = stage(timer, "tokenizer") if "--visual_tokenizer" in extra else None
        result["teacher"] = stage(timer, "teacher") if "--reset_teacher" in extra else None
        result.update(stages=timer.rows, wall_s=time.perf_counter() - wall, cpu_s=time.process_time() - cpu,
                      loadavg=[load, os.getloadavg()[0]])
        if not a.keep_models:
            for path in [*out.glob("**/*.safetensors"), *out.glob("**/checkpoints")]:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        write_json(out / "result.json", result)
        return result


def stage(timer: Timer, *names: str) -> dict:
    totals = [timer.total(name) for name in names]
    return {"wall_s": sum(t[0] for t in totals), "cpu_s": sum(t[1] for t in totals)}


def pretrain_log(path: Path, batch_size: int) -> dict:
    """The loss terms per logged update (`time_s` from the first record) and the evaluations; the median step
    time (batch / samples per second, which the script measures without the evaluations)."""
    records = read_log(path)
    start = records[0]["time"] if records else 0.0
    train, evals = [], []
    for r in records:
        keep = {k: v for k, v in r.items() if k.startswith(("loss", "eval/")) or k in ("step", "samples_per_s")}
        keep["time_s"] = r["time"] - start
        if any(k.startswith("loss") for k in keep):
            train.append(keep)
        elif any(k.startswith("eval/") for k in keep):
            evals.append(keep)
    rates = sorted(r["samples_per_s"] for r in train if isinstance(r.get("samples_per_s"), float))
    median = rates[len(rates) // 2] if rates else None
    return {"log": train, "evals": evals, "samples_per_s": median,
            "step_time_s": batch_size / median if median else None}


def write_json(path: Path, value) -> None:
    """Whole or not at all: a run killed while writing leaves no result.json, so --resume re-runs it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=float))
    os.replace(tmp, path)


def main(argv=None) -> dict:
    args = parse_args(argv)
    wall, cpu = time.perf_counter(), time.process_time()
    study_file = args.output_dir / "study.json"
    done, failed = [], []
    if not args.report_only:
        info = json.loads(study_file.read_text()) if args.resume and study_file.is_file() else {"sessions": []}
        info.update(budget=budget_of(args), methods=args.methods, seeds=args.seeds, machine=machine(),
                    baselines={"grounding_mean_box": mean_box_baseline(
                        args.num_train_images, args.num_test_images, seed=args.eval_seed)})
        write_json(study_file, info)
        study = Study(args)
        for method in args.methods:
            for seed in args.seeds:
                if args.resume and study.finished(method, seed):
                    print(f"[study] {method} seed {seed}: finished, skipped", flush=True)
                    continue
                try:
                    study.run(method, seed)
                    done.append((method, seed))
                except Exception:  # one broken method must not cost the other runs; the report lists it
                    failed.append((method, seed))
                    error = traceback.format_exc()
                    print(f"[study] {method} seed {seed} FAILED:\n{error}", flush=True)
                    study.run_dir(method, seed).mkdir(parents=True, exist_ok=True)
                    (study.run_dir(method, seed) / "error.txt").write_text(error)
        info["sessions"].append({"started": time.time(), "wall_s": time.perf_counter() - wall,
                                 "cpu_s": time.process_time() - cpu, "runs": len(done), "failed": len(failed)})
        write_json(study_file, info)
    path = report.write_report([args.output_dir, *map(Path, args.include)], Path(args.report),
                               Path(args.images_dir))
    print(f"[study] {len(done)} runs done, {len(failed)} failed; report: {path} "
          f"({(time.perf_counter() - wall) / 60:.1f} min wall, {(time.process_time() - cpu) / 60:.1f} min CPU)")
    return {"done": done, "failed": failed, "report": str(path)}


if __name__ == "__main__":
    summary = main()
    raise SystemExit(1 if summary["failed"] else 0)
