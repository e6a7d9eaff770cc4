"""Our pre-training steps against what users would pick instead: transformers' own VLP models built at the
same size (same image size, patch size, widths, depths, heads, vocabulary, dropout rates), same batch, one
interleaved run.

- FlavaForPreTraining: every FLAVA objective (ITC, ITM, MLM, MIM with its frozen DALL-E-style codebook, MMM).
- ViltForMaskedLM: ViLT's single-stream encoder with MLM (depth = our vision depth).
- BridgeTowerForContrastiveLearning: BridgeTower's two towers, bridge layers and contrastive loss.

    python bench/bench_vs_transformers.py --size small              # CPU, a few minutes
    python bench/bench_vs_transformers.py --size base --batch-size 32 --bf16   # GPU

Prints step time (forward + backward + AdamW), each method's speedup over FLAVA, FLOPs per step and the FLOP
rate achieved (torch's FlopCounterMode); writes bench/results/vs_transformers.json.
"""

from __future__ import annotations

import argparse

import torch
import transformers

import vl_models
from common import counted_flops, interleaved_median_s, machine, pretraining_batch, print_table, write_json


def dropout(tower) -> dict:
    """A tower's dropout rates, for a competitor's matching tower: FLAVA and ViLT default to none, while our text
    towers drop 10% (BERT's rates), and on a CPU dropout is a visible part of a small step."""
    return {"hidden_dropout_prob": tower.hidden_dropout_prob,
            "attention_probs_dropout_prob": tower.attention_probs_dropout_prob}


def flava(ref, batch: dict, codebook_hidden: int = 256):
    """FlavaForPreTraining at the reference config's size, with FLAVA's own masking rates (15% text, 40% image).
    `codebook_hidden` sizes its frozen DALL-E-style image codebook (256 is FLAVA's; it dominates a small step)."""
    v, t = ref.vision_config, ref.text_config
    tower = {"hidden_act": "gelu", "qkv_bias": True}
    config = transformers.FlavaConfig(
        image_config={**tower, **dropout(v), "hidden_size": v.hidden_size, "num_hidden_layers": v.num_hidden_layers,
                      "num_attention_heads": v.num_attention_heads, "intermediate_size": v.intermediate_size,
                      "image_size": v.image_size, "patch_size": v.patch_size},
        text_config={**tower, **dropout(t), "hidden_size": t.hidden_size, "num_hidden_layers": t.num_hidden_layers,
                     "num_attention_heads": t.num_attention_heads, "intermediate_size": t.intermediate_size,
                     "vocab_size": t.vocab_size, "max_position_embeddings": t.max_position_embeddings},
        multimodal_config={**tower, **dropout(t), "hidden_size": t.hidden_size, "num_hidden_layers": t.num_fusion_layers,
                           "num_attention_heads": t.num_attention_heads, "intermediate_size": t.intermediate_size},
        image_codebook_config={"hidden_size": codebook_hidden},
        projection_dim=ref.embed_dim, hidden_size=t.hidden_size,
    )
    model = transformers.FlavaForPreTraining(config)
    ids, pixels = batch["input_ids"], batch["pixel_values"]
    g = torch.Generator().manual_seed(1)
    text_mask = (torch.rand(ids.shape, generator=g) < 0.15).to(ids.device)
    text_mask[:, 0] = text_mask[:, -1] = False
    num_patches = (v.image_size // v.patch_size) ** 2
    inputs = {
        **batch,
        "input_ids_masked": ids.masked_fill(text_mask, t.mask_token_id),
        "mlm_labels": ids.masked_fill(~text_mask, -100),
        "bool_masked_pos": (torch.rand(ids.shape[0], num_patches, generator=g) < 0.4).to(ids.device),
        # the codebook sees the image at 8x its patch grid
        "codebook_pixel_values": torch.nn.functional.interpolate(pixels, size=(v.image_size // v.patch_size) * 8),
        "itm_labels": torch.randint(0, 2, (ids.shape[0],), generator=g).to(ids.device),
        "return_loss": True,
    }
    return model, inputs


def vilt(ref, batch: dict):
    v, t = ref.vision_config, ref.text_config
    config = transformers.ViltConfig(
        hidden_size=v.hidden_size, num_hidden_layers=v.num_hidden_layers, num_attention_heads=v.num_attention_heads,
        intermediate_size=v.intermediate_size, image_size=v.image_size, patch_size=v.patch_size,
        vocab_size=t.vocab_size, max_position_embeddings=t.max_position_embeddings,
        max_image_length=-1, modality_type_vocab_size=2, **dropout(t),
    )
    model = transformers.ViltForMaskedLM(config)
    ids = batch["input_ids"]
    labels = ids.clone()
    labels[:, ::2] = -100  # some positions scored, as MLM does
    pixel_mask = torch.ones(ids.shape[0], v.image_size, v.image_size, dtype=torch.long, device=ids.device)
    return model, {**batch, "pixel_mask": pixel_mask, "labels": labels}


def bridgetower(ref, batch: dict):
    v, t = ref.vision_config, ref.text_config
    config = transformers.BridgeTowerConfig(
        hidden_size=t.hidden_size, num_hidden_layers=t.num_fusion_layers, num_attention_heads=t.num_attention_heads,
        text_config={"vocab_size": t.vocab_size, "hidden_size": t.hidden_size, "num_hidden_layers": t.num_hidden_layers,
                     "num_attention_heads": t.num_attention_heads, "intermediate_size": t.intermediate_size,
                     "max_position_embeddings": t.max_position_embeddings + 2, **dropout(t)},
        vision_config={"hidden_size": v.hidden_size, "num_hidden_layers": v.num_hidden_layers,
                       "image_size": v.image_size, "patch_size": v.patch_size},
        contrastive_hidden_size=ref.embed_dim,
        logit_scale_init_value=2.6592,  # read by the contrastive model, not declared by the 5.23 config class
    )
    model = transformers.BridgeTowerForContrastiveLearning(config)
    return model, {**batch, "return_loss": True}


COMPETITORS = {"FlavaForPreTraining": flava,
               "FlavaForPreTraining (codebook 32)": lambda ref, batch: flava(ref, batch, codebook_hidden=32), "ViltForMaskedLM": vilt, "BridgeTowerForContrastiveLearning": bridgetower}


def step(model, inputs, optimizer, bf16: bool, device, generator_arg: bool):
    def run():
        kwargs = {"generator": torch.Generator(device=device).manual_seed(0)} if generator_arg else {}
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(**inputs, **kwargs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", help="our preset size the competitors are matched to")
    parser.add_argument("--methods", nargs="+", default=vl_models.list_methods(), help="our methods")
    parser.add_argument("--competitors", nargs="+", default=list(COMPETITORS), choices=list(COMPETITORS))
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per step")
    parser.add_argument("--seq-len", type=int, default=30, help="caption tokens")
    parser.add_argument("--repeats", type=int, default=8, help="timed steps each (median reported)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--out", default="bench/results/vs_transformers.json", help="JSON output")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    reference = vl_models.get_config("albef", args.size)  # the shared tower preset every method starts from
    batch = pretraining_batch(reference, args.batch_size, args.seq_len, device)
    runs, params, notes = {}, {}, {}
    for name in args.competitors:
        try:
            model, inputs = COMPETITORS[name](reference, batch)
        except Exception as err:  # a transformers release that changed a config field must not hide our rows
            notes[name] = f"{type(err).__name__}: {err}"[:100]
            continue
        model.to(device).train()
        runs[name] = step(model, inputs, torch.optim.AdamW(model.parameters(), lr=1e-4), args.bf16, device, False)
        params[name] = sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6
    for method in args.methods:
        torch.manual_seed(0)
        config = vl_models.get_config(method, args.size)
        model = vl_models.get_method(method).pretraining_class(config).to(device).train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        runs[method] = step(model, pretraining_batch(config, args.batch_size, args.seq_len, device),
                            torch.optim.AdamW(trainable, lr=1e-4), args.bf16, device, True)
        params[method] = sum(p.numel() for p in trainable) / 1e6
    flops = {name: counted_flops(run) for name, run in runs.items()}  # also the first warm-up step
    median = interleaved_median_s(runs, device, warmup=1, repeats=args.repeats)
    flava_s = median.get("FlavaForPreTraining")
    # achieved FLOP/s tells "does more work" (more FLOPs, same rate) from "runs its work slower" (lower rate)
    rows = [{"model": name, "params_m": params[name], "ms_per_step": s * 1e3,
             "samples_per_s": args.batch_size / s, "speedup_vs_flava": flava_s / s if flava_s else None,
             "gflop_per_step": flops[name] / 1e9, "achieved_gflops": flops[name] / s / 1e9}
            for name, s in median.items()]
    rows += [{"model": name, "skipped": why} for name, why in notes.items()]
    print(f"\nsize {args.size}, batch {args.batch_size}, {args.seq_len} tokens, bf16 {args.bf16}")
    print_table(rows, ["model", "params_m", "ms_per_step", "samples_per_s", "speedup_vs_flava", "gflop_per_step",
                       "achieved_gflops", "skipped"])
    write_json(args.out, {**machine(device), "args": vars(args)}, rows)


if __name__ == "__main__":
    main()
