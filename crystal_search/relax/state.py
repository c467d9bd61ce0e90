"""The state of a batch of relaxations and its trajectory buffers (pytrees)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from crystal_search.crystals import Crystals
from crystal_search.relax.config import DynamicsParams


@struct.dataclass
class RelaxState:
  """State of a batch of ``B`` relaxations with ``N`` atom slots.

  Attributes:
    crystals: current structures (positions ``[B, N, 3]`` fractional, lattice
      ``[B, 3, 3]`` rows in Å, ...).
    velocity: ``[B, N, 3]``: damped dynamics: Å, Cartesian ion step of the last update
      ``v_{n-1/2}``; FIRE: its velocity, Å/(Å/sqrt(eV)) (a step is ``dt * velocity`` in Å).
    cell_velocity: ``[B, 3, 3]``: damped dynamics: dimensionless symmetric strain step
      ``w_{n-1/2}``; FIRE: the velocity of the strain coordinates ``u = N eps``.
    fire_dt: ``[B]`` Å/sqrt(eV), FIRE's current time step (set at the first update; unused by
      damped dynamics).
    fire_alpha: ``[B]`` FIRE's current mixing ``a``.
    fire_positive: ``[B]`` int32, FIRE's count of steps in a row with ``P > 0``.
    forces: ``[B, N, 3]`` eV/Å at the current positions.
    stress: ``[B, 3, 3]`` kBar (tensile positive) at the current positions.
    energy: ``[B]`` eV per cell (NaN where the force field gives none).
    step: ``[B]`` int32, position updates done so far.
    converged: ``[B]`` bool, force and stress below the thresholds.
    failed: ``[B]`` bool, frozen after a failure.
    failure_code: ``[B]`` int32 index into :data:`FAILURE_REASONS` (0: none).
    fresh: ``[B]`` bool, slot holds a new structure whose forces are not yet computed.
    moving: ``[B]`` bool, moved in the last update (its forces are being recomputed).
    overflow: ``[B]`` bool, the force field's capacity was too small at the last evaluation.
    initial_volume: ``[B]`` Å^3, volume at step 0 (for the volume bound).
    previous_positions: ``[B, N, 3]`` fractional, positions before the last update.
    previous_lattice: ``[B, 3, 3]`` Å, lattice before the last update.
    lbfgs_s: ``[B, M, D]`` L-BFGS's last ``M`` steps in the generalised coordinates (``D = 3N +
      9``: Cartesian atom steps in Å, then the strain coordinates ``u = N eps``), newest last
      (``M = 0`` for the other optimizers).
    lbfgs_y: ``[B, M, D]`` eV/Å, the matching changes of the generalised gradient (minus force).
    lbfgs_rho: ``[B, M]`` ``1 / (y . s)`` per stored pair, 0 for an empty or skipped slot.
    lbfgs_force: ``[B, D]`` eV/Å, the generalised force at the last update.
  """

  crystals: Crystals
  velocity: jax.Array
  cell_velocity: jax.Array
  fire_dt: jax.Array
  fire_alpha: jax.Array
  fire_positive: jax.Array
  forces: jax.Array
  stress: jax.Array
  energy: jax.Array
  step: jax.Array
  converged: jax.Array
  failed: jax.Array
  failure_code: jax.Array
  fresh: jax.Array
  moving: jax.Array
  overflow: jax.Array
  initial_volume: jax.Array
  previous_positions: jax.Array
  previous_lattice: jax.Array
  lbfgs_s: jax.Array
  lbfgs_y: jax.Array
  lbfgs_rho: jax.Array
  lbfgs_force: jax.Array


@struct.dataclass
class Trajectory:
  """Kept steps of a batch: frame ``t`` holds step ``t * k`` (NaN where not reached).

  Attributes:
    positions: ``[T, B, N, 3]`` fractional.
    lattice: ``[T, B, 3, 3]`` Å.
    forces: ``[T, B, N, 3]`` eV/Å.
    stress: ``[T, B, 3, 3]`` kBar.
    energy: ``[T, B]`` eV.
  """

  positions: jax.Array
  lattice: jax.Array
  forces: jax.Array
  stress: jax.Array
  energy: jax.Array


def fresh_state(crystals: Crystals, *, memory: int = 0) -> RelaxState:
  """A state for new structures whose forces are not yet computed (numpy arrays).

  The first :func:`observe` (or ``init_fn``) evaluates them at step 0.  FIRE's scalars are
  set at a structure's first update (step 0) from the settings; ``memory`` is L-BFGS's
  (:func:`lbfgs_memory` of the settings, 0 for the other optimizers).
  """
  positions = np.asarray(crystals.positions)
  lattice = np.asarray(crystals.lattice)
  b, n = positions.shape[:2]
  dtype = positions.dtype
  real = np.asarray(crystals.n_atoms) > 0
  return RelaxState(
    crystals=jax.tree_util.tree_map(np.asarray, crystals),
    velocity=np.zeros((b, n, 3), dtype),
    cell_velocity=np.zeros((b, 3, 3), dtype),
    fire_dt=np.zeros((b,), dtype),
    fire_alpha=np.zeros((b,), dtype),
    fire_positive=np.zeros((b,), np.int32),
    forces=np.zeros((b, n, 3), dtype),
    stress=np.zeros((b, 3, 3), dtype),
    energy=np.full((b,), np.nan, dtype),
    step=np.zeros((b,), np.int32),
    converged=np.zeros((b,), bool),
    failed=np.zeros((b,), bool),
    failure_code=np.zeros((b,), np.int32),
    fresh=real,
    moving=np.zeros((b,), bool),
    overflow=np.zeros((b,), bool),
    initial_volume=np.abs(np.linalg.det(lattice)).astype(dtype),
    previous_positions=positions.copy(),
    previous_lattice=lattice.copy(),
    lbfgs_s=np.zeros((b, memory, 3 * n + 9), dtype),
    lbfgs_y=np.zeros((b, memory, 3 * n + 9), dtype),
    lbfgs_rho=np.zeros((b, memory), dtype),
    lbfgs_force=np.zeros((b, 3 * n + 9), dtype),
  )


def lbfgs_memory(params: DynamicsParams) -> int:
  """Step pairs an L-BFGS state keeps (``params.lbfgs_memory``; 0 for the other optimizers)."""
  return int(params.lbfgs_memory) if params.optimizer == "lbfgs" else 0


def active(state: RelaxState, params: DynamicsParams) -> jax.Array:
  """``[B]`` bool: structures that take another step."""
  real = state.crystals.n_atoms > 0
  return real & ~state.converged & ~state.failed & ~state.fresh & (state.step < params.max_steps)


def empty_trajectory(num_frames: int, batch_size: int, n_atoms: int, dtype=np.float32):
  """NaN-filled trajectory buffers ``[T, B, ...]`` (numpy)."""
  t, b, n = num_frames, batch_size, n_atoms
  return Trajectory(
    positions=np.full((t, b, n, 3), np.nan, dtype),
    lattice=np.full((t, b, 3, 3), np.nan, dtype),
    forces=np.full((t, b, n, 3), np.nan, dtype),
    stress=np.full((t, b, 3, 3), np.nan, dtype),
    energy=np.full((t, b), np.nan, dtype),
  )


def record(traj: Trajectory, state: RelaxState, written: jax.Array, every: int) -> Trajectory:
  """Write the current step of structures ``written`` ``[B]`` whose step is a multiple of ``every``."""
  t = traj.positions.shape[0]
  write = written & (state.step % every == 0) & (state.step // every < t)
  idx = jnp.minimum(state.step // every, t - 1)
  cols = jnp.arange(state.step.shape[0])

  def put(buf, value):
    old = buf[idx, cols]
    w = write.reshape(write.shape + (1,) * (value.ndim - 1))
    return buf.at[idx, cols].set(jnp.where(w, value.astype(buf.dtype), old))

  c = state.crystals
  return Trajectory(
    positions=put(traj.positions, c.positions),
    lattice=put(traj.lattice, c.lattice),
    forces=put(traj.forces, state.forces),
    stress=put(traj.stress, state.stress),
    energy=put(traj.energy, state.energy),
  )


def _written(before: RelaxState, after: RelaxState) -> jax.Array:
  """Structures that took a new (good) force evaluation in the last step."""
  took = (before.moving | before.fresh) & ~after.overflow & ~after.failed
  return took & (after.crystals.n_atoms > 0)
