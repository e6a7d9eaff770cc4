"""`VlPreTrainedModel`: the base every method's `XPreTrainedModel` derives from.

It states what the shared layers support (sdpa, flash, flex, gradient checkpointing) and initialises every
custom parameter and buffer through `transformers.initialization`, whose functions skip tensors already loaded
from a checkpoint, so codebooks, queues and momentum weights survive `from_pretrained` unchanged.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel
from transformers import initialization as init

from .layers.codebook import VectorQuantizer
from .layers.embeddings import DecoderEmbeddings, PatchEmbeddings
from .layers.momentum import FeatureQueue
from .layers.tasks import TASK_HEAD_MODULES
from .layers.transformer import LayerScale


def _raise_on_mismatch(cls, source, loading_info: dict) -> None:
    mismatched = sorted(loading_info.get("mismatched_keys") or [])
    if not mismatched:
        return
    listed = "; ".join(f"{key}: checkpoint {tuple(saved)} vs model {tuple(built)}" for key, saved, built in mismatched[:8])
    more = f"; and {len(mismatched) - 8} more" if len(mismatched) > 8 else ""
    raise ValueError(
        f"{source} does not fit {cls.__name__}: {len(mismatched)} tensors have other shapes ({listed}{more}). "
        "The config given or overridden differs from the one the checkpoint was trained with; pass "
        "ignore_mismatched_sizes=True to re-initialise those tensors instead"
    )


def _listed(kind: str, keys: list[str], first: int = 3) -> str:
    more = f", and {len(keys) - first} more" if len(keys) > first else ""
    return f"{len(keys)} {kind} tensors ({', '.join(keys[:first])}{more})"


class VlPreTrainedModel(PreTrainedModel):
    supports_gradient_checkpointing = True
    # our attention adds no score bias in the align-fuse family, so every kernel applies; methods that add a
    # relative position bias (VL-BEiT) set `_supports_flash_attn = False`
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = ["EncoderLayer", "MultiwayLayer"]
    input_modalities = ("image", "text")
    main_input_name = "pixel_values"
    # What a checkpoint of this method may lack or carry beyond this class's own tensors (top-level module names,
    # `check_loaded_keys`): a task class's head is new when fine-tuning starts (`_fresh_modules`); a task class leaves
    # out the method's pre-training-only modules (`_pretraining_only_modules`) and another task's head. Not
    # transformers' `_keys_to_ignore_on_load_*`: those also drop the keys from `output_loading_info`, which the
    # scripts report
    _fresh_modules: tuple[str, ...] = ()
    _pretraining_only_modules: tuple[str, ...] = ()

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        # transformers sets the attention kernel on the top config only when a model is built from a config;
        # our towers dispatch through their sub-configs, so hand it down
        for key in config.sub_configs:
            sub = getattr(config, key, None)
            if sub is not None and sub._attn_implementation is None:
                sub._attn_implementation_internal = config._attn_implementation

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModel"):
        """No-op: transformers' copy of a class's source file cannot follow our package imports; checkpoints get
        the package's modules, flattened into the repo folder, from `vl_models.hub.remote_code` instead."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        # a model loaded through remote code keeps `auto_map` in its config: keep the code files it points at
        if kwargs.get("is_main_process", True) and getattr(self.config, "auto_map", None):
            from .hub.remote_code import add_remote_code

            add_remote_code(save_directory, self.config.model_type)

    def post_init(self):
        super().post_init()
        self._frozen_parameter_names = [n for n, p in self.named_parameters() if not p.requires_grad]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # transformers raises a bare RuntimeError pointing at a logged table when shapes differ: load with
        # ignore_mismatched_sizes and raise a ValueError that names the keys and both shapes instead
        check_sizes = not kwargs.get("ignore_mismatched_sizes", False)
        want_info = kwargs.get("output_loading_info", False)
        if check_sizes:
            kwargs.update(ignore_mismatched_sizes=True, output_loading_info=True)
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        # transformers loads every tensor into a new Parameter with requires_grad=True, which would unfreeze
        # momentum teachers and unused projections (and break DDP on resume): freeze what the constructor froze
        params = dict(model.named_parameters(remove_duplicate=False))  # tied after the names were taken
        for name in model._frozen_parameter_names:
            params[name].requires_grad_(False)
        if check_sizes:
            _raise_on_mismatch(cls, args[0] if args else kwargs.get("pretrained_model_name_or_path"), loaded[1])
            return loaded if want_info else model
        return loaded

    def check_loaded_keys(self, loading_info: dict, source) -> None:
        """Raise `ValueError` listing the missing and unexpected keys of a load (`output_loading_info`) that the
        declarations above do not explain: weights of another method under a rewritten `model_type` would
        otherwise load as a mostly random model with only a warning."""

        def unexplained(keys, modules):
            return sorted(k for k in keys if not any(k == m or k.startswith(f"{m}.") for m in modules))

        missing = unexplained(loading_info.get("missing_keys") or [], self._fresh_modules)
        unexpected = unexplained(loading_info.get("unexpected_keys") or [],
                                 (*self._pretraining_only_modules, *TASK_HEAD_MODULES))
        if not (missing or unexpected):
            return
        found = " and ".join(_listed(kind, keys) for kind, keys in (("missing", missing), ("unexpected", unexpected))
                             if keys)
        raise ValueError(
            f"{source} does not fit {type(self).__name__}: {found}. Only the task head "
            f"({', '.join(self._fresh_modules) or 'none'}) may be missing, and only pre-training-only modules "
            f"({', '.join(self._pretraining_only_modules) or 'none'}) or another task's head unexpected: are these "
            f"weights of another method, or does config.json's model_type ({self.config.model_type!r}) not match them?"
        )

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, PatchEmbeddings):
            init.trunc_normal_(module.cls_token, std=std)
            init.trunc_normal_(module.pos_embed, std=std)
            if module.mask_token is not None:
                init.zeros_(module.mask_token)
        elif isinstance(module, DecoderEmbeddings):
            init.trunc_normal_(module.pos_embed, std=std)
            init.trunc_normal_(module.mask_token, std=std)
        elif isinstance(module, LayerScale) and module.gamma is not None:
            init.constant_(module.gamma, module.init_value)
        elif isinstance(module, (VectorQuantizer, FeatureQueue)):
            module.reset_parameters()  # they initialise through `init.*` themselves
        if module is self:
            self._init_method_parameters()

    def _init_method_parameters(self):
        """Hook for a method's own top-level parameters (temperature, momentum copies); runs last."""
