"""Zero-shot probes of a pre-trained model: one-attribute hard-negative captions and real photos.

Both score (image, caption) pairs with the method's retrieval model loaded from the pre-training folder: the ITC
similarity and the ITM match probability of each pair. A scorer counts only when the method pre-trained it
(`itc` / `itm` among its objectives, with the head found in the checkpoint); a method without either (VL-BEiT
pre-trains masked modelling only) gets None rather than a chance-level number from random heads.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.collators import load_image
from .loop import load_quietly

SCORERS = ("itc", "itm")

# scikit-image's sample photos (shipped with the package, no download) and a caption written for each; the
# words are in the built-in tokenizer's vocabulary, so tiny and small models see no [UNK] tokens
PHOTO_CAPTIONS = {
    "astronaut": "an astronaut in a white space suit holding a helmet",
    "coffee": "a red coffee cup on a wooden table",
    "chelsea": "an orange and brown cat sitting on a wooden floor",
    "rocket": "a rocket on a launch pad under a blue sky",
    "camera": "a black and white photo of a man holding a camera",
    "coins": "a black and white photo of many old coins",
}


def load_probe_model(folder, device="cpu"):
    """(retrieval model, processor, scorers) from a pre-training folder; `scorers` are the pre-trained ones."""
    from transformers import AutoConfig, AutoProcessor

    import vl_models

    config = AutoConfig.from_pretrained(folder)
    spec = vl_models.get_method(config.model_type)
    model, info = load_quietly(spec.task_classes["retrieval"].from_pretrained, folder)
    missing = set(info["missing_keys"])
    scorers = tuple(s for s in SCORERS if s in spec.objectives)
    if any(k.startswith("itm_head.") for k in missing):
        scorers = tuple(s for s in scorers if s != "itm")
    return model.to(device).eval(), AutoProcessor.from_pretrained(folder), scorers


@torch.no_grad()
def pair_scores(model, processor, images: list, texts: list[str], pairs: list[tuple[int, int]], *,
                device="cpu", batch_size: int = 64) -> dict[str, np.ndarray]:
    """ITC similarity (scaled logits) and ITM match probability of each (image index, text index) pair."""
    if not pairs:
        raise ValueError("`pairs` must name at least one (image, text) pair, got none")
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]  # [I, C, H, W]
    encoded = processor(text=texts, return_tensors="pt")
    itc, itm = [], []
    index = torch.tensor(pairs)  # [P, 2]
    for chunk in index.split(batch_size):
        out = model(pixel_values=pixels[chunk[:, 0]].to(device), input_ids=encoded["input_ids"][chunk[:, 1]].to(device),
                    attention_mask=encoded["attention_mask"][chunk[:, 1]].to(device), return_loss=False)
        itc.append(out.logits_per_image.diagonal().float().cpu())  # each pair's own similarity
        itm.append(out.itm_logits.float().softmax(-1)[:, 1].cpu())
    return {"itc": torch.cat(itc).numpy(), "itm": torch.cat(itm).numpy()}


def hard_negative_accuracy(model, processor, ds, scorers, *, device="cpu", max_images: int | None = None) -> dict:
    """How often each scorer puts an image's first caption strictly above each of its one-word hard negatives
    (Shapes `captions` rows with `negatives` / `negative_changes`); overall and per kind of change."""
    rows = ds.select(range(min(len(ds), max_images))) if max_images else ds
    images, texts, pairs, kinds = [], [], [], []  # pairs: (image, text) scored once each
    true_pair, negative_pair = [], []  # per comparison: its two rows of `pairs`
    for row in rows:
        image = load_image(row["image"])
        if image is None or not row["negatives"]:
            continue
        images.append(image)
        true_row = len(pairs)
        pairs.append((len(images) - 1, len(texts)))
        texts.append(row["captions"][0])
        for negative, change in zip(row["negatives"], row["negative_changes"]):
            true_pair.append(true_row)
            negative_pair.append(len(pairs))
            pairs.append((len(images) - 1, len(texts)))
            texts.append(negative)
            kinds.append(change["kind"])
    result = {"num_comparisons": len(kinds), "kinds": {k: kinds.count(k) for k in sorted(set(kinds))}}
    if not kinds:
        return result
    scores = pair_scores(model, processor, images, texts, pairs, device=device)
    kinds = np.asarray(kinds)
    for scorer in SCORERS:
        if scorer not in scorers:
            result[scorer] = None
            continue
        wins = scores[scorer][true_pair] > scores[scorer][negative_pair]  # ties count against the model
        result[scorer] = float(wins.mean())
        result[f"{scorer}_by_kind"] = {k: float(wins[kinds == k].mean()) for k in sorted(set(kinds.tolist()))}
    return result


def sample_photos(names=None) -> dict:
    """{name: RGB PIL image} of scikit-image's sample photos (`PHOTO_CAPTIONS` by default)."""
    import skimage.data
    from PIL import Image

    out = {}
    for name in names or PHOTO_CAPTIONS:
        array = getattr(skimage.data, name)()
        out[name] = Image.fromarray(np.asarray(array, dtype=np.uint8)).convert("RGB")
    return out


def photo_ranking(model, processor, scorers, photos: dict, captions: dict, *, device="cpu") -> dict:
    """Rank every caption for every photo: per scorer, the top-1 accuracy (own caption strictly first), the rank
    of the own caption (0 = first) and the name of the caption ranked first, per photo."""
    names = list(photos)
    texts = [captions[n] for n in names]
    pairs = [(i, j) for i in range(len(names)) for j in range(len(names))]
    scores = pair_scores(model, processor, [photos[n] for n in names], texts, pairs, device=device)
    result = {"photos": names, "chance": 1.0 / len(names)}
    for scorer in SCORERS:
        if scorer not in scorers:
            result[scorer] = None
            continue
        matrix = scores[scorer].reshape(len(names), len(names))  # [photo, caption]
        own = np.diag(matrix)
        ranks = (matrix >= own[:, None]).sum(1) - 1  # ties rank the own caption last among equals
        result[scorer] = {"top1": float((ranks == 0).mean()), "ranks": ranks.tolist(),
                          "top_caption": [names[j] for j in matrix.argmax(1)]}
    return result


__all__ = ["PHOTO_CAPTIONS", "SCORERS", "hard_negative_accuracy", "load_probe_model", "pair_scores",
           "photo_ranking", "sample_photos"]
