"""NLM core: skimage compatibility, brute-force reference, fast_exp, padding, bad parameters."""

from __future__ import annotations

import itertools
import struct

import numpy as np
import pytest
import torch
from skimage.restoration import denoise_nl_means

from batterytwin.denoise.nlm import (EXP_A, EXP_BC, NLMParams, box_sum, fast_exp, half_offsets, nlm,
                                     nlm_padded, nlm_padded_blocked, nlm_padded_parallel, pad_reflect,
                                     reflect_index)
from batterytwin.errors import InputError


def phantom(shape, noise=0.1, seed=0):
    """Two-phase blocks plus Gaussian noise, clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    idx = np.indices(shape)
    clean = 0.2 + 0.6 * (((idx[0] // 5) + (idx[1] // 6) + (idx[2] // 7)) % 2)
    return clean, np.clip(clean + noise * rng.standard_normal(shape), 0, 1)


def brute_nlm(x, patch_size, d, h, sigma=0.0):
    """Textbook NLM (centred patches, exact exp, reflect padding), written independently of the module."""
    r = patch_size // 2
    H = r + d
    xp = np.pad(np.asarray(x, np.float64), H, mode="reflect")
    Z, Y, X = x.shape

    def at(o):
        return xp[H + o[0]:H + o[0] + Z, H + o[1]:H + o[1] + Y, H + o[2]:H + o[2] + X]

    num = np.zeros(x.shape)
    den = np.zeros(x.shape)
    for t in itertools.product(range(-d, d + 1), repeat=3):
        dist = np.zeros(x.shape)
        for b in itertools.product(range(-r, r + 1), repeat=3):
            dist += (at(b) - at(tuple(bi + ti for bi, ti in zip(b, t)))) ** 2
        dist = np.maximum(dist / patch_size ** 3 - 2 * sigma ** 2, 0)
        w = np.exp(-dist / h ** 2)
        num += w * at(t)
        den += w
    return num / den


@pytest.mark.parametrize("patch_size,d,h,sigma", [(5, 6, 0.1, 0.0), (3, 2, 0.08, 0.05), (7, 3, 0.15, 0.0),
                                                  (1, 2, 0.1, 0.0)])
def test_compat_matches_skimage(patch_size, d, h, sigma):
    _, x = phantom((13, 15, 17))
    ref = denoise_nl_means(x, patch_size=patch_size, patch_distance=d, h=h, sigma=sigma, fast_mode=True)
    got64 = nlm(x, patch_size, d, h, sigma, compat="skimage", dtype=torch.float64).numpy()
    got32 = nlm(x.astype(np.float32), patch_size, d, h, sigma, compat="skimage").numpy()
    assert np.abs(got64 - ref).max() < 1e-9
    border = np.ones(x.shape, bool)
    border[2:-2, 2:-2, 2:-2] = False
    assert np.abs(got32 - ref)[border].max() < 1e-4
    assert np.abs(got32 - ref)[~border].max() < 1e-4
    assert np.abs(got32 - x).max() > 0.05  # it did smooth something


@pytest.mark.parametrize("patch_size,d,sigma", [(3, 2, 0.0), (5, 1, 0.05), (3, 1, 0.1)])
def test_default_matches_brute_force(patch_size, d, sigma):
    _, x = phantom((8, 9, 10), seed=3)
    ref = brute_nlm(x, patch_size, d, 0.12, sigma)
    got64 = nlm(x, patch_size, d, 0.12, sigma, dtype=torch.float64).numpy()
    got32 = nlm(x, patch_size, d, 0.12, sigma).numpy()
    assert np.abs(got64 - ref).max() < 1e-10
    assert np.abs(got32 - ref).max() < 1e-5


def test_default_mode_denoises():
    clean, x = phantom((24, 24, 24), noise=0.1, seed=5)
    y = nlm(x, 5, 3, h=0.1, sigma=0.1).numpy()  # sigma subtraction: equal patches weigh ~1
    err_before = np.sqrt(np.mean((x - clean) ** 2))
    err_after = np.sqrt(np.mean((y - clean) ** 2))
    assert err_after < 0.7 * err_before  # measured 0.63: 5-7 voxel blocks limit what d = 3 can average


def test_fast_exp_bitwise():
    ys = np.concatenate([np.linspace(-5, 0, 2001), [-0.0, -1e-9, -4.999999]])
    want = [struct.unpack("<d", struct.pack("<ii", 0, int(EXP_A * y) + EXP_BC))[0] for y in ys]
    got64 = fast_exp(torch.tensor(ys, dtype=torch.float64)).numpy()
    assert np.array_equal(got64, np.array(want))
    got32 = fast_exp(torch.tensor(ys, dtype=torch.float32)).numpy().astype(np.float64)
    assert np.abs(got32 / np.array(want) - 1).max() < 2e-6  # float32 product may move trunc by one step
    assert want[2000] == 0.9710078239440918  # fast_exp(0), skimage's centre weight


def test_reflect_matches_numpy_any_pad():
    x = torch.arange(4 * 3 * 5, dtype=torch.float64).reshape(4, 3, 5)
    for halo in (1, 2, 6):
        assert np.array_equal(pad_reflect(x, halo).numpy(), np.pad(x.numpy(), halo, mode="reflect"))
    assert np.array_equal(reflect_index(np.arange(-9, 12), 4), np.pad(np.arange(4), 9, mode="reflect")[:21])


def test_box_sum_and_offsets():
    e = torch.rand(9, 10, 11, dtype=torch.float64)
    for n in (1, 2, 4, 5, 7):
        want = sum(e[:, :, k:11 - n + 1 + k] for k in range(n))
        assert torch.allclose(box_sum(e.clone(), n, 2), want)
    offs = half_offsets(2)
    full = set(itertools.product(range(-2, 3), repeat=3)) - {(0, 0, 0)}
    assert len(offs) == 62 and set(offs) | {tuple(-t for t in o) for o in offs} == full


def test_parallel_workers_equal_serial():
    _, x = phantom((11, 12, 13))
    p = NLMParams(3, 2, 0.1)
    xp = pad_reflect(torch.from_numpy(x).float(), p.halo)
    assert (nlm_padded_parallel(xp, p, 3) - nlm_padded(xp, p)).abs().max() < 1e-5  # float32 sums reordered


@pytest.mark.parametrize("kwargs", [dict(patch_size=4), dict(patch_size=0), dict(patch_size=-3),
                                    dict(search_radius=-1), dict(h=0.0), dict(h=-1.0), dict(h=float("nan")),
                                    dict(compat="matlab"), dict(patch_size=2.0)])
def test_bad_parameters(kwargs):
    args = dict(patch_size=3, search_radius=1, h=0.1) | kwargs
    with pytest.raises(InputError):
        nlm(np.zeros((6, 6, 6)), **args)


def test_bad_volumes():
    with pytest.raises(InputError, match="smaller than the patch"):
        nlm(np.zeros((6, 6, 2)), 3, 1, 0.1)
    x = np.zeros((6, 6, 6))
    x[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        nlm(x, 3, 1, 0.1)
    with pytest.raises(InputError, match="real number"):
        nlm(np.zeros((6, 6, 6), dtype=np.complex64), 3, 1, 0.1)
    with pytest.raises(InputError, match="3-D"):
        nlm(np.zeros((6, 6)), 3, 1, 0.1)


def test_cpu_blocking_is_exact():
    _, x = phantom((14, 9, 11), seed=4)
    p = NLMParams(3, 2, 0.1)
    xp = pad_reflect(torch.from_numpy(x).float(), p.halo)
    assert torch.equal(nlm_padded_blocked(xp, p, 1, block=4), nlm_padded(xp, p))  # same arithmetic per voxel
