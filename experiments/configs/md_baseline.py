"""The MD baseline (paper Table 2): the paper's model trained on molecular-dynamics frames.

The dataset folder (``data.MD_PATH``) holds MD frames of the known phases in the
same split layout (``train.npz``, ``val.npz``, ...).  The model is evaluated on
the random-relaxation test set with ``crystal-search evaluate``.  MD cells have
60–152 atoms (``data/teacher_md/README.md``), so batches are smaller than for random structures,
and the CPU scale takes a quarter of the random configs' training frames.

  crystal-search train --config=experiments/configs/md_baseline.py --workdir=runs/md
"""

import ml_collections

from experiments.configs import data, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  scale = default.scale_only(arg, "md_baseline.py")
  c = default.base_config(scale)
  c.data.path = data.MD_PATH
  c.batch_size = 8
  c.eval_batch_size = 16
  if scale == "cpu":
    c.data.max_train_frames = default.CPU_TRAIN_FRAMES // 4
  return c
