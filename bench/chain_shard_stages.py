"""The shard-parallel stages (phantom, ingest, denoise at search radius 1, segment) at 128/256/512 with
bench/chain.py's own harness (``train_model``, ``run_size``, ``analyse``), when a whole-chain run cannot reach
512^3 on a small machine; microstructure, simulate and degradation are not run (bench/chain.py measures them).

    nice -n 10 python bench/chain_shard_stages.py [WORKDIR]

Writes ``bench/results/chain-cpu-shard-stages-512-<date>.json`` (a name the report's scaling figure ignores).
"""
import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import chain as C  # noqa: E402

a = argparse.Namespace(sizes=[128, 256, 512], fit_from=128, threads=2, denoise_search_radius=1, train_steps=20,
                       chunk=64, shard=256, seed=0, gpu_json=None, keep=sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="bench-shards-"), out=None,
                       only=["phantom", "ingest", "denoise", "segment"])
root = Path(a.keep)
env = dict(os.environ, PATH=f"{C.BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           PYTHONPATH=str(REPO / "src"))
cfg = C.settings()
out = REPO / "bench" / "results" / f"chain-cpu-shard-stages-512-{datetime.date.today()}.json"
model, train = C.train_model(root, cfg, a, env)
stages = {}
for edge in a.sizes:
    rows = C.run_size(edge, root / str(edge), model, cfg, a, env)
    for name, r in rows.items():
        stages.setdefault(name, {"sizes": {}})["sizes"][str(edge)] = r
    C.analyse(stages, a.fit_from)
    out.write_text(json.dumps({
        "command": "nice -n 10 python bench/chain_shard_stages.py (bench/chain.py's run_size/train_model/analyse with "
                   "--sizes 128 256 512 --denoise-search-radius 1 --only phantom ingest denoise segment)",
        "why": "the 2026-11-28 chain run could not reach 512^3 for denoise (search radius 3) and segment on the "
               "shared 2-core machine; this run measures the shard-parallel stages at 128..512 at search radius 1 "
               "(NLM cost per voxel x0.079 of radius 3; the exponent and the per-shard memory are unaffected)",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip(),
        "host": {"cpus": os.cpu_count(), "load_avg": os.getloadavg(), "note": "shared with a full pytest run"},
        "settings": {"chunk": a.chunk, "shard": a.shard, "denoise_threads": a.threads, "denoise_search_radius": 1,
                     "train_steps": a.train_steps, **cfg},
        "stages": stages}, indent=1))
    print(f"{edge}^3 done", flush=True)
    shutil.rmtree(root / str(edge), ignore_errors=True)
print(C.table(stages, a.sizes))
