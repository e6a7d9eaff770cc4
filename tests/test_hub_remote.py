"""A pushed repo runs without vl_models: every method's pre-training model, base model, task heads, processor
(and VL-BEiT's visual tokenizer) are pushed to the local Hub server (tests/hub_server.py), then loaded with
`trust_remote_code=True` in one fresh process where `import vl_models` fails, and give the pushed models'
outputs exactly (CPU, one thread on both sides).

The client runs `python -I -S` with only the venv's site-packages on sys.path: no PYTHONPATH, no src/, and no
.pth files, so the editable install (`__editable__.vl_models-*.pth` pointing at src/) is not seen either.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig

import numpy as np
import PIL.Image
import pytest
import torch
from huggingface_hub import constants
from transformers import pipeline
from transformers.dynamic_module_utils import get_imports, get_relative_imports

import vl_models
from conftest import make_batch
from hub_server import HubServer
from vl_models.hub import push_to_hub, remote_code_files
from vl_models.hub.remote_code import REMOTE_CODE_HEADER, _reference
from vl_models.models.vl_beit import tokenizer_config

TOKEN = "test-token"
LOADERS = {"pretraining": "AutoModelForPreTraining", "base": "AutoModel", "vqa": "AutoModelForVisualQuestionAnswering",
           "retrieval": "AutoModelForZeroShotImageClassification", "grounding": "AutoModelForZeroShotObjectDetection",
           "companion": "AutoModel"}
# transformers' own pipelines of the cards' tags, run from the repo (threshold 0: every label's box)
PIPELINES = {"retrieval": ("zero-shot-image-classification", {}), "grounding": ("zero-shot-object-detection",
                                                                               {"threshold": 0.0})}
LABELS = ["two cats on a couch", "a dog in the snow", "a red circle"]
# what a transformers user has: the remote code must import nothing else
ALLOWED = {"torch", "transformers", "huggingface_hub", "tokenizers", "numpy", "PIL"}

CLIENT = r'''
import json, sys
sys.path[:0] = json.loads(sys.argv[3])  # the venv's site-packages, without processing its .pth files
from pathlib import Path
shared, out = Path(sys.argv[1]), Path(sys.argv[2])
report, results = {}, {}
try:
    import vl_models
    report["vl_models"] = f"imported from {vl_models.__file__}"
except ImportError as err:
    report["vl_models"] = f"ImportError: {err}"

import torch
import transformers
from PIL import Image
from transformers.dynamic_module_utils import get_class_from_dynamic_module

torch.set_num_threads(1)  # as for the reference outputs
jobs = json.loads((shared / "jobs.json").read_text())
inputs = torch.load(shared / "inputs.pt")

def tensors(output):
    return {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}

def run(model, job):
    kwargs = dict(inputs[job["inputs"]])
    if job["generator"]:
        kwargs["generator"] = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return tensors(model.eval()(**kwargs))

for job in jobs:
    loader = job["loader"]
    if loader.startswith("Auto"):
        model = getattr(transformers, loader).from_pretrained(job["repo"], trust_remote_code=True)
    else:  # a head without an Auto class: its class from the repo's code
        model = get_class_from_dynamic_module(loader, job["repo"]).from_pretrained(job["repo"])
    report[job["name"]] = f"{type(model).__module__}.{type(model).__name__}"
    results[job["name"]] = run(model, job)
    if job.get("processor"):
        processor = transformers.AutoProcessor.from_pretrained(job["repo"], trust_remote_code=True)
        results[job["name"] + ":processor"] = dict(processor(images=Image.open(shared / "image.png"),
                                                             text=["two cats on a couch"]))
    if job.get("pipeline"):
        task, kwargs = job["pipeline"]
        pipe = transformers.pipeline(task, model=job["repo"], trust_remote_code=True)
        results[job["name"] + ":pipeline"] = pipe(Image.open(shared / "image.png"), candidate_labels=job["labels"],
                                                  **kwargs)
    if job.get("resave"):  # save_pretrained of remote code copies the files it was loaded from
        model.save_pretrained(out / "resaved")
        again = getattr(transformers, loader).from_pretrained(out / "resaved", trust_remote_code=True)
        results[job["name"] + ":resaved"] = run(again, job)
torch.save(results, out / "results.pt")
(out / "report.json").write_text(json.dumps(report))
'''


def _inputs(config) -> dict:
    batch = make_batch(config, batch_size=2)
    pixels = batch["pixel_values"]
    return {"pair": batch, "image": {"pixel_values": pixels},
            "nlvr2": {**batch, "pixel_values": torch.stack([pixels, pixels.flip(0)], dim=1)}}


def _models(method: str):
    """(name, task, model, processor or None) of every class of a method, seeded."""
    spec = vl_models.get_method(method)
    config = vl_models.get_config(method, "tiny")
    classes = {"pretraining": spec.pretraining_class, "base": spec.model_class, **spec.task_classes}
    for task, cls in classes.items():
        torch.manual_seed(0)
        yield f"{method}-{task}", task, cls(config), vl_models.build_processor(method, "tiny") \
            if task in ("pretraining", *PIPELINES) else None
    for companion in spec.companions:
        torch.manual_seed(0)
        yield f"{method}-companion", "companion", companion(tokenizer_config("tiny")), None


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """Every model pushed with vl_models.hub.push_to_hub; the client's jobs and the reference outputs."""
    shared = tmp_path_factory.mktemp("remote_shared")
    server = HubServer(tmp_path_factory.mktemp("remote_hub")).start()
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(shared / "image.png")
    jobs, inputs, ref = [], {}, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the client's setting, so float sums run in the same order
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(constants, "HF_HUB_OFFLINE", False)
            for method in vl_models.list_methods():
                for name, task, model, processor in _models(method):
                    repo = f"org/{name}"
                    push_to_hub(model, processor, repo, endpoint=server.url, token=TOKEN)
                    key = {"nlvr2": "nlvr2", "companion": "image"}.get(task, "pair")
                    inputs.setdefault(f"{method}-{key}", _inputs(vl_models.get_config(method, "tiny"))[key])
                    job = {"name": name, "repo": repo, "inputs": f"{method}-{key}",
                           "loader": LOADERS.get(task) or _reference(type(model)),
                           "generator": task == "pretraining", "processor": processor is not None,
                           "resave": name == "vlmae-pretraining", "pipeline": PIPELINES.get(task), "labels": LABELS}
                    jobs.append(job)
                    with torch.no_grad():
                        kwargs = dict(inputs[job["inputs"]])
                        if job["generator"]:
                            kwargs["generator"] = torch.Generator().manual_seed(0)
                        output = model.eval()(**kwargs)
                    ref[name] = {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}
                    if processor is not None:
                        ref[f"{name}:processor"] = dict(processor(images=PIL.Image.open(shared / "image.png"),
                                                                  text=["two cats on a couch"]))
                    if task in PIPELINES:  # the same transformers pipeline on the pushed model, vl_models imported
                        tag, kwargs = PIPELINES[task]
                        pipe = pipeline(tag, model=model, tokenizer=processor.tokenizer,
                                        image_processor=processor.image_processor)
                        ref[f"{name}:pipeline"] = pipe(PIL.Image.open(shared / "image.png"), candidate_labels=LABELS,
                                                       **kwargs)
    finally:
        torch.set_num_threads(threads)
    (shared / "jobs.json").write_text(json.dumps(jobs))
    torch.save(inputs, shared / "inputs.pt")
    yield server, shared, ref
    server.stop()


def _client(server, shared, out):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "PYTHON"))}
    env.update(HF_ENDPOINT=server.url, HF_HOME=str(out / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    site = json.dumps(sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}))
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", CLIENT, str(shared), str(out), site], env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600, cwd=out)
    assert proc.returncode == 0, f"client failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return torch.load(out / "results.pt"), json.loads((out / "report.json").read_text())


def _assert_same_answers(got: list[dict], expected: list[dict], name: str) -> None:
    """One answer per label, the same scores within float rounding (the tiny models score some labels within 1e-7
    of each other, so their order may differ) and the same boxes within a pixel (truncated to whole pixels)."""
    assert len(got) == len(expected) == len(LABELS), (name, got)
    by_label = {answer["label"]: answer for answer in expected}
    for answer in got:
        want = by_label[answer["label"]]
        assert answer.keys() == want.keys() and answer["score"] == pytest.approx(want["score"], abs=1e-6), name
        if "box" in want:
            assert answer["box"].keys() == want["box"].keys(), name
            assert all(abs(answer["box"][k] - want["box"][k]) <= 1 for k in want["box"]), (name, answer, want)


@pytest.mark.slow
def test_every_model_and_processor_runs_from_the_repo_without_vl_models(pushed, tmp_path):
    server, shared, ref = pushed
    results, report = _client(server, shared, tmp_path)
    assert report.pop("vl_models").startswith("ImportError: No module named 'vl_models'")
    assert results.keys() == ref.keys() | {"vlmae-pretraining:resaved"}
    assert len(report) == 5 * 6 + 1  # 5 methods x (pre-training, base, 4 heads) + VL-BEiT's tokenizer
    for loaded in report.values():  # the repo's own classes, from transformers' module cache
        assert loaded.startswith("transformers_modules.org.") and "vl_models." not in loaded, loaded
    for name, expected in ref.items():
        got = results[name]
        if name.endswith(":pipeline"):  # transformers' pipeline of the card's tag, from the repo's code
            _assert_same_answers(got, expected, name)
            continue
        assert got.keys() == expected.keys(), name
        for key in expected:
            assert torch.equal(got[key], expected[key]), (name, key)
    resaved = results["vlmae-pretraining:resaved"]
    for key, value in ref["vlmae-pretraining"].items():
        assert torch.equal(resaved[key], value), key


@pytest.mark.parametrize("method", vl_models.list_methods())
def test_remote_code_files_import_only_transformers_dependencies(method, tmp_path):
    files = remote_code_files(method)
    for name, source in files.items():
        (tmp_path / name).write_text(source)
    required = set()
    for name, source in files.items():
        assert source.startswith(REMOTE_CODE_HEADER)
        # what transformers' check_imports requires, and the files its loader fetches next to this one
        required |= set(get_imports(tmp_path / name)) - set(sys.stdlib_module_names)
        assert all(f"{other}.py" in files for other in get_relative_imports(tmp_path / name)), name
        assert "vl_models" not in {line.split()[1].split(".")[0] for line in source.splitlines()
                                   if line.lstrip().startswith(("import ", "from "))}, name
    assert required <= ALLOWED, required - ALLOWED
    for reference in vl_models.hub.auto_map(method).values():
        assert f"{reference.split('.')[0]}.py" in files
    # an optional kernel stays optional: fetched with the repo, imported lazily, its triton import guarded
    assert "vl_models_kernels_triton_nearest_code.py" in files
