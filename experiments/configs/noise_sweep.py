"""Gaussian-noise sweep (paper Table 1): noise std in {0, 0.01, 0.02, 0.03} Å × seeds {0, 1, 2}.

One run per (noise, seed):

  crystal-search train --config=experiments/configs/noise_sweep.py:0.02,1 --workdir=runs/noise_0.02_1
  crystal-search train --config=experiments/configs/noise_sweep.py:0.02,1,paper --workdir=...

:data:`SWEEP` lists the 12 runs and :func:`runs` their config arguments and workdir
names.  Everything else is ``default.py`` (at the chosen scale); with ``noise = 0`` the
30 % noise fraction adds nothing.
"""

import ml_collections

from experiments.configs import default

NOISE_STDS = (0.0, 0.01, 0.02, 0.03)
SEEDS = (0, 1, 2)
#: The 12 (noise_std, seed) pairs of the sweep.
SWEEP = tuple((noise, seed) for noise in NOISE_STDS for seed in SEEDS)


def runs(scale: str = "cpu") -> list[tuple[str, str]]:
  """``[(config argument, workdir name), ...]`` for every run of the sweep."""
  return [(f"{n},{s},{scale}", f"noise_{n}_seed_{s}") for n, s in SWEEP]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts, scale = default.parse_arg(arg)
  noise, seed = 0.01, 0
  if len(parts) > 2:
    raise ValueError(f"noise_sweep.py takes 'NOISE[,SEED][,cpu|paper]', got {arg!r}")
  if parts:
    noise = float(parts[0])
  if len(parts) > 1:
    seed = int(parts[1])
  c = default.base_config(scale)
  c.augment.noise_std = noise
  c.seed = seed
  return c
