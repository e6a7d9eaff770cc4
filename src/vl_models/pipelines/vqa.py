"""`vl-visual-question-answering`: the top-k answers of a VQA head (a classifier over `config.id2label`).

transformers 5 removed its `visual-question-answering` pipeline (and refuses that task name), hence our own."""

from __future__ import annotations

from .base import VlPipeline, check_no_kwargs, check_pair, check_text, check_top_k, pair_inputs
from .capabilities import VQA


class VlVisualQuestionAnsweringPipeline(VlPipeline):
    """`pipe(image, "what color is the circle?", top_k=5)` -> `[{"score", "answer"}]`, best first.

    Scores are per-answer sigmoid probabilities (the head is trained with binary cross-entropy on VQA soft
    scores), so they need not sum to 1. Also `pipe([images], question)`, `pipe([images], [questions])` and
    `pipe({"image": ..., "question": ...})` (lists give a list of results)."""

    task_name = VQA

    def __call__(self, image, question=None, **kwargs):
        return super().__call__(pair_inputs(image, question, "question"), **kwargs)

    def _sanitize_parameters(self, top_k=None, **kwargs):
        check_no_kwargs(type(self).__name__, kwargs, "top_k")
        return {}, {}, ({} if top_k is None else {"top_k": check_top_k(top_k)})

    def preprocess(self, inputs):
        check_pair(inputs, "question")
        return self.encode_pair(inputs["image"], check_text("question", inputs["question"]))

    def _forward(self, inputs):
        return {"logits": self.model(**self.model_inputs(inputs)).logits}  # [B, A]

    def postprocess(self, outputs, top_k=5):
        probs = outputs["logits"][0].float().sigmoid()
        scores, ids = probs.topk(min(top_k, probs.numel()))
        id2label = self.model.config.id2label
        return [{"score": float(s), "answer": id2label[int(i)]} for s, i in zip(scores, ids)]
