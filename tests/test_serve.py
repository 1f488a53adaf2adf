"""`detkit serve`: the real server, started as a subprocess on 127.0.0.1 and a free port, over HTTP.

* its detections equal `Predictor`'s on the same images, for every body kind and for requests with
  their own conf / iou / max_det / classes (tests/serving.py has the detector and images);
* every bad input gets its status code and a one-line JSON ``detail``, and the server stays up;
* 300 requests at concurrency 16 (mixed settings, time-limited) finish without an error, each answer
  matching its own image, in batches larger than one (checked in /metrics too);
* a full queue answers 503 with Retry-After; an ONNX export with NMS inside refuses settings fixed at
  export; ``--workers 2`` runs two processes whose metrics add up;
* the batcher itself (in process): results to the right callers, one key per batch, its bounds.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from serving import CLASSES, assert_same, make_tiny_detector, write_images

httpx = pytest.importorskip("httpx", reason="the test extra (httpx) is not installed")
pytest.importorskip("fastapi", reason="the serve extra is not installed")

from detkit import Predictor  # noqa: E402
from detkit.serve.launch import ServerProcess  # noqa: E402

MAX_PIXELS = 1_000_000
MAX_UPLOAD_MB = 1


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_tiny_detector(tmp_path_factory.mktemp("serve") / "tiny.pth")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return write_images(tmp_path_factory.mktemp("serve_images"))


@pytest.fixture(scope="module")
def server(model):
    with ServerProcess(model, "--device", "cpu", "--max-batch", "8", "--max-wait-ms", "20",
                       "--max-pixels", str(MAX_PIXELS), "--max-upload-mb", str(MAX_UPLOAD_MB)) as server:
        yield server
    assert "Traceback" not in server.log(), server.log()[-3000:]


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def detect(client, path: Path, **params) -> httpx.Response:
    with open(path, "rb") as f:
        return client.post("/v1/detect", params=params, files={"file": (path.name, f)})


def expected(model, images, **settings):
    """Predictor's results for ``images`` with ``settings`` (``classes`` filtered as detkit infer does)."""
    classes, device = settings.pop("classes", None), settings.pop("device", "cpu")
    results = Predictor(model, device=device, **settings)([str(p) for p in images])
    if classes is not None:
        keep = {int(c) if c.isdigit() else CLASSES.index(c) for c in classes.split(",")}
        results = [r.filter(classes=keep) for r in results]
    return results


# ----------------------------------------------------------------------------------------------
# answers
# ----------------------------------------------------------------------------------------------


def test_detections_equal_predictors_for_every_body_kind(client, model, images):
    reference = expected(model, images)
    assert all(len(r) > 0 for r in reference) and len({len(r) for r in reference}) > 1  # worth comparing
    for path, result in zip(images, reference):
        data = path.read_bytes()
        multipart = detect(client, path)
        as_json = client.post("/v1/detect", json={"image": base64.b64encode(data).decode(), "name": path.name})
        data_url = client.post("/v1/detect", json={"image": "data:image/png;base64," + base64.b64encode(data).decode()})
        raw = client.post("/v1/detect", content=data, headers={"Content-Type": "application/octet-stream"})
        for kind, response in (("multipart", multipart), ("json", as_json), ("data url", data_url), ("raw", raw)):
            assert response.status_code == 200, (kind, response.text)
            body = response.json()
            assert_same(body["detections"], result, f"{path.name} {kind}")
            h, w = result.image.shape[:2]
            assert body["image"]["width"] == w and body["image"]["height"] == h
        body = multipart.json()
        assert body["image"]["name"] == path.name and body["model"] == "tiny.pth"
        assert body["settings"] == {"conf": 0.25, "iou": 0.5, "max_det": 100, "classes": None}
        assert 1 <= body["batch_size"] <= 8
        times = body["time_ms"]
        assert set(times) == {"decode", "preprocess", "queue", "inference", "total"}
        assert 0 < times["inference"] <= times["total"] and times["decode"] + times["queue"] <= times["total"]


@pytest.mark.parametrize("params", [
    {"conf": 0.6}, {"conf": 0.05}, {"iou": 0.3}, {"max_det": 2}, {"classes": "circle,cross"}, {"classes": "4,0"},
    {"conf": 0.4, "iou": 0.7, "max_det": 3, "classes": "circle"},
], ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()))
def test_request_settings_equal_predictor_with_those_settings(client, model, images, params):
    reference = expected(model, images, **params)
    for path, result in zip(images, reference):
        response = detect(client, path, **params)
        assert response.status_code == 200, response.text
        assert_same(response.json()["detections"], result, f"{path.name} {params}")
        settings = response.json()["settings"]
        assert settings["conf"] == params.get("conf", 0.25) and settings["max_det"] == params.get("max_det", 100)
        if "classes" in params:
            names = [CLASSES[int(c)] if c.isdigit() else c for c in params["classes"].split(",")]
            assert settings["classes"] == sorted(names, key=CLASSES.index)


def test_model_endpoint_and_probes(client, model):
    info = client.get("/v1/model").json()
    assert info["source"] == "tiny.pth" and info["kind"] == "checkpoint" and info["detector"] == "yolov1"
    assert info["classes"] == CLASSES and info["input_size"] == [64, 64] and info["resize"] == "stretch"
    assert info["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert info["defaults"] == {"conf": 0.25, "iou": 0.5, "max_det": 100}
    assert info["limits"]["min_conf"] == 0.01 and info["limits"]["max_pixels"] == MAX_PIXELS
    assert info["batching"]["max_batch"] == 8 and info["batching"]["max_wait_ms"] == 20
    from detkit import __version__
    from detkit.draw import class_colour

    assert info["detkit_version"] == __version__
    assert info["colors"][1] == "#%02x%02x%02x" % class_colour(1)  # the colours of `detkit infer`
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "v1/detect" in page.text


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------


def _png_bomb(width: int, height: int) -> bytes:
    """A small PNG declaring ``width x height`` pixels: IHDR, one IDAT of compressed zeros, IEND (its
    decoder would allocate the whole image before finding the data short)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(100_000))) + chunk(b"IEND", b"")


def _big_png() -> bytes:
    import cv2
    import numpy as np

    return cv2.imencode(".png", np.zeros((1000, 1001, 3), np.uint8))[1].tobytes()  # 1,001,000 pixels, ~5 KB


def _files(name: str, data: bytes) -> dict:
    return {"files": {"file": (name, data)}}


BAD_INPUTS = {
    # name: (request kwargs, query, status, a word the message must contain)
    "not an image": (_files("notes.txt", b"hello, this is text"), {}, 415, "not an image"),
    "corrupt png": (_files("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 200), {}, 422, "broken.png"),
    "bomb header": (_files("bomb.png", _png_bomb(30000, 30000)), {}, 422, "900,000,000 pixels"),
    "over pixel limit": (_files("big.png", _big_png()), {}, 422, "over the limit"),
    "empty file": (_files("empty.jpg", b""), {}, 422, "empty"),
    "no file field": ({"data": {"note": "x"}, "files": {"other": ("", b"")}}, {}, 422, "no file"),
    "text/plain body": ({"content": b"abc", "headers": {"Content-Type": "text/plain"}}, {}, 415, "Content-Type"),
    "no content type": ({"content": b"abc"}, {}, 415, "Content-Type"),
    "bad json": ({"content": b"{nope", "headers": {"Content-Type": "application/json"}}, {}, 422, "JSON"),
    "json without image": ({"json": {"picture": "x"}}, {}, 422, "image"),
    "json extra field": ({"json": {"image": "aGk=", "conf": 0.5}}, {}, 422, "query string"),
    "bad base64": ({"json": {"image": "not base64!!"}}, {}, 422, "base64"),
    "image url": ({"json": {"image": "http://127.0.0.1:9/cat.jpg"}}, {}, 422, "fetches nothing"),
    "url field": ({"json": {"url": "https://127.0.0.1:9/cat.jpg"}}, {}, 422, '{"image"'),
    "upload too large": (_files("huge.jpg", b"\xff\xd8\xff" + b"\x00" * (MAX_UPLOAD_MB * 1024 * 1024)), {}, 413,
                         "limit"),
    "chunked too large": ({"content": iter([b"\x00" * 65536] * 20), "headers": {"Content-Type": "image/png"}}, {},
                          413, "limit"),
    "conf above 1": (None, {"conf": "2"}, 422, "conf"),
    "conf not a number": (None, {"conf": "abc"}, 422, "conf"),
    "conf nan": (None, {"conf": "nan"}, 422, "conf"),
    "conf below the model's floor": (None, {"conf": "0.001"}, 422, "score threshold 0.01"),
    "iou negative": (None, {"iou": "-0.1"}, 422, "iou"),
    "max_det zero": (None, {"max_det": "0"}, 422, "max_det"),
    "max_det fraction": (None, {"max_det": "1.5"}, 422, "max_det"),
    "unknown class": (None, {"classes": "dog"}, 422, "unknown class 'dog'"),
    "class index out of range": (None, {"classes": "7"}, 422, "not a class index"),
    "unknown parameter": (None, {"confidence": "0.5"}, 422, "unknown query parameter 'confidence'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gets_its_code_and_a_one_line_message(client, images, case):
    kwargs, params, status, word = BAD_INPUTS[case]
    kwargs = kwargs or _files(images[0].name, images[0].read_bytes())
    response = client.post("/v1/detect", params=params, **kwargs)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and word in detail, detail
    assert "Traceback" not in response.text
    if status == 503:
        assert int(response.headers["Retry-After"]) >= 1


def test_wrong_method_and_path_are_json_errors_and_the_server_lives_on(client, images):
    assert client.get("/v1/detect").status_code == 405
    missing = client.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
    assert detect(client, images[0]).status_code == 200
    assert client.get("/healthz").status_code == 200


# ----------------------------------------------------------------------------------------------
# load, batching, metrics
# ----------------------------------------------------------------------------------------------


def _metric(text: str, name: str, **labels) -> float:
    """The value of one sample of the Prometheus text ``text`` (0 when absent)."""
    for line in text.splitlines():
        match = re.match(rf"{re.escape(name)}(?:{{(.*)}})? (\S+)$", line)
        if match and all(f'{k}="{v}"' in (match.group(1) or "") for k, v in labels.items()):
            return float(match.group(2))
    return 0.0


def test_300_requests_at_concurrency_16_each_answered_for_its_own_image(server, client, model, images):
    variants = [{}, {"iou": 0.3}, {"conf": 0.5, "max_det": 3}]  # different iou values never share a batch
    reference = [expected(model, images, **v) for v in variants]
    jobs = [(n % len(images), (n // len(images)) % len(variants)) for n in range(300)]
    deadline = time.monotonic() + 240
    before = client.get("/metrics").text

    def run(chunk):
        answers = []
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for image, variant in chunk:
                if time.monotonic() > deadline:
                    break
                answers.append((image, variant, detect(http, images[image], **variants[variant])))
        return answers

    with ThreadPoolExecutor(16) as pool:
        answers = [a for chunk in pool.map(run, [jobs[i::16] for i in range(16)]) for a in chunk]
    assert len(answers) == 300, f"only {len(answers)} of 300 requests within the time limit"
    errors = [(r.status_code, r.text) for _, _, r in answers if r.status_code != 200]
    assert not errors, errors[:5]
    for image, variant, response in answers:
        assert response.json()["image"]["name"] == images[image].name
        assert_same(response.json()["detections"], reference[variant][image], f"{images[image].name} {variants[variant]}")
    sizes = [r.json()["batch_size"] for _, _, r in answers]
    assert max(sizes) > 1, "no two requests ever shared a forward pass"

    assert detect(client, images[0], conf=2).status_code == 422
    after = client.get("/metrics").text
    def delta(name, **labels):
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    assert delta("detkit_requests_total", endpoint="/v1/detect", code="200") == 300
    assert delta("detkit_request_errors_total", endpoint="/v1/detect", code="422") == 1
    assert delta("detkit_request_duration_seconds_count", endpoint="/v1/detect") == 301
    assert delta("detkit_batch_size_sum") == 300  # every image went through exactly one forward pass
    assert delta("detkit_batch_size_count") < 300  # ... in fewer passes than images
    assert _metric(after, "detkit_queue_requests") == 0


def test_a_full_queue_answers_503_with_retry_after_and_readyz_says_not_ready(model, images):
    # The first request waits up to 3 s for company; meanwhile the queue (2 places) fills up.
    with ServerProcess(model, "--device", "cpu", "--max-queue", "2", "--max-batch", "8", "--max-wait-ms", "3000") as server:
        def one(path):
            with httpx.Client(base_url=server.url, timeout=60) as http:
                return detect(http, path)

        with ThreadPoolExecutor(6) as pool:
            pending = [pool.submit(one, path) for path in images]
            probes = []
            while not all(f.done() for f in pending):  # /readyz while the two admitted requests wait
                probes.append(httpx.get(f"{server.url}/readyz", timeout=60))
                time.sleep(0.05)
            responses = [f.result() for f in pending]
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) >= 2 and codes.count(503) >= 1 and set(codes) <= {200, 503}, codes
        busy = next(r for r in responses if r.status_code == 503)
        assert int(busy.headers["Retry-After"]) >= 1 and "--max-queue 2" in busy.json()["detail"]
        full = [p for p in probes if p.status_code == 503]
        assert full, [p.status_code for p in probes]
        assert full[0].json()["detail"].startswith("not ready: queue full") and int(full[0].headers["Retry-After"]) >= 1
        assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready", "queued": 0}  # drained
        reference = expected(model, images)
        for path, result, response in zip(images, reference, responses):
            if response.status_code == 200:
                assert_same(response.json()["detections"], result, path.name)


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient` is deprecated")
def test_an_unexpected_failure_is_a_one_line_500_and_the_traceback_goes_to_the_log(model, images, caplog):
    """In process (starlette's TestClient): the model fails once (as a CUDA out-of-memory would); that
    request gets a 500 JSON line without the exception text, the log gets the traceback, the next
    request is served."""
    from fastapi.testclient import TestClient

    from detkit.serve.app import ServeOptions, create_app

    options = ServeOptions(model=str(model), device="cpu")
    engine = options.build_engine()
    real, calls = engine.run_batch, []

    def fails_once(iou, items):
        calls.append(len(items))
        if len(calls) == 1:
            raise RuntimeError("out of memory (simulated secret /srv/models/path)")
        return real(iou, items)

    engine.run_batch = fails_once
    with TestClient(create_app(engine, options), raise_server_exceptions=False) as client:
        failed = detect(client, images[0])
        assert failed.status_code == 500
        assert failed.json() == {"detail": "internal server error (RuntimeError); the server log has the details"}
        served = detect(client, images[1])
        assert served.status_code == 200 and client.get("/healthz").status_code == 200
        assert_same(served.json()["detections"], expected(model, images[1:2])[0], images[1].name)
        metrics = client.get("/metrics").text
    assert calls == [1, 1]
    assert _metric(metrics, "detkit_request_errors_total", endpoint="/v1/detect", code="500") == 1
    assert "Traceback" in caplog.text and "simulated secret" in caplog.text  # the log has it all


def test_pixel_limit_is_the_option_else_the_models_config_else_the_readers_default(model, monkeypatch):
    """In process: ``--max-pixels`` wins; without it the model config's data.max_image_pixels applies (as
    Predictor reads images), then $DETKIT_MAX_IMAGE_PIXELS, then Pillow's limit -- all through the one
    header check of detkit.data.io, before decoding."""
    from detkit.checkpoint import load_checkpoint, save_checkpoint
    from detkit.data.io import DEFAULT_MAX_IMAGE_PIXELS, MAX_PIXELS_ENV
    from detkit.serve.engine import Engine, RequestError

    state = load_checkpoint(model)
    state["config"]["data"]["max_image_pixels"] = 5000
    limited = save_checkpoint(model.with_name("limited.pth"), {k: state[k] for k in ("model", "class_names", "config")})
    png = _big_png()  # 1001 x 1000
    small = __import__("cv2").imencode(".png", __import__("numpy").zeros((50, 80, 3), "uint8"))[1].tobytes()

    by_config = Engine(limited, device="cpu")
    assert by_config.info()["limits"]["max_pixels"] == 5000
    assert by_config.prepare(small, "small.png").width == 80  # 4,000 pixels: under the limit
    with pytest.raises(RequestError) as refused:
        by_config.prepare(png, "big.png")
    assert refused.value.status == 422
    assert refused.value.message == ("big.png: 1001x1000 = 1,001,000 pixels is over the limit of 5,000 "
                                     "(detkit serve --max-pixels)")
    assert Engine(limited, device="cpu", max_pixels=0).prepare(png, "big.png").height == 1000  # 0: no limit

    monkeypatch.setenv(MAX_PIXELS_ENV, "2000")
    plain = Engine(model, device="cpu")
    assert plain.info()["limits"]["max_pixels"] == 2000
    with pytest.raises(RequestError, match="over the limit of 2,000"):
        plain.prepare(small, "small.png")
    monkeypatch.delenv(MAX_PIXELS_ENV)
    assert plain.info()["limits"]["max_pixels"] == DEFAULT_MAX_IMAGE_PIXELS


def test_torchscript_export_serves_the_same_detections(model, images):
    from detkit.deploy.export import export

    script = export(model, "torchscript", model.with_name("tiny.torchscript"), dynamic_batch=True)
    reference = expected(script, images)
    with ServerProcess(script, "--device", "cpu") as server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/v1/model").json()["kind"] == "torchscript"
        for path, result in zip(images, reference):
            response = detect(client, path, conf=0.3)
            assert response.status_code == 200, response.text
            assert_same(response.json()["detections"], result.filter(0.3), path.name)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device")
def test_served_on_cuda_equals_predictor_on_cuda(model, images):
    reference = expected(model, images, device="cuda")
    with ServerProcess(model, "--device", "cuda") as server, httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/v1/model").json()["device"].startswith("cuda")
        for path, result in zip(images, reference):
            assert_same(detect(client, path).json()["detections"], result, path.name)


def test_onnx_export_with_nms_inside_refuses_what_was_fixed_at_export(model, images):
    pytest.importorskip("onnxruntime", reason="the deploy extra is not installed")
    from detkit.deploy.export import export

    onnx = export(model, "onnx", model.with_name("tiny.onnx"), dynamic_batch=True)
    reference = expected(onnx, images)
    with ServerProcess(onnx, "--device", "cpu") as server, httpx.Client(base_url=server.url, timeout=60) as client:
        info = client.get("/v1/model").json()
        assert info["kind"] == "onnx" and info["limits"]["iou_fixed"] and info["limits"]["max_det"] == 100
        for path, result in zip(images, reference):
            assert_same(detect(client, path).json()["detections"], result, path.name)
        top2 = detect(client, images[2], max_det=2)
        assert_same(top2.json()["detections"], reference[2].filter(max_det=2), "max_det=2")
        iou = detect(client, images[0], iou=0.3)
        assert iou.status_code == 422 and "fixed at export" in iou.json()["detail"]
        many = detect(client, images[0], max_det=500)
        assert many.status_code == 422 and "at most 100" in many.json()["detail"]


def test_two_workers_each_serve_and_their_metrics_add_up(model, images):
    with ServerProcess(model, "--device", "cpu", "--workers", "2") as server:
        children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
        workers = [pid for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 2
        reference = expected(model, images)

        def one(i):
            with httpx.Client(base_url=server.url, timeout=60) as http:  # a new connection each time
                return i, detect(http, images[i % len(images)])

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(one, range(24)))
        for i, response in answers:
            assert response.status_code == 200
            assert_same(response.json()["detections"], reference[i % len(images)], images[i % len(images)].name)
        metrics = httpx.get(f"{server.url}/metrics").text
        assert _metric(metrics, "detkit_requests_total", endpoint="/v1/detect", code="200") == 24
        assert _metric(metrics, "detkit_batch_size_sum") == 24


# ----------------------------------------------------------------------------------------------
# the command line
# ----------------------------------------------------------------------------------------------


def test_missing_extra_and_bad_model_are_one_line_errors(monkeypatch, tmp_path):
    import importlib.util

    from click.testing import CliRunner

    from detkit.cli import main

    runner = CliRunner()
    missing = runner.invoke(main, ["serve", str(tmp_path / "absent.pth")])
    assert missing.exit_code == 2 and "absent.pth" in missing.output and "Traceback" not in missing.output
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else find_spec(name, *a))
    hint = runner.invoke(main, ["serve", str(tmp_path / "absent.pth")])
    assert hint.exit_code == 2
    assert hint.output.strip() == "error: detkit serve needs the serve extra: pip install 'detkit[serve]' (missing: fastapi)"


# ----------------------------------------------------------------------------------------------
# the batcher, in process
# ----------------------------------------------------------------------------------------------


def test_batcher_groups_by_key_returns_each_result_to_its_caller_and_bounds_the_queue():
    from detkit.serve.batching import DynamicBatcher, Overloaded

    batches = []

    def run(key, items):
        batches.append((key, list(items)))
        if key == "fail":
            raise RuntimeError("model failure")
        time.sleep(0.01)
        return [(key, item * 10) for item in items]

    async def scenario():
        batcher = DynamicBatcher(run, max_batch=4, max_wait=0.05, max_queue=12)
        batcher.start()

        async def call(key, item):
            with batcher.admit():
                return await batcher.submit(key, item)

        calls = [call("ab"[i % 2], i) for i in range(11)] + [call("fail", 99)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        with batcher.admit():  # 12 places: the 13th caller is refused while 12 are held
            holders = [batcher.admit() for _ in range(11)]
            for holder in holders:
                holder.__enter__()
            with pytest.raises(Overloaded, match="12 requests queued"):
                with batcher.admit():
                    pass
            for holder in holders:
                holder.__exit__(None, None, None)
        after = await call("a", 100)  # the loop survived the failing batch
        await batcher.stop()
        return outcomes, after

    outcomes, after = asyncio.run(scenario())
    for i, outcome in enumerate(outcomes[:11]):
        (key, value), info = outcome
        assert key == "ab"[i % 2] and value == i * 10 and 1 <= info.size <= 4 and info.queued >= 0
    assert isinstance(outcomes[11], RuntimeError) and str(outcomes[11]) == "model failure"
    assert after[0] == ("a", 1000)
    assert all(len(items) <= 4 for _, items in batches)
    grouped = [(key, items) for key, items in batches if key in ("a", "b")]
    assert sorted(i for _, items in grouped for i in items) == list(range(11)) + [100]
    assert all("ab"[i % 2] == key for key, items in grouped for i in items if i != 100)  # one key per call
    assert max(len(items) for _, items in grouped) > 1  # concurrent callers shared calls
