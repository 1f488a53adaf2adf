"""`detkit serve`'s page (GET /) in a real browser: Debian's headless Chromium, driven by Selenium
through tools/serve_page.py (the tool that takes the README's screenshot).

The page uploads an image like a user does (its file input); the test then checks that the JSON the
page shows is the API's answer for that image, and that the boxes and labels it drew are those
detections: one rectangle per detection at the box scaled to the canvas, in the class colour that
`GET /v1/model` gives (the colours of `detkit infer`), labelled "name score" -- and that the canvas
pixels on the box edges really have that colour. Skipped, with the reason, when the browser is absent
(.ci/run installs it).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from serving import REPO, make_tiny_detector, write_images

pytest.importorskip("fastapi", reason="the serve extra is not installed")
httpx = pytest.importorskip("httpx", reason="the test extra (httpx) is not installed")


def _load_tool():
    spec = importlib.util.spec_from_file_location("tool_serve_page", REPO / "tools" / "serve_page.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()
if tool.browser_missing():
    pytest.skip(f"no browser for the page test: {tool.browser_missing()}", allow_module_level=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from detkit.serve.launch import ServerProcess

    folder = tmp_path_factory.mktemp("page")
    model = make_tiny_detector(folder / "tiny.pth")
    with ServerProcess(model, "--device", "cpu") as server:
        yield server, write_images(folder / "images")


@pytest.mark.parametrize("conf", [0.8, None])
def test_the_page_draws_and_shows_what_the_api_answers(served, conf, tmp_path):
    server, images = served
    colours = httpx.get(f"{server.url}/v1/model").json()["colors"]
    with tool.chromium() as driver:
        for path in (images[2], images[5]):
            found = tool.detect_on_page(driver, f"{server.url}/", path, conf=conf)
            assert not found["error"], found["error"]
            params = {} if conf is None else {"conf": conf}
            with open(path, "rb") as f:
                api = httpx.post(f"{server.url}/v1/detect", params=params, files={"file": (path.name, f)}).json()

            def comparable(body):
                return {k: v for k, v in body.items() if k not in ("time_ms", "batch_size")}

            assert comparable(found["shown"]) == comparable(found["response"]) == comparable(api)
            detections = api["detections"]
            assert detections, "nothing to draw: the test would prove nothing"
            scale = found["scale"]
            assert scale == pytest.approx(min(1, 960 / max(api["image"]["width"], api["image"]["height"])))
            assert len(found["drawn"]) == len(detections)
            for det, drawn, pixels in zip(detections, found["drawn"], found["pixels"]):
                assert drawn["box"] == [math.floor(v * scale + 0.5) for v in det["box"]]  # JavaScript's Math.round
                assert drawn["colour"] == colours[det["label"]]
                assert drawn["text"] == f"{det['name']} {det['score']:.2f}"
            for pixels, expected in zip(found["pixels"], expected_pixels(found["drawn"])):
                assert [p if e else None for p, e in zip(pixels, expected)] == expected
            assert any(c for colours in expected_pixels(found["drawn"]) for c in colours)  # some edges checked
        driver.save_screenshot(str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 10_000


def expected_pixels(drawn: list[dict]) -> list[list[str | None]]:
    """The colour the canvas must have at the middle of each box's four edges (the points
    tools/serve_page.py samples): that of the last stroke drawn over the point -- the page draws
    whole-pixel strokes, so there is no blending -- or ``None`` where a label lies on top (its text
    pixels are another colour)."""
    def in_stroke(x, y, item):
        x1, y1, x2, y2 = item["box"]
        half = item["line"] // 2
        outer = x1 - half <= x < x2 + half and y1 - half <= y < y2 + half
        inner = x1 + half <= x < x2 - half and y1 + half <= y < y2 - half
        return outer and not inner

    def in_label(x, y, item):
        left, top, width, height = item["label"]  # its right edge may be a blended fraction of a pixel
        return left <= x < math.ceil(left + width) and top <= y < top + height

    out = []
    for item in drawn:
        x1, y1, x2, y2 = item["box"]
        cx, cy = math.floor((x1 + x2) / 2 + 0.5), math.floor((y1 + y2) / 2 + 0.5)
        colours = []
        for x, y in ((x1, cy), (x2 - 1, cy), (cx, y1), (cx, y2 - 1)):
            colour = None
            for other in drawn:  # in drawing order: the last one over the point wins
                if in_stroke(x, y, other):
                    colour = other["colour"]
                if in_label(x, y, other):
                    colour = None
            colours.append(colour)
        out.append(colours)
    return out


def test_the_page_shows_the_servers_refusal(served, tmp_path):
    server, _ = served
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with tool.chromium() as driver:
        found = tool.detect_on_page(driver, f"{server.url}/", text)
    assert found["error"].startswith("415: notes.txt: not an image")
    assert found["shown"]["detail"].startswith("notes.txt: not an image") and found["drawn"] == []

