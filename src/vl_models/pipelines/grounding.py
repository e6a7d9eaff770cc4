"""`vl-visual-grounding`: the box a referring expression points at, in the input image's pixels."""

from __future__ import annotations

from ..processing import cxcywh_to_xyxy
from .base import VlPipeline, check_image, check_no_kwargs, check_pair, check_text, image_size, pair_inputs
from .capabilities import GROUNDING


class VlVisualGroundingPipeline(VlPipeline):
    """`pipe(image, "the red circle")` -> `{"box": [x0, y0, x1, y1], "score": 0.93, "text": ...}`.

    The box is in the input image's pixel coordinates (x to the right, y down). `score` is the head's
    confidence: the probability of the patch it chose to hold the object's centre (None for a model without one).
    Lists and dicts work as for the VQA pipeline (`pipe([images], text)`, `pipe({"image", "text"})`)."""

    task_name = GROUNDING

    def __call__(self, image, text=None, **kwargs):
        return super().__call__(pair_inputs(image, text, "text"), **kwargs)

    def _sanitize_parameters(self, **kwargs):
        check_no_kwargs(type(self).__name__, kwargs, "no parameters")
        return {}, {}, {}

    def preprocess(self, inputs):
        check_pair(inputs, "text")
        image = check_image(inputs["image"])
        text = check_text("text", inputs["text"])
        return {**self.encode_pair(image, text), "image_size": image_size(image), "text": text}

    def _forward(self, inputs):
        outputs = self.model(**self.model_inputs(inputs))
        # image_size and text: one per item (a list when collated), for the loader to split with the boxes
        return {"box": outputs.pred_boxes, "score": getattr(outputs, "scores", None),  # [B, 4], [B]
                "image_size": inputs["image_size"], "text": inputs["text"]}

    def postprocess(self, outputs):
        width, height = outputs["image_size"]
        score = outputs["score"]
        return {"box": cxcywh_to_xyxy(outputs["box"][0], width, height),
                "score": None if score is None else float(score[0]), "text": outputs["text"]}
