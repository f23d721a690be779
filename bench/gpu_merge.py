"""Merge the per-step outputs of ``bench/gpu.sh`` into one JSON with the device name.

    python bench/gpu_merge.py DIR OUT.json [--command "bash bench/gpu.sh"]

Reads ``DIR/<step>.rc.json`` (exit status, wall time), ``DIR/<step>.json`` where the step wrote one,
and the last lines of ``DIR/<step>.log`` (the benches that only print: the U-Net one); adds
``chain_mvoxel_per_s`` (per volume stage, from the chain step) for ``bench/chain.py --gpu-json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

STEPS = ("nlm", "walk", "unet", "ddim", "chain", "pretrain")
LOG_TAIL = 40  # lines


def device() -> dict:
    try:
        import torch
    except ImportError:
        return {"name": "cpu (torch missing)", "cuda": False}
    if not torch.cuda.is_available():
        return {"name": f"cpu ({platform.processor() or platform.machine()})", "cuda": False,
                "torch": torch.__version__}
    p = torch.cuda.get_device_properties(0)
    return {"name": torch.cuda.get_device_name(0), "cuda": True, "torch": torch.__version__,
            "cuda_version": torch.version.cuda, "memory_gib": p.total_memory / 2**30,
            "multiprocessors": p.multi_processor_count}


def chain_rates(chain: dict) -> dict:
    """Mvoxel/s per stage at the largest size of a ``bench/chain.py`` result."""
    out = {}
    for name, rec in chain.get("stages", {}).items():
        sizes = rec.get("sizes", {})
        if sizes:
            row = sizes[max(sizes, key=int)]
            out[name] = row["voxels_per_s"] / 1e6
    return out


def merge(folder: Path, command: str = "") -> dict:
    steps = {}
    for name in STEPS:
        rec: dict = {}
        for suffix, key in ((".rc.json", "status"), (".json", "result")):
            f = folder / f"{name}{suffix}"
            if f.is_file():
                try:
                    rec[key] = json.loads(f.read_text())
                except json.JSONDecodeError as exc:
                    rec[key] = {"unreadable": str(exc)}
        log = folder / f"{name}.log"
        if log.is_file():
            rec["log_tail"] = log.read_text(errors="replace").splitlines()[-LOG_TAIL:]
        steps[name] = rec or {"status": "not run"}
    chain = steps["chain"].get("result")
    return {"device": device(), "command": command, "host": platform.node(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "steps": steps,
            "chain_mvoxel_per_s": chain_rates(chain) if isinstance(chain, dict) else {}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("out")
    ap.add_argument("--command", default="")
    a = ap.parse_args()
    doc = merge(Path(a.folder), a.command)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
