"""ViLTA: a ViT, a BERT-style language encoder and a two-stream co-attention multimodal encoder (METER-like),
pre-trained with soft-label MLM (a frozen language teacher) and ITM on synthesised hard negatives."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ...layers import text_augment
from ...layers.backbone import BackboneMixin
from ...layers.coattention import CoAttentionTransformer
from ...layers.draws import randint, randperm
from ...layers.heads import MlmHead
from ...layers.losses import contrastive_loss, select_masked
from ...layers.masking import mlm_inputs
from ...layers.mlm import TiedMlmMixin
from ...layers.momentum import copy_student_to_teacher, freeze, init_teachers_from_students
from ...layers.outputs import VlPreTrainingOutput
from ...layers.tasks import (
    ImagesAndTextClassificationMixin,
    ImageTextRetrievalMixin,
    QuestionAnsweringMixin,
    VisualGroundingMixin,
)
from ...layers.towers import TextTransformer, VisionTransformer
from ...modeling_utils import VlPreTrainedModel
from ...utils import check_pretraining_pairs, check_range, check_tensor
from .configuration_vilta import ViltaConfig
from .pretrained_vilta import ViltaTowersMixin

logger = logging.getLogger(__name__)


# mean soft-label entropy / log(V) above which the teacher counts as untrained (a random BERT gives ~0.99 at the
# small preset; a trained one well under 0.5 on Shapes captions)
UNTRAINED_TEACHER_ENTROPY = 0.9


@dataclass
class ViltaPreTrainingOutput(VlPreTrainingOutput):
    """`VlPreTrainingOutput` plus ViLTA's signals. itm_accuracy_inbatch / itm_accuracy_synthetic: ITM accuracy on
    each kind of negative (None when there were none). mlm_loss_onehot / mlm_loss_soft: the two terms of loss_mlm
    (detached; soft is None when alpha = 0). synthetic_input_ids [S, T]: the synthetic captions ITM saw, made from
    rows `synthetic_source` [S] of the batch, rewritten at `synthetic_replaced` [S, T]."""

    itm_accuracy_inbatch: torch.FloatTensor | None = None
    itm_accuracy_synthetic: torch.FloatTensor | None = None
    mlm_loss_onehot: torch.FloatTensor | None = None
    mlm_loss_soft: torch.FloatTensor | None = None
    synthetic_input_ids: torch.LongTensor | None = None
    synthetic_source: torch.LongTensor | None = None
    synthetic_replaced: torch.BoolTensor | None = None


class ViltaPreTrainedModel(VlPreTrainedModel):
    config_class = ViltaConfig
    base_model_prefix = "vilta"
    _pretraining_only_modules = ("itm_head", "mlm_head", "temp", "teacher")
    # image tokens cross-attend to padded caption tokens; transformers' flash-attention path unpads the queries
    # with the key mask (it assumes equal query and key lengths or left padding), which is wrong here
    _supports_flash_attn = False


class ViltaModel(BackboneMixin, ViltaTowersMixin, ViltaPreTrainedModel):
    """Vision, language and co-attention encoders; returns embeddings (`VlModelOutput`).

    `fuse(...)[:, 0]` is the pair's pooled feature: tanh(Linear([text CLS ; image CLS])) over both co-attention
    streams (METER pools each stream and concatenates, 2D wide; one linear map keeps the D that the shared task
    heads take). Positions 1.. are the text stream. `vision_proj` / `text_proj` are ITC projections for retrieval.
    """

    def __init__(self, config: ViltaConfig):
        super().__init__(config)
        vision, text = config.vision_config, config.text_config
        self.vision = VisionTransformer(vision)
        self.text = TextTransformer(text)
        self.fusion = CoAttentionTransformer(
            text, text.num_fusion_layers, text.hidden_size, text.num_attention_heads, text.intermediate_size,
            text_dim=text.hidden_size, image_dim=vision.hidden_size, norm_first=False, eps=text.layer_norm_eps,
            act=text.hidden_act, dropout=text.hidden_dropout_prob, attention_dropout=text.attention_probs_dropout_prob,
        )
        self.pooler = nn.Linear(2 * text.hidden_size, text.hidden_size)
        self.vision_proj = nn.Linear(vision.hidden_size, config.embed_dim)
        self.text_proj = nn.Linear(text.hidden_size, config.embed_dim)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text.embeddings.word_embeddings = value

    def encode_image(self, pixel_values, *, interpolate_pos_encoding=False):
        return self.vision(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)  # [B, 1 + N, Dv]

    def encode_text(self, input_ids, attention_mask=None):
        return self.text(input_ids, attention_mask)  # [B, T, Dt]

    def fuse_streams(self, image_embeds, text_embeds, attention_mask=None):
        """Both co-attention streams: (text [B, T, D], image [B, 1 + N, D])."""
        return self.fusion(text_embeds, image_embeds, attention_mask)

    def fuse(self, image_embeds, text_embeds, attention_mask=None):
        text, image = self.fuse_streams(image_embeds, text_embeds, attention_mask)
        pooled = torch.tanh(self.pooler(torch.cat([text[:, 0], image[:, 0]], dim=-1)))  # [B, D]
        return torch.cat([pooled[:, None], text[:, 1:]], dim=1)  # [B, T, D]; [:, 0] is the pair's pooled feature


class ViltaTextTeacher(nn.Module):
    """The frozen language teacher: a language encoder and MLM head, never trained, always in eval mode."""

    def __init__(self, config):
        super().__init__()
        self.text = TextTransformer(config)
        self.mlm_head = MlmHead(config.hidden_size, config.vocab_size, config.hidden_act, config.layer_norm_eps)
        freeze(self)

    def train(self, mode: bool = True):
        return super().train(False)  # soft labels must not depend on dropout

    @torch.no_grad()
    def forward(self, input_ids, attention_mask, labels):
        """Logits [M, V] at the positions where labels != -100, from the caption alone."""
        return self.mlm_head(select_masked(self.text(input_ids, attention_mask), labels)[0])


class ViltaForPreTraining(TiedMlmMixin, ViltaTowersMixin, ViltaPreTrainedModel):
    """Soft-label MLM (cross-distillation from the frozen `teacher`) + ITM on positives, in-batch negatives and
    captions rewritten by the current language encoder (+ optional ITC, off by default). The MLM decoders are tied
    to the word embeddings, the student's to the student's and the teacher's to the teacher's (`TiedMlmMixin`)."""

    def __init__(self, config: ViltaConfig):
        super().__init__(config)
        text = config.text_config
        self.vilta = ViltaModel(config)
        self.itm_head = nn.Linear(text.hidden_size, 2)
        self.mlm_head = MlmHead(text.hidden_size, text.vocab_size, text.hidden_act, text.layer_norm_eps)
        self.temp = nn.Parameter(torch.tensor(float(config.temperature)))
        self.teacher = ViltaTextTeacher(text)
        self._teacher_checked = False  # `_check_teacher` runs at the first training forward with alpha > 0
        if config.itc_weight == 0:
            # kept for retrieval fine-tuning but unused here: frozen, so DDP needs no find_unused_parameters
            freeze(self.vilta.vision_proj)
            freeze(self.vilta.text_proj)
            self.temp.requires_grad_(False)
        self.tie_mlm_heads((self.mlm_head, self.vilta.get_input_embeddings()),
                           (self.teacher.mlm_head, self.teacher.text.embeddings.word_embeddings))
        self.post_init()

    def teacher_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.vilta.text, self.teacher.text), (self.mlm_head, self.teacher.mlm_head)]

    @torch.no_grad()
    def _init_method_parameters(self):
        init.constant_(self.temp, self.config.temperature)
        init_teachers_from_students(self.teacher_pairs())  # skipped for tensors loaded from a checkpoint

    @torch.no_grad()
    def reset_teacher(self):
        """Copy the student's language encoder and MLM head into the teacher (after loading pretrained towers, or
        after a first stage trained with alpha = 0 taught the student the captions' language)."""
        copy_student_to_teacher(self.teacher_pairs())
        self._teacher_checked = False

    @torch.compiler.disable
    def _check_teacher(self, teacher_logits):
        """Warn once when the frozen teacher knows no language: its soft labels are then near uniform, and
        distilling them is label smoothing toward uniform, not cross-distillation (docs/methods/vilta.md)."""
        self._teacher_checked = True
        entropy = text_augment.normalized_entropy(teacher_logits, self.config.soft_label_temperature)
        if entropy > UNTRAINED_TEACHER_ENTROPY:
            logger.warning(
                "ViLTA's frozen language teacher gives near-uniform soft labels (entropy %.3f of the uniform "
                "distribution's): it is an untrained network, so alpha=%s only smooths the MLM labels. Start from "
                "a pretrained text tower (ViltaForPreTraining.from_pretrained_towers(text=...)), or train a first "
                "stage with alpha=0 and continue from it with `reset_teacher()` (pretrain.py --reset_teacher); "
                "or set alpha=0", entropy, self.config.alpha)

    # -- inputs -----------------------------------------------------------------------------------------------

    def _check_inputs(self, pixel_values, input_ids, attention_mask):
        cfg = self.config
        return check_pretraining_pairs(pixel_values, input_ids, attention_mask,
                                       needs_negatives=cfg.itm_weight > 0 and cfg.itm_inbatch_ratio > 0)

    # -- objectives -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def synthesize_negatives(self, input_ids, attention_mask=None, generator=None) -> text_augment.SyntheticCaptions:
        """Captions with a few tokens rewritten by the current language encoder and MLM head (no gradients):
        same length and padding, every `valid` row differs from its source in at least one token."""
        check_tensor("input_ids", input_ids, ndim=2, dtype="int")
        cfg, text = self.config, self.config.text_config

        def predict(masked, mask, positions):
            return self.mlm_head(self.vilta.encode_text(masked, mask)[positions])  # [M, V]

        return text_augment.synthesize_negatives(
            input_ids, attention_mask, predict, mask_token_id=text.mask_token_id,
            special_token_ids=text.special_token_ids, ratio=cfg.synthetic_mask_ratio, top_k=cfg.synthetic_top_k,
            temperature=cfg.synthetic_temperature, generator=generator,
        )

    @torch.compiler.disable  # how many captions could be rewritten is data: compiled code resumes after it
    def _synthetic_rows(self, input_ids, attention_mask, generator):
        """(source rows [S], synthetic captions [S, T], rewritten positions [S, T]) for the rows whose caption
        could be rewritten, out of `itm_synthetic_ratio * B` drawn."""
        batch = input_ids.shape[0]
        rows = randperm(batch, generator, input_ids.device)[:round(self.config.itm_synthetic_ratio * batch)]
        if not len(rows):
            return rows, input_ids[:0], torch.zeros_like(input_ids[:0], dtype=torch.bool)
        synthetic = self.synthesize_negatives(input_ids[rows], attention_mask[rows], generator)
        valid = synthetic.valid
        return rows[valid], synthetic.input_ids[valid], synthetic.replaced[valid]

    def _itm(self, image_embeds, text_embeds, input_ids, attention_mask, generator):
        """ITM on [positives | in-batch negatives | synthetic negatives]; returns (loss, logits, fields)."""
        cfg, model, batch = self.config, self.vilta, input_ids.shape[0]
        device = input_ids.device
        n_inbatch = round(cfg.itm_inbatch_ratio * batch) if batch > 1 else 0
        rows_in = randperm(batch, generator, device)[:n_inbatch]
        partner = (rows_in + randint(1, max(batch, 2), (n_inbatch,), generator, device)) % batch  # never itself
        rows_syn, syn_ids, replaced = self._synthetic_rows(input_ids, attention_mask, generator)
        syn_mask = attention_mask[rows_syn]
        images = torch.cat([image_embeds, image_embeds[rows_in], image_embeds[rows_syn]])  # [B + n + S, 1 + N, D]
        texts = [text_embeds, text_embeds[partner]] + ([model.encode_text(syn_ids, syn_mask)] if len(rows_syn) else [])
        texts = torch.cat(texts)
        masks = torch.cat([attention_mask, attention_mask[partner], syn_mask])
        logits = self.itm_head(model.fuse(images, texts, masks)[:, 0])  # [B + n + S, 2]
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=device)
        labels[:batch] = 1
        correct = (logits.detach().argmax(-1) == labels).float()
        fields = {
            "itm_accuracy": correct.mean(),
            "itm_accuracy_inbatch": correct[batch:batch + n_inbatch].mean() if n_inbatch else None,
            "itm_accuracy_synthetic": correct[batch + n_inbatch:].mean() if len(rows_syn) else None,
            "synthetic_input_ids": syn_ids, "synthetic_source": rows_syn, "synthetic_replaced": replaced,
        }
        return F.cross_entropy(logits, labels), logits, fields

    def _mlm(self, image_embeds, mlm_input_ids, mlm_labels, attention_mask, alpha):
        """Soft-label MLM on the masked caption fused with the image; the teacher reads the caption alone."""
        cfg, model = self.config, self.vilta
        fused = model.fuse(image_embeds, model.encode_text(mlm_input_ids, attention_mask), attention_mask)
        hidden, labels = select_masked(fused, mlm_labels)  # [M, D], [M]
        logits = self.mlm_head(hidden)  # [M, V]: only masked positions reach the vocabulary
        teacher_logits = self.teacher(mlm_input_ids, attention_mask, mlm_labels) if alpha > 0 else None
        if teacher_logits is not None and self.training and not self._teacher_checked:
            self._check_teacher(teacher_logits)
        loss, hard, soft = text_augment.soft_label_mlm_loss(
            logits, labels, teacher_logits, alpha=alpha, temperature=cfg.soft_label_temperature,
            top_k=cfg.soft_label_top_k)
        return loss, logits, {"mlm_loss_onehot": hard.detach(), "mlm_loss_soft": None if soft is None else soft.detach()}

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, mlm_input_ids=None, mlm_labels=None,
                alpha=None, generator=None, interpolate_pos_encoding=False, **kwargs) -> ViltaPreTrainingOutput:
        """`mlm_input_ids` / `mlm_labels` come from a collator, or BERT masking draws them from `generator`, which
        also draws the ITM negatives. `alpha` overrides `config.alpha` (e.g. a ramp)."""
        cfg = self.config
        alpha = cfg.alpha if alpha is None else alpha
        check_range("alpha", alpha, 0.0, 1.0, high_inclusive=True)
        attention_mask = self._check_inputs(pixel_values, input_ids, attention_mask)
        mlm_input_ids, mlm_labels = mlm_inputs(input_ids, attention_mask, mlm_input_ids, mlm_labels,
                                               generator=generator,
                                               text_config=self.config.text_config,
                                               probability=self.config.mlm_probability)
        model = self.vilta
        image_embeds = model.encode_image(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        text_embeds = model.encode_text(input_ids, attention_mask)
        losses = {}
        if cfg.itc_weight > 0:
            losses["loss_itc"] = contrastive_loss(model.image_feat(image_embeds), model.text_feat(text_embeds),
                                                  self.temp.clamp(0.001, 0.5))
        losses["loss_itm"], itm_logits, fields = self._itm(image_embeds, text_embeds, input_ids, attention_mask,
                                                           generator)
        losses["loss_mlm"], mlm_logits, mlm_fields = self._mlm(image_embeds, mlm_input_ids, mlm_labels,
                                                               attention_mask, alpha)
        total = sum(getattr(cfg, f"{name[len('loss_'):]}_weight") * value for name, value in losses.items())
        return ViltaPreTrainingOutput(loss=total, **losses, itm_logits=itm_logits, mlm_logits=mlm_logits,
                                      **fields, **mlm_fields)


class ViltaForImageTextRetrieval(ImageTextRetrievalMixin, ViltaPreTrainedModel):
    _backbone_class = ViltaModel


class ViltaForQuestionAnswering(QuestionAnsweringMixin, ViltaPreTrainedModel):
    _backbone_class = ViltaModel


class ViltaForVisualGrounding(VisualGroundingMixin, ViltaPreTrainedModel):
    _backbone_class = ViltaModel


class ViltaForImagesAndTextClassification(ImagesAndTextClassificationMixin, ViltaPreTrainedModel):
    _backbone_class = ViltaModel


__all__ = [
    "ViltaPreTrainingOutput",
    "ViltaPreTrainedModel",
    "ViltaModel",
    "ViltaTextTeacher",
    "ViltaForPreTraining",
    "ViltaForImageTextRetrieval",
    "ViltaForQuestionAnswering",
    "ViltaForVisualGrounding",
    "ViltaForImagesAndTextClassification",
]
