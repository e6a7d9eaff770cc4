"""The backbone protocol every method's `XModel` exposes, and the methods it derives from it.

A backbone provides `encode_image`, `encode_text`, `fuse` (whose [:, 0] is the pair's pooled feature) and the ITC
projections `vision_proj` / `text_proj`; this mixin adds the ITC features and `forward` -> `VlModelOutput`, which
retrieval, pipelines and the task mixins rely on.
"""

from __future__ import annotations

import torch.nn.functional as F

from ..utils import check_same_batch
from .outputs import VlModelOutput


class BackboneMixin:
    def image_feat(self, image_embeds):
        return F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)  # [B, E]

    def text_feat(self, text_embeds):
        return F.normalize(self.text_proj(text_embeds[:, 0]), dim=-1)  # [B, E]

    def get_image_features(self, pixel_values, interpolate_pos_encoding=False):
        return self.image_feat(self.encode_image(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding))

    def get_text_features(self, input_ids, attention_mask=None):
        return self.text_feat(self.encode_text(input_ids, attention_mask))

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, interpolate_pos_encoding=False,
                **kwargs) -> VlModelOutput:
        if pixel_values is None and input_ids is None:
            raise ValueError("pass `pixel_values`, `input_ids`, or both; got neither")
        if pixel_values is not None and input_ids is not None:
            check_same_batch(pixel_values=pixel_values, input_ids=input_ids)
        out = VlModelOutput()
        if pixel_values is not None:
            out.image_embeds = self.encode_image(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
            out.image_feat = self.image_feat(out.image_embeds)
        if input_ids is not None:
            out.text_embeds = self.encode_text(input_ids, attention_mask)
            out.text_feat = self.text_feat(out.text_embeds)
        if pixel_values is not None and input_ids is not None:
            out.multimodal_embeds = self.joint_embeds(out, pixel_values, input_ids, attention_mask,
                                                      interpolate_pos_encoding)
        return out

    def joint_embeds(self, unimodal: VlModelOutput, pixel_values, input_ids, attention_mask,
                     interpolate_pos_encoding=False):
        """The pair's joint sequence for `forward`: two-tower methods fuse the unimodal outputs they already have;
        a single-stream backbone (VL-BEiT) overrides this to run its joint pass from the inputs."""
        return self.fuse(unimodal.image_embeds, unimodal.text_embeds, attention_mask)
