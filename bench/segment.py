"""Benchmark of the segmentation stage, each figure next to its reference measured in the same run.

1. Training throughput (voxels/s per device): the batterytwin network (MONAI residual UNet without
   the biases that instance norm cancels; channels-last-3d + bf16 autocast on GPU) next to plain
   MONAI ``UNet`` eager and, with ``--compile``, under ``torch.compile``; AdamW, fwd + bwd + step.
2. Inference end to end (store in, store out: read, normalise, sliding window, argmax, entropy,
   write), Mvoxel/s, with 1 and 2 ranks (``mpiexec``).
3. ``--generalisation``: Dice per class on a fixed set of CT volumes from ``tests/ctforward.py``
   (radon + Poisson + FBP of ellipsoid cells, code independent of the phantom and of the training
   generator), for models trained with the ``config.yaml`` segment settings and each
   ``--fractions`` share of domain-randomised patches; multi-Otsu with an oracle class mapping on
   the same volumes as the reference. JSON: ``bench/results/segment_generalisation.json``.

Default sizes run in about 2 minutes on 2 CPU cores; ``--full`` uses the issue's anchor network
(channels 32-512, 2 residual units, 128^3 patches) for GPUs.

    python bench/segment.py                       # CPU, small
    python bench/segment.py --full --compile      # GPU, the anchor configuration
    python bench/segment.py --generalisation --fractions 0 1 --gen-steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from batterytwin import store  # noqa: E402
from batterytwin.distributed import World  # noqa: E402
from batterytwin.ingest.phantom import CLASSES, make_phantom  # noqa: E402
from batterytwin.segment.model import build_model  # noqa: E402


def train_throughput(net, batch, patch, steps, device, amp, channels_last) -> float:
    """Voxels per second of AdamW training steps (after 2 warm-up steps)."""
    net = net.to(device)
    x = torch.randn(batch, 1, patch, patch, patch, device=device)
    y = torch.randint(0, 6, (batch, patch, patch, patch), device=device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = net(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * patch**3 * steps / (time.perf_counter() - t)


def infer_worker(args) -> None:
    """Run under mpiexec: segment a store, print the figures of rank 0 as JSON."""
    from batterytwin.distributed import get_world
    from batterytwin.segment.config import merge_config
    from batterytwin.segment.infer import segment_volume

    infer = merge_config({"infer": {"chunk": 32, "shard": args.shard, "sw_batch_size": 4}})["infer"]
    world = get_world()
    out = Path(args.workdir) / f"labels_{world.size}.zarr"
    fig = segment_volume(args.volume, args.model, str(out), str(Path(args.workdir) / f"unc_{world.size}.zarr"), infer)
    if world.is_root:
        print("FIGURES " + json.dumps(fig), flush=True)


def write_pair(root: Path, image: np.ndarray, labels: np.ndarray, name: str) -> tuple[Path, Path]:
    """Volume and label stores of an in-memory pair (the bench's stand-in for ingest)."""
    vol, lab = root / f"{name}_volume.zarr", root / f"{name}_truth.zarr"
    with store.atomic_output(vol, World()) as t:
        store.create_volume(t, image.shape, "float32", store.volume_attrs("bench", 0.5), chunk=16)[...] = image
    with store.atomic_output(lab, World()) as t:
        store.create_volume(t, labels.shape, "uint8", store.volume_attrs(
            "bench", 0.5, classes={str(k): v for k, v in CLASSES.items()}, ignore_label=255), chunk=16)[...] = labels
    return vol, lab


def segment_in_memory(model: Path, image: np.ndarray) -> np.ndarray:
    """Labels of ``image`` by the model: whole-volume normalisation and the sliding window of inference."""
    from batterytwin.segment.data import intensity_range
    from batterytwin.segment.train import load_model
    from batterytwin.segment.window import predict_region

    net, meta = load_model(str(model))
    lo, hi = intensity_range(image)
    probs = predict_region(net, image, tuple(slice(0, n) for n in image.shape), meta["patch_size"],
                           int(meta["n_classes"]), lambda x: (x - lo) / (hi - lo), overlap=0.25)
    return probs.argmax(0).numpy().astype(np.uint8)


def generalisation(args) -> dict:
    """Train with the demo's segment settings at each randomised fraction; Dice on ctforward volumes."""
    sys.path.insert(0, str(REPO))
    from batterytwin.config import section_from_file
    from batterytwin.segment.config import merge_config
    from batterytwin.segment.train import TrainInput, train
    from tests.ctforward import dice_per_class, forward_volume, otsu_oracle

    n = args.gen_size
    tests = [forward_volume((n, n, n), seed=s) for s in args.gen_seeds]
    otsu = [otsu_oracle(img, lab) for img, lab in tests]
    names = list(CLASSES.values())
    result = {"ctforward": {"shape": [n] * 3, "seeds": args.gen_seeds},
              "otsu_oracle": {"per_volume": otsu, **summary(otsu, names)}, "models": []}
    print(f"gen    multi-Otsu (oracle mapping) on {len(tests)} ctforward {n}^3: mean Dice "
          f"{result['otsu_oracle']['mean_dice']:.3f}")
    user = section_from_file(REPO / "config.yaml", "segment")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_pair = write_pair(tmp, *make_phantom((48, 48, 48), seed=1), "phantom1")
        val_pair = write_pair(tmp, *make_phantom((48, 48, 48), seed=2), "phantom2")
        for frac in args.fractions:
            train_cfg = dict(user.get("train", {}), threads=args.threads or 1, val_every=10**6,
                             checkpoint_dir=str(tmp / f"ckpt{frac}"))
            if args.gen_steps:
                train_cfg["steps"] = args.gen_steps
            train_cfg["randomise"] = dict(train_cfg.get("randomise", {}), fraction=frac)
            cfg = merge_config(dict(user, train=train_cfg))
            out = tmp / f"model{frac}"
            t, cpu = time.time(), time.process_time()
            rc = train(cfg, [TrainInput(*map(str, train_pair))], str(out / "model.pt"), str(out / "metrics.json"),
                       val_inputs=[TrainInput(*map(str, val_pair))], resume="no")
            if rc != 0:  # preempted (signal): keep what was measured so far
                print(f"gen    fraction {frac}: training stopped (exit {rc}); later models not measured")
                break
            wall, cpu = time.time() - t, time.process_time() - cpu
            metrics = store.read_json(out / "metrics.json")
            dice = [dice_per_class(segment_in_memory(out / "model.pt", img), lab) for img, lab in tests]
            entry = {"randomised_fraction": frac, "steps": cfg["train"]["steps"], "train_wall_s": wall,
                     "train_cpu_s": cpu,
                     "threads": args.threads or 1, "phantom_seed2_mean_dice": metrics["final_mean_dice"],
                     "phantom_seed2_dice": metrics["final_dice"], "per_volume": dice, **summary(dice, names)}
            result["models"].append(entry)
            print(f"gen    fraction {frac}: {entry['steps']} steps in {wall:.0f} s ({cpu:.0f} CPU s); ctforward mean Dice "
                  f"{entry['mean_dice']:.3f} (redeposited Li {entry['dice']['redeposited_lithium']:.3f}); "
                  f"phantom seed 2 {metrics['final_mean_dice']:.3f}")
            print("       per class " + ", ".join(f"{k} {v:.3f}" for k, v in entry["dice"].items()))
    return result


def summary(dice: list[dict], names: list[str]) -> dict:
    """Per-class Dice averaged over volumes (NaN-free classes), and their mean."""
    per = {k: float(np.nanmean([d[k] for d in dice])) for k in names}
    return {"dice": per, "mean_dice": float(np.nanmean(list(per.values())))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="anchor sizes: channels 32-512, 2 res units, 128^3, batch 2")
    ap.add_argument("--compile", action="store_true", help="also time plain MONAI UNet under torch.compile")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--patch", type=int)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--volume-size", type=int, default=96, help="edge of the phantom for the inference bench")
    ap.add_argument("--shard", type=int, default=48, help="output shard edge (each rank owns whole shards)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (training) and per rank (inference); 0 = torch default")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--generalisation", action="store_true",
                    help="only the generalisation section (train, then Dice on ctforward volumes)")
    ap.add_argument("--fractions", type=float, nargs="+", default=[1.0],
                    help="generalisation: train.randomise.fraction of each trained model")
    ap.add_argument("--gen-steps", type=int, help="generalisation: training steps (default: config.yaml's)")
    ap.add_argument("--gen-size", type=int, default=64, help="generalisation: ctforward volume edge")
    ap.add_argument("--gen-seeds", type=int, nargs="+", default=[101, 102, 103],
                    help="generalisation: ctforward seeds (the test set)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "segment_generalisation.json"),
                    help="generalisation: JSON output")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--volume", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return infer_worker(args)
    if args.generalisation:
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        result = generalisation(args)
        result["command"] = " ".join(["python", "bench/segment.py", *sys.argv[1:]])
        store.write_json(args.out, result)
        print(f"wrote {args.out}")
        return None

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    gpu = device.type == "cuda"
    if args.full:
        mcfg = {"arch": "unet", "channels": [32, 64, 128, 256, 512], "strides": [2, 2, 2, 2], "num_res_units": 2}
        batch, patch, steps = args.batch or 2, args.patch or 128, args.steps or 20
    else:
        mcfg = {"arch": "unet", "channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1}
        batch, patch, steps = args.batch or 2, args.patch or 32, args.steps or 10
    name = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; network channels {mcfg['channels']}, {mcfg['num_res_units']} residual units; "
          f"patch {patch}^3, batch {batch}, {steps} timed steps")

    from monai.networks.nets import UNet

    def plain():
        torch.manual_seed(0)
        return UNet(3, 1, 6, channels=mcfg["channels"], strides=mcfg["strides"], num_res_units=mcfg["num_res_units"])

    torch.manual_seed(0)
    ours = train_throughput(build_model(mcfg, 6), batch, patch, steps, device, amp=gpu, channels_last=gpu)
    base = train_throughput(plain(), batch, patch, steps, device, amp=gpu, channels_last=False)
    print(f"train  plain MONAI UNet eager          {base:12.4g} voxels/s")
    print(f"train  batterytwin                     {ours:12.4g} voxels/s   ratio {ours / base:.2f}x vs eager")
    if args.compile:
        try:
            t = time.time()
            comp = train_throughput(torch.compile(plain()), batch, patch, steps, device, amp=gpu, channels_last=False)
            print(f"train  plain MONAI UNet torch.compile  {comp:12.4g} voxels/s   (compile+warm-up {time.time() - t:.0f} s)"
                  f"; batterytwin ratio {ours / comp:.2f}x vs compiled")
        except Exception as exc:  # report, do not hide: compile is optional on CPU
            print(f"train  torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")

    # inference end to end, store -> store, 1 vs 2 ranks
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = args.volume_size
        img, lab = make_phantom((n, n, n), seed=0)
        vol = tmp / "volume.zarr"
        with store.atomic_output(vol, World()) as t:
            store.create_volume(t, img.shape, "float32", store.volume_attrs("bench", 0.5), chunk=32,
                                shard=args.shard)[...] = img
        torch.manual_seed(0)
        net = build_model(mcfg, 6)
        torch.save({"format": "batterytwin.segment/1", "state_dict": net.state_dict(), "model": mcfg,
                    "classes": {str(k): v for k, v in CLASSES.items()}, "n_classes": 6,
                    "patch_size": [patch] * 3, "normalisation": "percentile_1_99", "train": {}, "step": 0,
                    "ignore_label": 255}, tmp / "model.pt")
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        if args.threads > 0:
            env["OMP_NUM_THREADS"] = str(args.threads)  # the same threads per rank for 1 and 2 ranks
        figs = {}
        for k in args.ranks:
            cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(k), sys.executable, __file__, "--worker",
                   "--volume", str(vol), "--model", str(tmp / "model.pt"), "--workdir", str(tmp), "--shard",
                   str(args.shard)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("FIGURES ")]
            if proc.returncode or not line:
                print(f"infer  {k} rank(s) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
                continue
            figs[k] = json.loads(line[0][8:])
            print(f"infer  {k} rank(s) store->store {n}^3     {figs[k]['mvoxel_per_s']:12.4g} Mvoxel/s "
                  f"({figs[k]['wall_s']:.1f} s, shards {args.shard}^3, window {patch}^3, overlap 0.25)")
        if 1 in figs and 2 in figs:
            print(f"infer  2 ranks / 1 rank: {figs[2]['mvoxel_per_s'] / figs[1]['mvoxel_per_s']:.2f}x")
            a = store.open_volume(tmp / "labels_1.zarr").array[...]
            b = store.open_volume(tmp / "labels_2.zarr").array[...]
            print(f"infer  voxels whose label differs between 1 and 2 ranks: {int(np.sum(a != b))} of {a.size}")


if __name__ == "__main__":
    main()
