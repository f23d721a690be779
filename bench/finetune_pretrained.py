"""Fine-tuning the shipped batteryNET on 3 labelled slices: Dice on the unlabelled voxels, and image -> tortuosity.

Two "own scans" the project's generators did not draw, each labelled on ``--slices`` x-slices only:

- ``electrode``: a Li-ion electrode (pore / active material / binder; tests/electrode.py: PoreSpy
  geometry imaged by tests/ctforward.py's radon -> Poisson -> FBP), a class set the shipped model
  never saw: it keeps its encoder and decoder body and starts a new head;
- ``cell``: a tests/ctforward.py cell with the shipped model's six classes (its head is kept).

Each is trained for ``--steps`` steps from the shipped model (``init_from: pretrained``) and from
random weights with the same settings; the whole scan is segmented and scored on the voxels that
were not labelled. For the electrode the pore tortuosity of the segmented volume is compared per axis
with TauFactor on the true labels (TauFactor on both, so only the segmentation differs).

    python bench/finetune_pretrained.py                       # about 20 minutes on one busy core
    python bench/finetune_pretrained.py --steps 40 --size 32  # a smoke run

Writes ``bench/results/finetune_pretrained.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from batterytwin import store  # noqa: E402
from batterytwin.contracts import CLASSES, IGNORE_LABEL  # noqa: E402
from batterytwin.distributed import World  # noqa: E402
from batterytwin.segment.config import merge_config  # noqa: E402
from batterytwin.segment.data import intensity_range  # noqa: E402
from batterytwin.segment.train import TrainInput, load_model, train  # noqa: E402
from batterytwin.segment.window import predict_region  # noqa: E402
from tests import electrode  # noqa: E402
from tests.ctforward import dice_per_class, forward_volume, sparse_labels  # noqa: E402


def write_pair(root: Path, name: str, image: np.ndarray, labels: np.ndarray, classes: dict) -> TrainInput:
    vol, lab = root / f"{name}.zarr", root / f"{name}_labels.zarr"
    with store.atomic_output(vol, World()) as t:
        store.create_volume(t, image.shape, "float32", store.volume_attrs("bench", 0.5), chunk=16,
                            shard=32)[...] = image
    with store.atomic_output(lab, World()) as t:
        store.create_volume(t, labels.shape, "uint8", store.volume_attrs(
            "bench", 0.5, classes={str(k): v for k, v in classes.items()}, ignore_label=IGNORE_LABEL),
            chunk=16, shard=32, fill_value=IGNORE_LABEL)[...] = labels
    return TrainInput(str(vol), str(lab))


def segment_array(model: Path, image: np.ndarray) -> tuple[np.ndarray, float]:
    import torch

    net, meta = load_model(str(model))
    lo, hi = intensity_range(image)
    t = time.perf_counter()
    with torch.no_grad():
        probs = predict_region(net, image, tuple(slice(0, n) for n in image.shape), meta["patch_size"],
                               int(meta["n_classes"]), lambda x: (x - lo) / (hi - lo))
    return probs.argmax(0).numpy().astype(np.uint8), time.perf_counter() - t


def pore_tau(labels: np.ndarray) -> list[float | None]:
    from batterytwin.microstructure.driver import taufactor_tau

    taus = []
    for axis in range(3):
        try:
            taus.append(round(taufactor_tau(labels == 0, axis), 4))
        except Exception:  # a pore phase that does not percolate along this axis
            taus.append(None)
    return taus


def run_scan(root: Path, name: str, image, truth, classes, args) -> dict:
    sparse, idx = sparse_labels(truth, args.slices, axis=2)
    pair = write_pair(root, name, image, sparse, classes)
    hidden = sparse == IGNORE_LABEL
    rec = {"shape": list(image.shape), "labelled_slices_x": idx, "labelled_voxels": int((~hidden).sum()),
           "runs": {}}
    if name == "electrode":
        rec["tau_true_taufactor"] = pore_tau(truth)
    for start, init in [(s, "pretrained" if s == "pretrained" else None) for s in args.starts]:
        cfg = merge_config({"train": {"steps": args.steps, "batch_size": 2, "patch_size": [32, 32, 32],
                                      "lr": args.lr, "warmup_steps": 10, "val_fraction": 0.0, "threads": 1,
                                      "seed": args.seed, "init_from": init, "checkpoint_every": 10**6,
                                      "val_every": 10**6, "checkpoint_dir": str(root / f"ck_{name}_{start}")}})
        model = root / f"{name}_{start}.pt"
        t, c = time.perf_counter(), time.process_time()
        train(cfg, [pair], str(model), str(root / f"{name}_{start}.json"), resume="no")
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        pred, infer_s = segment_array(model, image)
        d = dice_per_class(pred, truth, hidden, classes)
        run = {"train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1), "dice": d,
               "mean_dice": float(np.nanmean(list(d.values()))), "infer_mvox_per_s": round(image.size / infer_s / 1e6, 4)}
        if name == "electrode":
            run["tau_segmented_taufactor"] = pore_tau(pred)
            run["tau_error_percent"] = [None if a is None or b is None else round(100 * (b - a) / a, 2)
                                        for a, b in zip(rec["tau_true_taufactor"], run["tau_segmented_taufactor"])]
        rec["runs"][start] = run
        print(f"{name} from {start}: mean Dice {run['mean_dice']:.3f} "
              + " ".join(f"{k} {v:.3f}" for k, v in d.items())
              + (f"; pore tau error % {run['tau_error_percent']}" if name == "electrode" else "")
              + f"; train {cpu:.0f} CPU s", flush=True)
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="edge of each scan (voxels)")
    ap.add_argument("--slices", type=int, default=3, help="labelled x slices")
    ap.add_argument("--steps", type=int, default=3000, help="fine-tuning steps (batch 2, 32^3; ~4 CPU minutes)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--scan-seed", type=int, default=61, help="seed of both scans")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scans", nargs="+", default=["electrode", "cell"], choices=("electrode", "cell"))
    ap.add_argument("--starts", nargs="+", default=["pretrained", "scratch"], choices=("pretrained", "scratch"))
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "finetune_pretrained.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    n = args.size
    result = {"bench": "finetune_pretrained", "date": datetime.date.today().isoformat(),
              "command": "python " + " ".join(sys.argv), "steps": args.steps, "lr": args.lr, "scans": {}}
    with tempfile.TemporaryDirectory(prefix="bench-ftp-") as tmp:
        root = Path(tmp)
        if "electrode" in args.scans:
            image, truth = electrode.electrode_volume((n, n, n), seed=args.scan_seed)
            result["scans"]["electrode"] = run_scan(root, "electrode", image, truth, electrode.CLASSES, args)
        if "cell" in args.scans:
            image, truth = forward_volume((n, n, n), seed=args.scan_seed)
            result["scans"]["cell"] = run_scan(root, "cell", image, truth, CLASSES, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
