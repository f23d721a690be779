"""An independent CT forward model: a cell the project did not draw, imaged the way a scanner images it.

Nothing here comes from :mod:`batterytwin.ingest.phantom` (DESIGN.md, "Validation against what we did
not make"): the geometry is drawn by other code and other rules, the attenuation contrasts are
other values, and the image is formed by tomography rather than blur + noise:

geometry (layers along z, like a cross-section through a solid-state lithium-metal cell)
    current collector (5) | cathode composite: randomly oriented ellipsoids of cathode active
    material (3) packed to ``active_fraction`` in solid electrolyte (1) with small pores (0) |
    solid-electrolyte separator (1) with a few voids | lithium-metal anode (2); redeposited lithium
    (4) as agglomerates at the anode/separator interface and thin dendrite-like tubes (random walks
    from the anode into the separator).
image formation, per z slice
    relative attenuation -> parallel-beam line integrals (``skimage.transform.radon``) -> optional
    detector blur -> Poisson photon counts (Beer-Lambert, ``photons`` incident per ray) ->
    -log(counts / I0) -> filtered back-projection (``iradon``, ramp filter) -> crop to the volume
    -> back to relative attenuation units.

Returns ``(image float32, labels uint8)`` with the class ids of :data:`batterytwin.contracts.CLASSES`.
Seeded: the same arguments give the same arrays. 64^3 takes a few seconds on one core.

Writers: :func:`write_tiff_stack` (a folder of per-slice .tif), :func:`write_dxchange` (HDF5,
``/exchange/data``) and :func:`write_sparse_labels` (a multi-page TIFF where only a few slices
along one axis are labelled and every other voxel is 255).

Example::

    from tests.ctforward import forward_volume, write_tiff_stack, write_sparse_labels
    image, labels = forward_volume((64, 64, 64), seed=3)
    write_tiff_stack(image, "data/scan/")
    write_sparse_labels(labels, "data/scan_labels.tif", n_slices=4, axis=2)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from batterytwin.contracts import CLASSES, IGNORE_LABEL

# class ids by name (the contract's, not the phantom's constants)
ID = {name: k for k, name in CLASSES.items()}
PORE, SE, LI, CAM, REDEP, CC = (ID[n] for n in ("pore", "solid_electrolyte", "lithium_metal", "cathode_active",
                                                  "redeposited_lithium", "current_collector"))

# Relative attenuation per class id: a stainless/copper-like collector far brighter than the cathode,
# a lower-contrast oxide cathode, a denser sulfide-like electrolyte than the phantom's, and lithium
# (metal and redeposited) close to void. Deliberately unlike the phantom's (0.05, 0.45, 0.20, 0.95, 0.30, 1.0).
ATTENUATION = {PORE: 0.0, SE: 0.34, LI: 0.11, CAM: 0.78, REDEP: 0.19, CC: 1.45}


@dataclass
class ForwardParams:
    """Geometry (fractions of the z extent, lengths in voxels) and scanner settings."""

    collector_fraction: float = 0.07
    cathode_fraction: float = 0.46
    separator_fraction: float = 0.20          # the anode takes the rest
    active_fraction: float = 0.55             # cathode active volume fraction in the composite
    radius_range: tuple[float, float] = (2.5, 6.0)   # ellipsoid semi-axes, voxels
    cathode_pore_fraction: float = 0.05
    separator_pore_fraction: float = 0.01
    n_agglomerates: int = 3
    agglomerate_radius: float = 4.0
    n_tubes: int = 4
    tube_radius: float = 1.2
    interface_roughness: float = 1.5          # voxels, anode/separator boundary
    attenuation: dict = field(default_factory=lambda: dict(ATTENUATION))
    n_angles: int | None = None               # default: 1.5 x the slice edge (fully sampled)
    photons: float = 1.0e4                    # incident photons per detector pixel and angle
    max_absorbance: float = 2.0               # line integral through the densest path (sets the mu scale)
    detector_blur: float = 0.6                # Gaussian sigma on the detector, pixels (0 = none)


# --------------------------------------------------------------------------------------- geometry

def _rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    a, b, c, d = q / np.linalg.norm(q)
    return np.array([[a*a + b*b - c*c - d*d, 2*(b*c - a*d), 2*(b*d + a*c)],
                     [2*(b*c + a*d), a*a - b*b + c*c - d*d, 2*(c*d - a*b)],
                     [2*(b*d - a*c), 2*(c*d + a*b), a*a - b*b - c*c + d*d]])


def _paint_ellipsoid(mask: np.ndarray, centre, semi, rot: np.ndarray) -> None:
    """Set ``mask`` inside the ellipsoid ``centre`` + R diag(semi) unit ball (clipped to the array)."""
    r = float(max(semi)) + 1
    lo = [max(0, int(np.floor(c - r))) for c in centre]
    hi = [min(n, int(np.ceil(c + r)) + 1) for c, n in zip(centre, mask.shape)]
    if any(h <= l for l, h in zip(lo, hi)):
        return
    zz, yy, xx = np.meshgrid(*(np.arange(l, h) - c for l, h, c in zip(lo, hi, centre)), indexing="ij")
    d = np.stack([zz, yy, xx], axis=-1) @ rot  # body-frame coordinates
    inside = ((d / np.asarray(semi)) ** 2).sum(-1) <= 1.0
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= inside


def _paint_ball(mask: np.ndarray, centre, radius: float) -> None:
    _paint_ellipsoid(mask, centre, (radius, radius, radius), np.eye(3))


def _fill_fraction(mask: np.ndarray, region: np.ndarray, target: float, rng, draw) -> None:
    """Add shapes from ``draw(rng, mask)`` inside ``region`` until ``mask`` covers ``target`` of it."""
    n_region = int(region.sum())
    if n_region == 0:
        return
    coords = np.argwhere(region)
    while (mask & region).sum() < target * n_region:
        for _ in range(8):  # a few shapes per coverage check
            centre = coords[rng.integers(len(coords))] + rng.uniform(-0.5, 0.5, 3)
            draw(rng, mask, centre)


def cell_labels(shape, seed: int = 0, params: ForwardParams | None = None) -> np.ndarray:
    """The label volume (uint8, class ids of CLASSES) of a layered cell along z."""
    p = params or ForwardParams()
    rng = np.random.default_rng([seed, 0x13C])
    nz, ny, nx = shape
    z = np.arange(nz)[:, None, None]
    z_cc = max(1, round(p.collector_fraction * nz))
    z_cat = z_cc + max(2, round(p.cathode_fraction * nz))
    z_sep = z_cat + max(2, round(p.separator_fraction * nz))
    # a rough anode surface: smooth random height field over (y, x)
    from scipy.ndimage import gaussian_filter

    rough = gaussian_filter(rng.normal(size=(ny, nx)), 3.0, mode="wrap")
    rough *= p.interface_roughness / (rough.std() + 1e-12)
    anode_top = (z_sep + rough)[None]  # z where the anode starts, per (y, x)

    labels = np.full(shape, SE, np.uint8)
    labels[np.broadcast_to(z >= anode_top, shape)] = LI
    labels[:z_cc] = CC

    # cathode composite: overlapping, randomly oriented ellipsoids up to the active fraction
    cathode = np.zeros(shape, bool)
    cathode[z_cc:z_cat] = True
    active = np.zeros(shape, bool)
    lo_r, hi_r = p.radius_range

    def ellipsoid(rng, mask, centre):
        semi = np.sort(rng.uniform(lo_r, hi_r, 3))[::-1] * np.array([1.0, rng.uniform(0.6, 1), rng.uniform(0.5, 1)])
        _paint_ellipsoid(mask, centre, np.maximum(semi, 1.0), _rotation(rng))

    _fill_fraction(active, cathode, p.active_fraction, rng, ellipsoid)
    active &= cathode
    labels[active] = CAM

    # pores: small voids in the electrolyte of the composite and a few in the separator
    def void(rng, mask, centre):
        _paint_ball(mask, centre, rng.uniform(1.0, 2.2))

    pores = np.zeros(shape, bool)
    _fill_fraction(pores, cathode & ~active, p.cathode_pore_fraction / max(1e-6, 1 - p.active_fraction), rng, void)
    separator = np.zeros(shape, bool)
    separator[z_cat:] = True
    separator &= labels == SE
    sep_pores = np.zeros(shape, bool)
    _fill_fraction(sep_pores, separator, p.separator_pore_fraction, rng, void)
    labels[(pores & cathode & ~active) | (sep_pores & separator)] = PORE

    # redeposited lithium: agglomerates on the anode surface, tubes growing into the separator
    redep = np.zeros(shape, bool)
    for _ in range(p.n_agglomerates):
        y, x = rng.uniform(0, ny), rng.uniform(0, nx)
        top = float(anode_top[0, int(y), int(x)])
        for _ in range(5):  # a cluster of lumps
            c = (top - rng.uniform(0, p.agglomerate_radius), y + rng.normal(0, 2), x + rng.normal(0, 2))
            _paint_ball(redep, c, rng.uniform(0.5, 1.0) * p.agglomerate_radius)
    for _ in range(p.n_tubes):
        y, x = rng.uniform(0, ny), rng.uniform(0, nx)
        pos = np.array([float(anode_top[0, int(y), int(x)]) + 1, y, x])
        length = rng.uniform(0.4, 0.9) * (z_sep - z_cat)
        direction = np.array([-1.0, 0.0, 0.0])
        for _ in range(int(length / 0.7)):
            direction = direction + rng.normal(0, 0.25, 3)
            direction[0] = -abs(direction[0])  # keep growing towards the cathode
            direction /= np.linalg.norm(direction)
            pos = pos + 0.7 * direction
            _paint_ball(redep, pos, p.tube_radius)
    labels[redep & (z >= z_cat) & (labels != CC)] = REDEP
    return labels


# -------------------------------------------------------------------------------- image formation

def _square_pad(img: np.ndarray) -> tuple[np.ndarray, tuple[slice, slice]]:
    n = max(img.shape)
    out = np.zeros((n, n), img.dtype)
    oy, ox = (n - img.shape[0]) // 2, (n - img.shape[1]) // 2
    sl = (slice(oy, oy + img.shape[0]), slice(ox, ox + img.shape[1]))
    out[sl] = img
    return out, sl


def scan(labels: np.ndarray, seed: int = 0, params: ForwardParams | None = None) -> np.ndarray:
    """Tomographic image (float32, relative attenuation units) of ``labels``, slice by slice along z."""
    from scipy.ndimage import gaussian_filter1d
    from skimage.transform import iradon, radon

    p = params or ForwardParams()
    rng = np.random.default_rng([seed, 0xC7])
    lut = np.zeros(256, np.float64)
    for k, mu in p.attenuation.items():
        lut[int(k)] = mu
    mu_rel = lut[labels]
    n = max(labels.shape[1:])
    theta = np.linspace(0.0, 180.0, p.n_angles or int(round(1.5 * n)), endpoint=False)
    # mu scale (per voxel length): the densest slice's longest path gives max_absorbance
    densest = mu_rel.sum(axis=2).max() * np.sqrt(2)
    scale = p.max_absorbance / max(densest, 1e-12)
    out = np.empty(labels.shape, np.float32)
    for z in range(labels.shape[0]):
        sq, sl = _square_pad(mu_rel[z] * scale)
        sino = radon(sq, theta=theta, circle=False)          # line integrals, detector x angle
        if p.detector_blur > 0:
            sino = gaussian_filter1d(sino, p.detector_blur, axis=0, mode="nearest")
        counts = rng.poisson(p.photons * np.exp(-sino))      # Beer-Lambert + photon noise
        absorb = -np.log(np.maximum(counts, 0.5) / p.photons)
        rec = iradon(absorb, theta=theta, circle=False, filter_name="ramp", output_size=sq.shape[0])
        out[z] = (rec[sl] / scale).astype(np.float32)
    return out


def forward_volume(shape=(64, 64, 64), seed: int = 0, params: ForwardParams | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(image float32, labels uint8)`` of a seeded cell imaged by radon -> Poisson -> FBP."""
    p = params or ForwardParams()
    labels = cell_labels(tuple(int(s) for s in shape), seed, p)
    return scan(labels, seed, p), labels


# ----------------------------------------------------------------------------------------- writers

def write_tiff_stack(image: np.ndarray, folder, prefix: str = "slice") -> Path:
    """One single-page TIFF per z slice: ``folder/slice_0000.tif`` ..."""
    import tifffile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for z, sl in enumerate(image):
        tifffile.imwrite(folder / f"{prefix}_{z:04d}.tif", sl)
    return folder


def write_dxchange(image: np.ndarray, path, dataset: str = "/exchange/data") -> Path:
    """An HDF5 file in the DXchange layout (reconstructed volume at ``/exchange/data``)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset(dataset, data=image, chunks=True)
        f.attrs["implements"] = "exchange"
    return path


def sparse_slices(n: int, n_slices: int) -> list[int]:
    """``n_slices`` evenly spaced indices in [0, n), away from the edges."""
    return [int(round((i + 1) * n / (n_slices + 1))) for i in range(n_slices)]


def sparse_labels(labels: np.ndarray, n_slices: int = 4, axis: int = 2) -> tuple[np.ndarray, list[int]]:
    """``labels`` kept on ``n_slices`` slices along ``axis`` (255 elsewhere), and those indices."""
    idx = sparse_slices(labels.shape[axis], n_slices)
    out = np.full_like(labels, IGNORE_LABEL)
    sl = [slice(None)] * 3
    sl[axis] = idx
    out[tuple(sl)] = labels[tuple(sl)]
    return out, idx


def write_sparse_labels(labels: np.ndarray, path, n_slices: int = 4, axis: int = 2) -> list[int]:
    """A multi-page uint8 TIFF (one page per z) labelled on ``n_slices`` slices along ``axis``."""
    import tifffile

    sparse, idx = sparse_labels(labels, n_slices, axis)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, sparse)
    return idx


def dice_per_class(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None,
                   classes: dict[int, str] = CLASSES) -> dict[str, float]:
    """Dice per class name (``classes``: id -> name) on the voxels of ``mask`` (all voxels if None); NaN
    where a class is absent."""
    if mask is not None:
        pred, truth = pred[mask], truth[mask]
    out = {}
    for k, name in classes.items():
        a, b = pred == k, truth == k
        denom = a.sum() + b.sum()
        out[name] = float(2 * (a & b).sum() / denom) if denom else float("nan")
    return out


def otsu_oracle(image: np.ndarray, truth: np.ndarray, levels=(3, 4, 5), nbins: int = 128) -> dict[str, float]:
    """Baseline: multi-Otsu thresholds (scikit-image), each intensity bin mapped to its majority truth class.

    The mapping looks at the truth (an oracle, generous to the baseline); of the ``levels`` tried the
    one with the best mean Dice is returned (per class name, NaN where a class is absent).
    """
    from skimage.filters import threshold_multiotsu

    best = None
    for k in levels:
        bins = np.digitize(image, threshold_multiotsu(image, classes=k, nbins=nbins))
        counts = np.zeros((k, 256), np.int64)
        np.add.at(counts, (bins.ravel(), truth.ravel()), 1)
        pred = counts.argmax(1).astype(np.uint8)[bins]
        dice = dice_per_class(pred, truth)
        if best is None or np.nanmean(list(dice.values())) > np.nanmean(list(best.values())):
            best = dice
    return best


if __name__ == "__main__":  # quick look: python tests/ctforward.py 64
    import sys
    import time

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    t = time.perf_counter()
    img, lab = forward_volume((n, n, n), seed=0)
    print(f"{n}^3 in {time.perf_counter() - t:.1f} s")
    print("fractions", np.round(np.bincount(lab.ravel(), minlength=6) / lab.size, 3))
    for k in range(6):
        v = img[lab == k]
        if v.size:
            print(CLASSES[k], f"mean {v.mean():.3f} std {v.std():.3f}")
