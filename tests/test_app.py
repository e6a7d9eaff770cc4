"""The Gradio demo app end to end: tiny random checkpoints laid out like `make demo`'s outputs/demo, the app in a
subprocess on 127.0.0.1, driven in headless Chromium (Debian's /usr/bin/chromium through playwright)."""

from __future__ import annotations

import importlib.util
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import pipeline

import vl_models
from vl_models.pipelines import FILL_MASK, GROUNDING, MATCHING, VQA, ZERO_SHOT

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ANSWERS = {0: "yes", 1: "no", 2: "red", 3: "blue", 4: "circle", 5: "square", 6: "2"}
MAGENTA = (255, 0, 255)  # the app's box colour (app.BOX_COLOR)

pytestmark = pytest.mark.slow


def _requirements() -> str | None:
    for module in ("gradio", "playwright"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[app]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (apt-get install chromium; `make test` installs it as root)"
    return None


def _screenshot_module():
    spec = importlib.util.spec_from_file_location("vl_models_app_screenshot", ROOT / "app" / "screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _method() -> str:
    """The first registered method whose pre-training checkpoint gives matching scores."""
    for method in vl_models.list_methods():
        model, _ = vl_models.build(method, "tiny")
        if MATCHING in vl_models.supported_tasks(model):
            return method
    pytest.skip("no registered method's pre-training checkpoint supports image-text matching")


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    """pretrained/, vqa/ and grounding/ folders of tiny random models with their processors."""
    root = tmp_path_factory.mktemp("demo")
    method = _method()
    for folder, task in (("pretrained", "pretraining"), ("vqa", "vqa"), ("grounding", "grounding")):
        torch.manual_seed(0)
        kwargs = {"num_labels": len(ANSWERS), "id2label": ANSWERS} if task == "vqa" else {}
        model, processor = vl_models.build(method, "tiny", task=task, **kwargs)
        model.save_pretrained(root / folder)
        processor.save_pretrained(root / folder)
    return root


@pytest.fixture(scope="module")
def app_url(model_root, tmp_path_factory):
    reason = _requirements()
    if reason:
        pytest.skip(reason)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path_factory.mktemp("hf_home")),
           "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio"))}
    log = tmp_path_factory.mktemp("app_log") / "app.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app" / "app.py"), "--model", str(model_root),
                                 "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the app exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer at {url} within 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _scene(path: Path) -> str:
    """A 256 x 256 picture of coloured shapes on black (no magenta in it)."""
    image = Image.new("RGB", (256, 256))
    draw = ImageDraw.Draw(image)
    draw.ellipse((20, 30, 100, 110), fill=(220, 40, 40))
    draw.rectangle((150, 140, 230, 220), fill=(50, 90, 235))
    image.save(path)
    return str(path)


def _magenta(png: bytes) -> np.ndarray:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return (pixels[..., 0] > 200) & (pixels[..., 1] < 90) & (pixels[..., 2] > 200)  # [H, W]


def test_app_in_headless_chromium(app_url, model_root, tmp_path):
    from playwright.sync_api import sync_playwright

    screenshot = _screenshot_module()
    image_path = _scene(tmp_path / "scene.png")
    texts = {"captions": "a red circle\na blue square", "question": "what color is the circle?",
             "expression": "the red circle", "masked": "a [MASK] circle"}
    shot = tmp_path / "app.png"
    with sync_playwright() as playwright:
        browser = screenshot.launch(playwright)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            shown = screenshot.drive(page, app_url, image_path, texts, screenshot=str(shot))
        finally:
            browser.close()
    assert shown["external_requests"] == []  # the page asked nothing of any host but the app

    # what the page shows equals the pipelines run here on the same checkpoints
    image = Image.open(image_path).convert("RGB")
    pipes = {task: pipeline(task, model=str(model_root / name), device="cpu")
             for task, name in ((MATCHING, "pretrained"), (VQA, "vqa"), (GROUNDING, "grounding"),
                                (FILL_MASK, "pretrained"))}
    box = pipes[GROUNDING](image, texts["expression"])["box"]
    assert shown["box"]["box"] == pytest.approx(box, abs=0.051)
    assert shown["box"]["image_size"] == [256, 256]
    answers = pipes[VQA](image, texts["question"])
    assert answers[0]["answer"] in shown["vqa"]
    assert all(line in ANSWERS.values() or line.endswith("%") or line == "Answer"
               for line in shown["vqa"].split("\n") if line)
    for row in pipes[MATCHING](image, texts["captions"].split("\n")):
        assert row["text"] in shown["matching"] and f"{row['itm_score']:.4f}" in shown["matching"]
    if ZERO_SHOT in vl_models.supported_tasks(pipes[MATCHING].model):
        assert "a red circle" in shown["zero_shot"] and "a blue square" in shown["zero_shot"]
    assert pipes[FILL_MASK](image, texts["masked"])[0]["sequence"] in shown["fill_mask"]

    # the screenshot: a real page, not blank
    page_png = Image.open(shot)
    assert page_png.format == "PNG" and page_png.width == 1280 and 900 <= page_png.height <= 6000
    pixels = np.asarray(page_png.convert("RGB")).astype(int)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100

    # the annotated image: the uploaded picture plus a magenta box where the pipeline put it
    assert _magenta(shown["uploaded_png"]).sum() == 0
    mask = _magenta(shown["grounded_png"])
    assert mask.sum() > 100
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    drawn = [xs.min() / width, ys.min() / height, (xs.max() + 1) / width, (ys.max() + 1) / height]
    assert drawn == pytest.approx([v / 256 for v in box], abs=0.04)
    inside = mask[int(ys.mean()) - 2:int(ys.mean()) + 3, int(xs.mean()) - 2:int(xs.mean()) + 3]
    assert not inside.any()  # an outline, not a filled rectangle
