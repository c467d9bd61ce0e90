#!/usr/bin/env bash
# Get a GPU training run ready for the `device` tool.  Run HERE (inside .venv), not on the device.
#
#   bash scripts/device/prepare.sh     # wheels into .whl/, the strain train.npz, then tree.sh hide
#
# 1. The device image has jax, flax, optax, orbax, absl and matplotlib for Python 3.12 but not
#    jraph, ml-collections or pymatgen (/work/.library/device/KINDS.md): their py3.12 wheels
#    (WHEELS, the versions setup.sh installs here; ~7 MB) go to .whl/, ignored through
#    .git/info/exclude, and travel with `carry`.
# 2. data/dataset_strain/train.npz (ignored, ~10 MB) is rebuilt if missing; it travels with `carry`.
# 3. scripts/device/tree.sh hide leaves ~15 MB of tracked files travelling.
# Then call the tool (see scripts/device/README.md) and run `bash scripts/device/tree.sh restore`.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
WHEELS=(
  jraph==0.0.6.dev0 ml_collections==1.1.0 pymatgen==2026.10.24 pymatgen-core==2026.10.16
  monty==2026.10.21 ruamel.yaml==0.19.1 orjson==3.13.0 spglib==2.8.0
)
grep -qxF "/.whl/" "$(git rev-parse --git-dir)/info/exclude" 2>/dev/null \
  || echo "/.whl/" >>"$(git rev-parse --git-dir)/info/exclude"
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl "${WHEELS[@]}"
ls .whl
if [ ! -f data/dataset_strain/train.npz ]; then
  crystal-search build-strain-frames --teacher= --dataset=data/dataset --output=data/dataset_strain
fi
bash scripts/device/tree.sh hide
du -cb .whl/*.whl data/dataset_strain/train.npz | tail -1 | awk '{printf "carried: %.1f MB\n", $1/1e6}'
