"""Model cards for vl_models checkpoints (huggingface_hub `ModelCard` / `ModelCardData` / `EvalResult`).

The YAML metadata says `library_name: transformers` (the Hub then shows a "Use in Transformers" snippet),
`pipeline_tag` per head, `tags: [vl_models, custom_code, <method>]`; evaluation results become `model-index`
entries. `validate_card` runs the checks the Hub's validator would, locally.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..registry import method_of, task_of
from ..utils import describe

# the Hub task of each head (https://huggingface.co/tasks). Pre-trained encoders give features; retrieval
# heads score captions against an image; NLVR2 judges a sentence about a pair of images, which no Hub task or
# widget takes ("other", no widget: a one-image VQA widget could not be served).
PIPELINE_TAGS = {
    "pretraining": "image-feature-extraction",
    "base": "image-feature-extraction",
    "retrieval": "zero-shot-image-classification",
    "vqa": "visual-question-answering",
    "grounding": "zero-shot-object-detection",
    "nlvr2": "other",
    "companion": "image-feature-extraction",  # VL-BEiT's visual tokenizer: image -> discrete codes
}
TASK_NAMES = {
    "pretraining": "Vision-language pre-training",
    "base": "Image and text features",
    "retrieval": "Image-text retrieval",
    "vqa": "Visual question answering",
    "grounding": "Visual grounding",
    "nlvr2": "Visual reasoning (NLVR2)",
    "companion": "Visual tokenizer",
}
# Hub tasks a vision-language checkpoint may sensibly declare (validate_card accepts these)
KNOWN_PIPELINE_TAGS = frozenset(PIPELINE_TAGS.values()) | {
    "feature-extraction", "fill-mask", "image-classification", "image-text-to-text", "image-to-text",
    "object-detection", "document-question-answering", "visual-document-retrieval", "any-to-any", "other",
}
EXAMPLE_IMAGE = "http://images.cocodataset.org/val2017/000000039769.jpg"  # two cats on a couch (COCO val)
_REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # org/name (a relative path outputs/run matches too: checked apart)


def widget_examples(pipeline_tag: str) -> list[dict]:
    """Hub widget inputs for a pipeline tag (illustrative: the Hub runs no custom code)."""
    example = {"src": EXAMPLE_IMAGE, "example_title": "Two cats"}
    if pipeline_tag == "visual-question-answering":
        return [{**example, "text": "How many cats are there?"}]
    if pipeline_tag in ("zero-shot-image-classification", "zero-shot-object-detection"):
        return [{**example, "candidate_labels": "two cats on a couch, a dog in the snow"}]
    if pipeline_tag == "other":
        return []
    return [example]


# -- evaluation results -------------------------------------------------------------------------------------


def load_results(results) -> list[dict]:
    """Evaluation results as a list of `{"task", "dataset", "metrics": {name: value}}` dicts (optional
    "split", "config", "source": {"name", "url"}), from such a dict, a list of them, `{"results": [...]}`, or
    a JSON file holding any of those (what `examples/evaluate.py` writes)."""
    if isinstance(results, str | Path):
        path = Path(results)
        if not path.is_file():
            raise ValueError(f"`results` must be a results dict, list or JSON file, got missing file {path}")
        results = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(results, dict):
        results = results["results"] if "results" in results and "metrics" not in results else [results]
    if not isinstance(results, list):
        raise ValueError(f"`results` must be a dict, a list of dicts or a JSON file, got {describe(results)}")
    return [_check_result(i, entry) for i, entry in enumerate(results)]


def _check_result(index: int, entry) -> dict:
    where = f"results[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"`{where}` must be a dict with task, dataset and metrics, got {describe(entry)}")
    missing = [key for key in ("task", "dataset", "metrics") if key not in entry]
    if missing:
        raise ValueError(f"`{where}` must have keys task, dataset and metrics; it lacks {', '.join(missing)}")
    if not isinstance(entry["task"], str) or not entry["task"]:
        raise ValueError(
            f"`{where}['task']` must be a task name such as 'retrieval', got {describe(entry['task'])}"
        )
    dataset = entry["dataset"]
    if not (isinstance(dataset, str) and dataset or isinstance(dataset, dict) and dataset.get("name")):
        raise ValueError(
            f"`{where}['dataset']` must be a dataset id or a dict with a name, got {describe(dataset)}"
        )
    metrics = entry["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        raise ValueError(
            f"`{where}['metrics']` must be a non-empty dict of name -> number, got {describe(metrics)}"
        )
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"`{where}['metrics'][{name!r}]` must be a finite number, got {describe(value)}")
    return entry


def eval_results(results) -> list[EvalResult]:
    """`model-index` entries, one per metric. A task given by its vl_models name ("retrieval", "vqa", ...)
    is stored as its Hub task (`PIPELINE_TAGS`) with the readable name; other task names are kept as given."""
    out = []
    for entry in load_results(results):
        task = entry["task"]
        dataset = entry["dataset"] if isinstance(entry["dataset"], dict) else {"name": entry["dataset"]}
        source = entry.get("source") or {}
        for metric, value in entry["metrics"].items():
            out.append(EvalResult(
                task_type=PIPELINE_TAGS.get(task, task),
                task_name=TASK_NAMES.get(task),
                dataset_type=dataset.get("type", dataset["name"]),
                dataset_name=dataset["name"],
                dataset_split=dataset.get("split", entry.get("split")),
                dataset_config=dataset.get("config", entry.get("config")),
                dataset_revision=dataset.get("revision"),
                metric_type=metric,
                metric_value=value,
                source_name=source.get("name"),
                source_url=source.get("url"),
            ))
    return out


def _results_table(results: list[EvalResult]) -> str:
    rows = ["| task | dataset | split | metric | value |", "|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r.task_name or r.task_type} | {r.dataset_name} | {r.dataset_split or ''} | "
                    f"{r.metric_type} | {r.metric_value:.4g} |")
    return "\n".join(rows)


# -- the card -----------------------------------------------------------------------------------------------


def _companion_usage(spec, repo_id: str, remote_code: bool) -> str:
    return f"""```python
import vl_models  # registers {spec.name} and its visual tokenizer with the transformers Auto classes
from transformers import AutoModel, AutoProcessor
from PIL import Image

processor = AutoProcessor.from_pretrained("{repo_id}")
tokenizer = AutoModel.from_pretrained("{repo_id}")
pixel_values = processor(images=Image.open("cats.jpg"))["pixel_values"]
codes = tokenizer.get_codebook_indices(pixel_values)  # [1, num_patches] visual tokens
```

The masked-image-modeling targets of {spec.name} pre-training:

```bash
accelerate launch examples/pretrain.py --method {spec.name} --visual_tokenizer {repo_id}
```""" + (_REMOTE_CODE.format(repo_id=repo_id) if remote_code else "")


def _usage(spec, task: str, repo_id: str, remote_code: bool) -> str:
    if task == "companion":
        return _companion_usage(spec, repo_id, remote_code)
    if task in ("pretraining", "base"):
        head, note = "AutoModel", "  # encoders + fusion; AutoModelForPreTraining adds the pre-training heads"
    else:  # the Auto class `import vl_models` registers the head with (None: the head's own class)
        head, note = _AUTO_CLASSES.get(task), ""
    load = f'{head}.from_pretrained("{repo_id}")' if head else \
        f'vl_models.{spec.task_classes[task].__name__}.from_pretrained("{repo_id}")'
    imports = ", ".join(sorted({head or "AutoModel", "AutoModel", "AutoProcessor"}))
    return f"""```python
import vl_models  # registers {spec.name} with the transformers Auto classes
from transformers import {imports}
from PIL import Image

processor = AutoProcessor.from_pretrained("{repo_id}")
model = {load}{note}
inputs = processor(images=Image.open("cats.jpg"), text="two cats on a couch")
outputs = model(**inputs)
```""" + (_PIPELINE.format(tag=PIPELINE_TAGS[task], repo_id=repo_id) if task in ("retrieval", "grounding") else "") \
        + (_REMOTE_CODE.format(repo_id=repo_id) if remote_code else "") \
        + (_FINE_TUNE.format(repo_id=repo_id) if task in ("pretraining", "base") else "")


# the Auto classes of the heads: transformers' pipeline of the card's `pipeline_tag` loads retrieval and grounding
# heads with theirs (VQA's pipeline was removed in transformers 5; the tag stays the Hub's task)
_AUTO_CLASSES = {"vqa": "AutoModelForVisualQuestionAnswering", "retrieval": "AutoModelForZeroShotImageClassification",
                 "grounding": "AutoModelForZeroShotObjectDetection"}
_PIPELINE = """

transformers' own `{tag}` pipeline serves this checkpoint (`trust_remote_code=True` without vl_models):

```python
from transformers import pipeline

pipe = pipeline("{tag}", model="{repo_id}")
pipe("cats.jpg", candidate_labels=["two cats on a couch", "a dog in the snow"])
```"""


_REMOTE_CODE = """

Without vl_models (this repo carries the code it needs; it imports torch, transformers, tokenizers, numpy and
PIL only):

```python
model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True)
```"""

_FINE_TUNE = """

A downstream head starts from this checkpoint; the keys it initialises and the ones it leaves out are
reported:

```python
import vl_models.hub

model, info = vl_models.hub.load_for_task("{repo_id}", "vqa", num_labels=3129)
print(info["missing_keys"], info["unexpected_keys"])
```"""


def _describe_config(config) -> str:
    vision = config.vision_config
    image = (f"- image encoder: ViT, {vision.num_hidden_layers} layers, width {vision.hidden_size}, "
             f"{vision.image_size}px images in {vision.patch_size}px patches\n")
    if not hasattr(config, "text_config"):  # a visual tokenizer
        return image + (f"- codebook: {config.num_codes} codes of dimension {config.code_dim}; a "
                        f"{config.decoder_layers}-layer decoder reconstructing {config.reconstruction_target}")
    text = config.text_config
    return image + (f"- text encoder: BERT-style, {text.num_hidden_layers} text + {text.num_fusion_layers} fusion "
                    f"layers, width {text.hidden_size}, vocabulary {text.vocab_size}")


def _start_checkpoint(model, repo_id: str) -> str | None:
    """The Hub id a model was loaded from (`from_pretrained` records it as `config._name_or_path`), e.g. the
    pre-trained checkpoint a fine-tuning run started from (examples/finetune.py --model_name_or_path); None for
    a model built from a config, loaded from a local folder, or loaded from the repo it is pushed to."""
    source = str(getattr(model.config, "_name_or_path", "") or "")
    if not _HUB_ID.match(source) or source == repo_id or Path(source).exists():
        return None
    return source


def build_model_card(model, repo_id: str, *, results=None, datasets=None, license: str = "apache-2.0",
                     base_model=None, language="en", tags=(), pipeline_tag: str | None = None,
                     widget: list[dict] | None = None, model_name: str | None = None,
                     description: str = "", remote_code: bool = True) -> ModelCard:
    """The README.md of a checkpoint of `model` (a vl_models model) pushed to `repo_id`.

    results: evaluation results (see `load_results`) -> model-index. datasets: training data (Hub ids).
    pipeline_tag / widget default per head (`PIPELINE_TAGS`, `widget_examples`). remote_code: whether the
    repo holds remote code (`custom_code` tag, trust_remote_code snippet). base_model: the Hub id the model was
    fine-tuned from; by default the one it was loaded from (`config._name_or_path`, see `_start_checkpoint`)."""
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        raise ValueError(f"`repo_id` must look like 'org/name', got {describe(repo_id)}")
    spec, task = method_of(model), task_of(model)
    if base_model is None:
        base_model = _start_checkpoint(model, repo_id)
    pipeline_tag = pipeline_tag or PIPELINE_TAGS[task]
    model_name = model_name or repo_id.rsplit("/", 1)[-1]
    evals = eval_results(results) if results is not None else None
    data = ModelCardData(
        library_name="transformers", pipeline_tag=pipeline_tag, license=license, language=language,
        datasets=[datasets] if isinstance(datasets, str) else (list(datasets) if datasets else None),
        base_model=base_model, model_name=model_name, eval_results=evals or None,
        tags=["vl_models", *(["custom_code"] if remote_code else []), spec.name, *tags],
        widget=widget if widget is not None else widget_examples(pipeline_tag),
    )
    training = ", ".join(f"[{d}](https://huggingface.co/datasets/{d})" for d in data.datasets or [])
    sections = [
        f"# {model_name}\n",
        description or f"A {spec.name.upper()} checkpoint ({TASK_NAMES[task].lower()}) written by vl_models "
        "(`pip install vl-models`), which implements vision-language pre-training methods as Hugging Face "
        "transformers models.",
        "\n## Model details\n",
        f"- method: {spec.name} ({spec.paper})\n- head: {TASK_NAMES[task]} (`{type(model).__name__}`)\n"
        + _describe_config(model.config)
        + (f"\n- fine-tuned from: [{base_model}](https://huggingface.co/{base_model})" if base_model else ""),
        "\n## Usage\n",
        _usage(spec, task, repo_id, remote_code),
        "\n## Training data\n",
        training or "Not stated.",
        "\n## Evaluation\n",
        _results_table(evals) if evals else "No evaluation results were given.",
        "\n## Files\n",
        "Weights are in safetensors."
        + (" The `*.py` files are the vl_models modules this model needs, for `trust_remote_code=True`; they are "
           "generated from the package at save time." if remote_code else ""),
        "\n## Reference\n",
        spec.paper,
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(sections) + "\n")


def validate_card(card: ModelCard | str) -> ModelCard:
    """The Hub's metadata checks, locally: the card parses back (YAML and model-index), library_name is
    transformers, pipeline_tag is a Hub task, tags name vl_models, ids look like Hub ids, metric values are
    numbers and widget entries have inputs. Raises ValueError listing every problem; returns the parsed
    card."""
    text = str(card)
    try:
        parsed = ModelCard(text)
    except ValueError as err:
        raise ValueError(f"the card's metadata does not parse: {err}") from err
    data, problems = parsed.data, []
    if not text.startswith("---"):
        problems.append("no YAML metadata block at the top")
    if data.library_name != "transformers":
        problems.append(f"library_name must be 'transformers', got {data.library_name!r}")
    if data.pipeline_tag not in KNOWN_PIPELINE_TAGS:
        problems.append(
            f"pipeline_tag must be one of {sorted(KNOWN_PIPELINE_TAGS)}, got {data.pipeline_tag!r}"
        )
    if "vl_models" not in (data.tags or []):
        problems.append(f"tags must include 'vl_models', got {data.tags!r}")
    if not isinstance(data.license, str) or not re.fullmatch(r"[a-z0-9.\-]+", data.license):
        problems.append(f"license must be a Hub license id such as 'apache-2.0', got {data.license!r}")
    for key in ("datasets", "base_model"):
        ids = getattr(data, key) or []
        for repo in [ids] if isinstance(ids, str) else ids:
            if not isinstance(repo, str) or not _REPO_ID.match(repo):
                problems.append(f"{key} must hold Hub ids, got {repo!r}")
    for result in data.eval_results or []:
        value = result.metric_value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            problems.append(f"model-index metric {result.metric_type!r} must be a number, got {value!r}")
    for i, example in enumerate(data.get("widget") or []):
        if not isinstance(example, dict) or not ({"src", "text"} & set(example)):
            problems.append(f"widget[{i}] must be a dict with 'src' or 'text', got {example!r}")
    if problems:
        raise ValueError("invalid model card metadata:\n- " + "\n- ".join(problems))
    return parsed


__all__ = [
    "PIPELINE_TAGS",
    "TASK_NAMES",
    "build_model_card",
    "eval_results",
    "load_results",
    "task_of",
    "validate_card",
    "widget_examples",
]
