"""`detkit data get`: the real download code against an HTTP server on 127.0.0.1 started here.

The server serves archives the tests build (the raccoon archive from ../shared/datasets/raccoon when
present, else synthetic photos in the same layout); it can honour or ignore ``Range`` and cut a
download short. No test touches the internet.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from detkit.cli import main
from detkit.data.fetch import DATASETS, DatasetSpec, Resource, download, fetch
from detkit.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


class Server:
    """Serves ``files`` (name -> bytes). ``ranges``: honour Range requests; ``cut``: on the first
    request for a file, close the connection after that many bytes."""

    def __init__(self, files: dict, ranges: bool = True, cut: int | None = None):
        self.files, self.ranges, self.cut = files, ranges, cut
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                outer.requests.append((name, self.headers.get("Range")))
                if name not in outer.files:
                    self.send_error(404)
                    return
                data = outer.files[name]
                start = 0
                match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
                if match and outer.ranges:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if outer.cut is not None:
                    body, outer.cut = body[: outer.cut], None
                    self.wfile.write(body)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def payload(n: int = 300_000, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def resource(name: str, data: bytes, **overrides) -> Resource:
    fields = dict(url=f"http://127.0.0.1:9/{name}", filename=name, size=len(data),
                  sha256=hashlib.sha256(data).hexdigest(), md5=hashlib.md5(data).hexdigest())
    fields.update(overrides)
    return Resource(**fields)


# ----------------------------------------------------------------------------------------------
# Downloading: resume, checksums, offline
# ----------------------------------------------------------------------------------------------
def test_resume_asks_for_the_rest_and_appends(tmp_path):
    data = payload()
    (tmp_path / "blob.bin.part").write_bytes(data[:123_456])  # an earlier run stopped here
    with Server({"blob.bin": data}) as server:
        path = download(resource("blob.bin", data), tmp_path, mirror=server.url, progress=False)
    assert path.read_bytes() == data and not (tmp_path / "blob.bin.part").exists()
    assert server.requests == [("blob.bin", "bytes=123456-")]


def test_a_server_without_ranges_starts_over(tmp_path):
    data = payload()
    (tmp_path / "blob.bin.part").write_bytes(b"x" * 1000)  # garbage: must not end up in the file
    with Server({"blob.bin": data}, ranges=False) as server:
        path = download(resource("blob.bin", data), tmp_path, mirror=server.url, progress=False)
    assert path.read_bytes() == data
    assert server.requests == [("blob.bin", "bytes=1000-")]  # asked, got the whole file (200), rewrote


def test_an_interrupted_download_is_kept_and_resumed(tmp_path):
    data = payload()
    spec = resource("blob.bin", data)
    with Server({"blob.bin": data}, cut=100_000) as server:
        with pytest.raises(DataError, match=r"cannot download blob\.bin .*kept in .*blob\.bin\.part, the next run "
                                            r"resumes.*Offline\?"):
            download(spec, tmp_path, mirror=server.url, progress=False)
        assert (tmp_path / "blob.bin.part").stat().st_size == 100_000
        path = download(spec, tmp_path, mirror=server.url, progress=False)
    assert path.read_bytes() == data
    assert server.requests == [("blob.bin", None), ("blob.bin", "bytes=100000-")]


@pytest.mark.parametrize("field, value, message", [
    ("sha256", "0" * 64, "sha256 mismatch: expected 0000"),
    ("md5", "f" * 32, "md5 mismatch: expected ffff"),
    ("size", 5, "size mismatch: expected 5 bytes, got 300,000"),
])
def test_checksum_mismatch_deletes_the_file_and_says_so(tmp_path, field, value, message):
    data = payload()
    with Server({"blob.bin": data}) as server:
        with pytest.raises(DataError, match=rf"blob\.bin from {server.url}/blob\.bin: {message}.*the file was "
                                            r"deleted.*run the command again"):
            download(resource("blob.bin", data, **{field: value}), tmp_path, mirror=server.url, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_offline_is_one_clear_line(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = Resource(f"http://127.0.0.1:{port}/a.zip", "a.zip", 10, mirrors=(f"http://127.0.0.1:{port}/b.zip",))
    with pytest.raises(DataError) as info:
        download(spec, tmp_path, progress=False, timeout=5)
    text = str(info.value)
    assert "\n" not in text and "cannot download a.zip" in text and f"127.0.0.1:{port}/a.zip" in text
    assert f"127.0.0.1:{port}/b.zip" in text  # the mirror was tried too
    assert "refused" in text.lower() and "Offline?" in text and str(tmp_path / "a.zip") in text


def test_unknown_name_and_list(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown data set 'racoon'\. Did you mean 'raccoon'\?"):
        fetch("racoon", tmp_path)
    result = CliRunner().invoke(main, ["data", "get", "--list"])
    assert result.exit_code == 0
    for name in DATASETS:
        assert name in result.output
    assert "VOCtrainval_06-Nov-2007.tar" in result.output and "no published checksum" in result.output


def test_published_checksums_are_well_formed():
    for spec in DATASETS.values():
        for r in spec.resources:
            assert r.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", r.sha256), r
            assert r.md5 is None or re.fullmatch(r"[0-9a-f]{32}", r.md5), r
            assert r.url.startswith(("http://", "https://")) and r.filename == r.url.rsplit("/", 1)[1] or \
                spec.name == "raccoon"


def test_archive_members_leaving_the_folder_are_refused(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("ok/a.txt", "fine")
        zf.writestr("../evil.txt", "outside")
    data = buffer.getvalue()
    spec = DatasetSpec("evil", "test", "evil", (resource("evil.zip", data),),
                       prepare=DATASETS["raccoon"].prepare, use="nothing")
    with Server({"evil.zip": data}) as server:
        with pytest.raises(DataError, match=r"member '\.\./evil\.txt' would be written outside"):
            fetch(spec, tmp_path / "data", mirror=server.url, progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "data" / "evil").exists()


# ----------------------------------------------------------------------------------------------
# The raccoon data set, end to end: data get, then the recipe trains from it
# ----------------------------------------------------------------------------------------------
def raccoon_archive(source: Path | None, train: int = 8, val: int = 4) -> bytes:
    """A zip laid out like github.com/datitran/raccoon_dataset's archive (a subset when ``source``)."""
    top = "raccoon_dataset-9393884/"
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(buffer, "w") as zf:
        splits = {}
        for split, n in (("train", train), ("val", val)):
            if source is not None:
                ids = (source / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[:n]
            else:
                ids = [f"raccoon-{i + 1 + (0 if split == 'train' else train)}" for i in range(n)]
            splits[split] = ids
            for stem in ids:
                if source is not None:
                    zf.write(source / "JPEGImages" / f"{stem}.jpg", f"{top}images/{stem}.jpg")
                    zf.write(source / "Annotations" / f"{stem}.xml", f"{top}annotations/{stem}.xml")
                    continue
                w, h = int(rng.integers(120, 200)), int(rng.integers(90, 150))
                image = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(image, "JPEG")
                zf.writestr(f"{top}images/{stem}.jpg", image.getvalue())
                x1, y1 = int(rng.integers(1, w // 3)), int(rng.integers(1, h // 3))
                zf.writestr(f"{top}annotations/{stem}.xml",
                            f"<annotation><filename>{stem}.png</filename><size><width>{w}</width><height>{h}"
                            f"</height><depth>3</depth></size><object><name>raccoon</name><difficult>0"
                            f"</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{w - 5}</xmax>"
                            f"<ymax>{h - 5}</ymax></bndbox></object></annotation>")
        for split, csv_name in (("train", "train_labels.csv"), ("val", "test_labels.csv")):
            text = io.StringIO()
            writer = csv.writer(text)
            writer.writerow(["filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax"])
            for stem in splits[split]:
                writer.writerow([f"{stem}.jpg", 0, 0, "raccoon", 1, 1, 2, 2])
            zf.writestr(f"{top}data/{csv_name}", text.getvalue())
        zf.writestr(f"{top}LICENSE", "MIT License\n")
    return buffer.getvalue()


@pytest.fixture
def raccoon_source():
    """../shared/datasets/raccoon when present (a subset of its real photos), else None: synthetic."""
    from conftest import RACCOON_ROOT

    return RACCOON_ROOT if (RACCOON_ROOT / "Annotations").is_dir() else None


def test_data_get_raccoon_then_the_recipe_trains(tmp_path, monkeypatch, raccoon_source):
    from detkit import registry
    from detkit.config import load_config
    from detkit.engine.runner import train

    archive = raccoon_archive(raccoon_source)
    name = DATASETS["raccoon"].resources[0].filename
    home = tmp_path / "datahome"
    monkeypatch.setenv("DETKIT_DATA", str(home))  # what a clone without ../shared does: data get fills it
    with Server({name: archive}) as server:
        result = CliRunner().invoke(main, ["data", "get", "raccoon", "--mirror", server.url])
        assert result.exit_code == 0, result.output
        assert f"raccoon: ready in {home / 'raccoon'}" in result.output
        assert "12 images, 12 annotation files" in result.output and "train: 8 images, val: 4 images" in result.output
        again = CliRunner().invoke(main, ["data", "get", "raccoon", "--mirror", server.url])
        assert again.exit_code == 0 and "already in" in again.output
        assert len(server.requests) == 1  # the second run downloaded nothing
    root = home / "raccoon"
    assert (root / "ImageSets" / "Main" / "val.txt").read_text().split() == \
        sorted((root / "ImageSets" / "Main" / "val.txt").read_text().split(), key=lambda s: int(s.split("-")[1]))
    assert len(list((root / "JPEGImages").iterdir())) == 12 and not (home / ".downloads").exists()

    # The recipe, unchanged, reads the folder `data get` filled (no --set of the root).
    cfg = load_config(REPO / "configs" / "yolov1_raccoon_lite0.py", [
        "data.train.transforms.size=64", "data.val.transforms.size=64", "train.epochs=1", "train.batch_size=4",
        "train.num_workers=0", "eval.num_workers=0", "eval.batch_size=4", "eval.metric=['voc07']"])
    assert cfg["data"]["train"]["root"] == str(root)
    if "efficientnet_lite0" not in registry.available("backbones"):
        cfg["model"]["backbone"] = {"type": "resnet18", "out_indices": [1]}  # the plugin is not installed
    summary = train(cfg, work_dir=tmp_path / "run", device="cpu")
    assert summary["epochs"] == 1 and summary["metrics"] is not None
    log = (tmp_path / "run" / "train.log").read_text()
    assert "data: 8 training images, 4 validation images" in log
    check = CliRunner().invoke(main, ["check-data", str(REPO / "configs" / "yolov1_raccoon_lite0.py")])
    assert check.exit_code == 0 and "check-data: OK (train, val)" in check.output


def test_a_missing_data_set_says_how_to_get_it(tmp_path, monkeypatch):
    from detkit.config import load_config
    from detkit.data.builder import build_dataset

    monkeypatch.setenv("DETKIT_DATA", str(tmp_path / "empty"))
    cfg = load_config(REPO / "configs" / "yolov1_raccoon_lite0.py")
    with pytest.raises(DataError, match=rf"VOC root not found: {tmp_path / 'empty' / 'raccoon'} does not exist; "
                                        r"`detkit data get raccoon` fetches it"):
        build_dataset(cfg, "train")
