r"""Train a model: ``crystal-search train --config=experiments/configs/default.py --workdir=DIR``.

The config is an ml-collections file (``experiments/configs/``; ``FILE:ARG`` passes
``ARG`` to its ``get_config``); any value can be overridden, e.g.
``--config.learning_rate=5e-4 --config.augment.noise_std=0.02``.  Rerunning the same
command in the same workdir resumes from the last checkpoint; a workdir that holds
another run is refused unless ``--overwrite``; ``--extend`` continues a run there whose
config is this one with fewer ``num_epochs`` (e.g. the shipped 45-epoch run as
``pretrained.py:long``).  The best model (validation loss) is exported to ``DIR/model``;
metrics per epoch go to ``DIR/metrics.csv``.
"""

from __future__ import annotations

import os

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

from crystal_search import training
from crystal_search.errors import InputError
from experiments.common import run

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")
_CONFIG = config_flags.DEFINE_config_file(
  "config",
  _DEFAULT_CONFIG,
  "Training config file (FILE[:ARG]).",
  lock_config=False,
  accept_new_attributes=True,  # unknown keys reach training.validate_config: a one-line error
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, model).")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace another run found in --workdir.")
_EXTEND = flags.DEFINE_boolean(
  "extend",
  False,
  "Continue the run in --workdir whose config is this one with fewer num_epochs (same data).",
)
_QUIET = flags.DEFINE_boolean("quiet", False, "No progress bar.")
_VERBOSE = flags.DEFINE_boolean("verbose", False, "Show library (orbax, jax) INFO logs.")
_STOP_AFTER = flags.DEFINE_integer(
  "stop_after_epochs",
  None,
  "Stop after this many epochs of this invocation, leaving the run resumable (as if killed).",
)


def _one_line_config_errors() -> None:
  """Make a config file that fails to load a one-line flag error instead of a traceback."""
  flag = flags.FLAGS[_CONFIG.name]
  parse = flag._parse

  def one_line(argument):
    try:
      return parse(argument)
    except flags.Error as e:
      lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
      raise flags.IllegalFlagValueError(lines[-1] if lines else type(e).__name__) from None
    except Exception as e:  # noqa: BLE001 - any error of a config file becomes one line
      raise flags.IllegalFlagValueError(f"{type(e).__name__}: {e}") from None

  flag._parse = one_line


_one_line_config_errors()


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise InputError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _WORKDIR.value:
    raise InputError("--workdir is required")
  if _STOP_AFTER.value is not None and _STOP_AFTER.value < 1:
    raise InputError(f"--stop_after_epochs={_STOP_AFTER.value}: must be >= 1")
  if not _VERBOSE.value:
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO

  def log(message: str) -> None:
    if not _QUIET.value:
      print(message, flush=True)

  config = _CONFIG.value
  if not isinstance(config, ml_collections.ConfigDict):  # the file failed to load
    try:
      config.to_dict()
    except Exception as e:  # noqa: BLE001 - report why in one line
      lines = [x.strip() for x in str(e).splitlines() if x.strip()]
      raise InputError(f"--config: {lines[-1] if lines else type(e).__name__}") from None
  result = training.train(
    config,
    _WORKDIR.value,
    overwrite=_OVERWRITE.value,
    extend=_EXTEND.value,
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
