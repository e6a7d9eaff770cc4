"""Remote code for Hub checkpoints: thin shim files + `auto_map`, so that
`AutoModel.from_pretrained(repo, trust_remote_code=True)` works where vl_models is installed but not imported.

transformers copies a custom class's source file next to the weights (`custom_object_save`), but only
follows same-folder relative imports, and our modules import `...layers` and `...configuration_utils`. So a
checkpoint carries one small file per module instead (`configuration_vlmae.py`, `modeling_vlmae.py`,
`processing_vlmae.py`) that re-exports the classes of the installed package. transformers' `check_imports`
then requires `vl_models` to be importable and names it in its error ("pip install vl_models") if it is not.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..registry import Method, get_method, list_methods
from ..utils import describe

CONFIG_FILE = "config.json"
PROCESSOR_FILE = "processor_config.json"
_SHIM_HEADER = '"""Remote code of a vl_models checkpoint'


def _companion_entry(model_type: str) -> tuple[Method, type] | None:
    """(method, companion class) for a companion's `model_type` (VL-BEiT's visual tokenizer), if it is one."""
    for name in list_methods():
        for companion in get_method(name).companions:
            if companion.config_class.model_type == model_type:
                return get_method(name), companion
    return None


def companion_of(model_type: str) -> type | None:
    """The companion model class whose config has this `model_type`, if any."""
    entry = _companion_entry(model_type)
    return entry[1] if entry else None


def _method_of_type(model_type: str) -> Method:
    entry = _companion_entry(model_type)
    return entry[0] if entry else get_method(model_type)  # get_method raises, naming the methods


def method_of(obj) -> Method:
    """The method record of a model, config, processor, class or `model_type` (a method's or a companion's)."""
    if isinstance(obj, Method):
        return obj
    if isinstance(obj, str):
        return _method_of_type(obj)
    config = getattr(obj, "config", obj)
    model_type = getattr(config, "model_type", None)
    if isinstance(model_type, str):
        return _method_of_type(model_type)
    for name in list_methods():  # processors carry no config: find the method whose class this is
        spec = get_method(name)
        if isinstance(obj, type) and obj in _classes(spec) or type(obj) in _classes(spec):
            return spec
    raise ValueError(f"expected a vl_models model, config, processor or method name, got {describe(obj)}")


def _classes(spec: Method) -> list[type]:
    return [spec.config_class, spec.model_class, spec.pretraining_class, spec.processor_class,
            *spec.task_classes.values(), *spec.companions, *(c.config_class for c in spec.companions)]


def _reference(cls: type) -> str:
    """"modeling_vlmae.VlmaeModel": the shim file (the defining module's last name) and the class."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"


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
    return mapping


def processor_auto_map(method) -> dict[str, str]:
    """`processor_config.json`'s auto_map."""
    return {"AutoProcessor": _reference(method_of(method).processor_class)}


def shim_files(method) -> dict[str, str]:
    """{file name: source} of the shims of a method: each re-exports every class of the method that its
    module defines (so task heads load through `get_class_from_dynamic_module` too)."""
    import vl_models

    spec = method_of(method)
    modules: dict[str, list[type]] = {}
    for cls in _classes(spec):
        modules.setdefault(cls.__module__, []).append(cls)
    files = {}
    for module, classes in modules.items():
        name = module.rsplit(".", 1)[-1] + ".py"
        if name in files:
            raise ValueError(
                f"two modules of method {spec.name!r} end in the same name {name!r}: {sorted(modules)}"
            )
        files[name] = _shim_source(module, sorted({c.__name__ for c in classes}, key=str.lower),
                                   vl_models.__version__)
    return files


def _shim_source(module: str, names: list[str], version: str) -> str:
    imports = "".join(f"    {name},\n" for name in names)
    exports = "".join(f'    "{name}",\n' for name in names)
    return (
        f"{_SHIM_HEADER}: the classes live in the vl_models package\n"
        f'(pip install "vl-models>={version}"); this file only re-exports them for trust_remote_code."""\n\n'
        f"from vl_models.hub.remote_code import require_version\n\n"
        f'require_version("{version}")\n\n'
        f"from {module} import (  # noqa: E402\n{imports})\n\n"
        f"__all__ = [\n{exports}]\n"
    )


def require_version(minimum: str) -> None:
    """Called by the shims: the installed vl_models must be at least the version that wrote the checkpoint."""
    from packaging.version import Version

    import vl_models

    if Version(vl_models.__version__) < Version(minimum):
        raise ImportError(
            f"this checkpoint was written by vl_models {minimum}, but vl_models {vl_models.__version__} is "
            f'installed: pip install -U "vl-models>={minimum}"'
        )


def _set_auto_map(path: Path, value: dict | None) -> None:
    """Set (or with None remove) the `auto_map` of a saved JSON config, written as transformers writes it."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if value is None and "auto_map" not in data:
        return
    if value is None:
        del data["auto_map"]
    else:
        data["auto_map"] = value
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def add_remote_code(folder: str | Path, method=None) -> list[Path]:
    """Write the shims into a saved checkpoint folder and set `auto_map` in its config.json (and in
    processor_config.json when the folder holds a processor). `method` defaults to config.json's model_type.
    Returns the files written or changed."""
    folder = Path(folder)
    config_path, processor_path = folder / CONFIG_FILE, folder / PROCESSOR_FILE
    model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type", "") \
        if config_path.is_file() else None
    if method is None:
        if model_type is None:
            raise ValueError(f"`folder` must hold a saved model ({CONFIG_FILE}), got {folder} without one")
        method = model_type
    spec = method_of(method)
    written = []
    for name, source in shim_files(spec).items():
        (folder / name).write_text(source, encoding="utf-8")
        written.append(folder / name)
    if config_path.is_file():
        _set_auto_map(config_path, auto_map(spec, model_type))
        written.append(config_path)
    if processor_path.is_file():
        _set_auto_map(processor_path, processor_auto_map(spec))
        written.append(processor_path)
    return written


def strip_remote_code(folder: str | Path) -> None:
    """Remove `auto_map` and our shims from a saved folder (e.g. a model loaded from a remote-code repo keeps
    its auto_map, which would point at files the folder does not have)."""
    folder = Path(folder)
    for name in (CONFIG_FILE, PROCESSOR_FILE):
        if (folder / name).is_file():
            _set_auto_map(folder / name, None)
    for path in folder.glob("*.py"):
        if path.read_text(encoding="utf-8").startswith(_SHIM_HEADER):
            path.unlink()


__all__ = ["add_remote_code", "auto_map", "companion_of", "method_of", "processor_auto_map", "require_version",
           "shim_files", "strip_remote_code"]
