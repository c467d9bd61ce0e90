#!/usr/bin/env bash
# The main job on the bundled defaults: search Li15Si4 (the paper's held-out stoichiometry) with
# the pretrained force/stress and energy models shipped in the package; the report goes to
# out/main/ (summary.md, summary.json, structures/rank_NNN.cif, energy_volume.png).
# Extra flags are passed on, e.g. `bash scripts/main.sh --composition=LiSi --num_structures=1000`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec crystal-search search --composition=Li15Si4 --num_structures=100 --max_steps=400 --seed=0 \
  --output_dir=out/main --overwrite "$@"
