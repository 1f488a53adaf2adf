"""detkit.seeding: the one seed mixer keeps the streams of earlier detkit versions (so a run started
before the seeding code moved resumes bit for bit), and seeding covers torch, numpy and python."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from detkit.seeding import derive_seed, seed_everything, seed_host, set_loader_epoch


@pytest.mark.parametrize("parts", [(0, 0, 0), (3, 1, 0), (2**31 - 5, 7, 1), (2**40 + 3, 2, 3)])
def test_derive_seed_keeps_the_seeds_of_earlier_versions(parts):
    # What the trainer (32 bits, via engine.dist.epoch_seed) and the data loader (63 bits) computed
    # before both went through derive_seed, written with numpy's SeedSequence API directly.
    seed, epoch, rank = parts
    old_epoch_seed = int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, rank]).generate_state(1)[0])
    old_loader_seed = int(np.random.SeedSequence([p % 2**63 for p in parts]).generate_state(1, np.uint64)[0] >> 1)
    assert derive_seed(*parts) == old_epoch_seed
    assert derive_seed(*parts, bits=63) == old_loader_seed


def test_derive_seed_separates_epochs_and_ranks():
    seeds = {derive_seed(0, epoch, rank, bits=bits) for epoch in range(20) for rank in range(4) for bits in (32, 63)}
    assert len(seeds) == 160
    assert all(0 <= derive_seed(5, e) < 2**32 and 0 <= derive_seed(5, e, bits=63) < 2**63 for e in range(20))
    with pytest.raises(ValueError, match="32 or 63"):
        derive_seed(1, bits=64)


def test_seed_everything_reproduces_all_three_generators():
    def draw():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]

    seed_everything(2**33 + 1)  # larger than numpy's global seed takes: reduced, not refused
    first = draw()
    seed_everything(2**33 + 1)
    assert draw() == first
    seed_host(7)
    host = np.random.rand(2).tolist(), random.random()
    seed_everything(7)
    assert (np.random.rand(2).tolist(), random.random()) == host


def test_set_loader_epoch_reseeds_a_plain_shuffling_loader():
    data = list(range(20))

    def order(epoch, loader):
        set_loader_epoch(loader, epoch, seed=3)
        return [int(x) for batch in loader for x in batch]

    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator())
    epoch1 = order(1, loader)
    order(0, loader)
    assert order(1, loader) == epoch1 != order(2, loader)  # epoch 1's order does not depend on what ran before
