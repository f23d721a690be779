"""Pretrain the shipped batteryNET from scratch on domain-randomised cells, and score it zero-shot.

The recipe (:data:`RECIPE`, a ``segment`` config section) goes through the ordinary training
harness (:func:`batterytwin.segment.train.train`): randomised cells only (``randomise.fraction: 1``,
no label store), every random choice from ``train.seed``. It checkpoints every
``checkpoint_every`` steps into ``--work``, resumes from there when rerun with the same settings
(``--resume auto``), and on SIGUSR1/SIGTERM writes a checkpoint and exits 75. On CUDA the harness
trains with bf16 autocast (``--device cuda``); nothing else changes.

    python bench/pretrain_segment.py                       # the shipped model (about an hour on one CPU thread)
    python bench/pretrain_segment.py --steps 20 --work /tmp/pt   # a smoke run
    python bench/pretrain_segment.py --eval work/pretrain/checkpoint.pt   # zero-shot scores of a checkpoint
    python bench/pretrain_segment.py --eval pretrained --out bench/results/pretrained_zeroshot.json

``--eval`` segments ctforward volumes (tests/ctforward.py: an independent geometry and CT forward
model, seeds never used in training: the generator's stream is ``randomise.TAG``, not these seeds)
at several seeds and photon counts, and reports per-class Dice against multi-Otsu with an oracle
class map (scikit-image).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

# The shipped model's recipe: the only place its settings live (recorded in the model file's "train").
RECIPE = {
    "model": {"arch": "unet", "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1},
    "train": {
        "steps": 11000, "batch_size": 4, "patch_size": [32, 32, 32], "lr": 0.004, "warmup_steps": 200,
        "min_lr_ratio": 0.02, "class_weights": [1, 1, 1, 1, 10, 1], "class_balance": 1.0, "seed": 2024,
        "checkpoint_every": 100, "val_every": 10**9, "val_fraction": 0.0, "init_from": None,
        "randomise": {"fraction": 1.0, "volume_size": [48, 48, 48], "patches_per_volume": 4},
    },
}
# ctforward settings of the zero-shot evaluation: (seed, ForwardParams overrides); training never draws from
# ctforward. The last two change the scanner and the materials too: a darker (aluminium-like) collector below
# the cathode, other contrasts, a wider detector blur, fewer angles, more and thinner deposits.
_OTHER = {0: 0.0, 1: 0.45, 2: 0.08, 3: 0.95, 4: 0.16, 5: 0.7}
EVAL_VOLUMES = [(901, {}), (902, {}), (903, {"photons": 3.0e3}), (904, {"photons": 3.0e4}), (905, {}),
                (906, {"attenuation": _OTHER, "detector_blur": 1.0, "photons": 2.0e4}),
                (907, {"n_angles": 64, "n_tubes": 8, "tube_radius": 0.9, "n_agglomerates": 5})]


def recipe_config(steps: int | None = None, work: str | None = None, threads: int = 1, device: str = "auto",
                  workers: int = 0) -> dict:
    """The merged ``segment`` config of the recipe (``steps``, ``work``, ``threads``, ``device`` and the
    DataLoader ``workers`` overridden; only ``steps`` changes the weights)."""
    from batterytwin.segment.config import merge_config

    user = copy.deepcopy(RECIPE)
    user["train"]["num_workers"] = int(workers)
    if steps is not None:
        user["train"]["steps"] = int(steps)
    user["train"]["threads"] = int(threads)
    user["train"]["device"] = device
    if work is not None:
        user["train"]["checkpoint_dir"] = str(work)
    return merge_config(user)


def pretrain(work: Path, steps: int | None, threads: int, device: str, resume: str, workers: int = 0) -> int:
    from batterytwin.segment.train import train

    cfg = recipe_config(steps, str(work), threads, device, workers)
    work.mkdir(parents=True, exist_ok=True)
    return train(cfg, [], str(work / "model.pt"), str(work / "metrics.json"), resume=resume)


def throughput(work: Path, out: Path) -> dict:
    """Training throughput of a finished run (``--throughput-out``; bench/gpu.sh's pretraining line)."""
    m = json.loads((work / "metrics.json").read_text())
    t = RECIPE["train"]
    rec = {"steps": m["steps"], "wall_s": m["wall_s"], "steps_per_s": m["steps"] / m["wall_s"],
           "train_voxels_per_s": m["train_voxels_per_s"], "device": m["device"], "batch_size": t["batch_size"],
           "patch_size": t["patch_size"], "model": RECIPE["model"],
           "cells_per_s": m["steps"] * t["batch_size"] / t["randomise"]["patches_per_volume"] / m["wall_s"],
           "recipe_steps": t["steps"], "recipe_hours_at_this_rate": t["steps"] / (m["steps"] / m["wall_s"]) / 3600}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rec, indent=1) + "\n")
    print(f"pretraining: {rec['steps_per_s']:.2f} steps/s on {rec['device']} ({rec['train_voxels_per_s']:.3g} voxel/s); "
          f"the recipe's {t['steps']} steps: {rec['recipe_hours_at_this_rate']:.2f} h")
    return rec


def export(checkpoint: Path, out: Path) -> Path:
    """A model file (the format ``train`` writes) from a training checkpoint of the recipe (an early stop)."""
    import torch

    from batterytwin.contracts import CLASSES, IGNORE_LABEL
    from batterytwin.segment.train import FORMAT
    from batterytwin.training import save_atomic

    ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = recipe_config()
    payload = {"format": FORMAT, "state_dict": ck["model"], "model": cfg["model"],
               "classes": {str(k): v for k, v in CLASSES.items()}, "n_classes": len(CLASSES),
               "patch_size": cfg["train"]["patch_size"], "normalisation": "percentile_1_99",
               "train": dict(cfg["train"], steps_done=int(ck["step"])), "step": int(ck["step"]),
               "ignore_label": IGNORE_LABEL, "init": None}
    save_atomic(payload, str(out))
    return out


def ship(model: Path) -> str:
    """Copy ``model`` to the package's shipped file and record its sha256 in segment/pretrained.py."""
    import re
    import shutil

    from batterytwin.segment import pretrained

    target = REPO / "src" / "batterytwin" / "segment" / "weights" / "batterynet.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, target)
    digest = pretrained.file_sha256(target)
    code = Path(pretrained.__file__)
    code.write_text(re.sub(r'SHA256 = "[0-9a-f]{64}"', f'SHA256 = "{digest}"', code.read_text()))
    print(f"shipped {model} as {target} ({target.stat().st_size / 1e6:.1f} MB, sha256 {digest})")
    return digest


def _net_of(path: str):
    """(network, patch size) of a model file, the name ``pretrained``, or a training checkpoint of the recipe."""
    import torch

    from batterytwin.segment.model import build_model
    from batterytwin.segment.train import load_model

    payload = torch.load(path, map_location="cpu", weights_only=True) if Path(path).is_file() else None
    if payload is not None and "run_key" in payload:  # a checkpoint of this recipe
        net = build_model(RECIPE["model"], 6)
        net.load_state_dict(payload["model"])
        return net.eval(), RECIPE["train"]["patch_size"], int(payload["step"])
    net, meta = load_model(path)
    return net, meta["patch_size"], int(meta.get("step", -1))


def evaluate(path: str, volumes=EVAL_VOLUMES, shape=(64, 64, 64)) -> dict:
    """Zero-shot per-class Dice of a model (or checkpoint) on ctforward volumes, with the multi-Otsu oracle."""
    import torch

    from batterytwin.contracts import CLASSES
    from batterytwin.segment.data import intensity_range
    from batterytwin.segment.window import predict_region
    from tests.ctforward import ForwardParams, dice_per_class, forward_volume, otsu_oracle

    net, patch, step = _net_of(path)
    rows = []
    for seed, over in volumes:
        image, truth = forward_volume(shape, seed=seed, params=ForwardParams(**over))
        lo, hi = intensity_range(image)
        t = time.perf_counter()
        with torch.no_grad():
            probs = predict_region(net, image, tuple(slice(0, n) for n in image.shape), patch, len(CLASSES),
                                   lambda x: (x - lo) / (hi - lo), overlap=0.5)
        infer_s = time.perf_counter() - t
        pred = probs.argmax(0).numpy().astype(np.uint8)
        d = dice_per_class(pred, truth)
        o = otsu_oracle(image, truth)
        rows.append({"seed": seed, "forward_params": {k: v for k, v in over.items()}, "dice": d, "mean_dice": float(np.nanmean(list(d.values()))),
                     "otsu_oracle_dice": o, "otsu_oracle_mean": float(np.nanmean(list(o.values()))),
                     "infer_s": round(infer_s, 2), "mvox_per_s": round(image.size / infer_s / 1e6, 4)})
        print(f"  seed {seed} {over}: mean Dice {rows[-1]['mean_dice']:.3f} (Otsu oracle "
              f"{rows[-1]['otsu_oracle_mean']:.3f}) " + " ".join(f"{k[:6]} {v:.2f}" for k, v in d.items()), flush=True)
    per_class = {name: float(np.nanmean([r["dice"][name] for r in rows])) for name in CLASSES.values()}
    out = {"model": str(path), "step": step, "shape": list(shape), "volumes": rows, "per_class_mean": per_class,
           "mean_dice": float(np.mean([r["mean_dice"] for r in rows])),
           "otsu_oracle_mean": float(np.mean([r["otsu_oracle_mean"] for r in rows]))}
    print(f"step {step}: mean Dice {out['mean_dice']:.3f} (Otsu oracle {out['otsu_oracle_mean']:.3f}); "
          + " ".join(f"{k} {v:.3f}" for k, v in per_class.items()), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "work" / "pretrain", help="checkpoints and outputs")
    ap.add_argument("--steps", type=int, help="override the recipe's steps (a short run)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--resume", default="auto", choices=("auto", "yes", "no"))
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (cell generation; not the weights)")
    ap.add_argument("--throughput-out", type=Path, help="after the run, write its steps/s here (JSON)")
    ap.add_argument("--eval", metavar="MODEL", help="score a model file, 'pretrained' or a checkpoint instead")
    ap.add_argument("--out", type=Path, help="--eval: write the JSON here")
    ap.add_argument("--export", metavar="CHECKPOINT", type=Path, help="write a model file (--out) from a checkpoint")
    ap.add_argument("--ship", metavar="MODEL", type=Path, help="make MODEL the shipped batteryNET (copy, sha256)")
    args = ap.parse_args(argv)
    from batterytwin.errors import InputError

    try:
        if args.eval:
            import torch

            torch.set_num_threads(args.threads)
            path = args.eval
            if path == "pretrained":
                from batterytwin.segment.pretrained import resolve_model

                path = str(resolve_model(path))
            result = evaluate(path)
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(result, indent=1) + "\n")
            return 0
        if args.export:
            export(args.export, args.out or args.work / "model.pt")
            return 0
        if args.ship:
            ship(args.ship)
            return 0
        code = pretrain(args.work, args.steps, args.threads, args.device, args.resume, args.workers)
        if code == 0 and args.throughput_out:
            throughput(args.work, args.throughput_out)
        if code == 0 and args.steps is None:  # the full recipe: its model becomes the shipped one
            ship(args.work / "model.pt")
        return code
    except InputError as exc:
        print(f"pretrain_segment: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sys.exit(main())
