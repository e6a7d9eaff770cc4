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

from ..utils import check_same_batch, check_tensor
from .align_fuse import itm_with_hard_negatives
from .heads import ClassifierHead, PatchBoxHead, patch_of
from .losses import contrastive_loss, grounding_loss, vqa_soft_score_loss
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
    "retrieval": ("itm_head", "temp"),  # in the align-fuse family's pre-training checkpoints too, not in VL-BEiT's
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
    """ITC ranks all pairs; ITM re-ranks the top k (ALBEF). Training: contrastive + hard-negative ITM.

    The fusion encoder pairs up the unimodal outputs; a backbone whose fusion is a joint pass from the inputs
    (VL-BEiT) overrides `_fusion_inputs` and `_fuse`."""

    _fresh_modules = TASK_HEADS["retrieval"]

    def __init__(self, config):
        super().__init__(config)
        self._build_backbone(config, uses_itc=True)
        self.itm_head = nn.Linear(config.text_config.hidden_size, 2)
        self.temp = nn.Parameter(torch.tensor(float(config.temperature)))
        self.post_init()

    def _init_method_parameters(self):
        from transformers import initialization as init

        init.constant_(self.temp, self.config.temperature)

    def _fusion_inputs(self, image_embeds, text_embeds, pixel_values, input_ids):
        """What `_fuse` pairs up, row for row."""
        return image_embeds, text_embeds

    def _fuse(self, images, texts, attention_mask, interpolate_pos_encoding=False):
        return self.base_model.fuse(images, texts, attention_mask)  # the image embeddings are interpolated already

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, return_loss=None,
                generator=None, interpolate_pos_encoding=False, **kwargs) -> VlRetrievalOutput:
        image_embeds, text_embeds, mask = self._encode_pair(pixel_values, input_ids, attention_mask,
                                                            interpolate_pos_encoding)
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
            loss_itm, _, _ = itm_with_hard_negatives(fuse, self.itm_head, images, texts, mask,
                                                     logits_per_image, logits_per_image.t(), generator,
                                                     getattr(self.config, "itm_uniform_negatives", 0.0))
            out.loss = contrastive_loss(image_feat, text_feat, temp) + loss_itm
        return out

    @torch.no_grad()
    def rank(self, pixel_values, input_ids, attention_mask=None, *, k: int = 16, batch_size: int = 64):
        """Scores [N_images, N_texts]: ITC similarity everywhere, plus 2 + the ITM match probability for each
        image's top-k texts and each text's top-k images (so re-ranked pairs sort first). k = 0: ITC alone."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"`k` must be an int >= 0 (0: rank by ITC alone), got {k!r}")
        check_tensor("pixel_values", pixel_values, ndim=4, dtype="float")
        check_tensor("input_ids", input_ids, ndim=2, dtype="int")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        model = self.base_model
        image_embeds = torch.cat([model.encode_image(p) for p in pixel_values.split(batch_size)])
        text_embeds = torch.cat([model.encode_text(t, m) for t, m in zip(input_ids.split(batch_size),
                                                                          mask.split(batch_size))])
        sims = model.image_feat(image_embeds) @ model.text_feat(text_embeds).t()  # [I, T]
        if k == 0:
            return sims
        k_t, k_i = min(k, sims.shape[1]), min(k, sims.shape[0])
        pairs = {(i, int(t)) for i in range(sims.shape[0]) for t in sims[i].topk(k_t).indices}
        pairs |= {(int(i), t) for t in range(sims.shape[1]) for i in sims[:, t].topk(k_i).indices}
        pairs = torch.tensor(sorted(pairs), device=sims.device)
        images, texts = self._fusion_inputs(image_embeds, text_embeds, pixel_values, input_ids)
        scores = sims.clone()
        for idx in pairs.split(batch_size):
            fused = self._fuse(images[idx[:, 0]], texts[idx[:, 1]], mask[idx[:, 1]])
            scores[idx[:, 0], idx[:, 1]] = 2.0 + self.itm_head(fused[:, 0]).softmax(-1)[:, 1]  # above any cosine
        return scores


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
