"""The shipped force/stress model (``crystal_search/pretrained/force_stress``).

  crystal-search train --config=experiments/configs/pretrained.py --workdir=runs/pretrained

``default.py:cpu`` (the same network, augmentation and seed) trained on every training frame
of ``data/dataset`` instead of the CPU scale's ``CPU_TRAIN_FRAMES`` subset, and for longer:
``EPOCHS`` epochs with the learning rate halved every ``HALVING_EPOCHS``.  This is the one
config beyond the 20-minute CPU budget: about an hour on one core of the 2-core machine
(~75 s an epoch on 10,276 frames).
Validation stays on the CPU scale's ``CPU_EVAL_FRAMES`` subset so that the per-epoch
validation does not dominate the epoch time.
"""

import ml_collections

from experiments.configs import default

EPOCHS = 45
HALVING_EPOCHS = 15


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg:
    raise ValueError(f"pretrained.py takes no argument, got {arg!r}")
  c = default.base_config("cpu")
  c.data.max_train_frames = 0
  c.num_epochs = EPOCHS
  c.lr_halving_epochs = HALVING_EPOCHS
  c.patience = HALVING_EPOCHS
  return c
