"""vl_models demo: upload an image, type text, see image-text matching scores, the VQA answer and the grounding
box (and, for a pre-training checkpoint, MLM fill-ins). Runs locally or as a Hugging Face Space (README.md).

    python app/app.py --model outputs/demo            # what `make demo` leaves: pretrained/ retrieval/ vqa/ grounding/
    python app/app.py --model org/vlmae-vqa org/vlmae-grounding org/vlmae-base
    VL_MODEL=outputs/demo python app/app.py            # the same from the environment (comma-separated)

Each task uses the first checkpoint that supports it (`vl_models.supported_tasks`), preferring the head made
for it (retrieval over pre-training for scores). Everything runs through the `vl-*` transformers pipelines.
"""

from __future__ import annotations

import os

# no network beyond the server itself: Gradio's analytics and version check off before it is imported
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
from transformers import AutoProcessor, pipeline  # noqa: E402

import vl_models  # noqa: E402
from vl_models.hub import task_of  # noqa: E402
from vl_models.pipelines import FILL_MASK, GROUNDING, MATCHING, TASKS, VQA, ZERO_SHOT, load_checkpoint  # noqa: E402

MODEL_ENV = "VL_MODEL"
BOX_COLOR = (255, 0, 255)  # magenta: no Shapes object has this colour
# the head each task prefers when several checkpoints support it
PREFERRED_HEADS = {ZERO_SHOT: ("retrieval", "pretraining"), MATCHING: ("retrieval", "pretraining")}
LABELS = {ZERO_SHOT: "zero-shot classification over the captions (ITC)", MATCHING: "image-text matching",
          VQA: "visual question answering", GROUNDING: "visual grounding", FILL_MASK: "fill-mask (MLM)"}


def checkpoint_sources(source: str) -> list[str]:
    """A checkpoint folder, a folder of checkpoint folders (`make demo`'s outputs/demo) or a Hub repo id."""
    path = Path(source)
    if path.is_dir():
        if (path / "config.json").is_file():
            return [str(path)]
        folders = sorted(str(p.parent) for p in path.glob("*/config.json"))
        if not folders:
            raise ValueError(f"`--model` {source} is a folder without config.json, and so are its subfolders")
        return folders
    return [source]


def load_pipelines(sources: list[str]) -> dict[str, tuple[str, object]]:
    """task -> (checkpoint, pipeline) for every task some checkpoint supports."""
    loaded = []
    for source in sources:
        for name in checkpoint_sources(source):
            model = load_checkpoint(name)
            loaded.append((name, model, AutoProcessor.from_pretrained(name)))
    pipes = {}
    for task in TASKS:
        candidates = [(n, m, p) for n, m, p in loaded if task in vl_models.supported_tasks(m)]
        heads = PREFERRED_HEADS.get(task, ())
        candidates.sort(key=lambda c: heads.index(task_of(c[1])) if task_of(c[1]) in heads else len(heads))
        if candidates:
            name, model, processor = candidates[0]
            pipes[task] = (name, pipeline(task, model=model, processor=processor))
    if not pipes:
        raise ValueError(f"none of {sources} supports any of the vl_models pipelines {list(TASKS)}")
    return pipes


def draw_box(image: Image.Image, box: list[float], min_side: int = 384) -> Image.Image:
    """The image (upscaled when small, so the box stays crisp) with the box drawn on it."""
    image = image.convert("RGB")
    scale = max(1.0, min_side / max(image.size))
    if scale > 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)
    x0, y0, x1, y1 = (v * scale for v in box)
    width = max(2, round(max(image.size) / 100))
    ImageDraw.Draw(image).rectangle((x0, y0, x1, y1), outline=BOX_COLOR, width=width)
    return image


def run(pipes, image, captions: str, question: str, expression: str, masked: str = ""):
    """One click: every available task on the image and its text; a task without text is skipped."""
    if image is None:
        raise gr.Error("Upload an image first.")
    lines = [line.strip() for line in (captions or "").splitlines() if line.strip()]
    out = {"zero_shot": None, "matching": None, "vqa": None, "grounded": None, "box": "", "fill": None}
    try:
        if lines and ZERO_SHOT in pipes and len(lines) > 1:
            result = pipes[ZERO_SHOT][1](image, candidate_labels=lines, hypothesis_template="{}")
            out["zero_shot"] = {r["label"]: r["score"] for r in result}
        if lines and MATCHING in pipes:
            rows = pipes[MATCHING][1](image, lines)
            out["matching"] = [[r["text"], _fmt(r["itm_score"]), _fmt(r["itc_score"])] for r in rows]
        if question and question.strip() and VQA in pipes:
            out["vqa"] = {r["answer"]: r["score"] for r in pipes[VQA][1](image, question, top_k=5)}
        if expression and expression.strip() and GROUNDING in pipes:
            result = pipes[GROUNDING][1](image, expression)
            out["grounded"] = draw_box(image, result["box"])
            out["box"] = json.dumps({"box": [round(v, 1) for v in result["box"]], "score": result["score"],
                                     "image_size": list(image.size)})
        if masked and masked.strip() and FILL_MASK in pipes:
            result = pipes[FILL_MASK][1](image, masked, top_k=5)
            result = result if isinstance(result[0], dict) else result[0]  # several masks: the first one's
            out["fill"] = {r["sequence"]: r["score"] for r in result}
    except ValueError as err:
        raise gr.Error(str(err)) from err
    return tuple(out.values())


def _fmt(score) -> str:
    return "n/a" if score is None else f"{score:.4f}"


def example(folder: Path, seed: int = 17) -> list:
    """A Shapes scene (the data `make demo` trains on) with true and false captions, a question and an expression."""
    from vl_models.data.shapes_language import (
        caption_words,
        make_captions,
        make_hard_negatives,
        make_question,
        make_referring_expression,
    )
    from vl_models.data.shapes_scene import generate_scene, render_scene

    rng = random.Random(seed)
    scene = generate_scene(rng, 64, min_objects=3)
    captions = [" ".join(caption_words(*c)) for c in make_captions(scene, rng, 2)]
    captions += [text for text, _ in make_hard_negatives(scene, make_captions(scene, rng, 1)[0], rng)[:1]]
    path = folder / f"shapes_{seed}.png"
    render_scene(scene).resize((256, 256), Image.NEAREST).save(path)
    words = captions[0].split()
    masked = " ".join(["[MASK]" if i == 2 else w for i, w in enumerate(words)])
    return [str(path), "\n".join(captions), make_question(scene, rng)[1], make_referring_expression(scene, rng)[0],
            masked]


def build_app(pipes) -> gr.Blocks:
    available = "\n".join(f"- {LABELS[t]}: `{pipes[t][0]}`" for t in TASKS if t in pipes)
    missing = ", ".join(LABELS[t] for t in TASKS if t not in pipes)
    with gr.Blocks(title="vl_models demo") as demo:
        gr.Markdown("# vl_models demo\nVision-language pre-training methods as Hugging Face models.\n\n"
                    f"{available}" + (f"\n\nNot available with these checkpoints: {missing}." if missing else ""))
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="Image", elem_id="image", sources=["upload", "clipboard"])
                captions = gr.Textbox(label="Captions (one per line): matching scores", lines=3, elem_id="captions",
                                      visible=MATCHING in pipes)
                question = gr.Textbox(label="Question", elem_id="question", visible=VQA in pipes)
                expression = gr.Textbox(label="Referring expression: grounding", elem_id="expression",
                                        visible=GROUNDING in pipes)
                masked = gr.Textbox(label="Text with [MASK]: fill-mask", elem_id="masked", visible=FILL_MASK in pipes)
                button = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column():
                zero_shot = gr.Label(label="Which caption fits best (ITC softmax)", elem_id="zero-shot",
                                     visible=ZERO_SHOT in pipes)
                matching = gr.Dataframe(headers=["caption", "ITM P(match)", "ITC cosine"], label="Image-text matching",
                                        elem_id="matching", visible=MATCHING in pipes, interactive=False, wrap=True,
                                        column_widths=["64%", "18%", "18%"])
                vqa = gr.Label(label="Answer", num_top_classes=5, elem_id="vqa", visible=VQA in pipes)
                grounded = gr.Image(label="Grounding", type="pil", elem_id="grounded", interactive=False,
                                    visible=GROUNDING in pipes)
                box = gr.Textbox(label="Box [x0, y0, x1, y1] in the image's pixels", elem_id="box",
                                 visible=GROUNDING in pipes)
                fill = gr.Label(label="Fill-mask", num_top_classes=5, elem_id="fill-mask", visible=FILL_MASK in pipes)
        inputs = [image, captions, question, expression, masked]
        gr.Examples([example(Path(tempfile.mkdtemp(prefix="vl_models_app_")))], inputs=inputs, cache_examples=False)
        button.click(lambda *args: run(pipes, *args), inputs=inputs,
                     outputs=[zero_shot, matching, vqa, grounded, box, fill])
    return demo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=None,
                        help=f"checkpoint folders, folders of them, or Hub repo ids (default: ${MODEL_ENV})")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args(argv)
    sources = args.model or [s.strip() for s in os.environ.get(MODEL_ENV, "").split(",") if s.strip()]
    if not sources:
        parser.error(f"pass --model PATH_OR_REPO or set {MODEL_ENV}")
    demo = build_app(load_pipelines(sources))
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # system fonts: no font download
    demo.launch(server_name=args.host, server_port=args.port, share=False, ssr_mode=False, show_error=True,
                theme=theme)


if __name__ == "__main__":
    main()
