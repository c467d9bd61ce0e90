"""Training configs: every key with the paper's values, validation, and the hash that identifies a run.

Units: Å for lengths (``model.cutoff``, ``augment.noise_std``), minutes for
``max_train_minutes``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import ml_collections

from crystal_search.errors import InputError

#: Model kinds the trainer knows.
MODEL_KINDS = ("force_stress", "energy")
#: Training losses (``config.loss``): mean squared or mean absolute standardised errors.
LOSSES = ("mse", "mae")
#: Training keys added after runs were hashed, left out of :func:`config_hash` (and of
#: :func:`extends`) at these values, so those runs keep their hashes.
HASH_NEUTRAL_KEYS = {"loss": "mse", "init_from": "", "max_train_minutes": 0.0}

#: Receives one-line progress messages.
Log = Callable[[str], None]


def get_default_config() -> ml_collections.ConfigDict:
  """Every key a training config may hold, with the paper's values.

  ``experiments/configs/*.py`` start from this; :func:`validate_config` refuses
  keys that are not here.
  """
  from crystal_search.models import config as model_config

  c = ml_collections.ConfigDict()
  c.scale = "paper"  # 'cpu' or 'paper': documents which budget the values are meant for.
  c.seed = 0
  c.model_kind = "force_stress"  # or 'energy' (the energy baseline)
  c.loss = "mse"  # 'mse' (the paper) or 'mae' (force/stress model only)
  c.init_from = ""  # exported model directory to start from ('' = random initialisation)
  c.model = model_config.get_model_config()

  c.data = ml_collections.ConfigDict()
  c.data.path = "data/dataset"  # folder with train.npz, val.npz, test.npz, holdout.npz
  c.data.holdout = ("Li15Si4",)  # reduced formulas never trained or validated on
  c.data.max_train_frames = 0  # 0: all; otherwise a seeded random subset
  c.data.max_eval_frames = 0  # 0: all; caps val/test/holdout frames (seeded subset)

  c.learning_rate = 1e-3
  c.lr_halving_epochs = 15
  c.num_epochs = 200
  c.patience = 30  # epochs without a better validation loss; 0 = no early stopping
  c.batch_size = 32
  c.eval_batch_size = 64
  c.grad_clip = 0.0  # global-norm clipping; 0 = off (the paper does not clip)

  c.augment = ml_collections.ConfigDict()
  c.augment.rotate_fraction = 0.5
  c.augment.noise_fraction = 0.3
  c.augment.noise_std = 0.01  # Å

  c.capacity_margin = 1.2  # neighbour capacity = margin * largest count in the data
  c.checkpoint_every_epochs = 1
  # Wall-clock budget (minutes, 0 = none): the run ends after the epoch in which the training
  # epochs' summed time (over all invocations, as in metrics.csv) reaches it, and exports its
  # best model as a finished run does.  The number of epochs then depends on the machine.
  c.max_train_minutes = 0.0
  return c


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raise :class:`InputError` (one line) for unknown keys or impossible values."""
  reference = _flatten(get_default_config().to_dict())
  given = _flatten(config.to_dict())
  unknown = sorted(set(given) - set(reference))
  if unknown:
    raise InputError(f"config: unknown key(s) {', '.join(unknown)}")
  missing = sorted(set(reference) - set(given))
  if missing:
    raise InputError(f"config: missing key(s) {', '.join(missing)}")

  def need(cond: bool, key: str, what: str) -> None:
    if not cond:
      raise InputError(f"config.{key}={given[key]!r}: {what}")

  need(given["scale"] in ("cpu", "paper"), "scale", "expected 'cpu' or 'paper'")
  need(given["model_kind"] in MODEL_KINDS, "model_kind", f"expected one of {MODEL_KINDS}")
  need(given["loss"] in LOSSES, "loss", f"expected one of {LOSSES}")
  need(
    given["loss"] == "mse" or given["model_kind"] == "force_stress",
    "loss",
    "the energy model trains on the mean squared error only",
  )
  need(isinstance(given["init_from"], str), "init_from", "must be a model directory or ''")
  for key in ("learning_rate",):
    need(isinstance(given[key], float | int) and given[key] > 0, key, "must be > 0")
  for key in ("num_epochs", "lr_halving_epochs", "batch_size", "eval_batch_size"):
    need(isinstance(given[key], int) and given[key] >= 1, key, "must be an integer >= 1")
  for key in ("patience", "data.max_train_frames", "data.max_eval_frames"):
    need(isinstance(given[key], int) and given[key] >= 0, key, "must be an integer >= 0")
  need(
    isinstance(given["max_train_minutes"], float | int) and given["max_train_minutes"] >= 0,
    "max_train_minutes",
    "must be >= 0 (0: no budget)",
  )
  need(given["checkpoint_every_epochs"] >= 1, "checkpoint_every_epochs", "must be >= 1")
  need(given["grad_clip"] >= 0, "grad_clip", "must be >= 0")
  need(given["capacity_margin"] >= 1.0, "capacity_margin", "must be >= 1")
  for key in ("augment.rotate_fraction", "augment.noise_fraction"):
    need(0.0 <= given[key] <= 1.0, key, "must lie in [0, 1]")
  need(given["augment.noise_std"] >= 0.0, "augment.noise_std", "must be >= 0 (Å)")
  need(given["model.cutoff"] > 0, "model.cutoff", "must be > 0 (Å)")
  need(bool(given["data.path"]), "data.path", "must name the dataset folder")
  from crystal_search.models import config as model_config

  model_config.validate_config(config.model)


def config_hash(config: ml_collections.ConfigDict) -> str:
  """A stable short hash of the whole config (identifies a run in a workdir).

  Model keys added after runs were hashed (``models.config.HASH_NEUTRAL_KEYS``) count only when
  they differ from the value those runs were built with, so existing runs, exports and archived
  evaluations keep their hashes.
  """
  text = json.dumps(_hashed(config.to_dict()), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _hashed(d: dict) -> dict:
  """A config dict without the keys added after runs were hashed, where they hold the value
  those runs were built with (``HASH_NEUTRAL_KEYS``, ``models.config.HASH_NEUTRAL_KEYS``)."""
  from crystal_search.models import config as model_config

  d = {k: v for k, v in d.items() if not (k in HASH_NEUTRAL_KEYS and v == HASH_NEUTRAL_KEYS[k])}
  if isinstance(d.get("model"), dict):
    model = dict(d["model"])
    for key, value in model_config.HASH_NEUTRAL_KEYS.items():
      if key in model and model[key] == value:
        del model[key]
    d["model"] = model
  return d
