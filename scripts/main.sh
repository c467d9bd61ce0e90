#!/usr/bin/env bash
# The main job on the bundled defaults: search Li15Si4 (the paper's held-out stoichiometry) with
# the pretrained models shipped in the package (the tiny model screens, the default model
# polishes, the energy model ranks), drawing 38-atom cells of 24 point operations as AIRSS users
# aim a search with NFORM and SYMMOPS; the report goes to out/main/ (summary.md, summary.json,
# structures/rank_NNN.cif, energy_volume.png).
# Extra flags are passed on, e.g. `bash scripts/main.sh --num_structures=1000`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec crystal-search search --composition=Li15Si4 --formula_units=2 --symmetric_fraction=1 \
  --min_symmops=24 --max_symmops=24 --primitive_cells --num_structures=200 --seed=0 \
  --output_dir=out/main --overwrite "$@"
