"""`vl-zero-shot-image-classification`: rank candidate labels for an image by ITC similarity."""

from __future__ import annotations

import torch

from ..utils import describe
from .base import VlPipeline, check_no_kwargs, check_text, check_texts, check_top_k
from .capabilities import ZERO_SHOT

DEFAULT_TEMPLATE = "a photo of {}."


def itc_temperature(model) -> float:
    """The learned ITC temperature (clamped as in training), or the config's where the model has none."""
    temp = getattr(model, "temp", None)
    if isinstance(temp, torch.Tensor):
        return float(temp.detach().clamp(0.001, 0.5))
    return float(model.config.temperature)


class VlZeroShotImageClassificationPipeline(VlPipeline):
    """`pipe(image, candidate_labels=["a red circle", ...], hypothesis_template="a photo of {}.")` ->
    `[{"score", "label"}]`, best first; scores are the softmax over the labels of ITC similarity / temperature.

    `candidate_labels` is a list of str or one comma-separated str. Works with pre-training checkpoints of
    methods that train ITC and with retrieval heads (see `supported_tasks`)."""

    task_name = ZERO_SHOT

    def __call__(self, image, candidate_labels=None, **kwargs):
        if candidate_labels is None:
            raise ValueError("`candidate_labels` is required: a list of str or a comma-separated str, got None")
        return super().__call__(image, candidate_labels=candidate_labels, **kwargs)

    def _sanitize_parameters(self, candidate_labels=None, hypothesis_template=None, top_k=None, **kwargs):
        check_no_kwargs(type(self).__name__, kwargs, "candidate_labels, hypothesis_template and top_k")
        # the labels are the same for every image of a call: `_forward` encodes them once per batch
        forward, postprocess = {}, {}
        if candidate_labels is not None:
            if isinstance(candidate_labels, str):
                candidate_labels = [label.strip() for label in candidate_labels.split(",") if label.strip()]
            forward["candidate_labels"] = postprocess["candidate_labels"] = check_texts("candidate_labels",
                                                                                       candidate_labels)
        if hypothesis_template is not None:
            check_text("hypothesis_template", hypothesis_template)
            if "{}" not in hypothesis_template:
                raise ValueError(f"`hypothesis_template` must contain '{{}}' where the label goes, got "
                                 f"{describe(hypothesis_template)}")
            forward["hypothesis_template"] = hypothesis_template
        if top_k is not None:
            postprocess["top_k"] = check_top_k(top_k)
        return {}, forward, postprocess

    def preprocess(self, image):
        return self.encode_image(image)

    def _forward(self, inputs, candidate_labels, hypothesis_template=DEFAULT_TEMPLATE):
        texts = [hypothesis_template.replace("{}", label) for label in candidate_labels]  # other braces stay
        text = self._ensure_tensor_on_device(self.encode_text(texts), device=self.device)
        backbone = self.backbone
        image_feat = backbone.get_image_features(inputs["pixel_values"].to(self.model.dtype))  # [B, E]
        text_feat = backbone.get_text_features(text["input_ids"], text["attention_mask"])  # [L, E]
        return {"logits": image_feat @ text_feat.t() / itc_temperature(self.model)}  # [B, L]

    def postprocess(self, outputs, candidate_labels, top_k=None):
        scores = outputs["logits"][0].float().softmax(-1).tolist()
        ranked = sorted(zip(scores, candidate_labels), key=lambda pair: -pair[0])
        if top_k is not None:
            ranked = ranked[:top_k]
        return [{"score": score, "label": label} for score, label in ranked]
