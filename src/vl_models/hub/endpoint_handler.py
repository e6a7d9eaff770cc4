"""Inference Endpoints custom handler of a vl_models checkpoint: `push_to_hub` writes this file as the repo's
`handler.py` (with METHOD set) next to `requirements.txt`. See docs/hub.md, "Inference Endpoints and widgets".

It serves the payloads of the card's widget for the checkpoint's head and answers with the package's own
pipelines (docs/pipelines.md), so an endpoint gives what `pipeline("vl-...", model=repo)` gives:

- retrieval (zero-shot-image-classification): `{"inputs": image, "parameters": {"candidate_labels": [...] or
  "a, b", "hypothesis_template", "top_k"}}` -> `[{"score", "label"}]`, best first
- VQA: `{"inputs": {"image": image, "question": str}, "parameters": {"top_k"}}` -> `[{"score", "answer"}]`
- grounding (zero-shot-object-detection): `{"inputs": image, "parameters": {"candidate_labels": ..., "threshold",
  "top_k"}}` -> transformers' `zero-shot-object-detection` pipeline's answer: `[{"score", "label", "box": {"xmin",
  "ymin", "xmax", "ymax"}}]`, best first, at most one box per label (the head's), those with a score above
  `threshold` (default 0.1); or `{"inputs": {"image", "text"}}` -> `vl-visual-grounding`'s `{"box", "score", "text"}`
- pre-training / base (image-feature-extraction): `{"inputs": image}` -> the image encoder's hidden states,
  `[1, tokens, width]`; pre-training checkpoints also take `candidate_labels` (zero-shot, if trained with ITC)
  and `{"inputs": {"image", "text"}}` (fill-mask when the text holds the mask token, else image-text matching)
- VL-BEiT's visual tokenizer: `{"inputs": image}` -> its codes, `[1, patches]`

An image is a URL (fetched with a timeout), base64-encoded bytes (a `data:` URI too), raw bytes or a PIL image.
Where vl_models is installed it is used; otherwise the repo's own flattened modules are (the remote code).
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import json
import urllib.request
from pathlib import Path

import PIL.Image
import torch

METHOD = ""  # the checkpoint's method, written here at push time
URL_TIMEOUT = 10.0  # seconds; an unreachable URL must fail the request, not hang it
# vl_models.pipelines' task names and their classes' files in the repo (PIPELINE_TASKS, without vl_models)
PIPELINES = {
    "vl-zero-shot-image-classification": "vl_models_pipelines_zero_shot.VlZeroShotImageClassificationPipeline",
    "vl-image-text-matching": "vl_models_pipelines_matching.VlImageTextMatchingPipeline",
    "vl-visual-question-answering": "vl_models_pipelines_vqa.VlVisualQuestionAnsweringPipeline",
    "vl-visual-grounding": "vl_models_pipelines_grounding.VlVisualGroundingPipeline",
    "vl-fill-mask": "vl_models_pipelines_fill_mask.VlFillMaskPipeline",
}


def _code(path: str) -> dict:
    """The method record, `task_of`, `supported_tasks` and the pipeline classes: vl_models' where it is
    installed, else the repo's flattened modules through their one entry module (vl_models_endpoint.py, written
    at push time): transformers' remote-code loader gives each loaded file its own copy of the modules it
    imports, and the pipelines check the processor's class, so everything must come from one load."""
    try:
        import vl_models
        from vl_models.pipelines import PIPELINE_TASKS
    except ImportError:
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        return get_class_from_dynamic_module("vl_models_endpoint.ENDPOINT", path)
    return {"method": vl_models.get_method(METHOD), "task_of": vl_models.registry.task_of,
            "supported_tasks": vl_models.supported_tasks, "pipelines": PIPELINE_TASKS}


def load_image(value, field: str) -> PIL.Image.Image:
    """A URL, base64 string, bytes or PIL image -> RGB PIL image; ValueError naming `field` otherwise."""
    if isinstance(value, PIL.Image.Image):
        return value.convert("RGB")
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(value, timeout=URL_TIMEOUT) as response:
                value = response.read()
        except (OSError, ValueError) as err:  # URLError, HTTPError and timeouts are OSErrors
            raise ValueError(f"`{field}`: could not fetch the image at {value!r}: {err}") from err
    elif isinstance(value, str) and value.strip():
        try:
            value = base64.b64decode("".join(value.split(",", 1)[-1].split()), validate=True)  # a data: URI too
        except (binascii.Error, ValueError) as err:
            raise ValueError(f"`{field}` must be an image URL or base64-encoded image bytes, got a str that is "
                             f"neither: {value[:60]!r}") from err
    if not isinstance(value, bytes | bytearray) or not value:
        raise ValueError(f"`{field}` is required: an image URL, base64-encoded image bytes or an image; got "
                         f"{type(value).__name__} {str(value)[:60]!r}")
    try:
        return PIL.Image.open(io.BytesIO(value)).convert("RGB")
    except (OSError, ValueError) as err:
        raise ValueError(f"`{field}` is not a readable image ({len(value)} bytes): {err}") from err


def _labels(parameters: dict) -> list[str] | None:
    """`candidate_labels` as the zero-shot pipeline reads them: a list, or one comma-separated str."""
    labels = parameters.get("candidate_labels")
    if isinstance(labels, str):
        labels = [label.strip() for label in labels.split(",") if label.strip()]
    if labels is not None and (not isinstance(labels, list) or not labels):
        raise ValueError(f"`parameters.candidate_labels` must be a non-empty list of str or a comma-separated "
                         f"str, got {parameters.get('candidate_labels')!r}")
    return labels


class EndpointHandler:
    def __init__(self, path: str = ""):
        path = str(Path(path or ".").resolve())
        code = _code(path)
        spec = code["method"]
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
        classes = [spec.model_class, spec.pretraining_class, *spec.task_classes.values(), *spec.companions]
        by_name = {cls.__name__: cls for cls in classes}
        names = [name for name in config.get("architectures") or [] if name in by_name]
        self.model = by_name[names[0] if names else spec.pretraining_class.__name__].from_pretrained(path).eval()
        # the method's processor class (not AutoProcessor, whose remote-code load is another copy of the modules);
        # transformers loads its image processor through the auto_map, hence trust_remote_code
        self.processor = spec.processor_class.from_pretrained(path, trust_remote_code=True)
        self.head = code["task_of"](self.model)
        self.pipelines = {} if self.head == "companion" else {
            task: code["pipelines"][task](model=self.model, processor=self.processor)
            for task in code["supported_tasks"](self.model)}

    def __call__(self, data: dict):
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError(f"the request must be a JSON object with 'inputs' (and optional 'parameters'), got "
                             f"{str(data)[:100]!r}")
        inputs, parameters = data["inputs"], dict(data.get("parameters") or {})
        if not isinstance(parameters, dict):
            raise ValueError(f"`parameters` must be an object, got {data.get('parameters')!r}")
        text = None
        if isinstance(inputs, dict):
            image = load_image(inputs.get("image"), "inputs.image")
            text = inputs.get("question", inputs.get("text"))
        else:
            image = load_image(inputs, "inputs")
        labels = _labels(parameters)
        parameters.pop("candidate_labels", None)
        pipes = self.pipelines
        with torch.no_grad():
            if self.head == "companion":
                return self.model.get_codebook_indices(self._pixels(image)).tolist()
            if not pipes and self.head != "base":  # an NLVR2 head: no vl_models pipeline, so no made-up answer
                raise ValueError(f"a {self.head} checkpoint has no pipeline the handler serves; load it with "
                                 "vl_models and call the model (docs/pipelines.md lists what pipelines serve)")
            if "vl-visual-question-answering" in pipes:
                if not isinstance(text, str) or not text.strip():
                    raise ValueError("`inputs.question` is required: send {'inputs': {'image': ..., 'question': "
                                     "...}}")
                return pipes["vl-visual-question-answering"](image, text, **parameters)
            if "vl-visual-grounding" in pipes:
                if text is not None:
                    return pipes["vl-visual-grounding"](image, text, **parameters)
                if labels is None:
                    raise ValueError("`parameters.candidate_labels` is required: the expressions to find, a list "
                                     "or a comma-separated str")
                return self.detection(image, candidate_labels=labels, **parameters)
            if labels is not None or self.head == "retrieval":
                if labels is None:
                    raise ValueError("`parameters.candidate_labels` is required: a list of str or a "
                                     "comma-separated str")
                if "vl-zero-shot-image-classification" not in pipes:
                    raise ValueError(f"this {self.head} checkpoint has no trained ITC, so it does not take "
                                     f"`parameters.candidate_labels`; it supports {sorted(pipes)}")
                return pipes["vl-zero-shot-image-classification"](image, candidate_labels=labels, **parameters)
            if text is not None:
                mask = self.processor.tokenizer.mask_token
                task = "vl-fill-mask" if isinstance(text, str) and mask in text else "vl-image-text-matching"
                if task not in pipes:
                    raise ValueError(f"this {self.head} checkpoint does not support {task!r} for "
                                     f"`inputs.text`; it supports {sorted(pipes)}")
                return pipes[task](image, text, **parameters)
            if parameters:
                raise ValueError(f"image features take no parameters, got {sorted(parameters)}")
            return self.model.base_model(pixel_values=self._pixels(image)).image_embeds.tolist()

    @functools.cached_property
    def detection(self):
        """transformers' own zero-shot-object-detection pipeline on the grounding head (what the card's tag promises);
        the processor's image processor has the `post_process_object_detection` it calls."""
        from transformers import ZeroShotObjectDetectionPipeline

        class Detection(ZeroShotObjectDetectionPipeline):
            def check_model_type(self, supported_models):
                pass  # the repo's own class, which the remote code does not register with the Auto classes

        return Detection(model=self.model, tokenizer=self.processor.tokenizer,
                         image_processor=self.processor.image_processor)

    def _pixels(self, image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"].to(self.model.dtype)
