"""Drive the demo app in headless Chromium: upload an image, type the texts, click Run, read the results and take
a screenshot. tests/test_app.py uses `drive`; docs/images/demo_app.png comes from

    python app/app.py --model outputs/demo --port 7861 &
    python app/screenshot.py --url http://127.0.0.1:7861 --out docs/images/demo_app.png

Needs the `playwright` package and a Chromium (Debian's /usr/bin/chromium; `playwright install` is not needed).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# headless, and nothing that talks to the network on its own
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def launch(playwright, executable: str = CHROMIUM):
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)


def drive(page, url: str, image: str, texts: dict[str, str], screenshot: str | None = None,
          timeout_ms: int = 120_000) -> dict:
    """Open the app, fill it in and run it. texts: elem_id -> text ("captions", "question", "expression",
    "masked"). Returns what the result components show, and the element screenshots of the uploaded and the
    annotated image (PNG bytes). External requests are blocked and listed under "external_requests"."""
    external = []

    def local_only(route):
        if route.request.url.startswith(("http://127.0.0.1", "data:", "blob:")):
            return route.continue_()
        external.append(route.request.url)
        return route.abort()

    page.route("**/*", local_only)
    page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
    page.wait_for_selector("#run", timeout=timeout_ms)
    page.set_input_files("#image input[type=file]", image)
    page.wait_for_selector("#image img", timeout=timeout_ms)
    for elem_id, text in texts.items():
        page.fill(f"#{elem_id} textarea", text)
    page.click("#run")
    page.wait_for_function("document.querySelector('#box textarea').value.length > 0", timeout=timeout_ms)
    page.wait_for_selector("#grounded img", timeout=timeout_ms)
    page.wait_for_function("document.querySelector('#grounded img').complete", timeout=timeout_ms)
    shown = {
        "box": json.loads(page.input_value("#box textarea")),
        "vqa": page.inner_text("#vqa"),
        "matching": page.inner_text("#matching"),
        "zero_shot": page.inner_text("#zero-shot"),
        "fill_mask": page.inner_text("#fill-mask") if page.is_visible("#fill-mask") else "",
        "uploaded_png": page.locator("#image img").screenshot(),
        "grounded_png": page.locator("#grounded img").screenshot(),
        "external_requests": external,
    }
    if screenshot:
        page.screenshot(path=screenshot, full_page=True)
    return shown


def shapes_example(folder: Path, seed: int = 17) -> tuple[str, dict[str, str]]:
    """The app's own example (a Shapes scene and its texts), saved as a PNG in `folder`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("vl_models_app", Path(__file__).with_name("app.py"))
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    path, captions, question, expression, masked = app.example(folder, seed)
    return path, {"captions": captions, "question": question, "expression": expression, "masked": masked}


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:7860")
    parser.add_argument("--out", default="docs/images/demo_app.png")
    parser.add_argument("--seed", type=int, default=17, help="which Shapes scene to upload")
    args = parser.parse_args()
    random.seed(args.seed)
    image, texts = shapes_example(Path(tempfile.mkdtemp()), args.seed)
    with sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        shown = drive(page, args.url, image, texts, screenshot=args.out)
        browser.close()
    print(json.dumps({k: v for k, v in shown.items() if not k.endswith("_png")}, indent=2))


if __name__ == "__main__":
    main()
