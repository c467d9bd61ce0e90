"""The energy baseline (paper section 3.3 and Table 2).

A MEGNet-style graph network of the same size predicts the energy of the cell
(set2set readout, MLP 64-32, linear output), trained on energies per atom
standardised to mean 0 and std 1 with the sum of mean squared errors; rotation
augmentation only (no noise).  Forces and stresses are then derivatives of the
energy.

  crystal-search train --config=experiments/configs/energy_baseline.py --workdir=runs/energy
"""

import ml_collections

from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  scale = default.scale_only(arg, "energy_baseline.py")
  c = default.base_config(scale)
  c.model_kind = "energy"
  c.augment.rotate_fraction = 0.5
  c.augment.noise_fraction = 0.0
  c.augment.noise_std = 0.0
  return c
