"""A pushed repo serves its card's widget through Inference Endpoints: tiny VLMAE checkpoints of every head are
pushed to the local Hub server (tests/hub_server.py) and downloaded; each card's `widget:` entries are turned into
the endpoint payloads the Hub's widget sends (the image by URL, served by a local http.server, and as base64 of
its bytes), fed to the repo's `handler.py` (`EndpointHandler(folder)`) in a process where vl_models cannot be
imported (`python -I -S`, as tests/test_hub_remote.py), and compared with the package's pipelines run here.
"""

from __future__ import annotations

import base64
import http.server
import importlib.util
import io
import json
import math
import os
import socket
import subprocess
import sys
import sysconfig
import threading
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from huggingface_hub import ModelCard, constants, snapshot_download
from transformers import AutoProcessor, pipeline

import vl_models
from hub_server import HubServer
from vl_models.hub import push_to_hub
from vl_models.hub.cards import EXAMPLE_IMAGE

TOKEN = "test-token"
HEADS = ("pretraining", "base", "retrieval", "vqa", "grounding", "nlvr2")
PIPELINE_OF = {"zero-shot-image-classification": "vl-zero-shot-image-classification",
               "visual-question-answering": "vl-visual-question-answering"}

CLIENT = r'''
import json, sys
sys.path[:0] = json.loads(sys.argv[2])  # the venv's site-packages, without its .pth files (no editable vl_models)
import importlib.util, torch
torch.set_num_threads(1)
cases = json.loads(open(sys.argv[1]).read())
report, results, handlers = {}, {}, {}
try:
    import vl_models
    report["vl_models"] = f"imported from {vl_models.__file__}"
except ImportError as err:
    report["vl_models"] = f"ImportError: {err}"
for name, case in cases.items():
    if case["folder"] not in handlers:
        spec = importlib.util.spec_from_file_location(f"handler_{len(handlers)}", case["folder"] + "/handler.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # as Inference Endpoints does: the file, not a package
        handlers[case["folder"]] = module.EndpointHandler(case["folder"])
        report[case["folder"]] = type(handlers[case["folder"]].model).__module__
    try:
        results[name] = {"ok": handlers[case["folder"]](case["payload"])}
    except ValueError as err:
        results[name] = {"error": str(err)}
open(sys.argv[3], "w").write(json.dumps({"report": report, "results": results}))
'''


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    image = b""

    def do_GET(self):
        if self.path != "/val2017/000000039769.jpg":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(self.image)))
        self.end_headers()
        self.wfile.write(self.image)

    def log_message(self, format, *args):
        pass


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """{head: downloaded repo folder} of tiny VLMAE checkpoints pushed with push_to_hub, and the image server's
    base URL (standing in for images.cocodataset.org)."""
    server = HubServer(tmp_path_factory.mktemp("handler_hub")).start()
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG")
    _ImageHandler.image = buffer.getvalue()
    images = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    spec, config = vl_models.get_method("vlmae"), vl_models.get_config("vlmae", "tiny")
    classes = {"pretraining": spec.pretraining_class, "base": spec.model_class, **spec.task_classes}
    folders = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        for head in HEADS:
            torch.manual_seed(0)
            model = classes[head](config)
            push_to_hub(model, vl_models.build_processor("vlmae", "tiny"), f"org/vlmae-{head}", endpoint=server.url,
                        token=TOKEN)
            folders[head] = snapshot_download(f"org/vlmae-{head}", endpoint=server.url, token=TOKEN,
                                              local_dir=tmp_path_factory.mktemp(head) / "repo")
    yield folders, f"http://127.0.0.1:{images.server_address[1]}"
    images.shutdown()
    server.stop()


def _payloads(folder, image_base: str) -> dict[str, dict]:
    """The card's widget entries as endpoint payloads, the image once by URL and once as base64."""
    card = ModelCard.load(os.path.join(folder, "README.md"))
    tag, payloads = card.data.pipeline_tag, {}
    for i, entry in enumerate(card.data.widget):
        url = entry["src"].replace(EXAMPLE_IMAGE.rsplit("/val2017", 1)[0], image_base)
        encoded = base64.b64encode(urllib.request.urlopen(url, timeout=10).read()).decode()
        for form, image in (("url", url), ("base64", encoded)):
            if tag == "visual-question-answering":
                payload = {"inputs": {"image": image, "question": entry["text"]}}
            elif "candidate_labels" in entry:
                payload = {"inputs": image, "parameters": {"candidate_labels": entry["candidate_labels"]}}
            else:
                payload = {"inputs": image}
            payloads[f"widget{i}-{form}"] = payload
    return payloads


def _reference(folder, payload: dict, image: PIL.Image.Image):
    """What the package's pipeline (or, for image features, the model) gives for a payload."""
    tag = ModelCard.load(os.path.join(folder, "README.md")).data.pipeline_tag
    inputs, parameters = payload["inputs"], payload.get("parameters", {})
    if tag == "image-feature-extraction":
        if isinstance(inputs, dict):  # fill-mask on a pre-training checkpoint
            return pipeline("vl-fill-mask", model=folder)(image, inputs["text"])
        model, processor = vl_models.pipelines.load_checkpoint(folder), AutoProcessor.from_pretrained(folder)
        with torch.no_grad():
            return model.base_model(pixel_values=processor(images=image, return_tensors="pt")["pixel_values"]
                                    ).image_embeds.tolist()
    if tag == "zero-shot-object-detection":  # transformers' own pipeline of the card's tag, its output schema
        labels = [label.strip() for label in parameters["candidate_labels"].split(",")]
        extra = {k: v for k, v in parameters.items() if k != "candidate_labels"}
        return pipeline(tag, model=folder)(image, candidate_labels=labels, **extra)
    pipe = pipeline(PIPELINE_OF[tag], model=folder)
    if tag == "visual-question-answering":
        return pipe(image, inputs["question"])
    return pipe(image, candidate_labels=parameters["candidate_labels"])


def _assert_close(got, expected, where: str):
    """Labels, answers and texts exactly; numbers within 1e-5."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), (where, got)
        for key in expected:
            _assert_close(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert isinstance(got, list) and len(got) == len(expected), (where, got)
        for i, (g, e) in enumerate(zip(got, expected)):
            _assert_close(g, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert math.isclose(got, expected, rel_tol=0, abs_tol=1e-5), (where, got, expected)
    else:
        assert got == expected, (where, got, expected)


def _cases(folders, image_base):
    cases = {}
    for head, folder in folders.items():
        for name, payload in _payloads(folder, image_base).items():
            cases[f"{head}:{name}"] = {"folder": folder, "payload": payload}
    masked = {"inputs": {"image": f"{image_base}/val2017/000000039769.jpg", "text": "two [MASK] on a couch"}}
    cases["pretraining:fill-mask"] = {"folder": folders["pretraining"], "payload": masked}
    # the tiny head's scores are below transformers' default threshold (0.1): threshold 0 returns every label's box
    every_box = {"inputs": f"{image_base}/val2017/000000039769.jpg",
                 "parameters": {"candidate_labels": "two cats on a couch, a dog in the snow", "threshold": 0.0}}
    cases["grounding:threshold"] = {"folder": folders["grounding"], "payload": every_box}
    bad_url = f"http://127.0.0.1:{_closed_port()}/cats.jpg"
    image = f"{image_base}/val2017/000000039769.jpg"
    for name, folder, payload in (
        ("vqa:no-image", folders["vqa"], {"inputs": {"question": "How many cats are there?"}}),
        ("vqa:no-question", folders["vqa"], {"inputs": {"image": image}}),
        ("retrieval:no-labels", folders["retrieval"], {"inputs": image}),
        ("grounding:no-labels", folders["grounding"], {"inputs": image, "parameters": {}}),
        ("retrieval:unreachable-url", folders["retrieval"],
         {"inputs": bad_url, "parameters": {"candidate_labels": ["a", "b"]}}),
        ("retrieval:not-an-image", folders["retrieval"],
         {"inputs": "bm90IGFuIGltYWdl", "parameters": {"candidate_labels": ["a", "b"]}}),
        ("pretraining:no-inputs", folders["pretraining"], {"image": image}),
    ):
        cases[name] = {"folder": folder, "payload": payload}
    return cases


BAD = {  # case -> what the ValueError must name
    "vqa:no-image": "`inputs.image` is required", "vqa:no-question": "`inputs.question` is required",
    "retrieval:no-labels": "`parameters.candidate_labels` is required",
    "grounding:no-labels": "`parameters.candidate_labels` is required",
    "retrieval:unreachable-url": "`inputs`: could not fetch", "retrieval:not-an-image": "`inputs` is not a readable",
    "pretraining:no-inputs": "'inputs'",
}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _expected(cases, image_base):
    image = PIL.Image.open(io.BytesIO(_ImageHandler.image)).convert("RGB")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the client's setting
    try:
        return {name: _reference(case["folder"], case["payload"], image) for name, case in cases.items()
                if name not in BAD and not name.startswith("nlvr2")}
    finally:
        torch.set_num_threads(threads)


def _check(results, cases, expected):
    for name in cases:
        result = results[name]
        if name in BAD:
            assert BAD[name] in result.get("error", ""), (name, result)
        elif name.startswith("nlvr2"):  # no pipeline serves NLVR2 heads: a clear error, not a made-up answer
            assert "has no pipeline the handler serves" in result.get("error", ""), (name, result)
        else:
            assert "ok" in result, (name, result)
            _assert_close(result["ok"], expected[name], name)
    # the grounding widget's answer in zero-shot-object-detection's schema, one box per label above the threshold
    boxes = results["grounding:threshold"]["ok"]
    assert sorted(b["label"] for b in boxes) == ["a dog in the snow", "two cats on a couch"]
    assert all(b.keys() == {"score", "label", "box"} and b["box"].keys() == {"xmin", "ymin", "xmax", "ymax"}
               for b in boxes), boxes
    assert [b["score"] for b in boxes] == sorted((b["score"] for b in boxes), reverse=True)


def test_every_pushed_repo_has_a_handler_and_requirements(repos):
    folders, _ = repos
    for head, folder in folders.items():
        assert os.path.isfile(os.path.join(folder, "handler.py")), head
        requirements = Path(folder, "requirements.txt").read_text().split()
        assert [r.split("<")[0].split(">")[0] for r in requirements] == [
            "torch", "transformers", "huggingface_hub", "tokenizers", "safetensors", "numpy", "pillow"]
        assert "transformers<6,>=5.23" in requirements  # the versions pyproject.toml declares
        handler = Path(folder, "handler.py").read_text()
        assert "METHOD = 'vlmae'" in handler and "import vl_models\n" in handler  # used only where installed


@pytest.mark.slow
def test_widget_payloads_run_through_the_handler_without_vl_models(repos, tmp_path):
    folders, image_base = repos
    cases = _cases(folders, image_base)
    expected = _expected(cases, image_base)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "PYTHON"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    site = json.dumps(sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}))
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", CLIENT, str(tmp_path / "cases.json"), site,
                           str(tmp_path / "out.json")], env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, f"client failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    out = json.loads((tmp_path / "out.json").read_text())
    report = out["report"]
    assert report.pop("vl_models").startswith("ImportError: No module named 'vl_models'")
    for module in report.values():  # the repo's own classes
        assert module.startswith("transformers_modules.") and "vl_models." not in module, module
    _check(out["results"], cases, expected)


def test_widget_payloads_run_through_the_handler_with_vl_models(repos):
    """Where vl_models is installed the handler uses it: same answers."""
    folders, image_base = repos
    cases = {name: case for name, case in _cases(folders, image_base).items()
             if name.split(":")[0] in ("retrieval", "vqa", "grounding", "nlvr2") or name in BAD}
    expected = _expected(cases, image_base)
    handlers, results = {}, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, case in cases.items():
            folder = case["folder"]
            if folder not in handlers:
                spec = importlib.util.spec_from_file_location(f"handler_{len(handlers)}", f"{folder}/handler.py")
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                handlers[folder] = module.EndpointHandler(folder)
                assert type(handlers[folder].model).__module__.startswith("vl_models.")
            try:
                results[name] = {"ok": handlers[folder](case["payload"])}
            except ValueError as err:
                results[name] = {"error": str(err)}
    finally:
        torch.set_num_threads(threads)
    _check(results, cases, expected)
