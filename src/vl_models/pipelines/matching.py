"""`vl-image-text-matching`: ITM match probability and ITC similarity of one image and one or more texts."""

from __future__ import annotations

from transformers.pipelines.base import ChunkPipeline

from .base import VlPipeline, check_no_kwargs, check_pair, check_texts, with_text
from .capabilities import MATCHING, has_itc, has_itm


class VlImageTextMatchingPipeline(VlPipeline, ChunkPipeline):
    """`pipe(image, "a red circle")` or `pipe(image, ["a red circle", "a blue square"])` ->
    `[{"text", "itm_score", "itc_score"}]`, one entry per text in the order given.

    itm_score: P(match) from the ITM head on the fused pair (softmax, class 1), in [0, 1]. itc_score: cosine
    similarity of the image and text ITC embeddings, in [-1, 1]. A score the checkpoint cannot give (no ITM head,
    or ITC not trained, see `capabilities`) is None. To rank many texts, sort by itm_score (ALBEF re-ranks the
    ITC top-k with ITM the same way).

    A ChunkPipeline: each (image, text) pair is one chunk, so a batch holds pairs (of one image or of several)
    and `postprocess` gathers an image's pairs back into its list."""

    task_name = MATCHING

    def __init__(self, model, processor=None, **kwargs):
        super().__init__(model, processor, **kwargs)
        self.gives_itm, self.gives_itc = has_itm(model), has_itc(model)

    def __call__(self, image, text=None, **kwargs):
        # `text` (a str or a list) goes with every image; without it, the inputs are {"image", "text"} dicts
        return super().__call__(image if text is None else with_text(image, "text", text), **kwargs)

    def _sanitize_parameters(self, **kwargs):
        check_no_kwargs(type(self).__name__, kwargs, "no parameters")
        return {}, {}, {}

    def preprocess(self, inputs):
        check_pair(inputs, "text")
        texts = check_texts("text", inputs["text"])
        image = self.encode_image(inputs["image"])
        for i, text in enumerate(texts):
            yield {**image, **self.encode_text([text]), "text": text, "is_last": i == len(texts) - 1}

    def _forward(self, inputs):
        # the backbone's forward: unimodal ITC features and the fused pair (methods fuse differently: VL-BEiT
        # runs one joint pass from the inputs, the ALBEF family cross-attends from the unimodal outputs)
        out = self.backbone(**self.model_inputs(inputs))
        itm = itc = None
        if self.gives_itm:
            itm = self.model.itm_head(out.multimodal_embeds[:, 0]).float().softmax(-1)[:, 1]  # [B]
        if self.gives_itc:
            itc = (out.image_feat * out.text_feat).sum(-1).float()  # [B] cosine: the features are unit vectors
        return {"text": inputs["text"], "is_last": inputs["is_last"], "itm": itm, "itc": itc}

    def postprocess(self, outputs):
        return [{"text": out["text"],
                 "itm_score": None if out["itm"] is None else float(out["itm"][0]),
                 "itc_score": None if out["itc"] is None else float(out["itc"][0])}
                for out in outputs]
