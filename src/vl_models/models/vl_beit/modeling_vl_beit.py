"""VL-BEiT: one multiway Transformer (VLMo's backbone) pre-trained from scratch with masked prediction on texts
(MLM), images (MIM on visual-token targets) and image-text pairs (masked VL modeling through the VL experts)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init

from ...layers.attention import key_padding_mask
from ...layers.backbone import BackboneMixin
from ...layers.embeddings import PatchEmbeddings, TextEmbeddings
from ...layers.relative_position import RelativePositionBias
from ...layers.transformer import MultiwayLayer
from ...modeling_utils import VlPreTrainedModel
from ...utils import check_same_batch, check_tensor
from .configuration_vl_beit import VlBeitConfig

TEXT, IMAGE = 0, 1  # modality type embedding rows


class VlBeitPreTrainedModel(VlPreTrainedModel):
    config_class = VlBeitConfig
    base_model_prefix = "vl_beit"
    _pretraining_only_modules = ("mlm_head", "mim_head", "visual_tokenizer")
    # the relative position bias is an additive score bias: eager and sdpa take it, flash and flex do not
    _supports_flash_attn = False
    _supports_flex_attn = False

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, RelativePositionBias):
            init.trunc_normal_(module.table, std=self.config.initializer_range)
            if self.config.relative_position_init == "locality":
                init.copy_(module.table, module.locality_table())


class VlBeitModel(BackboneMixin, VlBeitPreTrainedModel):
    """The multiway backbone. Three passes share every attention weight:

    - `encode_text(input_ids, attention_mask)` -> [B, T, D]: text tokens through the language experts;
    - `encode_image(pixel_values)` -> [B, 1 + N, D]: image tokens through the vision experts;
    - `encode_pair(pixel_values, input_ids, attention_mask)` -> [B, T + 1 + N, D]: `[text | image]` attend to each
      other; below the top `config.num_vl_layers` layers each token still takes its own modality's expert, in
      them the vision-language expert takes all. `fuse` is the same pass; `[:, 0]` (the text [CLS]) is the pair's
      pooled feature.

    `vision_proj` / `text_proj` project the unimodal [CLS] for dual-encoder retrieval (ITC).
    """

    def __init__(self, config: VlBeitConfig):
        super().__init__(config)
        vision, text = config.vision_config, config.text_config
        width, depth = vision.hidden_size, vision.num_hidden_layers
        self.text_embeddings = TextEmbeddings(text.vocab_size, width, text.max_position_embeddings,
                                              text.type_vocab_size, text.layer_norm_eps, text.hidden_dropout_prob,
                                              text.pad_token_id)
        self.patch_embeddings = PatchEmbeddings(vision.image_size, vision.patch_size, vision.num_channels, width,
                                                vision.hidden_dropout_prob, use_mask_token=True)
        self.modality_embeddings = nn.Embedding(2, width)
        side = vision.image_size // vision.patch_size
        self.relative_position = RelativePositionBias((side, side), vision.num_attention_heads, depth) \
            if config.use_relative_position_bias else None
        rates = torch.linspace(0, vision.drop_path_rate, depth).tolist()
        self.layers = nn.ModuleList(
            MultiwayLayer(vision, width, vision.num_attention_heads, vision.intermediate_size,
                          eps=vision.layer_norm_eps, act=vision.hidden_act, dropout=vision.hidden_dropout_prob,
                          attention_dropout=vision.attention_probs_dropout_prob, drop_path=rate,
                          layer_scale=config.layer_scale_init_value, use_vl_expert=i >= depth - config.num_vl_layers,
                          qkv_bias=vision.qkv_bias)
            for i, rate in enumerate(rates)
        )
        self.norm = nn.LayerNorm(width, eps=vision.layer_norm_eps)
        self.vision_proj = nn.Linear(width, config.embed_dim)
        self.text_proj = nn.Linear(width, config.embed_dim)
        self.post_init()

    def post_init(self):
        # the [MASK] patch embedding serves pre-training only: frozen so that fine-tuning (which never masks) has
        # no trainable parameter without a gradient (DDP); `VlBeitForPreTraining` unfreezes it
        self.patch_embeddings.mask_token.requires_grad_(False)
        super().post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.text_embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.text_embeddings.word_embeddings = value

    # -- the three passes -------------------------------------------------------------------------------------

    def embed_text(self, input_ids):
        return self.text_embeddings(input_ids) + self.modality_embeddings.weight[TEXT]  # [B, T, D]

    def embed_image(self, pixel_values, bool_masked_pos=None, interpolate_pos_encoding=False):
        x = self.patch_embeddings(pixel_values, bool_masked_pos=bool_masked_pos,
                                  interpolate_pos_encoding=interpolate_pos_encoding)
        return x + self.modality_embeddings.weight[IMAGE]  # [B, 1 + N, D]

    def _position_bias(self, pixel_values, text_length, interpolate_pos_encoding=False):
        if self.relative_position is None:
            return None
        patch = self.config.vision_config.patch_size
        grid = (pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch)
        if grid != self.relative_position.grid and not interpolate_pos_encoding:
            raise ValueError(f"`pixel_values` of {tuple(pixel_values.shape[-2:])} give a {grid} patch grid, but the "
                             f"relative position bias is learned on {self.relative_position.grid}: pass "
                             "`interpolate_pos_encoding=True` to resample it")
        return self.relative_position(text_length, grid)[:, None]  # [layers, 1, H, L, L]

    def _hidden_states(self, x, text_length, padding_mask=None, position_bias=None) -> list[torch.Tensor]:
        """The input and every layer's output, before the final norm: [x_0, x_1, ..., x_L]."""
        mask = key_padding_mask(self.config.vision_config, x, padding_mask)
        states = [x]
        for i, layer in enumerate(self.layers):
            states.append(layer(states[-1], mask, text_length=text_length,
                                position_bias=None if position_bias is None else position_bias[i]))
        return states

    def _encode(self, x, text_length, padding_mask=None, position_bias=None):
        return self.norm(self._hidden_states(x, text_length, padding_mask, position_bias)[-1])

    def encode_text(self, input_ids, attention_mask=None):
        check_tensor("input_ids", input_ids, ndim=2, dtype="int")
        x = self.embed_text(input_ids)
        return self._encode(x, x.shape[1], attention_mask)  # [B, T, D]

    def encode_image(self, pixel_values, *, bool_masked_pos=None, interpolate_pos_encoding=False):
        x = self.embed_image(pixel_values, bool_masked_pos, interpolate_pos_encoding)
        bias = self._position_bias(pixel_values, 0, interpolate_pos_encoding)
        return self._encode(x, 0, None, bias)  # [B, 1 + N, D]

    def image_hidden_states(self, pixel_values, *, interpolate_pos_encoding=False) -> list[torch.Tensor]:
        """The image-only pass's states without the final norm, [embeddings, layer 1, ..., layer L], each
        [B, 1 + N, D]: what the vision fine-tuning heads read (BEiT drops the final norm under mean pooling)."""
        x = self.embed_image(pixel_values, None, interpolate_pos_encoding)
        return self._hidden_states(x, 0, None, self._position_bias(pixel_values, 0, interpolate_pos_encoding))

    def encode_pair(self, pixel_values, input_ids, attention_mask=None, *, bool_masked_pos=None,
                    interpolate_pos_encoding=False):
        check_tensor("input_ids", input_ids, ndim=2, dtype="int")
        check_tensor("pixel_values", pixel_values, ndim=4, dtype="float")
        check_same_batch(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        text = self.embed_text(input_ids)
        image = self.embed_image(pixel_values, bool_masked_pos, interpolate_pos_encoding)
        padding = None
        if attention_mask is not None:
            check_tensor("attention_mask", attention_mask, ndim=2, dtype="int_or_bool")
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"`attention_mask` must have shape {tuple(input_ids.shape)} like `input_ids`, "
                                 f"got {tuple(attention_mask.shape)}")
            padding = torch.cat([attention_mask.long(), attention_mask.new_ones(image.shape[:2]).long()], dim=1)
        bias = self._position_bias(pixel_values, text.shape[1], interpolate_pos_encoding)
        return self._encode(torch.cat([text, image], dim=1), text.shape[1], padding, bias)  # [B, T + 1 + N, D]

    def fuse(self, pixel_values, input_ids, attention_mask=None, interpolate_pos_encoding=False):
        """The fusion-encoder pass from the inputs (VL-BEiT fuses from the embeddings, not from unimodal outputs)."""
        return self.encode_pair(pixel_values, input_ids, attention_mask,
                                interpolate_pos_encoding=interpolate_pos_encoding)

    def joint_embeds(self, unimodal, pixel_values, input_ids, attention_mask, interpolate_pos_encoding=False):
        """`multimodal_embeds` is the whole joint sequence [B, T + 1 + N, D] (text first), run from the inputs."""
        return self.fuse(pixel_values, input_ids, attention_mask, interpolate_pos_encoding)


__all__ = ["VlBeitModel", "VlBeitPreTrainedModel"]
