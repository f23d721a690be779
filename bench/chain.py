"""The whole chain at production sizes on CPU: cost and memory of each stage vs voxels, and a projection.

For each ``--sizes`` edge n (default 64 128 256 512) a fresh folder receives a phantom n^3, exported
to a ``.npy`` file (not timed) so that ``ingest`` reads a real file, then every stage runs through
its real CLI (``batterytwin <stage>``) on the stores of the previous one, each in its own
subprocess:

    phantom -> ingest (.npy -> volume.zarr) -> denoise -> segment (network) -> microstructure
            -> simulate -> train-degradation -> predict-degradation

Per stage and size: wall time, voxels/s, peak RSS (``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a
fresh wrapper process, i.e. the stage's own process) and bytes written. The segmentation model is
trained once (``train-seg``, ``--train-steps`` steps on a 64^3 phantom): inference cost is what
scales. Settings: the ``denoise``, ``segment`` and ``microstructure`` sections of ``config.yaml``
(the demo's), the store defaults of ``StoreSettings`` (chunk 64, shard 256: the production layout),
and the small ``cellsim``/``degradation`` sections of ``tests/config.e2e.yaml`` (their cost does not
depend on the volume). ``--denoise-search-radius`` reduces the NLM's work at *every* size (cost per
voxel ~ (2d+1)^3; the exponent is unaffected) so that 512^3 fits a 2-core machine; the JSON says so.

Then, per stage, the exponent of cost vs voxels (``numpy.polyfit`` on log-log over the sizes >=
``--fit-from``), the cost ratio against linear and the peak-RSS ratio between the two largest
sizes, and a projection to a 2048 x 2560 x 2560 frame on 1 node x 4 GPUs and 16 nodes x 4 GPUs
with its assumptions beside it (GPU throughput: "not measured" unless ``--gpu-json`` gives the
output of ``bench/gpu.sh``).

    nice -n 10 python bench/chain.py                                 # 64..512, ~1 h on 2 cores
    python bench/chain.py --sizes 64 128 --out /tmp/chain.json       # a quick look

Writes ``bench/results/chain-cpu-<date>.json`` (top-level ``stages``: per stage ``sizes`` and
``exponent``), saved after every size so that a stopped run keeps what it measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
BIN = Path(sys.executable).parent

# A frame of a beamline detector: 2048 slices of 2560 x 2560 (uint16: ~13 GB).
FRAME = (2048, 2560, 2560)
GPUS_PER_NODE = 4
NODES = (1, 16)
ASSUMPTIONS = {
    "frame_shape": list(FRAME),
    "gpus_per_node": GPUS_PER_NODE,
    "gpu_throughput": "not measured (no GPU in this session): GPU times are null unless --gpu-json gives "
                      "bench/gpu.sh's figures; 'cpu_derived' uses this machine's per-process rate for each rank",
    "parallel_split": "denoise/segment: shards over ranks (no halo exchange, each rank reads its halo); "
                      "phantom/ingest: one writer; microstructure: walker batches over ranks, but every rank "
                      "holds the whole label volume and the statistics run on rank 0; simulate/degradation: "
                      "fixed cost, independent of the volume",
    "cost_model": "t(N) = t(n_ref) * (N / n_ref) ** exponent, from the largest measured size n_ref",
    "memory_model": "peak RSS per process: shard-parallel stages (denoise, segment) keep the value of the largest "
                    "size once it holds a whole shard (their unit of work); other stages keep the largest size's "
                    "value when flat over the two largest sizes (ratio <= 1.5); the whole-volume stage "
                    "(microstructure) grows as a + b N (least squares over the fitted sizes); others as "
                    "(N / n_ref) ** memory_exponent (ingest capped by its slab budget, max_memory_mb)",
    "interconnect_GB_per_s": {"intra_node_nvlink_per_gpu": 450.0, "inter_node_per_gpu": 25.0},
    "allreduce_bytes_per_step": "2 x parameter bytes (fp32 gradients; ring all-reduce sends and receives "
                                "about twice the buffer)",
    "filesystem_GB_per_s_per_node": 5.0,
}

MEASURE = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
with open(sys.argv[1], "w") as log:
    rc = subprocess.call(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall_s": time.perf_counter() - t, "cpu_s": r.ru_utime + r.ru_stime,
                  "peak_rss_mb": r.ru_maxrss / 1024}))
"""

# stage -> how its work splits over ranks (for the projection)
SPLIT = {"phantom": "writer", "ingest": "writer", "denoise": "shards", "segment": "shards",
         "microstructure": "whole", "simulate": "fixed", "train-degradation": "fixed",
         "predict-degradation": "fixed"}
VOLUME_STAGES = ("phantom", "ingest", "denoise", "segment", "microstructure")


# ---------------------------------------------------------------------------------------- analysis

def fit_exponent(voxels: list[float], values: list[float]) -> float | None:
    """Slope of log(value) vs log(voxels) (least squares, ``numpy.polyfit``); None below two points."""
    pts = [(v, c) for v, c in zip(voxels, values) if v > 0 and c is not None and c > 0]
    if len(pts) < 2:
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(x, y, 1)[0])


def linear_ratio(n0: float, t0: float, n1: float, t1: float) -> float:
    """Cost growth against linear from (n0, t0) to (n1, t1): 1 = linear, 8 ** 0.1 ~ 1.23 at n^1.1 over 8x."""
    return (t1 / t0) / (n1 / n0)


def extrapolate(n_ref: float, value_ref: float, exponent: float, n: float) -> float:
    """``value_ref * (n / n_ref) ** exponent``."""
    return value_ref * (n / n_ref) ** exponent


def allreduce_s(param_count: int, gpus: int, gpus_per_node: int, bw: dict) -> dict:
    """Bytes and time of one gradient all-reduce (fp32) per training step.

    Volume per GPU = 2 x parameter bytes (ring all-reduce, (n-1)/n -> 1); the bandwidth is the
    slowest link of the ring: NVLink within one node, the per-GPU network share across nodes.
    """
    nbytes = 2 * 4 * param_count
    if gpus <= 1:
        return {"bytes_per_gpu": 0, "time_s": 0.0, "link": "none"}
    inter = gpus > gpus_per_node
    gbps = bw["inter_node_per_gpu"] if inter else bw["intra_node_nvlink_per_gpu"]
    frac = (gpus - 1) / gpus
    return {"bytes_per_gpu": nbytes, "time_s": nbytes * frac / (gbps * 1e9),
            "link": "inter-node network" if inter else "NVLink"}


def analyse(stages: dict, fit_from: int) -> dict:
    """Per stage: exponent of wall time and of peak RSS vs voxels (sizes >= ``fit_from``^3), the cost
    ratio against linear between the smallest fitted and the largest size, the RSS ratio of the two
    largest sizes, and whether the goals (cost <= 1.2x linear, RSS <= 1.5x) hold."""
    for name, rec in stages.items():
        rows = sorted(((int(k), v) for k, v in rec["sizes"].items()), key=lambda kv: kv[0])
        fit = [(e, v) for e, v in rows if e >= fit_from]
        if name not in VOLUME_STAGES or len(fit) < 2:
            rec.update(exponent=None, memory_exponent=None)
            continue
        vox = [v["voxels"] for _, v in fit]
        rec["exponent"] = fit_exponent(vox, [v["wall_s"] for _, v in fit])
        rec["memory_exponent"] = fit_exponent(vox, [v["peak_rss_mb"] for _, v in fit])
        # CPU seconds (user + system) do not count the time the stage waited for a busy machine
        rec["cpu_exponent"] = (fit_exponent(vox, [v["cpu_s"] for _, v in fit])
                               if all("cpu_s" in v for _, v in fit) else None)
        (e0, a), (e1, b) = fit[0], fit[-1]
        rec["cost_vs_linear"] = {"from": e0, "to": e1, "ratio": linear_ratio(a["voxels"], a["wall_s"],
                                                                             b["voxels"], b["wall_s"])}
        if "cpu_s" in a and "cpu_s" in b:
            rec["cost_vs_linear"]["cpu_ratio"] = linear_ratio(a["voxels"], a["cpu_s"], b["voxels"], b["cpu_s"])
        (e2, c), (e3, d) = rows[-2], rows[-1]
        rec["rss_ratio"] = {"from": e2, "to": e3, "ratio": d["peak_rss_mb"] / c["peak_rss_mb"]}
        rec["goals"] = {"cost_within_1.2x_linear": rec["cost_vs_linear"]["ratio"] <= 1.2,
                        "rss_within_1.5x": rec["rss_ratio"]["ratio"] <= 1.5}
    return stages


def project(stages: dict, frame=FRAME, nodes=NODES, gpus_per_node=GPUS_PER_NODE, gpu: dict | None = None,
            param_count: int | None = None, assumptions: dict = ASSUMPTIONS, shard: int = 256,
            ingest_budget_mb: float = 2048.0, fit_from: int = 128) -> dict:
    """Time and memory of each volume stage for one ``frame`` on ``nodes`` x ``gpus_per_node`` GPUs."""
    n = float(math.prod(frame))
    gpu = gpu or {}
    out: dict = {"assumptions": assumptions, "frame_voxels": int(n), "targets": {}}
    for nn in nodes:
        ranks = nn * gpus_per_node
        target: dict = {"nodes": nn, "gpus": ranks, "stages": {}}
        for name in VOLUME_STAGES:
            rec = stages.get(name)
            if not rec or rec.get("exponent") is None:
                continue
            e_ref, ref = max(((int(k), v) for k, v in rec["sizes"].items()), key=lambda kv: kv[0])
            serial = extrapolate(ref["voxels"], ref["wall_s"], rec["exponent"], n)
            split = SPLIT[name]
            flat = rec["rss_ratio"]["ratio"] <= 1.5
            if split == "shards" and ref["voxels"] >= shard ** 3:
                # the unit of work is one shard: from a volume of one shard on, the working set is fixed
                flat, basis = True, f"one shard ({shard}^3): the largest size measured holds at least one"
                rss = ref["peak_rss_mb"]
            elif flat:
                rss, basis = ref["peak_rss_mb"], "flat over the two largest sizes"
            elif split == "whole":
                # a whole-volume stage: a fixed part (the interpreter, torch) plus bytes per voxel
                fit = [v for k, v in rec["sizes"].items() if int(k) >= fit_from]
                slope, base = np.polyfit([v["voxels"] for v in fit], [v["peak_rss_mb"] for v in fit], 1)
                rss = base + slope * n
                basis = f"{base:.0f} MB + {slope * 2**20:.1f} B/voxel (least squares over the sizes >= {fit_from}^3)"
            else:
                rss = extrapolate(ref["voxels"], ref["peak_rss_mb"], rec["memory_exponent"], n)
                basis = f"grows as voxels ** {rec['memory_exponent']:.2f}"
                if name == "ingest":
                    rss = min(rss, ref["peak_rss_mb"] + ingest_budget_mb)
                    basis += f", capped by ingest's slab budget (max_memory_mb {ingest_budget_mb:.0f})"
            div = ranks if split == "shards" else 1
            written = ref["bytes_written"] * n / ref["voxels"]
            io_s = written / (assumptions["filesystem_GB_per_s_per_node"] * 1e9 * (nn if split == "shards" else 1))
            rate = gpu.get(name)
            target["stages"][name] = {
                "from_size": e_ref, "split": split,
                "cpu_derived_time_s": serial / div, "peak_rss_mb_per_rank": rss, "memory_flat": flat,
                "memory_basis": basis,
                "bytes_written": written, "write_time_s": io_s,
                "gpu_mvoxel_per_s": rate if rate else "not measured",
                "gpu_time_s": (n / (rate * 1e6 * div)) if rate else None,
            }
        if param_count:
            target["training_allreduce"] = {"parameters": param_count,
                                            **allreduce_s(param_count, ranks, gpus_per_node,
                                                          assumptions["interconnect_GB_per_s"])}
        out["targets"][f"{nn}x{gpus_per_node}"] = target
    return out


# ---------------------------------------------------------------------------------------- running

def du(paths) -> int:
    total = 0
    for p in map(Path, paths):
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total


def measured(cmd: list[str], log: Path, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(log), *cmd], capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def settings() -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    small = yaml.safe_load((REPO / "tests" / "config.e2e.yaml").read_text())
    out = {k: cfg.get(k) or {} for k in ("denoise", "segment", "microstructure")}
    for k in ("cellsim", "degradation"):
        out[k] = small[k]
    out["degradation"] = {k: v for k, v in out["degradation"].items() if k != "real_data"}  # sweep only
    out["denoise"].pop("reference", None)  # a workflow key
    for key in ("input", "uncertainty"):
        out["segment"].pop(key, None)
    return out


def export_npy(store_path: Path, npy: Path) -> None:
    """The phantom's image as a ``.npy`` file, slab by slab (memory: one 64-slice slab)."""
    from batterytwin import store

    arr = store.open_volume(store_path).array
    out = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=tuple(arr.shape))
    for z in range(0, arr.shape[0], 64):
        out[z:z + 64] = arr[z:z + 64]
    out.flush()
    del out


def cli(*args) -> list[str]:
    return [str(BIN / "batterytwin"), "-q", *map(str, args)]


def run_size(edge: int, work: Path, model: Path, cfg: dict, a: argparse.Namespace, env: dict) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    w = work
    shape = [edge] * 3
    js = {k: json.dumps(v) for k, v in cfg.items()}
    steps = [
        ("phantom", cli("phantom", w / "phantom.zarr", "--shape", *shape, "--seed", a.seed, "--chunk", a.chunk,
                        "--shard", a.shard), [w / "phantom.zarr"]),
        ("ingest", cli("ingest", w / "scan.npy", w / "volume.zarr", "--voxel-size-um", "0.5", "--chunk", a.chunk,
                       "--shard", a.shard), [w / "volume.zarr"]),
        ("denoise", cli("denoise", w / "volume.zarr", w / "denoised.zarr", "--config-json", js["denoise"],
                        "--threads", a.threads, *(["--search-radius", a.denoise_search_radius]
                                                  if a.denoise_search_radius is not None else [])),
         [w / "denoised.zarr", w / "denoise.json"]),
        ("segment", cli("segment", "--input", w / "denoised.zarr", "--model", model, "--output", w / "labels.zarr",
                        "--uncertainty", w / "uncertainty.zarr", "--config-json", js["segment"]),
         [w / "labels.zarr", w / "uncertainty.zarr"]),
        ("microstructure", cli("microstructure", "--labels", w / "labels.zarr", "--output", w / "micro.json",
                               "--msd", w / "msd.npz", "--checkpoint-dir", w / "work-micro",
                               "--config-json", js["microstructure"]), [w / "micro.json", w / "msd.npz"]),
        ("simulate", cli("simulate", "-i", w / "micro.json", "-o", w / "sweep.zarr", "--summary", w / "sweep.json",
                         "--work-dir", w / "work-sim", "--config-json", js["cellsim"]),
         [w / "sweep.zarr", w / "sweep.json"]),
        ("train-degradation", cli("train-degradation", "--sweep", w / "sweep.zarr", "--config-json",
                                  js["degradation"], "--checkpoint", w / "work-deg", "--out", w / "deg.pt",
                                  "--metrics", w / "deg-train.json"), [w / "deg.pt", w / "deg-train.json"]),
        ("predict-degradation", cli("predict-degradation", "--model", w / "deg.pt", "--sweep", w / "sweep.zarr",
                                    "--config-json", js["degradation"], "--out", w / "degradation.zarr",
                                    "--metrics", w / "deg.json"), [w / "degradation.zarr", w / "deg.json"]),
    ]
    rows = {}
    voxels = edge ** 3
    for name, cmd, outputs in steps:
        if a.only and name not in a.only:
            continue
        if name == "ingest":
            export_npy(w / "phantom.zarr", w / "scan.npy")
        r = measured(cmd, w / f"{name}.log", env)
        if r["rc"] != 0:
            tail = (w / f"{name}.log").read_text()[-2000:]
            raise SystemExit(f"{edge}^3: {name} failed (rc {r['rc']}), log {w / (name + '.log')}:\n{tail}")
        r["voxels"] = voxels
        r["voxels_per_s"] = voxels / r["wall_s"]
        r["bytes_written"] = du(outputs)
        rows[name] = r
        print(f"  {edge:4d}^3 {name:20s} {r['wall_s']:8.1f} s {r['voxels_per_s'] / 1e6:8.2f} Mvox/s "
              f"{r['peak_rss_mb']:8.0f} MB {r['bytes_written'] / 2**20:8.1f} MiB", flush=True)
        if name == "ingest":
            (w / "scan.npy").unlink()
    return rows


def train_model(root: Path, cfg: dict, a: argparse.Namespace, env: dict) -> tuple[Path, dict]:
    d = root / "model"
    d.mkdir(parents=True, exist_ok=True)
    r = measured(cli("phantom", d / "train.zarr", "--labels", d / "truth.zarr", "--shape", 64, 64, 64,
                     "--seed", a.seed + 1, "--chunk", 32, "--shard", 64), d / "phantom.log", env)
    seg = json.loads(json.dumps(cfg["segment"]))
    seg.setdefault("train", {}).update(steps=a.train_steps, val_every=a.train_steps, checkpoint_every=a.train_steps)
    r = measured(cli("train-seg", "--volume", d / "train.zarr", "--labels", d / "truth.zarr",
                     "--model-out", d / "model.pt", "--metrics-out", d / "train.json",
                     "--checkpoint-dir", d / "ck", "--config-json", json.dumps(seg)), d / "train.log", env)
    if r["rc"] != 0:
        raise SystemExit(f"train-seg failed (rc {r['rc']}):\n{(d / 'train.log').read_text()[-2000:]}")
    print(f"  train-seg (once, {a.train_steps} steps on 64^3): {r['wall_s']:.1f} s {r['peak_rss_mb']:.0f} MB",
          flush=True)
    return d / "model.pt", r


def param_count(model_cfg: dict) -> int | None:
    try:
        from monai.networks.nets import UNet
    except ImportError:
        return None
    from batterytwin.contracts import CLASSES
    from batterytwin.segment.config import ModelSettings

    m = ModelSettings(**model_cfg)
    if m.arch != "unet":
        return None
    net = UNet(spatial_dims=3, in_channels=1, out_channels=len(CLASSES), channels=m.channels, strides=m.strides,
               num_res_units=m.num_res_units)
    return sum(p.numel() for p in net.parameters())


def table(stages: dict, sizes: list[int]) -> str:
    """Markdown: per stage and size wall s / CPU s / peak RSS MB, the exponents and the goal ratios."""
    lines = ["| stage | " + " | ".join(f"{s}^3: wall s / CPU s / MB" for s in sizes)
             + " | exponent (wall / CPU) | cost vs linear (wall / CPU) | RSS ratio |", "|---|" + "---|" * (len(sizes) + 3)]

    def cell(r: dict | None) -> str:
        if r is None:
            return "-"
        cpu = f"{r['cpu_s']:.0f}" if "cpu_s" in r else "-"
        return f"{r['wall_s']:.1f} / {cpu} / {r['peak_rss_mb']:.0f}"

    for name, rec in stages.items():
        cells = [cell(rec["sizes"].get(str(s))) for s in sizes]
        e, ce = rec.get("exponent"), rec.get("cpu_exponent")
        lin = (rec.get("cost_vs_linear") or {}).get("ratio")
        rss = (rec.get("rss_ratio") or {}).get("ratio")
        tail = (f" {e:.2f} / {ce:.2f} |" if ce is not None else f" {e:.2f} / - |") if e is not None else " fixed |"
        cpu_lin = (rec.get("cost_vs_linear") or {}).get("cpu_ratio")
        tail += (f" {lin:.2f}x" + (f" / {cpu_lin:.2f}x" if cpu_lin is not None else "") + f" | {rss:.2f}x |"
                 if lin is not None else " - | - |")
        lines.append(f"| {name} | " + " | ".join(cells) + " |" + tail)
    return "\n".join(lines)


def summarise(doc: dict) -> str:
    """Markdown tables of a result: the stages, then the projection per target."""
    sizes = sorted({int(k) for rec in doc["stages"].values() for k in rec["sizes"]})
    out = [table(doc["stages"], sizes), ""]
    proj = doc.get("projection", {})
    for key, target in proj.get("targets", {}).items():
        out.append(f"{key} ({target['nodes']} node(s), {target['gpus']} GPUs), frame of {proj['frame_voxels']:.3g} voxels:")
        out.append("| stage | split | CPU-derived time s | GPU time s | peak RSS MB per rank | written GB |")
        out.append("|---|---|---|---|---|---|")
        for name, r in target["stages"].items():
            gpu = f"{r['gpu_time_s']:.3g}" if r["gpu_time_s"] is not None else r["gpu_mvoxel_per_s"]
            out.append(f"| {name} | {r['split']} | {r['cpu_derived_time_s']:.3g} | {gpu} | "
                       f"{r['peak_rss_mb_per_rank']:.3g}{'' if r['memory_flat'] else ' (grows)'} | "
                       f"{r['bytes_written'] / 1e9:.3g} |")
        ar = target.get("training_allreduce")
        if ar:
            out.append(f"training all-reduce: {ar['parameters']} parameters, {ar['bytes_per_gpu'] / 1e6:.3g} MB per GPU "
                       f"per step, {ar['time_s'] * 1e3:.3g} ms over {ar['link']}")
        out.append("")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512], help="cube edges, voxels")
    ap.add_argument("--fit-from", type=int, default=128, help="fit the exponents on sizes >= this edge")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="denoise CPU threads")
    ap.add_argument("--denoise-search-radius", type=int, default=None,
                    help="NLM search radius at every size (default: config.yaml's); states reduced work")
    ap.add_argument("--train-steps", type=int, default=20, help="steps of the one tiny segmentation training")
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--shard", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpu-json", default=None, help="bench/gpu.sh output: per-stage GPU Mvoxel/s for the projection")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/chain-cpu-<date>.json)")
    ap.add_argument("--keep", default=None, help="work here and keep the stores (default: a temporary folder, removed)")
    ap.add_argument("--summarise", metavar="JSON", help="print the markdown tables of an earlier result and exit")
    ap.add_argument("--only", nargs="+", default=None, choices=list(SPLIT), metavar="STAGE",
                    help="re-measure only these stages on the stores a --keep run left, and replace their rows "
                         "in --out (e.g. after a fix in that stage)")
    a = ap.parse_args()
    if a.summarise:
        print(summarise(json.loads(Path(a.summarise).read_text())))
        return 0

    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench-chain-"))
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    cfg = settings()
    out = Path(a.out) if a.out else REPO / "bench" / "results" / f"chain-cpu-{datetime.date.today()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    gpu = json.loads(Path(a.gpu_json).read_text()).get("chain_mvoxel_per_s", {}) if a.gpu_json else None
    reduced = []
    if a.denoise_search_radius is not None and a.denoise_search_radius != cfg["denoise"].get("search_radius"):
        d0 = cfg["denoise"].get("search_radius", 6)
        reduced.append(f"denoise: search radius {a.denoise_search_radius} instead of {d0} at every size "
                       f"(NLM cost per voxel x{((2 * a.denoise_search_radius + 1) / (2 * d0 + 1)) ** 3:.3f}; "
                       "the exponent is unaffected, the memory barely: a smaller halo)")
    print(f"work in {root}", flush=True)
    earlier: dict = {}
    if a.only:
        if not a.keep or not out.is_file():
            ap.error("--only needs --keep (the stores of an earlier run) and its JSON at --out")
        earlier = json.loads(out.read_text())
        model, train = root / "model" / "model.pt", earlier["train_seg_once"]
        stages = earlier["stages"]
        note = (f"{', '.join(a.only)} re-measured at {a.sizes} on {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}: "
                "python bench/chain.py " + " ".join(sys.argv[1:]))
        earlier["remeasured"] = earlier.get("remeasured", []) + [note]
    else:
        model, train = train_model(root, cfg, a, env)
        stages = {}
    pcount = param_count(cfg["segment"].get("model", {}))

    def save() -> dict:
        analyse(stages, a.fit_from)
        doc = {
            **earlier,
            "command": earlier.get("command") or "python bench/chain.py " + " ".join(sys.argv[1:]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                     cwd=REPO).stdout.strip(),
            "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
                     "nice": os.nice(0)},
            "settings": {"from": "config.yaml (denoise, segment, microstructure); tests/config.e2e.yaml "
                                 "(cellsim, degradation); store chunk/shard below",
                         "chunk": a.chunk, "shard": a.shard, "denoise_threads": a.threads, **cfg},
            "reduced_work": earlier.get("reduced_work", reduced),
            "train_seg_once": {**train, "steps": a.train_steps, "shape": [64, 64, 64]},
            "fit_from": a.fit_from,
            "stages": stages,
            "projection": project(stages, gpu=gpu, param_count=pcount, shard=a.shard, fit_from=a.fit_from),
        }
        out.write_text(json.dumps(doc, indent=1))
        return doc

    try:
        for edge in a.sizes:
            t = time.perf_counter()
            rows = run_size(edge, root / str(edge), model, cfg, a, env)
            for name, r in rows.items():
                stages.setdefault(name, {"sizes": {}})["sizes"][str(edge)] = r
            save()
            print(f"{edge}^3 done in {time.perf_counter() - t:.0f} s", flush=True)
            if not a.keep:
                shutil.rmtree(root / str(edge), ignore_errors=True)
            elif a.only:
                print(f"re-measured {a.only} at {edge}^3", flush=True)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(table(stages, a.sizes))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
