"""`vl-fill-mask`: the MLM head's top-k tokens for each [MASK] of a text, conditioned on an image through the
fusion encoder (transformers' `fill-mask` is text-only)."""

from __future__ import annotations

from .base import VlPipeline, check_no_kwargs, check_pair, check_text, check_top_k, pair_inputs
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
        check_pair(inputs, "text")
        text = check_text("text", inputs["text"])
        tokenizer = self.processor.tokenizer
        encoded = self.encode_pair(inputs["image"], text)
        if not (encoded["input_ids"][0] == tokenizer.mask_token_id).any():
            raise ValueError(f"`text` must contain the mask token {tokenizer.mask_token!r} (within the processor's "
                             f"max_length={self.processor.max_length} tokens), got {text!r}")
        return encoded

    def _forward(self, inputs):
        ids = inputs["input_ids"]  # [B, L]
        fused = self.backbone(**self.model_inputs(inputs)).multimodal_embeds  # [B, L(+image), D]
        # the fused sequence starts with the text tokens for every method; the head runs on the masks only, and
        # their logits go back to their places ([B, L, V], zero elsewhere) so that the loader can split the batch
        is_mask = ids == self.processor.tokenizer.mask_token_id
        masked = self.model.mlm_head(fused[:, :ids.shape[1]][is_mask])  # [masks in the batch, V]
        logits = masked.new_zeros(*ids.shape, masked.shape[-1])
        logits[is_mask] = masked
        return {"logits": logits, "input_ids": ids}

    def postprocess(self, outputs, top_k=5):
        tokenizer = self.processor.tokenizer
        ids = outputs["input_ids"][0]  # [L]: a batch's padding is special, so `sequence` skips it
        positions = (ids == tokenizer.mask_token_id).nonzero()[:, 0]  # [M]
        # the head may be wider than the tokenizer (padded vocabulary): only real tokens are candidates
        probs = outputs["logits"][0, positions, :len(tokenizer)].float().softmax(-1)  # [M, V]
        results = []
        for row, position in zip(probs, positions.tolist()):
            scores, tokens = row.topk(min(top_k, row.numel()))
            candidates = []
            for score, token in zip(scores.tolist(), tokens.tolist()):
                filled = ids.clone()
                filled[position] = token
                candidates.append({"score": score, "token": token, "token_str": tokenizer.decode([token]),
                                   "sequence": tokenizer.decode(filled, skip_special_tokens=True)})
            results.append(candidates)
        return results[0] if len(results) == 1 else results
