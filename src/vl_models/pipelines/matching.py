"""`vl-image-text-matching`: ITM match probability and ITC similarity of one image and one or more texts."""

from __future__ import annotations

from .base import VlPipeline, check_no_kwargs, check_texts, pair_inputs
from .capabilities import MATCHING, has_itc, has_itm


class VlImageTextMatchingPipeline(VlPipeline):
    """`pipe(image, "a red circle")` or `pipe(image, ["a red circle", "a blue square"])` ->
    `[{"text", "itm_score", "itc_score"}]`, one entry per text in the order given.

    itm_score: P(match) from the ITM head on the fused pair (softmax, class 1), in [0, 1]. itc_score: cosine
    similarity of the image and text ITC embeddings, in [-1, 1]. A score the checkpoint cannot give (no ITM head,
    or ITC not trained, see `capabilities`) is None. To rank many texts, sort by itm_score (ALBEF re-ranks the
    ITC top-k with ITM the same way)."""

    task_name = MATCHING

    def __init__(self, model, processor=None, **kwargs):
        super().__init__(model, processor, **kwargs)
        self.gives_itm, self.gives_itc = has_itm(model), has_itc(model)

    def __call__(self, image, text=None, **kwargs):
        if text is None and not isinstance(image, dict | list):
            raise ValueError("`text` is required: a str or a list of str, got None")
        if text is None:
            inputs = pair_inputs(image, None, "text")
        elif isinstance(image, list):  # several images, each against the same text(s)
            inputs = [{"image": item, "text": text} for item in image]
        else:
            inputs = {"image": image, "text": text}
        return super().__call__(inputs, **kwargs)

    def _sanitize_parameters(self, **kwargs):
        check_no_kwargs(type(self).__name__, kwargs, "no parameters")
        return {}, {}, {}

    def preprocess(self, inputs):
        texts = check_texts("text", inputs["text"])
        return {**self.encode_image(inputs["image"]), **self.encode_text(texts), "texts": texts}

    def _forward(self, inputs):
        backbone, model, ids = self.backbone, self.model, inputs["input_ids"]
        pixel_values = inputs["pixel_values"].to(model.dtype).expand(ids.shape[0], -1, -1, -1)  # the image per text
        # the backbone's forward: unimodal ITC features and the fused pair (methods fuse differently: VL-BEiT
        # runs one joint pass from the inputs, the ALBEF family cross-attends from the unimodal outputs)
        out = backbone(pixel_values=pixel_values, input_ids=ids, attention_mask=inputs["attention_mask"])
        itm = itc = None
        if self.gives_itm:
            itm = model.itm_head(out.multimodal_embeds[:, 0]).float().softmax(-1)[:, 1]  # [T]
        if self.gives_itc:
            itc = (out.image_feat * out.text_feat).sum(-1).float()  # [T] cosine: the features are unit vectors
        return {"texts": inputs["texts"], "itm": itm, "itc": itc}

    def postprocess(self, outputs):
        itm, itc = outputs["itm"], outputs["itc"]
        return [{"text": text,
                 "itm_score": None if itm is None else float(itm[i]),
                 "itc_score": None if itc is None else float(itc[i])}
                for i, text in enumerate(outputs["texts"])]
