"""The fused Triton kernel, run by Triton's interpreter on CPU, equals the PyTorch path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

SCRIPT = textwrap.dedent("""
    import json
    import numpy as np, torch
    from batterytwin.denoise.nlm import NLMParams, nlm_padded, pad_reflect
    from batterytwin.denoise.nlm_triton import nlm_padded_triton
    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.random((5, 6, 7)).astype(np.float32))
    out = {}
    # tile (8, 8, 8): one program (the interpreter is slow); (4, 8, 8): two programs, partial tiles
    for name, p, tile in [("compat", NLMParams(3, 1, 0.2, 0.05, "skimage"), (8, 8, 8)),
                          ("default", NLMParams(3, 1, 0.2, 0.05), (8, 8, 8)),
                          ("default_p1", NLMParams(1, 1, 0.1), (8, 8, 8)),
                          ("compat_tiles", NLMParams(3, 1, 0.2, 0.0, "skimage"), (4, 8, 8))]:
        xp = pad_reflect(x, p.halo)
        a = nlm_padded(xp, p)
        b = nlm_padded_triton(xp, p, tile=tile)
        out[name] = [float((a - b).abs().max()), float((a - xp[p.halo:-p.halo, p.halo:-p.halo, p.halo:-p.halo]).abs().max())]
    print(json.dumps(out))
""")


def test_triton_kernel_interpreted_equals_torch():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, (diff, change) in result.items():
        assert diff < 1e-5, (name, diff)
        assert change > 1e-3, (name, change)  # the filter did something, so equality means something
