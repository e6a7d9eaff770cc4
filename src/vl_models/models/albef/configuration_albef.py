"""ALBEF configuration (Li et al., 2021, "Align before Fuse", arXiv 2107.07651)."""

from huggingface_hub.dataclasses import strict

from ...configuration_utils import AlignFuseConfig


@strict
class AlbefConfig(AlignFuseConfig):
    """ALBEF: ViT-B/16 image encoder, BERT-base split 6 text + 6 fusion layers, ITC + ITM + MLM.

    All fields come from `AlignFuseConfig`; defaults follow ALBEF's released `Pretrain.yaml`
    (embed_dim 256, temperature 0.07, queue 65536, momentum 0.995, alpha 0.4, MLM 15%, equal weights).
    """

    model_type = "albef"


__all__ = ["AlbefConfig"]
