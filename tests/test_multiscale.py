"""Multi-scale training (detkit/data/multiscale.py): sizes are multiples of the divisor inside the
range, repeatable from (seed, epoch, iteration); boxes and metas follow the resize exactly; a run
with it resumes bit for bit."""

from __future__ import annotations

import pytest
import torch
from test_runner import CrashAfterEpoch, tiny, tiny_cfg  # noqa: F401 (fixture)

from detkit.checkpoint import load_checkpoint
from detkit.data.multiscale import MultiScaleLoader, resize_batch
from detkit.engine.runner import train
from detkit.errors import ConfigError
from detkit.structures import boxes_to_original


def batch(size=(64, 96)):
    h, w = size
    images = torch.zeros(2, 3, h, w)
    images[0, :, 16:48, 24:72] = 1.0  # the object of image 0: x 24..72, y 16..48
    meta = {"orig_size": (128, 192), "scale": (0.5, 0.5), "pad": (0.0, 0.0), "input_size": size}
    targets = [{"boxes": torch.tensor([[24.0, 16.0, 72.0, 48.0]]), "labels": torch.tensor([0]), "meta": dict(meta)},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "meta": dict(meta)}]
    return images, targets


def test_resize_moves_boxes_with_the_pixels_and_keeps_the_mapping_to_the_original():
    images, targets = batch()
    out, resized = resize_batch(images, targets, (96, 144))  # 1.5x
    assert out.shape == (2, 3, 96, 144)
    box = resized[0]["boxes"][0]
    assert torch.allclose(box, torch.tensor([36.0, 24.0, 108.0, 72.0]))
    ys, xs = torch.nonzero(out[0, 0] > 0.5, as_tuple=True)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (36, 24, 108, 72)
    meta = resized[0]["meta"]
    assert meta["input_size"] == (96, 144) and meta["scale"] == (0.75, 0.75)
    assert torch.allclose(boxes_to_original(box[None], meta), boxes_to_original(targets[0]["boxes"], targets[0]["meta"]))
    assert targets[0]["boxes"][0, 2] == 72.0  # the input batch is not changed in place


def test_sizes_are_divisor_multiples_in_range_and_repeatable():
    loader = [batch() for _ in range(12)]
    ms = MultiScaleLoader(loader, scale=(0.5, 1.5), divisor=32, interval=2, seed=5)
    ms.set_epoch(3)
    sizes = [ms.size_for(i, (320, 320)) for i in range(12)]
    assert all(h == w and h % 32 == 0 and 160 <= h <= 480 for h, w in sizes)
    assert sizes[0::2] == sizes[1::2]  # interval=2: one size per two batches
    assert len(set(sizes)) > 2
    again = MultiScaleLoader(loader, scale=(0.5, 1.5), divisor=32, interval=2, seed=5)
    again.set_epoch(3)
    assert [again.size_for(i, (320, 320)) for i in range(12)] == sizes
    again.set_epoch(4)
    assert [again.size_for(i, (320, 320)) for i in range(12)] != sizes
    shapes = [tuple(images.shape[-2:]) for images, _ in ms]
    assert shapes == [ms.size_for(i, (64, 96)) for i in range(12)] and len(ms) == 12


@pytest.mark.parametrize("bad", [dict(scale=(1.2, 0.8)), dict(divisor=0), dict(interval=1.5)])
def test_bad_settings_are_config_errors(bad):
    with pytest.raises(ConfigError, match="train.multi_scale"):
        MultiScaleLoader([], **bad)


def test_training_with_multi_scale_resumes_exactly(tiny, tmp_path):
    cfg = tiny_cfg(epochs=2, multi_scale=dict(scale=(0.5, 1.5), divisor=8))
    train(cfg, work_dir=tmp_path / "a", device="cpu")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, work_dir=tmp_path / "b", device="cpu", extra_hooks=[CrashAfterEpoch(1)])
    train(cfg, work_dir=tmp_path / "b", device="cpu", resume="auto")
    a, b = load_checkpoint(tmp_path / "a" / "last.pth"), load_checkpoint(tmp_path / "b" / "last.pth")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    plain = train(tiny_cfg(epochs=2), work_dir=tmp_path / "c", device="cpu")
    c = load_checkpoint(plain["last_checkpoint"])
    assert any(not torch.equal(c["model"][k], a["model"][k]) for k in a["model"])  # the sizes did change things
