"""VLMAE configuration (He et al., 2022, "VLMAE: Vision-Language Masked Autoencoder", arXiv 2208.09374)."""

from huggingface_hub.dataclasses import strict

from ...configuration_utils import AlignFuseConfig, _check_heads
from ...layers.masking import num_kept
from ...utils import check_range


@strict
class VlmaeConfig(AlignFuseConfig):
    """ALBEF plus visual generative learning: the student image encoder sees only the visible patches.

    The paper's exact recipe (mask ratio, decoder size, loss weights, targets) could not be verified; every
    VLMAE-specific default below is OURS, following MAE (He et al. 2021) where it applies:

    - mask_ratio 0.75 (MAE's default): fraction of patches hidden from the student image encoder; the momentum
      teacher encodes the full image.
    - align_on_masked_image True: ITC, ITM and MLM are computed from the visible-patch features (one student
      pass over a quarter of the patches: VLMAE's speed-up). False computes them from a second student pass over
      the full image, as ALBEF does; the tiny and small presets use False, since on images with a few small
      objects (Shapes) the visible quarter often misses an object the caption names, and the pair the alignment
      losses call matching no longer matches (docs/methods.md, "Learning from scratch").
    - A light Transformer decoder (decoder_hidden_size 512, decoder_num_layers 4, decoder_num_heads 16 at
      base) puts mask tokens back in place and, with `decoder_use_text`, cross-attends to the caption, so the
      text guides the reconstruction (RMIM: regional masked image modeling).
    - loss_rmim: MSE on normalised pixels of the masked patches only (`norm_pix_loss`).
    - loss_ifr: image feature reconstruction, predicting the momentum encoder's features of the full image at
      the masked positions (`ifr_loss`: "cosine" or "smooth_l1").
    """

    model_type = "vlmae"

    mask_ratio: float | int = 0.75
    align_on_masked_image: bool = True
    decoder_hidden_size: int = 512
    decoder_num_layers: int = 4
    decoder_num_heads: int = 16
    decoder_use_text: bool = True
    norm_pix_loss: bool = True
    ifr_loss: str = "cosine"
    rmim_weight: float | int = 1.0
    ifr_weight: float | int = 1.0

    def validate_vlmae(self):
        check_range("mask_ratio", self.mask_ratio, 0.0, 1.0)
        vision = self.vision_config
        n = getattr(vision, "num_patches", None)
        if n is not None and num_kept(n, self.mask_ratio) == n:
            # no patch masked: the reconstruction losses would be means over nothing (NaN)
            raise ValueError(
                f"`mask_ratio` must be >= 1 / num_patches = 1/{n} = {1 / n:.4g} (image_size {vision.image_size}, "
                f"patch_size {vision.patch_size}) so that at least one patch is masked, got {self.mask_ratio}"
            )
        _check_heads("decoder", self.decoder_hidden_size, self.decoder_num_heads)
        if self.decoder_num_layers < 1:
            raise ValueError(f"`decoder_num_layers` must be >= 1, got {self.decoder_num_layers}")
        if self.ifr_loss not in ("cosine", "smooth_l1"):
            raise ValueError(f"`ifr_loss` must be 'cosine' or 'smooth_l1', got {self.ifr_loss!r}")
        for name in ("rmim_weight", "ifr_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}")


__all__ = ["VlmaeConfig"]
