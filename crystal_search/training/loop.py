"""The training loop: :func:`train` opens the run, builds or restores the state, trains epochs
and exports the best model, one function per stage.

* **Early stopping** on the validation loss (``patience`` epochs), best and latest checkpoints
  with orbax every epoch, resumption from the latest one.  The data order and augmentation
  depend only on ``(seed, epoch)``, so a killed and resumed run ends with the same parameters
  as an uninterrupted one.
* **Time budget** (``max_train_minutes``, 0 = none): the run ends after the epoch in which its
  summed epoch time reaches the budget and exports its best model, as a finished run does.
* **Export**: the best model (by validation loss) goes to ``workdir/model`` with its config, the
  dataset version and the test metrics.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from crystal_search.training.checkpoints import (
  _RUN_FILE,
  Checkpoints,
  _MetricsLog,
  _write_json,
  prepare_workdir,
)
from crystal_search.training.config import Log, config_hash, validate_config
from crystal_search.training.data import (
  OPTIONAL_SPLITS,
  Dataset,
  bucket_batches,
  epoch_batches,
  load_dataset,
  make_batch,
  neighbour_capacities,
  normalization_stats,
)
from crystal_search.training.export import _exported_metadata, export_model, load_init_from
from crystal_search.training.steps import (
  MAX_CAPACITY_GROWTHS,
  ModelAdapter,
  TrainState,
  _grow,
  _initial_variables,
  _overflow_message,
  create_train_state,
  evaluate_frames,
  make_optimizer,
  make_steps,
  model_adapter,
)


@dataclasses.dataclass
class TrainResult:
  """What :func:`train` did.

  Attributes:
    epochs: epochs finished (over all invocations of the run).
    best_epoch: epoch of the best validation loss.
    best_val: validation metrics of the best epoch.
    test: metrics of the best model per evaluated split (``test``, ``holdout``).
    model_dir: the exported model (None when the run was interrupted).
    resumed_from: epoch the run resumed from (0 for a fresh run).
    stopped_early: True when early stopping ended the run.
    capacities: final neighbour capacity per bucket.
    params: the final (last-epoch) parameters.
  """

  epochs: int
  best_epoch: int
  best_val: dict[str, float]
  test: dict[str, dict[str, float]]
  model_dir: str | None
  resumed_from: int
  stopped_early: bool
  capacities: dict[int, int]
  params: Any = None


@dataclasses.dataclass(frozen=True)
class _Run:
  """What stays fixed during one :func:`train` call: the config, the data and the workdir."""

  config: ml_collections.ConfigDict
  workdir: str
  log: Log
  dataset: Dataset
  digest: str
  adapter: ModelAdapter
  start_from: dict | None
  resuming: bool
  extended: bool


@dataclasses.dataclass(frozen=True)
class _Model:
  """The model's training set statistics, optimiser schedule and jitted steps."""

  stats: dict[str, np.ndarray]
  steps_per_epoch: int
  schedule: Callable[[int], Any]
  train_step: Callable
  eval_step: Callable


def train(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  overwrite: bool = False,
  extend: bool = False,
  stop_after: int | None = None,
  progress: bool = True,
  log: Log | None = None,
) -> TrainResult:
  """Train (or resume training) a model as configured; export the best one.

  Args:
    config: a training config (:func:`crystal_search.training.get_default_config` keys).
    workdir: run directory (created; see :mod:`crystal_search.training.checkpoints`).
    overwrite: replace another run's files in ``workdir`` instead of refusing.
    extend: continue a finished or stopped run in ``workdir`` whose config is this one with
      fewer ``num_epochs`` (same data), e.g. the 45-epoch shipped run as the first 45 epochs of
      a 75-epoch one; ``run.json`` then records this config and ``extended_from``.
    stop_after: stop, as if killed, after this many epochs of this invocation
      (the run is left resumable and nothing is exported).
    progress: show a tqdm bar per epoch.
    log: receives one-line progress messages.

  Raises:
    InputError: bad config, dataset or workdir (before any training).
  """
  run = _open_run(config, workdir, overwrite=overwrite, extend=extend, log=log)
  model, state = _build_model(run)
  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"))
  state, meta = _restore(run, checkpoints, state)
  resumed_from = int(meta["epoch"])
  capacities = _capacities(run, meta)
  metrics_log = _MetricsLog(workdir, _metric_columns(run.adapter), resume_epoch=resumed_from)
  try:
    state, epochs_run = _train_epochs(
      run,
      model,
      state,
      meta,
      capacities,
      checkpoints=checkpoints,
      metrics_log=metrics_log,
      stop_after=stop_after,
      progress=progress,
    )
    if not meta["finished"] and int(meta["epoch"]) < config.num_epochs:  # interrupted
      return _result(meta, state, capacities, resumed_from=resumed_from, test={}, model_dir=None)
    test, model_dir = _finish(run, model, state, meta, capacities, checkpoints, epochs_run)
    return _result(
      meta, state, capacities, resumed_from=resumed_from, test=test, model_dir=model_dir
    )
  finally:
    metrics_log.close()
    checkpoints.close()


def _open_run(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  overwrite: bool,
  extend: bool,
  log: Log | None,
) -> _Run:
  """Check the config, read the data and claim the workdir (``run.json``)."""
  log = log or (lambda _: None)
  validate_config(config)
  start_from = load_init_from(config)
  # Frame subsets (data.max_*_frames) do not depend on the training seed: every run of a
  # seed sweep sees the same frames.
  dataset = load_dataset(
    config.data,
    elements=tuple(config.model.elements),
    seed=0,
    log=log,
    cutoff=float(config.model.cutoff),
    max_images=int(config.model.max_images),
  )
  digest = config_hash(config)
  os.makedirs(workdir, exist_ok=True)
  run_file = os.path.join(workdir, _RUN_FILE)
  previous_run = {}
  if os.path.exists(run_file):
    with open(run_file) as f:
      previous_run = json.load(f)
  resuming = prepare_workdir(
    workdir,
    config_digest=digest,
    data_version=dataset.version,
    overwrite=overwrite,
    config=config.to_dict(),
    extend=extend,
  )
  extended = resuming and previous_run.get("config_hash") != digest
  record = _run_record(config, dataset, digest, start_from, previous_run, resuming, extended)
  _write_json(run_file, record)
  adapter = model_adapter(config)
  log(
    f"data {dataset.path} (version {dataset.version}): "
    + ", ".join(f"{k} {len(v)} frames" for k, v in dataset.splits.items())
  )
  return _Run(
    config=config,
    workdir=workdir,
    log=log,
    dataset=dataset,
    digest=digest,
    adapter=adapter,
    start_from=start_from,
    resuming=resuming,
    extended=extended,
  )


def _run_record(
  config: ml_collections.ConfigDict,
  dataset: Dataset,
  digest: str,
  start_from: dict | None,
  previous_run: dict,
  resuming: bool,
  extended: bool,
) -> dict:
  """The contents of ``run.json``: config, its hash, the data, and what the run continues."""
  record = {
    "config_hash": digest,
    "data_version": dataset.version,
    "data_path": dataset.path,
    "config": config.to_dict(),
  }
  if extended:
    record["extended_from"] = {
      "config_hash": previous_run.get("config_hash"),
      "num_epochs": previous_run.get("config", {}).get("num_epochs"),
    }
  elif resuming and "extended_from" in previous_run:
    record["extended_from"] = previous_run["extended_from"]
  if start_from is not None:
    record["init_from"] = {
      k: start_from[k] for k in ("path", "config_hash", "data_version", "variables_sha256")
    }
  return record


def _build_model(run: _Run) -> tuple[_Model, TrainState]:
  """Normalisation statistics, optimiser, initial (or ``init_from``) variables and steps."""
  config, train_frames = run.config, run.dataset.splits["train"]
  stats = normalization_stats(train_frames)
  batches = bucket_batches(train_frames.n_atoms, batch_size=config.batch_size)
  tx, schedule = make_optimizer(config, len(batches))
  first_bucket, first_idx = batches[0]
  example = make_batch(
    train_frames, first_idx, max_atoms=first_bucket, batch_size=config.batch_size
  )
  if run.start_from is not None:
    variables = run.start_from["variables"]
    run.log(
      f"starting from {config.init_from} (config hash {run.start_from['config_hash']}); "
      "its normalisation statistics are kept"
    )
  else:
    variables = _initial_variables(run.adapter, config.seed, example.crystals)
    variables = run.adapter.set_normalization(variables, stats)
  state = create_train_state(variables, tx)
  train_step, eval_step = make_steps(run.adapter)
  model = _Model(
    stats=stats,
    steps_per_epoch=len(batches),
    schedule=schedule,
    train_step=train_step,
    eval_step=eval_step,
  )
  return model, state


def _restore(run: _Run, checkpoints: Checkpoints, state: TrainState) -> tuple[TrainState, dict]:
  """The latest checkpoint of a resumed run, or ``state`` with fresh bookkeeping (``meta``)."""
  meta = {
    "epoch": 0,
    "best_val_loss": None,
    "best_epoch": 0,
    "epochs_since_best": 0,
    "capacities": None,
    "finished": False,
    "stopped_early": False,
    "train_seconds": 0.0,
    "stopped_on_budget": False,
  }
  restored = checkpoints.restore_latest(state) if run.resuming else None
  if restored is None:
    return state, meta
  config = run.config
  state, meta = restored
  run.log(f"resuming from epoch {meta['epoch']} in {run.workdir}")
  meta.setdefault("train_seconds", 0.0)
  meta.setdefault("stopped_on_budget", False)
  if run.extended and int(meta["epoch"]) < config.num_epochs and not meta["stopped_early"]:
    if not meta["stopped_on_budget"] or not _budget_spent(config, meta):
      meta["finished"] = False
      meta["stopped_on_budget"] = False
      run.log(f"extending the run to {config.num_epochs} epochs")
  return state, meta


def _capacities(run: _Run, meta: dict) -> dict[int, int]:
  """Neighbour capacity per bucket (edges per structure): restored, or measured on the data."""
  if meta["capacities"]:
    return {int(k): int(v) for k, v in meta["capacities"].items()}
  capacities = neighbour_capacities(
    list(run.dataset.splits.values()),
    cutoff=float(run.config.model.cutoff),
    margin=run.config.capacity_margin,
  )
  run.log(f"neighbour capacity per bucket (edges per structure): {capacities}")
  return capacities


def _metric_columns(adapter: ModelAdapter) -> list[str]:
  """The columns of ``metrics.csv``."""
  columns = ["epoch", "step", "learning_rate", "train_loss"]
  columns += ["val_loss"] + [f"val_{m}" for m in adapter.metric_names]
  return columns + ["skipped_steps", "seconds"]


def _train_epochs(
  run: _Run,
  model: _Model,
  state: TrainState,
  meta: dict,
  capacities: dict[int, int],
  *,
  checkpoints: Checkpoints,
  metrics_log: _MetricsLog,
  stop_after: int | None,
  progress: bool,
) -> tuple[TrainState, int]:
  """Train and validate epoch after epoch until the run finishes or ``stop_after`` epochs ran.

  ``meta`` and ``capacities`` are updated in place; returns the state and the epochs run.
  """
  config, metric_names = run.config, run.adapter.metric_names
  epochs_run = 0
  epoch = int(meta["epoch"])
  while not meta["finished"] and epoch < config.num_epochs:
    if stop_after is not None and epochs_run >= stop_after:
      break
    epoch += 1
    start = time.time()
    state, losses, skipped = _train_epoch(run, model, state, epoch, capacities, progress)
    val = evaluate_frames(
      model.eval_step,
      state,
      run.dataset.splits["val"],
      kind=run.adapter.kind,
      batch_size=config.eval_batch_size,
      capacities=capacities,
      log=run.log,
    )
    seconds = round(time.time() - start, 3)
    improved = _end_epoch(config, meta, epoch, val, capacities, seconds=seconds)
    row = {
      "epoch": epoch,
      "step": int(state.step),
      "learning_rate": float(model.schedule(int(state.step) - 1)),
      "train_loss": float(np.mean(losses)) if losses else float("nan"),
      "val_loss": val["loss"],
      **{f"val_{m}": val[m] for m in metric_names},
      "skipped_steps": skipped,
      "seconds": seconds,
    }
    # The row first: a run killed before its checkpoint is written resumes from the previous
    # one and drops the rows after it.
    metrics_log.write(row)
    if improved or epoch % config.checkpoint_every_epochs == 0 or meta["finished"]:
      checkpoints.save(state, meta, best=improved)
    epochs_run += 1
    run.log(
      f"epoch {epoch}: train loss {row['train_loss']:.4f}, val loss {val['loss']:.4f}, "
      + ", ".join(f"{m} {val[m]:.4f}" for m in metric_names)
      + (" (best)" if improved else "")
    )
  return state, epochs_run


def _train_epoch(
  run: _Run,
  model: _Model,
  state: TrainState,
  epoch: int,
  capacities: dict[int, int],
  progress: bool,
) -> tuple[TrainState, list[float], int]:
  """One pass over the augmented training batches: ``(state, losses, skipped steps)``.

  A batch whose neighbour lists overflow is redone with a grown capacity (``capacities`` is
  updated in place); a step with a non-finite loss is skipped.
  """
  losses, skipped = [], 0
  bar = None
  if progress:
    from tqdm.auto import tqdm

    bar = tqdm(total=model.steps_per_epoch, desc=f"epoch {epoch}", leave=False)
  for bucket, batch in epoch_batches(run.dataset.splits["train"], run.config, epoch):
    for _ in range(MAX_CAPACITY_GROWTHS + 1):
      cap = capacities.setdefault(bucket, 64)
      state, aux = model.train_step(state, batch, cap)
      aux = jax.device_get(aux)
      if not aux["overflow"]:
        break
      capacities[bucket] = _grow(cap)
      run.log(
        f"neighbour capacity of bucket {bucket} grown {cap} -> {capacities[bucket]} "
        "(overflow); recompiling"
      )
    else:
      raise RuntimeError(_overflow_message(bucket))
    if aux["skipped"]:
      skipped += 1
      run.log(f"epoch {epoch}: non-finite loss, step skipped")
    else:
      losses.append(float(aux["loss"]))
    if bar is not None:
      bar.update(1)
      bar.set_postfix(loss=f"{losses[-1]:.4f}" if losses else "nan")
  if bar is not None:
    bar.close()
  return state, losses, skipped


def _end_epoch(
  config: ml_collections.ConfigDict,
  meta: dict,
  epoch: int,
  val: dict[str, float],
  capacities: dict[int, int],
  *,
  seconds: float,
) -> bool:
  """Record a finished epoch in ``meta`` (best epoch, early stopping, time budget, end of the
  run); returns whether its validation loss is the best so far."""
  improved = meta["best_val_loss"] is None or val["loss"] < meta["best_val_loss"]
  if improved:
    meta["best_val_loss"] = val["loss"]
    meta["best_epoch"] = epoch
    meta["best_val"] = val
    meta["epochs_since_best"] = 0
  else:
    meta["epochs_since_best"] += 1
  meta["epoch"] = epoch
  meta["capacities"] = {str(k): v for k, v in capacities.items()}
  if config.patience and meta["epochs_since_best"] >= config.patience:
    meta["finished"] = True
    meta["stopped_early"] = True
  if epoch >= config.num_epochs:
    meta["finished"] = True
  meta["train_seconds"] = float(meta["train_seconds"]) + seconds
  if not meta["finished"] and _budget_spent(config, meta):
    meta["finished"] = True
    meta["stopped_on_budget"] = True
  return improved


def _budget_spent(config: ml_collections.ConfigDict, meta: dict) -> bool:
  """Whether the run's training time (``meta['train_seconds']``, s) has reached its budget
  (``max_train_minutes``)."""
  budget = float(config.max_train_minutes)
  return budget > 0 and float(meta.get("train_seconds", 0.0)) >= 60.0 * budget


def _finish(
  run: _Run,
  model: _Model,
  state: TrainState,
  meta: dict,
  capacities: dict[int, int],
  checkpoints: Checkpoints,
  epochs_run: int,
) -> tuple[dict[str, dict[str, float]], str]:
  """Export the best model of a finished run with its test metrics: ``(test metrics, folder)``.

  A finished run called again keeps its exported model (re-exporting would make every
  evaluation of it look stale to ``experiments.reproduce``).
  """
  config, log = run.config, run.log
  if meta["stopped_early"]:
    log(f"early stopping after epoch {meta['epoch']} (best epoch {meta['best_epoch']})")
  if meta.get("stopped_on_budget"):
    log(
      f"time budget of {config.max_train_minutes} min spent after epoch {meta['epoch']} "
      f"({meta['train_seconds'] / 60:.1f} min of training; best epoch {meta['best_epoch']})"
    )
  model_dir = os.path.join(run.workdir, "model")
  exported = None
  if epochs_run == 0:
    exported = _exported_metadata(model_dir, run.digest, run.dataset.version)
  if exported is not None:
    log(f"run already finished: model in {model_dir}")
    return dict(exported.get("test_metrics") or {}), model_dir
  best = checkpoints.restore_best(state)
  best_state = best[0] if best is not None else state
  test_metrics = _test_metrics(run, model, best_state, capacities)
  export_model(
    model_dir,
    adapter=run.adapter,
    state=best_state,
    metadata=_model_metadata(run, model, meta, test_metrics),
  )
  log(f"exported the best model (epoch {meta['best_epoch']}) to {model_dir}")
  return test_metrics, model_dir


def _test_metrics(
  run: _Run, model: _Model, state: TrainState, capacities: dict[int, int]
) -> dict[str, dict[str, float]]:
  """Metrics of ``state`` on each optional split the dataset has (``test``, ``holdout``)."""
  test_metrics = {}
  for name in OPTIONAL_SPLITS:
    if name in run.dataset.splits:
      test_metrics[name] = evaluate_frames(
        model.eval_step,
        state,
        run.dataset.splits[name],
        kind=run.adapter.kind,
        batch_size=run.config.eval_batch_size,
        capacities=capacities,
        log=run.log,
      )
      run.log(f"best model on {name}: {test_metrics[name]}")
  return test_metrics


def _model_metadata(run: _Run, model: _Model, meta: dict, test_metrics: dict) -> dict:
  """What the exported model records about its run (``model.json``)."""
  config = run.config
  return {
    "data_version": run.dataset.version,
    "data_path": run.dataset.path,
    "config_hash": run.digest,
    "training_config": config.to_dict(),
    "best_epoch": int(meta["best_epoch"]),
    "epochs": int(meta["epoch"]),
    "stopped_early": bool(meta["stopped_early"]),
    "stopped_on_budget": bool(meta.get("stopped_on_budget", False)),
    "train_minutes": round(float(meta.get("train_seconds", 0.0)) / 60, 2),
    "val_metrics": dict(meta.get("best_val") or {}),
    "test_metrics": test_metrics,
    "normalization": {k: float(v) for k, v in model.stats.items()},
    "holdout": list(config.data.holdout),
  }


def _result(
  meta: dict,
  state: TrainState,
  capacities: dict[int, int],
  *,
  resumed_from: int,
  test: dict[str, dict[str, float]],
  model_dir: str | None,
) -> TrainResult:
  return TrainResult(
    epochs=int(meta["epoch"]),
    best_epoch=int(meta["best_epoch"]),
    best_val=dict(meta.get("best_val") or {}),
    test=test,
    model_dir=model_dir,
    resumed_from=resumed_from,
    stopped_early=bool(meta["stopped_early"]),
    capacities=capacities,
    params=state.params,
  )
