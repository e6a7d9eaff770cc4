"""The method registry: what `list_methods`, `get_config`, `build_processor` and the Auto classes know."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForPreTraining,
    AutoModelForVisualQuestionAnswering,
    AutoModelForZeroShotImageClassification,
    AutoModelForZeroShotObjectDetection,
)

from .configuration_utils import check_field_names
from .presets import check_size, merge, tower_preset
from .utils import describe


@dataclass(frozen=True)
class Method:
    """One VLP method: its config, models, processor and per-size preset overrides."""

    name: str  # the config's model_type
    config_class: type
    model_class: type  # XModel
    pretraining_class: type  # XForPreTraining
    processor_class: type
    task_classes: dict[str, type] = field(default_factory=dict)  # "retrieval" | "vqa" | "grounding" | "nlvr2"
    presets: dict[str, dict] = field(default_factory=dict)  # size -> overrides of the shared tower preset
    # size -> overrides of the scripts' training flags at that size (`training.TRAINING_PRESETS`)
    training_presets: dict[str, dict] = field(default_factory=dict)
    objectives: tuple[str, ...] = ()  # the `loss_<name>` fields its pre-training output always carries
    paper: str = ""
    # models trained on their own for the method (VL-BEiT's visual tokenizer): own model_type, loaded with
    # AutoModel, pushed to the Hub with the method's processor and remote code
    companions: tuple[type, ...] = ()


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a method and register its classes with transformers' Auto classes."""
    from .processing import register_processing_classes

    _METHODS[method.name] = method
    AutoConfig.register(method.name, method.config_class, exist_ok=True)
    AutoModel.register(method.config_class, method.model_class, exist_ok=True)
    AutoModelForPreTraining.register(method.config_class, method.pretraining_class, exist_ok=True)
    if "vqa" in method.task_classes:
        AutoModelForVisualQuestionAnswering.register(method.config_class, method.task_classes["vqa"], exist_ok=True)
    if "retrieval" in method.task_classes:  # transformers' zero-shot-image-classification pipeline loads with it
        AutoModelForZeroShotImageClassification.register(method.config_class, method.task_classes["retrieval"],
                                                         exist_ok=True)
    if "grounding" in method.task_classes:  # and zero-shot-object-detection with this, one box per label
        AutoModelForZeroShotObjectDetection.register(method.config_class, method.task_classes["grounding"],
                                                     exist_ok=True)
    register_processing_classes(method.config_class, method.processor_class)
    for companion in method.companions:
        AutoConfig.register(companion.config_class.model_type, companion.config_class, exist_ok=True)
        AutoModel.register(companion.config_class, companion, exist_ok=True)
        register_processing_classes(companion.config_class, method.processor_class)
    return method


def list_methods() -> list[str]:
    """The registered methods' names (their `model_type`)."""
    return list(_METHODS)


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise ValueError(f"`method` must be one of {list_methods()}, got {name!r}")
    return _METHODS[name]


# -- which method and which task a model, config, processor or class is: pipelines, cards and remote code
#    all ask here

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
        if isinstance(obj, type) and obj in method_classes(spec) or type(obj) in method_classes(spec):
            return spec
    raise ValueError(f"expected a vl_models model, config, processor or method name, got {describe(obj)}")


def method_classes(spec: Method) -> list[type]:
    return [spec.config_class, spec.model_class, spec.pretraining_class, spec.processor_class,
            *spec.task_classes.values(), *spec.companions, *(c.config_class for c in spec.companions)]


def task_of(model) -> str:
    """"pretraining", "base", a head's task name ("retrieval", "vqa", ...) or "companion" (a model the method
    trains on its own: VL-BEiT's visual tokenizer) from a model or its class."""
    cls = model if isinstance(model, type) else type(model)
    spec = method_of(model)
    if any(issubclass(cls, companion) for companion in spec.companions):
        return "companion"
    if issubclass(cls, spec.pretraining_class):
        return "pretraining"
    for task, task_class in spec.task_classes.items():
        if issubclass(cls, task_class):
            return task
    if issubclass(cls, spec.model_class):
        return "base"
    raise ValueError(f"`model` must be a vl_models model of method {spec.name!r}, got {describe(model)}")


def get_config(method: str, size: str = "base", **overrides):
    """The config of `method` at a named size; keyword overrides win (sub-config dicts merge key by key)."""
    spec = get_method(method)
    check_field_names(spec.config_class, overrides)
    kwargs = merge(merge(tower_preset(size), spec.presets.get(check_size(size), {})), overrides)
    return spec.config_class(**kwargs)


def build_processor(method: str, size: str = "base", tokenizer=None, **kwargs):
    """The method's processor for a size. `tokenizer`: a path or Hub id of a BERT-style tokenizer, a tokenizer
    object, or None for the built-in WordPiece tokenizer (tiny and small presets use its vocabulary)."""
    from .processing import build_processor as _build

    spec = get_method(method)
    config = get_config(method, size)
    return _build(spec.processor_class, image_size=config.vision_config.image_size, tokenizer=tokenizer, **kwargs)


def build(method: str, size: str = "base", task: str = "pretraining", tokenizer=None, **overrides):
    """A freshly initialised model and its processor: `model, processor = vl_models.build("vlmae", "tiny")`.

    task: "pretraining" (XForPreTraining), "model" (XModel), or one of the method's downstream tasks
    ("retrieval", "vqa", "grounding", "nlvr2")."""
    spec = get_method(method)
    classes = {"pretraining": spec.pretraining_class, "model": spec.model_class, **spec.task_classes}
    if task not in classes:
        raise ValueError(f"`task` must be one of {list(classes)} for {method}, got {task!r}")
    model = classes[task](get_config(method, size, **overrides))
    return model, build_processor(method, size, tokenizer=tokenizer)
