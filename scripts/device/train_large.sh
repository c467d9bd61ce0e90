#!/usr/bin/env bash
# Runs ON the lent GPU machine (the `device` tool's `run`), from the repository root, after
# `bash scripts/device/prepare.sh` here.  See scripts/device/README.md for the call.
#
# 1. installs the carried wheels (.whl/) into /tmp/site;
# 2. trains each variant of STAGES (experiments/configs/pretrained.py:VARIANT, default
#    `large_mae`: the paper-size network on the MAE loss) into RUNS/pretrained_VARIANT under a
#    wall-clock budget (config.max_train_minutes): every stage but the last gets LARGE_MIN
#    minutes, the last what is left of TOTAL_MIN less a 1.5-minute margin (skipped under 0.5);
#    `large_finetune_mae` starts from RUNS/pretrained_large/model (STAGES="large large_finetune_mae");
# 3. writes to $OUT: log.txt, summary.json (versions, device, epochs, seconds per epoch,
#    validation curve and test-frame metrics of each export) and one tarball per run
#    (pretrained_VARIANT.tgz: model/, run.json, metrics.csv).
#
# Env: STAGES, LARGE_MIN (default 5), TOTAL_MIN (default 9: the script's own wall budget, inside
# the tool's timeout_s=600), RUNS (the runs' parent folder, default runs), WHEELS (the carried
# py3.12 wheels, default .whl; empty: use the installed packages), EXTRA (extra --config.* flags
# for every run, e.g. a frame cap for a dry run here:
# OUT=/tmp/out WHEELS= EXTRA="--config.data.max_train_frames=96" bash scripts/device/train_large.sh;
# tests/test_device_scripts.py runs it so on a tiny model).
set -uo pipefail
: "${OUT:?set OUT (the device tool sets it)}"
STAGES=${STAGES:-large_mae}
LARGE_MIN=${LARGE_MIN:-5}
TOTAL_MIN=${TOTAL_MIN:-9}
EXTRA=${EXTRA:-}
RUNS=${RUNS:-runs}
WHEELS=${WHEELS-.whl}
T0=$(date +%s)
exec > >(tee -a "$OUT/log.txt") 2>&1
elapsed_min() { python3 -c "print(round(($(date +%s) - $T0) / 60, 2))"; }

. "$(dirname "$0")/wheels.sh"
export PYTHONUNBUFFERED=1 JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python3 - <<'PY' || exit 1
import json, os, platform
import flax, jax, jraph, ml_collections, optax, orbax.checkpoint, pymatgen.core  # noqa: F401
info = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
        "optax": optax.__version__, "devices": [str(d) for d in jax.devices()],
        "platform": platform.platform(), "cpus": os.cpu_count()}
print(info)
json.dump({"environment": info}, open(os.path.join(os.environ["OUT"], "summary.json"), "w"), indent=2)
PY

train() {  # train NAME VARIANT MINUTES [FLAGS...]
  local name=$1 variant=$2 minutes=$3
  shift 3
  echo "== $name: pretrained.py:$variant for $minutes min (at $(elapsed_min) min)"
  # shellcheck disable=SC2086
  python3 -m experiments.train --config="experiments/configs/pretrained.py:$variant" \
    --workdir="$RUNS/$name" --quiet --config.max_train_minutes="$minutes" "$@" $EXTRA
  local rc=$?
  if [ -d "$RUNS/$name/model" ]; then
    tar czf "$OUT/$name.tgz" -C "$RUNS" "$name/model" "$name/run.json" "$name/metrics.csv"
  fi
  python3 - "$RUNS/$name" "$variant" "$rc" <<'PY'
import csv, json, os, sys
workdir, variant, rc = sys.argv[1], sys.argv[2], int(sys.argv[3])
name = os.path.basename(workdir)
path = os.path.join(os.environ["OUT"], "summary.json")
summary = json.load(open(path))
entry = {"config": f"experiments/configs/pretrained.py:{variant}", "rc": rc}
metrics = os.path.join(workdir, "metrics.csv")
rows = list(csv.DictReader(open(metrics))) if os.path.exists(metrics) else []
entry["seconds_per_epoch"] = [float(r["seconds"]) for r in rows]
entry["val"] = [{k: float(r[k]) for k in ("val_loss", "val_force_mae", "val_stress_mae")} for r in rows]
if os.path.exists(os.path.join(workdir, "model", "model.json")):
  meta = json.load(open(os.path.join(workdir, "model", "model.json")))["metadata"]
  entry.update({k: meta.get(k) for k in ("epochs", "best_epoch", "stopped_on_budget", "train_minutes", "val_metrics", "test_metrics", "config_hash", "data_version")})
summary[name] = entry
json.dump(summary, open(path, "w"), indent=2)
print(json.dumps({k: v for k, v in entry.items() if k not in ("val", "seconds_per_epoch")}))
PY
  return $rc
}

read -r -a stages <<<"$STAGES"
for k in "${!stages[@]}"; do
  variant=${stages[$k]}
  flags=()
  if [ "$variant" = large_finetune_mae ]; then
    flags+=(--config.init_from="$RUNS/pretrained_large/model")
  fi
  if [ "$k" -lt $((${#stages[@]} - 1)) ]; then
    minutes=$LARGE_MIN
  else
    minutes=$(python3 -c "print(round($TOTAL_MIN - ($(date +%s) - $T0) / 60 - 1.5, 2))")
    if ! python3 -c "import sys; sys.exit(0 if $minutes >= 0.5 else 1)"; then
      echo "== no time left for $variant ($minutes min)"
      break
    fi
  fi
  train "pretrained_$variant" "$variant" "$minutes" "${flags[@]}" || exit 1
done
echo "== done at $(elapsed_min) min"
