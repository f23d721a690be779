"""Fine-tuning from sparse labels on "your own scan": Dice against the number of labelled slices.

A model is trained on phantoms only (the demo's ``segment`` model and training settings of
config.yaml, on two 48^3 phantoms of seeds 0 and 1). The "user's scan" is a volume of the
independent CT forward model (tests/ctforward.py: other geometry, other contrasts, radon/Poisson/FBP).
On it, 1, 3 and 10 slices along x are labelled (the rest is 255), and the phantom model is
fine-tuned on them (``segment.train.init_from``); for reference the same labelled slices also
train a model from scratch with the same steps. Every model segments the whole scan (the global
sliding window of ``segment``), and Dice, precision, recall (per class) and the ECE are measured on
the voxels that were NOT labelled (:class:`batterytwin.segment.metrics.SegmentationScores`).

    python bench/finetune.py                  # about 10 minutes on 2 busy CPU cores
    python bench/finetune.py --quick          # fewer steps (a smoke run, a few minutes)

Writes ``bench/results/finetune-<date>.json`` (``--out`` to override).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))

from batterytwin import store  # noqa: E402
from batterytwin.contracts import CLASSES, IGNORE_LABEL  # noqa: E402
from batterytwin.distributed import World  # noqa: E402
from batterytwin.ingest.phantom import make_phantom  # noqa: E402
from batterytwin.segment.config import merge_config  # noqa: E402
from batterytwin.segment.data import intensity_range  # noqa: E402
from batterytwin.segment.metrics import SegmentationScores  # noqa: E402
from batterytwin.segment.train import TrainInput, load_model, train  # noqa: E402
from batterytwin.segment.window import predict_region  # noqa: E402
from tests.ctforward import forward_volume, sparse_labels  # noqa: E402

CLASS_ATTRS = {str(k): v for k, v in CLASSES.items()}


def write_pair(root: Path, name: str, image: np.ndarray, labels: np.ndarray) -> TrainInput:
    vol_p, lab_p = root / f"{name}.zarr", root / f"{name}_labels.zarr"
    with store.atomic_output(vol_p, World()) as t:
        store.create_volume(t, image.shape, "float32", store.volume_attrs("bench", 0.5), chunk=16,
                            shard=32)[...] = image
    with store.atomic_output(lab_p, World()) as t:
        store.create_volume(t, labels.shape, "uint8", store.volume_attrs("bench", 0.5, classes=CLASS_ATTRS,
                                                                          ignore_label=IGNORE_LABEL),
                            chunk=16, shard=32, fill_value=IGNORE_LABEL)[...] = labels
    return TrainInput(str(vol_p), str(lab_p))


def score(model: Path, image: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict:
    """Dice/precision/recall/ECE of ``model`` on the voxels of ``mask`` (the unlabelled ones)."""
    net, meta = load_model(str(model))
    lo, hi = intensity_range(image)
    probs = predict_region(net, image, tuple(slice(0, n) for n in image.shape), meta["patch_size"],
                           int(meta["n_classes"]), lambda x: (x - lo) / (hi - lo))
    s = SegmentationScores(int(meta["n_classes"]))
    s.update(probs, np.where(mask, truth, IGNORE_LABEL).astype(np.uint8))
    r = s.result()
    named = {key: {CLASSES[c]: v for c, v in enumerate(r[key])} for key in ("dice", "precision", "recall")}
    present = [v for c, v in enumerate(r["dice"]) if v is not None and (truth[mask] == c).any()]
    return {**named, "mean_dice": float(np.mean(present)), "ece": r["ece"], "voxels": r["voxels"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps (smoke run)")
    ap.add_argument("--pretrain-steps", type=int, help="phantom training steps (default: config.yaml's)")
    ap.add_argument("--finetune-steps", type=int, default=100, help="fine-tuning steps")
    ap.add_argument("--finetune-lr", type=float, default=2e-3, help="fine-tuning peak learning rate")
    ap.add_argument("--slices", type=int, nargs="+", default=[1, 3, 10], help="labelled x slices")
    ap.add_argument("--shape", type=int, nargs=3, default=[48, 64, 64], help="the scan's shape (z y x)")
    ap.add_argument("--seed", type=int, default=11, help="seed of the scan (tests/ctforward.py)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    demo = yaml.safe_load((REPO / "config.yaml").read_text())["segment"]
    base = merge_config({"model": demo.get("model", {}), "train": dict(demo["train"], threads=args.threads)})
    pre_steps = args.pretrain_steps or (60 if args.quick else base["train"]["steps"])
    ft_steps = 20 if args.quick else args.finetune_steps
    result = {"bench": "finetune", "date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
              "model": base["model"], "pretrain": {"steps": pre_steps, "volumes": "phantom 48^3 seeds 0, 1"},
              "scan": {"generator": "tests/ctforward.py", "shape": args.shape, "seed": args.seed},
              "finetune": {"steps": ft_steps, "lr": args.finetune_lr, "axis": "x"}, "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        root = Path(tmp)
        phantoms = [write_pair(root, f"phantom{s}", *make_phantom((48, 48, 48), seed=s)) for s in (0, 1)]
        pre_cfg = copy.deepcopy(base)
        pre_cfg["train"].update(steps=pre_steps, val_fraction=0.0, checkpoint_dir=str(root / "ck_pre"), init_from=None)
        t = time.perf_counter()
        train(pre_cfg, phantoms, str(root / "pretrained.pt"), str(root / "pretrained.json"), resume="no")
        result["pretrain"]["wall_s"] = round(time.perf_counter() - t, 1)
        print(f"pretrained on phantoms ({pre_steps} steps) in {result['pretrain']['wall_s']} s", flush=True)

        image, truth = forward_volume(tuple(args.shape), seed=args.seed)
        everywhere = np.ones(truth.shape, bool)
        r0 = score(root / "pretrained.pt", image, truth, everywhere)
        result["runs"].append({"labelled_slices": 0, "start": "phantom model", **r0})
        print(f"0 slices, phantom model: mean Dice {r0['mean_dice']:.3f}, ECE {r0['ece']:.3f}", flush=True)
        for n in args.slices:
            sparse, idx = sparse_labels(truth, n, axis=2)
            pair = write_pair(root, f"scan{n}", image, sparse)
            unlabelled = sparse == IGNORE_LABEL
            r = score(root / "pretrained.pt", image, truth, unlabelled)  # the same voxels, not fine-tuned
            result["runs"].append({"labelled_slices": n, "slice_indices": idx, "start": "phantom model, not tuned",
                                   "train_s": 0.0, "labelled_voxels": int((~unlabelled).sum()), **r})
            for start in ("phantom model", "scratch"):
                cfg = copy.deepcopy(base)
                cfg["train"].update(steps=ft_steps, lr=args.finetune_lr, warmup_steps=min(5, ft_steps // 4),
                                    val_fraction=0.0, checkpoint_dir=str(root / f"ck_{n}_{start[0]}"),
                                    init_from=str(root / "pretrained.pt") if start == "phantom model" else None)
                model = root / f"m_{n}_{start[0]}.pt"
                t = time.perf_counter()
                train(cfg, [pair], str(model), str(root / f"m_{n}_{start[0]}.json"), resume="no")
                wall = round(time.perf_counter() - t, 1)
                r = score(model, image, truth, unlabelled)
                result["runs"].append({"labelled_slices": n, "slice_indices": idx, "start": start, "train_s": wall,
                                       "labelled_voxels": int((~unlabelled).sum()), **r})
                print(f"{n} slices, from {start}: mean Dice {r['mean_dice']:.3f} (redeposited Li "
                      f"{r['dice']['redeposited_lithium']}), ECE {r['ece']:.3f}, {wall} s", flush=True)
    out = args.out or REPO / "bench" / "results" / f"finetune-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
