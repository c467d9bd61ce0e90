"""A tiny run for the end-to-end test and smoke checks (CPU, well under a minute).

Width 16, 2 blocks, 3 epochs, batches of 8.  The dataset path is a placeholder:
the test writes a tiny synthetic dataset and passes ``--config.data.path=...``.

  crystal-search train --config=experiments/configs/test.py --config.data.path=DIR --workdir=W
"""

import ml_collections

from experiments.configs import default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = default.base_config("cpu")
  c.data.path = "/tmp/crystal_search_test_dataset"
  c.data.max_train_frames = 0
  c.data.max_eval_frames = 0
  c.model.embed_dim = 8
  c.model.width = 16
  c.model.num_blocks = 2
  c.model.head_widths = (16, 8)
  c.model.set2set_steps = 1
  c.num_epochs = 3
  c.lr_halving_epochs = 15
  c.patience = 0
  c.batch_size = 8
  c.eval_batch_size = 16
  c.learning_rate = 3e-3
  return c
