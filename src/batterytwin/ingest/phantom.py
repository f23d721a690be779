"""Synthetic solid-state lithium-metal cell: a CT image with ground-truth labels.

Layers stack along z (axis 0), from z = 0: current collector, cathode composite (polydisperse
active particles in solid electrolyte, with pores), solid-electrolyte separator, lithium-metal anode
with pits. Redeposited lithium (mossy agglomerates and dendrites) grows from the anode surface
towards low z; with ``frame``/``n_frames`` the dendrites grow frame by frame along fixed paths.

CT image formation: per-phase attenuation, partial-volume blur (Gaussian point-spread), optional
ring artifacts (concentric about the rotation axis z), Poisson (photon counting) and Gaussian noise.

Everything is generated region by region from a fixed object list, so a 1024^3 phantom is written
shard by shard in bounded memory and the result does not depend on how regions are split over MPI
ranks: blur uses an exact halo, and noise is drawn per fixed 64^3 block from a seed derived from
``(seed, frame, block)``.

Example::

    image, labels = make_phantom((48, 48, 48), seed=1)      # float32, uint8
    image.shape, labels.max()                               # ((48, 48, 48), 5 at most)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

import numpy as np
from scipy import ndimage, stats

from ..contracts import CLASSES
from ..errors import InputError

PORE, ELECTROLYTE, LITHIUM, CATHODE, REDEPOSITED, COLLECTOR = range(6)
# Relative linear attenuation: lithium is nearly as transparent as void in X-ray CT, which is what
# makes it hard to segment; redeposited (mossy) lithium carries electrolyte debris, a little denser.
DEFAULT_ATTENUATION = (0.05, 0.45, 0.20, 0.95, 0.30, 1.0)
NOISE_BLOCK = 64


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


# allowed ranges of the scalar parameters: name -> (type, low, high) (inclusive; POSITIVE: low excluded)
RANGES: dict[str, tuple[type, float, float]] = {
    "seed": (int, 0, 2**63 - 1), "frame": (int, 0, math.inf), "n_frames": (int, 1, math.inf),
    "voxel_size_um": (float, 0, math.inf),
    "collector_fraction": (float, 0, 1), "cathode_fraction": (float, 0, 1), "separator_fraction": (float, 0, 1),
    "particle_radius": (float, 0, 1000), "particle_radius_sigma": (float, 0, 10), "active_fraction": (float, 0, 1),
    "cathode_pore_fraction": (float, 0, 1), "separator_pore_fraction": (float, 0, 1),
    "pits_per_10k_vox2": (float, 0, 10_000), "dendrites_per_10k_vox2": (float, 0, 10_000),
    "agglomerates_per_10k_vox2": (float, 0, 10_000), "dendrite_radius": (float, 0, 1000),
    "dendrite_max_length_fraction": (float, 0, 1), "blur_sigma": (float, 0, 100), "noise_sigma": (float, 0, 1e6),
    "photons": (float, 0, 1e12), "ring_amplitude": (float, 0, 1e6), "n_rings": (int, 0, 10_000),
}
POSITIVE = {"voxel_size_um", "particle_radius", "dendrite_radius"}


MAX_VOXELS = 1 << 34  # documented limit of a phantom (2048 x 2048 x 4096): its object list and stores grow with it


@dataclass
class PhantomParams:
    """Parameters of the synthetic cell; lengths in voxels unless named otherwise."""

    shape: tuple[int, int, int] = (48, 48, 48)
    seed: int = 0
    frame: int = 0
    n_frames: int = 1
    voxel_size_um: float = 0.5
    # layer boundaries as fractions of the z extent
    collector_fraction: float = 0.08
    cathode_fraction: float = 0.42
    separator_fraction: float = 0.25
    # cathode composite
    particle_radius: float | None = None  # median radius; default scales with the volume
    particle_radius_sigma: float = 0.3  # log-normal shape (polydispersity)
    active_fraction: float = 0.5
    cathode_pore_fraction: float = 0.06
    separator_pore_fraction: float = 0.01
    # anode and redeposited lithium
    pits_per_10k_vox2: float = 4.0
    dendrites_per_10k_vox2: float = 14.0
    agglomerates_per_10k_vox2: float = 30.0
    dendrite_radius: float = 1.6
    dendrite_max_length_fraction: float = 0.8  # of the separator thickness, at the last frame
    # image formation
    attenuation: tuple[float, ...] = DEFAULT_ATTENUATION
    blur_sigma: float = 0.8
    noise_sigma: float = 0.05
    photons: float = 0.0  # photons per voxel at unit signal; 0 = no Poisson noise
    ring_amplitude: float = 0.0
    n_rings: int = 6

    def __post_init__(self) -> None:
        if not isinstance(self.shape, (list, tuple)) or not all(_is_int(s) for s in self.shape):
            raise InputError(f"phantom: shape must be three integers >= 16, got {self.shape!r}")
        if not isinstance(self.attenuation, (list, tuple)) or not all(_is_real(a) for a in self.attenuation):
            raise InputError(f"phantom: attenuation must be finite numbers, got {self.attenuation!r}")
        for name, (kind, lo, hi) in RANGES.items():
            value = getattr(self, name)
            if value is None and name == "particle_radius":
                continue
            if not (_is_int(value) if kind is int else _is_real(value)) or not lo <= value <= hi or (
                    name in POSITIVE and value == 0):
                low = f"> {lo}" if name in POSITIVE else f">= {lo}"
                rng = f"{low}" + (f" and <= {hi}" if hi != math.inf else "")
                raise InputError(f"phantom: {name} must be {'an integer' if kind is int else 'a finite number'} "
                                 f"{rng}, got {value!r}")
        if self.collector_fraction + self.cathode_fraction + self.separator_fraction > 1:
            raise InputError("phantom: collector_fraction + cathode_fraction + separator_fraction must be <= 1")
        self.shape = tuple(int(s) for s in self.shape)
        self.attenuation = tuple(float(a) for a in self.attenuation)
        if len(self.shape) != 3 or min(self.shape) < 16:
            raise InputError(f"phantom: shape must be three sizes >= 16, got {self.shape}")
        if math.prod(self.shape) > MAX_VOXELS:  # checked before anything is drawn or allocated
            raise InputError(f"phantom: shape {self.shape} has {math.prod(self.shape):,} voxels, above the phantom's "
                             f"limit of {MAX_VOXELS:,} (2^34: {4 * MAX_VOXELS / 2**30:.0f} GiB float32 per output); "
                             "use a smaller shape")
        if not 0 <= self.frame < self.n_frames:
            raise InputError(f"phantom: frame {self.frame} outside 0..n_frames-1 ({self.n_frames})")
        if len(self.attenuation) != len(CLASSES):
            raise InputError(f"phantom: attenuation needs {len(CLASSES)} values, got {len(self.attenuation)}")
        if self.voxel_size_um <= 0:
            raise InputError(f"phantom: voxel_size_um must be > 0, got {self.voxel_size_um}")
        if self.particle_radius is None:
            self.particle_radius = float(np.clip(min(self.shape[1:]) / 10.0, 2.5, 10.0))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PhantomParams":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"phantom: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["attenuation"] = list(self.attenuation)
        return d

    @property
    def layers(self) -> dict[str, tuple[int, int]]:
        """z ranges [start, stop) of the four layers."""
        nz = self.shape[0]
        cuts = np.cumsum([0, self.collector_fraction, self.cathode_fraction, self.separator_fraction])
        z = [int(round(c * nz)) for c in cuts] + [nz]
        return {"current_collector": (z[0], z[1]), "cathode": (z[1], z[2]),
                "separator": (z[2], z[3]), "anode": (z[3], z[4])}


@dataclass
class _Spheres:
    centres: np.ndarray  # [n, 3] float (z, y, x)
    radii: np.ndarray  # [n]
    label: int
    z_range: tuple[int, int]  # labels only set inside this slab


@dataclass
class _Capsules:
    a: np.ndarray  # [n, 3] segment starts
    b: np.ndarray  # [n, 3] segment ends
    radii: np.ndarray  # [n]
    label: int
    z_range: tuple[int, int]


@dataclass
class CellGeometry:
    """The fixed object list of one phantom frame (drawn once, rasterised region by region)."""

    params: PhantomParams
    objects: list = field(default_factory=list)  # painted in order: later objects win

    @classmethod
    def build(cls, p: PhantomParams) -> "CellGeometry":
        rng = np.random.default_rng([p.seed, 0x5EED])  # geometry is the same for every frame
        nz, ny, nx = p.shape
        area = ny * nx
        lay = p.layers
        objects: list = []

        def spheres(z_range, fraction, median_radius, sigma, label):
            # Centres also fall within a margin outside the slab and the volume, so that coverage
            # is uniform right up to the slab faces (spheres are clipped to the slab when painted).
            m = 2.0 * median_radius
            lo, hi = np.array([z_range[0] - m, -m, -m]), np.array([z_range[1] + m, ny + m, nx + m])
            volume = float(np.prod(hi - lo))
            mean_v = 4 / 3 * math.pi * median_radius**3 * math.exp(4.5 * sigma**2)
            # Boolean-model inversion: random overlapping spheres cover 1 - exp(-n v) of space.
            n = rng.poisson(-math.log(1 - min(fraction, 0.95)) * volume / mean_v) if fraction > 0 else 0
            centres = rng.uniform(lo, hi, (n, 3))
            radii = median_radius * np.exp(sigma * rng.standard_normal(n))
            return _Spheres(centres, radii, label, z_range)

        r = p.particle_radius
        cath, sep, anode = lay["cathode"], lay["separator"], lay["anode"]
        objects.append(spheres(cath, p.cathode_pore_fraction, 0.5 * r, 0.3, PORE))
        objects.append(spheres(cath, p.active_fraction, r, p.particle_radius_sigma, CATHODE))
        objects.append(spheres(sep, p.separator_pore_fraction, 0.4 * r, 0.3, PORE))
        # pits: voids carved into the anode at its surface
        n_pits = rng.poisson(p.pits_per_10k_vox2 * area / 1e4)
        pit_c = np.column_stack([anode[0] + rng.uniform(0, 0.5 * r, n_pits), rng.uniform(0, ny, n_pits),
                                 rng.uniform(0, nx, n_pits)])
        objects.append(_Spheres(pit_c, r * rng.uniform(0.4, 0.9, n_pits), PORE, anode))
        growth = (p.frame + 1) / p.n_frames
        objects.extend(_redeposits(rng, p, growth))
        return cls(p, objects)

    def labels(self, region: Sequence[slice]) -> np.ndarray:
        """Ground-truth labels (uint8) of ``region``; coordinates outside the volume are clipped."""
        coords = [np.clip(np.arange(s.start, s.stop), 0, n - 1) for s, n in zip(region, self.params.shape)]
        zz = coords[0]
        out = np.empty([len(c) for c in coords], np.uint8)
        lay = self.params.layers
        base = np.full(len(zz), LITHIUM, np.uint8)
        base[zz < lay["separator"][1]] = ELECTROLYTE
        base[zz < lay["cathode"][0]] = COLLECTOR
        out[:] = base[:, None, None]
        for obj in self.objects:
            _paint(out, coords, obj)
        return out


def _redeposits(rng: np.random.Generator, p: PhantomParams, growth: float) -> list:
    """Mossy agglomerates at the anode surface and dendrites growing into the separator."""
    nz, ny, nx = p.shape
    area = ny * nx
    sep0, anode0 = p.layers["separator"][0], p.layers["anode"][0]
    grow_zone = (p.layers["cathode"][0], anode0)
    # dendrites: fixed random paths, truncated at the length reached in this frame
    n_d = max(1, rng.poisson(p.dendrites_per_10k_vox2 * area / 1e4))
    max_len = p.dendrite_max_length_fraction * (anode0 - sep0)
    step = max(1.0, p.dendrite_radius)
    n_steps = max(1, int(math.ceil(max_len / step)))
    a_list, b_list, r_list = [], [], []
    for _ in range(n_d):
        length = max_len * rng.uniform(0.4, 1.0) * growth
        start = np.array([anode0 + 0.5, rng.uniform(0, ny), rng.uniform(0, nx)])
        direction = np.array([-1.0, *rng.normal(0, 0.35, 2)])
        pos, travelled = start, 0.0
        jitter = rng.normal(0, 0.35, (n_steps, 2))  # drawn in full so paths do not depend on growth
        for k in range(n_steps):
            if travelled >= length:
                break
            direction = direction + np.array([0.0, *jitter[k]]) * 0.5
            direction[0] = -abs(direction[0]) - 0.5
            d = direction / np.linalg.norm(direction) * step
            nxt = pos + d
            a_list.append(pos.copy())
            b_list.append(nxt.copy())
            taper = 1.0 - 0.5 * travelled / max(max_len, 1e-9)
            r_list.append(p.dendrite_radius * taper)
            pos, travelled = nxt, travelled + step
    caps = _Capsules(np.array(a_list).reshape(-1, 3), np.array(b_list).reshape(-1, 3), np.array(r_list),
                     REDEPOSITED, grow_zone)
    # agglomerates: clusters of small spheres sitting on the anode surface, growing with time
    n_a = rng.poisson(p.agglomerates_per_10k_vox2 * area / 1e4)
    centres = np.column_stack([anode0 - rng.uniform(0, 1.5, n_a), rng.uniform(0, ny, n_a), rng.uniform(0, nx, n_a)])
    radii = rng.uniform(1.5, 3.5, n_a) * (0.5 + 0.5 * growth)
    return [caps, _Spheres(centres, radii, REDEPOSITED, grow_zone)]


def _bbox_hits(lo: np.ndarray, hi: np.ndarray, coords: list[np.ndarray]) -> np.ndarray:
    """Objects whose bounding boxes [lo, hi] may meet the voxels (centres c + 0.5) of ``coords``."""
    rmin = np.array([c.min() for c in coords]) - 1.0
    rmax = np.array([c.max() for c in coords]) + 1.0
    return np.all((hi >= rmin) & (lo <= rmax), axis=1)


def _paint(out: np.ndarray, coords: list[np.ndarray], obj) -> None:
    z0, z1 = obj.z_range
    if isinstance(obj, _Spheres):
        lo, hi = obj.centres - obj.radii[:, None], obj.centres + obj.radii[:, None]
    else:
        lo = np.minimum(obj.a, obj.b) - obj.radii[:, None]
        hi = np.maximum(obj.a, obj.b) + obj.radii[:, None]
    if len(lo) == 0:
        return
    hits = np.flatnonzero(_bbox_hits(lo, hi, coords))
    for i in hits:
        # index window of the region's coordinates inside the object's bounding box
        sel = [np.flatnonzero((c >= lo[i, k] - 0.5) & (c <= hi[i, k] + 0.5)) for k, c in enumerate(coords)]
        if any(len(s) == 0 for s in sel):
            continue
        sel[0] = sel[0][(coords[0][sel[0]] >= z0) & (coords[0][sel[0]] < z1)]
        if len(sel[0]) == 0:
            continue
        z = coords[0][sel[0]][:, None, None] + 0.5
        y = coords[1][sel[1]][None, :, None] + 0.5
        x = coords[2][sel[2]][None, None, :] + 0.5
        if isinstance(obj, _Spheres):
            c = obj.centres[i]
            inside = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= obj.radii[i] ** 2
        else:
            a, ab = obj.a[i], obj.b[i] - obj.a[i]
            t = ((z - a[0]) * ab[0] + (y - a[1]) * ab[1] + (x - a[2]) * ab[2]) / max(ab @ ab, 1e-12)
            t = np.clip(t, 0.0, 1.0)
            d2 = (z - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (x - a[2] - t * ab[2]) ** 2
            inside = d2 <= obj.radii[i] ** 2
        view = out[np.ix_(*sel)]
        view[inside] = obj.label
        out[np.ix_(*sel)] = view


def blur_halo(p: PhantomParams) -> int:
    """Halo (voxels) that makes region-wise blurring equal to whole-volume blurring."""
    return int(4.0 * p.blur_sigma + 0.5) if p.blur_sigma > 0 else 0


def render_region(geometry: CellGeometry, region: Sequence[slice]) -> dict[str, np.ndarray]:
    """Labels, noise-free image and noisy CT image of ``region`` (a tuple of 3 slices).

    Returns:
        dict with ``labels`` (uint8), ``clean`` (float32: attenuation after blur) and ``image``
        (float32: clean + rings + noise), each of the region's shape.
    """
    p = geometry.params
    halo = blur_halo(p)
    padded = tuple(slice(s.start - halo, s.stop + halo) for s in region)
    labels_padded = geometry.labels(padded)  # clipped coordinates = 'nearest' at the volume border
    att = np.asarray(p.attenuation, np.float32)[labels_padded]
    if p.blur_sigma > 0:
        att = ndimage.gaussian_filter(att, p.blur_sigma, mode="nearest", truncate=4.0)
    inner = tuple(slice(halo, halo + (s.stop - s.start)) for s in region)
    clean = np.ascontiguousarray(att[inner], dtype=np.float32)
    labels = np.ascontiguousarray(labels_padded[inner])
    image = clean + _rings(p, region) if p.ring_amplitude else clean.copy()
    image = _add_noise(p, region, image)
    return {"labels": labels, "clean": clean, "image": image.astype(np.float32)}


def _rings(p: PhantomParams, region: Sequence[slice]) -> np.ndarray:
    """Ring artifacts: concentric about the rotation axis (z), the same in every slice."""
    _, ny, nx = p.shape
    rng = np.random.default_rng([p.seed, 0x12136])
    radii = rng.uniform(0.05, 0.7, p.n_rings) * 0.5 * min(ny, nx)
    amps = rng.uniform(-1, 1, p.n_rings) * p.ring_amplitude
    y = np.arange(region[1].start, region[1].stop)[:, None] + 0.5 - ny / 2
    x = np.arange(region[2].start, region[2].stop)[None, :] + 0.5 - nx / 2
    r = np.hypot(y, x)
    ring = sum(a * np.exp(-0.5 * ((r - rk) / 0.7) ** 2) for a, rk in zip(amps, radii))
    return np.broadcast_to(ring[None].astype(np.float32), tuple(s.stop - s.start for s in region))


def _add_noise(p: PhantomParams, region: Sequence[slice], image: np.ndarray) -> np.ndarray:
    """Poisson + Gaussian noise drawn per fixed 64^3 block: independent of the region split."""
    if p.noise_sigma <= 0 and p.photons <= 0:
        return image
    out = image.copy()
    starts = [range((s.start // NOISE_BLOCK) * NOISE_BLOCK, s.stop, NOISE_BLOCK) for s in region]
    for bz in starts[0]:
        for by in starts[1]:
            for bx in starts[2]:
                rng = np.random.default_rng([p.seed, p.frame, bz, by, bx, 0xC7])
                block_shape = (NOISE_BLOCK,) * 3
                gauss = rng.standard_normal(block_shape, dtype=np.float32)
                uniform = rng.random(block_shape, dtype=np.float32) if p.photons > 0 else None
                ov = [slice(max(s.start, b), min(s.stop, b + NOISE_BLOCK)) for s, b in zip(region, (bz, by, bx))]
                dst = tuple(slice(o.start - s.start, o.stop - s.start) for o, s in zip(ov, region))
                src = tuple(slice(o.start - b, o.stop - b) for o, b in zip(ov, (bz, by, bx)))
                val = out[dst]
                if p.photons > 0:
                    # photon counting: exact Poisson(photons * signal) by its inverse CDF of a
                    # uniform drawn per block, so the draw does not depend on the region split
                    lam = np.maximum(val, 0) * p.photons
                    val = stats.poisson.ppf(uniform[src], lam).astype(np.float32) / p.photons
                out[dst] = val + p.noise_sigma * gauss[src]
    return out


def make_phantom(shape: Sequence[int] = (48, 48, 48), seed: int = 0, with_clean: bool = False, **params: Any):
    """Whole phantom in memory (small sizes; use the ingest driver for large ones).

    Args:
        shape: (z, y, x), each >= 16.
        seed: geometry and noise seed.
        with_clean: also return the noise-free image.
        **params: any :class:`PhantomParams` field.

    Returns:
        ``(image float32 [z,y,x], labels uint8 [z,y,x])``, or ``(image, labels, clean)``.
    """
    p = PhantomParams.from_dict({"shape": tuple(shape), "seed": seed, **params})
    out = render_region(CellGeometry.build(p), tuple(slice(0, n) for n in p.shape))
    if with_clean:
        return out["image"], out["labels"], out["clean"]
    return out["image"], out["labels"]
