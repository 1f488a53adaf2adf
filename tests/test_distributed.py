"""Distributed training and evaluation with 2 gloo processes on the CPU.

The processes are started with ``torch.multiprocessing.spawn`` and given the environment torchrun
would set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so the runner's torchrun
auto-detection is what joins them into a process group.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
from test_trainer import TinyDataset, TinyDet

from detkit import registry
from detkit.checkpoint import load_checkpoint, save_checkpoint
from detkit.engine.dist import ShardSampler, init_distributed
from detkit.engine.hooks import Hook
from detkit.errors import ConfigError

WORLD = 2
CLASSES = ["a", "b"]


class RectFinder(torch.nn.Module):
    """Finds TinyDataset's bright rectangle (a true positive) and adds a shifted box of the same
    class (a false positive) and a box of the other class; the scores vary per image so true and
    false positives interleave in the ranking and the AP is neither 0 nor 1."""

    def __init__(self, num_classes, class_names=None):
        super().__init__()
        self.num_classes, self.class_names = num_classes, class_names
        self.gain = torch.nn.Parameter(torch.ones(()))

    def forward(self, images, targets=None, metas=None):
        from detkit.structures import boxes_to_original

        out = []
        for i, image in enumerate(images):
            mask = image.max(0).values > 0.8
            ys, xs = torch.nonzero(mask, as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            label = int(image[:, mask].sum(1).argmax())
            shifted = box + torch.tensor([0.6, 0.0, 0.6, 0.0]) * (box[2] - box[0])
            key = float(image.sum()) * 0.37
            s_true, s_false = 0.5 + 0.4 * (key % 1.0), 0.5 + 0.4 * ((key * 1.7) % 1.0)
            boxes = torch.stack([box, shifted, box])
            if metas is not None:
                boxes = boxes_to_original(boxes, metas[i])
            out.append({"boxes": boxes, "scores": torch.tensor([s_true, s_false, 0.2]) * self.gain.detach(),
                        "labels": torch.tensor([label, label, 1 - label])})
        return out


def cfg_for(model: str = "tiny_test_det"):
    return {
        "model": {"type": model} if model != "tiny_test_det" else {"type": model, "dropout": 0.0},
        "data": {"classes": CLASSES,
                 "train": {"type": "tiny_test_ds", "num": 8, "augment": True},
                 # 7 images: shards of 3 and 4, so an uneven split is exercised
                 "val": {"type": "tiny_test_ds", "num": 7, "id_offset": 300}},
        "train": dict(epochs=1, batch_size=2, num_workers=0, seed=0, log_interval=1,
                      optimizer=dict(type="sgd", lr=0.05, momentum=0.9), sync_bn=True),
        "eval": dict(metric=["voc07", "voc", "coco"], batch_size=2, num_workers=0, save_best="voc07_ap50"),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SaveWeights(Hook):
    """Writes this rank's final weights, to compare the ranks after DDP training."""

    priority = 100

    def __init__(self, path):
        self.path = path

    def after_train(self, trainer):
        from detkit.checkpoint import unwrap_model

        torch.save(unwrap_model(trainer.model).state_dict(), self.path)


def _worker(rank: int, ports: list, out: str, ckpt: str) -> None:
    # What torchrun exports for each process.
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from detkit.engine.runner import train
    from detkit.evaluation.run import evaluate

    with registry.register("detectors", "tiny_test_det", TinyDet), \
            registry.register("detectors", "rect_finder_test", RectFinder), \
            registry.register("datasets", "tiny_test_ds", TinyDataset):
        os.environ["MASTER_PORT"] = str(ports[0])
        metrics = evaluate(cfg_for("rect_finder_test"), ckpt, metric="all", device="cpu",
                           results_out=os.path.join(out, "results_ddp.json"))
        if rank == 0:
            with open(os.path.join(out, "metrics_ddp.json"), "w") as f:
                json.dump(metrics, f)
        else:
            assert metrics is None
        os.environ["MASTER_PORT"] = str(ports[1])
        summary = train(cfg_for(), work_dir=os.path.join(out, "run"), device="cpu",
                        extra_hooks=[SaveWeights(os.path.join(out, f"rank{rank}.pt"))])
        with open(os.path.join(out, f"summary{rank}.json"), "w") as f:
            json.dump({"best_metric": summary["best_metric"], "epochs": summary["epochs"]}, f)


def test_shard_sampler_covers_every_index_once():
    for size in range(0, 12):
        for world in range(1, 5):
            shards = [list(ShardSampler(size, rank=r, world_size=world)) for r in range(world)]
            assert sum(shards, []) == list(range(size))
            assert [len(s) for s in shards] == [len(ShardSampler(size, r, world)) for r in range(world)]


def test_launcher_torchrun_without_its_environment_is_an_error(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="--launcher torchrun, but RANK, WORLD_SIZE"):
        init_distributed("torchrun", "cpu")
    info = init_distributed("none", "cpu")
    assert not info.distributed and info.rank == 0


def test_two_gloo_processes_evaluate_like_one_and_train_in_sync(tmp_path):
    from detkit.evaluation.run import evaluate

    ckpt = save_checkpoint(tmp_path / "model.pth", {"model": RectFinder(2).state_dict(), "class_names": CLASSES})

    torch.multiprocessing.spawn(_worker, args=([free_port(), free_port()], str(tmp_path), str(ckpt)),
                                nprocs=WORLD, join=True)

    # Evaluation: rank 0's gathered metrics equal a single process's, exactly.
    with registry.register("detectors", "rect_finder_test", RectFinder), \
            registry.register("datasets", "tiny_test_ds", TinyDataset):
        single = evaluate(cfg_for("rect_finder_test"), ckpt, metric="all", device="cpu",
                          results_out=tmp_path / "results_single.json")
    single = json.loads(json.dumps(single))  # same NaN/float round trip as the file
    ddp = json.loads((tmp_path / "metrics_ddp.json").read_text())
    assert ddp["num_images"] == 7
    for key in ("voc07_ap50", "voc_ap50", "coco_ap", "coco_ap50", "coco_ap75", "per_class"):
        assert ddp[key] == single[key], key
    for key in ("voc07_ap50", "coco_ap50"):
        assert 0.2 < single[key] < 0.95, key  # non-trivial values, so equality means something
    results_ddp = json.loads((tmp_path / "results_ddp.json").read_text())
    assert results_ddp == json.loads((tmp_path / "results_single.json").read_text())
    assert sorted({r["image_id"] for r in results_ddp}) == list(range(300, 307))

    # Training: identical weights on both ranks, written once by rank 0.
    # (BatchNorm running statistics are each rank's own after the last step: DDP broadcasts rank
    # 0's buffers at the start of every forward, and SyncBatchNorm needs GPUs.)
    w0, w1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    params = [k for k in w0 if "running_" not in k and "num_batches" not in k]
    assert len(params) == 6
    for key in params:
        assert torch.equal(w0[key], w1[key]), key
    torch.manual_seed(0)  # the runner's seed: the same initial weights
    initial = TinyDet(len(CLASSES), dropout=0.0).state_dict()
    assert not torch.equal(w0["head.weight"], initial["head.weight"])  # it did train
    run = tmp_path / "run"
    last = load_checkpoint(run / "last.pth")
    for key in w0:
        assert torch.equal(last["model"][key], w0[key]), key
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # 8 images, 2 ranks x batch 2: 2 iterations per epoch, logged once (rank 0 only)
    assert [(r["type"], r["iter"]) for r in records] == [("train", 1), ("train", 2), ("epoch", 2)]
    assert records[0]["img_per_s"] > 0
    log = (run / "train.log").read_text()
    assert "2 processes (gloo)" in log and "sync_bn=True is ignored on cpu" in log
    assert log.count("training finished") == 1
    s0, s1 = (json.loads((tmp_path / f"summary{r}.json").read_text()) for r in range(WORLD))
    assert s0 == s1 and s0["epochs"] == 1  # the broadcast metrics keep both ranks' state equal


def test_loader_without_set_epoch_gets_its_generator_reseeded_per_epoch():
    from detkit.seeding import set_loader_epoch

    loader = torch.utils.data.DataLoader(list(range(20)), batch_size=20, shuffle=True,
                                         generator=torch.Generator())

    def order(epoch, seed=0):
        set_loader_epoch(loader, epoch, seed)
        torch.manual_seed(123)  # whatever the global RNG holds must not matter
        return next(iter(loader)).tolist()

    assert order(1) == order(1) and order(1) != order(2)
    assert order(1, seed=0) != order(1, seed=1)
    assert sorted(order(3)) == list(range(20))
