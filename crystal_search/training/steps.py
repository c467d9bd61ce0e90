"""Losses, model adapters, the train state and the jitted train and evaluation steps.

* **Loss**: the sum of the mean squared errors of the standardised forces and the standardised
  stresses (force/stress model), or of the standardised energy per atom (energy baseline);
  padding atoms and padding structures are masked out.  ``loss='mae'`` takes mean absolute
  errors instead.
* **Optimiser**: Adam, learning rate halved every ``lr_halving_epochs`` epochs (a staircase
  ``optax.exponential_decay`` over steps), optional global-norm clipping.
* **Neighbour overflow**: a step whose model reports an overflow is discarded inside the jitted
  step; the caller grows the bucket's capacity and redoes the batch.

Units: forces eV/Å, stress kBar, energy eV per cell (per atom where named).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from crystal_search.crystals import Crystals
from crystal_search.datasets import frames as frames_lib
from crystal_search.errors import InputError
from crystal_search.training.config import LOSSES, MODEL_KINDS, Log
from crystal_search.training.data import Batch, bucket_batches, make_batch


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean squared error over the entries where ``mask`` is True.

  Args:
    pred: ``[B, ...]`` any shape.
    target: same shape as ``pred``.
    mask: broadcastable to ``pred`` (e.g. ``[B, N, 1]`` for ``[B, N, 3]``), bool.

  Returns:
    ``sum(mask * (pred - target)^2) / count``, 0 when nothing is selected.
  """
  mask = jnp.broadcast_to(mask, pred.shape)
  sq = jnp.where(mask, (pred - target) ** 2, 0.0)
  return jnp.sum(sq) / jnp.maximum(jnp.sum(mask), 1)


def masked_mae(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean absolute error over the entries where ``mask`` is True (shapes as
  :func:`masked_mse`); 0 when nothing is selected."""
  mask = jnp.broadcast_to(mask, pred.shape)
  err = jnp.where(mask, jnp.abs(pred - target), 0.0)
  return jnp.sum(err) / jnp.maximum(jnp.sum(mask), 1)


def force_stress_loss(
  forces_pred: jax.Array,
  stress_pred: jax.Array,
  forces_target: jax.Array,
  stress_target: jax.Array,
  atom_mask: jax.Array,
  *,
  loss: str = "mse",
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """The paper's loss: MSE of standardised forces + MSE of standardised stresses
  (``loss='mae'``: the same with mean absolute errors).

  Args:
    forces_pred, forces_target: ``[B, N, 3]`` standardised forces.
    stress_pred, stress_target: ``[B, 3, 3]`` standardised stresses.
    atom_mask: ``[B, N]`` bool, real atoms (structures with none are padding).
    loss: ``'mse'`` or ``'mae'``.

  Returns:
    ``(loss, (force_term, stress_term))``.
  """
  if loss not in LOSSES:
    raise ValueError(f"loss {loss!r}: expected one of {LOSSES}")
  error = masked_mse if loss == "mse" else masked_mae
  structure_mask = jnp.any(atom_mask, axis=1)
  f = error(forces_pred, forces_target, atom_mask[..., None])
  s = error(stress_pred, stress_target, structure_mask[:, None, None])
  return f + s, (f, s)


def lr_schedule(
  *, learning_rate: float, halving_epochs: int, steps_per_epoch: int
) -> optax.Schedule:
  """``learning_rate * 0.5 ** floor(step / (halving_epochs * steps_per_epoch))``."""
  return optax.exponential_decay(
    init_value=learning_rate,
    transition_steps=max(1, halving_epochs * steps_per_epoch),
    decay_rate=0.5,
    staircase=True,
  )


# ----------------------------------------------------------------------------
# Model adapters: one interface over the force/stress model and the energy model.


@dataclasses.dataclass(frozen=True)
class ModelAdapter:
  """What the trainer needs from a model kind.

  Attributes:
    kind: ``'force_stress'`` or ``'energy'``.
    config: the model config.
    loss_kind: ``config.loss`` of the run (``'mse'`` or ``'mae'``).
    init: ``(rng, crystals) -> variables``.
    set_normalization: ``(variables, stats) -> variables``.
    loss: ``(variables, batch, capacity) -> (loss, aux)`` with ``aux`` a dict of
      per-batch sums (see :func:`_force_stress_loss`) and ``overflow`` (bool).
  """

  kind: str
  config: ml_collections.ConfigDict
  init: Callable[[jax.Array, Crystals], dict]
  set_normalization: Callable[[dict, dict], dict]
  loss: Callable[[dict, Batch, int], tuple[jax.Array, dict]]
  metric_names: tuple[str, ...]
  loss_kind: str = "mse"


def _force_stress_adapter(
  model_config: ml_collections.ConfigDict, loss_kind: str = "mse"
) -> ModelAdapter:
  from crystal_search.models import force_stress

  def init(rng, crystals):
    return force_stress.init(model_config, rng, crystals)

  def set_norm(variables, stats):
    return force_stress.set_normalization(
      variables,
      force_mean=stats["force_mean"],
      force_std=stats["force_std"],
      stress_mean=stats["stress_mean"],
      stress_std=stats["stress_std"],
    )

  def loss(variables, batch, capacity):
    pred = force_stress.apply(model_config, variables, batch.crystals, capacity=capacity)
    fn, sn = force_stress.normalize_targets(variables, batch.forces, batch.stress)
    mask = batch.crystals.mask
    value, (f_term, s_term) = force_stress_loss(
      pred.forces_normalized, pred.stress_normalized, fn, sn, mask, loss=loss_kind
    )
    structure = jnp.any(mask, axis=1)
    n_atoms = jnp.sum(mask)
    n_struct = jnp.sum(structure)
    f_err = jnp.where(mask[..., None], pred.forces - batch.forces, 0.0)
    s_err = jnp.where(structure[:, None, None], pred.stress - batch.stress, 0.0)
    fn_err = jnp.where(mask[..., None], pred.forces_normalized - fn, 0.0)
    sn_err = jnp.where(structure[:, None, None], pred.stress_normalized - sn, 0.0)
    aux = {
      "force_loss": f_term,
      "stress_loss": s_term,
      # Sums for dataset-level metrics.
      "force_abs_sum": jnp.sum(jnp.abs(f_err)),
      "force_count": 3 * n_atoms,
      "stress_abs_sum": jnp.sum(jnp.abs(s_err)),
      "stress_count": 9 * n_struct,
      "force_sq_sum": jnp.sum(fn_err**2),
      "stress_sq_sum": jnp.sum(sn_err**2),
      # The training loss's terms as sums (each term is its sum over its count).
      "force_loss_sum": f_term * (3 * n_atoms),
      "stress_loss_sum": s_term * (9 * n_struct),
      "overflow": jnp.any(pred.overflow),
    }
    return value, aux

  return ModelAdapter(
    kind="force_stress",
    config=model_config,
    init=init,
    set_normalization=set_norm,
    loss=loss,
    metric_names=("force_mae", "stress_mae"),
    loss_kind=loss_kind,
  )


def _energy_adapter(model_config: ml_collections.ConfigDict) -> ModelAdapter:
  from crystal_search.models import energy as energy_model

  def init(rng, crystals):
    return energy_model.init(model_config, rng, crystals)

  def set_norm(variables, stats):
    if not np.isfinite(stats["energy_mean"]):
      raise InputError("the energy model needs energies, but the training set has none")
    return energy_model.set_normalization(
      variables, energy_mean=stats["energy_mean"], energy_std=stats["energy_std"]
    )

  def loss(variables, batch, capacity):
    pred = energy_model.apply(model_config, variables, batch.crystals, capacity=capacity)
    n = batch.crystals.n_atoms
    real = n > 0
    std = variables["normalization"]["energy_std"]
    per_atom_err = (pred.energy - batch.energy) / jnp.maximum(n, 1)
    err_n = jnp.where(real, per_atom_err / std, 0.0)
    value = jnp.sum(err_n**2) / jnp.maximum(jnp.sum(real), 1)
    aux = {
      "energy_mse": value,
      "energy_abs_sum": jnp.sum(jnp.where(real, jnp.abs(per_atom_err), 0.0)),
      "energy_count": jnp.sum(real),
      "energy_sq_sum": jnp.sum(err_n**2),
      "overflow": jnp.any(pred.overflow),
    }
    return value, aux

  return ModelAdapter(
    kind="energy",
    config=model_config,
    init=init,
    set_normalization=set_norm,
    loss=loss,
    metric_names=("energy_mae",),
  )


def model_adapter(config: ml_collections.ConfigDict) -> ModelAdapter:
  """The adapter for ``config.model_kind``."""
  if config.model_kind == "force_stress":
    return _force_stress_adapter(config.model, str(config.get("loss", "mse")))
  if config.model_kind == "energy":
    return _energy_adapter(config.model)
  raise InputError(f"config.model_kind={config.model_kind!r}: expected one of {MODEL_KINDS}")


def dataset_metrics(kind: str, sums: dict[str, float]) -> dict[str, float]:
  """Dataset-level metrics from summed batch outputs.

  ``force_stress``: ``loss`` (the training loss: standardised MSE, or MAE, sum), ``force_mae`` (eV/Å over
  components), ``stress_mae`` (kBar over 9 components).  ``energy``: ``loss``,
  ``energy_mae`` (eV/atom).
  """

  def div(a, b):
    return float(sums[a]) / float(sums[b]) if sums.get(b) else float("nan")

  if kind == "force_stress":
    return {
      "loss": div("force_loss_sum", "force_count") + div("stress_loss_sum", "stress_count"),
      "force_mae": div("force_abs_sum", "force_count"),
      "stress_mae": div("stress_abs_sum", "stress_count"),
    }
  return {
    "loss": div("energy_sq_sum", "energy_count"),
    "energy_mae": div("energy_abs_sum", "energy_count"),
  }


# ----------------------------------------------------------------------------
# State and steps.


class TrainState(train_state.TrainState):
  """Flax train state plus the (untrained) normalisation statistics of the model."""

  normalization: Any = None

  def variables(self) -> dict:
    return {"params": self.params, "normalization": self.normalization}


def make_optimizer(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """``(tx, schedule)``: Adam with the halving schedule (and optional global-norm clipping).

  Cached per setting: the optimizer is a static part of :class:`TrainState`, so
  reusing one object lets repeated runs in a process share compiled steps.
  """
  return _optimizer(
    float(config.learning_rate),
    int(config.lr_halving_epochs),
    int(steps_per_epoch),
    float(config.grad_clip),
  )


@functools.lru_cache(maxsize=64)
def _optimizer(learning_rate: float, halving_epochs: int, steps_per_epoch: int, grad_clip: float):
  schedule = lr_schedule(
    learning_rate=learning_rate, halving_epochs=halving_epochs, steps_per_epoch=steps_per_epoch
  )
  tx = optax.adam(schedule)
  if grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(grad_clip), tx)
  return tx, schedule


def _canonical(tree):
  """Strongly typed jax arrays committed to the default device everywhere (a fresh, a stepped
  and a restored state then share one jit cache entry instead of recompiling)."""
  device = jax.devices()[0]
  return jax.tree_util.tree_map(
    lambda x: jax.device_put(jnp.array(x, dtype=jnp.result_type(x)), device), tree
  )


def create_train_state(variables: dict, tx) -> TrainState:
  """A fresh state from initialised (and normalised) model variables."""
  state = TrainState.create(
    apply_fn=None, params=variables["params"], tx=tx, normalization=variables["normalization"]
  )
  return _canonical(state.replace(step=jnp.zeros((), jnp.int32)))


_STEPS_CACHE: dict[tuple[str, str, str], tuple[Callable, Callable]] = {}


def make_steps(adapter: ModelAdapter):
  """Jitted ``(train_step, eval_step)`` for a model kind (cached per kind and model config).

  ``train_step(state, batch, capacity) -> (state, aux)``: one Adam step; when
  the model reports a neighbour overflow or the loss is not finite, the state
  is returned unchanged (``aux['skipped']``) so that the caller can grow the
  capacity and redo the batch.  The input state is donated.
  ``eval_step(state, batch, capacity) -> aux`` (loss sums for metrics).
  ``capacity`` is static: one compilation per (bucket, capacity).
  """

  def loss_fn(params, state, batch, capacity):
    variables = {"params": params, "normalization": state.normalization}
    return adapter.loss(variables, batch, capacity)

  def train_step(state, batch, capacity):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state, batch, capacity
    )
    skip = aux["overflow"] | ~jnp.isfinite(loss)
    new_state = state.apply_gradients(grads=grads)
    new_state = jax.tree_util.tree_map(lambda old, new: jnp.where(skip, old, new), state, new_state)
    aux = dict(aux, loss=loss, skipped=skip)
    return new_state, aux

  def eval_step(state, batch, capacity):
    loss, aux = loss_fn(state.params, state, batch, capacity)
    return dict(aux, loss=loss)

  key = (
    adapter.kind,
    adapter.loss_kind,
    json.dumps(adapter.config.to_dict(), sort_keys=True, default=str),
  )
  if key not in _STEPS_CACHE:
    _STEPS_CACHE[key] = (
      jax.jit(train_step, static_argnums=(2,), donate_argnums=(0,)),
      jax.jit(eval_step, static_argnums=(2,)),
    )
  return _STEPS_CACHE[key]


_INIT_CACHE: dict[tuple, Any] = {}


def _initial_variables(adapter: ModelAdapter, seed: int, crystals: Crystals) -> dict:
  """``adapter.init(PRNGKey(seed), crystals)``, remembered per model config, seed and shapes
  (initialisation compiles the graph builder; runs repeated in one process skip that)."""
  key = (
    adapter.kind,
    json.dumps(adapter.config.to_dict(), sort_keys=True, default=str),
    int(seed),
    tuple(crystals.positions.shape),
  )
  if key not in _INIT_CACHE:
    variables = adapter.init(jax.random.PRNGKey(seed), crystals)
    _INIT_CACHE.clear()  # keep one entry: only repeated identical runs benefit
    _INIT_CACHE[key] = jax.device_get(variables)
  return _INIT_CACHE[key]


#: Growths of a bucket's edge capacity (x1.5 each) before an overflow is an error: the capacity
#: starts at the data's largest count plus a margin, so more growth means something else.
MAX_CAPACITY_GROWTHS = 4


def _grow(capacity: int) -> int:
  return int(math.ceil(capacity * 1.5)) + 8


def _overflow_message(bucket: int) -> str:
  return (
    f"neighbour lists of bucket {bucket} still overflow after {MAX_CAPACITY_GROWTHS} capacity "
    "growths: a cell thinner than the model's periodic image range (model.max_images), or "
    "atoms collapsed onto each other"
  )


def evaluate_frames(
  eval_step,
  state: TrainState,
  frames: frames_lib.Frames,
  *,
  kind: str,
  batch_size: int,
  capacities: dict[int, int],
  log: Log | None = None,
) -> dict[str, float]:
  """Metrics of ``state`` on every frame of a set (:func:`dataset_metrics`).

  ``capacities`` is updated in place when a bucket overflows (the batch is then
  recomputed with the larger capacity).
  """
  sums: dict[str, float] = {}
  for bucket, idx in bucket_batches(frames.n_atoms, batch_size=batch_size):
    batch = make_batch(frames, idx, max_atoms=bucket, batch_size=batch_size)
    for _ in range(MAX_CAPACITY_GROWTHS + 1):
      cap = capacities.setdefault(bucket, 64)
      aux = jax.device_get(eval_step(state, batch, cap))
      if not aux["overflow"]:
        break
      capacities[bucket] = _grow(cap)
      if log:
        log(f"neighbour capacity of bucket {bucket} grown {cap} -> {capacities[bucket]}")
    else:
      raise RuntimeError(_overflow_message(bucket))
    for k, v in aux.items():
      if k.endswith(("_sum", "_count")):
        sums[k] = sums.get(k, 0.0) + float(v)
  return dataset_metrics(kind, sums)
