"""ViLTA configuration (Wang et al., ICCV 2023, "ViLTA: Enhancing Vision-Language Pre-training through Textual
Augmentation", arXiv 2308.16689)."""

from huggingface_hub.dataclasses import strict

from ...configuration_utils import TextTowerConfig, VisionTowerConfig, VlPreTrainedConfig
from ...utils import check_range


@strict
class ViltaConfig(VlPreTrainedConfig):
    """ViLTA: three encoders (a ViT, a BERT-style language encoder, a two-stream co-attention multimodal encoder
    of `text_config.num_fusion_layers` layers at the text width), pre-trained with MLM + ITM.

    What the paper states (abstract, Figure 1): MLM targets are softened by a *frozen* language encoder
    (cross-distillation), and ITM gets hard negatives synthesised by the *current* language encoder from the
    caption's context. Everything numeric below is OURS (the paper's values could not be verified):

    - Backbone (METER-like, as the paper is recalled): the base preset has a full 12-layer language encoder and
      6 co-attention layers; MLM probability 0.15 and equal MLM / ITM weights as in METER.
    - Soft labels: `loss_mlm = (1 - alpha) * CE(one-hot) + alpha * tau**2 * CE(softmax(teacher / tau),
      log_softmax(student / tau))` at masked positions only. The teacher is a frozen copy of the language encoder
      and its MLM head as they were at the start of training (load a pretrained text checkpoint with
      `from_pretrained_towers`), reading the masked caption without the image. alpha 0.4 (ALBEF's distillation
      weight), tau (`soft_label_temperature`) 1.0, `soft_label_top_k` None (the full vocabulary).
    - Synthetic negatives: `synthetic_mask_ratio` 0.15 of a caption's content tokens (at least one) are masked
      and refilled in one pass by the current language encoder and MLM head (no gradients), each with a token
      drawn from the `synthetic_top_k` 10 most likely ones at `synthetic_temperature` 1.0, never the original
      token and never a special token.
    - ITM batch: B positives, `itm_inbatch_ratio * B` pairs with another caption of the batch (drawn uniformly,
      METER-style) and `itm_synthetic_ratio * B` pairs with a synthetic caption; defaults 1.0 and 1.0 (1:1:1).
    - ITC is not in the paper (`itc_weight` 0.0). `ViltaModel` still has ITC projections (`embed_dim`,
      `temperature`) so that retrieval (ITC ranks, ITM re-ranks) works after fine-tuning; with `itc_weight > 0`
      pre-training adds the in-batch CLIP loss. While it is 0 the projections are frozen in pre-training.
    - `queue_size` must stay 0: ViLTA has no momentum encoder and so no feature queue (the field exists because
      the shared size presets set it; ViLTA's presets set it to 0).
    """

    model_type = "vilta"
    sub_configs_defaults = {"vision_config": VisionTowerConfig, "text_config": TextTowerConfig}

    vision_config: dict | VisionTowerConfig | None = None
    text_config: dict | TextTowerConfig | None = None
    tie_word_embeddings: bool = True  # the MLM decoder's weight is the text word embeddings (BERT, ALBEF)
    embed_dim: int = 256  # ITC projection size (retrieval)
    temperature: float | int = 0.07  # ITC temperature, learnable, clamped to [0.001, 0.5]
    queue_size: int = 0
    mlm_probability: float | int = 0.15
    alpha: float | int = 0.4  # weight of the frozen teacher's soft labels in the MLM loss
    soft_label_temperature: float | int = 1.0
    soft_label_top_k: int | None = None
    synthetic_mask_ratio: float | int = 0.15
    synthetic_top_k: int | None = 10
    synthetic_temperature: float | int = 1.0
    itm_inbatch_ratio: float | int = 1.0
    itm_synthetic_ratio: float | int = 1.0
    itc_weight: float | int = 0.0
    itm_weight: float | int = 1.0
    mlm_weight: float | int = 1.0
    initializer_range: float | int = 0.02

    def validate_objectives(self):
        check_range("temperature", self.temperature, 0.001, 0.5, high_inclusive=True)
        for name in ("alpha", "mlm_probability", "synthetic_mask_ratio", "itm_inbatch_ratio", "itm_synthetic_ratio"):
            check_range(name, getattr(self, name), 0.0, 1.0, high_inclusive=True)
        for name in ("soft_label_temperature", "synthetic_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}")
        for name in ("soft_label_top_k", "synthetic_top_k"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1 or None, got {getattr(self, name)}")
        if self.queue_size != 0:
            raise ValueError(f"`queue_size` must be 0: ViLTA has no momentum encoder and keeps no feature queue, "
                             f"got {self.queue_size}")
        if self.embed_dim < 1:
            raise ValueError(f"`embed_dim` must be >= 1, got {self.embed_dim}")
        for name in ("itc_weight", "itm_weight", "mlm_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        if self.itm_weight > 0 and self.itm_inbatch_ratio == 0 and self.itm_synthetic_ratio == 0:
            raise ValueError("`itm_inbatch_ratio` and `itm_synthetic_ratio` are both 0: ITM would see no negatives")

    def validate_towers(self):
        text = self.text_config
        if text is None or isinstance(text, dict):
            return
        if text.num_fusion_layers < 1:
            raise ValueError(f"`text_config.num_fusion_layers` (co-attention layers) must be >= 1, "
                             f"got {text.num_fusion_layers}")
        if self.soft_label_top_k is not None and self.soft_label_top_k > text.vocab_size:
            raise ValueError(f"`soft_label_top_k` must be at most the vocabulary size {text.vocab_size}, "
                             f"got {self.soft_label_top_k}")


__all__ = ["ViltaConfig"]
