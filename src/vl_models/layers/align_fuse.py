"""The align-before-fuse family (ALBEF and the methods built on it: VLMAE, VQ-MIM).

Two mixins, combined with a method's `XPreTrainedModel`:
- `AlignFuseModelMixin` -> `XModel`: ViT, BERT-style text encoder, cross-attention fusion, ITC projections.
- `AlignFusePreTrainingMixin` -> `XForPreTraining`: ITC with momentum distillation and feature queues, ITM with
  similarity-sampled hard negatives, MLM with momentum distillation (Li et al. 2021). A method that changes what
  the student image encoder sees (VLMAE: visible patches only) passes its own `image_embeds` to
  `align_fuse_losses`; the momentum teacher always encodes the full image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..utils import check_pretraining_pairs
from .accumulation import PerUpdateState
from .backbone import BackboneMixin
from .draws import multinomial
from .heads import MlmHead
from .losses import (
    gather_no_grad,
    itc_loss_with_targets,
    masked_cross_entropy,
    select_masked,
    soft_cross_entropy,
)
from .masking import mlm_inputs
from .mlm import TiedMlmMixin
from .momentum import (
    FeatureQueue,
    copy_student_to_teacher,
    freeze,
    init_teachers_from_students,
    momentum_update,
    ring_write,
)
from .outputs import VlPreTrainingOutput
from .towers import FusionTransformer, TextTransformer, VisionTransformer


class FromTowersMixin:
    """`from_pretrained_towers`: start from a BERT-style text checkpoint and/or a transformers ViT checkpoint."""

    @classmethod
    def from_pretrained_towers(cls, text: str | None = None, vision: str | None = None, *,
                               num_fusion_layers: int | None = None, **config_kwargs):
        """Build the model with its text tower from `text` (path or Hub id of any BERT-style model) and its image
        tower from `vision` (any transformers ViT). Tower shapes come from the checkpoints; other config fields
        from `config_kwargs`. The lower half of the text checkpoint's layers (or all but `num_fusion_layers`)
        becomes the text encoder, the rest the fusion encoder, whose cross-attention starts from scratch. A model
        with an MLM head takes the checkpoint's masked-LM head when it has one (`BertForMaskedLM`); a plain
        `BertModel` has none, and the log says the head keeps its initialisation. Teachers copy the result."""
        from transformers import AutoTokenizer

        from ..presets import merge
        from .pretrained_towers import (
            bert_to_towers,
            load_mlm_head,
            load_pretrained,
            load_text_checkpoint,
            load_tower_weights,
            text_tower_config,
            vision_tower_config,
            vit_to_tower,
        )

        kwargs = dict(config_kwargs)
        text_model, mlm_head = load_text_checkpoint(text) if text else (None, {})
        vision_model = load_pretrained(vision) if vision else None
        if text_model is not None:
            tower = text_tower_config(text_model.config, num_fusion_layers)
            try:  # the checkpoint's own tokenizer decides the special token ids
                tok = AutoTokenizer.from_pretrained(text)
                tower.update(cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id,
                             mask_token_id=tok.mask_token_id, pad_token_id=tok.pad_token_id)
            except (OSError, ValueError):
                pass
            kwargs["text_config"] = merge(tower, kwargs.get("text_config") or {})
        if vision_model is not None:
            kwargs["vision_config"] = merge(vision_tower_config(vision_model.config), kwargs.get("vision_config") or {})
        model = cls(cls.config_class(**kwargs))
        if text_model is not None:
            weights = bert_to_towers(text_model.state_dict(), model.config.text_config.num_hidden_layers)
            load_tower_weights(model.base_model, weights, text)
            if hasattr(model, "mlm_head"):
                embeddings = model.get_input_embeddings().weight
                load_mlm_head(model.mlm_head, mlm_head, text, tied=model.mlm_head.decoder.weight is embeddings)
        if vision_model is not None:
            load_tower_weights(model.base_model, vit_to_tower(vision_model.state_dict()), vision)
        if hasattr(model, "reset_momentum"):
            model.reset_momentum()
        return model


class AlignFuseModelMixin(BackboneMixin, FromTowersMixin):
    """Encoders + fusion; returns embeddings (`VlModelOutput`)."""

    def __init__(self, config):
        super().__init__(config)
        vision, text = config.vision_config, config.text_config
        self.vision = VisionTransformer(vision)
        self.text = TextTransformer(text)
        self.fusion = FusionTransformer(text, image_dim=vision.hidden_size)
        self.vision_proj = nn.Linear(vision.hidden_size, config.embed_dim)
        self.text_proj = nn.Linear(text.hidden_size, config.embed_dim)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text.embeddings.word_embeddings = value

    def encode_image(self, pixel_values, *, ids_keep=None, bool_masked_pos=None, interpolate_pos_encoding=False):
        return self.vision(pixel_values, ids_keep=ids_keep, bool_masked_pos=bool_masked_pos,
                           interpolate_pos_encoding=interpolate_pos_encoding)  # [B, 1 + n, Dv]

    def encode_text(self, input_ids, attention_mask=None):
        return self.text(input_ids, attention_mask)  # [B, T, Dt]

    def fuse(self, image_embeds, text_embeds, attention_mask=None):
        return self.fusion(text_embeds, attention_mask, image_embeds)  # [B, T, Dt]; [:, 0] is the pair's [CLS]


# the modules below that a task class leaves out of a pre-training checkpoint (`VlPreTrainedModel.check_loaded_keys`)
ALIGN_FUSE_PRETRAINING_MODULES = (
    "itm_head", "mlm_head", "temp", "momentum_model", "momentum_mlm_head", "image_queue", "text_queue",
)


class AlignFusePreTrainingMixin(PerUpdateState, TiedMlmMixin, FromTowersMixin):
    """ALBEF's three objectives on top of an align-fuse `XModel` (`_backbone_class`). The MLM decoders are tied to
    the word embeddings, the student's to the student's and the teacher's to the teacher's (`TiedMlmMixin`)."""

    _backbone_class: type

    def __init__(self, config):
        super().__init__(config)
        text = config.text_config
        setattr(self, self.base_model_prefix, self._backbone_class(config))
        self.itm_head = nn.Linear(text.hidden_size, 2)
        self.mlm_head = MlmHead(text.hidden_size, text.vocab_size, text.hidden_act, text.layer_norm_eps)
        self.temp = nn.Parameter(torch.tensor(float(config.temperature)))
        # the momentum teacher: an EMA copy of the backbone and MLM head, never trained by gradients
        self.momentum_model = freeze(self._backbone_class(config))
        self.momentum_mlm_head = freeze(MlmHead(text.hidden_size, text.vocab_size, text.hidden_act,
                                                text.layer_norm_eps))
        if config.queue_size > 0:
            self.image_queue = FeatureQueue(config.embed_dim, config.queue_size)
            self.text_queue = FeatureQueue(config.embed_dim, config.queue_size)
        self._build_method_heads(config)
        self.tie_mlm_heads((self.mlm_head, self.base_model.get_input_embeddings()),
                           (self.momentum_mlm_head, self.momentum_model.get_input_embeddings()))
        self.post_init()

    def _build_method_heads(self, config):
        """Hook: a method adds its own pre-training modules here (before `post_init` initialises them)."""

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.base_model, self.momentum_model), (self.mlm_head, self.momentum_mlm_head)]

    @torch.no_grad()
    def _init_method_parameters(self):
        init.constant_(self.temp, self.config.temperature)
        init_teachers_from_students(self.momentum_pairs())

    @torch.no_grad()
    def reset_momentum(self):
        """Copy the student into the teacher (after loading pretrained towers into the student)."""
        copy_student_to_teacher(self.momentum_pairs())

    # -- inputs -----------------------------------------------------------------------------------------------

    def _check_pretraining_inputs(self, pixel_values, input_ids, attention_mask):
        return check_pretraining_pairs(pixel_values, input_ids, attention_mask,
                                       needs_negatives=self.config.itm_weight > 0)

    # -- objectives -------------------------------------------------------------------------------------------

    def align_fuse_losses(self, *, image_embeds, pixel_values, input_ids, attention_mask, mlm_input_ids=None,
                          mlm_labels=None, alpha=None, generator=None, interpolate_pos_encoding=False):
        """ITC + ITM + MLM given the student's `image_embeds` [B, 1 + n, D] (n may be a visible subset).

        Returns (losses dict, extras dict with the teacher's full-image `image_embeds_m` and `text_embeds`).
        """
        model, teacher, cfg = self.base_model, self.momentum_model, self.config
        alpha = cfg.alpha if alpha is None else alpha
        mlm_input_ids, mlm_labels = mlm_inputs(input_ids, attention_mask, mlm_input_ids, mlm_labels,
                                               generator=generator,
                                               text_config=cfg.text_config, probability=cfg.mlm_probability)
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)
        text_embeds = model.encode_text(input_ids, attention_mask)
        image_feat, text_feat = model.image_feat(image_embeds), model.text_feat(text_embeds)

        with torch.no_grad():
            if self.training and self.opens_update():  # once per optimizer update, see layers/accumulation.py
                momentum_update(self.momentum_pairs(), cfg.momentum)
            image_embeds_m = teacher.encode_image(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
            image_feat_m = gather_no_grad(teacher.image_feat(image_embeds_m))  # [B_global, E]
            text_feat_m = gather_no_grad(teacher.text_feat(teacher.encode_text(input_ids, attention_mask)))
        queues = (self.image_queue, self.text_queue) if cfg.queue_size > 0 else None
        loss_itc, sim_i2t, sim_t2i, local = momentum_itc(image_feat, text_feat, image_feat_m, text_feat_m,
                                                         self.temp, alpha, queues)
        if self.training and cfg.queue_size > 0:
            self.image_queue.enqueue(image_feat_m[local])  # the queue gathers from every rank itself
            self.text_queue.enqueue(text_feat_m[local])

        loss_itm, itm_logits, itm_accuracy = self._itm(image_embeds, text_embeds, attention_mask,
                                                       sim_i2t[:, local], sim_t2i[:, local], generator)

        # MLM on the masked caption fused with the (student) image, distilled from the teacher
        fused = model.fuse(image_embeds, model.encode_text(mlm_input_ids, attention_mask), attention_mask)
        hidden, labels = select_masked(fused, mlm_labels)  # [M, D], [M]
        mlm_logits = self.mlm_head(hidden)  # [M, V]: only masked positions reach the vocabulary
        loss_mlm = masked_cross_entropy(mlm_logits, labels)
        if alpha > 0 and labels.numel():
            with torch.no_grad():
                fused_m = teacher.fuse(image_embeds_m, teacher.encode_text(mlm_input_ids, attention_mask),
                                       attention_mask)
                soft = self.momentum_mlm_head(select_masked(fused_m, mlm_labels)[0]).softmax(-1)
            loss_mlm = (1 - alpha) * loss_mlm + alpha * soft_cross_entropy(mlm_logits, soft)

        losses = {"loss_itc": loss_itc, "loss_itm": loss_itm, "loss_mlm": loss_mlm}
        extras = {"image_embeds_m": image_embeds_m, "text_embeds": text_embeds, "itm_logits": itm_logits,
                  "itm_accuracy": itm_accuracy, "mlm_logits": mlm_logits}
        return losses, extras

    def pretraining_output(self, losses: dict, extras: dict, **fields) -> VlPreTrainingOutput:
        """`loss` = sum of each `loss_<name>` times `config.<name>_weight`."""
        total = sum(getattr(self.config, f"{name[len('loss_'):]}_weight") * value for name, value in losses.items())
        return VlPreTrainingOutput(loss=total, **losses, itm_logits=extras["itm_logits"],
                                   itm_accuracy=extras["itm_accuracy"], mlm_logits=extras["mlm_logits"], **fields)

    def _itm(self, image_embeds, text_embeds, attention_mask, sim_i2t, sim_t2i, generator):
        return itm_with_hard_negatives(self.base_model.fuse, self.itm_head, image_embeds, text_embeds,
                                       attention_mask, sim_i2t, sim_t2i, generator, self.config.itm_uniform_negatives)


def momentum_itc(image_feat, text_feat, image_feat_m, text_feat_m, temp, alpha, queues=None, positives=None):
    """ITC with momentum distillation (ALBEF): this rank's B pairs against the teacher's features of the global batch
    and the queues. image_feat / text_feat [B, E]: the student's; *_m [B_global, E]: the teacher's, gathered from
    every rank; queues: (image, text) `FeatureQueue`s or None. Target = alpha * softmax(teacher similarity) +
    (1 - alpha) * `positives` [B, B_global + Q] (bool, the columns that match each row; None: its own pair) spread
    evenly over a row. Returns (loss, sim_i2t, sim_t2i [B, B_global + Q], `local`: the columns of this rank's pairs)."""
    with torch.no_grad():
        image_keys, text_keys = image_feat_m, text_feat_m
        if queues is not None:
            image_keys = torch.cat([image_feat_m, queues[0].features.clone()], dim=0)
            text_keys = torch.cat([text_feat_m, queues[1].features.clone()], dim=0)
        # this rank's pairs sit at rows offset .. offset + B of the gathered features
        batch = image_feat.shape[0]
        offset = _rank_offset(batch)
        if positives is None:
            hard = torch.zeros(batch, image_keys.shape[0], device=image_feat.device)
            hard[torch.arange(batch), offset + torch.arange(batch)] = 1.0
        else:  # several captions of one image are all positives (ALBEF's retrieval fine-tuning)
            hard = positives.float() / positives.float().sum(-1, keepdim=True)
        local = slice(offset, offset + batch)
        sim_i2t_m = image_feat_m[local] @ text_keys.t() / temp
        sim_t2i_m = text_feat_m[local] @ image_keys.t() / temp
        targets_i2t = alpha * sim_i2t_m.softmax(-1) + (1 - alpha) * hard
        targets_t2i = alpha * sim_t2i_m.softmax(-1) + (1 - alpha) * hard

    sim_i2t = image_feat @ text_keys.t() / temp  # [B, B_global + Q]
    sim_t2i = text_feat @ image_keys.t() / temp
    return itc_loss_with_targets(sim_i2t, sim_t2i, targets_i2t, targets_t2i), sim_i2t, sim_t2i, local


class IdQueue(nn.Module):
    """The image id of each row of a `FeatureQueue` [size] (-1: none, e.g. rows filled in pre-training). Written at
    the feature queue's pointer, so the two stay aligned whatever checkpoint either came from."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))

    def reset_parameters(self) -> None:
        init.constant_(self.ids, -1)  # skipped when loaded from a checkpoint

    @torch.no_grad()
    def enqueue(self, ids: torch.Tensor, ptr: torch.Tensor) -> None:
        """Append ids [B] from every rank at `ptr`, the feature queue's pointer before its own enqueue."""
        ring_write(self.ids, gather_no_grad(ids).to(self.ids), ptr)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def sample_hard_negatives(sim_i2t, sim_t2i, generator=None, uniform: float = 0.0, same=None):
    """For each image a text and for each text an image, never the positive itself (nor a `same` pair), drawn from
    `(1 - uniform) * softmax(similarity) + uniform * (uniform over the batch)`. sim_* [B, B] -> (negative image
    per text [B], negative text per image [B]).

    `uniform` 0 is ALBEF's hard-negative sampling. From scratch the similarity-sampled negatives are
    indistinguishable for a fusion encoder that cannot yet compare image and text, ITM stays at its class prior,
    and easy (uniform) negatives are what lets it start (docs/methods.md, "Learning from scratch").

    `same` [B, B] bool: pairs that are no negatives besides the positive itself (captions of the same image,
    ALBEF's retrieval fine-tuning); a row with nothing else left falls back to every other row (no true negative
    exists there)."""
    with torch.no_grad():
        batch = sim_i2t.shape[0]
        excluded = torch.eye(batch, dtype=torch.bool, device=sim_i2t.device)
        if same is not None:
            same = same.to(excluded.device) | excluded
            excluded = torch.where(same.all(-1, keepdim=True), excluded, same)
        others = (~excluded).float() / (~excluded).sum(-1, keepdim=True).clamp_min(1)

        def weights(sims):
            # non-finite similarities (NaN inputs) sample uniformly, so the step ends in a non-finite loss that the
            # training loop skips on every process, instead of a crash inside multinomial; a tiny floor keeps rows
            # valid when the softmax underflows to exact zeros off the excluded pairs
            hard = sims.float().softmax(-1).nan_to_num(0.0, 0.0, 0.0).masked_fill(excluded, 0)
            hard = hard / hard.sum(-1, keepdim=True).clamp_min(1e-30)
            return (1 - uniform) * hard + uniform * others + 1e-8 * ~excluded

        neg_image = multinomial(weights(sim_t2i), 1, generator).squeeze(1)
        neg_text = multinomial(weights(sim_i2t), 1, generator).squeeze(1)
    return neg_image.to(sim_i2t.device), neg_text.to(sim_i2t.device)


def itm_with_hard_negatives(fuse, itm_head, image_embeds, text_embeds, attention_mask, sim_i2t, sim_t2i,
                            generator=None, uniform: float = 0.0, same=None):
    """ITM on B positives and 2B hard negatives (`sample_hard_negatives` with `uniform` and `same`); `fuse(images,
    texts, masks)` is the fusion encoder (its first position is classified). Returns (loss, logits [3B, 2],
    accuracy)."""
    batch = image_embeds.shape[0]
    neg_image, neg_text = sample_hard_negatives(sim_i2t, sim_t2i, generator, uniform, same)
    images = torch.cat([image_embeds, image_embeds[neg_image], image_embeds], dim=0)  # [3B, 1 + n, D]
    texts = torch.cat([text_embeds, text_embeds, text_embeds[neg_text]], dim=0)
    masks = torch.cat([attention_mask, attention_mask, attention_mask[neg_text]], dim=0)
    logits = itm_head(fuse(images, texts, masks)[:, 0])  # [3B, 2]
    labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).long().to(logits.device)
    accuracy = (logits.argmax(-1) == labels).float().mean().detach()
    return F.cross_entropy(logits, labels), logits, accuracy


def _rank_offset(batch: int) -> int:
    """Row of this rank's first pair in features gathered from all ranks (equal batches per rank)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() * batch
    return 0
