"""The shipped energy model (``crystal_search/pretrained/energy``), which ranks search results.

  crystal-search train --config=experiments/configs/pretrained_energy.py --workdir=runs/energy

``energy_baseline.py:cpu`` (the same trunk as the shipped force/stress model with the paper's
set2set energy readout, rotation augmentation only) trained on every training frame of
``data/dataset`` instead of the CPU scale's ``CPU_TRAIN_FRAMES`` subset: 45 epochs, about 50 s
an epoch on one core of the 2-core machine.

``pretrained_energy.py:strain`` is the same run on ``data/dataset_strain`` (the same frames plus
the teacher-labelled strained copies of the relaxed training structures, whose energies are near
equilibrium, where search results are ranked); not shipped unless it ranks better.
"""

import ml_collections

from experiments.configs import energy_baseline, pretrained


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "strain"):
    raise ValueError(f"pretrained_energy.py takes no argument or 'strain', got {arg!r}")
  c = energy_baseline.get_config("cpu")
  c.data.max_train_frames = 0
  if arg == "strain":
    c.data.path = pretrained.STRAIN_DATA
  return c
