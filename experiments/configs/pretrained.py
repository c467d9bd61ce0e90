"""The shipped force/stress model (``crystal_search/pretrained/force_stress``).

  crystal-search train --config=experiments/configs/pretrained.py --workdir=runs/pretrained

``default.py:cpu`` (the same network, augmentation and seed) trained on every training frame
of ``data/dataset`` instead of the CPU scale's ``CPU_TRAIN_FRAMES`` subset, and for longer:
``EPOCHS`` epochs with the learning rate halved every ``HALVING_EPOCHS``.  This is the one
config beyond the 20-minute CPU budget: about an hour on one core of the 2-core machine
(~75 s an epoch on 10,276 frames).
Validation stays on the CPU scale's ``CPU_EVAL_FRAMES`` subset so that the per-epoch
validation does not dominate the epoch time.

``pretrained.py:wide`` is the same run with twice the width (``WIDE``: blocks of width 64, heads
64-32): a capacity check, about 150 s an epoch on one core (2.2x the shipped width's time), not
shipped (``experiments/results/tables.md``, row ``GNN (shipped config; width 64)``).

``pretrained.py:plane`` is the paper's force and stress heads (per-atom node force head, plane
stress head, vector edge inputs: ``stress_heads.py:plane``) on the shipped trunk and budget: the
paper's Table 5 choice trained as long as the shipped model, not shipped
(row ``GNN stress=plane (shipped budget)``).

``pretrained.py:strain`` is the shipped config trained on ``data/dataset_strain``: the same
training frames plus teacher-labelled strained copies of the relaxed training structures
(``crystal-search build-strain-frames``, :mod:`crystal_search.datasets.strain`), the same
validation, test and held-out frames (row ``GNN (shipped config; + strain frames)``).
"""

import ml_collections

from experiments.configs import default, stress_heads

EPOCHS = 45
HALVING_EPOCHS = 15
WIDE = {"width": 64, "head_widths": (64, 32)}
#: The dataset with the strain frames (``crystal-search build-strain-frames``).
STRAIN_DATA = "data/dataset_strain"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  if arg not in (None, "", "wide", "plane", "strain"):
    raise ValueError(f"pretrained.py takes no argument, 'wide', 'plane' or 'strain', got {arg!r}")
  c = stress_heads.get_config("plane,cpu") if arg == "plane" else default.base_config("cpu")
  c.data.max_train_frames = 0
  c.num_epochs = EPOCHS
  c.lr_halving_epochs = HALVING_EPOCHS
  c.patience = HALVING_EPOCHS
  if arg == "strain":
    c.data.path = STRAIN_DATA
  if arg == "wide":
    for key, value in WIDE.items():
      c.model[key] = value
  return c
