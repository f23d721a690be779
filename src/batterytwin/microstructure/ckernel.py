"""Fused CPU kernels for the two walks: C, compiled once with the system C compiler.

The torch walk (:mod:`.walk`) issues ~30 tensor operations per step, each a full pass over all
walkers in memory; on a CPU that is memory-bound at a few M walker-steps/s. These kernels keep each
walker in registers for a whole chunk of steps. The C source is serial (no OpenMP): walkers are
split into one contiguous chunk per thread (``threads``, default torch's thread count, at least 128
walkers a chunk) and each chunk runs in a Python thread of a shared pool, in parallel because ctypes
releases the GIL; there is no OpenMP runtime, whose spinning barriers collapse on shared or
oversubscribed nodes. They compute exactly what :func:`.walk.lattice_advance` and
:func:`.walk.offlattice_advance` compute (same hash, same folding, same event tracing), so the
lattice walk agrees with the torch path bit for bit and the off-lattice walk up to libm rounding
(tested).

The shared library is built on first use with ``$CC`` (default ``cc``) into
``$BATTERYTWIN_CACHE`` (default ``~/.cache/batterytwin``), named by the source's hash, and renamed
into place atomically (several MPI ranks may build at once). When no compiler is available,
:func:`load` returns ``None`` and callers fall back to the torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = r"""
#include <stdint.h>
#include <math.h>
#define M32 0xFFFFFFFFull
static inline uint64_t mix32(uint64_t x) {
    x ^= x >> 16; x = (x * 0x7FEB352Dull) & M32;
    x ^= x >> 15; x = (x * 0x5BD1E995ull) & M32;
    x ^= x >> 16; return x;
}
static inline uint64_t step_random(uint64_t k, int64_t t) { return mix32(mix32(k ^ ((uint64_t)t & M32)) ^ k); }
static inline int64_t fold(int64_t c, int64_t n, int periodic) {
    if (periodic) { int64_t m = c % n; return m < 0 ? m + n : m; }
    int64_t m = c % (2 * n); if (m < 0) m += 2 * n;
    return m >= n ? 2 * n - 1 - m : m;
}
/* sign of the image's axis direction in the mirror copy holding unwrapped coordinate c */
static inline int64_t mirror_sign(int64_t c, int64_t n) {
    int64_t m = c % (2 * n); if (m < 0) m += 2 * n; return m >= n ? -1 : 1;
}

void lattice_advance(const uint8_t *mask, int64_t Z, int64_t Y, int64_t X, int periodic,
                     int64_t n, int64_t *vox, const int64_t *key, int64_t t0, int64_t nsteps) {
    const int64_t L[3] = {Z, Y, X};
    const int64_t S[3] = {Y * X, X, 1};
    for (int64_t i = 0; i < n; i++) {
        int64_t c[3], f[3], s[3];
        int64_t idx = 0;
        for (int a = 0; a < 3; a++) {
            c[a] = vox[3 * i + a]; f[a] = fold(c[a], L[a], periodic);
            s[a] = periodic ? 1 : mirror_sign(c[a], L[a]); idx += f[a] * S[a];
        }
        const uint64_t k = (uint64_t)key[i];
        for (int64_t t = t0; t < t0 + nsteps; t++) {
            uint64_t r = step_random(k, t) % 6;
            int a = (int)(r >> 1);
            int64_t d = 1 - 2 * (int64_t)(r & 1);
            int64_t nf = f[a] + s[a] * d;  /* image coordinate of the target voxel */
            if (nf < 0 || nf >= L[a]) {
                if (periodic) {
                    nf = nf < 0 ? L[a] - 1 : 0;
                    int64_t nidx = idx + (nf - f[a]) * S[a];
                    if (mask[nidx]) { idx = nidx; f[a] = nf; c[a] += d; }
                } else {  /* mirror: the target is the same voxel seen in the next copy */
                    s[a] = -s[a]; c[a] += d;
                }
            } else {
                int64_t nidx = idx + (nf - f[a]) * S[a];
                if (mask[nidx]) { idx = nidx; f[a] = nf; c[a] += d; }
            }
        }
        for (int a = 0; a < 3; a++) vox[3 * i + a] = c[a];
    }
}

int64_t offlattice_advance(const uint8_t *mask, int64_t Z, int64_t Y, int64_t X, int periodic,
                           int64_t n, int64_t *vox, double *frac, const int64_t *key, int64_t t0,
                           int64_t nsteps, double s0, double s1, double s2, int max_events) {
    const int64_t L[3] = {Z, Y, X};
    const double sv[3] = {s0, s1, s2};
    int64_t truncated = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t c[3]; double p[3];
        for (int a = 0; a < 3; a++) { c[a] = vox[3 * i + a]; p[a] = frac[3 * i + a]; }
        const uint64_t k = (uint64_t)key[i];
        for (int64_t t = t0; t < t0 + nsteps; t++) {
            uint64_t r1 = step_random(k, t), r2 = mix32(r1 ^ 0x6A09E667ull);
            double ct = 2.0 * ((double)(r1 >> 8) * (1.0 / 16777216.0)) - 1.0;
            double phi = 2.0 * M_PI * ((double)(r2 >> 8) * (1.0 / 16777216.0));
            double st = sqrt(fmax(1.0 - ct * ct, 0.0));
            double v[3] = {ct * sv[0], st * cos(phi) * sv[1], st * sin(phi) * sv[2]};
            double rem = 1.0;
            int ev;
            for (ev = 0; ev < max_events; ev++) {
                double tmin = INFINITY; int ax = 0;
                for (int a = 0; a < 3; a++) {
                    double tf = v[a] > 0 ? (1.0 - p[a]) / v[a] : (v[a] < 0 ? -p[a] / v[a] : INFINITY);
                    if (tf < tmin) { tmin = tf; ax = a; }
                }
                if (tmin >= rem) {
                    for (int a = 0; a < 3; a++) p[a] += v[a] * rem;
                    rem = 0.0; break;
                }
                for (int a = 0; a < 3; a++) p[a] += v[a] * tmin;
                rem -= tmin;
                int64_t d = v[ax] > 0 ? 1 : -1;
                int64_t nc[3] = {c[0], c[1], c[2]}; nc[ax] += d;
                int64_t idx = (fold(nc[0], Z, periodic) * Y + fold(nc[1], Y, periodic)) * X + fold(nc[2], X, periodic);
                if (mask[idx]) { c[ax] = nc[ax]; p[ax] = d > 0 ? 0.0 : 1.0; }
                else { p[ax] = d > 0 ? 1.0 : 0.0; v[ax] = -v[ax]; }
            }
            if (rem > 0) truncated++;
        }
        for (int a = 0; a < 3; a++) { vox[3 * i + a] = c[a]; frac[3 * i + a] = p[a]; }
    }
    return truncated;
}
"""

_LIB: ctypes.CDLL | None | bool = False  # False: not tried yet


def _cache_dir() -> Path:
    return Path(os.environ.get("BATTERYTWIN_CACHE", Path.home() / ".cache" / "batterytwin")) / "kernels"


def load() -> ctypes.CDLL | None:
    """The compiled kernel library, building it on first use; ``None`` when no C compiler works."""
    global _LIB
    if _LIB is not False:
        return _LIB
    if os.environ.get("BATTERYTWIN_NO_CKERNEL", "") not in ("", "0"):
        _LIB = None
        return None
    digest = hashlib.sha256(SOURCE.encode()).hexdigest()[:16]
    so = _cache_dir() / f"walk_{digest}.so"
    try:
        if not so.exists():
            try:
                _build(so)
            except OSError:  # read-only home on a compute node: build in the node's temp dir
                so = Path(tempfile.gettempdir()) / "batterytwin-kernels" / so.name
                if not so.exists():
                    _build(so)
        lib = ctypes.CDLL(str(so))
    except (OSError, subprocess.CalledProcessError, FileNotFoundError) as exc:
        log.warning("C walk kernel unavailable (%s); using the torch walk (slower on CPU)", exc)
        _LIB = None
        return None
    i64, p = ctypes.c_int64, ctypes.c_void_p
    lib.lattice_advance.argtypes = [p, i64, i64, i64, ctypes.c_int, i64, p, p, i64, i64]
    lib.lattice_advance.restype = None
    lib.offlattice_advance.argtypes = [p, i64, i64, i64, ctypes.c_int, i64, p, p, p, i64, i64,
                                       ctypes.c_double, ctypes.c_double, ctypes.c_double, ctypes.c_int]
    lib.offlattice_advance.restype = i64
    _LIB = lib
    return lib


def _build(so: Path) -> None:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise FileNotFoundError(f"C compiler {cc!r} not found")
    so.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "walk.c"
        src.write_text(SOURCE)
        out = so.with_name(f"{so.name}.tmp-{uuid.uuid4().hex[:8]}")
        subprocess.run([cc, "-O3", "-fno-math-errno", "-fPIC", "-shared", str(src), "-o", str(out), "-lm"],
                       check=True, capture_output=True, timeout=120)
        os.replace(out, so)  # atomic: concurrent builders leave one complete library


_POOL: ThreadPoolExecutor | None = None


def _chunks(n: int, threads: int | None) -> list[tuple[int, int]]:
    k = max(1, min(int(threads or torch.get_num_threads()), n // 128 or 1))
    edges = [n * i // k for i in range(k + 1)]
    return [(a, b - a) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _parallel(fn, n: int, threads: int | None) -> list:
    """Run ``fn(first, count)`` over contiguous walker chunks, one per thread (a shared pool)."""
    global _POOL
    parts = _chunks(n, threads)
    if len(parts) == 1:
        return [fn(*parts[0])]
    if _POOL is None or _POOL._max_workers < len(parts):
        _POOL = ThreadPoolExecutor(max(len(parts), torch.get_num_threads()))
    return list(_POOL.map(lambda p: fn(*p), parts))


def _ptr(t: torch.Tensor) -> int:
    assert t.is_contiguous() and t.device.type == "cpu"
    return t.data_ptr()


def lattice_advance(mask_u8: torch.Tensor, voxel: torch.Tensor, key: torch.Tensor, t0: int, n_steps: int,
                    boundary: str, threads: int | None = None) -> None:
    """C lattice walk, in place on ``voxel`` (int64 [N, 3], contiguous CPU); ``mask_u8`` uint8 [Z, Y, X]."""
    lib = load()
    Z, Y, X = mask_u8.shape
    per = int(boundary == "periodic")
    m, v, k = _ptr(mask_u8), _ptr(voxel), _ptr(key)
    _parallel(lambda a, c: lib.lattice_advance(m, Z, Y, X, per, c, v + 24 * a, k + 8 * a, int(t0), int(n_steps)),
              voxel.shape[0], threads)


def offlattice_advance(mask_u8: torch.Tensor, voxel: torch.Tensor, frac: torch.Tensor, key: torch.Tensor,
                       t0: int, n_steps: int, boundary: str, step_voxels, max_events: int = 8,
                       threads: int | None = None) -> int:
    """C off-lattice walk, in place on ``voxel`` (int64 [N, 3]) and ``frac`` (float64 [N, 3])."""
    lib = load()
    Z, Y, X = mask_u8.shape
    s = [float(x) for x in step_voxels]
    per = int(boundary == "periodic")
    m, v, f, k = _ptr(mask_u8), _ptr(voxel), _ptr(frac), _ptr(key)
    out = _parallel(lambda a, c: lib.offlattice_advance(m, Z, Y, X, per, c, v + 24 * a, f + 24 * a, k + 8 * a,
                                                        int(t0), int(n_steps), s[0], s[1], s[2], int(max_events)),
                    voxel.shape[0], threads)
    return int(sum(out))
