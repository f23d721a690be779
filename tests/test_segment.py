"""Segmentation stage: masked loss, split-independent sliding window, DDP == 1 rank, preempt/resume,
distributed inference, bad inputs. The quality test (a trained model vs a GMM baseline) is in
test_segment_quality.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from batterytwin import store
from batterytwin.distributed import World
from batterytwin.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_PREEMPTED, InputError
from batterytwin.ingest.phantom import CLASSES, make_phantom
from batterytwin.segment.config import merge_config
from batterytwin.segment.loss import dice_ce_loss, labelled_weight
from batterytwin.segment.model import build_model
from batterytwin.segment.window import meets, predict_region, window_extent

from .conftest import BIN, REPO, mpiexec
from .labelled_phantom import write_stores

# a tiny network so that DDP/resume/inference checks take seconds on a shared CPU; half of its patches
# come from domain-randomised cells, so 2 ranks == 1 rank and resume == uninterrupted cover both streams
TINY = {"model": {"channels": [4, 8], "strides": [2], "num_res_units": 1},
        "train": {"steps": 16, "batch_size": 4, "patch_size": [16, 16, 16], "warmup_steps": 2, "init_from": None,
                  "val_every": 8, "checkpoint_every": 2, "threads": 1, "lr": 0.01,
                  "randomise": {"fraction": 0.5, "volume_size": [24, 24, 24], "patches_per_volume": 3}}}


def tiny_cfg(tmp: Path, **train):
    user = {"model": dict(TINY["model"]), "train": dict(TINY["train"], checkpoint_dir=str(tmp / "ckpt"), **train)}
    return merge_config(user)


def state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


# --------------------------------------------------------------------------- loss
def test_loss_is_cross_entropy_plus_dice_on_labelled_voxels_only():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 6, 6, 6, generator=g, requires_grad=True)
    target = torch.randint(0, 6, (2, 6, 6, 6), generator=g)
    # no ignored voxel, Dice off: exactly torch's cross-entropy
    ce = dice_ce_loss(logits, target, 6, weight_total=labelled_weight(target, 6), global_batch=2, dice_weight=0)
    assert torch.allclose(ce, F.cross_entropy(logits, target), atol=1e-6)
    # weighted CE: torch's weighted mean
    w = [1.0, 2.0, 0.5, 1.0, 3.0, 1.0]
    cew = dice_ce_loss(logits, target, 6, weight_total=labelled_weight(target, 6, w), global_batch=2,
                       dice_weight=0, class_weights=w)
    assert torch.allclose(cew, F.cross_entropy(logits, target, weight=torch.tensor(w)), atol=1e-6)
    # unlabelled voxels: no gradient there, and the loss equals the loss of the labelled subset
    masked = target.clone()
    masked[:, :3] = 255
    loss = dice_ce_loss(logits, masked, 6, weight_total=labelled_weight(masked, 6), global_batch=2)
    loss.backward()
    assert float(logits.grad[:, :, :3].abs().max()) == 0.0
    assert float(logits.grad[:, :, 3:].abs().max()) > 0.0
    sub = dice_ce_loss(logits[:, :, 3:], target[:, 3:], 6, weight_total=labelled_weight(target[:, 3:], 6),
                       global_batch=2)
    assert torch.allclose(loss, sub, atol=1e-6)
    # soft Dice of a perfect one-hot prediction is 0 loss
    perfect = F.one_hot(target, 6).movedim(-1, 1).float() * 50
    d = dice_ce_loss(perfect, target, 6, weight_total=1.0, global_batch=2, ce_weight=0)
    assert float(d) < 1e-4


def test_loss_split_over_ranks_adds_up_to_the_global_batch():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, 5, 5, 5, generator=g)
    target = torch.randint(0, 3, (4, 5, 5, 5), generator=g)
    target[0, :4] = 255  # ranks get different numbers of labelled voxels
    total = labelled_weight(target, 3)
    full = dice_ce_loss(logits, target, 3, weight_total=total, global_batch=4)
    parts = [dice_ce_loss(logits[i:i + 2], target[i:i + 2], 3, weight_total=total, global_batch=4, world_size=2)
             for i in (0, 2)]
    assert torch.allclose(full, sum(parts) / 2, atol=1e-6)


# --------------------------------------------------------------------------- sliding window
def test_sliding_window_does_not_depend_on_the_region_split():
    torch.manual_seed(0)
    net = build_model(merge_config(TINY)["model"], 6).eval()
    vol = np.random.default_rng(0).normal(size=(27, 21, 30)).astype(np.float32)
    whole = (slice(0, 27), slice(0, 21), slice(0, 30))
    ref = predict_region(net, vol, whole, (16, 16, 16), 6, lambda x: x, overlap=0.5, sw_batch_size=3)
    assert ref.shape == (6, 27, 21, 30)
    assert torch.allclose(ref.sum(0), torch.ones(27, 21, 30), atol=1e-5)
    # two odd regions, other batch size: the same probabilities
    a = predict_region(net, vol, (slice(0, 11), slice(0, 21), slice(0, 30)), (16, 16, 16), 6, lambda x: x,
                       overlap=0.5, sw_batch_size=1)
    b = predict_region(net, vol, (slice(11, 27), slice(0, 21), slice(0, 30)), (16, 16, 16), 6, lambda x: x,
                       overlap=0.5, sw_batch_size=5)
    assert float((torch.cat([a, b], 1) - ref).abs().max()) < 1e-6
    # windows shared by consecutive regions are reused from the cache, with the same result
    second = (slice(11, 27), slice(0, 21), slice(0, 30))
    ext = window_extent(vol.shape, (16, 16, 16))
    cache: dict = {}
    a2 = predict_region(net, vol, (slice(0, 11), slice(0, 21), slice(0, 30)), (16, 16, 16), 6, lambda x: x,
                        overlap=0.5, sw_batch_size=1, cache=cache, keep=lambda o: meets(o, ext, second))
    assert len(cache) == 2 * 2 * 3  # windows starting at z = 0 and 8 also meet the second region
    b2 = predict_region(net, vol, second, (16, 16, 16), 6, lambda x: x, overlap=0.5, sw_batch_size=5, cache=cache)
    assert torch.equal(a2, a) and not cache
    assert float((b2 - b).abs().max()) < 1e-6  # other batch compositions: rounding only
    # a window larger than the volume along one axis is padded, not an error
    small = predict_region(net, vol[:10], (slice(0, 10), slice(0, 21), slice(0, 30)), (16, 16, 16), 6, lambda x: x)
    assert small.shape == (6, 10, 21, 30)


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def phantom_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    vol, lab = write_stores(root, (32, 32, 32), seed=0)
    return root, vol, lab


@pytest.fixture(scope="module")
def reference_run(phantom_stores):
    """One uninterrupted 1-rank run of the tiny config (in-process): the reference weights."""
    from batterytwin.segment.train import TrainInput, train

    root, vol, lab = phantom_stores
    out = root / "ref"
    cfg = tiny_cfg(out)
    assert train(cfg, [TrainInput(str(vol), str(lab))], str(out / "model.pt"), str(out / "metrics.json"),
                 resume="no") == EXIT_OK
    return out


def _cli_train(cfg, vol, lab, out: Path) -> list[str]:
    return ["batterytwin", "-q", "train-seg", "--volume", str(vol), "--labels", str(lab),
            "--model-out", str(out / "model.pt"), "--metrics-out", str(out / "metrics.json"),
            "--config-json", json.dumps({"model": cfg["model"], "train": cfg["train"]})]


def test_metrics_and_model_file(reference_run):
    metrics = store.read_json(reference_run / "metrics.json")
    assert len(metrics["loss_curve"]) == TINY["train"]["steps"]
    first, last = metrics["loss_curve"][0]["loss"], metrics["loss_curve"][-1]["loss"]
    assert last < first  # it learns something even in 16 tiny steps
    assert [v["step"] for v in metrics["validation"]] == [8, 16]
    assert set(metrics["final_dice"]) == set(CLASSES.values())
    meta = torch.load(reference_run / "model.pt", weights_only=True)
    assert meta["classes"] == {str(k): v for k, v in CLASSES.items()} and meta["n_classes"] == 6
    # the randomised-cell settings travel with the model
    assert metrics["randomised_fraction"] == 0.5 and meta["train"]["randomise"]["volume_size"] == [24, 24, 24]


@pytest.mark.slow
@pytest.mark.mpi
def test_two_gloo_ranks_reach_the_weights_of_one_rank(phantom_stores, reference_run):
    root, vol, lab = phantom_stores
    out = root / "ddp2"
    cfg = tiny_cfg(out)
    mpiexec(2, *_cli_train(cfg, vol, lab, out), timeout=240)
    diff = max_diff(state(out / "model.pt"), state(reference_run / "model.pt"))
    assert diff < 1e-5, diff
    # and the weights did move away from the initialisation
    torch.manual_seed(cfg["train"]["seed"])
    init = build_model(cfg["model"], 6).state_dict()
    assert max_diff(state(out / "model.pt"), {k: v for k, v in init.items()}) > 1e-3


@pytest.mark.slow
@pytest.mark.mpi
def test_preempted_run_resumes_to_the_uninterrupted_weights(phantom_stores, reference_run):
    from batterytwin.segment.train import TrainInput, train

    root, vol, lab = phantom_stores
    out = root / "preempt"
    cfg = tiny_cfg(out)
    ckpt = out / "ckpt" / "checkpoint.pt"
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen([str(BIN / "mpiexec"), "-n", "1", *_cli_train(cfg, vol, lab, out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR1)  # mpiexec forwards it to the rank, as srun does
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == EXIT_PREEMPTED, stdout + stderr
    assert "preempted at step" in stdout
    stopped = torch.load(ckpt, weights_only=True)["step"]
    assert 0 < stopped < cfg["train"]["steps"]
    assert not (out / "model.pt").exists()
    # resume (requires the checkpoint) and finish: the weights of the uninterrupted run
    assert train(cfg, [TrainInput(str(vol), str(lab))], str(out / "model.pt"), str(out / "metrics.json"),
                 resume="yes") == EXIT_OK
    assert max_diff(state(out / "model.pt"), state(reference_run / "model.pt")) < 1e-6
    curve = store.read_json(out / "metrics.json")["loss_curve"]
    ref_curve = store.read_json(reference_run / "metrics.json")["loss_curve"]
    assert [c["step"] for c in curve] == [c["step"] for c in ref_curve]


# --------------------------------------------------------------------------- inference
@pytest.mark.slow
@pytest.mark.mpi
def test_inference_two_ranks_write_the_store_of_one_rank(phantom_stores, reference_run, tmp_path):
    from batterytwin.segment.infer import segment_volume
    from batterytwin.segment.train import load_model

    root, _, _ = phantom_stores
    vol, _ = write_stores(tmp_path, (30, 28, 36), seed=3)
    model = reference_run / "model.pt"
    infer = merge_config({"infer": {"chunk": 8, "shard": 16, "overlap": 0.5, "sw_batch_size": 3,
                                    "threads": 1}})["infer"]
    segment_volume(str(vol), str(model), str(tmp_path / "l1.zarr"), str(tmp_path / "u1.zarr"), infer)
    mpiexec(2, "batterytwin", "-q", "segment", "--input", str(vol), "--model", str(model), "--output",
            str(tmp_path / "l2.zarr"), "--uncertainty", str(tmp_path / "u2.zarr"), "--config-json",
            json.dumps({"infer": infer}), timeout=240)
    l1, l2 = (store.open_volume(tmp_path / n) for n in ("l1.zarr", "l2.zarr"))
    u1, u2 = (store.open_volume(tmp_path / n) for n in ("u1.zarr", "u2.zarr"))
    assert l1.shards == (16, 16, 16) and len(store.shard_regions(l1.shape, l1.shards)) == 12
    np.testing.assert_array_equal(l1.array[...], l2.array[...])
    np.testing.assert_array_equal(u1.array[...], u2.array[...])
    assert l1.array.dtype == np.uint8 and u1.array.dtype == np.float16
    assert l1.attrs["classes"] == {str(k): v for k, v in CLASSES.items()} and l1.attrs["ignore_label"] == 255
    # independent reference: one window pass over the whole volume in memory (no shards, no ranks)
    net, meta = load_model(str(model))
    image = store.open_volume(vol).array[...]
    from batterytwin.segment.data import intensity_range

    lo, hi = intensity_range(image)
    probs = predict_region(net, image, tuple(slice(0, n) for n in image.shape), meta["patch_size"], 6,
                           lambda x: (x - lo) / (hi - lo), overlap=0.5)
    np.testing.assert_array_equal(l1.array[...], probs.argmax(0).numpy())
    ent = -(probs * probs.clamp_min(1e-12).log()).sum(0).numpy()
    np.testing.assert_allclose(u1.array[...].astype(np.float32), ent, atol=2e-3)


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_are_input_errors(tmp_path, cli):
    vol, lab = write_stores(tmp_path, (24, 24, 24), seed=0)
    # label store of another shape
    _, lab_small = write_stores(tmp_path / "s", (24, 24, 16), seed=5)
    base = ["train-seg", "--volume", str(vol), "--model-out", str(tmp_path / "m.pt"),
            "--metrics-out", str(tmp_path / "m.json"), "--checkpoint-dir", str(tmp_path / "ck"),
            "--config-json", json.dumps({"model": TINY["model"], "train": {"patch_size": 16, "steps": 1, "init_from": None}})]
    code, err = cli(*base, "--labels", str(lab_small))
    assert code == EXIT_BAD_INPUT and "differs from the volume shape" in err
    # class ids beyond the configured classes
    img, labels = make_phantom((24, 24, 24), seed=0)
    labels[3, 3, 3] = 9
    _, lab_bad = write_stores(tmp_path / "b", (24, 24, 24), seed=0, labels=labels)
    code, err = cli(*base, "--labels", str(lab_bad))
    assert code == EXIT_BAD_INPUT and "unknown label id(s) [9]" in err
    # patch larger than the volume
    big = ["--config-json", json.dumps({"model": TINY["model"], "train": {"patch_size": 32, "steps": 1, "init_from": None}})]
    code, err = cli(*base[:-2], *big, "--labels", str(lab))
    assert code == EXIT_BAD_INPUT and "larger than the volume" in err
    # patch not a multiple of the network's down-sampling
    odd = ["--config-json", json.dumps({"model": TINY["model"], "train": {"patch_size": 15, "steps": 1, "init_from": None}})]
    code, err = cli(*base[:-2], *odd, "--labels", str(lab))
    assert code == EXIT_BAD_INPUT and "multiple of 2" in err
    # resume demanded but no checkpoint
    code, err = cli(*base, "--labels", str(lab), "--resume", "yes")
    assert code == EXIT_BAD_INPUT and "no checkpoint to resume from" in err
    # unknown config key
    code, err = cli(*base[:-2], "--config-json", '{"train": {"stepz": 3}}', "--labels", str(lab))
    assert code == EXIT_BAD_INPUT and "unknown key 'stepz'" in err
    # inference with a file that is not a model
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    code, err = cli("segment", "--input", str(vol), "--model", str(tmp_path / "junk.pt"), "--output",
                    str(tmp_path / "l.zarr"))
    assert code == EXIT_BAD_INPUT and "junk.pt" in err
    assert not (tmp_path / "l.zarr").exists()
    with pytest.raises(InputError, match="no such model file"):
        from batterytwin.segment.train import load_model

        load_model(str(tmp_path / "missing.pt"))


def test_selectable_architectures_map_patches_to_class_logits():
    import importlib.util

    archs = [({"arch": "segresnet", "init_filters": 8}, 16)]
    if importlib.util.find_spec("einops") is not None:
        archs.append(({"arch": "swinunetr", "feature_size": 12}, 64))
    else:  # SwinUNETR needs einops: without it, a clear error instead of a deep traceback
        with pytest.raises(InputError, match="needs the 'einops' package"):
            build_model(merge_config({"model": {"arch": "swinunetr"}})["model"], 6)
    for model, patch in archs:
        cfg = merge_config({"model": model, "train": {"patch_size": patch}})
        net = build_model(cfg["model"], 6)
        with torch.no_grad():
            out = net(torch.zeros(1, 1, patch, patch, patch))
        assert out.shape == (1, 6, patch, patch, patch)
    with pytest.raises(InputError, match="multiple of 32"):
        from batterytwin.segment.model import check_patch

        check_patch([48, 48, 48], merge_config({"model": {"arch": "swinunetr"}})["model"], "patch")
    with pytest.raises(InputError, match="too small for model.arch=swinunetr"):
        check_patch([32, 32, 32], merge_config({"model": {"arch": "swinunetr"}})["model"], "patch")


# --------------------------------------------------------------------------- sparse hand labels
SPARSE_Z = (3, 9, 17, 24)  # the only labelled slices of a 32^3 volume


def sparse_label_stores(root: Path, slices=SPARSE_Z, seed=0):
    _, truth = make_phantom((32, 32, 32), seed=seed)
    sparse = np.full_like(truth, 255)
    sparse[list(slices)] = truth[list(slices)]
    vol, lab = write_stores(root, (32, 32, 32), seed=seed, labels=sparse)
    return vol, lab, sparse, truth


@pytest.mark.parametrize("class_balance", [0.0, 0.5])
def test_every_sparse_patch_holds_labels_and_is_deterministic(tmp_path, class_balance):
    from batterytwin.segment import data as D

    vol, lab, sparse, _ = sparse_label_stores(tmp_path)
    src = D.PatchSource.open(store.open_volume(vol).array, store.open_volume(lab).array, 6, name="sparse")
    ds = D.PatchDataset([src], (4, 16, 16), seed=3, class_balance=class_balance, augment_cfg={"flip": False,
                        "rot90": False, "noise_std": 0.0, "intensity_scale": 0.0, "intensity_shift": 0.0})
    for i in range(150):
        image, labels = ds[i]
        known = labels.numpy() != 255
        assert known.any(), f"patch {i} holds no labelled voxel"
        # the patch is a window of the store (found back by its labelled content)
        rng = np.random.default_rng([3, i])
        si, origin = ds._origin(rng)
        region = tuple(slice(o, o + p) for o, p in zip(origin, ds.patch))
        np.testing.assert_array_equal(labels.numpy(), sparse[region])
    image2, labels2 = ds[17]  # patch i depends on (seed, i) only
    np.testing.assert_array_equal(ds[17][1].numpy(), labels2.numpy())
    np.testing.assert_array_equal(ds[17][0].numpy(), image2.numpy())
    # not luck: a plain uniform origin would often miss the labelled slices with 4-slice windows
    empty = [z for z in range(32 - 4 + 1) if not set(range(z, z + 4)) & set(SPARSE_Z)]
    assert len(empty) >= 8


def test_dice_counts_labelled_voxels_only_on_the_labelled_slices():
    from batterytwin.segment import data as D
    from batterytwin.segment.train import validate

    class Oracle(torch.nn.Module):
        """Logits peaked at the class id stored in the (normalised) image: predictions are known."""

        def forward(self, x):
            ids = torch.arange(6, dtype=x.dtype, device=x.device).view(1, 6, 1, 1, 1)
            return -((x - ids) ** 2) * 10

    rng = np.random.default_rng(0)
    shape = (20, 24, 24)
    pred = rng.integers(0, 6, shape).astype(np.uint8)          # what the "network" predicts everywhere
    truth = np.where(rng.random(shape) < 0.7, pred, rng.integers(0, 6, shape)).astype(np.uint8)
    labels = np.full(shape, 255, np.uint8)
    for z in (2, 3, 11, 17):                                    # labelled slices, partly (scribbles)
        labels[z, 4:20, 2:18] = truth[z, 4:20, 2:18]
    regions = D.labelled_regions(labels, depth=8)
    assert [r for r, _ in regions] == [(slice(2, 4), slice(4, 20), slice(2, 18)),
                                       (slice(11, 12), slice(4, 20), slice(2, 18)),
                                       (slice(17, 18), slice(4, 20), slice(2, 18))]
    assert sum(n for _, n in regions) == int((labels != 255).sum()) == 4 * 16 * 16
    src = D.PatchSource(pred.astype(np.float32), labels, 6, None, 0.0, 1.0, name="val")
    dice = validate(Oracle(), [(pred.astype(np.float32), labels, r, src) for r, _ in regions], 6, (8, 8, 8),
                    "cpu", amp=False)
    # hand computation over the labelled voxels only
    m = labels != 255
    p, t = pred[m], labels[m]
    expected = [2 * np.sum((p == c) & (t == c)) / (np.sum(p == c) + np.sum(t == c)) for c in range(6)]
    np.testing.assert_allclose(dice, expected, rtol=1e-12)
    everywhere = [2 * np.sum((pred == c) & (truth == c)) / (np.sum(pred == c) + np.sum(truth == c)) for c in range(6)]
    assert not np.allclose(dice, everywhere, atol=1e-3)  # the unlabelled voxels really are left out


def test_training_on_sparse_slices_with_held_out_slices(tmp_path):
    from batterytwin.segment.train import TrainInput, train

    vol, lab, sparse, truth = sparse_label_stores(tmp_path)
    held = np.full_like(truth, 255)
    held[[6, 20]] = truth[[6, 20]]  # held-out labelled slices (same volume)
    val_p = tmp_path / "val_labels.zarr"
    with store.atomic_output(val_p, World()) as t:
        store.create_volume(t, held.shape, "uint8", store.volume_attrs(
            "ingest", 0.5, classes={str(k): v for k, v in CLASSES.items()}, ignore_label=255),
            chunk=16, shard=16)[...] = held
    cfg = tiny_cfg(tmp_path, steps=6, val_every=6, class_balance=0.5)
    out = tmp_path / "run"
    assert train(cfg, [TrainInput(str(vol), str(lab))], str(out / "model.pt"), str(out / "metrics.json"),
                 val_inputs=[TrainInput(str(vol), str(val_p))], resume="no") == EXIT_OK
    metrics = store.read_json(out / "metrics.json")
    assert metrics["validation_labelled_voxels"] == 2 * 32 * 32
    assert len(metrics["loss_curve"]) == 6 and all(np.isfinite(e["loss"]) for e in metrics["loss_curve"])
    present = set(np.unique(held[held != 255]).tolist())
    dice = metrics["validation"][-1]["dice"]
    assert all(dice[c] is not None and 0 <= dice[c] <= 1 for c in present)


def test_class_index_from_super_blocks_is_the_per_block_count():
    import itertools

    from batterytwin.segment import data as D

    rng = np.random.default_rng(0)
    shape = (37, 70, 50)  # not a multiple of the index block nor of the super-block
    lab = rng.integers(0, 4, shape).astype(np.uint8)
    lab[rng.random(shape) < 0.6] = 255
    src = D.PatchSource(np.zeros(shape, np.float32), lab, 4, (slice(None), slice(None), slice(41, 50)))
    src._build_index(None)
    expected = []
    for o in itertools.product(*[range(0, n, D.INDEX_BLOCK) for n in shape]):
        block = lab[tuple(slice(a, a + D.INDEX_BLOCK) for a in o)].copy()
        if o[2] + D.INDEX_BLOCK > 41:  # held-out x >= 41 is hidden from training
            block[:, :, max(0, 41 - o[2]):] = 255
        expected.append(np.bincount(block.ravel(), minlength=256)[:4])
    np.testing.assert_array_equal(src.block_counts, np.stack(expected))
    np.testing.assert_array_equal(src.block_origins, np.array(list(itertools.product(
        *[range(0, n, D.INDEX_BLOCK) for n in shape]))))
