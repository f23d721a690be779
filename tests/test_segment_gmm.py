"""Label-free GMM segmentation (segment.method: gmm): fit, classify, clean-up, shards and ranks, bad input.

The test volumes are made here, independently of the project's phantom: a Gaussian random field
(white noise smoothed with sigma 5, periodic), cut at its quantiles so that the true volume
fractions are known exactly, given one intensity per phase, blurred (sigma 0.8 voxel, like a point
spread function) and with Gaussian noise added.

Tolerance of the volume fractions: 0.02 absolute. Noise alone misclassifies a bulk voxel with
probability Phi(-delta / (2 sigma)) = Phi(-0.4 / 0.1) = 3e-5 (delta: gap between neighbouring
phase intensities, sigma: noise), negligible. What remains is the partial-volume effect of the
blur at interfaces (a blurred interface voxel lies between two phase intensities; the component
broadened by those voxels claims a little more): the test checks that >= 98 % of the misclassified
voxels touch an interface, and the fraction error is about 5-7 % of the interface-voxel fraction
(measured: 0.004 on two phases with 15 % interface voxels, 0.017 on three with 27 %).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import norm

from batterytwin import store
from batterytwin.contracts import CLASSES
from batterytwin.distributed import World
from batterytwin.errors import EXIT_BAD_INPUT, EXIT_OK
from batterytwin.segment.config import GmmSettings, merge_config
from batterytwin.segment.gmm import (classify, clean_labels, fit_mixture, halo, pad_tile, sample_blocks,
                                     sample_intensities)
from batterytwin.segment.gmm_run import class_lut, segment_gmm

from .conftest import mpiexec

ID = {name: c for c, name in CLASSES.items()}


def field_volume(n: int, seed: int, fractions, levels, blur=0.8, noise=0.05):
    """(truth uint8 [n]^3 with exact phase fractions, float32 image)."""
    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.standard_normal((n, n, n)), 5.0, mode="wrap")
    truth = np.digitize(f, np.quantile(f, np.cumsum(fractions)[:-1])).astype(np.uint8)
    img = ndimage.gaussian_filter(np.asarray(levels, np.float32)[truth], blur)
    img += rng.normal(0, noise, img.shape).astype(np.float32)
    return truth, img


def interface(labels: np.ndarray) -> np.ndarray:
    """Voxels with a 6-neighbour of another label."""
    out = np.zeros(labels.shape, bool)
    for a in range(3):
        d = np.diff(labels.astype(np.int16), axis=a) != 0
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[a], hi[a] = slice(0, -1), slice(1, None)
        out[tuple(lo)] |= d
        out[tuple(hi)] |= d
    return out


def whole_volume(img: np.ndarray, gmm: dict, seed_samples=None):
    """Reference of the driver in memory: one tile, the whole volume, mirrored at the faces."""
    s = GmmSettings.model_validate(gmm)
    lut, produced = class_lut(s)
    mix = fit_mixture(sample_intensities(img, s.max_samples, s.seed), len(lut), seed=s.seed)
    m = halo(s.clean_radius)
    lab = classify(pad_tile(img, [m] * 3, [m] * 3), mix, lut)
    inner = (slice(m, m + img.shape[0]), slice(m, m + img.shape[1]), slice(m, m + img.shape[2]))
    return clean_labels(lab, produced, s.clean_radius)[inner], mix


def write_volume(path, img, chunk=16, shard=16):
    with store.atomic_output(path, World()) as t:
        store.create_volume(t, img.shape, "float32", store.volume_attrs("denoise", 0.5), chunk=chunk,
                            shard=shard)[...] = img
    return path


@pytest.mark.parametrize("fractions, levels, names", [
    ((0.6, 0.4), (0.2, 0.7), ["pore", "solid_electrolyte"]),
    ((0.3, 0.45, 0.25), (0.1, 0.5, 0.9), ["pore", "solid_electrolyte", "cathode_active"]),
])
def test_volume_fractions_and_sklearn_reference(fractions, levels, names):
    from sklearn.mixture import GaussianMixture

    truth, img = field_volume(56, 3, fractions, levels)
    k = len(fractions)
    sample = sample_intensities(img, 100_000, seed=0)
    assert sample.size == 100_000 and np.isin(sample, img).all()
    mix = fit_mixture(sample, k, seed=0)
    # reference: scikit-learn itself on the sample inside its 0.5..99.5 percentile range widened by a quarter
    # each side, EM started from the classes of skimage's multi-Otsu thresholds; components sorted by mean
    from skimage.filters import threshold_multiotsu

    x = sample.astype(np.float64)
    lo, hi = np.percentile(x, [0.5, 99.5])
    x = x[(x >= lo - (hi - lo) / 4) & (x <= hi + (hi - lo) / 4)]
    part = np.digitize(x, threshold_multiotsu(x, classes=k, nbins=256))
    reg = 1e-6 * x.var()
    gm = GaussianMixture(k, random_state=0, reg_covar=reg,
                         means_init=np.array([[x[part == c].mean()] for c in range(k)]),
                         weights_init=np.array([(part == c).mean() for c in range(k)]),
                         precisions_init=np.array([[[1 / (x[part == c].var() + reg)]] for c in range(k)])
                         ).fit(x[:, None])
    order = np.argsort(gm.means_[:, 0])
    np.testing.assert_allclose(mix.means, gm.means_[order, 0], rtol=1e-9)
    np.testing.assert_allclose(mix.variances, gm.covariances_[order, 0, 0], rtol=1e-9)
    rank = np.argsort(order)  # sklearn component -> our component
    np.testing.assert_array_equal(classify(img, mix), rank[gm.predict(img.reshape(-1, 1).astype(np.float64))]
                                  .reshape(img.shape))
    # fitted means close to the phase intensities (blur widens, it does not move them much)
    np.testing.assert_allclose(mix.means, levels, atol=0.04)

    labels, _ = whole_volume(img, {"classes": names, "max_samples": 100_000})
    ids = [ID[n] for n in names]
    est = np.array([(labels == c).mean() for c in ids])
    true = np.bincount(truth.ravel(), minlength=k) / truth.size
    np.testing.assert_allclose(true, fractions, atol=1e-4)
    wrong = labels != np.asarray(ids, np.uint8)[truth]
    iface = interface(truth)
    assert 2 * norm.cdf(-0.4 / (2 * 0.05)) < 1e-4  # the noise-overlap share: negligible
    assert (wrong & iface).sum() >= 0.98 * wrong.sum()
    assert np.abs(est - true).max() <= 0.02, (est, true)


def test_opening_closing_removes_speckles_only():
    truth, _ = field_volume(48, 5, (0.4, 0.35, 0.25), (0, 1, 2))
    classes = [0, 1, 2]
    base = clean_labels(pad_tile(truth, [5] * 3, [5] * 3), classes, 1)[5:-5, 5:-5, 5:-5]
    # plant single-voxel speckles deep inside a phase (their 5^3 neighbourhood is uniform), 6 apart
    uniform = ndimage.maximum_filter(truth, 5) == ndimage.minimum_filter(truth, 5)
    grid = np.zeros(truth.shape, bool)
    grid[4:-4:6, 4:-4:6, 4:-4:6] = True
    where = np.flatnonzero(uniform & grid)
    assert where.size > 50
    speckled = truth.copy().ravel()
    speckled[where] = (speckled[where] + 1 + np.arange(where.size) % 2) % 3
    speckled = speckled.reshape(truth.shape)
    out = clean_labels(pad_tile(speckled, [5] * 3, [5] * 3), classes, 1)[5:-5, 5:-5, 5:-5]
    # every speckle takes its surrounding phase, and nothing else moves
    np.testing.assert_array_equal(out.ravel()[where], truth.ravel()[where])
    np.testing.assert_array_equal(out, base)
    # the clean-up of the speckle-free volume touches interface voxels only, and few of them
    moved = base != truth
    assert moved.any() and not (moved & ~interface(truth)).any()
    assert moved.mean() < 0.01
    assert (speckled != truth).sum() == where.size and (out != truth).sum() == moved.sum()
    # radius 0: no clean-up
    np.testing.assert_array_equal(clean_labels(speckled, classes, 0), speckled)


def test_sample_is_chunkwise_and_split_independent():
    img = np.random.default_rng(0).random((70, 40, 65), dtype=np.float32)
    whole = sample_intensities(img, 5000, seed=2)
    n = len(sample_blocks(img.shape))
    parts = [sample_intensities(img, 5000, seed=2, blocks=range(a, b)) for a, b in ((0, 3), (3, n))]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert whole.size == 5000
    # fewer voxels than max_samples: every voxel once
    np.testing.assert_array_equal(np.sort(sample_intensities(img[:10, :10, :10], 10_000)),
                                  np.sort(img[:10, :10, :10].ravel()))


@pytest.mark.slow
@pytest.mark.mpi
def test_ranks_and_shards_identical(tmp_path):
    truth, img = field_volume(40, 7, (0.5, 0.3, 0.2), (0.1, 0.5, 0.9))
    vol = write_volume(tmp_path / "vol.zarr", img, chunk=16, shard=16)
    gmm = {"classes": ["pore", "solid_electrolyte", "cathode_active"], "max_samples": 20_000}
    ref, mix = whole_volume(img, gmm)
    cfg = merge_config({"method": "gmm", "gmm": gmm, "infer": {"chunk": 8, "shard": 16}})
    fig = segment_gmm(str(vol), str(tmp_path / "l1.zarr"), str(tmp_path / "u1.zarr"), cfg)
    mpiexec(2, "batterytwin", "-q", "segment", "--input", str(vol), "--output", str(tmp_path / "l2.zarr"),
            "--uncertainty", str(tmp_path / "u2.zarr"), "--config-json",
            json.dumps({"method": "gmm", "gmm": gmm, "infer": {"chunk": 8, "shard": 24}}), timeout=120)
    l1, l2 = (store.open_volume(tmp_path / n) for n in ("l1.zarr", "l2.zarr"))
    assert l1.shards == (16, 16, 16) and l2.shards == (24, 24, 24)
    np.testing.assert_array_equal(l1.array[...], ref)
    np.testing.assert_array_equal(l2.array[...], ref)
    u1, u2 = (store.open_volume(tmp_path / n).array[...] for n in ("u1.zarr", "u2.zarr"))
    np.testing.assert_array_equal(u1, u2)
    assert u1.dtype == np.float16 and 0 <= u1.min() and u1.max() <= np.log(3) + 1e-3
    assert l1.array.dtype == np.uint8 and l1.attrs["method"] == "gmm" and l1.attrs["ignore_label"] == 255
    assert l1.attrs["classes"] == {str(k): v for k, v in CLASSES.items()}
    assert l1.attrs["gmm"]["component_classes"] == gmm["classes"]
    np.testing.assert_allclose(l1.attrs["gmm"]["means"], mix.means, rtol=1e-12)
    assert set(np.unique(ref)) <= {ID[n] for n in gmm["classes"]}
    assert fig["samples"] == 20_000 and fig["cleaned_voxels"] > 0


def test_component_mapping_several_components_one_class(tmp_path):
    truth, img = field_volume(32, 9, (0.5, 0.3, 0.2), (0.1, 0.5, 0.9))
    labels, mix = whole_volume(img, {"classes": {0: "pore", 1: "cathode_active", 2: "cathode_active"},
                                     "max_samples": 10_000, "clean_radius": 0})
    assert mix.n_components == 3
    np.testing.assert_array_equal(labels, np.where(classify(img, mix) == 0, ID["pore"], ID["cathode_active"]))
    assert abs((labels == ID["pore"]).mean() - 0.5) < 0.03


def test_bad_input_one_line_exit_2_no_output(tmp_path, cli):
    img = np.where(np.arange(16)[:, None, None] < 8, 0.2, 0.8) * np.ones((16, 16, 16), np.float32)
    vol = write_volume(tmp_path / "two.zarr", img.astype(np.float32))
    out = tmp_path / "labels.zarr"
    code, err = cli("segment", "--input", vol, "--output", out, "--method", "gmm", "--config-json",
                    json.dumps({"gmm": {"classes": ["pore", "solid_electrolyte", "cathode_active"]}}))
    assert code == EXIT_BAD_INPUT and len(err.strip().splitlines()) == 1
    assert "3 components" in err and "2 distinct" in err
    code, err = cli("segment", "--input", vol, "--output", out, "--config-json",
                    json.dumps({"method": "gmm", "gmm": {"classes": ["pore", "graphite"]}}))
    assert code == EXIT_BAD_INPUT and len(err.strip().splitlines()) == 1
    assert "segment.gmm.classes" in err and "graphite" in err
    code, err = cli("segment", "--input", vol, "--output", out)  # network without --model
    assert code == EXIT_BAD_INPUT and "--model" in err
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["two.zarr"]
    # the two-phase volume itself segments fine with two classes
    code, err = cli("segment", "--input", vol, "--output", out, "--method", "gmm", "--config-json",
                    json.dumps({"gmm": {"classes": ["pore", "cathode_active"]}}))
    assert code == EXIT_OK, err
    lab = store.open_volume(out).array[...]
    np.testing.assert_array_equal(lab, np.where(img < 0.5, ID["pore"], ID["cathode_active"]))


def test_non_finite_voxels_are_unlabelled():
    _, img = field_volume(24, 4, (0.5, 0.5), (0.2, 0.7))
    img[3, 4, 5] = np.nan
    img[10, 10, 10] = np.inf
    mix = fit_mixture(sample_intensities(img, 10_000), 2)
    lut = np.array([ID["pore"], ID["cathode_active"]], np.uint8)
    lab, ent = classify(img, mix, lut, class_posteriors=True)
    assert lab[3, 4, 5] == lab[10, 10, 10] == 255 and ent[3, 4, 5] == 0
    out = clean_labels(lab, [ID["pore"], ID["cathode_active"]], 1)
    assert out[3, 4, 5] == out[10, 10, 10] == 255 and (out != 255).sum() == img.size - 2
