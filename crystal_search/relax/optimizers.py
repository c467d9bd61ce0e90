"""Update rules of one relaxation step (pure JAX, per structure in a batch): the paper's
damped dynamics (VASP IBRION=3) and FIRE (ASE's step rule); see :mod:`crystal_search.relax`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from crystal_search.relax.config import DynamicsParams
from crystal_search.relax.state import RelaxState
from crystal_search.units import EV_PER_A3_TO_KBAR

#: FIRE constants, ASE's defaults (:class:`ase.optimize.FIRE`): steps with ``P > 0`` before
#: ``dt`` grows, its growth and shrink factors, the initial mixing ``a`` and its decay.
FIRE_N_MIN, FIRE_F_INC, FIRE_F_DEC, FIRE_A_START, FIRE_F_A = 5, 1.1, 0.5, 0.1, 0.99


def _shrink(x: jax.Array, size: jax.Array, limit: float) -> jax.Array:
  """``x [B, ...]`` scaled down per structure so that its ``size [B]`` is at most ``limit``."""
  return x * jnp.minimum(1.0, limit / jnp.maximum(size, 1e-30))[:, None, None]


def _damped_update(state: RelaxState, params: DynamicsParams):
  """Damped dynamics: ``(v [B, N, 3] Å, w [B, 3, 3])``, the capped ion and strain steps."""
  mu = params.smass
  mask = state.crystals.mask[..., None]
  a_ion = params.potim * params.ion_step_per_potim
  v = ((1 - mu / 2) * state.velocity + 2 * a_ion * state.forces) / (1 + mu / 2)
  v = jnp.where(mask, v, 0.0)
  v = _shrink(v, jnp.max(jnp.linalg.norm(v, axis=-1), axis=-1), params.max_displacement)

  if params.relax_cell:
    a_cell = params.potim * params.cell_step_per_potim
    w = ((1 - mu / 2) * state.cell_velocity - 2 * a_cell * state.stress) / (1 + mu / 2)
    w = 0.5 * (w + jnp.swapaxes(w, -1, -2))
    w = _shrink(w, jnp.max(jnp.abs(w), axis=(-1, -2)), params.max_strain)
  else:
    w = jnp.zeros_like(state.cell_velocity)
  return v, w


def _fire_update(state: RelaxState, params: DynamicsParams):
  """FIRE (ASE's step rule) over ion positions and cell strain; see the module docstring.

  Returns ``(v, w, step, strain, (dt, alpha, positive))``: the new velocities, the ion step
  ``[B, N, 3]`` Å, the strain step ``[B, 3, 3]`` and the new per-structure FIRE scalars.
  """
  c = state.crystals
  mask = c.mask[..., None]
  f_ion = jnp.where(mask, state.forces, 0.0)
  n = jnp.maximum(c.n_atoms, 1).astype(f_ion.dtype)[:, None, None]
  if params.relax_cell:
    volume = jnp.abs(jnp.linalg.det(c.lattice))[:, None, None]
    sigma = 0.5 * (state.stress + jnp.swapaxes(state.stress, -1, -2)) / EV_PER_A3_TO_KBAR
    f_cell = -volume * sigma / n  # eV/Å on the strain coordinates u = N eps
  else:
    f_cell = jnp.zeros_like(state.cell_velocity)

  def dot(a_ion, a_cell, b_ion, b_cell):
    return jnp.sum(a_ion * b_ion, axis=(-1, -2)) + jnp.sum(a_cell * b_cell, axis=(-1, -2))

  # ASE's first step (no velocity yet) starts from the settings and neither mixes nor resets.
  first = state.step == 0
  v_ion, v_cell = state.velocity, state.cell_velocity
  dt = jnp.where(first, params.fire_dt, state.fire_dt)
  alpha = jnp.where(first, FIRE_A_START, state.fire_alpha)
  positive = jnp.where(first, 0, state.fire_positive)
  p = dot(f_ion, f_cell, v_ion, v_cell)
  f_norm = jnp.sqrt(jnp.maximum(dot(f_ion, f_cell, f_ion, f_cell), 1e-30))
  v_norm = jnp.sqrt(dot(v_ion, v_cell, v_ion, v_cell))
  uphill = (p <= 0) & ~first
  downhill = (p > 0) & ~first
  mix = (alpha * v_norm / f_norm)[:, None, None]
  keep = (1 - alpha)[:, None, None]
  d3, u3 = downhill[:, None, None], uphill[:, None, None]
  v_ion = jnp.where(d3, keep * v_ion + mix * f_ion, jnp.where(u3, 0.0, v_ion))
  v_cell = jnp.where(d3, keep * v_cell + mix * f_cell, jnp.where(u3, 0.0, v_cell))
  grow = downhill & (positive > FIRE_N_MIN)
  new_dt = jnp.where(grow, jnp.minimum(dt * FIRE_F_INC, params.fire_dt_max), dt)
  new_dt = jnp.where(uphill, dt * FIRE_F_DEC, new_dt)
  new_alpha = jnp.where(grow, alpha * FIRE_F_A, alpha)
  new_alpha = jnp.where(uphill, FIRE_A_START, new_alpha)
  new_positive = jnp.where(downhill, positive + 1, jnp.where(uphill, 0, positive))

  t3 = new_dt[:, None, None]
  v_ion = v_ion + t3 * f_ion
  v_cell = v_cell + t3 * f_cell
  step_ion, step_cell = t3 * v_ion, t3 * v_cell
  norm = jnp.sqrt(dot(step_ion, step_cell, step_ion, step_cell))
  step_ion = _shrink(step_ion, norm, params.fire_max_step)
  step_cell = _shrink(step_cell, norm, params.fire_max_step)
  # The safety caps shared with damped dynamics (scale the step, keep FIRE's velocity).
  step_ion = _shrink(
    step_ion, jnp.max(jnp.linalg.norm(step_ion, axis=-1), axis=-1), params.max_displacement
  )
  strain = step_cell / n
  strain = _shrink(strain, jnp.max(jnp.abs(strain), axis=(-1, -2)), params.max_strain)
  return v_ion, v_cell, step_ion, strain, (new_dt, new_alpha, new_positive.astype(jnp.int32))


def generalised_forces(state: RelaxState, params: DynamicsParams) -> tuple[jax.Array, jax.Array]:
  """``(f_ion [B, N, 3], f_cell [B, 3, 3])`` eV/Å: the atoms' forces (zero on padding) and the
  force on the strain coordinates ``u = N eps`` of ASE's cell filters, ``-V sigma / N``
  (zero without ``relax_cell``)."""
  c = state.crystals
  f_ion = jnp.where(c.mask[..., None], state.forces, 0.0)
  if not params.relax_cell:
    return f_ion, jnp.zeros_like(state.cell_velocity)
  n = jnp.maximum(c.n_atoms, 1).astype(f_ion.dtype)[:, None, None]
  volume = jnp.abs(jnp.linalg.det(c.lattice))[:, None, None]
  sigma = 0.5 * (state.stress + jnp.swapaxes(state.stress, -1, -2)) / EV_PER_A3_TO_KBAR
  return f_ion, -volume * sigma / n


def _lbfgs_update(state: RelaxState, params: DynamicsParams):
  """L-BFGS (ASE's :class:`ase.optimize.LBFGS` step rule, no line search) over the generalised
  coordinates ``x = [atoms (Å), u = N eps]`` of :func:`generalised_forces`.

  With ``g = -f``, the stored pairs ``s_k`` (steps) and ``y_k`` (gradient changes) and the
  initial inverse Hessian ``I / alpha`` (with ``lbfgs_scaling``: ``(s.y / y.y) I`` of the newest
  pair, Nocedal & Wright eq. 7.20), the two-loop recursion gives ``z ~ H^-1 g`` and the
  step ``-z``, scaled so that its longest row (an atom's step, or a row of the strain
  coordinates) is at most ``lbfgs_max_step`` Å.  A pair with ``y . s <= 0`` (negative curvature,
  which ASE would keep) is not stored.  Returns ``(s_ion, s_cell, step_ion, strain, lbfgs)``:
  the applied step in generalised coordinates (kept for the next pair), the ion step
  ``[B, N, 3]`` Å and strain step ``[B, 3, 3]``, and the new ``(s, y, rho, force)`` history.
  """
  c = state.crystals
  b, n = c.positions.shape[:2]
  f_ion, f_cell = generalised_forces(state, params)
  f = jnp.concatenate([f_ion.reshape(b, 3 * n), f_cell.reshape(b, 9)], axis=1)  # [B, D]
  hist_s, hist_y, rho = state.lbfgs_s, state.lbfgs_y, state.lbfgs_rho
  if hist_s.shape[1]:
    # The pair of the last step: s (the step applied, kept in velocity/cell_velocity), y = -df.
    s_new = jnp.concatenate(
      [state.velocity.reshape(b, 3 * n), state.cell_velocity.reshape(b, 9)], 1
    )
    y_new = state.lbfgs_force - f
    ys = jnp.sum(y_new * s_new, axis=1)
    keep = (state.step > 0) & (ys > 1e-12)
    rho_new = jnp.where(keep, 1.0 / jnp.where(keep, ys, 1.0), 0.0)
    k3 = keep[:, None, None]
    hist_s = jnp.where(k3, jnp.concatenate([hist_s[:, 1:], s_new[:, None]], axis=1), hist_s)
    hist_y = jnp.where(k3, jnp.concatenate([hist_y[:, 1:], y_new[:, None]], axis=1), hist_y)
    rho = jnp.where(keep[:, None], jnp.concatenate([rho[:, 1:], rho_new[:, None]], axis=1), rho)
    first = state.step == 0  # a new structure in a reused slot starts without history
    hist_s = jnp.where(first[:, None, None], 0.0, hist_s)
    hist_y = jnp.where(first[:, None, None], 0.0, hist_y)
    rho = jnp.where(first[:, None], 0.0, rho)
  m = hist_s.shape[1]

  def backward(j, carry):  # newest to oldest
    q, a = carry
    k = m - 1 - j
    a_k = rho[:, k] * jnp.sum(hist_s[:, k] * q, axis=1)
    return q - a_k[:, None] * hist_y[:, k], a.at[:, k].set(a_k)

  def forward(k, z):  # oldest to newest
    b_k = rho[:, k] * jnp.sum(hist_y[:, k] * z, axis=1)
    return z + hist_s[:, k] * (a[:, k] - b_k)[:, None]

  q, a = jax.lax.fori_loop(0, m, backward, (-f, jnp.zeros((b, m), f.dtype)))
  h0 = jnp.full((b,), 1.0 / params.lbfgs_alpha, f.dtype)
  if params.lbfgs_scaling and m:  # Nocedal & Wright's H0 = s.y / y.y of the newest pair
    yy = jnp.sum(hist_y[:, -1] * hist_y[:, -1], axis=1)
    has = rho[:, -1] > 0
    h0 = jnp.where(has, 1.0 / jnp.where(has, rho[:, -1] * yy, 1.0), h0)
  z = jax.lax.fori_loop(0, m, forward, q * h0[:, None])
  step = -z
  rows = jnp.concatenate([step[:, : 3 * n].reshape(b, n, 3), step[:, 3 * n :].reshape(b, 3, 3)], 1)
  longest = jnp.max(jnp.linalg.norm(rows, axis=-1), axis=-1)
  scale = jnp.where(longest >= params.lbfgs_max_step, params.lbfgs_max_step / longest, 1.0)
  step = step * scale[:, None]
  step_ion = step[:, : 3 * n].reshape(b, n, 3)
  step_cell = step[:, 3 * n :].reshape(b, 3, 3)
  if not params.relax_cell:
    step_cell = jnp.zeros_like(step_cell)
  # The safety caps shared with the other optimizers; the pair stores the step as applied.
  step_ion = _shrink(
    step_ion, jnp.max(jnp.linalg.norm(step_ion, axis=-1), axis=-1), params.max_displacement
  )
  count = jnp.maximum(c.n_atoms, 1).astype(f.dtype)[:, None, None]
  strain = _shrink(
    step_cell / count, jnp.max(jnp.abs(step_cell / count), axis=(-1, -2)), params.max_strain
  )
  return step_ion, strain * count, step_ion, strain, (hist_s, hist_y, rho, f)
