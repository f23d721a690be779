"""Benchmark of the label-free GMM segmentation (segment.method: gmm), next to its references.

Usage::

    python bench/segment_gmm.py                  # phantom 48^3 (Dice vs truth) + 128^3 timing
    python bench/segment_gmm.py --size 128 --network   # also the network's inference on the same store

Prints JSON: per-class Dice of the GMM labels against the phantom's truth (on the phantom's noisy
image, NLM-denoised with the demo settings), the clean-up's changed voxels, and the wall time of
the GMM driver (store to store, 1 rank) on a ``size``^3 volume; with ``--network``, the wall time
of the network's sliding-window inference (an untrained demo-sized UNet: speed only) on the same
store.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from batterytwin import store  # noqa: E402
from batterytwin.contracts import CLASSES  # noqa: E402
from batterytwin.distributed import World  # noqa: E402
from batterytwin.ingest.phantom import make_phantom  # noqa: E402
from batterytwin.segment.config import merge_config  # noqa: E402
from batterytwin.segment.gmm_run import segment_gmm  # noqa: E402


def write(path, img, chunk=32, shard=64):
    with store.atomic_output(path, World()) as t:
        store.create_volume(t, img.shape, "float32", store.volume_attrs("denoise", 0.5), chunk=chunk,
                            shard=shard)[...] = img
    return str(path)


def dice(a, b, c):
    x, y = a == c, b == c
    s = x.sum() + y.sum()
    return None if s == 0 else float(2 * (x & y).sum() / s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--network", action="store_true")
    args = ap.parse_args()
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        img, truth = make_phantom((48, 48, 48), seed=2)
        try:
            from batterytwin.denoise.nlm import nlm
            import torch
            den = nlm(torch.from_numpy(img), patch_size=5, search_radius=6, h=0.06).numpy()
        except Exception as exc:  # noqa: BLE001 - the bench still reports the raw-image figures
            print(f"NLM unavailable ({exc}); using the noisy image", file=sys.stderr)
            den = img
        for name, x in (("noisy", img), ("denoised", den)):
            for r in (0, 1):
                cfg = merge_config({"method": "gmm", "gmm": {"clean_radius": r}})
                fig = segment_gmm(write(tmp / f"{name}.zarr", x), str(tmp / f"l_{name}{r}.zarr"), None, cfg)
                lab = store.open_volume(tmp / f"l_{name}{r}.zarr").array[...]
                out[f"phantom48_{name}_radius{r}"] = {
                    "dice": {n: dice(lab, truth, c) for c, n in CLASSES.items()},
                    "fraction_error": {n: float((lab == c).mean() - (truth == c).mean()) for c, n in CLASSES.items()},
                    "cleaned_voxels": fig["cleaned_voxels"], "means": fig["means"],
                    "mean_dice_of_mapped_classes": float(np.mean([dice(lab, truth, c) for c, n in CLASSES.items()
                                                                  if n in fig["component_classes"]]))}
        n = args.size
        big, _ = make_phantom((n, n, n), seed=3)
        vol = write(tmp / "big.zarr", big, 64, 128)
        cfg = merge_config({"method": "gmm", "infer": {"chunk": 64, "shard": 128}})
        t0 = time.perf_counter()
        fig = segment_gmm(vol, str(tmp / "big_labels.zarr"), None, cfg)
        out[f"gmm_{n}^3_wall_s"] = time.perf_counter() - t0
        out[f"gmm_{n}^3_fit_s"] = fig["fit_s"]
        if args.network:
            import torch
            from batterytwin.segment.infer import segment_volume
            from batterytwin.segment.model import build_model
            seg = merge_config({"model": {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1}})
            net = build_model(seg["model"], len(CLASSES))
            torch.save({"format": "batterytwin.segment/1", "state_dict": net.state_dict(), "model": seg["model"],
                        "classes": {str(k): v for k, v in CLASSES.items()}, "n_classes": len(CLASSES),
                        "patch_size": [32, 32, 32], "normalisation": "percentile_1_99", "train": {}, "step": 0,
                        "ignore_label": 255}, tmp / "model.pt")
            t0 = time.perf_counter()
            segment_volume(vol, str(tmp / "model.pt"), str(tmp / "net.zarr"), None,
                           dict(seg["infer"], chunk=64, shard=128))
            out[f"network_{n}^3_wall_s"] = time.perf_counter() - t0
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
