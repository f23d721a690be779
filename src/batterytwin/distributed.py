"""The MPI world, and its bridge to ``torch.distributed``.

Every batterytwin process is started by ``srun`` (Slurm) or ``mpirun``/``mpiexec`` (local), or
plainly (world size 1: the same code path, not a separate one). mpi4py gives the rank, the size and
the node-local rank; rank 0 picks the rendezvous address and port for ``torch.distributed`` and
broadcasts them, so no ``MASTER_ADDR`` has to be exported by hand. One GPU per local rank, NCCL on
GPU, gloo on CPU.

Set ``BATTERYTWIN_NO_MPI=1`` to skip MPI entirely (world size 1).

Example::

    world = get_world()
    for i in world.my_items(n_shards):      # data-parallel stages
        ...
    device = init_torch_distributed(world)  # training stages (DDP)
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Sequence

log = logging.getLogger(__name__)


@dataclass
class World:
    """This process's place among the launched ranks.

    Attributes:
        rank, size: position in and size of ``MPI.COMM_WORLD`` (0 and 1 without MPI).
        local_rank, local_size: position among the ranks on this node (selects the GPU).
        comm: the mpi4py communicator, or ``None`` for a single process without MPI.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    comm: Any = None

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.comm is not None and self.size > 1:
            self.comm.Barrier()

    def bcast(self, obj: Any, root: int = 0) -> Any:
        if self.comm is None or self.size == 1:
            return obj
        return self.comm.bcast(obj, root=root)

    def allgather(self, obj: Any) -> list:
        if self.comm is None or self.size == 1:
            return [obj]
        return self.comm.allgather(obj)

    def allreduce_sum(self, value: float) -> float:
        if self.comm is None or self.size == 1:
            return value
        return self.comm.allreduce(value)

    def my_items(self, n_items: int) -> range:
        """Indices ``0..n_items-1`` owned by this rank (round robin: neighbours cost alike)."""
        return range(self.rank, n_items, self.size)

    def abort(self, code: int = 1) -> None:
        """Stop every rank: one failed rank must not leave the others waiting in a barrier."""
        if self.comm is not None and self.size > 1:
            self.comm.Abort(code)


@functools.lru_cache(maxsize=None)
def get_world() -> World:
    """The MPI world of this process (cached); world size 1 when MPI is absent or disabled."""
    if os.environ.get("BATTERYTWIN_NO_MPI", "") not in ("", "0"):
        return World()
    try:
        from mpi4py import MPI
    except ImportError:  # a plain install without mpi4py: single process
        return World()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    world = World(rank, size, node.Get_rank(), node.Get_size(), comm)
    node.Free()
    return world


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def select_device(world: World, device: str = "auto"):
    """The torch device for this rank: one GPU per local rank when CUDA is there, else CPU.

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """
    import torch

    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        from .errors import InputError

        raise InputError("device: 'cuda' requested but no CUDA device is visible to this rank")
    index = world.local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_torch_distributed(world: World | None = None, device: str = "auto", timeout_s: int = 600):
    """Start ``torch.distributed`` over the MPI world and return this rank's device.

    Rank 0 chooses the rendezvous (``MASTER_ADDR``/``MASTER_PORT`` from the environment if set,
    else its host name and a free port) and broadcasts it over MPI. Backend: NCCL on GPU, gloo on
    CPU. A world of size 1 starts a one-rank process group, so DDP code has a single path.
    """
    import datetime

    import torch.distributed as dist

    world = world or get_world()
    dev = select_device(world, device)
    if dist.is_initialized():
        return dev
    if world.is_root:
        addr = os.environ.get("MASTER_ADDR") or (socket.gethostname() if world.size > 1 else "127.0.0.1")
        port = int(os.environ.get("MASTER_PORT") or _free_port())
        rendezvous = (addr, port)
    else:
        rendezvous = None
    addr, port = world.bcast(rendezvous)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    log.info("torch.distributed: %s rank %d/%d via tcp://%s:%d", backend, world.rank, world.size, addr, port)
    dist.init_process_group(
        backend,
        init_method=f"tcp://{addr}:{port}",
        rank=world.rank,
        world_size=world.size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return dev


def shutdown_torch_distributed() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def split_evenly(items: Sequence, world: World) -> Sequence:
    """Contiguous block of ``items`` for this rank (sizes differ by at most one)."""
    n, k = len(items), world.size
    start = world.rank * (n // k) + min(world.rank, n % k)
    stop = start + n // k + (1 if world.rank < n % k else 0)
    return items[start:stop]
