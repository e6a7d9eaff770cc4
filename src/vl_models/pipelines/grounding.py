"""`vl-visual-grounding`: the box a referring expression points at, in the input image's pixels."""

from __future__ import annotations

from .base import VlPipeline, check_image, check_no_kwargs, check_pair, check_text, image_size, pair_inputs
from .capabilities import GROUNDING


def cxcywh_to_xyxy(box, width: int, height: int) -> list[float]:
    """Normalised (cx, cy, w, h) -> [x0, y0, x1, y1] in pixels, clipped to the image. The processor resizes the
    whole image to a square (no crop, no padding), so normalised coordinates map straight back."""
    cx, cy, w, h = (float(v) for v in box)
    x0, x1 = (cx - w / 2) * width, (cx + w / 2) * width
    y0, y1 = (cy - h / 2) * height, (cy + h / 2) * height
    return [min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height)]


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
