"""VL-BEiT configuration (Bao, Wang et al., 2022, "VL-BEiT: Generative Vision-Language Pretraining",
arXiv 2206.01127) and the configuration of its visual tokenizer (BEiT v2's VQ-KD shape)."""

from huggingface_hub.dataclasses import strict

from ...configuration_utils import (
    TextTowerConfig,
    VisionTowerConfig,
    VlPreTrainedConfig,
    check_codebook_fields,
)
from ...utils import check_range

RECONSTRUCTION_TARGETS = ("pixels", "features")
TOKENIZER_ENCODERS = ("vit", "patch")
RELATIVE_POSITION_INITS = ("normal", "locality")


@strict
class VlBeitTokenizerConfig(VlPreTrainedConfig):
    """A VQ-KD-style visual tokenizer: ViT encoder -> Linear-Tanh-Linear -> cosine codebook -> transformer decoder
    -> the reconstruction target (BEiT v2, arXiv 2208.06366).

    BEiT v2's values where they are known: 8192 codes of dimension 32, L2-normalised codes with EMA decay 0.99,
    commitment weight 1.0, k-means init, a 3-layer decoder and a cosine loss on teacher (CLIP) features. OURS: the
    default target is "pixels" (normalised patch pixels, MSE), because no teacher can be downloaded here; pass
    `teacher_features` to `forward` with `reconstruction_target="features"` and `teacher_dim` for VQ-KD proper.
    `dead_code_after` None (never restart codes; BEiT v2 does not) and the decoder's width equals the encoder's.

    `encoder` (OURS): "vit" (BEiT v2: a ViT of `vision_config`'s shape, every preset) or "patch", a patch-local
    encoder (`VlBeitPatchEncoder`): each raw pixel through one linear map `vision_config.hidden_size` wide, then
    the maximum over the patch's pixels; no attention across patches and no position embeddings, so a patch's code
    depends on its own pixels only (the same content gets the same code wherever it is). It reads only
    `image_size`, `patch_size`, `num_channels` and `hidden_size` of `vision_config`; with it the codebook's k-means
    init counts each distinct patch once. The decoder is the same either way. On Shapes it keeps the object patches
    off the background's code with stable codes; the small preset uses it, frozen (docs/methods/vl_beit.md, "Does
    it learn?").
    """

    model_type = "vl_beit_tokenizer"
    base_config_key = "tokenizer_config"
    sub_configs_defaults = {"vision_config": VisionTowerConfig}

    vision_config: dict | VisionTowerConfig | None = None
    num_codes: int = 8192
    code_dim: int = 32
    codebook_decay: float | int | None = 0.99
    commitment_weight: float | int = 1.0
    cosine_codes: bool = True
    kmeans_init: bool = True
    dead_code_after: int | None = None
    decoder_layers: int = 3
    reconstruction_target: str = "pixels"  # "pixels" (patch pixels) or "features" (a teacher's)
    teacher_dim: int | None = None  # width of the teacher features when reconstruction_target == "features"
    norm_pix_loss: bool = True  # reconstruct each patch normalised by its own mean and std (MAE); False: raw pixels
    encoder: str = "vit"  # "vit" or "patch" (patch-local, see above)
    # True: the encoder keeps its random initialisation and only the codebook learns, an online k-means of random
    # patch features (a random-projection quantizer, BEST-RQ, Chiu et al. 2022). The small preset's, with "patch": on
    # Shapes a trained ViT encoder collapses the object patches onto the background's code (docs/methods/vl_beit.md)
    freeze_encoder: bool = False
    initializer_range: float | int = 0.02

    def validate_tokenizer(self):
        check_codebook_fields(self)
        if self.encoder not in TOKENIZER_ENCODERS:
            raise ValueError(f"`encoder` must be one of {list(TOKENIZER_ENCODERS)}, got {self.encoder!r}")
        if self.decoder_layers < 0:
            raise ValueError(f"`decoder_layers` must be >= 0, got {self.decoder_layers}")
        if self.reconstruction_target not in RECONSTRUCTION_TARGETS:
            raise ValueError(f"`reconstruction_target` must be one of {list(RECONSTRUCTION_TARGETS)}, "
                             f"got {self.reconstruction_target!r}")
        if self.reconstruction_target == "features" and (self.teacher_dim is None or self.teacher_dim < 1):
            raise ValueError(f"`teacher_dim` must be >= 1 when reconstruction_target='features', "
                             f"got {self.teacher_dim}")


@strict
class VlBeitConfig(VlPreTrainedConfig):
    """VL-BEiT: one multiway Transformer (shared self-attention; vision, language and vision-language FFN
    experts, each with its own norm) trained from scratch with one masked-prediction task on three kinds of data.

    The backbone's width, depth, heads and FFN size are `vision_config`'s (hidden_size, num_hidden_layers, ...);
    `text_config` gives the vocabulary, positions, special tokens and the text embeddings (its hidden_size must
    equal the vision one; its layer counts are unused). `tokenizer_config` describes the visual tokenizer whose
    codes are the MIM targets; its patch grid must be the backbone's.

    Verified (abstract): MLM on texts, MIM on images (visual-token targets), masked VL modeling on pairs, one
    shared backbone, one stage, no contrastive or matching loss. From VLMo's code (the backbone VL-BEiT reuses):
    VL experts in the top layers (`num_vl_layers`: 2 of 12 at base, 3 of 24 at large), layer scale 0.1, relative
    position bias. Everything else is OURS:

    - `mlm_probability` 0.15 (text only), `mvlm_probability` 0.5 (the text of pairs: BEiT-3's ratio; the paper
      says "higher"), BERT's 80/10/10; `mim_mask_ratio` 0.4 block-wise (BEiT: 75 of 196; here round(0.4 N) =
      78 at 224/16), on images and on the image of pairs (`mvlm_mask_image`; whether VL-BEiT masks both
      modalities of a pair is unverified).
    - `loss_mvlm` = CE on the pair's masked text + CE on its masked patches, both read from the VL experts.
    - `unimodal_from_pairs`: a batch without text-only (image-only) rows uses its pairs' captions (images) as
      text-only (image-only) data, so any batch trains every objective and every expert (DDP needs that).
    - `embed_dim` / `temperature`: the ITC projections and temperature of dual-encoder retrieval fine-tuning
      (unused in pre-training, where the projections are frozen).
    - `relative_position_init` "locality" (the tiny / small presets): the bias table starts as a distance prior
      instead of ~0, so MIM finds a masked patch's neighbours within a short run (docs/methods/vl_beit.md).
    - The relative position bias covers image tokens only (text tokens get none; they have absolute positions),
      and the patches also keep absolute position embeddings.
    """

    model_type = "vl_beit"
    sub_configs_defaults = {"vision_config": VisionTowerConfig, "text_config": TextTowerConfig,
                            "tokenizer_config": VlBeitTokenizerConfig}

    vision_config: dict | VisionTowerConfig | None = None
    text_config: dict | TextTowerConfig | None = None
    tie_word_embeddings: bool = True  # the MLM decoder's weight is the text word embeddings (BERT, ALBEF)
    tokenizer_config: dict | VlBeitTokenizerConfig | None = None
    num_vl_layers: int = 2  # top layers whose pair tokens go through the vision-language expert
    layer_scale_init_value: float | int | None = 0.1
    use_relative_position_bias: bool = True
    # "normal": the table starts trunc-normal at initializer_range (BEiT, VLMo); "locality": a distance prior, near
    # patches favoured (`RelativePositionBias.init_locality`; the tiny and small presets, which train from scratch)
    relative_position_init: str = "normal"
    mlm_probability: float | int = 0.15
    mvlm_probability: float | int = 0.5
    mim_mask_ratio: float | int = 0.4
    mvlm_mask_image: bool = True
    unimodal_from_pairs: bool = True
    mlm_weight: float | int = 1.0
    mim_weight: float | int = 1.0
    mvlm_weight: float | int = 1.0
    embed_dim: int = 256
    temperature: float | int = 0.07
    # semantic segmentation (`VlBeitForSemanticSegmentation`): the layers whose outputs the decoder reads (1-based;
    # None: 4 evenly spaced, the last included, e.g. 3, 6, 9, 12 at base; BEiT's UperNet config says [3, 5, 7, 11])
    # and the label the loss skips (255, BEiT's and SegFormer's `semantic_loss_ignore_index`)
    segmentation_layers: list[int] | None = None
    semantic_loss_ignore_index: int = 255
    initializer_range: float | int = 0.02

    def __post_init__(self, **kwargs):
        kwargs.pop("queue_size", None)  # the shared size presets set it; VL-BEiT keeps no feature queue
        tok = self.tokenizer_config
        if tok is None or isinstance(tok, dict):
            # by default the tokenizer's encoder is a ViT of the backbone's shape, so the patch grids agree
            tok = dict(tok or {})
            if "vision_config" not in tok:
                vision = self.vision_config
                vision = vision.to_dict() if isinstance(vision, VisionTowerConfig) else dict(vision or {})
                tok["vision_config"] = {**vision, "use_mask_token": False}
            self.tokenizer_config = tok
        super().__post_init__(**kwargs)
        self.vision_config.use_mask_token = True  # masked patches become a learned [MASK] embedding (BEiT)

    @property
    def segmentation_layer_indices(self) -> list[int]:
        """`segmentation_layers`, or 4 evenly spaced layers ending with the last (fewer when the model is shallower)."""
        if self.segmentation_layers is not None:
            return list(self.segmentation_layers)
        depth = self.vision_config.num_hidden_layers
        return sorted({max(1, depth * k // 4) for k in range(1, 5)})

    @property
    def num_masking_patches(self) -> int:
        """Patches masked per image: round(mim_mask_ratio * N), at least 1 (read by `PreTrainingCollator`)."""
        n = self.vision_config.num_patches
        return min(n, max(1, round(self.mim_mask_ratio * n)))

    def validate_objectives(self):
        for name in ("mlm_probability", "mvlm_probability"):
            check_range(name, getattr(self, name), 0.0, 1.0, high_inclusive=True)
        check_range("mim_mask_ratio", self.mim_mask_ratio, 0.0, 1.0)
        if self.mim_mask_ratio == 0.0:
            raise ValueError(f"`mim_mask_ratio` must be in (0, 1), got {self.mim_mask_ratio}")
        check_range("temperature", self.temperature, 0.001, 0.5, high_inclusive=True)
        if self.embed_dim < 1:
            raise ValueError(f"`embed_dim` must be >= 1, got {self.embed_dim}")
        if self.layer_scale_init_value is not None and self.layer_scale_init_value <= 0:
            raise ValueError(f"`layer_scale_init_value` must be > 0 or None, got {self.layer_scale_init_value}")
        if self.relative_position_init not in RELATIVE_POSITION_INITS:
            raise ValueError(f"`relative_position_init` must be one of {list(RELATIVE_POSITION_INITS)}, "
                             f"got {self.relative_position_init!r}")
        for name in ("mlm_weight", "mim_weight", "mvlm_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be >= 0, got {getattr(self, name)}")

    def validate_towers(self):
        vision, text, tok = self.vision_config, self.text_config, self.tokenizer_config
        if any(c is None or isinstance(c, dict) for c in (vision, text, tok)):
            return
        if not 0 <= self.num_vl_layers <= vision.num_hidden_layers:
            raise ValueError(f"`num_vl_layers` must be in [0, vision_config.num_hidden_layers="
                             f"{vision.num_hidden_layers}], got {self.num_vl_layers}")
        if text.hidden_size != vision.hidden_size:
            raise ValueError(f"`text_config.hidden_size` ({text.hidden_size}) must equal `vision_config.hidden_size` "
                             f"({vision.hidden_size}): VL-BEiT has one shared backbone")
        layers = self.segmentation_layers
        if layers is not None and (not layers or not all(1 <= i <= vision.num_hidden_layers for i in layers)):
            raise ValueError(f"`segmentation_layers` must be a non-empty list of layers in [1, "
                             f"{vision.num_hidden_layers}] or None, got {layers}")
        grid = vision.image_size // vision.patch_size
        tok_grid = tok.vision_config.image_size // tok.vision_config.patch_size
        if tok.vision_config.image_size != vision.image_size or tok_grid != grid:
            raise ValueError(f"`tokenizer_config.vision_config` must read {vision.image_size}px images on the "
                             f"backbone's {grid}x{grid} patch grid (one code per patch), got "
                             f"{tok.vision_config.image_size}px on {tok_grid}x{tok_grid}")


__all__ = ["VlBeitConfig", "VlBeitTokenizerConfig"]
