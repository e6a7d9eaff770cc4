"""vl_models.hub against a Hub-compatible server on 127.0.0.1 (tests/hub_server.py): push, then load in
fresh processes with empty caches (after `import vl_models`, and through trust_remote_code with vl_models
hidden), offline from a cache, an interrupted push and model cards. tests/test_hub_remote.py loads every
method's remote code where vl_models is not installed at all.

Pushes run in this process with an explicit `endpoint`. Loading runs in three subprocesses at once ("another
machine") whose environment is set here: huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE when it is
imported, and conftest's HF_HUB_OFFLINE=1 must not leak into them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, constants, snapshot_download
from huggingface_hub.repocard_data import model_index_to_eval_results
from safetensors.torch import load_file

import vl_models
from conftest import make_batch
from hub_server import HubServer
from vl_models.hub import (
    PIPELINE_TAGS,
    HubPushError,
    auto_map,
    build_model_card,
    eval_results,
    load_results,
    push_folder,
    push_to_hub,
    remote_code_files,
    save_for_hub,
    validate_card,
)

SRC = str(Path(vl_models.__file__).resolve().parents[1])
REPO, PLAIN = "org/vlmae-tiny", "org/vlmae-plain"
TOKEN = "test-token"
RESULTS = [
    {"task": "retrieval", "dataset": "nlphuji/flickr30k", "split": "test",
     "metrics": {"image_to_text_r1": 0.5, "text_to_image_r1": 0.25}},
    {"task": "vqa", "dataset": {"name": "HuggingFaceM4/VQAv2", "split": "validation"},
     "metrics": {"accuracy": 0.4}},
]
CODE = set(remote_code_files("vlmae"))  # the package modules VLMAE needs, flattened into the repo


# -- what every process computes from a model, so outputs can be compared across processes -------------------

FUNCS = """
import torch

def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}

def features(backbone, batch):
    with torch.no_grad():
        o = backbone(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                     attention_mask=batch["attention_mask"])
    return {k: o[k] for k in ("image_embeds", "text_embeds", "multimodal_embeds", "image_feat", "text_feat")}

def pretraining(model, batch):  # the forward pass moves the queues: take `state` first
    with torch.no_grad():
        o = model(**batch, generator=torch.Generator().manual_seed(0))
    return {k: v for k, v in o.items() if k.startswith("loss")}

def processed(processor, image_path):
    from PIL import Image
    return dict(processor(images=Image.open(image_path), text=["two cats on a couch"]))
"""
_funcs: dict = {}
exec(FUNCS, _funcs)
state, features, pretraining, processed = (_funcs[name] for name in ("state", "features", "pretraining",
                                                                      "processed"))

HELPERS = FUNCS + """
import json, sys
from pathlib import Path
shared, out = Path(sys.argv[1]), Path(sys.argv[2])
torch.set_num_threads(1)  # as for the reference outputs; three clients share the cores
batch, image = torch.load(shared / "batch.pt"), shared / "cats.png"
REPO, PLAIN = "org/vlmae-tiny", "org/vlmae-plain"
results, report = {}, {}

def finish():
    torch.save(results, out / "results.pt")
    (out / "report.json").write_text(json.dumps(report))
"""

IMPORT_ROUTE = HELPERS + '''
import vl_models.hub
from transformers import AutoModelForPreTraining, AutoProcessor
model = AutoModelForPreTraining.from_pretrained(REPO)
report["pretraining_class"] = type(model).__name__
results["state"], results["features"] = state(model), features(model.vlmae, batch)
results["processed"] = processed(AutoProcessor.from_pretrained(REPO), image)
head, info = vl_models.hub.load_for_task(REPO, "vqa", num_labels=3)
report["head"] = {"class": type(head).__name__, **{k: sorted(map(str, v)) for k, v in info.items()}}
results["head_state"] = state(head)
results["plain_state"] = state(AutoModelForPreTraining.from_pretrained(PLAIN))
results["plain_processed"] = processed(AutoProcessor.from_pretrained(PLAIN), image)
finish()
'''

REMOTE_CODE_ROUTE = HELPERS + '''
import importlib.abc
from transformers import AutoModel, AutoModelForPreTraining, AutoProcessor

class HideVlModels(importlib.abc.MetaPathFinder):  # as if vl_models were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "vl_models":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, HideVlModels())
try:
    import vl_models
    report["hidden"] = False
except ImportError:
    report["hidden"] = True
try:
    AutoModel.from_pretrained(REPO)  # no trust_remote_code, stdin closed: the prompt fails
    report["untrusted"] = "loaded"
except ValueError as err:
    report["untrusted"] = str(err)
report["imported_before"] = "vl_models" in sys.modules
model = AutoModel.from_pretrained(REPO, trust_remote_code=True)
report["model_class"] = f"{type(model).__module__}.{type(model).__name__}"
results["features"], results["base_state"] = features(model, batch), state(model)
pt = AutoModelForPreTraining.from_pretrained(REPO, trust_remote_code=True)
results["state"] = state(pt)
results["pretraining"] = pretraining(pt, batch)
processor = AutoProcessor.from_pretrained(REPO, trust_remote_code=True)
results["processed"] = processed(processor, image)
try:
    pt.save_pretrained(out / "resaved")
    report["resave"] = "ok"
except Exception as err:
    report["resave"] = f"{type(err).__name__}: {err}"
resaved = out / "resaved"
report["resaved_files"] = sorted(p.name for p in resaved.iterdir()) if resaved.is_dir() else []
config = resaved / "config.json"
report["resaved_auto_map"] = config.is_file() and "auto_map" in json.loads(config.read_text())
sys.meta_path.pop(0)
import vl_models.hub
try:  # the repo's classes are not the package's: vl_models.hub pushes models loaded after `import vl_models`
    vl_models.hub.save_for_hub(pt, None, out / "hub_resaved", REPO)
    report["hub_resaved"] = "saved"
except ValueError as err:
    report["hub_resaved"] = str(err)
finish()
'''

OFFLINE = HELPERS + '''
from transformers import AutoModel, AutoModelForPreTraining, AutoProcessor
results["features"] = features(AutoModel.from_pretrained(REPO, trust_remote_code=True), batch)
import vl_models
model = AutoModelForPreTraining.from_pretrained(REPO)
results["state"] = state(model)
results["processed"] = processed(AutoProcessor.from_pretrained(REPO), image)
try:
    AutoModel.from_pretrained("org/never-pushed")
    report["never_pushed"] = "loaded"
except OSError as err:
    report["never_pushed"] = str(err)
finish()
'''


def _client_env(endpoint: str, hf_home: Path, offline: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "HUGGINGFACE_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([SRC, env.get("PYTHONPATH", "")]))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


class Client:
    """A fresh Python process running one of the scripts above, with its own HF_HOME."""

    def __init__(self, script: str, shared: Path, out: Path, env: dict):
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, str(shared), str(out)],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self._done = None

    def wait(self):
        if self._done is None:
            stdout, stderr = self.proc.communicate(timeout=300)
            assert self.proc.returncode == 0, f"client failed:\n{stdout[-3000:]}\n{stderr[-6000:]}"
            results = torch.load(self.out / "results.pt")
            report = json.loads((self.out / "report.json").read_text())
            self._done = results, report, stderr
        return self._done


def _assert_same(actual: dict, expected: dict):
    assert actual.keys() == expected.keys()
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


def _repo_files(server: HubServer, repo: str) -> dict[str, Path]:
    _, tree = server.store.head("models", repo, "main")
    return {name: tree / name for name in server.store.files(tree)}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    server = HubServer(tmp_path_factory.mktemp("hub")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory):
    """A tiny VLMAE pushed twice: with vl_models.hub.push_to_hub (card + remote code) and with the plain
    transformers `push_to_hub` of the model and the processor. Returns the reference outputs."""
    shared = tmp_path_factory.mktemp("shared")
    torch.manual_seed(0)
    # with feature queues (the tiny preset has none), so a head reports them among the unused keys
    model = vl_models.VlmaeForPreTraining(vl_models.get_config("vlmae", "tiny", queue_size=32)).eval()
    processor = vl_models.build_processor("vlmae", "tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest's HF_HUB_OFFLINE=1 is for loading, not us
        push_to_hub(model, processor, REPO, local_dir=shared / "pushed", results=RESULTS,
                    datasets=["org/captions"], endpoint=hub.url, token=TOKEN)
        hub.use_in_process(mp)  # transformers' own push_to_hub has no endpoint argument
        model.push_to_hub(PLAIN, token=TOKEN)
        processor.push_to_hub(PLAIN, token=TOKEN)

    batch = make_batch(model.config)
    torch.save(batch, shared / "batch.pt")
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(shared / "cats.png")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the clients' setting, so float sums run in the same order
    try:
        ref = {"state": state(model), "features": features(model.vlmae, batch)}
        ref["pretraining"] = pretraining(model, batch)
        ref["processed"] = processed(processor, shared / "cats.png")
    finally:
        torch.set_num_threads(threads)
    return shared, ref


@pytest.fixture(scope="module")
def clients(hub, pushed, tmp_path_factory):
    """Three new processes run side by side: the import route and the remote-code route, each with an empty
    cache, and an offline one (HF_HUB_OFFLINE=1) whose cache was filled by `snapshot_download` beforehand. The
    offline one points at a server of its own, which must see no request."""
    shared, _ = pushed
    home = tmp_path_factory.mktemp("client_homes")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_OFFLINE", False)
        snapshot_download(REPO, cache_dir=home / "offline" / "hub", endpoint=hub.url)
    watch = HubServer(tmp_path_factory.mktemp("unused_hub")).start()
    clients = {
        "import": Client(IMPORT_ROUTE, shared, home / "import_out", _client_env(hub.url, home / "import")),
        "remote": Client(REMOTE_CODE_ROUTE, shared, home / "remote_out",
                         _client_env(hub.url, home / "remote")),
        "offline": Client(OFFLINE, shared, home / "offline_out",
                          _client_env(watch.url, home / "offline", offline=True)),
    }
    yield {**clients, "offline_server": watch}
    for client in clients.values():  # a test that failed before waiting leaves its client running
        if client.proc.poll() is None:
            client.proc.kill()
            client.proc.wait()
    watch.stop()


# -- the pushed repos ----------------------------------------------------------------------------------------


def test_pushed_repo_holds_safetensors_remote_code_and_card(hub, pushed):
    files = _repo_files(hub, REPO)
    assert set(files) == {".gitattributes", "README.md", "config.json", "model.safetensors",
                          "processor_config.json", "tokenizer.json", "tokenizer_config.json", *CODE,
                          "handler.py", "vl_models_endpoint.py", "requirements.txt"}  # Inference Endpoints
    config = json.loads(files["config.json"].read_text())
    assert config["auto_map"] == auto_map("vlmae")
    assert config["auto_map"]["AutoModel"] == "modeling_vlmae.VlmaeModel"
    processor_config = json.loads(files["processor_config.json"].read_text())
    assert processor_config["auto_map"] == {"AutoProcessor": "processing_vlmae.VlmaeProcessor"}
    # transformers loads the image processor through AutoImageProcessor: it needs an auto_map of its own
    assert processor_config["image_processor"]["auto_map"] == {
        "AutoImageProcessor": "vl_models_processing.VlImageProcessor"}
    shared, ref = pushed
    # every tensor once: the MLM decoders are the word embeddings (tied), saved under the embeddings' names
    tied = {"mlm_head.decoder.weight", "momentum_mlm_head.decoder.weight"}
    assert set(load_file(files["model.safetensors"])) == set(ref["state"]) - tied
    # the local folder is what was pushed, file for file
    local = {p.name: p.read_bytes() for p in (shared / "pushed").iterdir()}
    assert local == {name: path.read_bytes() for name, path in files.items() if name != ".gitattributes"}

    card = validate_card(files["README.md"].read_text())
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-feature-extraction"
    assert card.data.tags == ["vl_models", "custom_code", "vlmae"] and card.data.datasets == ["org/captions"]
    assert card.data.eval_results == eval_results(RESULTS)

    plain = _repo_files(hub, PLAIN)  # transformers' push_to_hub: no remote code
    assert "model.safetensors" in plain and "processor_config.json" in plain and "README.md" in plain
    assert not any(name.endswith((".py", ".bin")) for name in plain)
    assert "auto_map" not in json.loads(plain["config.json"].read_text())


def test_push_without_local_dir_removes_its_temporary_folder(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    model = vl_models.AlbefModel(vl_models.get_config("albef", "tiny"))
    info = push_to_hub(model, None, "org/albef-base-only", endpoint=hub.url, token=TOKEN)
    assert info.oid == hub.store.head("models", "org/albef-base-only", "main")[0]
    assert list(tmp_path.iterdir()) == []
    files = _repo_files(hub, "org/albef-base-only")
    assert "processor_config.json" not in files
    assert {"modeling_albef.py", "configuration_albef.py"} <= set(files)
    assert ModelCard(files["README.md"].read_text()).data.pipeline_tag == PIPELINE_TAGS["base"]


def test_push_replaces_stale_weights_and_keeps_other_files(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    api = HfApi(endpoint=hub.url, token=TOKEN)
    api.create_repo("org/repushed")
    for name in ("pytorch_model.bin", "model-00001-of-00002.safetensors", "notes.md"):
        api.upload_file(path_or_fileobj=b"old", path_in_repo=name, repo_id="org/repushed")
    model = vl_models.AlbefModel(vl_models.get_config("albef", "tiny"))
    push_to_hub(model, None, "org/repushed", local_dir=tmp_path, endpoint=hub.url, token=TOKEN)
    files = set(_repo_files(hub, "org/repushed"))
    assert "notes.md" in files and "model.safetensors" in files
    assert not {"pytorch_model.bin", "model-00001-of-00002.safetensors"} & files


# -- loading on "another machine" ----------------------------------------------------------------------------


@pytest.mark.slow
def test_import_route_loads_identical_model_and_processor(pushed, clients):
    results, report, _ = clients["import"].wait()
    _, ref = pushed
    assert report["pretraining_class"] == "VlmaeForPreTraining"
    _assert_same(results["state"], ref["state"])
    _assert_same(results["features"], ref["features"])
    _assert_same(results["processed"], ref["processed"])
    # the repo written by transformers' own push_to_hub loads the same way
    _assert_same(results["plain_state"], ref["state"])
    _assert_same(results["plain_processed"], ref["processed"])


@pytest.mark.slow
def test_head_from_pretraining_checkpoint_reports_missing_and_unused_keys(pushed, clients):
    results, report, stderr = clients["import"].wait()
    _, ref = pushed
    head = report["head"]
    assert head["class"] == "VlmaeForQuestionAnswering"
    assert head["missing_keys"] and all(k.startswith("vqa_head.") for k in head["missing_keys"])
    unused = {k.split(".")[0] for k in head["unexpected_keys"]}
    assert {"decoder", "momentum_model", "mlm_head", "itm_head", "image_queue", "temp"} <= unused
    # everything the head shares with the checkpoint is the pushed backbone
    for key, value in results["head_state"].items():
        if not key.startswith("vqa_head."):
            assert torch.equal(value, ref["state"][key]), key
    assert "newly initialised (not in the checkpoint): vqa_head.*" in stderr


@pytest.mark.slow
def test_remote_code_route_without_importing_vl_models(pushed, clients):
    results, report, _ = clients["remote"].wait()
    _, ref = pushed
    assert report["hidden"] is True and report["imported_before"] is False
    assert "trust_remote_code=True" in report["untrusted"]
    # the repo's own code, from transformers' module cache
    assert report["model_class"].startswith("transformers_modules.org.")
    assert report["model_class"].endswith(".modeling_vlmae.VlmaeModel")
    _assert_same(results["features"], ref["features"])
    _assert_same(results["base_state"], {k[len("vlmae."):]: v for k, v in ref["state"].items()
                                         if k.startswith("vlmae.")})
    _assert_same(results["state"], ref["state"])
    _assert_same(results["pretraining"], ref["pretraining"])
    _assert_same(results["processed"], ref["processed"])
    assert "loaded as remote code" in report["hub_resaved"] and "import vl_models" in report["hub_resaved"]


@pytest.mark.slow
def test_plain_save_pretrained_after_remote_code_load(clients):
    _, report, _ = clients["remote"].wait()
    assert report["resave"] == "ok"
    # the loaded config keeps its auto_map: the files it names are copied from the ones the model came from
    model_code = {n for n in CODE if not n.startswith(("vl_models_pipelines_", "vl_models_models_"))}  # not handler's
    assert report["resaved_auto_map"] and set(report["resaved_files"]) >= model_code


@pytest.mark.slow
def test_offline_load_from_cache(pushed, clients):
    results, report, _ = clients["offline"].wait()
    _, ref = pushed
    assert clients["offline_server"].requests == []  # nothing was asked of the network
    _assert_same(results["features"], ref["features"])
    _assert_same(results["state"], ref["state"])
    _assert_same(results["processed"], ref["processed"])
    assert "couldn't find them in the cached files" in report["never_pushed"]


# -- a push that fails half way ------------------------------------------------------------------------------


def test_interrupted_push_fails_clearly_and_keeps_the_local_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server = HubServer(tmp_path / "hub").start()
    server.die_on = "commit"  # the server goes away while the files are being committed
    model = vl_models.VlmaeForPreTraining(vl_models.get_config("vlmae", "tiny"))
    processor = vl_models.build_processor("vlmae", "tiny")
    folder = tmp_path / "to_push"
    with pytest.raises(HubPushError, match="org/interrupted") as caught:
        push_to_hub(model, processor, "org/interrupted", local_dir=folder, endpoint=server.url, token=TOKEN)
    message = str(caught.value)
    assert str(folder) in message and "push_folder" in message and "Server disconnected" in message
    assert caught.value.folder == folder
    expected = {"README.md", "config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
                "tokenizer_config.json", *CODE, "handler.py", "vl_models_endpoint.py", "requirements.txt"}
    assert {p.name for p in folder.iterdir()} == expected
    _assert_same(state(vl_models.VlmaeForPreTraining.from_pretrained(folder)), state(model))

    # the server's storage kept no partial commit; the same folder is pushed once a server is back
    back = HubServer(tmp_path / "hub").start()
    try:
        assert set(_repo_files(back, "org/interrupted")) == {".gitattributes"}
        push_folder(folder, "org/interrupted", endpoint=back.url, token=TOKEN)
        assert set(_repo_files(back, "org/interrupted")) == expected | {".gitattributes"}
    finally:
        back.stop()


def test_push_rejects_bad_arguments(tmp_path):
    model = vl_models.AlbefModel(vl_models.get_config("albef", "tiny"))
    with pytest.raises(ValueError, match="`repo_id` must be 'org/name'"):
        save_for_hub(model, None, tmp_path, "no-namespace")
    with pytest.raises(ValueError, match="`processor` must be a AlbefProcessor"):
        save_for_hub(model, vl_models.build_processor("vlmae", "tiny"), tmp_path, "org/x")
    with pytest.raises(ValueError, match="expected a vl_models model"):
        save_for_hub(torch.nn.Linear(2, 2), None, tmp_path, "org/x")
    with pytest.raises(ValueError, match="must hold a saved model"):
        push_folder(tmp_path / "empty", "org/x")


def test_save_without_remote_code_drops_a_stale_auto_map(tmp_path):
    model = vl_models.AlbefModel(vl_models.get_config("albef", "tiny"))
    save_for_hub(model, None, tmp_path, "org/x")  # an earlier save with remote code into the same folder
    (tmp_path / "my_script.py").write_text("print('mine')\n")
    model.config.auto_map = auto_map("albef")  # as after loading a repo pushed with remote code
    save_for_hub(model, None, tmp_path, "org/x", remote_code=False)
    assert "auto_map" not in json.loads((tmp_path / "config.json").read_text())
    assert [p.name for p in tmp_path.glob("*.py")] == ["my_script.py"]  # only our shims are removed
    card = ModelCard((tmp_path / "README.md").read_text())
    assert "custom_code" not in card.data.tags and "trust_remote_code" not in card.text


# -- model cards ---------------------------------------------------------------------------------------------


def test_card_metadata_and_model_index_parse_back(tmp_path):
    model = vl_models.VlmaeForPreTraining(vl_models.get_config("vlmae", "tiny"))
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"results": RESULTS}))
    card = build_model_card(model, "org/vlmae-tiny", results=path, datasets="org/captions",
                            base_model="org/base", license="mit", tags=["demo"])
    parsed = ModelCard(str(card))
    data = parsed.data.to_dict()
    assert data["library_name"] == "transformers" and data["license"] == "mit"
    assert data["pipeline_tag"] == "image-feature-extraction" and data["base_model"] == "org/base"
    assert data["tags"] == ["vl_models", "custom_code", "vlmae", "demo"]
    assert data["datasets"] == ["org/captions"]
    assert data["widget"][0]["src"].startswith("http")
    name, results = model_index_to_eval_results(data["model-index"])
    assert name == "vlmae-tiny" and results == eval_results(RESULTS)
    retrieval = [r for r in results if r.metric_type == "image_to_text_r1"][0]
    assert retrieval.task_type == "zero-shot-image-classification"
    assert retrieval.task_name == "Image-text retrieval"
    assert (retrieval.dataset_name, retrieval.dataset_split, retrieval.metric_value) == ("nlphuji/flickr30k",
                                                                                         "test", 0.5)
    vqa = [r for r in results if r.metric_type == "accuracy"][0]
    assert (vqa.task_type, vqa.dataset_split) == ("visual-question-answering", "validation")
    body = parsed.text
    assert vl_models.get_method("vlmae").paper in body
    assert 'AutoModel.from_pretrained("org/vlmae-tiny", trust_remote_code=True)' in body
    assert "| Image-text retrieval | nlphuji/flickr30k | test | image_to_text_r1 | 0.5 |" in body


def test_card_of_a_fine_tuned_model_names_the_hub_checkpoint_it_started_from(hub, pushed, tmp_path, monkeypatch):
    """As examples/finetune.py does: a head loaded from a Hub id (`--model_name_or_path org/...`), then pushed."""
    hub.use_in_process(monkeypatch)
    head, _ = vl_models.hub.load_for_task(REPO, "vqa", num_labels=3)
    card = build_model_card(head, "org/vlmae-vqa")
    assert card.data.base_model == REPO and f"fine-tuned from: [{REPO}](https://huggingface.co/{REPO})" in card.text
    assert build_model_card(head, "org/vlmae-vqa", base_model="org/other").data.base_model == "org/other"
    assert build_model_card(head, REPO).data.base_model is None  # pushed back to where it came from
    head.save_pretrained(tmp_path / "run")  # loaded from a local folder: no Hub id to name
    local = vl_models.VlmaeForQuestionAnswering.from_pretrained(tmp_path / "run")
    assert build_model_card(local, "org/vlmae-vqa").data.base_model is None
    fresh = vl_models.VlmaeForQuestionAnswering(vl_models.get_config("vlmae", "tiny"))
    assert build_model_card(fresh, "org/vlmae-vqa").data.base_model is None


@pytest.mark.parametrize("method", vl_models.list_methods())
@pytest.mark.parametrize("task", ["retrieval", "vqa", "grounding", "nlvr2"])
def test_card_pipeline_tag_widget_and_usage_follow_the_head(method, task):
    head_class = vl_models.get_method(method).task_classes[task]
    model = head_class(vl_models.get_config(method, "tiny"))
    card = validate_card(build_model_card(model, f"org/{method}-{task}"))
    assert card.data.pipeline_tag == PIPELINE_TAGS[task]
    if task == "nlvr2":  # an image pair and a sentence: no Hub widget takes that, so the card shows none
        assert PIPELINE_TAGS[task] == "other" and not card.data.get("widget")
    else:
        widget = card.data.get("widget")[0]
        if PIPELINE_TAGS[task] == "visual-question-answering":
            assert widget["text"].endswith("?")
        else:
            assert "candidate_labels" in widget
    loader = {"vqa": "AutoModelForVisualQuestionAnswering", "retrieval": "AutoModelForZeroShotImageClassification",
              "grounding": "AutoModelForZeroShotObjectDetection"}.get(task, f"vl_models.{head_class.__name__}")
    assert f'{loader}.from_pretrained("org/{method}-{task}")' in card.text
    if task in ("retrieval", "grounding"):  # transformers' own pipeline of the card's tag serves the head
        assert f'pipeline("{PIPELINE_TAGS[task]}", model="org/{method}-{task}")' in card.text
    assert card.data.tags == ["vl_models", "custom_code", method]
    assert card.data.get("model-index") is None and "No evaluation results were given." in card.text


@pytest.mark.parametrize("method", vl_models.list_methods())
def test_card_pipeline_tag_is_served_by_transformers_pipeline_of_that_name(method):
    """Every head whose card's `pipeline_tag` names a transformers pipeline is what that pipeline loads: its Auto
    class maps the method's config to the head in-process (`import vl_models`) and in the remote code's auto_map."""
    from transformers.pipelines import SUPPORTED_TASKS

    spec = vl_models.get_method(method)
    classes = {"pretraining": spec.pretraining_class, "base": spec.model_class, **spec.task_classes}
    served = set()
    for task, cls in classes.items():
        tag = PIPELINE_TAGS[task]
        if tag not in SUPPORTED_TASKS:  # "other" (NLVR2), "visual-question-answering" (removed in transformers 5)
            continue
        auto = SUPPORTED_TASKS[tag]["pt"][0]
        loaded = auto._model_mapping[spec.config_class]
        expected = spec.model_class if task in ("pretraining", "base") else cls  # image features: the backbone
        assert loaded is expected, (task, tag, auto.__name__, loaded)
        assert auto_map(method)[auto.__name__] == f"{expected.__module__.rsplit('.', 1)[-1]}.{expected.__name__}"
        served.add(tag)
    assert {"zero-shot-image-classification", "zero-shot-object-detection", "image-feature-extraction"} <= served


def test_validate_card_lists_every_problem():
    text = ("---\nlibrary_name: vl_models\npipeline_tag: not-a-task\ntags: [demo]\nlicense: Apache 2\n"
            "datasets: [not a hub id]\nwidget: [{title: x}]\nmodel-index:\n- name: m\n  results:\n"
            "  - task: {type: vqa}\n    dataset: {type: d, name: d}\n"
            "    metrics: [{type: acc, value: high}]\n---\n")
    with pytest.raises(ValueError, match="invalid model card metadata") as caught:
        validate_card(text)
    for problem in ("library_name must be 'transformers'", "pipeline_tag must be one of", "tags must include",
                    "license must be a Hub license id", "datasets must hold Hub ids",
                    "metric 'acc' must be a number", "widget[0] must be a dict with 'src' or 'text'"):
        assert problem in str(caught.value)
    with pytest.raises(ValueError, match="does not parse"):
        validate_card("---\nmodel-index: [{results: []}]\n---\n")


@pytest.mark.parametrize(("results", "match"), [
    (42, r"`results` must be a dict, a list of dicts or a JSON file, got int 42"),
    ([{"task": "vqa", "metrics": {"accuracy": 1.0}}], r"`results\[0\]` must have keys .* lacks dataset"),
    ([{"task": "vqa", "dataset": "d", "metrics": {}}],
     r"`results\[0\]\['metrics'\]` must be a non-empty dict"),
    ([{"task": "vqa", "dataset": "d", "metrics": {"accuracy": "0.5"}}],
     r"`results\[0\]\['metrics'\]\['accuracy'\]` must be a finite number, got str '0.5'"),
    ([{"task": "vqa", "dataset": {"split": "val"}, "metrics": {"a": 1}}],
     r"`results\[0\]\['dataset'\]` must be a dataset id"),
    ("missing.json", r"got missing file missing.json"),
])
def test_load_results_errors_name_the_field(results, match):
    with pytest.raises(ValueError, match=match):
        load_results(results)
