"""Remote code for Hub checkpoints: the package's own modules, flattened, + `auto_map`, so that
`AutoModel.from_pretrained(repo, trust_remote_code=True)` runs where vl_models is not installed.

transformers' loader (dynamic_module_utils) fetches the file `auto_map` names and, recursively, the files it
imports as `from .x import y` from the same folder; it supports no packages or subfolders, and it checks that
every absolute import in each file is installed. So at save time the import closure of a method's classes is
computed from the installed package's source (with `ast`, lazy imports inside functions included) and each
module is written as one file of the checkpoint's folder with its vl_models imports made flat and relative:
`from ...layers.attention import X` -> `from .vl_models_layers_attention import X`. Package `__init__`s are
not copied (names they re-export are traced to their defining module), so remote code registers nothing with
the Auto classes; the one exception is the method's own `__init__` (`vl_models_models_<method>.py`), which only
defines its `METHOD` record (registration is in `vl_models.models`). The pipeline modules come too: the Inference
Endpoints handler (`handler.py`, see `hub/endpoint_handler.py`) runs them from the repo. The files then import torch, transformers, huggingface_hub, tokenizers, numpy and PIL only.

This module is itself part of that closure (`VlPreTrainedModel.save_pretrained` imports it): running as remote
code, `add_remote_code` copies the checkpoint's files it was loaded from instead of generating them.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import shutil
from pathlib import Path

from ..registry import companion_of, method_classes, method_of

CONFIG_FILE = "config.json"
PROCESSOR_FILE = "processor_config.json"
REMOTE_CODE_HEADER = "# Remote code of a vl_models checkpoint"
_HANDLER_HEADER = '"""Inference Endpoints custom handler of a vl_models checkpoint'  # hub/endpoint_handler.py
_OLD_SHIM_HEADER = '"""Remote code of a vl_models checkpoint'  # re-export shims of vl_models <= 0.1.0 checkpoints
# True where this file runs as a checkpoint's remote code (module transformers_modules.<repo>...)
_AS_REMOTE_CODE = not __name__.startswith("vl_models.")


# the pipeline modules handler.py runs (vl_models.pipelines.<name>; base and capabilities come as their imports)
PIPELINE_MODULES = ("zero_shot", "matching", "vqa", "grounding", "fill_mask")


def _flat_name(module: str) -> str:
    """The file (without .py) a package module becomes in a checkpoint's one folder: a method's own modules keep
    their name (`configuration_vlmae`, what `auto_map` names), shared ones carry their path
    (`vl_models.layers.attention` -> `vl_models_layers_attention`). transformers' loader fetches and imports
    only files beside the one `auto_map` names, not packages, so the package is flattened."""
    parts = module.split(".")
    return parts[3] if parts[:2] == ["vl_models", "models"] and len(parts) == 4 else "_".join(parts)


def _reference(cls: type) -> str:
    """"modeling_vlmae.VlmaeModel": the remote-code file of the defining module and the class."""
    return f"{_flat_name(cls.__module__)}.{cls.__name__}"


def auto_map(method, model_type: str | None = None) -> dict[str, str]:
    """`config.json`'s auto_map for a method: every Auto class `import vl_models` registers it with; for a
    companion's `model_type`, its config and AutoModel."""
    companion = companion_of(model_type) if model_type else None
    if companion is not None:
        return {"AutoConfig": _reference(companion.config_class), "AutoModel": _reference(companion)}
    spec = method_of(method)
    mapping = {
        "AutoConfig": _reference(spec.config_class),
        "AutoModel": _reference(spec.model_class),
        "AutoModelForPreTraining": _reference(spec.pretraining_class),
    }
    if "vqa" in spec.task_classes:
        mapping["AutoModelForVisualQuestionAnswering"] = _reference(spec.task_classes["vqa"])
    if "retrieval" in spec.task_classes:  # transformers' zero-shot-image-classification pipeline loads with it
        mapping["AutoModelForZeroShotImageClassification"] = _reference(spec.task_classes["retrieval"])
    if "grounding" in spec.task_classes:  # and zero-shot-object-detection with this (one box per label)
        mapping["AutoModelForZeroShotObjectDetection"] = _reference(spec.task_classes["grounding"])
    return mapping


def processor_auto_map(method) -> dict[str, str]:
    """`processor_config.json`'s auto_map."""
    return {"AutoProcessor": _reference(method_of(method).processor_class)}


def _image_processor_auto_map() -> dict[str, str]:
    """The auto_map of processor_config.json's `image_processor` entry: transformers loads a processor's image
    processor through AutoImageProcessor, which knows `VlImageProcessor` only once vl_models registered it."""
    from ..processing import VlImageProcessor

    return {"AutoImageProcessor": _reference(VlImageProcessor)}


def _bindings(module: str, node) -> list[tuple[str, str | None, str]] | None:
    """What a vl_models import statement of `module` binds: (defining module, attribute or None for the module
    itself, local name) per name; None for an import of another package. Names taken from a package's
    `__init__` are traced to the module that defines them, so no `__init__` (with its Auto-class
    registration) is ever copied."""
    if isinstance(node, ast.Import):
        names = [a for a in node.names if a.name.split(".")[0] == "vl_models"]
        if not names:
            return None
        if any(a.asname is None for a in names):
            raise ValueError(f"{module}: `import {names[0].name}` cannot be made relative; use `from ... import`")
        return [(a.name, None, a.asname) for a in names]
    if node.level:  # level 1 is the module's package: the module itself for a package's __init__
        parts = module.split(".") + ([""] if hasattr(importlib.import_module(module), "__path__") else [])
        target = ".".join(parts[:-node.level] + ([node.module] if node.module else []))
    elif node.module and node.module.split(".")[0] == "vl_models":
        target = node.module
    else:
        return None
    found = importlib.import_module(target)
    is_package = hasattr(found, "__path__")
    bound = []
    for alias in node.names:
        local = alias.asname or alias.name
        if not is_package:
            bound.append((target, alias.name, local))
            continue
        obj = getattr(found, alias.name, None)
        if obj is None:  # a submodule not imported by the package's __init__
            obj = importlib.import_module(f"{target}.{alias.name}")
        if inspect.ismodule(obj):
            bound.append((obj.__name__, None, local))
            continue
        owner = getattr(obj, "__module__", "") or ""
        name = getattr(obj, "__name__", alias.name)
        if not owner.startswith("vl_models.") or getattr(importlib.import_module(owner), name, None) is not obj:
            raise ValueError(f"{module}: cannot trace `{alias.name}` of {target} to the module that defines it")
        bound.append((owner, name, local))
    return bound


def _import_lines(bound: list[tuple[str, str | None, str]]) -> list[str]:
    """Flat relative imports for `_bindings`. transformers finds the files to fetch with a regex that only sees
    `from .x import y` at the start of a line, so a module bound as a whole is named that way first."""
    lines, names = [], {}
    for owner, attribute, local in bound:
        flat = _flat_name(owner)
        if attribute is None:
            lines += [f"from .{flat} import __name__ as _  # noqa: F401", f"from . import {flat} as {local}"]
        else:
            names.setdefault(flat, []).append(attribute if attribute == local else f"{attribute} as {local}")
    return [f"from .{flat} import {', '.join(items)}" for flat, items in names.items()] + lines


def _is_import_module_call(node) -> bool:
    """`importlib.import_module("vl_models.x")`: a lazy import of an optional module (the Triton kernel)."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
            and len(node.args) == 1 and not node.keywords and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str) and node.args[0].value.startswith("vl_models."))


def _flat_source(module: str, version: str) -> tuple[str, set[str]]:
    """The source of a package module with every vl_models import (lazy ones inside functions too) made a flat
    relative import, and the package modules it imports."""
    source = Path(importlib.import_module(module).__file__).read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    starts = [0]
    for text in lines:
        starts.append(starts[-1] + len(text))

    def offset(line: int, col: int) -> int:  # ast columns count UTF-8 bytes
        return starts[line - 1] + len(lines[line - 1].encode("utf-8")[:col].decode("utf-8"))

    edits, imported, lazy = [], set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom) and (bound := _bindings(module, node)) is not None:
            indent = lines[node.lineno - 1][: offset(node.lineno, node.col_offset) - offset(node.lineno, 0)]
            if indent.strip():
                raise ValueError(f"{module}:{node.lineno}: an import after other code on its line")
            text = ("\n" + indent).join(_import_lines(bound))
            edits.append((offset(node.lineno, node.col_offset), offset(node.end_lineno, node.end_col_offset), text))
            imported |= {owner for owner, _, _ in bound}
        elif _is_import_module_call(node):
            arg = node.args[0]
            edits.append((offset(arg.lineno, arg.col_offset), offset(arg.end_lineno, arg.end_col_offset),
                          f'".{_flat_name(arg.value)}", __package__'))
            lazy.add(arg.value)
    for start, end, text in sorted(edits, reverse=True):
        source = source[:start] + text + source[end:]
    if lazy:  # fetched with this file but imported only when needed (Triton on CUDA): name them for the loader
        source += ("\n\nif False:  # never runs: lets transformers' loader see the lazily imported files\n"
                   + "".join(f"    from .{_flat_name(m)} import __name__ as _  # noqa: F401\n" for m in sorted(lazy)))
    header = f"{REMOTE_CODE_HEADER}: {module} of vl_models {version}, generated at save time; do not edit.\n"
    return header + source, imported | lazy


def remote_code_files(method) -> dict[str, str]:
    """{file name: source} of a method's remote code: the package modules its classes need (their import
    closure, lazy imports included), flattened into one folder with relative imports. They import torch,
    transformers, huggingface_hub, tokenizers, numpy and PIL only, so a checkpoint runs without vl_models."""
    spec = method_of(method)
    version = importlib.import_module("vl_models").__version__  # not `import vl_models`: this file is remote code too
    # + the method's record (its package __init__, which registers nothing: vl_models.models does) and the
    # pipelines, for the Inference Endpoints handler (handler.py) to run the package's pipelines from the repo
    roots = {cls.__module__ for cls in method_classes(spec)} | {spec.pretraining_class.__module__.rpartition(".")[0]}
    todo, files, owners = sorted(roots | {f"vl_models.pipelines.{name}" for name in PIPELINE_MODULES}), {}, {}
    while todo:
        module = todo.pop()
        name = _flat_name(module) + ".py"
        if owners.setdefault(name, module) != module:
            raise ValueError(f"modules {owners[name]} and {module} both become {name}")
        if name not in files:
            files[name], imported = _flat_source(module, version)
            todo += sorted(imported)
    return dict(sorted(files.items()))


def _set_auto_map(path: Path, value: dict | None, key: str | None = None) -> None:
    """Set (or with None remove) the `auto_map` of a saved JSON config, or of its entry `key`, written as
    transformers writes it."""
    data = json.loads(path.read_text(encoding="utf-8"))
    entry = data if key is None else data.get(key)
    if not isinstance(entry, dict) or value is None and "auto_map" not in entry:
        return
    if value is None:
        del entry["auto_map"]
    else:
        entry["auto_map"] = value
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _copy_own_files(folder: Path) -> list[Path]:
    """Running as remote code: the files transformers fetched for this checkpoint lie beside this one (its
    module cache folder holds one repo revision); they are the code the saved config's auto_map names."""
    written = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name != "__init__.py" and path.read_text(encoding="utf-8").startswith(REMOTE_CODE_HEADER):
            shutil.copyfile(path, folder / path.name)
            written.append(folder / path.name)
    return written


def add_remote_code(folder: str | Path, method=None) -> list[Path]:
    """Write the remote-code files into a saved checkpoint folder and set `auto_map` in its config.json (and in
    processor_config.json when the folder holds a processor). `method` defaults to config.json's model_type.
    Returns the files written or changed."""
    folder = Path(folder)
    if _AS_REMOTE_CODE:  # no package to generate from; the config keeps the auto_map it was loaded with
        return _copy_own_files(folder)
    config_path, processor_path = folder / CONFIG_FILE, folder / PROCESSOR_FILE
    model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type", "") \
        if config_path.is_file() else None
    if method is None:
        if model_type is None:
            raise ValueError(f"`folder` must hold a saved model ({CONFIG_FILE}), got {folder} without one")
        method = model_type
    spec = method_of(method)
    written = []
    for name, source in remote_code_files(spec).items():
        (folder / name).write_text(source, encoding="utf-8")
        written.append(folder / name)
    if config_path.is_file():
        _set_auto_map(config_path, auto_map(spec, model_type))
        written.append(config_path)
    if processor_path.is_file():
        _set_auto_map(processor_path, processor_auto_map(spec))
        _set_auto_map(processor_path, _image_processor_auto_map(), key="image_processor")
        written.append(processor_path)
    return written


def require_version(minimum: str) -> None:
    """Called by the re-export shims in checkpoints saved by vl_models 0.1.0 (`from vl_models.hub.remote_code import
    require_version`), which still load where vl_models is installed. They were only written by 0.1.0, which every
    installed version satisfies."""


def strip_remote_code(folder: str | Path) -> None:
    """Remove `auto_map` and our remote-code files from a saved folder (e.g. a model loaded from a remote-code
    repo keeps its auto_map, which would point at files the folder does not have)."""
    folder = Path(folder)
    for name in (CONFIG_FILE, PROCESSOR_FILE):
        if (folder / name).is_file():
            _set_auto_map(folder / name, None)
    if (folder / PROCESSOR_FILE).is_file():
        _set_auto_map(folder / PROCESSOR_FILE, None, key="image_processor")
    for path in folder.glob("*.py"):
        if path.read_text(encoding="utf-8").startswith((REMOTE_CODE_HEADER, _OLD_SHIM_HEADER)):
            path.unlink()
    handler = folder / "handler.py"  # the Inference Endpoints handler runs the remote code: it goes with it
    if handler.is_file() and handler.read_text(encoding="utf-8").startswith(_HANDLER_HEADER):
        handler.unlink()
        (folder / "requirements.txt").unlink(missing_ok=True)


__all__ = ["REMOTE_CODE_HEADER", "add_remote_code", "auto_map", "companion_of", "method_of", "processor_auto_map",
           "remote_code_files", "require_version", "strip_remote_code"]
