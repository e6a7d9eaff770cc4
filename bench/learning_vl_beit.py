"""Does VL-BEiT learn? Train its visual tokenizer, then VL-BEiT, on Shapes with the library's training pieces and
measure masked-prediction accuracy on held-out captions and images against the unigram baseline.

    python bench/learning_vl_beit.py --size tiny --image_size 64 --steps 600   # the learning test's run
    python bench/learning_vl_beit.py --size small --steps 600
    python bench/learning_vl_beit.py --size tiny --image_size 64 --config_overrides '{"relative_position_init": "normal"}'

The unigram baseline always predicts the most frequent target of the training labels (a token for MLM / MVLM, a
visual code for MIM) and is scored on the held-out labels. MIM is also scored on "object" patches alone (patches
with any non-background pixel), where the baseline is the share of object patches whose code is the background's,
and by its held-out cross-entropy against the unigram distribution's (`mim_nll`, `unigram_mim_nll`): a model can
learn more than the unigram while the background's code stays the most likely at every masked patch. The context
table (`context_table`) says what the targets allow without a model. tests/test_learning_vl_beit.py runs `run` at
size tiny, 64 px. Docs: docs/methods/vl_beit.md, "Does it learn?".
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import vl_models
from vl_models.data.collators import PreTrainingCollator
from vl_models.layers.losses import patchify
from vl_models.layers.mim import code_statistics
from vl_models.models.vl_beit import VlBeitVisualTokenizer, tokenizer_config
from vl_models.processing import build_processor
from vl_models.training import (
    TRAINING_PRESETS,
    build_optimizer,
    build_scheduler,
    load_captions,
    make_dataloader,
)

MAX_LENGTH = 40


def shapes(num_train: int, num_val: int, seed: int = 3):
    data, _ = load_captions("shapes", num_train=num_train, num_val=num_val, image_size=64, seed=seed)
    return data


def train(model, data, collator, *, steps: int, batch_size: int, learning_rate: float, warmup: int, seed: int = 0,
          log=None) -> None:
    """AdamW + warm-up/cosine over `steps` updates, gradient clipping at 1 (the scripts' defaults)."""
    loader = make_dataloader(data, collator, batch_size, seed=seed, drop_last=True)
    optimizer = build_optimizer(model, learning_rate)
    scheduler = build_scheduler(optimizer, min(warmup, steps - 1), steps)
    model.train()
    step, epoch = 0, 0
    while step < steps:
        loader.sampler.set_epoch(epoch)
        collator.set_epoch(epoch)
        epoch += 1
        for batch in loader:
            out = model(**batch, generator=torch.Generator().manual_seed(seed * 100_003 + step))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if log is not None:
                log(step, out)
            if step >= steps:
                break
    model.eval()


def batches(collator, ds, batch_size: int) -> list[dict]:
    return [collator([ds[i] for i in range(j, min(j + batch_size, len(ds)))]) for j in range(0, len(ds), batch_size)]


def object_patches(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, N] True where a patch has any pixel unlike the background (Shapes: black, each channel's minimum)."""
    black = pixel_values.amin(dim=(0, 2, 3), keepdim=True)  # [1, C, 1, 1]
    return patchify((pixel_values - black).abs(), patch_size).amax(-1) > 0.05  # patches [B, N, p*p*C]


def tokenizer_report(model, val: list[dict]) -> dict:
    """Statistics of the MIM targets on held-out images: perplexity, codes used, background share, and whether the
    codes survive pixel noise of std 0.01 (a target must be deterministic in the image's content)."""
    pixels = torch.cat([b["pixel_values"] for b in val])
    codes = model.mim_targets(pixels)
    noisy = model.mim_targets(pixels + 0.01 * torch.randn(pixels.shape, generator=torch.Generator().manual_seed(1)))
    num_codes = model.mim_head.proj.out_features
    perplexity, usage = code_statistics(codes, num_codes)
    objects = object_patches(pixels, model.config.vision_config.patch_size)
    mode = torch.bincount(codes[~objects].flatten(), minlength=num_codes).argmax()
    return {"perplexity": float(perplexity), "codes_used": int(round(float(usage) * num_codes)),
            "num_codes": num_codes, "background_code_share": float((codes == mode).float().mean()),
            "object_patches_with_background_code": float((codes[objects] == mode).float().mean()),
            "stable_under_noise": float((noisy == codes).float().mean())}


def _neighbour_keys(codes: torch.Tensor, mask: torch.Tensor, num_codes: int) -> torch.Tensor:
    """[B, N, 8]: the codes of each patch's 8 neighbours as a masked-patch predictor may see them: a masked
    neighbour reads `num_codes`, a neighbour outside the grid `num_codes + 1`."""
    side = int(codes.shape[1] ** 0.5)
    grid = codes.masked_fill(mask, num_codes).view(-1, side, side)
    padded = torch.nn.functional.pad(grid, (1, 1, 1, 1), value=num_codes + 1)
    shifts = [(dy, dx) for dy in (0, 1, 2) for dx in (0, 1, 2) if (dy, dx) != (1, 1)]
    return torch.stack([padded[:, dy:dy + side, dx:dx + side] for dy, dx in shifts], -1).flatten(1, 2)


@torch.no_grad()
def context_table(model, train: list[dict], val: list[dict]) -> dict:
    """What the targets allow: a lookup table from the codes of a masked patch's visible 8 neighbours to the code
    most often seen with them at the masked training patches (unseen contexts: the unigram code). No model; the
    same masking as the model's. A MIM accuracy far above the unigram needs this table above it too."""
    num_codes = model.mim_head.proj.out_features
    counts, unigram = {}, torch.zeros(num_codes)
    for batch in train:
        codes, mask = model.mim_targets(batch["pixel_values"]), batch["bool_masked_pos"]
        keys, targets = _neighbour_keys(codes, mask, num_codes)[mask].tolist(), codes[mask]
        unigram += torch.bincount(targets, minlength=num_codes)
        for key, target in zip(keys, targets.tolist()):
            counts.setdefault(tuple(key), torch.zeros(num_codes))[target] += 1
    best = {key: int(c.argmax()) for key, c in counts.items()}
    code = int(unigram.argmax())
    hits, objects = [], []
    for batch in val:
        codes, mask = model.mim_targets(batch["pixel_values"]), batch["bool_masked_pos"]
        keys, targets = _neighbour_keys(codes, mask, num_codes)[mask].tolist(), codes[mask]
        guess = torch.tensor([best.get(tuple(key), code) for key in keys])
        hits.append(guess == targets)
        objects.append(object_patches(batch["pixel_values"], model.config.vision_config.patch_size)[mask])
    hits, objects = torch.cat(hits), torch.cat(objects)
    return {"context_table_mim": float(hits.float().mean()),
            "context_table_mim_object_patches": float(hits[objects].float().mean())}


@torch.no_grad()
def accuracies(model, train_batches: list[dict], val: list[dict]) -> dict:
    """Held-out accuracies of the four masked predictions and the unigram baselines of the same labels."""
    model.eval()
    token = torch.cat([b["mlm_labels"][b["mlm_labels"] != -100] for b in train_batches])
    token = torch.bincount(token).argmax()
    codes = torch.cat([model.mim_targets(b["pixel_values"])[b["bool_masked_pos"]] for b in train_batches])
    counts = torch.bincount(codes, minlength=model.mim_head.proj.out_features).float()
    code, log_unigram = counts.argmax(), torch.log((counts + 1) / (counts + 1).sum())  # add-one smoothing
    sums, hits = {}, {"object": [], "object_unigram": [], "nll": [], "nll_unigram": []}
    labels, targets = [], []
    for b in val:
        out = model(**b, generator=torch.Generator().manual_seed(0))
        for key in ("mlm_accuracy", "mim_accuracy", "mvlm_text_accuracy", "mvlm_image_accuracy"):
            sums.setdefault(key, []).append(float(getattr(out, key)))
        mask = b["bool_masked_pos"]
        target = model.mim_targets(b["pixel_values"])[mask]
        hidden = model.vl_beit.encode_image(b["pixel_values"], bool_masked_pos=mask)[:, 1:]
        logits = model.mim_head(hidden[mask])  # [M, K]
        hit = logits.argmax(-1) == target
        hits["nll"].append(torch.nn.functional.cross_entropy(logits, target, reduction="none"))
        hits["nll_unigram"].append(-log_unigram[target])
        objects = object_patches(b["pixel_values"], model.config.vision_config.patch_size)[mask]
        hits["object"].append(hit[objects])
        hits["object_unigram"].append((target == code)[objects])
        labels.append(b["mlm_labels"][b["mlm_labels"] != -100])
        targets.append(target)
    result = {k: sum(v) / len(v) for k, v in sums.items()}
    result["mim_accuracy_object_patches"] = float(torch.cat(hits["object"]).float().mean())
    result["unigram_mim_object_patches"] = float(torch.cat(hits["object_unigram"]).float().mean())
    # held-out cross-entropy of the MIM predictions, against the unigram distribution's (nats)
    result["mim_nll"] = float(torch.cat(hits["nll"]).mean())
    result["unigram_mim_nll"] = float(torch.cat(hits["nll_unigram"]).mean())
    # text-only rows are the captions masked at mlm_probability: the same token distribution as the pairs'
    result["unigram_mlm"] = float((torch.cat(labels) == token).float().mean())
    result["unigram_mim"] = float((torch.cat(targets) == code).float().mean())
    return result


def run(size: str = "tiny", *, tokenizer_steps: int = 100, steps: int = 400, batch_size: int = 32,
        learning_rate: float | None = None, warmup: int | None = None, num_train: int = 1600, num_val: int = 200,
        seed: int = 0, config_overrides: dict | None = None, tokenizer_overrides: dict | None = None,
        image_size: int | None = None, verbose: bool = False) -> dict:
    """Tokenizer (skipped at 0 steps: the model's random one gives the targets), then VL-BEiT, then the report.
    `image_size`: another resolution than the preset's, for the model and its tokenizer (the patch size stays)."""
    spec = vl_models.get_method("vl_beit")
    preset = {**TRAINING_PRESETS[size], **spec.training_presets.get(size, {})}  # what pretrain.py uses
    learning_rate = preset["learning_rate"] if learning_rate is None else learning_rate
    warmup = TRAINING_PRESETS["small"]["num_warmup_steps"] if warmup is None else warmup
    data = shapes(num_train, num_val)
    config_overrides, tokenizer_overrides = dict(config_overrides or {}), dict(tokenizer_overrides or {})
    if image_size is not None:
        config_overrides["vision_config"] = {**config_overrides.get("vision_config", {}), "image_size": image_size}
        tokenizer_overrides["vision_config"] = {**tokenizer_overrides.get("vision_config", {}),
                                                "image_size": image_size}
    torch.manual_seed(seed)
    model = spec.pretraining_class(vl_models.get_config("vl_beit", size, **config_overrides))
    processor = build_processor(spec.processor_class, image_size=model.config.vision_config.image_size,
                                max_length=MAX_LENGTH)
    start = time.perf_counter()
    report = {"size": size, "image_size": model.config.vision_config.image_size, "learning_rate": learning_rate}

    def log(name):
        def show(step, out):
            if name == "tokenizer" and step in (1, tokenizer_steps):
                report.setdefault("tokenizer_loss_rec", []).append(float(out.loss_rec.detach()))
            if verbose and (step % 50 == 0 or step == 1):
                print(f"{name} {step}: " + " ".join(f"{k} {float(v):.3f}" for k, v in out.items()
                                                    if torch.is_tensor(v) and v.ndim == 0), flush=True)
        return show

    if tokenizer_steps:
        tokenizer = VlBeitVisualTokenizer(tokenizer_config(size, **tokenizer_overrides))
        collator = PreTrainingCollator(processor, tokenizer.config, type(tokenizer), seed=seed, max_length=MAX_LENGTH)
        train(tokenizer, data["train"], collator, steps=tokenizer_steps, batch_size=batch_size,
              learning_rate=learning_rate, warmup=warmup, seed=seed, log=log("tokenizer"))
        model.set_visual_tokenizer(tokenizer)
    collator = PreTrainingCollator(processor, model.config, type(model), seed=seed, max_length=MAX_LENGTH)
    val = batches(PreTrainingCollator(processor, model.config, type(model), seed=seed + 1, max_length=MAX_LENGTH),
                  data["validation"], 50)
    train_batches = batches(collator, data["train"].select(range(min(320, num_train))), 64)
    report["targets"] = tokenizer_report(model, val)
    report["targets"].update(context_table(model, batches(collator, data["train"], 64), val))
    report["before"] = accuracies(model, train_batches, val) if steps else None
    if steps:  # 0: the targets alone
        train(model, data["train"], collator, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
              warmup=warmup, seed=seed, log=log("vl_beit"))
        report["after"] = accuracies(model, train_batches, val)
    report["seconds"] = time.perf_counter() - start
    return report


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--tokenizer_steps", type=int, default=100, help="0: no trained tokenizer (random targets)")
    parser.add_argument("--steps", type=int, default=400, help="VL-BEiT updates (0: report the MIM targets only)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=None, help="default: the size preset's (1e-3)")
    parser.add_argument("--warmup", type=int, default=None, help="default: 50 updates (the small preset's)")
    parser.add_argument("--image_size", type=int, default=None, help="default: the preset's (tiny 32, small 64)")
    parser.add_argument("--num_train", type=int, default=1600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config_overrides", default="{}", help="JSON, e.g. '{\"mim_mask_ratio\": 0.2}'")
    parser.add_argument("--tokenizer_overrides", default="{}", help="JSON, e.g. '{\"dead_code_after\": 10}'")
    parser.add_argument("--verbose", action="store_true", help="print the training outputs every 50 updates")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    report = run(args.size, tokenizer_steps=args.tokenizer_steps, steps=args.steps, batch_size=args.batch_size,
                 learning_rate=args.learning_rate, warmup=args.warmup, num_train=args.num_train, seed=args.seed,
                 config_overrides=json.loads(args.config_overrides),
                 tokenizer_overrides=json.loads(args.tokenizer_overrides), image_size=args.image_size,
                 verbose=args.verbose)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
