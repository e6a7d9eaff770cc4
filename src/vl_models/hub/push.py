"""Push a model + processor to the Hub with a model card and remote code; load a task head from a checkpoint.

`push_to_hub` first writes everything to a local folder (`save_for_hub`), then uploads the folder in one
commit (`push_folder`). A failed upload leaves the folder as it was and names it in the error, so the push
can be retried with `push_folder` without saving again.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
import shutil
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from ..modeling_utils import VlPreTrainedModel
from ..registry import method_of
from ..utils import describe
from .cards import build_model_card
from .remote_code import REMOTE_CODE_HEADER, add_remote_code, strip_remote_code

logger = logging.getLogger(__name__)

_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


class HubPushError(OSError):
    """An upload failed; `folder` still holds every file that was to be pushed."""

    def __init__(self, message: str, *, folder: Path, repo_id: str):
        super().__init__(message)
        self.folder, self.repo_id = folder, repo_id


def _check_repo_id(repo_id) -> str:
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        raise ValueError(
            f"`repo_id` must be 'org/name' (letters, digits, '-', '_', '.'), got {describe(repo_id)}"
        )
    return repo_id


@contextmanager
def _no_source_copy(*objects):
    """A class loaded through trust_remote_code is marked (`_auto_class`) for transformers'
    `custom_object_save`, which copies the defining file and fails on our package-relative imports;
    `add_remote_code` writes the flattened modules instead."""
    classes = {type(obj) for obj in objects if obj is not None}
    classes |= {type(obj.config) for obj in objects if hasattr(obj, "config")}
    marked = {cls: cls.__dict__["_auto_class"] for cls in classes
              if cls.__dict__.get("_auto_class") is not None}
    for cls in marked:
        cls._auto_class = None
    try:
        yield
    finally:
        for cls, auto_class in marked.items():
            cls._auto_class = auto_class


def save_for_hub(model, processor, folder: str | Path, repo_id: str, *, card=None, remote_code: bool = True,
                 **card_kwargs) -> Path:
    """Write what `push_to_hub` uploads into `folder`: safetensors weights + config, the processor (unless
    None), the remote code (the package modules the model needs) with `auto_map` (unless remote_code=False) and README.md (`card`, or
    `build_model_card(model, repo_id, **card_kwargs)`). Returns the folder."""
    from transformers import PreTrainedModel

    _check_repo_id(repo_id)
    spec = method_of(model)  # raises for anything that is not a vl_models object
    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"`model` must be a vl_models model, got {describe(model)}")
    if not isinstance(model, VlPreTrainedModel):  # same model_type, but the classes of a repo's own code
        raise ValueError(
            f"`model` ({type(model).__module__}.{type(model).__name__}) was loaded as remote code "
            "(trust_remote_code) and is not a class of this vl_models: load it after `import vl_models` to push it"
        )
    if processor is not None and not isinstance(processor, spec.processor_class):
        raise ValueError(
            f"`processor` must be a {spec.processor_class.__name__} or None, got {describe(processor)}"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with _no_source_copy(model, processor):
        model.save_pretrained(folder)
        if processor is not None:
            processor.save_pretrained(folder)
    if remote_code:
        add_remote_code(folder, spec)
        add_endpoint_handler(folder, spec)
    else:  # a model loaded from a remote-code repo still carries its auto_map
        strip_remote_code(folder)
    if card is None:
        card = build_model_card(model, repo_id, **{"remote_code": remote_code, **card_kwargs})
    (folder / "README.md").write_text(str(card), encoding="utf-8")
    return folder


# what handler.py and the remote code import (transformers loads the safetensors weights)
_ENDPOINT_REQUIREMENTS = ("torch", "transformers", "huggingface-hub", "tokenizers", "safetensors", "numpy", "pillow")


def endpoint_requirements() -> str:
    """requirements.txt of a pushed repo: the packages handler.py and the remote code need, with the versions
    vl_models declares (its installed metadata, i.e. pyproject.toml)."""
    declared = {}
    for requirement in importlib.metadata.requires("vl_models") or []:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group().lower().replace("_", "-")
        if "extra ==" not in requirement:
            declared[name] = requirement.split(";")[0].strip()
    return "".join(declared.get(name, name) + "\n" for name in _ENDPOINT_REQUIREMENTS)


def _endpoint_entry(spec, pipelines: dict[str, str]) -> str:
    """vl_models_endpoint.py: the one remote-code module handler.py loads without vl_models (see its `_code`)."""
    imports = "".join(f"from .{ref.split('.')[0]} import {ref.split('.')[1]}\n" for ref in pipelines.values())
    classes = ", ".join(f"{task!r}: {ref.split('.')[1]}" for task, ref in pipelines.items())
    return (f"{REMOTE_CODE_HEADER}: the entry point of handler.py, written at push time; do not edit.\n"
            f"from .vl_models_models_{spec.name} import METHOD\n"
            "from .vl_models_pipelines_capabilities import supported_tasks\n"
            "from .vl_models_registry import _METHODS, task_of\n" + imports + "\n"
            "# what `import vl_models` does for its methods, without registering Auto classes: the pipelines look "
            "the\n# model's method up in the registry\n"
            "_METHODS.setdefault(METHOD.name, METHOD)\n"
            "ENDPOINT = {'method': METHOD, 'task_of': task_of, 'supported_tasks': supported_tasks,\n"
            f"            'pipelines': {{{classes}}}}}\n")


def add_endpoint_handler(folder: str | Path, method) -> list[Path]:
    """Write the Inference Endpoints custom handler (`handler.py`: hub/endpoint_handler.py with its METHOD set)
    and `requirements.txt` into a saved checkpoint folder that holds the remote code. Returns the files."""
    from . import endpoint_handler

    folder, spec = Path(folder), method_of(method)
    source = Path(endpoint_handler.__file__).read_text(encoding="utf-8")
    if 'METHOD = ""' not in source:
        raise ValueError(f"{endpoint_handler.__file__} lost its `METHOD = \"\"` line")
    handler = folder / "handler.py"
    handler.write_text(source.replace('METHOD = ""', f"METHOD = {spec.name!r}", 1), encoding="utf-8")
    entry = folder / "vl_models_endpoint.py"
    entry.write_text(_endpoint_entry(spec, endpoint_handler.PIPELINES), encoding="utf-8")
    requirements = folder / "requirements.txt"
    requirements.write_text(endpoint_requirements(), encoding="utf-8")
    return [handler, entry, requirements]


def _operations(folder: Path, remote_files: list[str]):
    """Add every file of `folder` (hidden ones aside) and delete the remote weights it no longer has, so a
    repo never ends up with stale shards or pickled weights next to the new safetensors."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    local = [p.relative_to(folder) for p in sorted(folder.rglob("*")) if p.is_file()]
    local = [p.as_posix() for p in local if not any(part.startswith(".") for part in p.parts)]
    stale = [name for name in remote_files if name not in local and name.endswith(_WEIGHT_SUFFIXES)]
    return ([CommitOperationAdd(path_in_repo=name, path_or_fileobj=folder / name) for name in local]
            + [CommitOperationDelete(path_in_repo=name) for name in stale])


_WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json", ".pt", ".pth",
                    ".ckpt")


def push_folder(folder: str | Path, repo_id: str, *, token: str | bool | None = None,
                private: bool | None = None, revision: str | None = None,
                commit_message: str = "Upload with vl_models", create_pr: bool = False,
                endpoint: str | None = None):
    """Upload a saved folder to `repo_id` as one commit (creating the repo if needed): all files land together
    or none do. `endpoint` defaults to HF_ENDPOINT. Returns huggingface_hub's `CommitInfo`; raises
    `HubPushError` (the folder is untouched) when the upload fails."""
    from huggingface_hub import HfApi

    import vl_models

    _check_repo_id(repo_id)
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"`folder` must hold a saved model (config.json), got {folder}")
    api = HfApi(endpoint=endpoint, token=token, library_name="vl_models",
                library_version=vl_models.__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        operations = _operations(folder, api.list_repo_files(repo_id, revision=revision))
        return api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision,
                                 create_pr=create_pr)
    except Exception as err:  # network, HTTP and metadata errors all leave the local folder as it was
        raise HubPushError(
            f"pushing {folder} to {repo_id} at {api.endpoint} failed ({type(err).__name__}: {err}). "
            f"Nothing was removed from {folder}; retry with "
            f"vl_models.hub.push_folder({str(folder)!r}, {repo_id!r})",
            folder=folder, repo_id=repo_id,
        ) from err


def push_to_hub(model, processor, repo_id: str, *, local_dir: str | Path | None = None, card=None,
                remote_code: bool = True, token: str | bool | None = None, private: bool | None = None,
                revision: str | None = None, commit_message: str | None = None, create_pr: bool = False,
                endpoint: str | None = None, **card_kwargs):
    """Save `model` and `processor` (may be None) with remote code and a model card, then upload them.

    card_kwargs go to `build_model_card` (results, datasets, license, base_model, tags, ...). `local_dir`
    keeps the saved files; without it they go to a temporary folder that is removed after a successful push
    and kept (named in the `HubPushError`) after a failed one."""
    keep = local_dir is not None
    folder = Path(local_dir) if keep else Path(tempfile.mkdtemp(prefix="vl_models_push_"))
    try:
        save_for_hub(model, processor, folder, repo_id, card=card, remote_code=remote_code, **card_kwargs)
    except Exception:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    message = commit_message or f"Upload {type(model).__name__} with vl_models"
    info = push_folder(folder, repo_id, token=token, private=private, revision=revision,
                       commit_message=message, create_pr=create_pr, endpoint=endpoint)
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return info


def _summarize(keys) -> str:
    """"decoder.* (36), temp": state-dict keys counted per top-level module."""
    names = [key if isinstance(key, str) else key[0] for key in keys]  # mismatched: (key, shape, shape)
    groups = Counter(name.split(".", 1)[0] + (".*" if "." in name else "") for name in names)
    return ", ".join(f"{group} ({n})" if group.endswith("*") else group
                     for group, n in sorted(groups.items()))


def load_for_task(name_or_path: str | Path, task: str, **kwargs):
    """Load the `task` head ("pretraining", "base", "retrieval", "vqa", "grounding", "nlvr2") of a
    checkpoint's method, e.g. a VQA model from a pre-training checkpoint. kwargs go to `from_pretrained`
    (num_labels, revision, ...). Returns (model, loading_info); the keys the checkpoint lacks (newly
    initialised) and the keys the head does not use are logged as a warning, grouped by module. Keys beyond the
    head's fresh modules and the method's pre-training-only ones raise ValueError (`check_loaded_keys`)."""
    from transformers import AutoConfig

    hub_keys = ("revision", "token", "cache_dir", "local_files_only", "force_download", "subfolder")
    config = AutoConfig.from_pretrained(name_or_path, **{k: kwargs[k] for k in hub_keys if k in kwargs})
    spec = method_of(config)
    classes = {"pretraining": spec.pretraining_class, "base": spec.model_class, **spec.task_classes}
    if task not in classes:
        raise ValueError(f"`task` must be one of {sorted(classes)} for {spec.name}, got {task!r}")
    model, info = classes[task].from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    model.check_loaded_keys(info, name_or_path)  # weights that do not fit stop here instead of loading as random
    parts = [f"{label}: {_summarize(info[key])}" for key, label in (
        ("missing_keys", "newly initialised (not in the checkpoint)"),
        ("unexpected_keys", "in the checkpoint but unused by this head"),
        ("mismatched_keys", "re-initialised (shape mismatch)"),
    ) if info.get(key)]
    if parts:
        logger.warning("%s from %s: %s", type(model).__name__, name_or_path, "; ".join(parts))
    return model, info


__all__ = ["HubPushError", "add_endpoint_handler", "endpoint_requirements", "load_for_task", "push_folder", "push_to_hub", "save_for_hub"]
