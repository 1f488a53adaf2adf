"""Distributed data-parallel helpers (``torch.distributed`` + DDP).

Launching
---------
detkit joins a process group whenever it runs under ``torchrun`` (the ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` variables torchrun sets are detected; ``--launcher torchrun`` insists on them):

* one machine, N GPUs::

      torchrun --nproc-per-node N -m detkit train configs/yolov1_voc.py

* several machines: run the same command on every node; torchrun's rendezvous connects them::

      torchrun --nnodes 2 --nproc-per-node 8 \\
               --rdzv-backend c10d --rdzv-endpoint node0.example.com:29400 --rdzv-id my-job \\
               -m detkit train configs/yolov1_voc.py --work-dir /shared/work_dirs/yolov1_voc

  ``--rdzv-endpoint`` is a host:port every node can reach (any node, usually the first);
  ``--rdzv-id`` is any string shared by the nodes of one job. ``--nnodes 1:4`` allows elastic
  membership. The work dir should be on storage all nodes see if you want to resume on other
  machines; only global rank 0 writes to it. NCCL picks the network interface itself; set
  ``NCCL_SOCKET_IFNAME`` (and ``GLOO_SOCKET_IFNAME`` for CPU runs) when nodes have several.

* CPU only (debugging, CI): the same commands; the ``gloo`` backend is used when no GPU is selected.

What changes under DDP
----------------------
* The backend is ``nccl`` for CUDA devices and ``gloo`` otherwise; each process uses
  ``cuda:LOCAL_RANK``.
* ``train.batch_size`` is per process (the global batch is ``batch_size * world_size``, as in
  mmdetection / detectron2's per-GPU convention), and the training sampler is a
  ``DistributedSampler`` whose ``set_epoch`` is called every epoch.
* ``train.sync_bn=True`` converts BatchNorm layers to SyncBatchNorm.
* Logging, metrics, plots and checkpoints come from rank 0 only.
* Evaluation splits the data set into contiguous shards (:class:`ShardSampler`, no padding, so no
  image is seen twice), and rank 0 gathers every shard and evaluates in data set order: the metrics
  are identical to a single-process evaluation.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from detkit.device import select_device
from detkit.errors import ConfigError

__all__ = [
    "DistInfo",
    "torchrun_env_present",
    "init_distributed",
    "destroy_distributed",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "barrier",
    "gather_to_main",
    "broadcast_from_main",
    "all_true",
    "ShardSampler",
]

logger = logging.getLogger(__name__)

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    owns_group: bool = False  # True when init_distributed() created the process group

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def torchrun_env_present() -> bool:
    return all(v in os.environ for v in _TORCHRUN_VARS)


def init_distributed(launcher: str = "none", device: str | torch.device | None = None,
                     timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group torchrun prepared (if any) and pick this process's device.

    ``launcher="none"`` still auto-detects torchrun; ``"torchrun"`` raises when its variables are
    missing. An already-initialised group (a notebook, a test harness) is reused, not re-created.
    """
    if launcher not in ("none", "torchrun"):
        raise ConfigError(f"--launcher {launcher!r}: use 'none' or 'torchrun'")
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        dev = select_device(device, local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistInfo(rank, world, local_rank, dev, dist.get_backend(), owns_group=False)
    if not torchrun_env_present():
        if launcher == "torchrun":
            missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
            raise ConfigError(
                f"--launcher torchrun, but {', '.join(missing)} are not set: start detkit with "
                "`torchrun --nproc-per-node N -m detkit train ...`"
            )
        return DistInfo(device=select_device(device))
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if world == 1 and launcher != "torchrun":
        return DistInfo(device=select_device(device, local_rank))  # nothing to synchronise
    dev = select_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend, rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=timeout_minutes),
                            **({"device_id": dev} if dev.type == "cuda" else {}))
    logger.debug("joined process group: rank %d/%d, local rank %d, %s, %s", rank, world, local_rank,
                 backend, dev)
    return DistInfo(rank, world, local_rank, dev, backend, owns_group=True)


def destroy_distributed(info: DistInfo) -> None:
    if info.owns_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def gather_to_main(obj) -> list | None:
    """Every rank's ``obj`` as a list on rank 0 (``[obj]`` without DDP); ``None`` on other ranks."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj):
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True only if ``flag`` is true on every rank (so all ranks take the same branch)."""
    if not is_distributed():
        return bool(flag)
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor(1 if flag else 0, device=device, dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


class ShardSampler(Sampler[int]):
    """Contiguous shards of ``range(size)`` for evaluation: rank r gets
    ``[r*size//W, (r+1)*size//W)``. Unlike ``DistributedSampler`` it never pads with repeated
    samples, so gathered results cover every image exactly once."""

    def __init__(self, size: int, rank: int | None = None, world_size: int | None = None):
        self.size = int(size)
        self.rank = get_rank() if rank is None else int(rank)
        self.world_size = get_world_size() if world_size is None else int(world_size)
        self.start = self.size * self.rank // self.world_size
        self.stop = self.size * (self.rank + 1) // self.world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start
