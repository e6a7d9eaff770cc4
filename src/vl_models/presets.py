"""Named sizes shared by every method: tiny (tests, milliseconds on CPU), small (CPU demo), base (the papers'
size: ViT-B/16 at 224 and BERT-base), large (ViT-L/16 and BERT-large).

tiny and small use the built-in WordPiece tokenizer (`processing.default_tokenizer`), base and large BERT's
uncased vocabulary, so a preset and the processor `build_processor` gives for it always agree on token ids.
"""

from __future__ import annotations

SIZES = ("tiny", "small", "base", "large")

_BERT_IDS = {"vocab_size": 30522, "pad_token_id": 0, "cls_token_id": 101, "sep_token_id": 102, "mask_token_id": 103}


def _builtin_vocab_ids() -> dict:
    from .processing import default_tokenizer

    tok = default_tokenizer()
    return {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "cls_token_id": tok.cls_token_id,
            "sep_token_id": tok.sep_token_id, "mask_token_id": tok.mask_token_id}


def _vision(image, patch, hidden, layers, heads, mlp):
    return {"image_size": image, "patch_size": patch, "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "intermediate_size": mlp}


def _text(hidden, layers, fusion, heads, mlp, positions, dropout=0.1):
    return {"hidden_size": hidden, "num_hidden_layers": layers, "num_fusion_layers": fusion,
            "num_attention_heads": heads, "intermediate_size": mlp, "max_position_embeddings": positions,
            "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}


# (vision tower, text tower, shared fields); the text tower's vocabulary is added by `tower_preset`.
# tiny and small pre-train from scratch in minutes (docs/methods.md, "Learning from scratch"): no feature queue
# (its stale keys lock collapsed features in), no dropout (it only slows a run of a few hundred updates).
# base and large keep the papers' recipes, which assume pretrained towers.
_TOWERS = {
    "tiny": (_vision(32, 8, 32, 2, 2, 64), _text(32, 1, 1, 2, 64, 64, dropout=0.0), {"embed_dim": 16, "queue_size": 0}),
    "small": (_vision(64, 8, 128, 4, 4, 512), _text(128, 2, 2, 4, 512, 64, dropout=0.0),
              {"embed_dim": 64, "queue_size": 0}),
    "base": (_vision(224, 16, 768, 12, 12, 3072), _text(768, 6, 6, 12, 3072, 512), {"embed_dim": 256}),
    "large": (_vision(224, 16, 1024, 24, 16, 4096), _text(1024, 12, 12, 16, 4096, 512), {"embed_dim": 256}),
}


# every method's tiny and small presets train from scratch at std 0.1 instead of BERT's 0.02: at 0.02 the image
# reaches the fused [CLS] through small random matrices (swapping the image moves it by 0.5%) and AdamW grows weights
# by ~lr per update, so ITM sat at its class prior for 250-400 updates (docs/methods.md, "Learning from scratch")
FROM_SCRATCH_INIT = {"initializer_range": 0.1}
# the align-before-fuse family at the CPU presets: a momentum teacher that keeps up with a short run (0.95
# averages over ~20 updates, ALBEF's 0.995 over ~200, the whole run), and half of the ITM negatives uniform, so ITM
# can leave its class prior before the fusion encoder tells hard negatives apart (docs/methods.md)
_FROM_SCRATCH = {"momentum": 0.95, "itm_uniform_negatives": 0.5, **FROM_SCRATCH_INIT}
_ALIGN_FUSE = {"tiny": _FROM_SCRATCH, "small": _FROM_SCRATCH}


def align_fuse_preset(size: str) -> dict:
    """Fields of the align-before-fuse family (ALBEF, VLMAE, VQ-MIM) at one size; empty where ALBEF's recipe
    applies (base, large: momentum 0.995, hard negatives)."""
    return dict(_ALIGN_FUSE.get(check_size(size), {}))


def check_size(size: str) -> str:
    if size not in SIZES:
        raise ValueError(f"`size` must be one of {list(SIZES)}, got {size!r}")
    return size


def tower_preset(size: str) -> dict:
    """Config kwargs (vision_config, text_config, shared fields) for one size."""
    vision, text, shared = _TOWERS[check_size(size)]
    vocab = _builtin_vocab_ids() if size in ("tiny", "small") else _BERT_IDS
    return {"vision_config": dict(vision), "text_config": {**text, **vocab}, **shared}


def merge(base: dict, override: dict) -> dict:
    """Recursive dict merge (override wins); sub-config dicts merge key by key."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
