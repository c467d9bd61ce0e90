#!/usr/bin/env bash
# Runs ON the lent GPU machine (the `device` tool's `run`), from the repository root, after
# `bash scripts/device/prepare.sh` and `python benchmarks/gpu_relax.py --num=4199
# --write_starts=.whl/starts.npz` here (the device image has no pyxtal: the starts travel).
#
#   run(command="bash scripts/device/relax_gpu.sh", carry=[".whl"], timeout_s=480)
#
# Relaxes the 4,199 starts with the search's screen and polish settings (benchmarks/gpu_relax.py)
# and writes $OUT/gpu_relax.json, .md and log.txt.  Env: WHEELS (default .whl; empty: the
# installed packages), STARTS (default $WHEELS/starts.npz), EXTRA (more gpu_relax.py flags; a CPU
# dry run here: OUT=/tmp/o WHEELS= STARTS= EXTRA="--num=2 --max_steps=3" bash scripts/device/relax_gpu.sh).
set -uo pipefail
: "${OUT:?set OUT (the device tool sets it)}"
WHEELS=${WHEELS-.whl}
STARTS=${STARTS-$WHEELS/starts.npz}
EXTRA=${EXTRA:-}
exec > >(tee -a "$OUT/log.txt") 2>&1
. "$(dirname "$0")/wheels.sh"
export PYTHONUNBUFFERED=1
args=(--out="$OUT/gpu_relax.json")
if [ -n "$STARTS" ]; then args+=(--starts="$STARTS"); fi
# shellcheck disable=SC2086
python3 benchmarks/gpu_relax.py "${args[@]}" $EXTRA
