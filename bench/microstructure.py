"""Benchmark: random-walk tortuosity throughput and accuracy against its references, same run.

Figures printed (and written to bench/out/microstructure.json):
* walker-steps/s of the batterytwin walk (lattice: C kernel on CPU, Triton/torch on GPU; and the
  off-lattice walk), per core on CPU;
* walker-steps/s of pytrax (Tranter et al.; numpy, one process) on the same image when it can be
  imported (``--pytrax-path DIR`` adds a directory holding it, e.g. one made by
  ``pip install --no-deps --target DIR pytrax pyevtk``), and of a plain-numpy rejection walk
  written here (always);
* TauFactor's steady-state tau for the three directions and its wall time, next to the walk's
  tau tensor (same image, same device) and the difference in percent.

Default run (< 3 min on 2 CPU cores): one 64^3 porespy blob medium at porosity 0.5. Bigger:
``--size 256 512 --device cuda`` (the finite-size study: the walk/TauFactor gap should shrink
with size).

``--converged N`` adds the accuracy-by-default section: three N^3 media of porosity 0.35-0.5
(blobs eps 0.35 blobiness 1, blobs eps 0.5, and an anisotropic blob medium eps 0.45 stretched
along y and x, tau_z ~4), each walked with the *default* settings (convergence loop, budgets),
per-axis error vs TauFactor, steps/walkers used, and the wall time of the whole walk tensor vs
TauFactor's CPU time for three directions (written under ``converged`` in the JSON). N = 256 is
the intended size (TauFactor ~10 min per medium on 2 cores); 128 fits a short session.

    python bench/microstructure.py [--size 64] [--porosity 0.5] [--walkers 16384] [--steps 3000]
    python bench/microstructure.py --size 64 --no-taufactor --converged 128
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from batterytwin.microstructure import ckernel  # noqa: E402
from batterytwin.microstructure import walk as W  # noqa: E402
from batterytwin.microstructure.config import WalkSettings  # noqa: E402
from batterytwin.microstructure.tortuosity import walk_tortuosity  # noqa: E402


def numpy_walk(im: np.ndarray, nw: int, nt: int, seed: int = 0) -> float:
    """Plain-numpy lattice walk with rejection and mirror faces (the pytrax algorithm); seconds."""
    rng = np.random.default_rng(seed)
    shape = np.array(im.shape)
    starts = np.flatnonzero(im)
    pos = np.stack(np.unravel_index(rng.choice(starts, nw), im.shape), axis=1)
    rows = np.arange(nw)
    t0 = time.perf_counter()
    for _ in range(nt):
        ax = rng.integers(0, 3, nw)
        d = rng.integers(0, 2, nw) * 2 - 1
        new = pos.copy()
        new[rows, ax] += d
        m = np.remainder(new, 2 * shape)
        f = np.where(m >= shape, 2 * shape - 1 - m, m)
        ok = im[f[:, 0], f[:, 1], f[:, 2]]
        pos[ok] = new[ok]
    return time.perf_counter() - t0


def pytrax_walk(im: np.ndarray, nw: int, nt: int) -> float | None:
    try:
        import pytrax as pt
    except ImportError:
        return None
    rw = pt.RandomWalk(im.astype(np.int8), seed=False)
    t0 = time.perf_counter()
    rw.run(nt=nt, nw=nw, stride=max(1, nt // 10), num_proc=1)
    return time.perf_counter() - t0


def taufactor_three(im: np.ndarray, device: str) -> tuple[list[float], float] | None:
    try:
        import taufactor as tf
    except ImportError:
        return None
    taus = []
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for a in range(3):
        solver = tf.Solver(np.ascontiguousarray(np.moveaxis(im, a, 0)).astype(np.uint8), device=device)
        taus.append(float(np.ravel(solver.solve(verbose=False))[0]))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return taus, time.perf_counter() - t0


CONVERGED_MEDIA = (  # name, porespy blobs arguments
    ("blobs eps 0.35, blobiness 1", dict(porosity=0.35, blobiness=1.0, seed=3)),
    ("blobs eps 0.5, blobiness 1.5", dict(porosity=0.5, blobiness=1.5, seed=1)),
    ("anisotropic blobs eps 0.45, blobiness [2, 1, 1]", dict(porosity=0.45, blobiness=[2, 1, 1], seed=5)),
)


def converged_section(size: int, device: str) -> list[dict]:
    """Default-settings walks vs TauFactor on :data:`CONVERGED_MEDIA` at ``size``^3 (the issue-15
    acceptance figures: per-axis error, converged flag, walkers x steps, walk vs TauFactor time)."""
    import porespy as ps

    out = []
    for name, kw in CONVERGED_MEDIA:
        im = ps.generators.blobs(shape=[size] * 3, **kw).astype(bool)
        t0 = time.perf_counter()
        res = walk_tortuosity(im, WalkSettings(seed=1, device=device))
        t_walk = time.perf_counter() - t0
        tfr = taufactor_three(im, device)
        rec = {"medium": name, "size": size, "porosity": float(im.mean()), "walk_wall_s": t_walk,
               "walk": {k: v for k, v in res["walk"].items() if k != "history"},
               "tau": [res["axes"][a]["tau"] for a in "zyx"], "tau_std": [res["axes"][a]["tau_std"] for a in "zyx"],
               "converged": [res["axes"][a]["converged"] for a in "zyx"]}
        line = (f"{size}^3 {name} (eps {im.mean():.3f}): walk {t_walk:.1f} s "
                f"({res['walk']['n_walkers']} walkers x {res['walk']['n_steps']} steps, {res['walk']['stop_reason']})")
        if tfr is not None:
            rec.update(taufactor_tau=tfr[0], taufactor_wall_s=tfr[1],
                       diff_percent=[100 * (a / b - 1) if a and b else None for a, b in zip(rec["tau"], tfr[0])])
            line += (f"; TauFactor {tfr[1]:.1f} s; tau z/y/x walk " + ", ".join(f"{t:.3f}" for t in rec["tau"])
                     + " vs " + ", ".join(f"{t:.3f}" for t in tfr[0]) + " -> "
                     + ", ".join(f"{d:+.1f}%" for d in rec["diff_percent"] if d is not None))
        print(line, flush=True)
        out.append(rec)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, nargs="+", default=[64], help="cube edge(s) in voxels")
    ap.add_argument("--porosity", type=float, default=0.5)
    ap.add_argument("--blobiness", type=float, default=1.5)
    ap.add_argument("--walkers", type=int, default=16384)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--pytrax-path", default=None, help="directory to add to sys.path for pytrax")
    ap.add_argument("--ref-walkers", type=int, default=16384, help="walkers of the pytrax / numpy reference runs")
    ap.add_argument("--ref-steps", type=int, default=200, help="steps of the pytrax / numpy reference runs")
    ap.add_argument("--no-taufactor", action="store_true")
    ap.add_argument("--converged", type=int, default=0, metavar="N",
                    help="also run the accuracy-by-default section on three N^3 media (0: skip)")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "microstructure.json"))
    args = ap.parse_args()
    if args.pytrax_path:
        sys.path.insert(0, args.pytrax_path)
    import porespy as ps

    torch.set_num_threads(args.threads)
    dev_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    print(f"device: {dev_name}")
    results = []
    for size in args.size:
        im = ps.generators.blobs(shape=[size] * 3, porosity=args.porosity, blobiness=args.blobiness,
                                 seed=1).astype(bool)
        rec = {"size": size, "porosity": float(im.mean()), "device": dev_name}
        # throughput of the bare kernels (walkers in the phase, mirror faces)
        if args.device == "cpu" and ckernel.load() is not None:
            mask = torch.from_numpy(im.astype(np.uint8))
            start = torch.from_numpy(np.flatnonzero(im)[:: max(1, im.sum() // args.walkers)][: args.walkers])
            for threads in sorted({1, args.threads}):
                st = W.walk_start(im.shape, start, torch.arange(len(start)), 1, False)
                t0 = time.perf_counter()
                ckernel.lattice_advance(mask, st.voxel, st.key, 0, args.steps, "mirror", threads)
                dt = time.perf_counter() - t0
                rec[f"lattice_steps_per_s_{threads}t"] = len(start) * args.steps / dt
                print(f"{size}^3 lattice walk (C), {threads} thread(s): "
                      f"{len(start) * args.steps / dt / 1e6:.1f} M walker-steps/s")
            st = W.walk_start(im.shape, start, torch.arange(len(start)), 1, True)
            n_off = max(1, args.steps // 10)
            t0 = time.perf_counter()
            ckernel.offlattice_advance(mask, st.voxel, st.frac, st.key, 0, n_off, "mirror", (0.5,) * 3, 8, 1)
            dt = time.perf_counter() - t0
            rec["offlattice_steps_per_s_1t"] = len(start) * n_off / dt
            print(f"{size}^3 off-lattice walk (C), 1 thread: {len(start) * n_off / dt / 1e6:.1f} M walker-steps/s")
        # the walk to the full tensor (includes cluster labelling, starts, moments, bootstrap)
        # a fixed walk (budgets = the first block): this section measures throughput
        p = WalkSettings(n_walkers=args.walkers, n_steps=args.steps, n_batches=16, seed=1, device=args.device,
                         max_steps=args.steps, max_walkers=args.walkers)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = walk_tortuosity(im, p)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t_walk = time.perf_counter() - t0
        taus = [res["axes"][a]["tau"] for a in "zyx"]
        stds = [res["axes"][a]["tau_std"] for a in "zyx"]
        rec.update(walk_wall_s=t_walk, walk_tau=taus, walk_tau_std=stds,
                   walk_steps_per_s=p.per_batch * p.n_batches * p.n_steps / t_walk)
        print(f"{size}^3 walk tensor ({p.per_batch * p.n_batches} walkers x {p.n_steps} steps): {t_walk:.2f} s, "
              f"{rec['walk_steps_per_s'] / 1e6:.1f} M walker-steps/s overall; tau z/y/x = "
              + ", ".join(f"{t:.3f}+-{s:.3f}" for t, s in zip(taus, stds)))
        # references on the same image, same run
        t_np = numpy_walk(im, args.ref_walkers, args.ref_steps)
        rec["numpy_steps_per_s"] = args.ref_walkers * args.ref_steps / t_np
        t_pt = pytrax_walk(im, args.ref_walkers, args.ref_steps)
        if t_pt is not None:
            rec["pytrax_steps_per_s"] = args.ref_walkers * args.ref_steps / t_pt
        print(f"{size}^3 references, 1 process: plain numpy walk {rec['numpy_steps_per_s'] / 1e6:.2f} M/s; pytrax "
              + (f"{rec['pytrax_steps_per_s'] / 1e6:.2f} M/s" if t_pt is not None else "not importable"))
        if "lattice_steps_per_s_1t" in rec:
            per_core = rec["lattice_steps_per_s_1t"]
            ref = rec.get("pytrax_steps_per_s", rec["numpy_steps_per_s"])
            name = "pytrax" if "pytrax_steps_per_s" in rec else "numpy walk"
            rec["speedup_per_core_vs_" + name.replace(" ", "_")] = per_core / ref
            print(f"{size}^3 per-core speed-up of the C lattice walk vs {name}: {per_core / ref:.1f}x "
                  f"(goal >= 10x pytrax)")
        if not args.no_taufactor:
            tfr = taufactor_three(im, args.device)
            if tfr is not None:
                tf_taus, tf_wall = tfr
                diff = [100 * (a / b - 1) for a, b in zip(taus, tf_taus)]
                rec.update(taufactor_tau=tf_taus, taufactor_wall_s=tf_wall, diff_percent=diff,
                           time_ratio_taufactor_over_walk=tf_wall / t_walk)
                print(f"{size}^3 TauFactor three directions: {tf_wall:.2f} s; tau z/y/x = "
                      + ", ".join(f"{t:.3f}" for t in tf_taus)
                      + "; walk - TauFactor = " + ", ".join(f"{d:+.1f}%" for d in diff)
                      + f"; TauFactor time / walk time = {tf_wall / t_walk:.2f}")
        results.append(rec)
    out_obj: object = results
    if args.converged:
        out_obj = {"throughput": results, "converged": converged_section(args.converged, args.device)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(out_obj, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
