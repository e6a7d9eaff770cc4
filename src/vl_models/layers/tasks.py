"""Downstream task mixins shared by every method: retrieval, VQA, visual grounding, NLVR2.

A method's class is one line, e.g. `class AlbefForQuestionAnswering(QuestionAnsweringMixin,
AlbefPreTrainedModel): _backbone_class = AlbefModel`. The backbone (`XModel`) provides `encode_image`,
`encode_text`, `fuse`, `image_feat`, `text_feat`; the base-model prefix matches `XForPreTraining`, so
`from_pretrained(pretraining_checkpoint)` loads the backbone and reports the pre-training-only keys.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..utils import check_range, check_same_batch, check_tensor
from .accumulation import PerUpdateState
from .align_fuse import IdQueue, itm_with_hard_negatives, momentum_itc
from .heads import ClassifierHead, PatchBoxHead, patch_of
from .losses import contrastive_loss, gather_no_grad, grounding_loss, vqa_soft_score_loss
from .momentum import (
    FeatureQueue,
    copy_student_to_teacher,
    freeze,
    init_teachers_from_students,
    momentum_update,
)
from .outputs import VlClassificationOutput, VlGroundingOutput, VlRetrievalOutput


def check_pair(pixel_values, input_ids, attention_mask) -> torch.Tensor:
    """A downstream pair's inputs: both given, one batch size; returns the attention mask (all ones if None)."""
    if pixel_values is None or input_ids is None:
        raise ValueError(f"`{'pixel_values' if pixel_values is None else 'input_ids'}` is required, got None")
    check_same_batch(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
    return torch.ones_like(input_ids) if attention_mask is None else attention_mask


# the head of each task: new (randomly initialised) when fine-tuning starts from a pre-training checkpoint, so a
# checkpoint may lack it; another task's head is what a checkpoint fine-tuned for that task carries in addition
TASK_HEADS = {
    # itm_head and temp: in the align-fuse family's pre-training checkpoints too, not in VL-BEiT's; image_id_queue:
    # the image ids of ALBEF's retrieval queue (`AlignFuseRetrievalMixin`), never in a pre-training checkpoint
    "retrieval": ("itm_head", "temp", "image_id_queue"),
    "vqa": ("vqa_head",),
    "grounding": ("box_head",),
    "nlvr2": ("classifier",),
}
TASK_HEAD_MODULES = tuple(name for heads in TASK_HEADS.values() for name in heads)


class _TaskMixin:
    _backbone_class: type

    def _build_backbone(self, config, *, uses_itc: bool = False):
        setattr(self, self.base_model_prefix, self._backbone_class(config))
        if not uses_itc:
            # the ITC projections take no part in fused-[CLS] tasks: frozen, so every trainable parameter gets a
            # gradient (DDP without find_unused_parameters)
            for name in ("vision_proj", "text_proj"):
                module = getattr(self.base_model, name, None)
                if module is not None:
                    module.requires_grad_(False)

    def _encode_pair(self, pixel_values, input_ids, attention_mask, interpolate_pos_encoding=False):
        attention_mask = check_pair(pixel_values, input_ids, attention_mask)
        model = self.base_model
        image_embeds = model.encode_image(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        text_embeds = model.encode_text(input_ids, attention_mask)
        return image_embeds, text_embeds, attention_mask

    def _pooled(self, pixel_values, input_ids, attention_mask, interpolate_pos_encoding=False):
        image_embeds, text_embeds, mask = self._encode_pair(pixel_values, input_ids, attention_mask,
                                                            interpolate_pos_encoding)
        return self.base_model.fuse(image_embeds, text_embeds, mask)[:, 0]  # [B, D]


class ImageTextRetrievalMixin(_TaskMixin):
    """ALBEF's inference: ITC ranks all pairs, then each query's top k are re-scored by ITM score + ITC similarity
    (`rank`). Training: in-batch contrastive + ITM with hard negatives (never a caption of the same image when
    `image_ids` come); the align-fuse family trains as ALBEF does (`AlignFuseRetrievalMixin`).

    The fusion encoder pairs up the unimodal outputs; a backbone whose fusion is a joint pass from the inputs
    (VL-BEiT) overrides `_fusion_inputs` and `_fuse`."""

    _fresh_modules = TASK_HEADS["retrieval"]

    def __init__(self, config):
        super().__init__(config)
        self._build_backbone(config, uses_itc=True)
        self.itm_head = nn.Linear(config.text_config.hidden_size, 2)
        self.temp = nn.Parameter(torch.tensor(float(config.temperature)))
        self._build_retrieval_teacher(config)
        self.post_init()

    def _build_retrieval_teacher(self, config):
        """Hook: modules the retrieval loss needs besides the backbone and heads (a momentum model, queues)."""

    def _init_method_parameters(self):
        from transformers import initialization as init

        init.constant_(self.temp, self.config.temperature)

    def _fusion_inputs(self, image_embeds, text_embeds, pixel_values, input_ids):
        """What `_fuse` pairs up, row for row."""
        return image_embeds, text_embeds

    def _fuse(self, images, texts, attention_mask, interpolate_pos_encoding=False):
        return self.base_model.fuse(images, texts, attention_mask)  # the image embeddings are interpolated already

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, image_ids=None, return_loss=None,
                alpha=None, generator=None, interpolate_pos_encoding=False, **kwargs) -> VlRetrievalOutput:
        """`image_ids` [B] (ints >= 0, from the collator): the image of each pair; captions of one image share it and
        are positives of each other. `alpha`: overrides `config.alpha` (distillation weight) where the loss uses it.

        M images and N texts with M != N (transformers' `zero-shot-image-classification` pipeline: one image, N
        labels) are scored as a dual encoder, as CLIP is: `logits_per_image` [M, N] only (no pairs, so no ITM)."""
        if pixel_values is not None and input_ids is not None and pixel_values.shape[0] != input_ids.shape[0]:
            return self._dual_encoder_logits(pixel_values, input_ids, attention_mask, image_ids, return_loss,
                                             interpolate_pos_encoding)
        image_embeds, text_embeds, mask = self._encode_pair(pixel_values, input_ids, attention_mask,
                                                            interpolate_pos_encoding)
        if image_ids is not None:
            check_tensor("image_ids", image_ids, ndim=1, dtype="int")
            check_same_batch(pixel_values=pixel_values, image_ids=image_ids)
            if (image_ids < 0).any():
                raise ValueError(f"`image_ids` must be >= 0 (-1 marks queue rows without an id), got {image_ids}")
        model = self.base_model
        image_feat, text_feat = model.image_feat(image_embeds), model.text_feat(text_embeds)
        temp = self.temp.clamp(0.001, 0.5)
        logits_per_image = image_feat @ text_feat.t() / temp  # [B, B]
        images, texts = self._fusion_inputs(image_embeds, text_embeds, pixel_values, input_ids)
        fuse = partial(self._fuse, interpolate_pos_encoding=interpolate_pos_encoding)
        itm_logits = self.itm_head(fuse(images, texts, mask)[:, 0])  # the given pairs
        out = VlRetrievalOutput(logits_per_image=logits_per_image, logits_per_text=logits_per_image.t(),
                                itm_logits=itm_logits, image_feat=image_feat, text_feat=text_feat)
        if return_loss if return_loss is not None else self.training:
            loss_itc, sim_i2t, sim_t2i = self._retrieval_itc(
                image_feat, text_feat, temp, logits_per_image, pixel_values=pixel_values, input_ids=input_ids,
                attention_mask=mask, image_ids=image_ids, alpha=alpha, interpolate_pos_encoding=interpolate_pos_encoding)
            same = None if image_ids is None else image_ids[:, None] == image_ids[None]  # a caption of the same image
            loss_itm, _, _ = itm_with_hard_negatives(fuse, self.itm_head, images, texts, mask, sim_i2t, sim_t2i,
                                                     generator, getattr(self.config, "itm_uniform_negatives", 0.0),
                                                     same)
            out.loss = loss_itc + loss_itm
        return out

    def _dual_encoder_logits(self, pixel_values, input_ids, attention_mask, image_ids, return_loss,
                             interpolate_pos_encoding) -> VlRetrievalOutput:
        if image_ids is not None or (return_loss if return_loss is not None else self.training):
            raise ValueError(f"the retrieval loss needs pairs: `pixel_values` and `input_ids` with one batch size, "
                             f"got {pixel_values.shape[0]} images and {input_ids.shape[0]} texts (M images x N texts "
                             f"are scored in eval mode, without `image_ids`)")
        check_same_batch(input_ids=input_ids, attention_mask=attention_mask)
        model = self.base_model
        image_feat = model.get_image_features(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)  # [M, E]
        text_feat = model.get_text_features(input_ids, attention_mask)  # [N, E]
        logits_per_image = image_feat @ text_feat.t() / self.temp.clamp(0.001, 0.5)  # [M, N]
        return VlRetrievalOutput(logits_per_image=logits_per_image, logits_per_text=logits_per_image.t(),
                                 image_feat=image_feat, text_feat=text_feat)

    def _retrieval_itc(self, image_feat, text_feat, temp, logits_per_image, **inputs):
        """(ITC loss, similarities [B, B] image->text and text->image that ITM's hard negatives are drawn from):
        here the in-batch CLIP loss, each pair its own only positive."""
        return contrastive_loss(image_feat, text_feat, temp), logits_per_image, logits_per_image.t()

    @torch.no_grad()
    def rank(self, pixel_values, input_ids, attention_mask=None, *, k: int = 256, batch_size: int = 64,
             per_direction: bool = False):
        """ALBEF's inference: ITC similarity ranks every pair; each image's top-k texts and each text's top-k images
        (k capped at the gallery size) are re-scored with ITM score (the match logit) + ITC similarity and sort
        above the pairs left out, which keep their ITC order. k = 0: ITC alone.

        Returns scores [N_images, N_texts] where a pair in either side's top k is re-scored, or with `per_direction`
        (image_to_text, text_to_image): each re-scores its own side's top k only, ALBEF's two matrices (rows of the
        first rank texts for an image, columns of the second images for a text); one ITM pass serves both."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"`k` must be an int >= 0 (0: rank by ITC alone), got {k!r}")
        check_tensor("pixel_values", pixel_values, ndim=4, dtype="float")
        check_tensor("input_ids", input_ids, ndim=2, dtype="int")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        model = self.base_model
        image_embeds = torch.cat([model.encode_image(p) for p in pixel_values.split(batch_size)])
        text_embeds = torch.cat([model.encode_text(t, m) for t, m in zip(input_ids.split(batch_size),
                                                                          mask.split(batch_size))])
        sims = (model.image_feat(image_embeds) @ model.text_feat(text_embeds).t()).float()  # [I, T]
        if k == 0:
            return (sims, sims) if per_direction else sims
        none = torch.zeros_like(sims, dtype=torch.bool)
        top_texts = none.scatter(1, sims.topk(min(k, sims.shape[1]), dim=1).indices, True)  # each image's top k
        top_images = none.scatter(0, sims.topk(min(k, sims.shape[0]), dim=0).indices, True)  # each text's top k
        pairs = (top_texts | top_images).nonzero()  # [P, 2] (image, text)
        images, texts = self._fusion_inputs(image_embeds, text_embeds, pixel_values, input_ids)
        rescored = sims.clone()
        for idx in pairs.split(batch_size):
            fused = self._fuse(images[idx[:, 0]], texts[idx[:, 1]], mask[idx[:, 1]])
            rescored[idx[:, 0], idx[:, 1]] += self.itm_head(fused[:, 0])[:, 1].float()

        def scores(chosen):
            # the pairs left out keep their ITC order, shifted below the lowest re-scored pair
            shift = rescored[chosen].min() - sims.max() - 1.0
            return torch.where(chosen, rescored, sims + shift)

        if per_direction:
            return scores(top_texts), scores(top_images)
        return scores(top_texts | top_images)


class AlignFuseRetrievalMixin(PerUpdateState, ImageTextRetrievalMixin):
    """Retrieval of the align-fuse family (ALBEF, VLMAE, VQ-MIM), trained as ALBEF fine-tunes it when
    `config.retrieval_loss == "albef"`: ITC distilled from a momentum copy of the backbone (weight `alpha`) over the
    batch and a feature queue (`queue_size`), every pair of the same image id a positive, in the batch and in the
    queue (which keeps each row's id); ITM hard negatives drawn by ITC similarity, never of the same image.

    The momentum model and queues load from the pre-training checkpoint, as in ALBEF; queue rows from pre-training
    have no id (-1) and count as negatives. Without `image_ids` each pair is its own only positive.
    `retrieval_loss="in_batch"`: `ImageTextRetrievalMixin`'s loss, without the momentum model."""

    # a checkpoint fine-tuned with "in_batch" (or before this loss existed) has no momentum model or queues
    _fresh_modules = (*TASK_HEADS["retrieval"], "momentum_model", "image_queue", "text_queue")

    def _build_retrieval_teacher(self, config):
        if config.retrieval_loss != "albef":
            return
        self.momentum_model = freeze(self._backbone_class(config))  # EMA of the backbone, never trained by gradients
        if config.queue_size > 0:
            self.image_queue = FeatureQueue(config.embed_dim, config.queue_size)
            self.text_queue = FeatureQueue(config.embed_dim, config.queue_size)
            self.image_id_queue = IdQueue(config.queue_size)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.base_model, self.momentum_model)]

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, IdQueue):  # per module: loading initialises only the modules a checkpoint lacks
            module.reset_parameters()

    @torch.no_grad()
    def _init_method_parameters(self):
        super()._init_method_parameters()
        if hasattr(self, "momentum_model"):
            init_teachers_from_students(self.momentum_pairs())  # skipped for weights loaded from a checkpoint

    @torch.no_grad()
    def reset_momentum(self):
        """Copy the student into the momentum model."""
        copy_student_to_teacher(self.momentum_pairs())

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        want_info = kwargs.get("output_loading_info", False)
        model, info = super().from_pretrained(*args, **{**kwargs, "output_loading_info": True})
        # a checkpoint without a momentum model (fine-tuned "in_batch"): it starts as the student, as when built.
        # Loading initialises only the modules a checkpoint lacks, so `_init_method_parameters` does not run here
        if hasattr(model, "momentum_model") and any(k.startswith("momentum_model.") for k in info["missing_keys"]):
            model.reset_momentum()
        return (model, info) if want_info else model

    def _retrieval_itc(self, image_feat, text_feat, temp, logits_per_image, *, pixel_values, input_ids,
                       attention_mask, image_ids, alpha, interpolate_pos_encoding):
        cfg = self.config
        if cfg.retrieval_loss != "albef":
            return super()._retrieval_itc(image_feat, text_feat, temp, logits_per_image)
        alpha = cfg.alpha if alpha is None else alpha
        check_range("alpha", alpha, 0.0, 1.0, high_inclusive=True)
        teacher = self.momentum_model
        queues = (self.image_queue, self.text_queue) if cfg.queue_size > 0 else None
        with torch.no_grad():
            if self.training and self.opens_update():  # once per optimizer update, see layers/accumulation.py
                momentum_update(self.momentum_pairs(), cfg.momentum)
            image_feat_m = gather_no_grad(teacher.image_feat(
                teacher.encode_image(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)))  # [B_global, E]
            text_feat_m = gather_no_grad(teacher.text_feat(teacher.encode_text(input_ids, attention_mask)))
            positives = None
            if image_ids is not None:
                key_ids = gather_no_grad(image_ids)  # [B_global]
                if queues is not None:
                    key_ids = torch.cat([key_ids, self.image_id_queue.ids])  # [B_global + Q]
                positives = image_ids[:, None] == key_ids[None]
        loss, sim_i2t, sim_t2i, local = momentum_itc(image_feat, text_feat, image_feat_m, text_feat_m, temp, alpha,
                                                     queues, positives)
        if self.training and queues is not None:
            ids = image_ids if image_ids is not None else torch.full_like(image_feat[:, 0], -1, dtype=torch.long)
            self.image_id_queue.enqueue(ids, self.image_queue.ptr)  # before the feature queues move their pointer
            self.image_queue.enqueue(image_feat_m[local])
            self.text_queue.enqueue(text_feat_m[local])
        return loss, sim_i2t[:, local], sim_t2i[:, local]


class QuestionAnsweringMixin(_TaskMixin):
    """A classifier over the answer vocabulary (`config.id2label`) on the fused [CLS], trained on soft scores."""

    _fresh_modules = TASK_HEADS["vqa"]

    def __init__(self, config):
        super().__init__(config)
        self._build_backbone(config)
        self.vqa_head = ClassifierHead(config.text_config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, labels=None,
                interpolate_pos_encoding=False, **kwargs) -> VlClassificationOutput:
        logits = self.vqa_head(self._pooled(pixel_values, input_ids, attention_mask, interpolate_pos_encoding))
        loss = None
        if labels is not None:
            check_tensor("labels", labels, ndim=2, dtype="float", last_dim=logits.shape[-1])
            loss = vqa_soft_score_loss(logits, labels)
        return VlClassificationOutput(loss=loss, logits=logits)


class VisualGroundingMixin(_TaskMixin):
    """One box per (image, referring expression): the fused [CLS] picks the patch that holds the object's centre
    and that patch's box is the answer (`PatchBoxHead`). Loss: cross-entropy on the centre patch + L1 + GIoU on
    its box. `scores` is the chosen patch's probability, `patch_logits` the map over the image (a heatmap).

    `_grounding_features` gives the pair's pooled feature and its image patches; a backbone whose patches live
    elsewhere (VL-BEiT's joint pass) overrides it, and `_patch_dim` where their width is not the vision tower's."""

    _fresh_modules = TASK_HEADS["grounding"]

    def __init__(self, config):
        super().__init__(config)
        self._build_backbone(config)
        self.box_head = PatchBoxHead(config.text_config.hidden_size, self._patch_dim(config))
        self.post_init()

    @staticmethod
    def _patch_dim(config) -> int:
        return config.vision_config.hidden_size

    def _grounding_features(self, pixel_values, input_ids, attention_mask, interpolate_pos_encoding=False):
        """(pooled pair feature [B, D], image patches [B, N, Dp]); the patches follow the image's [CLS]."""
        image_embeds, text_embeds, mask = self._encode_pair(pixel_values, input_ids, attention_mask,
                                                            interpolate_pos_encoding)
        return self.base_model.fuse(image_embeds, text_embeds, mask)[:, 0], image_embeds[:, 1:]

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, labels=None,
                interpolate_pos_encoding=False, **kwargs) -> VlGroundingOutput:
        pooled, patches = self._grounding_features(pixel_values, input_ids, attention_mask, interpolate_pos_encoding)
        patch = self.config.vision_config.patch_size
        grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        logits, boxes = self.box_head(pooled, patches, grid)  # [B, N], [B, N, 4]
        rows = torch.arange(logits.shape[0], device=logits.device)
        best = logits.argmax(-1)
        loss = None
        if labels is not None:
            check_tensor("labels", labels, ndim=2, dtype="float", last_dim=4)
            target = patch_of(labels, grid)
            loss = nn.functional.cross_entropy(logits.float(), target) + grounding_loss(boxes[rows, target], labels)
        return VlGroundingOutput(loss=loss, pred_boxes=boxes[rows, best], scores=logits.softmax(-1)[rows, best],
                                 patch_logits=logits)


class ImagesAndTextClassificationMixin(_TaskMixin):
    """NLVR2: one statement, two images; the two fused [CLS] are concatenated and classified (true/false)."""

    _fresh_modules = TASK_HEADS["nlvr2"]

    def __init__(self, config):
        super().__init__(config)
        self._build_backbone(config)
        self.classifier = ClassifierHead(2 * config.text_config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, labels=None,
                interpolate_pos_encoding=False, **kwargs) -> VlClassificationOutput:
        check_tensor("pixel_values", pixel_values, ndim=5, dtype="float")
        if pixel_values.shape[1] != 2:
            raise ValueError(f"`pixel_values` must hold 2 images per example [B, 2, C, H, W], "
                             f"got {tuple(pixel_values.shape)}")
        pooled = [self._pooled(pixel_values[:, i], input_ids, attention_mask, interpolate_pos_encoding)
                  for i in range(2)]
        logits = self.classifier(torch.cat(pooled, dim=-1))
        loss = None
        if labels is not None:
            check_tensor("labels", labels, ndim=1, dtype="int")
            loss = nn.functional.cross_entropy(logits, labels)
        return VlClassificationOutput(loss=loss, logits=logits)
