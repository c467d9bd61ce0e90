"""The run directory: orbax checkpoints, ``run.json`` (which run a workdir holds) and ``metrics.csv``.

Workdir layout::

    run.json            config, its hash, the dataset version (identifies the run)
    checkpoints/latest  orbax checkpoint of the last finished epoch
    checkpoints/best    orbax checkpoint of the best epoch (validation loss)
    metrics.csv         one row per epoch
    model/              the exported best model
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Sequence

import jax

from crystal_search.errors import InputError
from crystal_search.training.config import _hashed
from crystal_search.training.steps import TrainState, _canonical


class Checkpoints:
  """The latest and the best checkpoint of a run (orbax, one of each kept).

  Each holds the train state and a JSON ``meta`` (epoch, best validation loss,
  early-stopping counter, neighbour capacities).
  """

  def __init__(self, directory: str):
    import orbax.checkpoint as ocp

    self._ocp = ocp
    options = ocp.CheckpointManagerOptions(
      max_to_keep=1, create=True, enable_async_checkpointing=False
    )
    self.latest = ocp.CheckpointManager(
      os.path.join(os.path.abspath(directory), "latest"),
      options=options,
      item_names=("state", "meta"),
    )
    self.best = ocp.CheckpointManager(
      os.path.join(os.path.abspath(directory), "best"),
      options=options,
      item_names=("state", "meta"),
    )

  def save(self, state: TrainState, meta: dict, *, best: bool) -> None:
    ocp = self._ocp
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    epoch = int(meta["epoch"])
    self.latest.save(epoch, args=args, force=True)
    if best:
      args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
      self.best.save(epoch, args=args, force=True)
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def _restore(self, manager, target: TrainState) -> tuple[TrainState, dict] | None:
    ocp = self._ocp
    step = manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target)
    out = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
      ),
    )
    return _canonical(out["state"]), dict(out["meta"])

  def restore_latest(self, target: TrainState) -> tuple[TrainState, dict] | None:
    return self._restore(self.latest, target)

  def restore_best(self, target: TrainState) -> tuple[TrainState, dict] | None:
    return self._restore(self.best, target)

  def close(self) -> None:
    self.latest.close()
    self.best.close()


_RUN_FILE = "run.json"
_METRICS_FILE = "metrics.csv"


def extends(previous: dict | None, config: dict) -> bool:
  """Whether ``config`` (a config dict) is the run ``previous`` (its config dict) trained for
  more epochs: every key equal except a larger or equal ``num_epochs``.  The learning-rate
  staircase halves every ``lr_halving_epochs`` whatever the total, so the first epochs of the
  longer run are the shorter run's."""
  if not isinstance(previous, dict) or not isinstance(config, dict):
    return False
  old, new = _hashed(previous), _hashed(config)
  old_epochs, new_epochs = old.pop("num_epochs", None), new.pop("num_epochs", None)
  if old_epochs is None or new_epochs is None or int(new_epochs) < int(old_epochs):
    return False
  old_budget = float(old.pop("max_train_minutes", 0.0) or 0.0)
  new_budget = float(new.pop("max_train_minutes", 0.0) or 0.0)
  if old_budget and new_budget and new_budget < old_budget:
    return False
  return json.dumps(old, sort_keys=True, default=str) == json.dumps(
    new, sort_keys=True, default=str
  )


def prepare_workdir(
  workdir: str,
  *,
  config_digest: str,
  data_version: str,
  overwrite: bool,
  config: dict | None = None,
  extend: bool = False,
) -> bool:
  """Check (or claim) a workdir for a run; returns True when it resumes a previous one.

  With ``extend``, a run in the workdir whose config is ``config`` (a config dict) with fewer
  epochs (:func:`extends`) on the same data is resumed as this run's first epochs.

  Raises:
    InputError: the workdir holds another run (different config hash or data
      version, or checkpoints without a ``run.json``) and ``overwrite`` is
      False.
  """
  run_file = os.path.join(workdir, _RUN_FILE)
  has_ckpt = os.path.isdir(os.path.join(workdir, "checkpoints"))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise InputError(f"--workdir {workdir}: exists and is not a directory")
  if os.path.exists(run_file) or has_ckpt:
    previous = {}
    if os.path.exists(run_file):
      with open(run_file) as f:
        previous = json.load(f)
    same = (
      previous.get("config_hash") == config_digest and previous.get("data_version") == data_version
    )
    if (
      not same
      and extend
      and not overwrite
      and previous.get("data_version") == data_version
      and extends(previous.get("config"), config)
    ):
      return True
    if not same and not overwrite:
      if not previous:
        why = "checkpoints of an unknown run"
      elif previous.get("config_hash") != config_digest:
        why = f"a run with a different config (hash {previous.get('config_hash')}, this one {config_digest})"
      else:
        why = (
          f"a run on different data (version {previous.get('data_version')}, now {data_version})"
        )
      raise InputError(f"--workdir {workdir}: holds {why}; pass --overwrite or use another workdir")
    if not same or overwrite:
      for name in ("checkpoints", "model", "tensorboard"):
        shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
      for name in (_RUN_FILE, _METRICS_FILE):
        if os.path.exists(os.path.join(workdir, name)):
          os.remove(os.path.join(workdir, name))
      return False
    return True
  return False


def _write_json(path: str, data: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=2, default=str)
  os.replace(tmp, path)


class _MetricsLog:
  """``metrics.csv`` (one row per epoch) and TensorBoard if ``tensorboardX`` is installed."""

  def __init__(self, workdir: str, columns: Sequence[str], *, resume_epoch: int):
    self.path = os.path.join(workdir, _METRICS_FILE)
    self.columns = list(columns)
    rows = []
    if resume_epoch > 0 and os.path.exists(self.path):
      with open(self.path) as f:
        rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= resume_epoch]
    with open(self.path, "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=self.columns)
      writer.writeheader()
      writer.writerows(rows)
    self.writer = None
    try:
      from tensorboardX import SummaryWriter  # optional

      self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:
      pass

  def write(self, row: dict) -> None:
    with open(self.path, "a", newline="") as f:
      csv.DictWriter(f, fieldnames=self.columns).writerow(row)
    if self.writer is not None:
      for k, v in row.items():
        if k != "epoch" and isinstance(v, int | float):
          self.writer.add_scalar(k, v, row["epoch"])
      self.writer.flush()

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The rows of ``workdir/metrics.csv`` as floats."""
  with open(os.path.join(workdir, _METRICS_FILE)) as f:
    return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
