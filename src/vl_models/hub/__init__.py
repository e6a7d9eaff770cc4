"""Sharing checkpoints on the Hugging Face Hub: push with a model card and remote code, load task heads.

`import vl_models` is enough for `AutoModel.from_pretrained("org/x")`; a repo pushed with `push_to_hub` also
loads with `trust_remote_code=True` where vl_models is not installed (the repo carries the code). See docs/hub.md.
"""

from ..registry import method_of, task_of  # where they live; re-exported for hub users
from .cards import (
    PIPELINE_TAGS,
    TASK_NAMES,
    build_model_card,
    eval_results,
    load_results,
    validate_card,
    widget_examples,
)
from .push import HubPushError, add_endpoint_handler, load_for_task, push_folder, push_to_hub, save_for_hub
from .remote_code import (
    add_remote_code,
    auto_map,
    processor_auto_map,
    remote_code_files,
    strip_remote_code,
)

__all__ = [
    "PIPELINE_TAGS",
    "TASK_NAMES",
    "HubPushError",
    "add_endpoint_handler",
    "add_remote_code",
    "auto_map",
    "build_model_card",
    "eval_results",
    "load_for_task",
    "load_results",
    "method_of",
    "processor_auto_map",
    "push_folder",
    "push_to_hub",
    "remote_code_files",
    "save_for_hub",
    "strip_remote_code",
    "task_of",
    "validate_card",
    "widget_examples",
]
