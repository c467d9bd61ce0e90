"""The dataset a training run reads (``crystal-search build-dataset`` writes it).

``path`` is a folder with ``train.npz``, ``val.npz`` (required), ``test.npz`` and
``holdout.npz`` (optional) in the :mod:`crystal_search.datasets.frames` format and a
``manifest.json``; its hash is recorded as the model's data version.  Frames of the
held-out stoichiometries (the paper's Li15Si4) are dropped from train/val even if present.
"""

import ml_collections

#: Stoichiometries never trained on (paper section 4: Li15Si4 tests generalisation).
HOLDOUT = ("Li15Si4",)
#: Where ``crystal-search build-dataset`` writes the random-relaxation dataset.
DEFAULT_PATH = "data/dataset"
#: Where the MD-frame dataset (MD baseline, paper Table 2) is expected.
MD_PATH = "data/dataset_md"


def get_config(path: str = DEFAULT_PATH) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.path = path
  c.holdout = HOLDOUT
  c.max_train_frames = 0  # 0: every training frame
  c.max_eval_frames = 0  # 0: every val/test/holdout frame
  return c
