"""A file sample through the whole chain on CPU: wall time and peak RSS per stage, GMM path vs network path.

Makes a ``--size``^3 scan with the independent CT forward model (``tests/ctforward.py``: radon +
Poisson + filtered back-projection), writes it as a folder of TIFF slices with a hand-label TIFF
labelled on 4 slices along x, and runs the workflow on it twice in fresh working directories:

- ``gmm``: ``segment.method: gmm`` (label-free, no training);
- ``network``: the labels imported and the network trained on the 4 labelled slices.

Each stage is its own ``snakemake --cores N <target>`` call, in the order of the chain, so its wall time
and peak RSS are its own (peak RSS: ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a fresh wrapper
process per stage, i.e. the largest single process of the stage: snakemake itself or one rank). A
``snakemake -n`` call measures the fixed cost of starting snakemake, included in every stage's time.
Settings: ``config.yaml`` (the demo's) without its samples, then ``--overlay`` files. Prints a table
and writes ``bench/results/realscan-<size>.json``.

    python bench/realscan.py --size 256 --cores 2
    python bench/realscan.py --size 128 --overlay tests/config.e2e.yaml    # small downstream stages
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from batterytwin.config import deep_merge  # noqa: E402
from tests.ctforward import ForwardParams, forward_volume, write_sparse_labels, write_tiff_stack  # noqa: E402

BIN = Path(sys.executable).parent
SAMPLE = "scan"

MEASURE = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(json.dumps({"rc": rc, "wall_s": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""

# (stage, snakemake targets relative to the work dir); None = the rest of `rule all` (the report)
STAGES = {
    "gmm": [("ingest", ["results/scan/volume.zarr"]), ("denoise", ["results/scan/denoised.zarr"]),
            ("segment (gmm)", ["results/scan/labels.zarr"]), ("microstructure", ["results/scan/microstructure.json"]),
            ("simulate", ["results/scan/sweep.zarr"]), ("degradation", ["results/scan/degradation.zarr"]),
            ("report", None)],
    "network": [("ingest", ["results/scan/volume.zarr"]), ("import labels", ["results/scan/hand_labels.zarr"]),
                ("denoise", ["results/scan/denoised.zarr"]), ("train-seg", ["results/models/segment/model.pt"]),
                ("segment (network)", ["results/scan/labels.zarr"]),
                ("microstructure", ["results/scan/microstructure.json"]), ("simulate", ["results/scan/sweep.zarr"]),
                ("degradation", ["results/scan/degradation.zarr"]), ("report", None)],
}
GMM_CLASSES = ["lithium_metal", "solid_electrolyte", "cathode_active", "current_collector"]


def config_for(path: str, overlays: list[str], data: Path) -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    for o in overlays:
        cfg = deep_merge(cfg, yaml.safe_load(Path(o).read_text()))
    cfg.pop("samples", None)
    spec = {"source": str(data / "scan_tiff"), "format": "tiff-stack", "voxel_size_um": 0.5, "role": "both"}
    if path == "network":
        spec["labels"] = str(data / "scan_labels.tif")
        cfg["segment"].setdefault("train", {})["val_axis"] = "y"  # labels on x slices
    else:
        cfg["segment"]["method"] = "gmm"
        cfg["segment"]["gmm"] = {"classes": GMM_CLASSES}
    cfg["samples"] = {SAMPLE: spec}
    cfg["degradation"]["real_data"] = {"enabled": False}
    return cfg


def measured(cmd: list[str], cwd: Path) -> dict:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    out = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, cwd=cwd, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_path(path: str, work: Path, data: Path, overlays: list[str], cores: int) -> dict:
    work.mkdir(parents=True)
    (work / "bench.yaml").write_text(yaml.safe_dump(config_for(path, overlays, data), sort_keys=False))
    base = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
            "--configfile", str(work / "bench.yaml"), "--replace-workflow-config"]
    rows = {"snakemake -n (fixed cost)": measured(base + ["-n"], work)}
    for stage, targets in STAGES[path]:
        r = measured(base + ["--cores", str(cores), *(targets or [])], work)
        rows[stage] = r
        print(f"  {path:8s} {stage:20s} {r['wall_s']:8.1f} s {r['peak_rss_mb']:8.0f} MB  rc={r['rc']}", flush=True)
        if r["rc"] != 0:
            logs = sorted((work / "logs").rglob("*.log")) if (work / "logs").exists() else []
            tail = logs[-1].read_text()[-2000:] if logs else ""
            raise SystemExit(f"{path}: stage {stage} failed (rc {r['rc']}); last log {logs[-1] if logs else '-'}:\n{tail}")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256, help="edge of the cubic scan, voxels")
    ap.add_argument("--cores", type=int, default=2, help="snakemake --cores")
    ap.add_argument("--paths", nargs="+", default=["gmm", "network"], choices=["gmm", "network"])
    ap.add_argument("--overlay", action="append", default=[], help="config file merged over config.yaml (repeat)")
    ap.add_argument("--small-downstream", action="store_true",
                    help="cellsim and degradation settings of tests/config.e2e.yaml (their cost does not depend on "
                         "the volume size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--angles", type=int, default=None, help="projections per slice (default 1.5 x size)")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/realscan-<size>.json)")
    ap.add_argument("--keep", default=None, help="work here and keep it (default: a temporary folder)")
    a = ap.parse_args()

    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench-realscan-"))
    data = root / "data"
    t = time.perf_counter()
    image, labels = forward_volume((a.size,) * 3, seed=a.seed, params=ForwardParams(n_angles=a.angles))
    write_tiff_stack(image, data / "scan_tiff")
    write_sparse_labels(labels, data / "scan_labels.tif", n_slices=4, axis=2)
    gen_s = time.perf_counter() - t
    print(f"forward model {a.size}^3: {gen_s:.0f} s ({image.nbytes / 2**20:.0f} MB float32)", flush=True)

    results = {}
    overlays = list(a.overlay)
    if a.small_downstream:
        e2e = yaml.safe_load((REPO / "tests" / "config.e2e.yaml").read_text())
        small = root / "small_downstream.yaml"
        small.write_text(yaml.safe_dump({k: e2e[k] for k in ("cellsim", "degradation")}))
        overlays.append(str(small))
    out = Path(a.out) if a.out else REPO / "bench" / "results" / f"realscan-{a.size}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after each path, so a run stopped in the second still keeps the first
        out.write_text(json.dumps({
            "size": a.size, "cores": a.cores, "overlays": a.overlay, "small_downstream": a.small_downstream,
            "seed": a.seed, "angles": a.angles, "forward_model_s": gen_s,
            "settings": "config.yaml without samples, then the overlays",
            "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "load_avg": os.getloadavg()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "stages": results,
            "total_s": {p: sum(r["wall_s"] for k, r in results[p].items() if not k.startswith("snakemake -n"))
                        for p in results},
        }, indent=1))

    for path in a.paths:
        results[path] = run_path(path, root / path, data, overlays, a.cores)
        save()

    order = [s for p in ("network", "gmm") for s in ["snakemake -n (fixed cost)"] + [st for st, _ in STAGES[p]]]
    stages = [s for s in dict.fromkeys(order) if any(s in results[p] for p in a.paths)]
    print(f"\n{a.size}^3 file sample, snakemake --cores {a.cores}, wall s / peak RSS MB")
    print("| stage | " + " | ".join(a.paths) + " |")
    print("|---|" + "---|" * len(a.paths))
    for s in stages:
        cells = [f"{results[p][s]['wall_s']:.1f} s / {results[p][s]['peak_rss_mb']:.0f} MB" if s in results[p]
                 else "-" for p in a.paths]
        print(f"| {s} | " + " | ".join(cells) + " |")
    totals = {p: sum(r["wall_s"] for k, r in results[p].items() if not k.startswith("snakemake -n")) for p in a.paths}
    print("| total (stages) | " + " | ".join(f"{totals[p]:.0f} s" for p in a.paths) + " |")

    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
