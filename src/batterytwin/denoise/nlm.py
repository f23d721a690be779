"""Blockwise fast non-local means in 3-D (Darbon et al. 2008), in PyTorch: the CPU path and the reference.

For a voxel ``p`` and a search offset ``t`` in ``[-d, d]^3`` the patch distance is a box sum of
squared differences, ``D(p, t) = sum_{b in B} (x[p + b] - x[p + t + b])^2``, and the output is the
weighted mean ``sum_t w(p, t) x[p + t] / sum_t w(p, t)``. The fast algorithm loops over offsets and
gets every ``D(., t)`` for the whole volume with separable running sums, so the cost is
``voxels x (2d+1)^3`` and does not grow with the patch size. ``D(p, t) = D(p + t, -t)``, so only
half of the offsets are computed and each weight is used twice.

Two modes:

* ``compat=None`` (default): centred patch ``B = [-r, r]^3`` (``r = patch_size // 2``), distance
  ``max(D / patch_size^3 - 2 sigma^2, 0) / h^2``, exact ``exp``, centre weight ``exp(0) = 1``.
* ``compat="skimage"``: reproduces ``skimage.restoration.denoise_nl_means(fast_mode=True)``
  for 3-D grey images, whose quirks are copied on purpose: the box is ``[-r+1, r]^3`` (off-centre,
  ``(2r)^3`` voxels, from its integral image) but the normaliser is ``patch_size^3 h^2``; the
  ``2 sigma^2`` bias is subtracted per box voxel; weights use Schraudolph's ``fast_exp``
  (:func:`fast_exp`) and are zero where the normalised distance exceeds 5; the centre weight is
  ``fast_exp(0)`` (about 0.971).

Both modes pad with numpy's ``reflect`` (mirror without repeating the edge voxel).

References:
    J. Darbon, A. Cunha, T.F. Chan, S. Osher, G.J. Jensen, "Fast nonlocal filtering applied to
    electron cryomicroscopy", ISBI 2008, pp. 1331-1334.
    A. Buades, B. Coll, J.-M. Morel, "Non-Local Means Denoising", IPOL 1 (2011), pp. 208-212.
    N. Schraudolph, "A fast, compact approximation of the exponential function", Neural Comput.
    11 (1999), pp. 853-862.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InputError
from .nlm_params import DISTANCE_CUTOFF, EXP_A, EXP_BC, NLMParams, box_bounds

CPU_BLOCK = 64  # output cube edge processed at once on the CPU (cache-sized temporaries)


def fast_exp(y: torch.Tensor) -> torch.Tensor:
    """Schraudolph's approximate ``exp``, bit-exact with scikit-image's ``fast_exp`` for ``y`` in [-700, 0].

    The integer ``n = trunc(EXP_A * y) + EXP_BC`` is the upper 32 bits of a float64 whose lower 32
    bits are zero; such a number has a 20-bit mantissa, so float32 holds it exactly and the float32
    path builds it directly: ``bits32 = (n - (1023 - 127) * 2^20) << 3``.

    Args:
        y: float32 or float64 tensor, any shape (float32: valid for y >= -87).

    Returns:
        Tensor of the same shape and dtype.
    """
    if y.dtype == torch.float64:
        n = (y * EXP_A).to(torch.int32).to(torch.int64) + EXP_BC
        return (n << 32).view(torch.float64)
    n = (y * EXP_A).to(torch.int32) + (EXP_BC - (896 << 20))
    return (n << 3).view(torch.float32)


def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Map any integer positions into ``[0, n)`` like ``np.pad(mode="reflect")`` (edge not repeated).

    Args:
        idx: integer array of positions (may be negative or >= n).
        n: length of the axis (>= 2; n == 1 maps everything to 0).
    """
    idx = np.asarray(idx, dtype=np.int64)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    m = np.mod(idx, period)
    return np.where(m >= n, period - m, m)


def pad_reflect(x: torch.Tensor, halo: int | Sequence[int]) -> torch.Tensor:
    """Reflect-pad a (Z, Y, X) tensor by ``halo`` on each side (any halo, like numpy ``reflect``).

    Args:
        x: tensor (Z, Y, X).
        halo: one int or three.

    Returns:
        Tensor (Z + 2 hz, Y + 2 hy, X + 2 hx).
    """
    halo = (halo,) * 3 if np.isscalar(halo) else tuple(halo)
    out = x
    for dim, (hh, n) in enumerate(zip(halo, x.shape)):
        idx = torch.from_numpy(reflect_index(np.arange(-hh, n + hh), n)).to(x.device)
        out = out.index_select(dim, idx)
    return out


def half_offsets(d: int) -> list[tuple[int, int, int]]:
    """The non-zero offsets ``t`` of ``[-d, d]^3`` with ``t > 0`` in lexicographic order (one of each ±t pair)."""
    out = []
    for tz in range(0, d + 1):
        for ty in range(-d if tz else 0, d + 1):
            for tx in range(-d if (tz or ty) else 1, d + 1):
                out.append((tz, ty, tx))
    return out


def box_sum(e: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    """Sums of ``n`` consecutive elements along ``dim`` (length shrinks by n - 1), by doubling.

    ``log2(n)`` + popcount(n) additions of shifted views instead of a cumsum, which is slow and
    loses precision by cancellation. Shape (..., L, ...) -> (..., L - n + 1, ...).
    Returns a contiguous tensor.
    """
    length = e.shape[dim] - n + 1
    pieces, start, k, p = [], 0, 1, e
    while n:
        if n & 1:
            pieces.append(p.narrow(dim, start, length))
            start += k
        n >>= 1
        if n:
            m = p.shape[dim] - k
            p = p.narrow(dim, 0, m) + p.narrow(dim, k, m)
            k *= 2
    if len(pieces) == 1:
        return pieces[0].contiguous()  # a whole doubling result: no copy
    out = torch.add(pieces[0], pieces[1])  # fresh and contiguous: later ops stay vectorised
    for piece in pieces[2:]:
        out.add_(piece)
    return out


def _weights(dist: torch.Tensor, p: NLMParams, box_count: int) -> torch.Tensor:
    """Turn box sums of squared differences into NLM weights (in place where possible)."""
    s3h2 = p.patch_size ** 3 * p.h * p.h
    if p.compat == "skimage":
        if p.sigma:
            dist.sub_(2.0 * p.sigma ** 2 * box_count ** 3)
        dist.clamp_(min=0.0).mul_(1.0 / s3h2)
        if dist.dtype == torch.float32:  # fast_exp(-dist) with the negation and shift folded in
            n = torch.mul(dist, -EXP_A).to(torch.int32).add_(EXP_BC - (896 << 20)).mul_(8)
            w = n.view(torch.float32)
        else:
            w = fast_exp(-dist)
        return w.masked_fill_(dist > DISTANCE_CUTOFF, 0.0)
    if p.sigma:
        dist.mul_(1.0 / p.patch_size ** 3).sub_(2.0 * p.sigma ** 2).clamp_(min=0.0).mul_(-1.0 / (p.h * p.h))
    else:
        dist.mul_(-1.0 / s3h2)
    return dist.exp_()


def centre_weight(p: NLMParams) -> float:
    """Weight of the zero offset (the voxel itself)."""
    if p.compat == "skimage":
        return float(fast_exp(torch.zeros((), dtype=torch.float64)))
    return 1.0


def nlm_padded(xp: torch.Tensor, p: NLMParams) -> torch.Tensor:
    """NLM of the interior of an already padded block (the CPU path; also runs on CUDA, unfused).

    Args:
        xp: (Z + 2H, Y + 2H, X + 2H) float32 or float64, ``H = p.halo``: the block with its halo
            (neighbouring data, or reflection at true volume borders).
        p: parameters.

    Returns:
        (Z, Y, X) tensor, same dtype and device: the denoised interior.
    """
    num, den = nlm_sums(xp, p, half_offsets(p.search_radius), centre=True)
    return num.div_(den)


def nlm_sums(xp: torch.Tensor, p: NLMParams, offsets: Sequence[tuple[int, int, int]],
             centre: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sums ``(sum_t w x[p+t], sum_t w)`` over the offset pairs ``{t, -t}`` for ``t`` in ``offsets``.

    Partial sums over disjoint offset sets add up (how :func:`nlm_padded_parallel` splits work).
    ``centre`` adds the zero offset. Shapes: (Z + 2H, Y + 2H, X + 2H) -> two (Z, Y, X).
    """
    H = p.halo
    shape = tuple(n - 2 * H for n in xp.shape)
    if xp.ndim != 3 or min(shape) < 1:
        raise InputError(f"nlm: need a 3-D block larger than twice the halo {H}, got {tuple(xp.shape)}")
    lo, nb = box_bounds(p)
    interior = tuple(slice(H, H + n) for n in shape)
    w0 = centre_weight(p) if centre else 0.0
    num = xp[interior] * w0
    den = torch.full(shape, w0, dtype=xp.dtype, device=xp.device)
    for t in offsets:
        # reference positions q whose pair (q, q + t) touches the output: bounding box of O and O - t
        a = [min(0, -ti) for ti in t]
        b = [max(n, n - ti) for n, ti in zip(shape, t)]
        if nb:
            src = tuple(slice(H + ai + lo, H + bi + lo + nb - 1) for ai, bi in zip(a, b))
            dst = tuple(slice(s.start + ti, s.stop + ti) for s, ti in zip(src, t))
            e = xp[src] - xp[dst]
            e.mul_(e)
            for dim in (2, 1, 0):
                e = box_sum(e, nb, dim)
        else:  # compat with patch_size 1: skimage's box is empty
            e = torch.zeros([bi - ai for ai, bi in zip(a, b)], dtype=xp.dtype, device=xp.device)
        w = _weights(e, p, nb)
        # q in O, pair (q, q + t): weight w(q) pulls x[q + t] into q ...
        wf = w[tuple(slice(-ai, -ai + n) for ai, n in zip(a, shape))]
        num.addcmul_(wf, xp[tuple(slice(H + ti, H + ti + n) for ti, n in zip(t, shape))])
        den.add_(wf)
        # ... and, by symmetry D(q, t) = D(q + t, -t), pulls x[q] into q + t
        wb = w[tuple(slice(-ti - ai, -ti - ai + n) for ai, ti, n in zip(a, t, shape))]
        num.addcmul_(wb, xp[tuple(slice(H - ti, H - ti + n) for ti, n in zip(t, shape))])
        den.add_(wb)
    return num, den


def as_tensor(x: Any, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Numeric array -> float tensor, refusing what cannot be a volume of intensities."""
    arr = np.asarray(x) if not isinstance(x, torch.Tensor) else x
    kind = arr.dtype.kind if isinstance(arr, np.ndarray) else ("f" if arr.is_floating_point() else "i")
    if isinstance(arr, np.ndarray) and kind not in "biuf":
        raise InputError(f"nlm: input dtype {arr.dtype} is not a real number type")
    t = torch.as_tensor(arr).to(dtype)
    if not torch.isfinite(t).all():
        raise InputError("nlm: input contains NaN or infinite values")
    return t


def nlm(x: Any, patch_size: int = 5, search_radius: int = 6, h: float = 0.1, sigma: float = 0.0,
        compat: str | None = None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
        backend: str = "torch", workers: int = 1) -> torch.Tensor:
    """Fast 3-D non-local means of a whole volume, reflect-padded at its borders.

    Args:
        x: (Z, Y, X) numpy array or tensor, any real dtype; computed in ``dtype``.
        patch_size, search_radius, h, sigma, compat: see :class:`NLMParams`.
        backend: ``"torch"`` (:func:`nlm_padded`) or ``"triton"`` (fused kernel; CUDA, or CPU
            under ``TRITON_INTERPRET=1``).
        workers: CPU threads for the torch backend (offsets shared out, :func:`nlm_padded_parallel`).

    Returns:
        (Z, Y, X) tensor of ``dtype`` on ``device``.

    Example::

        >>> y = nlm(noisy, patch_size=5, search_radius=6, h=0.08)
    """
    p = NLMParams(patch_size, search_radius, h, sigma, compat)  # validates
    xt = as_tensor(x, dtype).to(device)
    if xt.ndim != 3:
        raise InputError(f"nlm: need a 3-D volume (Z, Y, X), got shape {tuple(xt.shape)}")
    if min(xt.shape) < p.patch_size or min(xt.shape) < 2:
        raise InputError(f"nlm: volume {tuple(xt.shape)} is smaller than the patch ({p.patch_size})")
    xp = pad_reflect(xt, p.halo)
    return run_padded(xp, p, backend, workers)


def run_padded(xp: torch.Tensor, p: NLMParams, backend: str = "torch", workers: int = 1) -> torch.Tensor:
    """Dispatch a padded block to a backend (see :func:`nlm_padded`); ``workers`` CPU threads."""
    if backend == "torch":
        if xp.device.type == "cpu":
            return nlm_padded_blocked(xp, p, workers)
        return nlm_padded(xp, p)
    if backend == "triton":
        from .nlm_triton import nlm_padded_triton

        return nlm_padded_triton(xp, p)
    raise InputError(f"denoise.backend must be 'torch', 'triton' or 'auto', got {backend!r}")


def nlm_padded_parallel(xp: torch.Tensor, p: NLMParams, workers: int = 1) -> torch.Tensor:
    """:func:`nlm_padded` with the offsets dealt out to ``workers`` Python threads (CPU cores).

    Each thread sums its share of the offset pairs over the whole block; the partial sums are
    added at the end (no halo is duplicated, unlike cutting the block into slabs). Torch ops
    release the GIL, and independent threads need no barrier per op, unlike torch's intra-op
    threads, which stall on every op when a core is taken by another process. Call with torch's
    intra-op threads set to 1 (see :func:`cpu_threads`). Same result as :func:`nlm_padded` up to
    the order of float additions.

    Shapes: (Z + 2H, Y + 2H, X + 2H) -> (Z, Y, X).
    """
    offsets = half_offsets(p.search_radius)
    workers = max(1, min(int(workers), len(offsets)))
    if workers == 1 or xp.device.type != "cpu":
        return nlm_padded(xp, p)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda k: nlm_sums(xp, p, offsets[k::workers], centre=k == 0), range(workers)))
    num, den = parts[0]
    for n_k, d_k in parts[1:]:
        num.add_(n_k)
        den.add_(d_k)
    return num.div_(den)


def nlm_padded_blocked(xp: torch.Tensor, p: NLMParams, workers: int = 1, block: int = CPU_BLOCK) -> torch.Tensor:
    """CPU NLM of a padded shard in output cubes of edge <= ``block`` (each with its own halo from ``xp``).

    The per-offset temporaries of a cube stay in the CPU caches (a 64^3 float32 array is 1 MiB);
    those of a whole 256^3 shard would stream from memory for every offset. Per voxel the
    arithmetic is the same as one call on the whole shard.

    Shapes: (Z + 2H, Y + 2H, X + 2H) -> (Z, Y, X).
    """
    H = p.halo
    shape = tuple(n - 2 * H for n in xp.shape)
    if max(shape) <= block:
        return nlm_padded_parallel(xp, p, workers)
    out = torch.empty(shape, dtype=xp.dtype)
    # equal parts per axis (96 -> 48 + 48, not 64 + 32: small cubes pay relatively more per offset)
    cuts = [np.linspace(0, n, -(-n // block) + 1).round().astype(int) for n in shape]
    for z0, z1 in zip(cuts[0][:-1], cuts[0][1:]):
        for y0, y1 in zip(cuts[1][:-1], cuts[1][1:]):
            for x0, x1 in zip(cuts[2][:-1], cuts[2][1:]):
                sub = xp[z0:z1 + 2 * H, y0:y1 + 2 * H, x0:x1 + 2 * H]
                out[z0:z1, y0:y1, x0:x1] = nlm_padded_parallel(sub, p, workers)
    return out


def cpu_threads(workers: int = 0, ranks_on_node: int = 1) -> int:
    """Set torch to one intra-op thread; return the worker threads to use (0: this rank's share of the cores)."""
    import os

    torch.set_num_threads(1)
    if workers:
        return int(workers)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, ranks_on_node))
