"""Data loader: collate and padding, seeding, distributed sampler, bad-sample policies (with workers)."""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detkit.data.base import Annotation, DetectionDataset
from detkit.data.loader import build_dataloader, collate
from detkit.errors import DataError


class FolderDataset(DetectionDataset):
    """A minimal detkit dataset over PNG files: one box per image, label = index % 2."""

    def __init__(self, paths, transforms=None, fail_at=None):
        super().__init__(["even", "odd"], transforms)
        self.paths = [Path(p) for p in paths]
        self.fail_at = fail_at  # index whose loading raises a plain bug (not a DataError)

    def __len__(self):
        return len(self.paths)

    def image_path(self, index):
        return self.paths[index]

    def load_annotation(self, index):
        if index == self.fail_at:
            raise ZeroDivisionError("a bug in the dataset code")
        return Annotation(image_id=index, file_name=self.paths[index].name,
                          boxes=np.array([[2, 3, 10 + index, 12]], np.float32), labels=np.array([index % 2]))


def write_images(folder: Path, sizes, broken=()):
    paths = []
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        path = folder / f"img_{i}.png"
        if i in broken:
            path.write_bytes(b"this is not an image")
        else:
            cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def test_collate_stacks_and_pads_bottom_right():
    a = torch.rand(3, 4, 6)
    b = torch.rand(3, 5, 3)
    meta_a, meta_b = {"scale": (1.0, 1.0), "pad": (0.0, 0.0)}, {"scale": (2.0, 2.0), "pad": (1.0, 0.0)}
    images, targets = collate([(a, {"meta": meta_a}), (b, {"meta": meta_b})])
    assert images.shape == (2, 3, 5, 6) and images.dtype == torch.float32
    assert torch.equal(images[0, :, :4, :6], a) and torch.equal(images[1, :, :5, :3], b)
    assert images[0, :, 4:].abs().sum() == 0 and images[1, :, :, 3:].abs().sum() == 0
    assert targets[0]["meta"] == meta_a and targets[1]["meta"] == meta_b  # padding does not change meta
    same, _ = collate([(a, {}), (a.clone(), {})])
    assert torch.equal(same, torch.stack([a, a]))
    with pytest.raises(ValueError, match="same C"):
        collate([(a, {}), (torch.rand(1, 4, 6), {})])


def test_loader_batches_have_the_contract_types(tmp_path):
    ds = FolderDataset(write_images(tmp_path, [(20, 30), (24, 16), (20, 30)]))
    loader = build_dataloader(ds, batch_size=2, shuffle=False)
    batches = list(loader)
    assert [len(t) for _, t in batches] == [2, 1]
    images, targets = batches[0]
    assert images.shape == (2, 3, 24, 30) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    assert targets[0]["boxes"].dtype == torch.float32 and targets[0]["labels"].dtype == torch.int64
    assert targets[1]["labels"].tolist() == [1] and targets[1]["image_id"] == 1
    assert targets[1]["meta"]["orig_size"] == (24, 16)
    # the image content arrives unchanged (top-left), the rest is zero padding
    ref = cv2.cvtColor(cv2.imread(str(ds.paths[1])), cv2.COLOR_BGR2RGB)
    assert torch.allclose(images[1, :, :24, :16], torch.from_numpy(ref).permute(2, 0, 1).float() / 255)
    assert images[1, :, :, 16:].abs().sum() == 0
    # defaults: pinning only with CUDA, persistent workers only with workers
    assert loader.pin_memory == torch.cuda.is_available()
    assert loader.persistent_workers is False
    assert loader.dataset.classes == ("even", "odd")  # the guard forwards dataset attributes


def test_skip_policy_in_workers_counts_and_logs_the_path(tmp_path, caplog):
    paths = write_images(tmp_path, [(16, 16)] * 6, broken={3})
    ds = FolderDataset(paths)
    loader = build_dataloader(ds, batch_size=2, shuffle=False, num_workers=2, bad_sample="skip")
    assert loader.persistent_workers is True
    with caplog.at_level(logging.WARNING, logger="detkit.data.loader"):
        seen = [t["image_id"] for _, batch in loader for t in batch]
    assert seen == [0, 1, 2, 4, 5]
    assert loader.num_skipped == 1 and loader.total_skipped == 1
    assert loader.skipped[0].index == 3 and loader.skipped[0].path == str(paths[3])
    assert str(paths[3]) in caplog.text and "sample 3" in caplog.text
    # a second epoch counts afresh; the running total keeps growing
    assert sum(len(t) for _, t in loader) == 5
    assert loader.num_skipped == 1 and loader.total_skipped == 2


def test_raise_policy_gives_a_data_error_naming_the_file(tmp_path):
    paths = write_images(tmp_path, [(16, 16)] * 4, broken={2})
    children_before = set(multiprocessing.active_children())
    loader = build_dataloader(FolderDataset(paths), batch_size=2, shuffle=False, num_workers=2)
    with pytest.raises(DataError) as info:
        list(loader)
    message = str(info.value)
    assert str(paths[2]) in message and "sample 2" in message
    assert "Traceback" not in message  # one clear line, not the worker's traceback
    # the workers are shut down before the error propagates (not left to the garbage collector,
    # which would stall for seconds while `info` keeps this frame and the loader alive)
    assert set(multiprocessing.active_children()) <= children_before


def test_a_bug_in_a_worker_keeps_its_traceback_as_a_note(tmp_path):
    paths = write_images(tmp_path, [(16, 16)] * 4)
    loader = build_dataloader(FolderDataset(paths, fail_at=1), batch_size=4, shuffle=False, num_workers=2)
    with pytest.raises(DataError, match=r"sample 1 .*img_1\.png.*ZeroDivisionError") as info:
        list(loader)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "Traceback" in notes and "load_annotation" in notes


def test_fully_bad_batch_is_dropped_and_counted(tmp_path, caplog):
    paths = write_images(tmp_path, [(16, 16)] * 3, broken={1})
    loader = build_dataloader(FolderDataset(paths), batch_size=1, shuffle=False, bad_sample="skip")
    with caplog.at_level(logging.WARNING, logger="detkit.data.loader"):
        batches = list(loader)
    assert [t[0]["image_id"] for _, t in batches] == [0, 2]
    assert loader.num_skipped == 1 and loader.num_skipped_batches == 1
    assert "dropped a batch" in caplog.text


def _augmented_dataset(tmp_path, n=4):
    # The same image n times: any difference between samples comes from the augmentation.
    path = write_images(tmp_path, [(40, 48)])[0]
    return FolderDataset([path] * n, transforms=dict(size=32, preset="yolov1"))


def test_workers_get_different_augmentation_streams_and_runs_repeat(tmp_path):
    ds = _augmented_dataset(tmp_path)

    def run(seed, workers):
        loader = build_dataloader(ds, batch_size=1, shuffle=False, num_workers=workers, seed=seed,
                                  persistent_workers=False)
        return [images[0] for images, _ in loader]

    a = run(0, 2)
    # sample 0 comes from worker 0 and sample 1 from worker 1: without per-worker reseeding both
    # workers would hold identical copies of the augmentation state and produce the same image
    assert not torch.equal(a[0], a[1])
    b = run(0, 2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = run(1, 2)
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    # in the main process too
    d, e = run(5, 0), run(5, 0)
    assert all(torch.equal(x, y) for x, y in zip(d, e))
    assert not torch.equal(d[0], d[1])


def test_set_epoch_makes_each_epoch_reproducible(tmp_path):
    paths = write_images(tmp_path, [(8, 8)] * 10)
    ds = FolderDataset(paths)

    def order(loader):
        return [t["image_id"] for _, batch in loader for t in batch]

    one = build_dataloader(ds, batch_size=3, shuffle=True, seed=4)
    two = build_dataloader(ds, batch_size=3, shuffle=True, seed=4)
    one.set_epoch(3)
    two.set_epoch(3)
    assert order(one) == order(two)
    assert sorted(order(one)) == list(range(10))
    two.set_epoch(4)
    assert order(two) != order(one)


def test_distributed_sampler(tmp_path):
    import torch.distributed as dist

    paths = write_images(tmp_path, [(8, 8)] * 7)
    ds = FolderDataset(paths)
    with pytest.raises(RuntimeError, match="process group"):
        build_dataloader(ds, batch_size=2, shuffle=True, distributed=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = build_dataloader(ds, batch_size=2, shuffle=True, distributed=True, seed=1)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        loader.set_epoch(2)
        assert loader.sampler.epoch == 2 and loader.sampler.seed == 1
        ids = [t["image_id"] for _, batch in loader for t in batch]
        # DistributedSampler's own order for epoch 2 (its documented seed + epoch generator)
        g = torch.Generator()
        g.manual_seed(1 + 2)
        assert ids == torch.randperm(7, generator=g).tolist()
    finally:
        dist.destroy_process_group()


def test_unknown_bad_sample_policy_is_a_config_error(tmp_path):
    from detkit.errors import ConfigError

    ds = FolderDataset(write_images(tmp_path, [(8, 8)]))
    with pytest.raises(ConfigError, match="raise, skip"):
        build_dataloader(ds, batch_size=1, shuffle=False, bad_sample="ignore")
