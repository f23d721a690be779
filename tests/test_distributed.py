"""MPI world -> torch.distributed bridge."""

from __future__ import annotations

import re
import sys

import pytest

from batterytwin.distributed import World, get_world, split_evenly

from .conftest import mpiexec

BRIDGE = """
import torch, torch.distributed as dist
from batterytwin.distributed import get_world, init_torch_distributed, shutdown_torch_distributed
w = get_world()
dev = init_torch_distributed(w)
t = torch.tensor([float(w.rank + 1)])
dist.all_reduce(t)
print(f"rank={w.rank} size={w.size} local={w.local_rank} backend={dist.get_backend()} sum={t.item()} dev={dev}")
shutdown_torch_distributed()
"""


def test_single_process_is_world_of_one():
    w = get_world()
    assert (w.rank, w.size) == (0, 1)
    assert list(w.my_items(5)) == [0, 1, 2, 3, 4]
    assert w.bcast("x") == "x" and w.allgather(3) == [3]


def test_work_partitions_cover_items_once():
    owned = sorted(i for r in range(3) for i in World(rank=r, size=3).my_items(10))
    assert owned == list(range(10))
    blocks = [list(split_evenly(list(range(10)), World(rank=r, size=3))) for r in range(3)]
    assert blocks == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


@pytest.mark.slow
@pytest.mark.mpi
def test_two_mpi_ranks_form_a_gloo_process_group():
    out = mpiexec(2, sys.executable, "-c", BRIDGE, timeout=180).stdout
    # the two ranks share stdout: their lines may interleave, so match records, not lines
    lines = sorted(re.findall(r"rank=\d size=\d local=\d backend=\w+ sum=[\d.]+ dev=cpu", out))
    assert lines == [
        "rank=0 size=2 local=0 backend=gloo sum=3.0 dev=cpu",
        "rank=1 size=2 local=1 backend=gloo sum=3.0 dev=cpu",
    ]
