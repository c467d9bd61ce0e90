r"""Train a model: ``crystal-search train --config=experiments/configs/default.py --workdir=DIR``.

The config is an ml-collections file (``experiments/configs/``; ``FILE:ARG`` passes
``ARG`` to its ``get_config``); any value can be overridden, e.g.
``--config.learning_rate=5e-4 --config.augment.noise_std=0.02``.  Rerunning the same
command in the same workdir resumes from the last checkpoint; a workdir that holds
another run is refused unless ``--overwrite``.  The best model (validation loss) is
exported to ``DIR/model``; metrics per epoch go to ``DIR/metrics.csv``.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from crystal_search import training
from crystal_search.errors import InputError
from experiments.common import run

_CONFIG = config_flags.DEFINE_config_file(
  "config", "experiments/configs/default.py", "Training config file (FILE[:ARG])."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, model).")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace another run found in --workdir.")
_QUIET = flags.DEFINE_boolean("quiet", False, "No progress bar.")
_STOP_AFTER = flags.DEFINE_integer(
  "stop_after_epochs",
  None,
  "Stop after this many epochs of this invocation, leaving the run resumable (as if killed).",
)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise InputError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIR.value:
    raise InputError("--workdir is required")
  if _STOP_AFTER.value is not None and _STOP_AFTER.value < 1:
    raise InputError(f"--stop_after_epochs={_STOP_AFTER.value}: must be >= 1")

  def log(message: str) -> None:
    if not _QUIET.value:
      print(message, flush=True)

  result = training.train(
    _CONFIG.value,
    _WORKDIR.value,
    overwrite=_OVERWRITE.value,
    stop_after=_STOP_AFTER.value,
    progress=not _QUIET.value,
    log=log,
  )
  if result.model_dir is None:
    print(f"stopped after epoch {result.epochs}; rerun the same command to resume")
    return
  val = ", ".join(f"{k} {v:.4g}" for k, v in result.best_val.items())
  print(f"best epoch {result.best_epoch} of {result.epochs} (val: {val}) -> {result.model_dir}")
  for split, metrics in result.test.items():
    print(f"{split}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))


if __name__ == "__main__":
  run(main)
