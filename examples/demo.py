"""`make demo`: build every registered method, process real photos with captions, run a pre-training step.

Prints, per method, what each objective returns. (The training issue turns this into the full main job:
pre-train on Shapes, fine-tune, evaluate.)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

import vl_models

PHOTOS = {  # scikit-image's bundled sample photos, with captions written for them
    "astronaut": "an astronaut in a white suit stands in front of a flag",
    "chelsea": "a brown cat with green eyes looks at the camera",
    "coffee": "a cup of coffee on a saucer with a spoon",
    "rocket": "a rocket on the launch pad under a blue sky",
}


def sample_photos() -> tuple[list[Image.Image], list[str]]:
    try:
        from skimage import data
    except ImportError:  # no scikit-image: coloured noise keeps the demo running
        rng = np.random.default_rng(0)
        return [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in PHOTOS], list(
            PHOTOS.values())
    return [Image.fromarray(getattr(data, name)()) for name in PHOTOS], list(PHOTOS.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="tiny", choices=vl_models.SIZES, help="preset size of every method")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, masks and negatives")
    args = parser.parse_args()

    images, captions = sample_photos()
    print(f"vl_models {vl_models.__version__}: methods {vl_models.list_methods()}, size {args.size}")
    print(f"{len(images)} real photos: " + "; ".join(captions))
    for method in vl_models.list_methods():
        torch.manual_seed(args.seed)
        processor = vl_models.build_processor(method, args.size)
        config = vl_models.get_config(method, args.size)
        model = vl_models.get_method(method).pretraining_class(config).train()
        batch = processor(images=images, text=captions, return_tensors="pt")
        start = time.perf_counter()
        out = model(**batch, generator=torch.Generator().manual_seed(args.seed))
        out.loss.backward()
        elapsed = time.perf_counter() - start
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        losses = ", ".join(f"{k}={v.item():.3f}" for k, v in out.items() if k.startswith("loss"))
        print(f"\n[{method}] {params / 1e6:.2f}M trainable parameters, forward+backward {elapsed * 1000:.0f} ms")
        print(f"  pixel_values {tuple(batch['pixel_values'].shape)}, input_ids {tuple(batch['input_ids'].shape)}")
        print(f"  {losses}")
        print(f"  ITM accuracy on positives + hard negatives: {float(out.itm_accuracy):.2f}")
        if out.image_mask is not None:
            visible = int((~out.image_mask[0]).sum())
            print(f"  student image encoder saw {visible}/{out.image_mask.shape[1]} patches per image")


if __name__ == "__main__":
    main()
