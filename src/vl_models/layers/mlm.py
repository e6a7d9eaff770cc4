"""The MLM decoder tied to the word embeddings, shared by every method with an MLM head.

BERT's masked-LM decoder reuses the word embedding matrix (`BertForMaskedLM`, ALBEF). `TiedMlmMixin` declares
that tie to transformers (`_tied_weights_keys`, `get_output_embeddings`), so `post_init`, `from_pretrained` and
`save_pretrained` tie, restore and deduplicate it, and `config.tie_word_embeddings = False` unties it. A teacher
copy (ALBEF's momentum model, ViLTA's frozen language teacher) ties its own decoder to its own embeddings: an EMA
of tied tensors stays tied, and the teacher's head starts where the student's does.

`resize_token_embeddings` resizes the student's embeddings and decoder (transformers), the decoder's bias, and every
teacher's embeddings, decoder and bias: a teacher keeps its own rows and gets the student's new ones.
"""

from __future__ import annotations

import torch
from torch import nn

from .heads import MlmHead


class TiedMlmMixin:
    """For a `PreTrainedModel` whose MLM head(s) read a text tower's word embeddings; call `tie_mlm_heads` in
    `__init__` before `post_init`."""

    def tie_mlm_heads(self, student: tuple[MlmHead, nn.Embedding], *teachers: tuple[MlmHead, nn.Embedding]) -> None:
        """Declare (MLM head, word embeddings) pairs: the student's first, then each teacher copy's."""
        names = {id(module): name for name, module in self.named_modules()}
        self._mlm_ties = [(names[id(head)], names[id(embeddings)]) for head, embeddings in (student, *teachers)]
        # {target: source}, as transformers 5 expects; an instance attribute because the paths depend on the method
        self._tied_weights_keys = {f"{head}.decoder.weight": f"{embeddings}.weight" for head, embeddings in self._mlm_ties}

    def get_output_embeddings(self) -> nn.Linear:
        return self.get_submodule(self._mlm_ties[0][0]).decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.get_submodule(self._mlm_ties[0][0]).decoder = new_embeddings

    def _resize_token_embeddings(self, new_num_tokens, pad_to_multiple_of=None, mean_resizing=True):
        embeddings = super()._resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        size = embeddings.weight.shape[0]
        decoder = self.get_output_embeddings()
        # a tied decoder's weight was resized with the embeddings, so transformers left its bias as it was (it pads
        # it later, in `tie_weights`): resize it now, so the teachers can copy its new entries
        _resize_rows(decoder.bias, size)
        for head_name, embeddings_name in self._mlm_ties[1:]:
            teacher_embeddings = self.get_submodule(embeddings_name)
            teacher_decoder = self.get_submodule(head_name).decoder
            _resize_rows(teacher_embeddings.weight, size, embeddings.weight)
            teacher_embeddings.num_embeddings = size
            if teacher_embeddings.padding_idx is not None and teacher_embeddings.padding_idx >= size:
                teacher_embeddings.padding_idx = None
            if teacher_decoder.weight is not teacher_embeddings.weight:
                _resize_rows(teacher_decoder.weight, size, decoder.weight)
            _resize_rows(teacher_decoder.bias, size, decoder.bias)
            teacher_decoder.out_features = size
        return embeddings


@torch.no_grad()
def _resize_rows(param: nn.Parameter | None, size: int, source: torch.Tensor | None = None) -> None:
    """Keep `param`'s first rows, up to `size`; rows added come from `source` (zeros without it). In place on the
    Parameter object (`.data`), so every module that shares it sees the new shape."""
    if param is None or param.shape[0] == size:
        return
    old = param.shape[0]
    if size < old:
        param.data = param.data[:size].clone()
        return
    extra = source[old:size] if source is not None else param.new_zeros((size - old, *param.shape[1:]))
    param.data = torch.cat([param.data, extra.detach().to(param.dtype)])


__all__ = ["TiedMlmMixin"]
