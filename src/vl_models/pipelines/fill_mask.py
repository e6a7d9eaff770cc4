"""`vl-fill-mask`: the MLM head's top-k tokens for each [MASK] of a text, conditioned on an image through the
fusion encoder (transformers' `fill-mask` is text-only)."""

from __future__ import annotations

import logging

from .base import VlPipeline, check_no_kwargs, check_pair, check_text, check_top_k, pair_inputs
from .capabilities import FILL_MASK

logger = logging.getLogger(__name__)


class VlFillMaskPipeline(VlPipeline):
    """`pipe(image, "a [MASK] circle", top_k=5)` -> `[{"score", "token", "token_str", "sequence"}]`, best first
    (a list of such lists when the text has several masks, each filled on its own, as in `fill-mask`).

    Scores are the softmax over the tokenizer's vocabulary; `sequence` is the text with that token in place.
    `targets` (a word or a list), as in transformers' `fill-mask`: only those tokens are ranked, each with its
    score over the whole vocabulary; a target that is no single token is replaced by its first piece, with a
    warning."""

    task_name = FILL_MASK

    def __call__(self, image, text=None, **kwargs):
        return super().__call__(pair_inputs(image, text, "text"), **kwargs)

    def _sanitize_parameters(self, top_k=None, targets=None, **kwargs):
        check_no_kwargs(type(self).__name__, kwargs, "top_k and targets")
        post = {} if top_k is None else {"top_k": check_top_k(top_k)}
        if targets is not None:
            post["target_ids"] = self._target_ids(targets)
        return {}, {}, post

    def _target_ids(self, targets) -> list[int]:
        targets = [targets] if isinstance(targets, str) else targets
        if not isinstance(targets, list | tuple) or not targets or not all(isinstance(t, str) for t in targets):
            raise ValueError(f"`targets` must be a str or a non-empty list of str, got {targets!r}")
        tokenizer, ids = self.processor.tokenizer, []
        vocab = tokenizer.get_vocab()
        for target in targets:
            if target in vocab:
                ids.append(vocab[target])
                continue
            pieces = tokenizer(target, add_special_tokens=False)["input_ids"]
            if not pieces:
                raise ValueError(f"`targets`: {target!r} gives no token")
            logger.warning("target %r is not one token of the vocabulary; using its first piece %r", target,
                           tokenizer.convert_ids_to_tokens(pieces[0]))
            ids.append(pieces[0])
        return list(dict.fromkeys(ids))  # each once, in the order given

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

    def postprocess(self, outputs, top_k=5, target_ids=None):
        tokenizer = self.processor.tokenizer
        ids = outputs["input_ids"][0]  # [L]: a batch's padding is special, so `sequence` skips it
        positions = (ids == tokenizer.mask_token_id).nonzero()[:, 0]  # [M]
        # the head may be wider than the tokenizer (padded vocabulary): only real tokens are candidates
        probs = outputs["logits"][0, positions, :len(tokenizer)].float().softmax(-1)  # [M, V]
        results = []
        candidates_ids = None if target_ids is None else probs.new_tensor(target_ids).long()
        for row, position in zip(probs, positions.tolist()):
            if candidates_ids is None:
                scores, tokens = row.topk(min(top_k, row.numel()))
            else:
                scores, best = row[candidates_ids].topk(min(top_k, len(candidates_ids)))
                tokens = candidates_ids[best]
            candidates = []
            for score, token in zip(scores.tolist(), tokens.tolist()):
                filled = ids.clone()
                filled[position] = token
                candidates.append({"score": score, "token": token, "token_str": tokenizer.decode([token]),
                                   "sequence": tokenizer.decode(filled, skip_special_tokens=True)})
            results.append(candidates)
        return results[0] if len(results) == 1 else results
