"""One relaxation step: :func:`move` (the update rule) and :func:`observe` (forces at the new
positions, convergence, failures), and the jax-md style ``(init_fn, apply_fn)`` pair.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from crystal_search import crystals as crystals_lib
from crystal_search.crystals import Crystals, cell_heights
from crystal_search.force_fields.base import ForceFieldOutput
from crystal_search.relax.checks import _COLLAPSE, _NAN, _OVERLAP, _VOLUME, overlap_ratio
from crystal_search.relax.config import DynamicsParams
from crystal_search.relax.optimizers import _damped_update, _fire_update, _lbfgs_update
from crystal_search.relax.state import RelaxState, active, fresh_state, lbfgs_memory


def move(state: RelaxState, params: DynamicsParams) -> RelaxState:
  """One update of positions and cell of every active structure (``params.optimizer``).

  Inactive structures (converged, failed, at ``max_steps``, fresh, padding) keep
  their positions, lattice and optimiser state.  Forces are not recomputed here.
  """
  go = active(state, params)
  c = state.crystals
  fire = (state.fire_dt, state.fire_alpha, state.fire_positive)
  lbfgs = (state.lbfgs_s, state.lbfgs_y, state.lbfgs_rho, state.lbfgs_force)
  if params.optimizer == "fire":
    v, w, step, strain, fire = _fire_update(state, params)
  elif params.optimizer == "lbfgs":
    v, w, step, strain, lbfgs = _lbfgs_update(state, params)
  else:
    v, w = _damped_update(state, params)
    step, strain = v, w

  inv = jnp.linalg.inv(c.lattice)
  positions = c.positions + jnp.einsum("bni,bij->bnj", step, inv)
  eye = jnp.eye(3, dtype=c.lattice.dtype)
  lattice = jnp.einsum("bij,bjk->bik", c.lattice, eye + strain)

  g3 = go[:, None, None]
  return state.replace(
    crystals=c.replace(
      positions=jnp.where(g3, positions, c.positions),
      lattice=jnp.where(g3, lattice, c.lattice),
    ),
    velocity=jnp.where(g3, v, state.velocity),
    cell_velocity=jnp.where(g3, w, state.cell_velocity),
    fire_dt=jnp.where(go, fire[0], state.fire_dt),
    fire_alpha=jnp.where(go, fire[1], state.fire_alpha),
    fire_positive=jnp.where(go, fire[2], state.fire_positive),
    lbfgs_s=jnp.where(g3, lbfgs[0], state.lbfgs_s),
    lbfgs_y=jnp.where(g3, lbfgs[1], state.lbfgs_y),
    lbfgs_rho=jnp.where(go[:, None], lbfgs[2], state.lbfgs_rho),
    lbfgs_force=jnp.where(go[:, None], lbfgs[3], state.lbfgs_force),
    previous_positions=jnp.where(g3, c.positions, state.previous_positions),
    previous_lattice=jnp.where(g3, c.lattice, state.previous_lattice),
    moving=go,
  )


def observe(state: RelaxState, output: ForceFieldOutput, params: DynamicsParams) -> RelaxState:
  """Take the force-field output at the current positions; update convergence and failures.

  Only structures that just moved or are fresh take the new output; the others
  keep theirs.  A structure whose output overflowed is marked in ``overflow``
  and otherwise left as it was (the caller grows the force field and reruns).
  """
  c = state.crystals
  dtype = c.positions.dtype
  forces = jnp.asarray(output.forces, dtype) * c.mask[..., None]
  stress = jnp.asarray(output.stress, dtype)
  energy = jnp.asarray(output.energy, dtype)
  overflow = jnp.asarray(output.overflow, bool)
  real = c.n_atoms > 0
  update = (state.moving | state.fresh) & real

  geometry_finite = jnp.all(
    jnp.isfinite(jnp.where(c.mask[..., None], c.positions, 0.0)), axis=(-1, -2)
  ) & jnp.all(jnp.isfinite(c.lattice), axis=(-1, -2))
  finite = (
    geometry_finite
    & jnp.all(jnp.isfinite(forces), axis=(-1, -2))
    & jnp.all(jnp.isfinite(stress), axis=(-1, -2))
    & ~jnp.isinf(energy)
  )
  volume = jnp.abs(jnp.linalg.det(c.lattice))
  initial_volume = jnp.where(state.fresh, volume, state.initial_volume)
  ratio = volume / initial_volume
  bad_volume = ~((ratio >= params.min_volume_ratio) & (ratio <= params.max_volume_ratio))
  collapsed = ~(jnp.min(cell_heights(c.lattice), axis=-1) >= params.min_cell_height)
  overlap = (
    overlap_ratio(c, min_distance=params.min_distance, overlap_fraction=params.overlap_fraction)
    < 1.0
  )
  geometry = jnp.where(
    ~geometry_finite,
    _NAN,
    jnp.where(
      collapsed, _COLLAPSE, jnp.where(bad_volume, _VOLUME, jnp.where(overlap, _OVERLAP, 0))
    ),
  ).astype(jnp.int32)
  code = jnp.where(~finite, _NAN, geometry).astype(jnp.int32)
  # A failure of the geometry alone (a collapsed cell, overlapping atoms) needs no force-field
  # output: it fails even where the output overflowed, so that no capacity grows for it.
  overflow = overflow & update & (geometry == 0)
  take = update & ~overflow
  fail = take & (code > 0)
  ok = take & ~fail

  f_max = jnp.max(jnp.linalg.norm(forces, axis=-1), axis=-1)
  s_max = jnp.max(jnp.abs(stress), axis=(-1, -2))
  conv = f_max < params.fmax
  if params.relax_cell:
    conv = conv & (s_max < params.smax)

  # A failure restores the last good configuration (the one before the step).
  revert = fail & state.moving
  r3 = revert[:, None, None]
  o3 = ok[:, None, None]
  crystals = c.replace(
    positions=jnp.where(r3, state.previous_positions, c.positions),
    lattice=jnp.where(r3, state.previous_lattice, c.lattice),
  )
  return state.replace(
    crystals=crystals,
    forces=jnp.where(o3, forces, state.forces),
    stress=jnp.where(o3, stress, state.stress),
    energy=jnp.where(ok, energy, state.energy),
    step=state.step + (ok & state.moving).astype(jnp.int32),
    converged=jnp.where(ok, conv, state.converged),
    failed=state.failed | fail,
    failure_code=jnp.where(fail, code, state.failure_code),
    fresh=state.fresh & ~take,
    moving=state.moving & overflow,
    overflow=overflow,
    initial_volume=jnp.where(take, initial_volume, state.initial_volume),
  )


def damped_dynamics(
  force_field: Callable[[Crystals], ForceFieldOutput] | None,
  *,
  potim: float = 0.4,
  smass: float = 2.0,
  **kwargs: Any,
) -> tuple[Callable, Callable]:
  """jax-md style ``(init_fn, apply_fn)`` for VASP IBRION=3 damped dynamics (ions and cell).

  Args:
    force_field: a force field (jittable or host).  ``None`` gives the
      force-field-free pair ``init_fn(crystals, output) -> state`` and
      ``apply_fn(state, force_fn) -> state`` where ``force_fn(crystals) -> output``
      is called at the moved positions.
    potim: VASP POTIM.
    smass: VASP SMASS (damping ``mu``).
    **kwargs: other :class:`DynamicsParams` fields (fmax, smax, max_steps, ...).

  Returns:
    ``init_fn(crystals) -> RelaxState`` (forces at step 0) and
    ``apply_fn(state) -> RelaxState`` (one update plus a force evaluation).  For
    a jittable force field both are pure JAX (jit them); for a host force field
    they call jit-compiled :func:`move` / :func:`observe` around the host call.
  """
  params = DynamicsParams(potim=potim, smass=smass, **kwargs)
  move_fn = jax.jit(move, static_argnums=1)
  observe_fn = jax.jit(observe, static_argnums=2)

  if force_field is None:

    def init_fn(crystals: Crystals, output: ForceFieldOutput) -> RelaxState:
      return observe_fn(fresh_state(crystals, memory=lbfgs_memory(params)), output, params)

    def apply_fn(state: RelaxState, force_fn: Callable) -> RelaxState:
      state = move_fn(state, params)
      return observe_fn(state, force_fn(state.crystals), params)

    return init_fn, apply_fn

  if getattr(force_field, "jittable", False):

    def init_fn(crystals: Crystals) -> RelaxState:
      return observe(
        fresh_state(crystals, memory=lbfgs_memory(params)), force_field(crystals), params
      )

    def apply_fn(state: RelaxState) -> RelaxState:
      state = move(state, params)
      return observe(state, force_field(state.crystals), params)

    return init_fn, apply_fn

  def host_init(crystals: Crystals) -> RelaxState:
    state = fresh_state(crystals, memory=lbfgs_memory(params))
    return observe_fn(state, _host_eval(force_field, state), params)

  def host_apply(state: RelaxState) -> RelaxState:
    state = move_fn(state, params)
    return observe_fn(state, _host_eval(force_field, state), params)

  return host_init, host_apply


def _host_eval(force_field, state: RelaxState) -> ForceFieldOutput:
  """Evaluate a host force field on the structures that moved or are fresh (numpy)."""
  c = jax.tree_util.tree_map(np.asarray, state.crystals)
  b, n = c.positions.shape[:2]
  need = np.flatnonzero((np.asarray(state.moving) | np.asarray(state.fresh)) & (c.n_atoms > 0))
  forces = np.zeros((b, n, 3), np.float64)
  stress = np.zeros((b, 3, 3), np.float64)
  energy = np.full((b,), np.nan, np.float64)
  overflow = np.zeros((b,), bool)
  if need.size:
    sub = crystals_lib.take(c, need)
    width = int(sub.n_atoms.max())
    sub = sub.replace(
      positions=sub.positions[:, :width],
      atomic_numbers=sub.atomic_numbers[:, :width],
      mask=sub.mask[:, :width],
    )
    out = force_field(sub)
    forces[need, :width] = np.asarray(out.forces, np.float64)
    stress[need] = np.asarray(out.stress, np.float64)
    energy[need] = np.asarray(out.energy, np.float64)
    overflow[need] = np.asarray(out.overflow, bool)
  return ForceFieldOutput(forces=forces, stress=stress, energy=energy, overflow=overflow)
