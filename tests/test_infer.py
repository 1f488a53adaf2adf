"""`detkit infer` and the Predictor: sources, drawing, outputs, video streaming, bad inputs.

The detector here is a stand-in registered in-process that always predicts known boxes (in input
pixels), so every output can be checked exactly: mapping back to original pixels, drawing where the
boxes are, COCO JSON, txt lines, video frame count and fps.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from detkit import registry
from detkit.cli import main
from detkit.errors import ConfigError, DataError
from detkit.draw import class_colour, draw_detections
from detkit.inference.run import infer, parse_class_filter, resolve_out_dir
from detkit.inference.sources import ImageSource, open_source
from detkit.structures import boxes_to_original

INPUT = 64  # the stand-in config resizes every image to 64x64


class FixedBoxDetector(torch.nn.Module):
    """Predicts two boxes per image at fixed places of the *input* tensor (classes 0 and 1)."""

    def __init__(self, num_classes: int, class_names=None, gain: float = 1.0):
        super().__init__()
        self.num_classes, self.class_names = num_classes, class_names
        self.gain = torch.nn.Parameter(torch.tensor(gain))  # something for the checkpoint to hold

    def forward(self, images, targets=None, metas=None):
        n, _, h, w = images.shape
        out = []
        for i in range(n):
            boxes = torch.tensor([[w * 0.25, h * 0.25, w * 0.75, h * 0.75], [0.0, 0.0, w * 0.2, h * 0.2]])
            if metas is not None:
                boxes = boxes_to_original(boxes, metas[i])
            scores = torch.tensor([0.9, 0.4]) * self.gain.detach()
            out.append({"boxes": boxes, "scores": scores, "labels": torch.tensor([0, 1])})
        return out


@pytest.fixture
def setup(tmp_path):
    with registry.register("detectors", "fixed_box_test", FixedBoxDetector):
        cfg = {
            "model": {"type": "fixed_box_test", "gain": 1.0},
            "data": {"classes": ["cat", "dog"],
                     "val": {"type": "voc", "root": "unused", "transforms": {"size": INPUT}}},
        }
        ckpt = tmp_path / "model.pth"
        model = FixedBoxDetector(2)
        torch.save({"format": "detkit-checkpoint", "version": 1, "model": model.state_dict(),
                    "class_names": ["cat", "dog"]}, ckpt)
        yield cfg, ckpt


def write_image(path: Path, h=120, w=200, value=90):
    img = np.full((h, w, 3), value, np.uint8)
    ok, buf = cv2.imencode(path.suffix, img)
    path.write_bytes(buf.tobytes())
    return path


def expected_box(h, w):
    return [w * 0.25, h * 0.25, w * 0.75, h * 0.75]


def test_predictor_maps_boxes_to_original_pixels(setup, tmp_path):
    from detkit import Predictor

    cfg, ckpt = setup
    predictor = Predictor(cfg, ckpt, device="cpu")
    img_a = np.zeros((120, 200, 3), np.uint8)
    path_b = write_image(tmp_path / "b.png", h=50, w=80)
    dets = predictor.predict([img_a, path_b])
    assert len(dets) == 2
    torch.testing.assert_close(dets[0].boxes[0], torch.tensor(expected_box(120, 200)), atol=1e-3, rtol=0)
    torch.testing.assert_close(dets[1].boxes[0], torch.tensor(expected_box(50, 80)), atol=1e-3, rtol=0)
    assert predictor.predict(img_a)[0].labels.tolist() == [0, 1]  # a single image works too
    with pytest.raises(ValueError, match="uint8 RGB arrays"):
        predictor.predict([np.zeros((10, 10), np.float32)])


def test_conf_override_reaches_the_postprocessor_config(setup):
    from detkit.deploy.backends import postprocessor_overrides as _postprocessor_overrides

    cfg = {"model": {"type": "x", "postprocessor": {"type": "batched_nms", "score_threshold": 0.05}}}
    out = _postprocessor_overrides(cfg, 0.3, 0.45, 10)
    assert out["model"]["postprocessor"] == {"type": "batched_nms", "score_threshold": 0.3, "iou_threshold": 0.45,
                                             "max_per_image": 10}
    assert cfg["model"]["postprocessor"]["score_threshold"] == 0.05  # not mutated
    assert _postprocessor_overrides(setup[0], 0.3, None, None) == setup[0]  # conf is filtered by Predictor
    with pytest.raises(ConfigError, match="has none"):
        _postprocessor_overrides(setup[0], None, 0.5, None)


def test_conf_filters_final_detections_without_a_postprocessor(setup):
    from detkit import Predictor

    cfg, ckpt = setup  # the stand-in scores its two boxes 0.9 and 0.4 and has no postprocessor
    image = np.zeros((40, 60, 3), np.uint8)
    assert Predictor(cfg, ckpt, device="cpu").predict(image)[0].scores.tolist() == pytest.approx([0.9, 0.4])
    kept = Predictor(cfg, ckpt, device="cpu", conf=0.5).predict(image)[0]
    assert kept.scores.tolist() == pytest.approx([0.9]) and kept.labels.tolist() == [0]
    assert kept.boxes.shape == (1, 4)


def test_folder_outputs_json_txt_and_drawn_images(setup, tmp_path):
    cfg, ckpt = setup
    folder = tmp_path / "imgs"
    folder.mkdir()
    write_image(folder / "a.jpg", h=120, w=200)
    write_image(folder / "b b.png", h=60, w=90)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    res = infer(cfg, ckpt, str(folder), out_dir=str(tmp_path / "out"), save_json=True, save_txt=True,
                batch_size=2, device="cpu")
    assert res.images == 2 and res.detections == 4
    skipped = {Path(p).name for p, _ in res.skipped}
    assert skipped == {"notes.txt", "broken.jpg"}

    preds = json.loads((res.out_dir / "predictions.json").read_text())
    by_file = {}
    for p in preds:
        by_file.setdefault(p["file_name"], []).append(p)
    x1, y1, x2, y2 = expected_box(120, 200)
    top = max(by_file["a.jpg"], key=lambda p: p["score"])
    assert top["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.02)
    assert top["category_id"] == 1 and top["category_name"] == "cat"

    lines = (res.out_dir / "labels" / "b b.txt").read_text().splitlines()
    cls, cx, cy, w, h, score = lines[0].split()
    assert (int(cls), float(cx), float(cy), float(w), float(h)) == (0, pytest.approx(0.5), pytest.approx(0.5),
                                                                   pytest.approx(0.5), pytest.approx(0.5))

    drawn = cv2.imread(str(res.out_dir / "a.jpg"))[:, :, ::-1]
    colour = np.array(class_colour(0))
    # The box edge of class 0 is drawn in its colour (JPEG: allow compression error); the centre is not.
    left_edge = drawn[int(y1) + 20: int(y2) - 5, int(round(x1))]
    assert np.abs(left_edge.astype(int) - colour).max(axis=1).mean() < 40
    assert np.abs(drawn[60, 100].astype(int) - 90).max() < 10


def test_class_filter_and_never_overwrite(setup, tmp_path):
    cfg, ckpt = setup
    img = write_image(tmp_path / "one.png")
    first = infer(cfg, ckpt, str(img), out_dir=str(tmp_path / "exp"), classes="dog", save_json=True)
    second = infer(cfg, ckpt, str(img), out_dir=str(tmp_path / "exp"), classes="1", save_json=True)
    assert first.out_dir.name == "exp" and second.out_dir.name == "exp2"
    preds = json.loads((second.out_dir / "predictions.json").read_text())
    assert [p["category_name"] for p in preds] == ["dog"]
    reused = infer(cfg, ckpt, str(img), out_dir=str(tmp_path / "exp"), exist_ok=True)
    assert reused.out_dir == first.out_dir
    with pytest.raises(ConfigError, match="unknown class 'bird'; classes are: cat, dog"):
        parse_class_filter("bird", ["cat", "dog"])


def test_resolve_out_dir_increments(tmp_path):
    base = tmp_path / "runs" / "exp"
    assert resolve_out_dir(str(base), False) == base
    assert resolve_out_dir(str(base), False).name == "exp2"
    assert resolve_out_dir(str(base), False).name == "exp3"
    assert resolve_out_dir(str(base), True) == base


def make_video(path: Path, frames=12, fps=10.0, size=(96, 64)):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 20 * i % 255, np.uint8))
    writer.release()
    return path


def test_video_is_streamed_with_input_fps_size_and_frame_count(setup, tmp_path):
    cfg, ckpt = setup
    video = make_video(tmp_path / "clip.avi", frames=12, fps=10.0)
    res = infer(cfg, ckpt, str(video), out_dir=str(tmp_path / "out"), batch_size=5, save_json=True)
    assert res.frames == 12 and res.error is None
    out_video = res.out_dir / "clip.avi"
    cap = cv2.VideoCapture(str(out_video))
    assert cap.isOpened()
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0, abs=0.01)
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (96, 64)
    ok, frame = cap.read()
    cap.release()
    assert ok
    x1 = int(round(96 * 0.25))
    colour = np.array(class_colour(0))[::-1]  # BGR
    assert np.abs(frame[20:44, x1].astype(int) - colour).max(axis=1).mean() < 60
    lines = (res.out_dir / "clip.jsonl").read_text().splitlines()
    assert [json.loads(line)["frame"] for line in lines] == list(range(12))


def test_bad_sources_fail_clearly(setup, tmp_path):
    cfg, ckpt = setup
    with pytest.raises(DataError, match="no such file or folder"):
        open_source(str(tmp_path / "missing.jpg"))
    bad_video = tmp_path / "bad.mp4"
    bad_video.write_bytes(b"this is not a video")
    with pytest.raises(DataError, match="bad.mp4: cannot be opened"):
        open_source(str(bad_video))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no image files"):
        open_source(str(empty))
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        open_source(str(tmp_path / "x.txt"))
    # The CLI prints one line and exits 2, and creates no output folder for a missing source.
    cfg_file = tmp_path / "cfg.py"
    cfg_file.write_text(f"model = {cfg['model']!r}\ndata = {cfg['data']!r}\n")
    with registry.register("detectors", "fixed_box_test", FixedBoxDetector, override=True):
        result = CliRunner().invoke(main, ["infer", str(cfg_file), str(ckpt), str(tmp_path / "nope"),
                                           "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no such file or folder" in result.output
    assert not (tmp_path / "o").exists()


def test_glob_source(tmp_path):
    for name in ("a.png", "b.png", "c.txt"):
        (write_image(tmp_path / name) if name.endswith(".png") else (tmp_path / name).write_text("x"))
    src = open_source(str(tmp_path / "*"))
    assert isinstance(src, ImageSource)
    assert [p.name for p in src.paths] == ["a.png", "b.png"]
    assert [Path(p).name for p, _ in src.skipped] == ["c.txt"]


def test_draw_puts_boxes_where_detections_are():
    image = np.zeros((100, 150, 3), np.uint8)
    det = {"boxes": np.array([[10, 20, 60, 80]], np.float32), "scores": np.array([0.5]), "labels": np.array([3])}
    out = draw_detections(image, det, ["a", "b", "c", "d"], thickness=2)
    colour = np.array(class_colour(3))
    assert (out[40:75, 10] == colour).all()  # left edge
    assert (out[40:75, 60] == colour).all()  # right edge
    assert (out[50, 30] == 0).all()  # inside untouched
    assert image.max() == 0  # input not modified
    assert class_colour(3) == class_colour(3) and class_colour(3) != class_colour(4)


def test_cli_conf_default_and_override(setup, tmp_path):
    """`detkit infer` keeps scores >= 0.25 by default (ultralytics' predict default); --conf changes it."""
    cfg, ckpt = setup
    cfg_file = tmp_path / "cfg.py"
    cfg_file.write_text(f"model = {cfg['model']!r}\ndata = {cfg['data']!r}\n")
    image = write_image(tmp_path / "a.png", h=40, w=60)
    scores = {}
    with registry.register("detectors", "fixed_box_test", FixedBoxDetector, override=True):
        for name, extra in (("default", []), ("high", ["--conf", "0.5"])):
            out = tmp_path / name
            result = CliRunner().invoke(main, ["infer", str(cfg_file), str(ckpt), str(image), "--out", str(out),
                                               "--save-json", "--no-save-vis", "--device", "cpu", *extra])
            assert result.exit_code == 0, result.output
            preds = json.loads((out / "predictions.json").read_text())
            scores[name] = sorted(round(p["score"], 3) for p in preds)
    assert scores == {"default": [0.4, 0.9], "high": [0.9]}
