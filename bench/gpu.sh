#!/usr/bin/env bash
# One prepared GPU session (issue 19): every GPU figure of the issue in one call of at most ~8 minutes,
# merged into one JSON with the device name.
#
#   bash bench/gpu.sh                 # on the GPU machine, from the repository root
#   bash bench/gpu.sh --smoke         # anywhere: tiny sizes on CPU, checks that every part runs
#
# Steps (each under its own `timeout`, so one failure costs only its own slot; its log is kept):
#   1. install the carried wheels (.whl/*.whl: zarr, numcodecs, donfig, crc32c, monai, pydantic,
#      pydantic-core, annotated-types, typing-inspection, taufactor, ... -- what the GPU image lacks;
#      make them here with the `pip download` line of /work/.library/device/README.md, then carry .whl);
#   2. bench/denoise.py        Triton NLM kernel vs the torch path on the GPU vs scikit-image per core, 256^3;
#   3. bench/microstructure.py Triton random walk on a 512^3 medium (walker-steps/s) vs TauFactor, same GPU;
#   4. bench/segment.py --full --compile  U-Net training (bf16, 128^3 patches) vs MONAI UNet eager and
#      torch.compile in the same run, and sliding-window inference store to store (Mvoxel/s);
#   5. bench/degradation.py    DDIM vs ancestral sampling (curves/s) on the shipped MATR splits;
#   6. bench/chain.py --sizes 256  the chain end to end on the GPU, time per stage.
# Output: $OUT/gpu.json (device session) or bench/results/gpu-<date>.json, plus one log per step.
set -u
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
cd "$(dirname "$0")/.."
DEST="${OUT:-bench/out/gpu}"
mkdir -p "$DEST"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu.sh: installing the carried wheels failed" >&2; exit 1; }
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
# `batterytwin` for bench/chain.py's stage subprocesses: a shim when the package is not installed
if ! command -v batterytwin >/dev/null 2>&1 && [ ! -x "$(dirname "$(command -v "$PY")")/batterytwin" ]; then
    mkdir -p /tmp/bt-bin
    printf '#!/bin/sh\nexec %s -m batterytwin.cli "$@"\n' "$(command -v "$PY")" > /tmp/bt-bin/batterytwin
    chmod +x /tmp/bt-bin/batterytwin
    export PATH="/tmp/bt-bin:$PATH"
fi

if [ "$SMOKE" = 1 ]; then
    DENOISE=(--sizes 16 --gpu-sizes 16 --configs 3/2 --skimage-max 16)
    WALK=(--size 24 --walkers 256 --steps 200 --ref-walkers 64 --ref-steps 20)
    SEG=(--batch 1 --patch 16 --steps 2 --volume-size 32 --shard 32 --ranks 1)
    DEG=(--steps 5 --samples 2 --ddim-steps 3 --ancestral-cells 1 --ancestral-samples 1 --widths 8,8,8)
    CHAIN=(--sizes 16 --fit-from 16 --train-steps 1 --chunk 8 --shard 16)
    LIMIT=(600 600 600 600 600)  # a loaded 2-core machine: generous
else
    DENOISE=(--sizes 32 --gpu-sizes 256 --configs 5/6 --skimage-max 48)
    WALK=(--size 512 --walkers 65536 --steps 4000)
    SEG=(--full --compile --volume-size 256 --shard 128 --ranks 1)
    DEG=(--steps 500 --samples 16 --ddim-steps 50 --ancestral-cells 4 --ancestral-samples 8)
    CHAIN=(--sizes 256 --fit-from 256 --train-steps 20)
    LIMIT=(60 100 150 50 120)  # 480 s in all: one device call of at most 8 minutes
fi

step() {  # step NAME SECONDS CMD...: run under a time limit, keep its log and exit status
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$DEST/$name.log" 2>&1
    local rc=$?
    echo "{\"rc\": $rc, \"wall_s\": $((SECONDS - t0)), \"limit_s\": $limit}" > "$DEST/$name.rc.json"
    echo "gpu.sh: $name rc=$rc in $((SECONDS - t0)) s (limit $limit s)"
}

step nlm "${LIMIT[0]}" "$PY" bench/denoise.py "${DENOISE[@]}" --out "$DEST/nlm.json"
step walk "${LIMIT[1]}" "$PY" bench/microstructure.py "${WALK[@]}" --out "$DEST/walk.json"
step unet "${LIMIT[2]}" "$PY" bench/segment.py "${SEG[@]}"
step ddim "${LIMIT[3]}" "$PY" bench/degradation.py --data-dir data/cycling "${DEG[@]}" --threads 4 \
    --save-model "$DEST/ddim.pt" --out "$DEST/ddim.json"
step chain "${LIMIT[4]}" "$PY" bench/chain.py "${CHAIN[@]}" --out "$DEST/chain.json"

NAME="$DEST/gpu.json"
[ -z "${OUT:-}" ] && NAME="bench/results/gpu-$(date -u +%Y-%m-%d).json"
"$PY" bench/gpu_merge.py "$DEST" "$NAME" --command "bash bench/gpu.sh $*" && echo "gpu.sh: wrote $NAME"
