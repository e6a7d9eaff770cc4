"""Is pre-training learning? Measures of one held-out batch, each beside the level a model that learned nothing
reaches, so a log line or a test can say "far above chance" with numbers (docs/methods.md, "Learning from
scratch").

`learning_signals(model, batch)` runs a pre-training model in eval mode on a collated batch (pairs, with
`mlm_labels` where the method masks text) and returns what it has:

- `image_feature_cosine` / `text_feature_cosine`: mean cosine between *different* samples' ITC features (near 1
  when features are collapsed, the state every method starts in);
- `itc_accuracy`: in-batch top-1 matching of images and texts by ITC similarity (chance `1 / B`);
- `itm_accuracy`: ITM on the B true pairs and B pairs with another row's caption (chance 0.5: the head cannot
  sit on a class prior here, since both classes are equally many);
- `mlm_accuracy`: masked-token accuracy against `mlm_unigram_accuracy`, the accuracy of always answering the
  most frequent masked token of the same batch (an upper bound on a unigram model's, so beating it is a fair
  test).
"""

from __future__ import annotations

import torch


def _mean_off_diagonal_cosine(features: torch.Tensor) -> float:
    sims = features.float() @ features.float().t()  # rows are L2-normalised
    n = sims.shape[0]
    return float((sims.sum() - sims.diagonal().sum()) / (n * n - n))


def _unigram_accuracy(labels: torch.Tensor) -> float:
    return float(labels.bincount().max() / labels.numel())


@torch.no_grad()
def learning_signals(model, batch: dict) -> dict:
    """Measures of `model` (an `XForPreTraining`) on `batch` (pairs from `PreTrainingCollator`, B >= 2)."""
    was_training = model.training
    model.eval()
    try:
        return _signals(model, batch)
    finally:
        model.train(was_training)


def _signals(model, batch: dict) -> dict:
    backbone = model.base_model
    pixels, ids, mask = batch["pixel_values"], batch["input_ids"], batch["attention_mask"]
    out = {"batch_size": ids.shape[0], "chance_itc_accuracy": 1.0 / ids.shape[0], "chance_itm_accuracy": 0.5}
    if hasattr(backbone, "get_image_features") and getattr(backbone, "vision_proj", None) is not None:
        image_embeds = backbone.encode_image(pixels)
        text_embeds = backbone.encode_text(ids, mask)
        image_feat, text_feat = backbone.image_feat(image_embeds), backbone.text_feat(text_embeds)
        sims = image_feat @ text_feat.t()  # [B, B]
        target = torch.arange(sims.shape[0], device=sims.device)
        out["image_feature_cosine"] = _mean_off_diagonal_cosine(image_feat)
        out["text_feature_cosine"] = _mean_off_diagonal_cosine(text_feat)
        out["itc_accuracy"] = float(((sims.argmax(1) == target).float().mean()
                                     + (sims.argmax(0) == target).float().mean()) / 2)
        if hasattr(model, "itm_head") and hasattr(backbone, "fuse"):
            other = torch.roll(torch.arange(ids.shape[0], device=ids.device), 1)  # each caption with the next image
            images = torch.cat([image_embeds, image_embeds])
            texts, masks = torch.cat([text_embeds, text_embeds[other]]), torch.cat([mask, mask[other]])
            logits = model.itm_head(backbone.fuse(images, texts, masks)[:, 0])  # [2B, 2]
            labels = torch.cat([torch.ones_like(other), torch.zeros_like(other)])
            out["itm_accuracy"] = float((logits.argmax(-1) == labels).float().mean())
    if "mlm_labels" in batch:
        forward = {k: v for k, v in batch.items() if k in ("pixel_values", "input_ids", "attention_mask",
                                                           "mlm_input_ids", "mlm_labels", "image_mask",
                                                           "bool_masked_pos")}
        result = model(**forward, generator=torch.Generator().manual_seed(0))
        labels = batch["mlm_labels"][batch["mlm_labels"] != -100]
        if getattr(result, "mlm_logits", None) is not None and labels.numel():
            out["mlm_accuracy"] = float((result.mlm_logits.argmax(-1) == labels).float().mean())
            out["mlm_unigram_accuracy"] = _unigram_accuracy(labels)
    return out


def describe_signals(signals: dict) -> str:
    """One log line: each measure beside its chance level."""
    parts = []
    if "itc_accuracy" in signals:
        parts.append(f"in-batch ITC accuracy {signals['itc_accuracy']:.3f} (chance {signals['chance_itc_accuracy']:.3f})")
    if "itm_accuracy" in signals:
        parts.append(f"ITM accuracy {signals['itm_accuracy']:.3f} (chance 0.5)")
    if "mlm_accuracy" in signals:
        parts.append(f"MLM accuracy {signals['mlm_accuracy']:.3f} (most frequent token "
                     f"{signals['mlm_unigram_accuracy']:.3f})")
    if "image_feature_cosine" in signals:
        parts.append(f"feature cosine between samples: images {signals['image_feature_cosine']:.3f}, texts "
                     f"{signals['text_feature_cosine']:.3f} (1 = collapsed)")
    return "; ".join(parts) or "no learning signals for this model"


def from_scratch_warnings(config) -> list[str]:
    """Why `config` may not learn when its towers start from random weights (pre-training from a preset, not from
    pretrained towers or a checkpoint): one message per problem, with the fix."""
    problems = []
    if getattr(config, "queue_size", 0) > 0:
        problems.append(
            f"queue_size={config.queue_size} with towers trained from scratch: at initialisation every image (and "
            "every text) has nearly the same ITC feature, and a queue of such stale keys lets the contrastive loss "
            "fall by telling new keys from old ones while the features stay collapsed (docs/methods.md, "
            "'Learning from scratch'). Set queue_size=0 (the tiny and small presets do), or start from pretrained "
            "towers (--text_tower / --vision_tower)")
    return problems


__all__ = ["describe_signals", "from_scratch_warnings", "learning_signals"]
