"""Dynamic load balancing of sweep conditions over MPI ranks.

Ageing runs differ a lot in cost (C-rate, early failure), so a static split leaves ranks idle.
Rank 0 hands out items on request from a light thread (polling ``Iprobe`` every few ms, so the
core stays free for its own simulations) while its main thread takes items from the same queue;
every rank, rank 0 included, computes. With one rank this is a plain loop.

Example::

    for i in dynamic_items(world, todo):   # every rank
        run(i)
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Iterator, Sequence

from ..distributed import World

_REQUEST, _REPLY = 7301, 7302
_POLL_S = 0.005


def dynamic_items(world: World, items: Sequence[int]) -> Iterator[int]:
    """Yield the items this rank should process; together the ranks process each item once.

    Args:
        world: the MPI world; every rank must call this with the same ``items``.
        items: work items in the order they should be started (longest first is best).
    """
    if world.size == 1 or world.comm is None:
        yield from items
        return
    if world.rank == 0:
        yield from _serve_and_work(world, items)
    else:
        comm = world.comm
        while True:
            comm.send(None, dest=0, tag=_REQUEST)
            item = _wait(comm.irecv(source=0, tag=_REPLY))
            if item is None:
                return
            yield item


def _wait(request):
    """Wait for a non-blocking receive without spinning (a blocking MPI receive busy-polls a core,
    which the ranks sharing a node need for their simulations)."""
    while True:
        done, value = request.test()
        if done:
            return value
        time.sleep(_POLL_S)


def quiet_barrier(world: World) -> None:
    """``MPI_Barrier`` that sleeps while it waits (ranks finish their last condition at
    different times; the early ones should not burn the cores of the late ones)."""
    if world.size == 1 or world.comm is None:
        return
    request = world.comm.Ibarrier()
    while not request.Test():
        time.sleep(_POLL_S)


def _serve_and_work(world: World, items: Sequence[int]) -> Iterator[int]:
    from mpi4py import MPI

    queue = collections.deque(items)
    lock = threading.Lock()
    comm = world.comm

    def take():
        with lock:
            return queue.popleft() if queue else None

    def serve():
        finished = 0
        status = MPI.Status()
        while finished < world.size - 1:
            if not comm.Iprobe(source=MPI.ANY_SOURCE, tag=_REQUEST, status=status):
                time.sleep(_POLL_S)
                continue
            source = status.Get_source()
            comm.recv(source=source, tag=_REQUEST)
            item = take()
            comm.send(item, dest=source, tag=_REPLY)
            if item is None:
                finished += 1

    server = threading.Thread(target=serve, name="cellsim-dispatch", daemon=True)
    server.start()
    while (item := take()) is not None:
        yield item
    # Every other rank has been told "no more" before rank 0 goes on to collective calls.
    # (On an exception rank 0 does not wait here: the CLI aborts all ranks.)
    server.join()
