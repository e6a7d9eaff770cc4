"""`VlBeitForPreTraining`: one masked-prediction task on text-only, image-only and image-text rows.

A batch names its rows by keys. `pixel_values` + `input_ids` are pairs; either alone is an image-only or a
text-only batch. A mixed batch adds the other kinds under prefixed keys: `text_input_ids` /
`text_attention_mask` (text-only rows) and `image_pixel_values` (image-only rows). Masks: `mlm_input_ids` +
`mlm_labels` and `bool_masked_pos` for the rows of the main keys, `text_mlm_input_ids` + `text_mlm_labels` and
`image_bool_masked_pos` for the prefixed ones; what no collator gave is drawn from `generator`.
"""

from __future__ import annotations

import torch
from torch import nn

from ...layers.heads import MlmHead, TokenClassifierHead
from ...layers.losses import masked_cross_entropy, select_masked
from ...layers.masking import beit_image_mask, mlm_inputs
from ...layers.mim import TokenizerTargets, code_statistics
from ...layers.mlm import TiedMlmMixin
from ...layers.momentum import freeze
from ...layers.outputs import VlPreTrainingOutput
from ...utils import check_same_batch, check_tensor, describe
from .configuration_vl_beit import VlBeitConfig
from .modeling_vl_beit import VlBeitModel, VlBeitPreTrainedModel
from .tokenizer_vl_beit import VlBeitVisualTokenizer


class VlBeitForPreTraining(TiedMlmMixin, VlBeitPreTrainedModel):
    """MLM (text rows, language experts) + MIM (image rows, vision experts) + masked VL modeling (pairs: masked
    text and masked patches recovered through the VL experts). `loss` = the config-weighted sum of the
    objectives the batch has data for; an absent one is None. The MLM decoder is tied to the word embeddings
    (`TiedMlmMixin`).

    `visual_tokenizer`: where the MIM targets come from. By default a `VlBeitVisualTokenizer` built from
    `config.tokenizer_config`, frozen and saved with the model; load a trained one with `set_visual_tokenizer`.
    Any other module mapping pixel_values [B, C, H, W] to code indices [B, N] in [0, num_codes) works too; it is
    kept frozen and out of checkpoints (pass it again to `from_pretrained`).
    """

    supports_unimodal_inputs = True  # text-only and image-only batches train too (tests gate on it)

    def __init__(self, config: VlBeitConfig, visual_tokenizer: nn.Module | None = None):
        super().__init__(config)
        text, vision = config.text_config, config.vision_config
        self.vl_beit = VlBeitModel(config)
        self.vl_beit.patch_embeddings.mask_token.requires_grad_(True)
        # ITC projections serve retrieval fine-tuning only: frozen, so every trainable parameter gets a gradient
        freeze(self.vl_beit.vision_proj)
        freeze(self.vl_beit.text_proj)
        self.mlm_head = MlmHead(vision.hidden_size, text.vocab_size, text.hidden_act, text.layer_norm_eps)
        self.mim_head = TokenClassifierHead(vision.hidden_size, config.tokenizer_config.num_codes,
                                            vision.layer_norm_eps)
        self.visual_tokenizer = freeze(VlBeitVisualTokenizer(config.tokenizer_config))
        self.tie_mlm_heads((self.mlm_head, self.vl_beit.get_input_embeddings()))
        self.post_init()
        if visual_tokenizer is not None:
            self.set_visual_tokenizer(visual_tokenizer)

    def train(self, mode: bool = True):
        super().train(mode)
        self.visual_tokenizer.eval()  # targets must not depend on dropout
        return self

    def set_visual_tokenizer(self, tokenizer: nn.Module) -> None:
        """Use `tokenizer`'s codes as MIM targets from now on (see the class docstring)."""
        num_codes = self.mim_head.proj.out_features
        if isinstance(tokenizer, VlBeitVisualTokenizer):
            ours, theirs = self.config.vision_config, tokenizer.config.vision_config
            if tokenizer.config.num_codes != num_codes or (theirs.image_size, theirs.patch_size) != (
                    ours.image_size, ours.patch_size):
                raise ValueError(f"`visual_tokenizer` must have {num_codes} codes over {ours.image_size}px images "
                                 f"in {ours.patch_size}px patches, got {tokenizer.config.num_codes} codes, "
                                 f"{theirs.image_size}px, {theirs.patch_size}px")
            self.config.tokenizer_config = tokenizer.config
            self.visual_tokenizer = freeze(tokenizer).eval()
        else:
            self.visual_tokenizer = TokenizerTargets(tokenizer, num_codes)
        self._frozen_parameter_names = [n for n, p in self.named_parameters() if not p.requires_grad]

    @torch.no_grad()
    def mim_targets(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """The visual token of every patch [B, N]: deterministic, whatever the mode."""
        check_tensor("pixel_values", pixel_values, ndim=4, dtype="float")
        return self.visual_tokenizer.lookup(pixel_values=pixel_values)

    # -- masks ------------------------------------------------------------------------------------------------

    def _image_mask(self, pixel_values, bool_masked_pos, generator, name="bool_masked_pos"):
        return beit_image_mask(pixel_values, self.config.vision_config.patch_size, self.config.mim_mask_ratio,
                               bool_masked_pos, generator=generator, name=name)

    # -- objectives -------------------------------------------------------------------------------------------

    def _mlm(self, hidden, labels):
        hidden, labels = select_masked(hidden, labels)  # [M, D], [M]: only masked positions reach the vocabulary
        logits = self.mlm_head(hidden)
        return masked_cross_entropy(logits, labels), logits, _accuracy(logits, labels)

    def _mim(self, hidden, mask, targets):
        # hidden [B, N, D] patch states (no CLS), mask [B, N], targets [B, N]
        logits, labels = self.mim_head(hidden[mask]), targets[mask]  # [M, K], [M]
        return masked_cross_entropy(logits, labels), _accuracy(logits, labels)

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, mlm_input_ids=None, mlm_labels=None,
                bool_masked_pos=None, text_input_ids=None, text_attention_mask=None, text_mlm_input_ids=None,
                text_mlm_labels=None, image_pixel_values=None, image_bool_masked_pos=None, generator=None,
                interpolate_pos_encoding=False, **kwargs) -> VlPreTrainingOutput:
        cfg, model = self.config, self.vl_beit
        pair, text, image = _groups(pixel_values, input_ids, attention_mask, mlm_input_ids, mlm_labels,
                                    bool_masked_pos, text_input_ids, text_attention_mask, text_mlm_input_ids,
                                    text_mlm_labels, image_pixel_values, image_bool_masked_pos)
        interp = {"interpolate_pos_encoding": interpolate_pos_encoding}
        losses, fields, codes = {}, {}, []
        if pair is not None:
            pair["ids"], pair["labels"] = mlm_inputs(pair["input_ids"], pair["mask"], pair["mlm_ids"], pair["mlm_labels"],
                                                     text_config=cfg.text_config, probability=cfg.mvlm_probability,
                                                     generator=generator)
            pair["bmp"] = self._image_mask(pair["pixels"], pair["bmp"], generator) if cfg.mvlm_mask_image else None
            pair["targets"] = self.mim_targets(pair["pixels"])
            codes.append(pair["targets"])
            if cfg.unimodal_from_pairs:  # the pairs stand in for the kinds this batch lacks
                text = text or {"input_ids": pair["input_ids"], "mask": pair["mask"], "mlm_ids": None,
                                "mlm_labels": None, "prefix": "text_"}
                image = image or {"pixels": pair["pixels"], "bmp": pair["bmp"], "targets": pair["targets"],
                                  "name": "image_bool_masked_pos"}
        if text is not None:
            ids, labels = mlm_inputs(text["input_ids"], text["mask"], text["mlm_ids"], text["mlm_labels"],
                                     text_config=cfg.text_config, probability=cfg.mlm_probability,
                                     generator=generator, prefix=text["prefix"])
            losses["loss_mlm"], logits, fields["mlm_accuracy"] = self._mlm(model.encode_text(ids, text["mask"]), labels)
            if pair is None:
                fields["mlm_logits"] = logits
        if image is not None:
            mask = self._image_mask(image["pixels"], image["bmp"], generator, image["name"])
            targets = image.get("targets")
            if targets is None:
                targets = self.mim_targets(image["pixels"])
                codes.append(targets)
            hidden = model.encode_image(image["pixels"], bool_masked_pos=mask, **interp)[:, 1:]  # [B, N, D]
            losses["loss_mim"], fields["mim_accuracy"] = self._mim(hidden, mask, targets)
            fields["image_mask"] = mask
        if pair is not None:
            length = pair["ids"].shape[1]
            joint = model.encode_pair(pair["pixels"], pair["ids"], pair["mask"], bool_masked_pos=pair["bmp"],
                                      **interp)  # [B, T + 1 + N, D]
            loss, fields["mlm_logits"], fields["mvlm_text_accuracy"] = self._mlm(joint[:, :length], pair["labels"])
            if pair["bmp"] is not None:
                loss_image, fields["mvlm_image_accuracy"] = self._mim(joint[:, length + 1:], pair["bmp"],
                                                                      pair["targets"])
                loss = loss + loss_image
                fields["image_mask"] = pair["bmp"]
            losses["loss_mvlm"] = loss
        if codes:
            codes = torch.cat([c.flatten() for c in codes])
            fields["codebook_perplexity"], fields["codebook_usage"] = code_statistics(codes, self.mim_head.proj.out_features)
        total = sum(getattr(cfg, f"{name[len('loss_'):]}_weight") * value for name, value in losses.items())
        return VlPreTrainingOutput(loss=total, **losses, **fields)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy of logits [M, C] against labels [M] as a detached tensor (no host sync); 0 when M == 0."""
    hits = (logits.detach().argmax(-1) == labels).float()
    return hits.sum() / torch.sym_max(labels.shape[0], 1)


def _groups(pixel_values, input_ids, attention_mask, mlm_input_ids, mlm_labels, bool_masked_pos, text_input_ids,
            text_attention_mask, text_mlm_input_ids, text_mlm_labels, image_pixel_values, image_bool_masked_pos):
    """(pair, text-only, image-only) rows as dicts (None where absent), checked at the boundary."""
    if pixel_values is None and input_ids is None and text_input_ids is None and image_pixel_values is None:
        raise ValueError("pass `pixel_values` and/or `input_ids` (or `text_input_ids` / `image_pixel_values` for "
                         "text-only / image-only rows), got none of them")
    for name, value in (("pixel_values", pixel_values), ("image_pixel_values", image_pixel_values)):
        if value is not None:
            check_tensor(name, value, ndim=4, dtype="float")
    for name, value in (("input_ids", input_ids), ("text_input_ids", text_input_ids)):
        if value is not None:
            check_tensor(name, value, ndim=2, dtype="int")
    check_same_batch(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                     bool_masked_pos=bool_masked_pos)
    check_same_batch(text_input_ids=text_input_ids, text_attention_mask=text_attention_mask)
    if input_ids is not None and attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if text_input_ids is not None and text_attention_mask is None:
        text_attention_mask = torch.ones_like(text_input_ids)
    for ids, mask, name in ((input_ids, attention_mask, "attention_mask"),
                            (text_input_ids, text_attention_mask, "text_attention_mask")):
        if ids is not None and mask.shape != ids.shape:
            raise ValueError(f"`{name}` must have the shape of its input ids {tuple(ids.shape)}, got {describe(mask)}")
    pair = text = image = None
    if pixel_values is not None and input_ids is not None:
        pair = {"pixels": pixel_values, "input_ids": input_ids, "mask": attention_mask, "mlm_ids": mlm_input_ids,
                "mlm_labels": mlm_labels, "bmp": bool_masked_pos}
    elif input_ids is not None:
        if text_input_ids is not None:
            raise ValueError("text-only rows go in `input_ids` or in `text_input_ids`, not both")
        text = {"input_ids": input_ids, "mask": attention_mask, "mlm_ids": mlm_input_ids, "mlm_labels": mlm_labels,
                "prefix": ""}
    elif pixel_values is not None:
        if image_pixel_values is not None:
            raise ValueError("image-only rows go in `pixel_values` or in `image_pixel_values`, not both")
        image = {"pixels": pixel_values, "bmp": bool_masked_pos, "name": "bool_masked_pos"}
    if text_input_ids is not None:
        text = {"input_ids": text_input_ids, "mask": text_attention_mask, "mlm_ids": text_mlm_input_ids,
                "mlm_labels": text_mlm_labels, "prefix": "text_"}
    if image_pixel_values is not None:
        image = {"pixels": image_pixel_values, "bmp": image_bool_masked_pos, "name": "image_bool_masked_pos"}
    return pair, text, image


__all__ = ["VlBeitForPreTraining"]
