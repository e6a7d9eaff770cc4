"""`vl-fill-mask`: the MLM head's top-k tokens for each [MASK] of a text, conditioned on an image through the
fusion encoder (transformers' `fill-mask` is text-only)."""

from __future__ import annotations

from .base import VlPipeline, check_no_kwargs, check_text, check_top_k, pair_inputs
from .capabilities import FILL_MASK


class VlFillMaskPipeline(VlPipeline):
    """`pipe(image, "a [MASK] circle", top_k=5)` -> `[{"score", "token", "token_str", "sequence"}]`, best first
    (a list of such lists when the text has several masks, each filled on its own, as in `fill-mask`).

    Scores are the softmax over the tokenizer's vocabulary; `sequence` is the text with that token in place."""

    task_name = FILL_MASK

    def __call__(self, image, text=None, **kwargs):
        return super().__call__(pair_inputs(image, text, "text"), **kwargs)

    def _sanitize_parameters(self, top_k=None, **kwargs):
        check_no_kwargs(type(self).__name__, kwargs, "top_k")
        return {}, {}, ({} if top_k is None else {"top_k": check_top_k(top_k)})

    def preprocess(self, inputs):
        text = check_text("text", inputs["text"])
        tokenizer = self.processor.tokenizer
        encoded = self.encode_pair(inputs["image"], text)
        if not (encoded["input_ids"][0] == tokenizer.mask_token_id).any():
            raise ValueError(f"`text` must contain the mask token {tokenizer.mask_token!r} (within the processor's "
                             f"max_length={self.processor.max_length} tokens), got {text!r}")
        return encoded

    def _forward(self, inputs):
        ids = inputs["input_ids"]
        # the backbone's fused sequence starts with the text tokens for every method
        fused = self.backbone(pixel_values=inputs["pixel_values"].to(self.model.dtype), input_ids=ids,
                              attention_mask=inputs["attention_mask"]).multimodal_embeds  # [1, L(+image), D]
        positions = (ids[0] == self.processor.tokenizer.mask_token_id).nonzero()[:, 0]  # [M]
        return {"logits": self.model.mlm_head(fused[0, positions]), "input_ids": ids[0], "positions": positions}

    def postprocess(self, outputs, top_k=5):
        tokenizer = self.processor.tokenizer
        # the head may be wider than the tokenizer (padded vocabulary): only real tokens are candidates
        logits = outputs["logits"][:, :len(tokenizer)].float()  # [M, V]
        probs = logits.softmax(-1)
        results = []
        for row, position in zip(probs, outputs["positions"].tolist()):
            scores, ids = row.topk(min(top_k, row.numel()))
            candidates = []
            for score, token in zip(scores.tolist(), ids.tolist()):
                filled = outputs["input_ids"].clone()
                filled[position] = token
                candidates.append({"score": score, "token": token, "token_str": tokenizer.decode([token]),
                                   "sequence": tokenizer.decode(filled, skip_special_tokens=True)})
            results.append(candidates)
        return results[0] if len(results) == 1 else results
