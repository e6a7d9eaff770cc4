"""VQ-MIM configuration (Guo et al., 2022, "Augmenting Vision Language Pretraining by Learning Codebook with
Visual Semantics", arXiv 2208.00475)."""

from huggingface_hub.dataclasses import strict

from ...configuration_utils import AlignFuseConfig, check_codebook_fields
from ...utils import check_range


@strict
class VqMimConfig(AlignFuseConfig):
    """ALBEF plus masked image modeling on the codes of a visual codebook learned with the model.

    The paper's recipe (K, code dimension, mask ratio, loss weights, how the codebook is updated) could not be
    verified; every VQ-MIM-specific default below is OURS, following BEiT / BEiT v2 and VQ-VAE where they apply:

    - num_codes 8192, code_dim 32 (BEiT v2's VQ-KD codebook); cosine_codes (L2-normalised codes, BEiT v2);
      codebook_decay 0.99 (EMA updates, VQ-VAE / BEiT v2; None = the codebook is learned by gradient);
      commitment_weight 0.25 (VQ-VAE); kmeans_init (k-means on the first training batch, BEiT v2's option);
      dead_code_after 100 (a code unused for that many steps restarts from a batch vector; None = never).
    - vq_reconstruction "cosine": a small decoder reconstructs the teacher's patch features from the quantized
      codes (VQ-VAE's reconstruction term with the teacher's features as the data, as in BEiT v2's VQ-KD);
      "smooth_l1" or "none" (commitment only) are the alternatives.
    - freeze_codebook: the codebook and its encoder/decoder stay fixed (no gradients, no EMA, no restarts), e.g.
      for a second stage on a learned codebook; the MIM targets are then a deterministic function of the
      teacher's features.
    - mim_mask_ratio 0.4: BEiT block-wise masking (75 of 196 patches in BEiT).
    - mim_fusion_layers 2: pre-LN layers in which the (masked) image tokens cross-attend to the caption before
      the code classifier; 0 predicts from the image encoder alone.
    - align_on_masked_image False: ITC, ITM and MLM see the full image (as in ALBEF; MIM is the image-side
      counterpart of MLM, which masks the caption only), at the cost of a second student image pass; True
      computes them from the masked image's features (one pass).
    - mim_weight, vq_weight 1.0.

    The vision tower always gets a [MASK] patch embedding (`vision_config.use_mask_token` is set True).
    """

    model_type = "vq_mim"

    num_codes: int = 8192
    code_dim: int = 32
    codebook_decay: float | int | None = 0.99
    commitment_weight: float | int = 0.25
    cosine_codes: bool = True
    kmeans_init: bool = True
    dead_code_after: int | None = 100
    vq_reconstruction: str = "cosine"
    freeze_codebook: bool = False
    mim_mask_ratio: float | int = 0.4
    mim_fusion_layers: int = 2
    align_on_masked_image: bool = False
    mim_weight: float | int = 1.0
    vq_weight: float | int = 1.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # the student's masked-image pass replaces hidden patches by a learned [MASK] embedding (BEiT)
        self.vision_config.use_mask_token = True

    def validate_vq_mim(self):
        check_codebook_fields(self)
        if self.vq_reconstruction not in ("cosine", "smooth_l1", "none"):
            raise ValueError(f"`vq_reconstruction` must be 'cosine', 'smooth_l1' or 'none', got {self.vq_reconstruction!r}")
        check_range("mim_mask_ratio", self.mim_mask_ratio, 0.0, 1.0)
        if self.mim_mask_ratio == 0.0:
            raise ValueError(f"`mim_mask_ratio` must be in (0, 1), got {self.mim_mask_ratio}")
        if self.mim_fusion_layers < 0:
            raise ValueError(f"`mim_fusion_layers` must be >= 0, got {self.mim_fusion_layers}")
        for name in ("mim_weight", "vq_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}")


__all__ = ["VqMimConfig"]
