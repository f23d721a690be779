"""One training harness for the stages that train networks (``train-seg``, ``train-degradation``).

The plumbing every training loop of batterytwin shares, in one place:

- :func:`set_threads`: the CPU thread policy of a rank.
- :func:`warmup_cosine`: the learning-rate schedule, a :class:`~torch.optim.lr_scheduler.LambdaLR`
  over :func:`lr_factor` (linear warm-up, then cosine decay to ``min_ratio``; ``min_ratio=1`` is
  warm-up then constant, the degradation schedule, which does not depend on the total steps).
- :func:`wrap_ddp`: ``DistributedDataParallel`` over the process group of
  :func:`~batterytwin.distributed.init_torch_distributed` (world size 1 is the same code path).
- :class:`StopFlag`: SIGUSR1/SIGTERM (Slurm's warning before the time limit, preemption) set a
  flag; the ranks agree on it in an all-reduce at a step boundary, so all stop at the same step.
- :class:`Checkpoint`: the resumable state (state dicts of named objects, the step, extras),
  written by rank 0 atomically through :func:`batterytwin.store.atomic_output`, read back with
  ``torch.load(..., weights_only=True)``, and resumed only into the run it belongs to (``run_key``).
- :func:`ema_model` / :func:`update_ema`: an exponential moving average of the weights through
  :class:`torch.optim.swa_utils.AveragedModel` and :func:`torch.optim.swa_utils.get_ema_multi_avg_fn`.
- :func:`preempted`: the message and exit status :data:`EXIT_PREEMPTED` (75, ``EX_TEMPFAIL``) of
  a run stopped by a signal; rerunning the same command resumes it.

A resumed run ends with the weights of an uninterrupted one when the stage draws the data of each
step from the step number alone: the checkpoint holds weights, optimiser, scheduler (and EMA) and
the step, no RNG state.

EMA: ``get_ema_multi_avg_fn`` takes one fixed decay, and ``AveragedModel`` starts the average from
the weights after the first update. The degradation model's EMA (kept as it was) starts from the
*initial* weights and uses the warm-up decay ``min(decay, (1 + s) / (10 + s))`` at step ``s``
(:func:`ema_decay`), so that the early average is not dominated by the random initialisation.
Both are obtained from torch's pieces rather than re-implemented: :func:`ema_model` records the
initial weights with a first ``update_parameters`` call, and :func:`update_ema` hands the model the
``get_ema_multi_avg_fn`` of the step's decay. The update is ``torch._foreach_lerp_(ema, w, 1 - d)``,
the former per-tensor ``ema.lerp_(w, 1 - d)`` to the bit (tests/test_training.py checks it against
the formula).

Example::

    net = build(...).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = warmup_cosine(opt, steps, warmup=100, min_ratio=0.01)
    ckpt = Checkpoint(path, run_key, {"model": net, "optimizer": opt, "scheduler": sched}, world)
    state = ckpt.load(device)                    # None: start afresh
    start = state["step"] if state else 0
    with StopFlag() as stop:
        for step in range(start, steps):
            if stop.agreed(device)[0]:
                ckpt.save(step)
                return preempted("train-x", step, steps, ckpt.path, world)
            ...                                  # forward, backward, opt.step()
            sched.step()
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from pathlib import Path
from typing import Any, Mapping

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from . import store
from .distributed import World
from .errors import InputError

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 75  # sysexits EX_TEMPFAIL: not finished, checkpoint saved, rerun to resume


# ----------------------------------------------------------------------------- threads
def set_threads(world: World, threads: int) -> None:
    """Torch CPU threads of this rank: ``threads``, else what the launcher granted.

    ``OMP_NUM_THREADS`` (Snakemake sets it to the job's threads) is honoured by torch itself;
    otherwise ``SLURM_CPUS_PER_TASK``, otherwise the cores of this node shared by its ranks.
    Oversubscribing matters: OpenMP threads spin-wait, so two threads on a busy core can be several
    times slower than one.

    Args:
        world: this rank's place (``local_size`` ranks share a node's cores).
        threads: threads per rank; ``<= 0`` chooses as above.

    Example::

        set_threads(get_world(), 0)
    """
    if threads <= 0:
        if os.environ.get("OMP_NUM_THREADS"):
            return
        if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
            threads = int(os.environ["SLURM_CPUS_PER_TASK"])
        else:
            try:
                cores = len(os.sched_getaffinity(0))
            except AttributeError:
                cores = os.cpu_count() or 1
            threads = max(1, cores // max(1, world.local_size))  # ranks on a node share its cores
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- learning rate
def lr_factor(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier of ``step``: linear warm-up, then cosine decay to ``min_ratio``.

    Args:
        step: 0-based optimiser step.
        steps: total steps (the cosine reaches ``min_ratio`` there).
        warmup: warm-up steps (``(step + 1) / warmup`` while ``step < warmup``).
        min_ratio: final multiplier; ``1.0`` gives warm-up then constant.

    Example::

        >>> lr_factor(0, 100, 4, 0.1), lr_factor(3, 100, 4, 0.1), lr_factor(100, 100, 4, 0.1)
        (0.25, 1.0, 0.1)
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def warmup_cosine(opt: torch.optim.Optimizer, steps: int, warmup: int,
                  min_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """The :func:`lr_factor` schedule of ``opt``'s learning rate; call ``step()`` after each ``opt.step()``.

    Example::

        sched = warmup_cosine(torch.optim.AdamW(net.parameters(), lr=1e-3), 3000, 100, 1.0)
    """
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup, min_ratio))


# ----------------------------------------------------------------------------- DDP
def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.parallel.DistributedDataParallel:
    """``module`` in ``DistributedDataParallel`` on ``device`` (a process group must be initialised).

    Example::

        device = init_torch_distributed(world, "auto")
        ddp = wrap_ddp(net.to(device), device)
    """
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


# ----------------------------------------------------------------------------- signals
class StopFlag:
    """SIGUSR1/SIGTERM set a flag (handlers installed in the main thread, restored on exit).

    The flag is read through :meth:`agreed`, an all-reduce at a step boundary, so every rank stops
    at the same step even when the signal reached only some of them.

    Example::

        with StopFlag() as stop:
            while step < steps:
                if stop.agreed(device)[0]:
                    break
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        log.warning("received signal %d: checkpointing at the next step boundary", signum)
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old.clear()

    def agreed(self, device: torch.device, *values: float) -> tuple[bool, torch.Tensor]:
        """One all-reduce (sum, float64) of ``values`` and of this rank's flag.

        Args:
            device: where the reduction runs (the process group's device: NCCL needs CUDA tensors).
            values: numbers to sum over ranks in the same call (e.g. a loss normaliser).
        Returns:
            (whether any rank was signalled, the summed ``values``: float64 tensor ``[len(values)]``).
        """
        shared = torch.tensor([*map(float, values), float(self.signum != 0)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(shared)
        return bool(shared[-1] > 0), shared[:-1]


def preempted(command: str, step: int, steps: int, checkpoint: Path | str | None, world: World) -> int:
    """Say (rank 0, on stdout and in the log) that ``command`` stopped at ``step``; return :data:`EXIT_PREEMPTED`.

    Example::

        return preempted("train-seg", 120, 3000, "work/models/segment/checkpoint.pt", world)
    """
    msg = (f"batterytwin {command}: preempted at step {step}/{steps}: checkpoint saved to {checkpoint}; "
           f"rerun the same command to resume (exit code {EXIT_PREEMPTED})")
    if world.is_root:
        print(msg, flush=True)
        log.warning(msg)
    return EXIT_PREEMPTED


# ----------------------------------------------------------------------------- files
def save_atomic(obj: Any, path: Path | str) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`batterytwin.store.atomic_output` (call on one rank).

    Example::

        if world.is_root:
            save_atomic({"format": FORMAT, "state_dict": net.state_dict()}, "results/model.pt")
    """
    with store.atomic_output(path, World()) as tmp:  # one writer: a size-1 world
        torch.save(obj, tmp)


class Checkpoint:
    """The resumable state of a training run in one file.

    The file is a dict: ``run_key``, ``step``, the ``state_dict()`` of each object under its name,
    and stage extras (loss history...). Only tensors, numbers, strings, lists and dicts: it loads
    with ``torch.load(path, weights_only=True)``.

    Args:
        path: the checkpoint file; ``None``: no checkpointing (:meth:`save` and :meth:`load` do nothing).
        run_key: identity of the run (a hash of what determines the weights); a file of another
            run is not resumed.
        objects: name -> object with ``state_dict()``/``load_state_dict()`` (module, optimiser,
            scheduler), restored in this order.
        world: the ranks; rank 0 writes, every rank reads.

    Example::

        ckpt = Checkpoint("work/models/x.ckpt.pt", key, {"net": net, "opt": opt, "sched": sched}, world)
        state = ckpt.load(device)          # restores net, opt, sched; None when starting afresh
        ...
        ckpt.save(step, history=history)   # collective: every rank calls it
    """

    def __init__(self, path: Path | str | None, run_key: str, objects: Mapping[str, Any], world: World) -> None:
        self.path = None if path is None else Path(path)
        self.run_key, self.objects, self.world = run_key, dict(objects), world

    def save(self, step: int, **extra: Any) -> None:
        """Write the checkpoint of ``step`` (rank 0, atomic) and wait for it on every rank."""
        if self.path is not None and self.world.is_root:
            states = {name: obj.state_dict() for name, obj in self.objects.items()}
            save_atomic({"run_key": self.run_key, "step": int(step), **states, **extra}, self.path)
        self.world.barrier()

    def load(self, device: torch.device | str = "cpu", resume: str = "auto") -> dict | None:
        """Restore the objects from the file; return its content, or ``None`` to start afresh.

        Args:
            device: ``map_location`` of the tensors.
            resume: ``auto`` (resume a checkpoint of this run when there is one), ``yes`` (it must
                exist and belong to this run) or ``no`` (start afresh).
        Raises:
            InputError: ``resume="yes"`` and no checkpoint of this run.
        """
        if resume == "no" or self.path is None or not self.path.is_file():
            if resume == "yes":
                raise InputError(f"{self.path}: no checkpoint to resume from (--resume yes)")
            return None
        state = torch.load(self.path, map_location=device, weights_only=True)
        if state.get("run_key") != self.run_key:
            if resume == "yes":
                raise InputError(f"{self.path}: checkpoint belongs to another run (config or inputs differ); "
                                 "start afresh (--resume no) or use another checkpoint file")
            log.warning("%s: checkpoint of another run (config or inputs differ): starting afresh", self.path)
            return None
        for name, obj in self.objects.items():
            obj.load_state_dict(state[name])
        log.info("resuming from %s at step %d", self.path, state["step"])
        return state


# ----------------------------------------------------------------------------- EMA
def ema_decay(step: int, decay: float) -> float:
    """EMA decay at 0-based ``step``: ``min(decay, (1 + step) / (10 + step))`` (short memory early on).

    Example::

        >>> ema_decay(0, 0.995), ema_decay(10_000, 0.995)
        (0.1, 0.995)
    """
    return min(decay, (1 + step) / (10 + step))


def ema_model(net: torch.nn.Module) -> AveragedModel:
    """An :class:`~torch.optim.swa_utils.AveragedModel` of ``net`` whose average starts at ``net``'s current weights.

    ``ema.module`` is the averaged network (same parameter names as ``net``); buffers follow
    ``net``'s (``use_buffers=False``).

    Example::

        ema = ema_model(net)
        ...                                   # opt.step()
        update_ema(ema, net, ema_decay(step, 0.995))
        torch.save(ema.module.state_dict(), "ema.pt")
    """
    ema = AveragedModel(net)
    ema.update_parameters(net)  # the first update copies: the average starts from these weights
    return ema.requires_grad_(False)


def update_ema(ema: AveragedModel, net: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * net`` for every parameter, through ``get_ema_multi_avg_fn(decay)``."""
    ema.multi_avg_fn = get_ema_multi_avg_fn(decay)
    ema.update_parameters(net)
