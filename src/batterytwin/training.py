"""One training harness for the stages that train networks (``train-seg``, ``train-degradation``).

- threads: :func:`set_threads`; DDP: :func:`wrap_ddp` (process group of
  :func:`~batterytwin.distributed.init_torch_distributed`; world size 1 is the same path);
- LR: :func:`warmup_cosine`, a ``LambdaLR`` of :func:`lr_factor` (linear warm-up, cosine to
  ``min_ratio``; ``min_ratio=1``: warm-up then constant, independent of the total steps);
- signals: :class:`StopFlag` (SIGUSR1/SIGTERM, agreed over ranks at a step boundary) and
  :func:`preempted` (message, exit status :data:`EXIT_PREEMPTED` = 75, ``EX_TEMPFAIL``);
- files: :class:`Checkpoint` (written by rank 0 through :func:`batterytwin.store.atomic_output`,
  read with ``torch.load(..., weights_only=True)``, resumed only into its own run),
  :func:`save_atomic`, :func:`load_model_file`;
- EMA: :func:`ema_model`, :func:`update_ema` (``torch.optim.swa_utils.AveragedModel`` with
  ``get_ema_multi_avg_fn``).

A resumed run ends with the weights of an uninterrupted one when each step's data depends on the
step number alone: the checkpoint holds weights, optimiser, scheduler, EMA and step, no RNG state.

EMA: ``get_ema_multi_avg_fn`` takes one fixed decay and ``AveragedModel`` starts averaging at the
weights after the first update; the degradation EMA starts at the *initial* weights with the
warm-up decay ``min(decay, (1 + s) / (10 + s))`` (:func:`ema_decay`). Both come from torch's own
pieces: :func:`ema_model` records the initial weights by a first ``update_parameters`` call and
:func:`update_ema` passes the ``get_ema_multi_avg_fn`` of the step's decay. Its
``_foreach_lerp_(ema, w, 1 - d)`` equals the former per-tensor ``ema.lerp_(w, 1 - d)`` to the bit
(tests/test_training.py checks this and the formula).

Example::

    sched = warmup_cosine(opt, steps, warmup=100, min_ratio=0.01)
    ckpt = Checkpoint(path, run_key, {"model": net, "optimizer": opt, "scheduler": sched}, world)
    start = (ckpt.load(device) or {"step": 0})["step"]
    with StopFlag() as stop:
        for step in range(start, steps):
            if stop.agreed(device)[0]:
                ckpt.save(step)
                return preempted("train-x", step, steps, ckpt.path, world)
            ...  # forward, backward, opt.step()
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
from .errors import EXIT_PREEMPTED, InputError

log = logging.getLogger(__name__)



def set_threads(world: World, threads: int) -> None:
    """Torch CPU threads of this rank: ``threads`` if > 0, else what the launcher granted.

    ``OMP_NUM_THREADS`` (Snakemake sets it) is honoured by torch itself; else ``SLURM_CPUS_PER_TASK``;
    else the node's cores shared by its ``world.local_size`` ranks (OpenMP threads spin-wait:
    oversubscribed cores can be several times slower).

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
            threads = max(1, cores // max(1, world.local_size))
    torch.set_num_threads(threads)


def lr_factor(step: int, steps: int, warmup: int, min_ratio: float) -> float:
    """LR multiplier of 0-based ``step``: ``(step + 1) / warmup`` while ``step < warmup``, then a
    cosine decay to ``min_ratio`` at ``steps``.

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
    """The :func:`lr_factor` schedule of ``opt``; call ``step()`` after each ``opt.step()``.

    Example::

        sched = warmup_cosine(torch.optim.AdamW(net.parameters(), lr=1e-3), 3000, 100, 1.0)
    """
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup, min_ratio))


def wrap_ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.parallel.DistributedDataParallel:
    """``module`` (already on ``device``) in ``DistributedDataParallel``; needs an initialised process group."""
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids)


class StopFlag:
    """SIGUSR1/SIGTERM set a flag (handlers installed in the main thread, restored on exit).

    Example::

        with StopFlag() as stop:
            while not stop.agreed(device)[0]:   # every rank stops at the same step
                ...
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0
        self._old: dict = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        log.warning("received signal %d: checkpointing at the next step boundary", signum)
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)

    def agreed(self, device: torch.device, *values: float) -> tuple[bool, torch.Tensor]:
        """One all-reduce (sum, float64, on ``device``) of ``values`` and this rank's flag.

        Returns:
            (whether any rank was signalled, the summed ``values``: shape ``[len(values)]``).
        """
        shared = torch.tensor([*map(float, values), float(self.signum != 0)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(shared)
        return bool(shared[-1] > 0), shared[:-1]


def preempted(command: str, step: int, steps: int, checkpoint: Path | str | None, world: World) -> int:
    """Say (rank 0: stdout and log) that ``command`` stopped at ``step``; return :data:`EXIT_PREEMPTED`."""
    msg = (f"batterytwin {command}: preempted at step {step}/{steps}: checkpoint saved to {checkpoint}; "
           f"rerun the same command to resume (exit code {EXIT_PREEMPTED})")
    if world.is_root:
        print(msg, flush=True)
        log.warning(msg)
    return EXIT_PREEMPTED


def check_loss(value: float, step: int, command: str) -> None:
    """Stop training on a non-finite loss: one :class:`InputError` line, no model written.

    Pass a value every rank agrees on (an all-reduced loss), so that all ranks stop together.
    """
    if not math.isfinite(float(value)):
        raise InputError(f"{command}: training loss is {float(value)} at step {step}: non-finite input values "
                         "or a learning rate too high; no model written (check the inputs, lower the learning rate)")


def save_atomic(obj: Any, path: Path | str) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`batterytwin.store.atomic_output`; call on one rank."""
    with store.atomic_output(path, World()) as tmp:  # one writer: a size-1 world
        torch.save(obj, tmp)


def load_model_file(path: Path | str, fmt: str, what: str) -> dict:
    """The dict of a model file of format ``fmt`` (``weights_only`` load, on CPU).

    Raises:
        InputError: the file is missing, unreadable, or not a ``what`` (another ``format``).
    Example::

        payload = load_model_file("results/model.pt", "batterytwin.segment/1", "segmentation model")
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such model file")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        text = " ".join(str(exc).split())[:300]
        raise InputError(f"{p}: cannot load as a weights-only torch file ({type(exc).__name__}: {text})") from None
    if isinstance(payload, dict) and "run_key" in payload and "step" in payload:
        raise InputError(f"{p}: this is a training checkpoint, not a model; pass the {what} file that training "
                         "writes at the end")
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise InputError(f"{p}: not a batterytwin {what} (format {fmt!r} expected)")
    return payload


class Checkpoint:
    """The resumable state of a run: ``{"run_key", "step", <name>: state_dict, **extra}`` in one file.

    Args:
        path: the file; ``None``: no checkpointing (:meth:`save`, :meth:`load` do nothing).
        run_key: identity of the run (hash of what determines the weights): another run's file is not resumed.
        objects: name -> object with ``state_dict``/``load_state_dict`` (restored in this order).
        world: rank 0 writes; every rank reads.

    Example::

        ckpt = Checkpoint("work/x.ckpt.pt", key, {"net": net, "opt": opt, "sched": sched}, world)
        state = ckpt.load(device)            # restores the objects; None: start afresh
        ckpt.save(step, history=history)     # collective: every rank calls it
    """

    def __init__(self, path: Path | str | None, run_key: str, objects: Mapping[str, Any], world: World) -> None:
        self.path = None if path is None else Path(path)
        self.run_key, self.objects, self.world = run_key, dict(objects), world

    def save(self, step: int, **extra: Any) -> None:
        """Write the state at ``step`` (rank 0, atomic); every rank waits for it."""
        if self.path is not None and self.world.is_root:
            states = {name: obj.state_dict() for name, obj in self.objects.items()}
            save_atomic({"run_key": self.run_key, "step": int(step), **states, **extra}, self.path)
        self.world.barrier()

    def load(self, device: torch.device | str = "cpu", resume: str = "auto", steps: int | None = None) -> dict | None:
        """Restore the objects and return the file's dict, or ``None`` (start afresh).

        Args:
            resume: ``auto`` (this run's checkpoint if any), ``yes`` (it must exist) or ``no``.
            steps: the run's total steps, for the log line ("resuming from ... at step 40 of 200").
        Raises:
            InputError: ``resume="yes"`` without a checkpoint of this run.
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
        log.info("resuming from %s at step %d%s", self.path, state["step"], f" of {steps}" if steps else "")
        return state


def ema_decay(step: int, decay: float) -> float:
    """EMA decay at 0-based ``step``: ``min(decay, (1 + step) / (10 + step))``.

    Example::

        >>> ema_decay(0, 0.995), ema_decay(10_000, 0.995)
        (0.1, 0.995)
    """
    return min(decay, (1 + step) / (10 + step))


def ema_model(net: torch.nn.Module) -> AveragedModel:
    """An ``AveragedModel`` of ``net`` starting at its current weights; ``.module`` has ``net``'s names.

    Example::

        ema = ema_model(net)
        ...  # opt.step()
        update_ema(ema, net, ema_decay(step, 0.995))
    """
    ema = AveragedModel(net)
    ema.update_parameters(net)  # the first update copies: the average starts from these weights
    return ema.requires_grad_(False)


def update_ema(ema: AveragedModel, net: torch.nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * net`` for every parameter, by ``get_ema_multi_avg_fn(decay)``."""
    ema.multi_avg_fn = get_ema_multi_avg_fn(decay)
    ema.update_parameters(net)
