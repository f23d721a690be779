"""Domain-randomised training cells (the SynthSeg idea): every volume drawn with new contrast, artefacts and geometry.

Billot et al. (Medical Image Analysis 2023) train on synthetic images whose contrast is drawn at
random, so that the network learns shapes and relations instead of one scanner's grey values. Here
each generated volume is a layered solid-state lithium-metal cell (along z: current collector,
cathode composite, separator, lithium anode with pits, redeposited lithium at the anode surface and
as dendrites into the separator), drawn from the ranges of
:class:`~batterytwin.segment.config.RandomiseSettings`:

contrast
    per-class attenuation (the classes of ``order`` increase, at least ``min_contrast`` apart; ranges
    may overlap), partial-volume blur, noise of a drawn type (Gaussian, Poisson photon counting,
    spatially correlated) and level, ring and streak artefacts, beam-hardening cupping, a smooth
    multiplicative bias field;
geometry
    voxel size (a multiplier of every length), layer thicknesses, anode roughness, particle shape
    (spheres, ellipsoids, irregular lumps), size distribution and packing fraction, pores, pit depth,
    dendrite count, length, branching and thickness (down to 1 voxel), agglomerate count and size.

Volume ``v`` is drawn from ``default_rng([seed, v, TAG])`` alone. :class:`RandomisedPatches` serves
the global patch stream like :class:`~batterytwin.segment.data.PatchDataset`: item ``i`` comes from
volume ``i // patches_per_volume`` and its patch and augmentation from ``default_rng([seed, i])``,
so 2 ranks see what 1 rank sees and a resumed run what an uninterrupted one sees. Each volume is
normalised by its own whole-volume percentiles (:func:`~batterytwin.segment.data.intensity_range`),
as a scan is at inference, and patches are cut class-aware (``class_balance``).

Example::

    cfg = RandomiseSettings(fraction=1.0)
    image, labels, info = generate_volume(cfg, seed=0, index=3)   # float32, uint8, dict
    ds = RandomisedPatches(cfg, patch=(32, 32, 32), seed=0)
    img, lab = ds[0]              # float32 [1, 32, 32, 32], int64 [32, 32, 32]
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from scipy import ndimage

from ..config import as_settings
from ..contracts import CLASSES
from ..errors import InputError
from . import data as D
from .config import AugmentSettings, RandomiseSettings

TAG = 0x5A17  # stream of the generated volumes
MIX_TAG = 0x313C  # stream of the "randomised or store" draw of each patch
ID = {name: k for k, name in CLASSES.items()}
PORE, SE, LI, CAM, REDEP, CC = (ID[n] for n in ("pore", "solid_electrolyte", "lithium_metal", "cathode_active",
                                                  "redeposited_lithium", "current_collector"))


def _u(rng: np.random.Generator, span: Sequence[float]) -> float:
    return float(rng.uniform(span[0], span[1]))


def _choice(rng: np.random.Generator, weights: Mapping[str, float]) -> str:
    names = [k for k, w in weights.items() if w > 0]
    w = np.array([weights[k] for k in names], np.float64)
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def randomise_settings(cfg: RandomiseSettings | Mapping[str, Any]) -> RandomiseSettings:
    """The ``train.randomise`` section as :class:`~batterytwin.segment.config.RandomiseSettings` (a mapping is
    validated)."""
    return as_settings(RandomiseSettings, cfg, "segment.train.randomise")


def draw_attenuation(cfg: RandomiseSettings | Mapping[str, Any], rng: np.random.Generator) -> dict[int, float]:
    """Per-class attenuation: each class from its range; the classes of ``order`` sorted and spaced.

    The values drawn for the classes of ``order`` are sorted and given to them in that order, then
    pushed up where two are closer than ``min_contrast``, so the physical order always holds while
    the ranges overlap.
    """
    cfg = randomise_settings(cfg)
    values = {name: _u(rng, span) for name, span in cfg.attenuation.items()}
    chain = list(cfg.order)
    drawn = sorted(values[n] for n in chain)
    for k in range(1, len(drawn)):
        drawn[k] = max(drawn[k], drawn[k - 1] + cfg.min_contrast)
    values.update(zip(chain, drawn))
    return {ID[n]: v for n, v in values.items()}


# ------------------------------------------------------------------------------------------ shapes

def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


class _Painter:
    """Paints solid shapes into a label volume, each inside its bounding box (voxel centres at i + 0.5)."""

    def __init__(self, labels: np.ndarray):
        self.labels = labels

    def _box(self, centre, reach):
        lo = [max(0, int(math.floor(c - reach))) for c in centre]
        hi = [min(n, int(math.ceil(c + reach)) + 1) for c, n in zip(centre, self.labels.shape)]
        if any(h <= l for l, h in zip(lo, hi)):
            return None, None
        d = np.stack(np.meshgrid(*(np.arange(l, h) + 0.5 - c for l, h, c in zip(lo, hi, centre)),
                                 indexing="ij"), -1)
        return tuple(slice(l, h) for l, h in zip(lo, hi)), d

    def _set(self, box, inside, label, where) -> None:
        view = self.labels[box]
        if where is not None:
            inside = inside & np.isin(view, where)
        view[inside] = label

    def ellipsoid(self, centre, semi, rot, label, where=None) -> None:
        box, d = self._box(centre, max(semi) + 1)
        if box is not None:
            body = d @ rot
            self._set(box, ((body / np.asarray(semi)) ** 2).sum(-1) <= 1.0, label, where)

    def lump(self, centre, radius, dirs, amps, label, where=None) -> None:
        """An irregular particle: a ball whose radius varies with direction, r (1 + sum_j a_j (u . d_j))."""
        reach = radius * (1 + np.abs(amps).sum()) + 1
        box, d = self._box(centre, reach)
        if box is not None:
            dist = np.sqrt((d ** 2).sum(-1))
            u = d / np.maximum(dist, 1e-9)[..., None]
            cos = u @ dirs.T  # [..., j]
            r = radius * (1 + (amps[:2] * cos[..., :2]).sum(-1) + (amps[2:] * (1.5 * cos[..., 2:] ** 2 - 0.5)).sum(-1))
            self._set(box, dist <= r, label, where)

    def ball(self, centre, radius, label, where=None) -> None:
        box, d = self._box(centre, radius + 1)
        if box is not None:
            self._set(box, (d ** 2).sum(-1) <= radius ** 2, label, where)

    def capsule(self, a, b, radius, label, where=None) -> None:
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        box, d = self._box((a + b) / 2, np.linalg.norm(b - a) / 2 + radius + 1)
        if box is not None:
            ab = b - a
            rel = d + ((a + b) / 2 - a)  # coordinates relative to a
            t = np.clip((rel @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
            self._set(box, ((rel - t[..., None] * ab) ** 2).sum(-1) <= radius ** 2, label, where)


def _count(rng: np.random.Generator, fraction: float, region_voxels: float, mean_volume: float) -> int:
    """Objects of mean volume ``mean_volume`` that cover ``fraction`` of a region (Boolean model)."""
    if fraction <= 0 or region_voxels <= 0:
        return 0
    return int(rng.poisson(-math.log(1 - min(fraction, 0.95)) * region_voxels / max(mean_volume, 1e-9)))


def draw_labels(cfg: RandomiseSettings, shape: Sequence[int], rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """The label volume of one randomised cell, and the drawn geometry parameters."""
    nz, ny, nx = (int(s) for s in shape)
    scale = _u(rng, cfg.length_scale)
    f_cc, f_cat, f_sep = (_u(rng, span)
                          for span in (cfg.collector_fraction, cfg.cathode_fraction, cfg.separator_fraction))
    z_cc = max(1, round(f_cc * nz))
    z_cat = z_cc + max(2, round(f_cat * nz))
    z_sep = min(nz - 2, z_cat + max(2, round(f_sep * nz)))
    rough = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), 2.0 + 2.0 * rng.random(), mode="wrap")
    rough *= _u(rng, cfg.interface_roughness) / (rough.std() + 1e-12)
    anode_top = z_sep + rough  # per (y, x)
    zc = np.arange(nz)[:, None, None] + 0.5
    labels = np.full((nz, ny, nx), SE, np.uint8)
    labels[zc >= anode_top[None]] = LI
    labels[:z_cc] = CC
    paint = _Painter(labels)
    area = ny * nx

    # cathode composite: particles of one drawn shape family, log-normal radii, packed to a drawn fraction
    shape_kind = _choice(rng, cfg.particle_shapes)
    r_med = _u(rng, cfg.particle_radius) * scale
    sigma = _u(rng, cfg.particle_radius_sigma)
    active = _u(rng, cfg.active_fraction)
    cat_vox = (z_cat - z_cc) * area
    n_part = _count(rng, active, cat_vox + 4 * r_med * area, 4 / 3 * math.pi * r_med**3 * math.exp(4.5 * sigma**2))
    cat_region = np.zeros(labels.shape, np.uint8)  # painted separately, then clipped to the cathode slab
    cpaint = _Painter(cat_region)
    for _ in range(n_part):
        c = (rng.uniform(z_cc - 2 * r_med, z_cat + 2 * r_med), rng.uniform(0, ny), rng.uniform(0, nx))
        r = r_med * math.exp(sigma * rng.standard_normal())
        if shape_kind == "sphere":
            cpaint.ball(c, r, 1)
        elif shape_kind == "ellipsoid":
            ax = r * np.array([1.0, rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0)]) / 0.8
            cpaint.ellipsoid(c, np.maximum(ax, 0.7), _rotation(rng), 1)
        else:
            dirs = rng.standard_normal((4, 3))
            dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
            cpaint.lump(c, r, dirs, rng.uniform(-0.3, 0.3, 4), 1)
    in_cat = (np.arange(nz) >= z_cc) & (np.arange(nz) < z_cat)
    labels[(cat_region == 1) & in_cat[:, None, None]] = CAM

    # pores: small voids in the composite's electrolyte and in the separator
    pr = cfg.pore_radius
    for (z0, z1), frac in (((z_cc, z_cat), _u(rng, cfg.cathode_pore_fraction)),
                           ((z_cat, z_sep), _u(rng, cfg.separator_pore_fraction))):
        mean_r = 0.5 * (pr[0] + pr[1]) * scale
        for _ in range(_count(rng, frac, (z1 - z0) * area, 4 / 3 * math.pi * mean_r**3)):
            paint.ball((rng.uniform(z0, z1), rng.uniform(0, ny), rng.uniform(0, nx)), _u(rng, pr) * scale, PORE,
                       where=(SE,))

    # pits carved into the anode at its surface
    anode_thick = max(1.0, nz - z_sep)
    depth = _u(rng, cfg.pit_depth) * anode_thick
    for _ in range(int(rng.poisson(_u(rng, cfg.pits_per_10k_vox2) * area / 1e4))):
        y, x = rng.uniform(0, ny), rng.uniform(0, nx)
        top = float(anode_top[int(y), int(x)])
        r = max(0.8, rng.uniform(0.5, 1.0) * max(depth, r_med))
        paint.ellipsoid((top + depth - r * 0.6, y, x), (max(depth, 1.0), r, r * rng.uniform(0.7, 1.3)),
                        _rotation(rng) if rng.random() < 0.5 else np.eye(3), PORE, where=(LI,))

    # redeposited lithium: mossy agglomerates at the surface, dendrites (with branches) into the separator
    agg_r = cfg.agglomerate_radius
    for _ in range(int(rng.poisson(_u(rng, cfg.agglomerates_per_10k_vox2) * area / 1e4))):
        y, x = rng.uniform(0, ny), rng.uniform(0, nx)
        top = float(anode_top[int(y), int(x)])
        r0 = _u(rng, agg_r) * scale
        for _ in range(int(rng.integers(1, 5))):
            c = (top - rng.uniform(-0.3, 1.0) * r0, y + rng.normal(0, r0), x + rng.normal(0, r0))
            paint.ball(c, max(0.6, r0 * rng.uniform(0.5, 1.0)), REDEP, where=(SE, PORE, LI))
    sep_thick = max(1.0, float(z_sep - z_cat))
    branch_p = _u(rng, cfg.dendrite_branching)
    for _ in range(max(1, int(rng.poisson(_u(rng, cfg.dendrites_per_10k_vox2) * area / 1e4)))):
        y, x = rng.uniform(0, ny), rng.uniform(0, nx)
        radius = _u(rng, cfg.dendrite_radius)
        tips = [(np.array([float(anode_top[int(y), int(x)]) + 0.5, y, x]), np.array([-1.0, *rng.normal(0, 0.4, 2)]),
                 _u(rng, cfg.dendrite_length) * sep_thick, radius)]
        n_seg = 0
        while tips and n_seg < 400:
            pos, direction, left, rad = tips.pop()
            step = max(1.0, rad)
            while left > 0 and n_seg < 400:
                direction = direction + np.array([0.0, *rng.normal(0, 0.3, 2)])
                direction[0] = -abs(direction[0]) - 0.3
                nxt = pos + direction / np.linalg.norm(direction) * step
                paint.capsule(pos, nxt, rad, REDEP, where=(SE, PORE))
                n_seg += 1
                pos, left = nxt, left - step
                if pos[0] < z_cat:
                    break
                if rng.random() < branch_p:
                    side = direction + np.array([0.0, *rng.normal(0, 1.0, 2)])
                    tips.append((pos.copy(), side, left * rng.uniform(0.3, 0.8), max(0.5, 0.7 * rad)))
    info = {"length_scale": scale, "layers_z": [z_cc, z_cat, z_sep], "particle_shape": shape_kind,
            "particle_radius": r_med, "active_fraction": active}
    return labels, info


# ------------------------------------------------------------------------------------------ image

def form_image(cfg: RandomiseSettings, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A CT-like image of ``labels`` with drawn contrast, blur, bias, cupping, rings, streaks and noise."""
    att = draw_attenuation(cfg, rng)
    lut = np.zeros(256, np.float32)
    for k, v in att.items():
        lut[k] = v
    span = max(att.values()) - min(att.values())
    image = lut[labels]
    sigma = _u(rng, cfg.blur_sigma) * rng.uniform(0.8, 1.2, 3)  # slightly anisotropic point spread
    image = ndimage.gaussian_filter(image, sigma, mode="nearest")
    nz, ny, nx = labels.shape
    # smooth multiplicative bias field and beam-hardening cupping (darker towards the slice centre)
    amp = _u(rng, cfg.bias_field)
    if amp > 0:
        low = ndimage.zoom(rng.standard_normal((3, 3, 3)), [n / 3 for n in labels.shape], order=3, mode="nearest")
        image = image * (1 + amp * low[:nz, :ny, :nx] / (np.abs(low).max() + 1e-9)).astype(np.float32)
    cy, cx = ny / 2 + rng.normal(0, ny / 8), nx / 2 + rng.normal(0, nx / 8)
    yy, xx = np.meshgrid(np.arange(ny) + 0.5 - cy, np.arange(nx) + 0.5 - cx, indexing="ij")
    r = np.hypot(yy, xx)
    big_r = 0.5 * math.hypot(ny, nx) * rng.uniform(0.8, 1.5)
    cup = _u(rng, cfg.cupping)
    image = image * (1 - cup * np.clip(1 - (r / big_r) ** 2, 0, 1)).astype(np.float32)[None]
    if rng.random() < cfg.ring_probability:  # concentric about the rotation axis z
        n_rings = int(rng.integers(2, 10))
        ring = sum(rng.uniform(-1, 1) * np.exp(-0.5 * ((r - rk) / rng.uniform(0.4, 1.0)) ** 2)
                   for rk in rng.uniform(0, 0.7 * max(ny, nx), n_rings))
        image = image + (_u(rng, cfg.ring_amplitude) * span * ring).astype(np.float32)[None]
    if rng.random() < cfg.streak_probability:  # straight streaks across slabs of slices
        for _ in range(int(rng.integers(1, 4))):
            theta = rng.uniform(0, math.pi)
            dist = np.abs(yy * math.cos(theta) - xx * math.sin(theta) - rng.normal(0, ny / 4))
            streak = np.exp(-0.5 * (dist / rng.uniform(0.5, 1.5)) ** 2) * rng.choice([-1.0, 1.0])
            z0 = int(rng.integers(0, nz))
            z1 = min(nz, z0 + int(rng.integers(1, max(2, nz // 2))))
            image[z0:z1] += (_u(rng, cfg.streak_amplitude) * span * streak).astype(np.float32)[None]
    kind = _choice(rng, cfg.noise)
    level = _u(rng, cfg.noise_level) * span
    if level > 0:
        if kind == "poisson":  # photon counting: the std is `level` at the mean signal
            mean = max(float(np.mean(np.abs(image))), 1e-6)
            photons = mean / level**2
            image = (rng.poisson(np.maximum(image, 0) * photons) / photons).astype(np.float32)
        elif kind == "correlated":  # grainy, like reconstructed noise
            noise = ndimage.gaussian_filter(rng.standard_normal(labels.shape, dtype=np.float32), rng.uniform(0.5, 1.2))
            image = image + level * noise / (noise.std() + 1e-9)
        else:
            image = image + level * rng.standard_normal(labels.shape, dtype=np.float32)
    info = {"attenuation": {CLASSES[k]: v for k, v in sorted(att.items())}, "blur_sigma": sigma.tolist(),
            "noise": kind, "noise_level": level, "bias_field": amp, "cupping": cup}
    return image.astype(np.float32), info


def generate_volume(cfg: RandomiseSettings | Mapping[str, Any], seed: int, index: int,
                    shape: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Randomised cell ``index`` of the stream ``seed``: ``(image float32, labels uint8, drawn parameters)``."""
    cfg = randomise_settings(cfg)
    rng = np.random.default_rng([int(seed), int(index), TAG])
    labels, geo = draw_labels(cfg, shape or cfg.volume_size, rng)
    image, img = form_image(cfg, labels, rng)
    return image, labels, {**geo, **img}


class RandomisedPatches(torch.utils.data.Dataset):
    """The global patch stream cut from randomised cells: item ``i`` from cell ``i // patches_per_volume``.

    Args:
        cfg: the ``train.randomise`` section (a mapping is validated).
        patch: patch edge (z, y, x); at most ``volume_size``.
        class_ids: run class id of each generator class name (default: the contract's ids).
        class_balance, augment_cfg: as :class:`~batterytwin.segment.data.PatchDataset`.

    Returns:
        ``(image float32 [1, pz, py, px], labels int64 [pz, py, px])``.
    """

    def __init__(self, cfg: RandomiseSettings | Mapping[str, Any], patch: Sequence[int], seed: int = 0,
                 class_ids: Mapping[str, int] | None = None, class_balance: float = 1.0,
                 augment_cfg: AugmentSettings | Mapping[str, Any] | None = None, length: int = 2**62, cache: int = 2):
        self.cfg = randomise_settings(cfg)
        self.patch = tuple(int(p) for p in patch)
        self.seed, self.class_balance, self.augment_cfg = int(seed), float(class_balance), augment_cfg
        self.length, self.cache_size = length, cache
        size = list(self.cfg.volume_size)
        if any(p > s for p, s in zip(self.patch, size)):
            raise InputError(f"segment.train.randomise.volume_size: {size} is smaller than the patch {list(self.patch)}")
        ids = dict(class_ids) if class_ids is not None else {n: k for k, n in CLASSES.items()}
        missing = [n for n in CLASSES.values() if n not in ids]
        if missing:
            raise InputError(f"segment.train.randomise: the run's classes lack {missing}; randomised phantoms "
                             f"need the classes {list(CLASSES.values())} (set randomise.fraction: 0)")
        self.n_classes = max(len(ids), max(ids.values()) + 1)
        self.lut = np.zeros(256, np.uint8)
        for k, name in CLASSES.items():
            self.lut[k] = ids[name]
        self._cache: OrderedDict[int, D.PatchDataset] = OrderedDict()

    def __len__(self) -> int:
        return self.length

    def volume(self, v: int) -> D.PatchDataset:
        """The patch sampler over cell ``v`` (generated on first use, a few cells kept)."""
        if v in self._cache:
            self._cache.move_to_end(v)
            return self._cache[v]
        image, labels, _ = generate_volume(self.cfg, self.seed, v)
        src = D.PatchSource.open(image, self.lut[labels], self.n_classes, name=f"randomised cell {v}")
        ds = D.PatchDataset([src], self.patch, seed=self.seed, class_balance=self.class_balance,
                            augment_cfg=self.augment_cfg)
        self._cache[v] = ds
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return ds

    def __getitem__(self, i: int):
        return self.volume(int(i) // self.cfg.patches_per_volume)[int(i)]


class MixedPatches(torch.utils.data.Dataset):
    """Item ``i`` from the randomised stream with probability ``fraction`` (drawn from ``(seed, i)``), else the stores'."""

    def __init__(self, stores: torch.utils.data.Dataset | None, randomised: RandomisedPatches, fraction: float,
                 seed: int = 0, length: int = 2**62):
        if stores is None and fraction < 1:
            raise InputError("segment.train.randomise.fraction: < 1 needs training label stores")
        self.stores, self.randomised, self.fraction, self.seed, self.length = (stores, randomised, float(fraction),
                                                                              int(seed), length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        if self.fraction >= 1 or np.random.default_rng([self.seed, int(i), MIX_TAG]).random() < self.fraction:
            return self.randomised[i]
        return self.stores[i]
