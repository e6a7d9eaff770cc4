"""Config pieces shared by the methods: the two towers and the align-before-fuse family.

Configs are transformers 5 typed dataclasses. Invalid values fail when the config is built
(`validate_*` methods run by `@strict`), never later inside a forward pass.
"""

import dataclasses
import difflib
import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

from .utils import check_range


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {type(value).__name__} {value!r}")


def _check_number(name: str, value, low: float, high: float = math.inf, *, low_inclusive: bool = True) -> None:
    """A finite (or +inf when high is inf) real number in [low, high) — (low, high) without low_inclusive."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
    ok = ok and (value >= low if low_inclusive else value > low) and (value < high or high == math.inf)
    if not ok:
        interval = f"a number in {'[' if low_inclusive else '('}{low}, {high})" if low > -math.inf else "a real number"
        raise ValueError(f"`{name}` must be {interval}, got {type(value).__name__} {value!r}")


def _check_tower(prefix: str, config, layer_minimum: int) -> None:
    """Sizes, probabilities, epsilon and activation shared by both towers."""
    for name in ("hidden_size", "num_attention_heads", "intermediate_size"):
        _check_int(f"{prefix}.{name}", getattr(config, name), 1)
    _check_int(f"{prefix}.num_hidden_layers", config.num_hidden_layers, layer_minimum)
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        _check_number(f"{prefix}.{name}", getattr(config, name), 0.0, 1.0)
    _check_number(f"{prefix}.layer_norm_eps", config.layer_norm_eps, 0.0, low_inclusive=False)
    _check_number(f"{prefix}.initializer_range", config.initializer_range, 0.0)
    if config.hidden_act not in ACT2FN:
        raise ValueError(f"`{prefix}.hidden_act` must be one of {sorted(ACT2FN)}, got {config.hidden_act!r}")


def check_codebook_fields(config) -> None:
    """The `VectorQuantizer` fields every config with a codebook carries (VQ-MIM, VL-BEiT's tokenizer)."""
    if config.num_codes < 2:
        raise ValueError(f"`num_codes` must be >= 2, got {config.num_codes}")
    if config.code_dim < 1:
        raise ValueError(f"`code_dim` must be >= 1, got {config.code_dim}")
    if config.codebook_decay is not None and not 0.0 < config.codebook_decay < 1.0:
        raise ValueError(f"`codebook_decay` must be in (0, 1) or None, got {config.codebook_decay}")
    if config.commitment_weight < 0:
        raise ValueError(f"`commitment_weight` must be >= 0, got {config.commitment_weight}")
    if config.dead_code_after is not None and config.dead_code_after < 1:
        raise ValueError(f"`dead_code_after` must be >= 1 or None, got {config.dead_code_after}")


def _check_heads(name: str, hidden_size: int, num_heads: int) -> None:
    if num_heads < 1 or hidden_size % num_heads != 0:
        raise ValueError(
            f"`{name}.hidden_size` ({hidden_size}) must be divisible by `num_attention_heads` ({num_heads})"
        )


def check_field_names(config_class: type, fields: dict, prefix: str = "") -> None:
    """Refuse a key that is no field of `config_class` (or, for a dict value, of that sub-config), naming the
    closest fields: a config keeps unknown keys as attributes (transformers' convention, for loading), so an
    override `quue_size=0` would otherwise be saved into config.json and change nothing."""
    known = {f.name for f in dataclasses.fields(config_class)}
    sub_configs = getattr(config_class, "sub_configs", None) or {}
    for key, value in fields.items():
        if key not in known and key not in sub_configs and not hasattr(config_class, key):
            close = difflib.get_close_matches(key, sorted(known | set(sub_configs)), n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"unknown config field {prefix + key!r} for {config_class.__name__}{hint}")
        if isinstance(value, dict) and key in sub_configs:
            check_field_names(sub_configs[key], value, prefix=f"{prefix}{key}.")


class VlPreTrainedConfig(PreTrainedConfig):
    """Base of every vl_models config."""

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoConfig"):
        """No-op: transformers' copy of a class's source file cannot follow our package imports; checkpoints get
        the package's modules, flattened into the repo folder, from `vl_models.hub.remote_code` instead."""

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        # transformers only warns when a checkpoint of another model type is loaded, then builds a model whose
        # weights are all missing (randomly initialised): a silent wrong result, so refuse it here
        found = config_dict.get("model_type") if isinstance(config_dict, dict) else None
        if found is not None and getattr(cls, "model_type", None) and found != cls.model_type:
            raise ValueError(
                f"the checkpoint's config.json has model_type {found!r}, but {cls.__name__} is for "
                f"{cls.model_type!r}: it holds another method's weights. Load it with that method's classes (e.g. "
                f"AutoModelForPreTraining.from_pretrained), or build a {cls.model_type!r} model from a config"
            )
        return super().from_dict(config_dict, **kwargs)


@strict
class VisionTowerConfig(PreTrainedConfig):
    """A ViT image encoder (pre-LayerNorm, as in ViT/DeiT, so transformers ViT checkpoints load exactly)."""

    model_type = "vl_vision"
    base_config_key = "vision_config"

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float | int = 1e-6
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    drop_path_rate: float | int = 0.0  # stochastic depth, linearly increasing with depth
    qkv_bias: bool = True
    use_mask_token: bool = False  # a learned [MASK] patch embedding (BEiT-style masked image modeling)
    initializer_range: float | int = 0.02

    def validate_architecture(self):
        _check_tower("vision_config", self, 1)
        for name in ("image_size", "patch_size", "num_channels"):
            _check_int(f"vision_config.{name}", getattr(self, name), 1)
        _check_heads("vision_config", self.hidden_size, self.num_attention_heads)
        if self.patch_size < 1 or self.image_size % self.patch_size != 0:
            raise ValueError(
                f"`vision_config.image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size})"
            )
        check_range("vision_config.drop_path_rate", self.drop_path_rate, 0.0, 1.0)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@strict
class TextTowerConfig(PreTrainedConfig):
    """A BERT-style text encoder (post-LayerNorm, so BERT checkpoints load exactly).

    The first `num_hidden_layers` layers read text only; the next `num_fusion_layers` add cross-attention
    to the image (ALBEF splits BERT-base 6 + 6).
    """

    model_type = "vl_text"
    base_config_key = "text_config"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 6
    num_fusion_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float | int = 1e-12
    hidden_dropout_prob: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1
    # special token ids, so the model can mask text itself (defaults: BERT's uncased vocabulary)
    pad_token_id: int | None = 0
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    initializer_range: float | int = 0.02

    def validate_architecture(self):
        _check_tower("text_config", self, 0)
        _check_int("text_config.num_fusion_layers", self.num_fusion_layers, 0)
        _check_int("text_config.max_position_embeddings", self.max_position_embeddings, 2)  # [CLS] and [SEP]
        _check_int("text_config.type_vocab_size", self.type_vocab_size, 1)
        _check_int("text_config.vocab_size", self.vocab_size, 5)
        _check_heads("text_config", self.hidden_size, self.num_attention_heads)
        if self.vocab_size < 5:
            raise ValueError(f"`text_config.vocab_size` must be at least 5 (the special tokens), got {self.vocab_size}")
        for name in ("cls_token_id", "sep_token_id", "mask_token_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(
                    f"`text_config.{name}` must be in [0, vocab_size={self.vocab_size}), got {getattr(self, name)}"
                )

    @property
    def special_token_ids(self) -> list[int]:
        ids = [self.cls_token_id, self.sep_token_id, self.mask_token_id]
        return ids + ([self.pad_token_id] if self.pad_token_id is not None else [])


@strict
class AlignFuseConfig(VlPreTrainedConfig):
    """Shared fields of the align-before-fuse family (ALBEF, VLMAE, VQ-MIM): ViT + BERT + cross-attention fusion.

    Defaults follow ALBEF's `Pretrain.yaml` (embed_dim 256, temperature 0.07, queue 65536, momentum 0.995,
    alpha 0.4, MLM probability 0.15, equal loss weights).
    """

    sub_configs_defaults = {"vision_config": VisionTowerConfig, "text_config": TextTowerConfig}

    vision_config: dict | VisionTowerConfig | None = None
    text_config: dict | TextTowerConfig | None = None
    tie_word_embeddings: bool = True  # the MLM decoder's weight is the text word embeddings (BERT, ALBEF)
    embed_dim: int = 256  # ITC projection size
    temperature: float | int = 0.07  # learnable, clamped to [0.001, 0.5] at every forward
    queue_size: int = 65536  # momentum feature queue for ITC; 0 disables queues (in-batch negatives only)
    momentum: float | int = 0.995  # EMA of the momentum (teacher) encoders
    alpha: float | int = 0.4  # weight of momentum-distilled soft targets (ITC and MLM); the trainer may ramp it
    mlm_probability: float | int = 0.15
    # share of ITM negatives drawn uniformly from the batch instead of by ITC similarity (0: ALBEF's hard
    # negatives; ours: 0.5 at the tiny and small presets, which train from scratch)
    itm_uniform_negatives: float | int = 0.0
    itc_weight: float | int = 1.0
    itm_weight: float | int = 1.0
    mlm_weight: float | int = 1.0
    # retrieval fine-tuning: "albef" = ALBEF's (ITC distilled from the momentum model over batch + queue, positives by
    # image id, ITM hard negatives never of the same image); "in_batch" = in-batch CLIP loss + hard-negative ITM
    retrieval_loss: str = "albef"
    initializer_range: float | int = 0.02

    def validate_objectives(self):
        if self.retrieval_loss not in ("albef", "in_batch"):
            raise ValueError(f"`retrieval_loss` must be 'albef' or 'in_batch', got {self.retrieval_loss!r}")
        for name in ("temperature", "momentum", "alpha", "mlm_probability", "itm_uniform_negatives"):
            _check_number(name, getattr(self, name), -math.inf)  # a real number; the ranges follow
        check_range("temperature", self.temperature, 0.001, 0.5, high_inclusive=True)
        check_range("momentum", self.momentum, 0.0, 1.0, high_inclusive=True)
        check_range("alpha", self.alpha, 0.0, 1.0, high_inclusive=True)
        check_range("mlm_probability", self.mlm_probability, 0.0, 1.0, high_inclusive=True)
        check_range("itm_uniform_negatives", self.itm_uniform_negatives, 0.0, 1.0, high_inclusive=True)
        _check_int("queue_size", self.queue_size, 0)
        _check_int("embed_dim", self.embed_dim, 1)
        for name in ("itc_weight", "itm_weight", "mlm_weight"):
            _check_number(name, getattr(self, name), 0.0)  # also refuses NaN, which `< 0` lets through
