"""Does a fusion encoder see the image, and does ITM rank? Diagnostics of an ALBEF-family pre-training checkpoint
(ALBEF, VLMAE, VQ-MIM) on Shapes, the measurements behind docs/methods.md, "Learning from scratch", item 4:

- retrieval on the test split by ITC alone and with ITM re-ranking each text's top k (the library's `rank`, what
  examples/evaluate.py reports), text -> image R@1 / R@5;
- how much the fused [CLS] moves when the image under it is swapped for another (relative to its norm): near 0
  means the fusion encoder ignores the image and ITM has nothing to learn from;
- the gradient norm each pre-training loss sends to each part of the model on one training batch.

    python bench/fusion_diagnostics.py <pretrained folder> [--num_test_images 300 --itm_k 16 --out report.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForPreTraining, AutoProcessor

import vl_models
from vl_models.data.collators import PreTrainingCollator, WithIndex
from vl_models.training import load_captions
from vl_models.training.evaluation import evaluate_retrieval

PARTS = {  # parameter-name tests, in the backbone's naming (`<prefix>.vision.`, `<prefix>.fusion.` ...)
    "vision": lambda name: ".vision." in name,
    "text": lambda name: ".text." in name,
    "fusion cross-attention": lambda name: ".fusion." in name and "cross_attn" in name,
    "fusion other": lambda name: ".fusion." in name and "cross_attn" not in name,
    "itm_head": lambda name: name.startswith("itm_head."),
}
LOSSES = ("loss_itc", "loss_itm", "loss_mlm")


def retrieval(path, model_type: str, *, num_test_images: int, k: int) -> dict:
    """T->I R@1 / R@5 by ITC alone (k = 0) and with ITM re-ranking each query's top k."""
    model = vl_models.get_method(model_type).task_classes["retrieval"].from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    test = load_captions("shapes", num_train=0, num_val=0, num_test=num_test_images, seed=0, splits=("test",))[0]
    out = {}
    for name, top in (("itc", 0), (f"itm_top{k}", k)):
        metrics = evaluate_retrieval(model, processor, test["test"], "cpu", k=top)
        out[name] = {"r1": metrics["text_to_image_r1"], "r5": metrics["text_to_image_r5"]}
    return out


@torch.no_grad()
def image_sensitivity(model, batch: dict) -> float:
    """Mean |fused [CLS](image, text) - fused [CLS](another image, text)| / |fused [CLS]| over the batch."""
    backbone = model.base_model
    images = backbone.encode_image(batch["pixel_values"])
    texts = backbone.encode_text(batch["input_ids"], batch["attention_mask"])
    fused = backbone.fuse(images, texts, batch["attention_mask"])[:, 0]
    swapped = backbone.fuse(images.roll(1, dims=0), texts, batch["attention_mask"])[:, 0]
    return float((fused - swapped).norm(dim=-1).mean() / fused.norm(dim=-1).mean())


def gradient_norms(model, batch: dict) -> dict:
    """{loss: {part: L2 norm of that loss's gradient over the part's parameters}} on one batch."""
    model.train()
    out = {}
    for loss_name in LOSSES:
        model.zero_grad(set_to_none=True)
        loss = getattr(model(**batch, generator=torch.Generator().manual_seed(0)), loss_name)
        loss.backward()
        norms = {}
        for part, belongs in PARTS.items():
            squares = [p.grad.pow(2).sum() for n, p in model.named_parameters() if p.grad is not None and belongs(n)]
            norms[part] = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
        out[loss_name] = {"value": float(loss.detach()), **norms}
    model.zero_grad(set_to_none=True)
    model.eval()
    return out


def run(path, *, num_test_images: int = 300, itm_k: int = 16, batch_size: int = 32) -> dict:
    torch.manual_seed(0)
    model = AutoModelForPreTraining.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)
    if not hasattr(model.base_model, "fuse") or not hasattr(model, "itm_head"):
        raise ValueError(f"{path}: a {model.config.model_type} checkpoint has no fusion encoder with an ITM head")
    train = WithIndex(load_captions("shapes", num_train=batch_size, num_val=0, seed=0)[0]["train"])
    collator = PreTrainingCollator(processor, model.config, type(model), seed=1)
    batch = collator([train[i] for i in range(len(train))])
    return {"checkpoint": str(path), "initializer_range": model.config.initializer_range,
            "retrieval": retrieval(path, model.config.model_type, num_test_images=num_test_images, k=itm_k),
            "fused_cls_image_sensitivity": image_sensitivity(model, batch),
            "gradient_norms": gradient_norms(model, batch)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a pre-training checkpoint folder of ALBEF, VLMAE or VQ-MIM")
    parser.add_argument("--num_test_images", type=int, default=300)
    parser.add_argument("--itm_k", type=int, default=16)
    parser.add_argument("--out", default=None, help="also write the report here (JSON)")
    args = parser.parse_args(argv)
    report = run(args.path, num_test_images=args.num_test_images, itm_k=args.itm_k)
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
