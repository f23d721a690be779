"""Segmentation scores and uncertainty: ECE and per-class precision/recall against independent references,
MC-dropout uncertainty (meaningful, deterministic, split independent, recorded in the store), and
fine-tuning from a pretrained model (``segment.train.init_from``).

References: an analytic ECE, a direct numpy binning and ``sklearn.calibration.calibration_curve``,
``sklearn.metrics.precision_recall_fscore_support``, and volumes of tests/ctforward.py (a CT forward
model written independently of the phantom).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from batterytwin import store
from batterytwin.contracts import CLASSES
from batterytwin.distributed import World
from batterytwin.errors import EXIT_BAD_INPUT, EXIT_OK, InputError
from batterytwin.segment.config import merge_config
from batterytwin.segment.metrics import ECE_BINS, SegmentationScores

from .conftest import mpiexec
from .ctforward import forward_volume

N = len(CLASSES)


def numpy_ece(conf: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """Top-label ECE by direct binning (Guo et al. 2017), written here independently of the module."""
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(correct[m].mean() - conf[m].mean())
    return total / conf.size


def test_ece_of_a_hand_constructed_case_is_the_analytic_value():
    # 2 classes, 1000 labelled voxels + 200 unlabelled: 500 at p = (0.9, 0.1) of which 400 are class 0
    # (confidence 0.9, accuracy 0.8: gap 0.1), 500 at p = (0.35, 0.65) of which 325 are class 1
    # (confidence 0.65, accuracy 0.65: gap 0). ECE = 0.5 * 0.1 + 0.5 * 0 = 0.05.
    probs = np.zeros((2, 1200), np.float32)
    probs[:, :500] = [[0.9], [0.1]]
    probs[:, 500:1000] = [[0.35], [0.65]]
    probs[:, 1000:] = [[0.99], [0.01]]
    labels = np.zeros(1200, np.uint8)
    labels[400:500] = 1
    labels[500:825] = 1
    labels[1000:] = 255  # unlabelled (confidence 0.99 on class 0): must not count
    s = SegmentationScores(2)
    s.update(probs, labels)
    r = s.result()
    assert r["voxels"] == 1000
    assert r["ece"] == pytest.approx(0.05, abs=1e-6)
    # precision, recall by hand: predicted 0 = first 500 (400 right), predicted 1 = next 500 (325 right)
    assert r["precision"] == pytest.approx([400 / 500, 325 / 500])
    assert r["recall"] == pytest.approx([400 / 575, 325 / 425])
    # a perfectly calibrated two-bin case has ECE 0; a confidently wrong one has ECE = confidence
    s2 = SegmentationScores(2)
    s2.update(np.array([[0.97] * 10, [0.03] * 10]), np.ones(10, np.uint8))
    assert s2.result()["ece"] == pytest.approx(0.97, abs=1e-6)


def test_ece_and_precision_recall_match_independent_implementations():
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(5)
    shape = (3, 20, 20, 20)  # three "blocks" added one after the other
    logits = rng.normal(size=(shape[0], N, *shape[1:])) * 2.5
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    # labels correlated with the prediction (70 % agree), class 4 never labelled, 10 % unlabelled
    pred = probs.argmax(1)
    labels = np.where(rng.random(pred.shape) < 0.7, pred, rng.integers(0, N, pred.shape))
    labels[labels == 4] = 0
    labels[rng.random(pred.shape) < 0.1] = 255
    labels = labels.astype(np.uint8)
    s = SegmentationScores(N)
    for k in range(shape[0]):
        s.update(torch.from_numpy(probs[k]).float(), labels[k])
    r = s.result()

    keep = labels != 255
    p = np.moveaxis(probs, 1, -1)[keep].astype(np.float32).astype(np.float64)
    t = labels[keep].astype(int)
    conf, hit = p.max(1), (p.argmax(1) == t).astype(float)
    assert r["voxels"] == keep.sum()
    assert r["ece"] == pytest.approx(numpy_ece(conf, hit, ECE_BINS), abs=2e-6)
    # sklearn's reliability curve (uniform bins) with counts of the same bins
    prob_true, prob_pred = calibration_curve(hit, conf, n_bins=ECE_BINS, strategy="uniform")
    counts = np.bincount(np.minimum((conf * ECE_BINS).astype(int), ECE_BINS - 1), minlength=ECE_BINS)
    counts = counts[counts > 0]
    assert r["ece"] == pytest.approx(float((counts * np.abs(prob_true - prob_pred)).sum() / counts.sum()), abs=2e-6)
    assert r["ece"] > 0.05  # not a trivially calibrated case

    prec, rec, f1, _ = precision_recall_fscore_support(t, p.argmax(1), labels=list(range(N)), zero_division=np.nan)
    for c in range(N):
        for ours, ref in ((r["precision"][c], prec[c]), (r["recall"][c], rec[c]), (r["dice"][c], f1[c])):
            if np.isnan(ref):  # undefined (0/0): recall of the never-labelled class 4
                assert ours is None
            else:
                assert ours == pytest.approx(ref, rel=1e-12)
    assert r["recall"][4] is None  # never labelled: recall undefined


# --------------------------------------------------------------------------- trained models on ctforward volumes
SMALL = {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}
TRAIN = {"batch_size": 4, "patch_size": [16, 16, 16], "warmup_steps": 5, "val_every": 1000,
         "checkpoint_every": 1000, "threads": 1, "lr": 0.01, "init_from": None}


def write_pair(root: Path, name: str, image: np.ndarray, labels: np.ndarray) -> tuple[Path, Path]:
    vol_p, lab_p = root / f"{name}.zarr", root / f"{name}_truth.zarr"
    with store.atomic_output(vol_p, World()) as t:
        store.create_volume(t, image.shape, "float32", store.volume_attrs("ingest", 0.5), chunk=16,
                            shard=16)[...] = image
    with store.atomic_output(lab_p, World()) as t:
        store.create_volume(t, labels.shape, "uint8", store.volume_attrs(
            "ingest", 0.5, classes={str(k): v for k, v in CLASSES.items()}, ignore_label=255),
            chunk=16, shard=16)[...] = labels
    return vol_p, lab_p


@pytest.fixture(scope="module")
def dropout_model(tmp_path_factory):
    """A small U-Net with dropout 0.1 trained 120 steps on one ctforward volume, validated on another."""
    from batterytwin.segment.train import TrainInput, train

    root = tmp_path_factory.mktemp("unc")
    shape = (32, 40, 40)
    a = write_pair(root, "a", *forward_volume(shape, seed=1))
    b = write_pair(root, "b", *forward_volume(shape, seed=2))
    cfg = merge_config({"model": dict(SMALL, dropout=0.1),
                        "train": dict(TRAIN, steps=120, checkpoint_dir=str(root / "ck"))})
    assert train(cfg, [TrainInput(str(a[0]), str(a[1]))], str(root / "model.pt"), str(root / "metrics.json"),
                 val_inputs=[TrainInput(str(b[0]), str(b[1]))], resume="no") == EXIT_OK
    return root, a, b, cfg


def infer_cfg(**kw):
    return merge_config({"infer": dict({"threads": 1, "chunk": 8, "shard": 16}, **kw)})["infer"]


@pytest.mark.slow
def test_validation_metrics_json_holds_precision_recall_and_ece_of_the_model(dropout_model, tmp_path):
    """final_precision/recall/ece of metrics.json == sklearn on the labels `segment` writes with that model."""
    from sklearn.metrics import precision_recall_fscore_support

    from batterytwin.segment.infer import segment_volume

    root, _, (vol_b, lab_b), _ = dropout_model
    metrics = store.read_json(root / "metrics.json")
    # validation predicts the held-out volume with the same window grid as `segment`
    segment_volume(str(vol_b), str(root / "model.pt"), str(tmp_path / "l.zarr"), None, infer_cfg())
    pred = store.open_volume(tmp_path / "l.zarr").array[...].ravel()
    truth = store.open_volume(lab_b).array[...].ravel()
    prec, rec, f1, support = precision_recall_fscore_support(truth, pred, labels=list(range(N)), zero_division=np.nan)
    names = [CLASSES[c] for c in range(N)]
    for c, name in enumerate(names):
        if support[c] == 0:
            assert metrics["final_recall"][name] is None and metrics["final_dice"][name] is None
            continue
        if np.isnan(prec[c]):  # labelled, never predicted: precision undefined
            assert metrics["final_precision"][name] is None
        else:
            assert metrics["final_precision"][name] == pytest.approx(prec[c], abs=1e-9)
        assert metrics["final_recall"][name] == pytest.approx(rec[c], abs=1e-9)
        assert metrics["final_dice"][name] == pytest.approx(f1[c], abs=1e-9)
    assert 0.0 < metrics["final_ece"] < 0.5
    rel = metrics["final_reliability"]
    assert sum(rel["voxels"]) == truth.size and len(rel["voxels"]) == metrics["ece_bins"] == ECE_BINS


@pytest.mark.slow
def test_mc_dropout_is_more_uncertain_where_the_model_is_wrong(dropout_model, tmp_path):
    from sklearn.metrics import roc_auc_score

    from batterytwin.segment.infer import segment_volume

    root, _, (vol_b, lab_b), _ = dropout_model
    segment_volume(str(vol_b), str(root / "model.pt"), str(tmp_path / "l.zarr"), str(tmp_path / "u.zarr"),
                   infer_cfg(uncertainty_method="mc_dropout", mc_samples=8))
    pred = store.open_volume(tmp_path / "l.zarr").array[...]
    unc = store.open_volume(tmp_path / "u.zarr")
    u = unc.array[...].astype(np.float64)
    truth = store.open_volume(lab_b).array[...]
    wrong = pred != truth
    # measured: about 16 % wrong; mean entropy 0.96 nats on wrong voxels vs 0.73 on right ones
    assert 0.02 < wrong.mean() < 0.5
    assert u[wrong].mean() > u[~wrong].mean() + 0.1
    assert roc_auc_score(wrong.ravel(), u.ravel()) > 0.65
    assert unc.attrs["uncertainty_method"] == "mc_dropout" and unc.attrs["mc_samples"] == 8
    assert "MC-dropout" in unc.attrs["quantity"]
    assert store.open_volume(tmp_path / "l.zarr").attrs["uncertainty_method"] == "mc_dropout"


@pytest.mark.slow
@pytest.mark.mpi
def test_mc_dropout_is_seeded_and_two_ranks_write_the_store_of_one(dropout_model, tmp_path):
    from batterytwin.segment.infer import segment_volume

    root, _, (vol_b, _), _ = dropout_model
    model = str(root / "model.pt")
    cfg = infer_cfg(uncertainty_method="mc_dropout", mc_samples=4, overlap=0.5, sw_batch_size=3)
    for name, c in (("u1", cfg), ("u1b", cfg), ("u_seed", dict(cfg, seed=1)), ("u_ent", infer_cfg())):
        segment_volume(str(vol_b), model, str(tmp_path / f"l_{name}.zarr"), str(tmp_path / f"{name}.zarr"), c)
    mpiexec(2, "batterytwin", "-q", "segment", "--input", str(vol_b), "--model", model, "--output",
            str(tmp_path / "l_u2.zarr"), "--uncertainty", str(tmp_path / "u2.zarr"), "--config-json",
            json.dumps({"infer": cfg}), timeout=240)
    read = {n: store.open_volume(tmp_path / f"{n}.zarr").array[...] for n in ("u1", "u1b", "u2", "u_seed", "u_ent")}
    np.testing.assert_array_equal(read["u1"], read["u1b"])   # same config, same numbers
    np.testing.assert_array_equal(read["u1"], read["u2"])    # 2 ranks == 1 rank (shards of 16 over 2 ranks)
    np.testing.assert_array_equal(store.open_volume(tmp_path / "l_u1.zarr").array[...],
                                  store.open_volume(tmp_path / "l_u2.zarr").array[...])
    # the masks do matter: another seed gives other numbers, and MC differs from the single pass
    assert np.abs(read["u1"].astype(float) - read["u_seed"]).max() > 1e-2
    assert np.abs(read["u1"].astype(float) - read["u_ent"]).mean() > 1e-3
    assert store.open_volume(tmp_path / "u_ent.zarr").attrs["uncertainty_method"] == "entropy"


def test_mc_dropout_without_dropout_layers_and_a_foreign_init_model_are_input_errors(tmp_path, cli):
    from batterytwin.segment.model import build_model
    from batterytwin.segment.train import FORMAT

    net = build_model(SMALL, N)
    torch.save({"format": FORMAT, "state_dict": net.state_dict(), "model": merge_config({"model": SMALL})["model"],
                "classes": {str(k): v for k, v in CLASSES.items()}, "n_classes": N, "patch_size": [16, 16, 16],
                "normalisation": "percentile_1_99", "train": {}, "step": 0, "ignore_label": 255},
               tmp_path / "m.pt")
    vol, lab = write_pair(tmp_path, "v", *forward_volume((16, 16, 16), seed=4))
    code, err = cli("segment", "--input", vol, "--model", tmp_path / "m.pt", "--output", tmp_path / "l.zarr",
                    "--uncertainty", tmp_path / "u.zarr", "--uncertainty-method", "mc_dropout")
    assert code == EXIT_BAD_INPUT and "needs a model trained with dropout" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "l.zarr").exists() and not (tmp_path / "u.zarr").exists()
    # fine-tuning from a file that is not a segmentation model
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    code, err = cli("train-seg", "--volume", vol, "--labels", lab, "--model-out", tmp_path / "t.pt",
                    "--metrics-out", tmp_path / "t.json", "--checkpoint-dir", tmp_path / "ck", "--config-json",
                    json.dumps({"model": SMALL, "train": dict(TRAIN, steps=1, init_from=str(tmp_path / "junk.pt"))}))
    assert code == EXIT_BAD_INPUT and "junk.pt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t.pt").exists()


@pytest.mark.slow
def test_fine_tuning_starts_from_the_pretrained_weights(dropout_model, tmp_path):
    from batterytwin.segment.train import TrainInput, train

    root, (vol_a, lab_a), _, cfg = dropout_model
    pretrained = torch.load(root / "model.pt", weights_only=True)["state_dict"]
    # a learning rate too small to move the weights: the result is the starting point
    tune = merge_config({"model": cfg["model"], "train": dict(TRAIN, steps=1, warmup_steps=0, lr=1e-30,
                         init_from=str(root / "model.pt"), checkpoint_dir=str(tmp_path / "ck"))})
    assert train(tune, [TrainInput(str(vol_a), str(lab_a))], str(tmp_path / "m.pt"), str(tmp_path / "m.json"),
                 resume="no") == EXIT_OK
    tuned = torch.load(tmp_path / "m.pt", weights_only=True)["state_dict"]
    assert max(float((tuned[k].float() - v.float()).abs().max()) for k, v in pretrained.items()) < 1e-12
    # from scratch, the same step gives other weights (the init is what made them equal)
    scratch = dict(tune, train=dict(tune["train"], init_from=None, checkpoint_dir=str(tmp_path / "ck2")))
    train(scratch, [TrainInput(str(vol_a), str(lab_a))], str(tmp_path / "s.pt"), str(tmp_path / "s.json"), resume="no")
    other = torch.load(tmp_path / "s.pt", weights_only=True)["state_dict"]
    assert max(float((other[k].float() - v.float()).abs().max()) for k, v in pretrained.items()) > 1e-3
    # another architecture cannot start from it
    bad = merge_config({"model": dict(SMALL, channels=[4, 8, 16]), "train": dict(tune["train"])})
    with pytest.raises(InputError, match="init_from"):
        train(bad, [TrainInput(str(vol_a), str(lab_a))], str(tmp_path / "b.pt"), str(tmp_path / "b.json"),
              resume="no")
    assert not (tmp_path / "b.pt").exists()


@pytest.mark.slow
def test_report_figure_shows_precision_recall_and_the_reliability_of_the_run(dropout_model, tmp_path):
    from batterytwin.report import training

    root = dropout_model[0]
    metrics = store.read_json(root / "metrics.json")
    fig = training.plot_training(metrics)
    names = [CLASSES[c] for c in range(N)]
    for label, key in (("precision", "final_precision"), ("recall", "final_recall")):
        xs = fig.markers[label].get_offsets()[:, 0]
        np.testing.assert_allclose(np.asarray(xs, float), [np.nan if metrics[key][n] is None else metrics[key][n]
                                                           for n in names])
    acc = metrics["final_reliability"]["accuracy"]
    np.testing.assert_allclose([b.get_height() for b in fig.reliability], [0.0 if a is None else a for a in acc])
    assert f"ECE {metrics['final_ece']:.3f}" in fig.axes[3].get_title()
    fig.savefig(tmp_path / "t.png", dpi=50)
    # a metrics file of a run without these records still draws (older runs, other trainers)
    old = {k: v for k, v in metrics.items() if not k.startswith(("final_precision", "final_recall", "final_ece",
                                                                  "final_reliability"))}
    fig = training.plot_training(old)
    assert fig.reliability is None and not fig.markers


@pytest.mark.slow
def test_report_slices_name_the_uncertainty_method_of_the_store(dropout_model, tmp_path, cli):
    from batterytwin.report.cli import uncertainty_title
    from batterytwin.segment.infer import segment_volume

    root, _, (vol_b, _), _ = dropout_model
    for method in ("entropy", "mc_dropout"):
        segment_volume(str(vol_b), str(root / "model.pt"), str(tmp_path / f"l_{method}.zarr"),
                       str(tmp_path / f"u_{method}.zarr"), infer_cfg(uncertainty_method=method, mc_samples=4))
    titles = {m: uncertainty_title(store.open_volume(tmp_path / f"u_{m}.zarr").attrs) for m in ("entropy", "mc_dropout")}
    assert titles == {"entropy": "uncertainty: softmax entropy (nats)",
                      "mc_dropout": "uncertainty: MC dropout, 4 passes (nats)"}
    code, _ = cli("report", "slices", "--labels", tmp_path / "l_mc_dropout.zarr", "--uncertainty",
                  tmp_path / "u_mc_dropout.zarr", "--out", tmp_path / "s.png", "--dpi", "40")
    assert code in (EXIT_OK, None) and (tmp_path / "s.png").stat().st_size > 0
