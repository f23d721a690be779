"""Segmentation that generalises: whole-volume normalisation, the domain-randomised training cells, and a
model trained only on those cells segmenting a CT volume it never saw (tests/ctforward.py: other geometry
code, other contrasts, radon/Poisson/FBP image formation) better than multi-Otsu with an oracle mapping.

2 ranks == 1 rank and resume == uninterrupted with randomisation on are in test_segment.py (its tiny
configuration draws half of its patches from randomised cells)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from batterytwin.contracts import CLASSES
from batterytwin.errors import EXIT_OK
from batterytwin.segment import data as D
from batterytwin.segment.config import merge_config
from batterytwin.segment.randomise import RandomisedPatches, draw_attenuation, generate_volume

from .ctforward import dice_per_class, forward_volume, otsu_oracle

NAME_ID = {name: k for k, name in CLASSES.items()}


def randomise_cfg(**over) -> dict:
    return merge_config({"train": {"randomise": over}})["train"]["randomise"]


# --------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("shape", [(48, 48, 48), (37, 45, 29), (70, 33, 50)])
def test_normalisation_is_the_percentile_of_the_whole_volume(shape):
    rng = np.random.default_rng(0)
    vol = rng.normal(size=shape).astype(np.float32)
    # the last, partial block along every axis is much brighter: a range from the first blocks misses it
    vol[-(shape[0] % 32 or 16):, :, :] += 3.0
    vol[:, :, -(shape[2] % 32 or 16):] += 2.0
    lo, hi = D.intensity_range(vol)
    ref = np.percentile(vol, (1, 99))
    assert lo == pytest.approx(ref[0], abs=1e-5) and hi == pytest.approx(ref[1], abs=1e-5)


def test_normalisation_of_a_large_volume_samples_its_whole_extent():
    # 2.6 M voxels (more than 64 blocks of 32^3): blocks spread over the grid, partial blocks included
    shape = (100, 130, 200)
    z, y, x = np.meshgrid(*(np.linspace(0, 1, n, dtype=np.float32) for n in shape), indexing="ij")
    vol = (4 * x + 2 * z + y + np.random.default_rng(1).normal(0, 0.1, shape)).astype(np.float32)
    lo, hi = D.intensity_range(vol)
    ref = np.percentile(vol, (1, 99))
    span = ref[1] - ref[0]
    assert abs(lo - ref[0]) < 0.05 * span and abs(hi - ref[1]) < 0.05 * span, (lo, hi, ref)
    # a crop of another shape of the same field normalises alike
    lo2, hi2 = D.intensity_range(vol[:, :, :130])
    ref2 = np.percentile(vol[:, :, :130], (1, 99))
    assert abs(lo2 - ref2[0]) < 0.05 * span and abs(hi2 - ref2[1]) < 0.05 * span


# --------------------------------------------------------------------------- the generator
def test_attenuation_order_holds_with_overlapping_ranges():
    cfg = randomise_cfg()
    chain = cfg["order"]
    rng = np.random.default_rng(3)
    draws = [draw_attenuation(cfg, rng) for _ in range(300)]
    seen = np.array([[d[NAME_ID[n]] for n in chain] for d in draws])
    assert np.all(np.diff(seen, axis=1) >= cfg["min_contrast"] - 1e-12)
    low = min(cfg["attenuation"][n][0] for n in chain)
    assert seen.min() >= low  # values are drawn from the ranges (sorted, then spaced upwards)
    cc = np.array([d[NAME_ID["current_collector"]] for d in draws])  # not in the chain: its own range
    assert cfg["attenuation"]["current_collector"][0] <= cc.min() and cc.max() <= cfg["attenuation"]["current_collector"][1]
    # ... and the ranges overlap: lithium metal and redeposited lithium take values in each other's range
    li, redep = cfg["attenuation"]["lithium_metal"], cfg["attenuation"]["redeposited_lithium"]
    assert li[1] > redep[0]
    assert np.ptp(seen[:, chain.index("lithium_metal")]) > 0.1


def test_generated_cell_is_seeded_layered_and_imaged_with_the_drawn_contrast():
    cfg = randomise_cfg(noise_level=[0, 0], blur_sigma=[0, 0], ring_probability=0, streak_probability=0,
                        cupping=[0, 0], bias_field=[0, 0], active_fraction=[0.5, 0.5], volume_size=40)
    a, la, info = generate_volume(cfg, seed=0, index=5)
    b, lb, _ = generate_volume(cfg, seed=0, index=5)
    c, lc, _ = generate_volume(cfg, seed=0, index=6)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(la, lc)
    assert a.shape == la.shape == (40, 40, 40) and la.dtype == np.uint8
    # without blur, noise and artefacts the image is the drawn attenuation of each voxel's class
    for name, value in info["attenuation"].items():
        sel = la == NAME_ID[name]
        if sel.any():
            np.testing.assert_allclose(a[sel], value, rtol=1e-6)
    # layers along z: collector first, lithium anode last; the cathode slab packed to the drawn fraction
    z_cc, z_cat, _ = info["layers_z"]
    assert np.all(la[:z_cc] == NAME_ID["current_collector"])
    assert np.mean(la[-1] == NAME_ID["lithium_metal"]) > 0.9
    active = np.mean(la[z_cc:z_cat] == NAME_ID["cathode_active"])
    assert 0.35 < active < 0.6, active
    assert (la == NAME_ID["redeposited_lithium"]).any()


def test_thin_dendrites_are_drawn_down_to_one_voxel():
    cfg = randomise_cfg(dendrite_radius=[0.6, 0.6], agglomerates_per_10k_vox2=[0, 0], dendrites_per_10k_vox2=[60, 60],
                        dendrite_length=[1, 1], volume_size=40)
    _, lab, _ = generate_volume(cfg, seed=1, index=0)
    from scipy import ndimage

    redep = lab == NAME_ID["redeposited_lithium"]
    assert redep.sum() > 30
    # tubes (26-connected runs of voxels along the dendrites), not scattered voxels
    _, n_parts = ndimage.label(redep, np.ones((3, 3, 3)))
    assert redep.sum() / n_parts >= 4, (redep.sum(), n_parts)
    # a 1-voxel-thick tube disappears under an opening with the 6-neighbour cross
    assert ndimage.binary_opening(redep, ndimage.generate_binary_structure(3, 1)).sum() < 0.2 * redep.sum()


def test_patch_stream_depends_only_on_the_index():
    cfg = randomise_cfg(volume_size=24, patches_per_volume=3)
    aug = merge_config({})["train"]["augment"]
    forward = RandomisedPatches(cfg, (16, 16, 16), seed=2, augment_cfg=aug)
    items = [forward[i] for i in range(7)]
    backward = RandomisedPatches(cfg, (16, 16, 16), seed=2, augment_cfg=aug, cache=1)
    for i in reversed(range(7)):  # another order (another rank, a resumed run) and a colder cache
        img, lab = backward[i]
        assert torch.equal(img, items[i][0]) and torch.equal(lab, items[i][1])
    assert items[0][0].shape == (1, 16, 16, 16) and items[0][1].dtype == torch.int64
    assert not torch.equal(items[0][0], items[3][0])


# --------------------------------------------------------------------------- the Tversky term
def test_tversky_term_is_monai_and_ignores_unlabelled_voxels():
    from batterytwin.segment.loss import dice_ce_loss, labelled_weight

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 6, 6, 6, generator=g, requires_grad=True)
    target = torch.randint(0, 6, (2, 6, 6, 6), generator=g)
    target[:, :2] = 255
    w = labelled_weight(target, 6)
    # alpha = beta = 0.5: Tversky is the soft Dice, so MONAI's term equals the stage's own masked Dice term
    dice = dice_ce_loss(logits, target, 6, weight_total=w, global_batch=2, ce_weight=0)
    tv = dice_ce_loss(logits, target, 6, weight_total=w, global_batch=2, ce_weight=0, dice_weight=0,
                      tversky_weight=1, tversky_alpha=0.5, tversky_beta=0.5)
    assert torch.allclose(dice, tv, atol=1e-6)
    # recall-weighted (beta > alpha): no gradient on unlabelled voxels, and ranks add up to the global batch
    tv = dice_ce_loss(logits, target, 6, weight_total=w, global_batch=2, ce_weight=0, dice_weight=0,
                      tversky_weight=1)
    tv.backward()
    assert float(logits.grad[:, :, :2].abs().max()) == 0.0 and float(logits.grad[:, :, 2:].abs().max()) > 0
    parts = [dice_ce_loss(logits[i:i + 1], target[i:i + 1], 6, weight_total=w, global_batch=2, world_size=2,
                          ce_weight=0, dice_weight=0, tversky_weight=1) for i in (0, 1)]
    assert torch.allclose(tv, sum(parts) / 2, atol=1e-6)


# --------------------------------------------------------------------------- generalisation (must hold)
# a small network trained only on randomised cells (no phantom, no ctforward volume), then tested on an
# independently generated CT volume; the seeds are fixed, so the Dice is a fixed number up to CPU rounding
GENERALISE = {"model": {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1},
              "train": {"steps": 1200, "batch_size": 4, "patch_size": [24, 24, 24], "lr": 0.01,
                        "warmup_steps": 10, "class_weights": [1, 1, 1, 1, 10, 1], "threads": 1,
                        "val_every": 10**6, "checkpoint_every": 10**6, "init_from": None,
                        "randomise": {"fraction": 1.0, "volume_size": [32, 32, 32], "patches_per_volume": 8}}}
MEASURED_MEAN_DICE = 0.695  # 1200 steps, torch CPU, 1 thread (multi-Otsu with oracle mapping: 0.638)


@pytest.mark.slow
def test_model_trained_on_randomised_cells_beats_multi_otsu_on_an_unseen_ct_volume(tmp_path):
    from batterytwin.segment.train import load_model, train
    from batterytwin.segment.window import predict_region

    cfg = merge_config({"model": GENERALISE["model"],
                        "train": dict(GENERALISE["train"], checkpoint_dir=str(tmp_path / "ckpt"))})
    assert train(cfg, [], str(tmp_path / "model.pt"), str(tmp_path / "metrics.json"), resume="no") == EXIT_OK
    image, truth = forward_volume((40, 40, 40), seed=7)
    net, meta = load_model(str(tmp_path / "model.pt"))
    lo, hi = D.intensity_range(image)
    probs = predict_region(net, image, tuple(slice(0, n) for n in image.shape), meta["patch_size"], 6,
                           lambda x: (x - lo) / (hi - lo), overlap=0.25)
    dice = dice_per_class(probs.argmax(0).numpy(), truth)
    mean = float(np.nanmean(list(dice.values())))
    otsu = float(np.nanmean(list(otsu_oracle(image, truth).values())))
    assert mean > otsu, (mean, otsu, dice)
    assert mean > MEASURED_MEAN_DICE - 0.03, (mean, dice)
