r"""Batched relaxation of atomic positions and cell by VASP-style damped dynamics.

The paper's teacher relaxed with VASP ``IBRION=3, SMASS=2, POTIM=0.4, ISIF=3``.
VASP's ``IBRION=3`` integrates the damped second-order equation of motion
``x'' = 2 alpha F - mu x'`` (``F`` the force, ``mu = SMASS``, ``alpha`` set by
``POTIM``) with a velocity-Verlet step::

  v_{n+1/2} = ((1 - mu/2) v_{n-1/2} + 2 alpha F_n) / (1 + mu/2)
  x_{n+1}   = x_n + v_{n+1/2}

``mu = 2`` (the paper's setting) is critical damping: the velocity memory
vanishes and the step is plain steepest descent ``x_{n+1} = x_n + alpha F_n``
(no line search); ``mu = 0`` is undamped.  VASP does not document the absolute
scale of ``alpha`` per unit of ``POTIM``; here it is explicit and configurable:

**Ions** (Cartesian, per atom): ``F`` = force in eV/Å, ``v`` in Å,
``alpha_ion = potim * ion_step_per_potim`` in Å²/eV (default
``0.4 * 0.25 = 0.1`` Å²/eV, a step measured stable for CHGNet on Li–Si cells).

**Cell** (``ISIF=3``): the generalised force on the cell is minus the stress,
``-sigma`` in kBar (``sigma = (1/V) dE/d(strain)``, tensile positive, see
:mod:`crystal_search.units`), and the cell "velocity" ``w`` is a symmetric,
dimensionless strain step::

  w_{n+1/2} = ((1 - mu/2) w_{n-1/2} - 2 alpha_cell sigma_n) / (1 + mu/2)
  L_{n+1}   = L_n (I + w_{n+1/2})                 (lattice vectors as rows, Å)

with ``alpha_cell = potim * cell_step_per_potim`` in 1/kBar (default
``0.4 * 1e-3``).  A tensile stress shrinks the cell, a compressive one grows it,
and the energy change to first order is ``-V alpha_cell |sigma|^2 < 0``.

The two updates are applied together: Cartesian ion displacements ``v`` are
taken in the old cell and atoms then follow the cell deformation (fractional
coordinates ``s_{n+1} = s_n + v L_n^{-1}``), as ASE's cell filters do.
Two safety caps (not in VASP; set them large to switch them off) keep a wild
first step from destroying a random structure: the largest atomic displacement
of a structure is scaled down to ``max_displacement`` Å and the largest strain
component to ``max_strain`` (the velocity is scaled with the step, so the
dynamics stays consistent).

**FIRE** (``optimizer="fire"``, not in the paper): the fast inertial relaxation engine
(Bitzek et al., PRL 97, 170201 (2006)) exactly as ASE's :class:`ase.optimize.FIRE` steps it
(the optimiser of CHGNet's ``StructOptimizer``), per structure, over the atoms' Cartesian
positions and, with ``relax_cell``, the cell's strain in the coordinates of ASE's cell
filters: ``u = N eps`` (Å-like, ``N`` atoms, ``eps`` the symmetric strain) with generalised
force ``-V sigma / N`` (eV/Å; ``V`` in Å^3, ``sigma`` in eV/Å^3).  With ``P = F . v`` over
all coordinates of a structure: ``P > 0`` mixes ``v <- (1 - a) v + a |v| F/|F|`` and, after
more than ``N_min = 5`` such steps in a row, ``dt <- min(1.1 dt, fire_dt_max)``, ``a <- 0.99
a``; ``P <= 0`` sets ``v = 0``, ``a = 0.1``, ``dt <- dt / 2``.  Then ``v += dt F`` and the
step is ``dt v``, scaled down to a norm of at most ``fire_max_step`` Å over all coordinates.
Cell steps apply as ``L <- L (I + eps)`` with atoms following the cell, as above.  The
safety caps and failure checks are the same for both optimisers.

Convergence is per structure: ``max_i |F_i| < fmax`` (eV/Å) and
``max_ab |sigma_ab| < smax`` (kBar).  A converged structure stops moving while
the others go on; ``max_steps`` bounds the number of position updates.

Failures are detected per structure after each step and the structure is
frozen at its last good configuration with a reason (the rest of the batch
goes on unaffected): ``"nan"`` (non-finite force, stress, energy or geometry),
``"volume"`` (volume outside ``[min_volume_ratio, max_volume_ratio]`` times the
initial one), ``"overlap"`` (two atoms closer than ``overlap_fraction`` times
the sum of their covalent radii, :data:`ase.data.covalent_radii`, or than
``min_distance`` Å whichever is larger: with the default 0.5, 1.20 Å for Li–Si,
1.28 Å for Li–Li, 1.11 Å for Si–Si, where real Li–Si crystals have no contact
below 2.3 Å and random starts none below 2.28 Å) and ``"cell_collapse"`` (a
distance between opposite cell faces below ``min_cell_height`` Å).  The overlap
test is a dense ``N x N`` computation over the 27 images next to the wrapped
fractional difference (exact for pairs closer than the smallest cell height).

Layout: ``damped_dynamics(force_field, ...)`` returns a jax-md style
``(init_fn, apply_fn)`` pair over a :class:`RelaxState`.  A jittable force
field runs inside one jit-compiled ``lax.while_loop``; a host force field
(CHGNet, LAMMPS, any ASE calculator) runs in a Python loop that calls the same
jit-compiled :func:`move` and :func:`observe` functions.  The host API is
:func:`relax_structures`: atom-count buckets, batch size from a memory budget,
in-flight batching (finished slots refilled between fixed-length chunks of the
while loop: same shapes, no recompilation), compaction (once the queue is empty,
the unfinished structures move into the smallest power-of-two batch that holds
them, so the tail of slow relaxations does not pay for a full batch of finished
slots; each size compiles once), overflow retry with ``force_field.grow()``,
sharding over all local devices, trajectories.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from ase.data import covalent_radii
from flax import struct
from pymatgen.core import Lattice, Structure

from crystal_search import crystals as crystals_lib
from crystal_search.crystals import Crystals, cell_heights
from crystal_search.errors import InputError
from crystal_search.force_fields.base import ForceFieldOutput
from crystal_search.units import EV_PER_A3_TO_KBAR

#: Failure codes (index) and their reason strings; 0 means no failure.
FAILURE_REASONS: tuple[str | None, ...] = (None, "nan", "volume", "overlap", "cell_collapse")
_NAN, _VOLUME, _OVERLAP, _COLLAPSE = 1, 2, 3, 4

#: The update rules of :func:`move` (``optimizer`` setting).
OPTIMIZERS = ("damped", "fire")
#: FIRE constants, ASE's defaults (:class:`ase.optimize.FIRE`): steps with ``P > 0`` before
#: ``dt`` grows, its growth and shrink factors, the initial mixing ``a`` and its decay.
FIRE_N_MIN, FIRE_F_INC, FIRE_F_DEC, FIRE_A_START, FIRE_F_A = 5, 1.1, 0.5, 0.1, 0.99


# ----------------------------------------------------------------------------
# Configuration.


def get_relax_config() -> ml_collections.ConfigDict:
  """Default relaxation settings (the paper's teacher: IBRION=3, SMASS=2, POTIM=0.4, ISIF=3).

  Fields (units):
    optimizer: ``"damped"`` (VASP IBRION=3 damped dynamics, the paper's teacher) or
      ``"fire"`` (ASE's FIRE over positions and cell strain; see the module docstring).
    potim: VASP POTIM, step scale (dimensionless; see the module docstring).
    smass: VASP SMASS, damping ``mu`` in [0, 2] (2 = steepest descent).
    ion_step_per_potim: Å²/eV, ion step ``alpha_ion = potim * ion_step_per_potim``.
    cell_step_per_potim: 1/kBar, cell step ``alpha_cell = potim * cell_step_per_potim``.
    relax_cell: move the cell (ISIF=3) or only the ions (ISIF=2).
    fire_dt: FIRE's initial time step, Å/sqrt(eV) (a step is ``dt^2 F``; ASE's default 0.1).
    fire_dt_max: FIRE's largest time step, Å/sqrt(eV) (ASE's default 1.0).
    fire_max_step: Å, FIRE's cap on the norm of one step over all coordinates of a
      structure (ASE's ``maxstep``, default 0.2).
    fmax: eV/Å, convergence on the largest atomic force norm.
    smax: kBar, convergence on the largest stress component (ignored without relax_cell).
    max_steps: largest number of position updates per structure.
    trajectory_every: keep every k-th step (0: no trajectory; 1: every step).
    max_displacement: Å, cap on one step's largest atomic displacement.
    max_strain: cap on one step's largest strain component.
    min_distance: Å, two atoms closer than this fail the structure ("overlap").
    overlap_fraction: two atoms closer than this times the sum of their covalent radii
      (``ase.data.covalent_radii``, Å) fail it too ("overlap"; 0: only ``min_distance``).
    min_cell_height: Å, a face-to-face cell width below this fails it ("cell_collapse").
    min_volume_ratio, max_volume_ratio: volume bounds relative to the initial volume.
    chunk_steps: steps per jit-compiled chunk between in-flight slot refills.
    in_flight: refill finished slots from the queue (False: one batch runs to the end).
    compact: once the queue is empty and the unfinished structures fit in a smaller
      power-of-two batch (times the device count), move them into the smallest that holds
      them, so finished slots stop costing force evaluations (jittable force fields; each
      new size compiles once per process, or loads from the compilation cache).
    memory_budget_mb: MB per batch used to choose the batch size.
    max_batch_size: upper bound on the batch size.
    max_retries: force-field capacity growths allowed per chunk (overflow).
  """
  c = ml_collections.ConfigDict()
  c.optimizer = "damped"
  c.potim = 0.4
  c.smass = 2.0
  c.ion_step_per_potim = 0.25
  c.cell_step_per_potim = 1e-3
  c.relax_cell = True
  c.fire_dt = 0.1
  c.fire_dt_max = 1.0
  c.fire_max_step = 0.2
  c.fmax = 0.05
  c.smax = 5.0
  c.max_steps = 300
  c.trajectory_every = 0
  c.max_displacement = 0.2
  c.max_strain = 0.05
  c.min_distance = 0.5
  c.overlap_fraction = 0.5
  c.min_cell_height = 1.0
  c.min_volume_ratio = 0.3
  c.max_volume_ratio = 3.0
  c.chunk_steps = 25
  c.in_flight = True
  c.compact = True
  c.memory_budget_mb = 1024
  c.max_batch_size = 256
  c.max_retries = 8
  return c


def validate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Check a relaxation config; raise :class:`InputError` naming the bad field."""
  c = config

  def need(ok: bool, field: str, rule: str) -> None:
    if not ok:
      raise InputError(f"relax config: {field}={c[field]!r} must be {rule}")

  for field in (
    "potim",
    "ion_step_per_potim",
    "cell_step_per_potim",
    "fmax",
    "smax",
    "max_displacement",
    "max_strain",
    "min_volume_ratio",
    "memory_budget_mb",
    "fire_dt",
    "fire_dt_max",
    "fire_max_step",
  ):
    need(_finite(c[field]) and c[field] > 0, field, "a positive number")
  need(c.optimizer in OPTIMIZERS, "optimizer", " or ".join(repr(o) for o in OPTIMIZERS))
  need(c.fire_dt <= c.fire_dt_max, "fire_dt", f"<= fire_dt_max = {c.fire_dt_max}")
  need(_finite(c.smass) and 0.0 <= c.smass <= 2.0, "smass", "in [0, 2] (2 = steepest descent)")
  for field in ("max_steps", "chunk_steps", "max_batch_size"):
    need(_is_int(c[field]) and c[field] >= 1, field, "an integer >= 1")
  need(_is_int(c.trajectory_every) and c.trajectory_every >= 0, "trajectory_every", ">= 0")
  need(_is_int(c.max_retries) and c.max_retries >= 0, "max_retries", "an integer >= 0")
  need(_finite(c.min_distance) and c.min_distance >= 0, "min_distance", ">= 0")
  need(
    _finite(c.overlap_fraction) and 0 <= c.overlap_fraction < 1,
    "overlap_fraction",
    "in [0, 1) (a fraction of the sum of two covalent radii)",
  )
  need(
    _finite(c.min_cell_height) and c.min_cell_height >= 2 * c.min_distance,
    "min_cell_height",
    f">= 2 * min_distance = {2 * c.min_distance}",
  )
  need(
    _finite(c.max_volume_ratio) and c.max_volume_ratio > max(1.0, c.min_volume_ratio),
    "max_volume_ratio",
    "> 1 and > min_volume_ratio",
  )
  need(c.min_volume_ratio < 1.0, "min_volume_ratio", "< 1")
  return c


def _finite(x) -> bool:
  return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def make_config(config: ml_collections.ConfigDict | dict | None = None, **overrides):
  """Defaults updated by ``config`` then ``overrides``; validated.  Unknown keys -> InputError."""
  c = get_relax_config()
  updates = dict(config or {})
  updates.update(overrides)
  for key, value in updates.items():
    if key not in c:
      raise InputError(f"relax config: unknown field {key!r} (known: {', '.join(sorted(c))})")
    default = c[key]
    if isinstance(default, float) and _is_int(value):
      value = float(value)
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
      if not value.is_integer():
        raise InputError(f"relax config: {key}={value!r} must be an integer")
      value = int(value)
    if type(value) is not type(default):
      raise InputError(f"relax config: {key}={value!r} must be a {type(default).__name__}")
    c[key] = value
  return validate_config(c)


@dataclasses.dataclass(frozen=True)
class DynamicsParams:
  """Static (hashable) parameters of the update rule; see :func:`get_relax_config`."""

  optimizer: str = "damped"
  potim: float = 0.4
  smass: float = 2.0
  ion_step_per_potim: float = 0.25
  cell_step_per_potim: float = 1e-3
  relax_cell: bool = True
  fire_dt: float = 0.1
  fire_dt_max: float = 1.0
  fire_max_step: float = 0.2
  fmax: float = 0.05
  smax: float = 5.0
  max_steps: int = 300
  max_displacement: float = 0.2
  max_strain: float = 0.05
  min_distance: float = 0.5
  overlap_fraction: float = 0.5
  min_cell_height: float = 1.0
  min_volume_ratio: float = 0.3
  max_volume_ratio: float = 3.0

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> DynamicsParams:
    return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls)})


# ----------------------------------------------------------------------------
# State and the update rule.


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


def fresh_state(crystals: Crystals) -> RelaxState:
  """A state for new structures whose forces are not yet computed (numpy arrays).

  The first :func:`observe` (or ``init_fn``) evaluates them at step 0.  FIRE's scalars are
  set at a structure's first update (step 0) from the settings.
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
  )


def active(state: RelaxState, params: DynamicsParams) -> jax.Array:
  """``[B]`` bool: structures that take another step."""
  real = state.crystals.n_atoms > 0
  return real & ~state.converged & ~state.failed & ~state.fresh & (state.step < params.max_steps)


def move(state: RelaxState, params: DynamicsParams) -> RelaxState:
  """One update of positions and cell of every active structure (``params.optimizer``).

  Inactive structures (converged, failed, at ``max_steps``, fresh, padding) keep
  their positions, lattice and optimiser state.  Forces are not recomputed here.
  """
  go = active(state, params)
  c = state.crystals
  if params.optimizer == "fire":
    v, w, step, strain, fire = _fire_update(state, params)
  else:
    v, w = _damped_update(state, params)
    step, strain, fire = v, w, (state.fire_dt, state.fire_alpha, state.fire_positive)

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
    previous_positions=jnp.where(g3, c.positions, state.previous_positions),
    previous_lattice=jnp.where(g3, c.lattice, state.previous_lattice),
    moving=go,
  )


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


#: Å, covalent radius by atomic number (``ase.data.covalent_radii``; index 0 unused).
_COVALENT_RADII = np.asarray(covalent_radii, np.float32)
_IMAGE_SHIFTS = np.array(
  [(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], np.float32
)


def pair_distances(crystals: Crystals, *, all_images: bool = True) -> jax.Array:
  """``[B, N, N]`` Å: distance between atoms i and j, ``inf`` on the diagonal and for padding.

  The wrapped fractional difference (in ``[-0.5, 0.5)``) is the closest image for every pair
  closer than half the cell's smallest face-to-face height; with ``all_images`` the 27 images
  next to it are searched too (27 times the work), exact below the smallest cell height.
  """
  f = crystals.positions
  df = f[:, None, :, :] - f[:, :, None, :]
  df = df - jnp.round(df)
  shifts = _IMAGE_SHIFTS if all_images else np.zeros((1, 3), np.float32)
  r2 = jnp.full(df.shape[:-1], jnp.inf, df.dtype)
  for shift in shifts:  # fused N x N passes, no [B, N, N, 27, 3] array
    d = jnp.einsum("bijk,bkl->bijl", df + shift, crystals.lattice)
    r2 = jnp.minimum(r2, jnp.sum(d * d, axis=-1))
  n = crystals.max_atoms
  pair = crystals.mask[:, :, None] & crystals.mask[:, None, :] & ~jnp.eye(n, dtype=bool)
  return jnp.sqrt(jnp.where(pair, r2, jnp.inf))


def overlap_ratio(
  crystals: Crystals, *, min_distance: float = 0.5, overlap_fraction: float = 0.5
) -> jax.Array:
  """``[B]``: smallest ratio of a pair distance to its overlap threshold ``max(min_distance,
  overlap_fraction * (r_i + r_j))`` (covalent radii ``r``, Å); below 1 is an overlap.

  Jittable.  The 27-image search of :func:`pair_distances` runs (``lax.cond``) only when some
  cell of the batch is thinner than twice the batch's largest threshold; otherwise the
  wrapped difference is exact for every pair that could overlap.
  """
  radii = jnp.asarray(_COVALENT_RADII, crystals.positions.dtype)[crystals.atomic_numbers]
  radii = jnp.where(crystals.mask, radii, 0.0)
  threshold = jnp.maximum(overlap_fraction * (radii[:, :, None] + radii[:, None, :]), min_distance)
  threshold = jnp.maximum(threshold, 1e-12)  # min_distance = overlap_fraction = 0: never
  real = crystals.n_atoms > 0
  heights = jnp.where(real, jnp.min(cell_heights(crystals.lattice), axis=-1), jnp.inf)
  thin = jnp.any(heights < 2 * jnp.max(threshold))
  distances = jax.lax.cond(
    thin,
    lambda c: pair_distances(c, all_images=True),
    lambda c: pair_distances(c, all_images=False),
    crystals,
  )
  return jnp.min(distances / threshold, axis=(-1, -2))


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
  overflow = overflow & update
  take = update & ~overflow

  finite = (
    jnp.all(jnp.isfinite(forces), axis=(-1, -2))
    & jnp.all(jnp.isfinite(stress), axis=(-1, -2))
    & ~jnp.isinf(energy)
    & jnp.all(jnp.isfinite(jnp.where(c.mask[..., None], c.positions, 0.0)), axis=(-1, -2))
    & jnp.all(jnp.isfinite(c.lattice), axis=(-1, -2))
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
  code = jnp.where(
    ~finite,
    _NAN,
    jnp.where(
      collapsed, _COLLAPSE, jnp.where(bad_volume, _VOLUME, jnp.where(overlap, _OVERLAP, 0))
    ),
  ).astype(jnp.int32)
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
      return observe_fn(fresh_state(crystals), output, params)

    def apply_fn(state: RelaxState, force_fn: Callable) -> RelaxState:
      state = move_fn(state, params)
      return observe_fn(state, force_fn(state.crystals), params)

    return init_fn, apply_fn

  if getattr(force_field, "jittable", False):

    def init_fn(crystals: Crystals) -> RelaxState:
      return observe(fresh_state(crystals), force_field(crystals), params)

    def apply_fn(state: RelaxState) -> RelaxState:
      state = move(state, params)
      return observe(state, force_field(state.crystals), params)

    return init_fn, apply_fn

  def host_init(crystals: Crystals) -> RelaxState:
    state = fresh_state(crystals)
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


# ----------------------------------------------------------------------------
# Trajectories.


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


# ----------------------------------------------------------------------------
# Chunked drivers (jit while_loop for jittable force fields, Python loop for host ones).


def _chunk_fn(force_field, params: DynamicsParams, chunk_steps: int, every: int):
  """``(state, traj) -> (state, traj, iterations)``: up to ``chunk_steps`` steps in one jit."""

  def step(state, traj):
    moved = move(state, params)
    after = observe(moved, force_field(moved.crystals), params)
    if every:
      traj = record(traj, after, _written(moved, after), every)
    return after, traj

  def run(state, traj):
    def cond(carry):
      s, _, it = carry
      busy = jnp.any(active(s, params) | s.fresh)
      return (it < chunk_steps) & busy & ~jnp.any(s.overflow)

    def body(carry):
      s, tr, it = carry
      s, tr = step(s, tr)
      return s, tr, it + 1

    return jax.lax.while_loop(cond, body, (state, traj, jnp.int32(0)))

  return jax.jit(run)


_RUNNER_CACHE: dict = {}
_RUNNER_CACHE_SIZE = 32


def _make_runner(force_field, params: DynamicsParams, chunk: int, every: int):
  """A chunk runner, shared between calls when the force field is hashable (no recompiles)."""
  make = _chunk_fn if getattr(force_field, "jittable", False) else _HostChunk
  try:
    key = (force_field, params, chunk, every)
    hash(key)
  except TypeError:  # e.g. a model holding its weights: cache by identity (kept alive below).
    key = (("id", id(force_field)), params, chunk, every)
  if key not in _RUNNER_CACHE:
    if len(_RUNNER_CACHE) >= _RUNNER_CACHE_SIZE:
      _RUNNER_CACHE.pop(next(iter(_RUNNER_CACHE)))
    _RUNNER_CACHE[key] = (make(force_field, params, chunk, every), force_field)
  return _RUNNER_CACHE[key][0]


class _HostChunk:
  """Python-loop twin of :func:`_chunk_fn` for host force fields (same jitted update)."""

  def __init__(self, force_field, params: DynamicsParams, chunk_steps: int, every: int):
    self.force_field = force_field
    self.params = params
    self.chunk_steps = chunk_steps
    self.every = every
    self.move = jax.jit(move, static_argnums=1)
    self.observe = jax.jit(observe, static_argnums=2)
    self.record = jax.jit(record, static_argnums=3)

  def _cache_size(self) -> int:
    return self.move._cache_size() + self.observe._cache_size() + self.record._cache_size()

  def __call__(self, state, traj):
    it = 0
    state = jax.tree_util.tree_map(jnp.asarray, state)
    while it < self.chunk_steps:
      if not bool(np.any(np.asarray(active(state, self.params) | state.fresh))):
        break
      if bool(np.any(np.asarray(state.overflow))):
        break
      moved = self.move(state, self.params)
      out = _host_eval(self.force_field, moved)
      after = self.observe(moved, out, self.params)
      if self.every:
        traj = self.record(traj, after, _written(moved, after), self.every)
      state = after
      it += 1
    return state, traj, it


# ----------------------------------------------------------------------------
# Results and the host API.


@dataclasses.dataclass
class RelaxResult:
  """One relaxed structure.

  Attributes:
    final: the relaxed structure (for a failed one: its last good configuration).
    converged: reached ``fmax``/``smax``.
    failed: stopped by a failure (see ``failure_reason``).
    failure_reason: ``"nan" | "volume" | "overlap" | "cell_collapse"`` or None.
    steps: position updates done.
    energy: eV per cell at ``final`` (NaN if the force field gives none).
    forces: ``[n, 3]`` eV/Å at ``final``.
    stress: ``[3, 3]`` kBar at ``final``.
    trajectory: None, or kept steps: ``positions [T, n, 3]`` fractional,
      ``lattice [T, 3, 3]`` Å, ``forces [T, n, 3]`` eV/Å, ``stress [T, 3, 3]``
      kBar, ``energy [T]`` eV, ``step [T]`` int.
  """

  final: Structure
  converged: bool
  failed: bool
  failure_reason: str | None
  steps: int
  energy: float
  forces: np.ndarray
  stress: np.ndarray
  trajectory: dict[str, np.ndarray] | None = None

  @property
  def max_force(self) -> float:
    """eV/Å, largest atomic force norm at ``final``."""
    return float(np.max(np.linalg.norm(self.forces, axis=-1))) if len(self.forces) else 0.0

  @property
  def max_stress(self) -> float:
    """kBar, largest absolute stress component at ``final``."""
    return float(np.max(np.abs(self.stress)))


def bytes_per_structure(n_atoms: int, force_field, *, trajectory_frames: int = 0) -> int:
  """Estimated memory of one structure slot of ``n_atoms`` atom slots (bytes).

  The force field's share is ``force_field.bytes_per_structure(n_atoms)`` when it
  defines one; otherwise ``edges * EDGE_BYTES`` with ``edges`` its ``capacity``
  attribute (neighbour edges per structure, as in ``ModelForceField``), or
  ``n_atoms * max_neighbors`` (default 64 neighbours per atom).  The relaxation
  state (~8 ``[N, 3]`` arrays) and the trajectory buffers (``[T, N, 3]`` positions
  and forces, float32) are added.
  """
  fn = getattr(force_field, "bytes_per_structure", None)
  if callable(fn):
    model = int(fn(n_atoms))
  else:
    edges = getattr(force_field, "capacity", None)
    if not isinstance(edges, int) or edges <= 0:
      edges = int(n_atoms) * int(getattr(force_field, "max_neighbors", 64))
    model = int(edges) * EDGE_BYTES
  state = (8 * n_atoms * 3 + 8 * 9) * 4
  traj = trajectory_frames * (2 * n_atoms * 3 + 2 * 9 + 1) * 4
  return model + state + traj


#: Working memory per neighbour edge: a width-64 float32 edge state and a few live
#: intermediates of the message-passing block (2 KiB).
EDGE_BYTES = 2048


def choose_batch_size(
  n_atoms: int,
  force_field,
  *,
  memory_budget_mb: float,
  max_batch_size: int,
  trajectory_frames: int = 0,
  num_devices: int = 1,
) -> int:
  """Batch size from a memory budget, at least one per device, a multiple of ``num_devices``."""
  per = bytes_per_structure(n_atoms, force_field, trajectory_frames=trajectory_frames)
  fit = int(memory_budget_mb * 2**20 * num_devices // max(per, 1))
  b = max(1, min(fit, max_batch_size))
  return int(math.ceil(b / num_devices) * num_devices)


def _mesh_sharding(num_devices: int):
  """NamedSharding over a 1-D device mesh on the batch axis, or None on one device."""
  if num_devices <= 1:
    return None
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  mesh = Mesh(np.asarray(jax.local_devices()[:num_devices]), ("batch",))
  return lambda axis, ndim: NamedSharding(
    mesh, PartitionSpec(*([None] * axis + ["batch"] + [None] * (ndim - axis - 1)))
  )


def _load_slots(state, traj, slots: Sequence[int], crystals: Crystals):
  """Put new structures (numpy ``crystals``, one per slot) into numpy ``state``/``traj`` rows."""
  new = fresh_state(crystals)
  idx = np.asarray(slots)
  state = jax.tree_util.tree_map(lambda a, b: _set_rows(a, idx, b), state, new)
  traj = jax.tree_util.tree_map(lambda a: _nan_cols(a, idx), traj)
  return state, traj


def _take_slots(state, traj, slots: Sequence[int]):
  """Numpy ``state``/``traj`` of only the batch rows ``slots``, in that order."""
  idx = np.asarray(slots)
  state = jax.tree_util.tree_map(lambda a: np.asarray(a)[idx], state)
  traj = jax.tree_util.tree_map(lambda a: np.asarray(a)[:, idx], traj)
  return state, traj


def _set_rows(a, idx, b):
  a = np.array(a)
  a[idx] = b
  return a


def _nan_cols(a, idx):
  a = np.array(a)
  a[:, idx] = np.nan
  return a


def _result(state_np, traj_np, slot: int, numbers: np.ndarray, every: int) -> RelaxResult:
  n = len(numbers)
  c = state_np.crystals
  step = int(state_np.step[slot])
  failed = bool(state_np.failed[slot])
  code = int(state_np.failure_code[slot])
  final = Structure(
    Lattice(np.asarray(c.lattice[slot], np.float64)),
    [int(z) for z in numbers],
    np.asarray(c.positions[slot, :n], np.float64) % 1.0,
  )
  trajectory = None
  if every and traj_np is not None:
    t = step // every + 1
    trajectory = {
      "positions": np.asarray(traj_np.positions[:t, slot, :n]),
      "lattice": np.asarray(traj_np.lattice[:t, slot]),
      "forces": np.asarray(traj_np.forces[:t, slot, :n]),
      "stress": np.asarray(traj_np.stress[:t, slot]),
      "energy": np.asarray(traj_np.energy[:t, slot]),
      "step": np.arange(t, dtype=np.int32) * every,
    }
  return RelaxResult(
    final=final,
    converged=bool(state_np.converged[slot]) and not failed,
    failed=failed,
    failure_reason=FAILURE_REASONS[code] if failed else None,
    steps=step,
    energy=float(state_np.energy[slot]),
    forces=np.asarray(state_np.forces[slot, :n], np.float64),
    stress=np.asarray(state_np.stress[slot], np.float64),
    trajectory=trajectory,
  )


def relax_structures(
  structures: Sequence[Structure],
  force_field,
  *,
  config: ml_collections.ConfigDict | dict | None = None,
  batch_size: int | None = None,
  progress: bool = False,
  num_devices: int | None = None,
  stats: dict | None = None,
  **overrides: Any,
) -> list[RelaxResult]:
  """Relax pymatgen structures (positions and cell) with any force field.

  Args:
    structures: the structures (any sizes; bucketed by atom count).
    force_field: a jittable or host force field (see ``force_fields/base.py``).
    config: settings (:func:`get_relax_config` fields); ``overrides`` win over it.
    batch_size: structure slots per batch; default: from ``memory_budget_mb``.
    progress: tqdm bar over finished structures.
    num_devices: local devices to shard the batch over (default: all).
    stats: if given, filled with ``compiles`` (jit compilations in this call), ``chunks``
      (chunk runs), ``retries`` (capacity growths), ``batch_sizes`` (per bucket),
      ``structure_steps`` (force evaluations of real structures), ``slot_steps`` (batch slots
      times loop iterations, padding and finished slots included: the work paid for),
      ``compactions`` (tails moved into a smaller batch) and ``force_field`` (the force field
      after any growth).
    **overrides: e.g. ``potim=0.4, smass=2.0, fmax=0.05, smax=5.0, max_steps=300,
      trajectory_every=1``.

  Returns:
    One :class:`RelaxResult` per input structure, in input order.

  Raises:
    InputError: bad settings, or a structure with an element the force field does not support.
  """
  cfg = make_config(config, **overrides)
  structures = list(structures)
  elements = getattr(force_field, "elements", None)
  for k, s in enumerate(structures):
    if len(s) == 0:
      raise InputError(f"structure {k}: no atoms")
    if elements is not None:
      unknown = sorted({sp.symbol for sp in s.species} - set(elements))
      if unknown:
        raise InputError(
          f"structure {k} ({s.composition.reduced_formula}): element(s) {', '.join(unknown)} "
          f"not supported by {getattr(force_field, 'name', 'the force field')}"
        )
  devices = max(1, min(num_devices or jax.local_device_count(), jax.local_device_count()))
  driver = _Driver(force_field, cfg, devices)
  buckets: dict[int, list[int]] = {}
  for k, s in enumerate(structures):
    buckets.setdefault(crystals_lib.bucket_size(len(s)), []).append(k)
  results: list[RelaxResult | None] = [None] * len(structures)
  bar = None
  if progress:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(structures), desc="relax", unit="structure")
  for width in sorted(buckets):
    order = buckets[width]
    driver.run_bucket(structures, order, width, results, batch_size=batch_size, bar=bar)
  if bar is not None:
    bar.close()
  if stats is not None:
    stats.update(driver.info, force_field=driver.force_field)
  return results  # type: ignore[return-value]


class _Driver:
  """Runs buckets of structures through chunked, in-flight batches (host side)."""

  def __init__(self, force_field, cfg: ml_collections.ConfigDict, devices: int):
    self.force_field = force_field
    self.cfg = cfg
    self.params = DynamicsParams.from_config(cfg)
    self.every = int(cfg.trajectory_every)
    self.frames = self.params.max_steps // self.every + 1 if self.every else 1
    self.devices = devices
    self.sharding = _mesh_sharding(devices)
    self.jittable = bool(getattr(force_field, "jittable", False))
    self.runners: dict = {}
    self.info = {
      "compiles": 0,
      "chunks": 0,
      "retries": 0,
      "batch_sizes": {},
      "structure_steps": 0,
      "slot_steps": 0,
      "compactions": 0,
    }

  def _runner(self, chunk: int):
    key = (id(self.force_field), chunk)
    if key not in self.runners:
      runner = _make_runner(self.force_field, self.params, chunk, self.every)
      # The force field is kept with its runner so that its id() stays unique.
      self.runners[key] = (runner, self.force_field, runner._cache_size())
    return self.runners[key][0]

  def _count_compiles(self) -> None:
    self.info["compiles"] = sum(r._cache_size() - n0 for r, _, n0 in self.runners.values())

  def _put(self, state, traj):
    if self.sharding is None:
      return jax.tree_util.tree_map(jnp.asarray, (state, traj))
    shard = self.sharding
    state = jax.tree_util.tree_map(lambda x: jax.device_put(x, shard(0, np.ndim(x))), state)
    traj = jax.tree_util.tree_map(lambda x: jax.device_put(x, shard(1, np.ndim(x))), traj)
    return state, traj

  def _run_chunk(self, state, traj, chunk: int):
    """One chunk with overflow retry: ``force_field.grow()`` and rerun from the chunk start."""
    for attempt in range(int(self.cfg.max_retries) + 1):
      dev_state, dev_traj = self._put(state, traj)
      dev_state, dev_traj, iterations = self._runner(chunk)(dev_state, dev_traj)
      self.info["chunks"] += 1
      self.info["slot_steps"] += int(iterations) * len(np.asarray(state.step))
      self._count_compiles()
      new_state = jax.tree_util.tree_map(np.asarray, dev_state)
      if not np.any(new_state.overflow):
        return new_state, jax.tree_util.tree_map(np.asarray, dev_traj)
      if attempt < int(self.cfg.max_retries):
        self.info["retries"] += 1
        self.force_field = self.force_field.grow()
    name = getattr(self.force_field, "name", "force field")
    raise RuntimeError(
      f"{name}: neighbour capacity still overflows after {self.cfg.max_retries} growths"
    )

  def run_bucket(self, structures, order, width, results, *, batch_size, bar) -> None:
    cfg, params, every = self.cfg, self.params, self.every
    d = self.devices
    if batch_size is not None:
      b = int(math.ceil(int(batch_size) / d) * d)
    else:
      b = choose_batch_size(
        width,
        self.force_field,
        memory_budget_mb=cfg.memory_budget_mb,
        max_batch_size=cfg.max_batch_size,
        trajectory_frames=self.frames if every else 0,
        num_devices=d,
      )
    b = min(b, int(math.ceil(len(order) / d) * d))
    self.info["batch_sizes"][width] = b
    in_flight = cfg.in_flight and len(order) > b
    compact = bool(cfg.compact) and self.jittable and b > d
    chunk = int(cfg.chunk_steps) if in_flight or compact else params.max_steps + 1
    queue = deque(order)
    slot_of: list[int | None] = [None] * b

    def empty(n):
      return _padding_crystals(n, width)

    state = jax.tree_util.tree_map(np.asarray, fresh_state(empty(b)))
    traj = empty_trajectory(self.frames, b, width)

    def refill(state, traj, free):
      take = []
      while free and queue:
        take.append((free.pop(0), queue.popleft()))
      if take:
        new = crystals_lib.from_structures([structures[k] for _, k in take], max_atoms=width)
        state, traj = _load_slots(state, traj, [s for s, _ in take], new)
        for s, k in take:
          slot_of[s] = k
      return state, traj

    state, traj = refill(state, traj, list(range(b)))
    while any(k is not None for k in slot_of):
      before = np.where(state.fresh, -1, state.step)
      state, traj = self._run_chunk(state, traj, chunk)
      real = state.crystals.n_atoms > 0
      self.info["structure_steps"] += int(np.sum(np.where(real, state.step - before, 0)))
      done = (
        (state.converged | state.failed | (state.step >= params.max_steps)) & ~state.fresh & real
      )
      free = []
      for s in range(b):
        k = slot_of[s]
        if k is None or not done[s]:
          continue
        numbers = np.asarray(structures[k].atomic_numbers)
        results[k] = _result(state, traj if every else None, s, numbers, every)
        slot_of[s] = None
        free.append(s)
        if bar is not None:
          bar.update(1)
      if free:
        # Freed slots become padding (no atoms) unless refilled from the queue.
        state, traj = _load_slots(state, traj, free, empty(len(free)))
        state, traj = refill(state, traj, free)
      if compact and not queue:
        live = [s for s in range(b) if slot_of[s] is not None]
        size = compact_size(len(live), d)
        if live and size < b:
          spare = [s for s in range(b) if slot_of[s] is None][: size - len(live)]
          keep = live + spare
          state, traj = _take_slots(state, traj, keep)
          slot_of = [slot_of[s] for s in keep]
          b = size
          self.info["compactions"] += 1


def compact_size(live: int, num_devices: int = 1) -> int:
  """The batch a compacted tail of ``live`` structures moves into: ``num_devices * 2**k >= live``.

  Powers of two keep the set of compiled shapes small and shared between buckets and calls.
  """
  per_device = max(1, math.ceil(live / num_devices))
  return num_devices * (1 << (per_device - 1).bit_length())


def _padding_crystals(batch: int, width: int) -> Crystals:
  """``batch`` padding structures (no atoms) with ``width`` atom slots (numpy)."""
  return Crystals(
    positions=np.zeros((batch, width, 3), np.float32),
    lattice=np.tile(np.eye(3, dtype=np.float32) * 10.0, (batch, 1, 1)),
    atomic_numbers=np.zeros((batch, width), np.int32),
    mask=np.zeros((batch, width), bool),
    n_atoms=np.zeros((batch,), np.int32),
  )


# ----------------------------------------------------------------------------
# Writing trajectories.


def trajectory_atoms(result: RelaxResult) -> list:
  """A result's trajectory as ASE ``Atoms`` with single-point energy, forces and stress.

  Stress is converted to ASE's eV/Å^3 with :func:`crystal_search.units.stress_to_ase`.
  """
  from ase import Atoms
  from ase.calculators.singlepoint import SinglePointCalculator

  from crystal_search.units import stress_to_ase

  if result.trajectory is None:
    raise ValueError("this result has no trajectory (relax with trajectory_every >= 1)")
  t = result.trajectory
  numbers = result.final.atomic_numbers
  out = []
  for k in range(len(t["step"])):
    lattice = np.asarray(t["lattice"][k], np.float64)
    atoms = Atoms(
      numbers=numbers,
      scaled_positions=np.asarray(t["positions"][k], np.float64),
      cell=lattice,
      pbc=True,
    )
    energy = float(t["energy"][k])
    atoms.calc = SinglePointCalculator(
      atoms,
      energy=energy if math.isfinite(energy) else None,
      forces=np.asarray(t["forces"][k], np.float64),
      stress=stress_to_ase(np.asarray(t["stress"][k], np.float64)),
    )
    atoms.info["step"] = int(t["step"][k])
    out.append(atoms)
  return out


def write_trajectory(result: RelaxResult, path: str) -> None:
  """Write a result's trajectory as extxyz (positions Å, forces eV/Å, stress eV/Å^3, ASE sign)."""
  import ase.io

  tmp = f"{path}.tmp{os.getpid()}"
  ase.io.write(tmp, trajectory_atoms(result), format="extxyz")
  os.replace(tmp, path)


# ----------------------------------------------------------------------------
# Force fields by name, and relaxing files (the ``relax`` binary).

FORCE_FIELD_KINDS = ("model", "chgnet", "meam", "lj")


def make_force_field(
  kind: str, *, model: str | None = None, untrained: bool = False, seed: int = 0
):
  """A force field by name.

  Args:
    kind: ``model`` (our force/stress network from ``model``, or the pretrained one
      shipped in the package when present), ``chgnet`` (the teacher), ``meam``
      (2NN MEAM through LAMMPS) or ``lj`` (a Lennard-Jones toy for smoke tests).
    model: force/stress model directory (``kind='model'``), or the name of a packaged model
      (``search.PRETRAINED_MODELS``: ``default`` or ``fast``) when no such directory exists.
    untrained: ``kind='model'`` without a directory: random weights (smoke tests and
      throughput only; its relaxations are meaningless).
    seed: PRNG seed of the untrained weights.

  Raises:
    InputError: unknown kind, or no model directory (and no pretrained model) for ``model``.
  """
  if kind == "chgnet":
    from crystal_search.force_fields.chgnet import CHGNetForceField

    return CHGNetForceField()
  if kind == "meam":
    from crystal_search.force_fields.lammps_meam import MEAMForceField

    return MEAMForceField()
  if kind == "lj":
    from crystal_search.force_fields import analytic

    return analytic.lennard_jones(sigma=2.0, epsilon=0.1)
  if kind != "model":
    raise InputError(f"unknown force field {kind!r} (one of {', '.join(FORCE_FIELD_KINDS)})")
  from crystal_search.force_fields import model as model_ff
  from crystal_search.search import PRETRAINED_DIR, PRETRAINED_MODELS

  if model in PRETRAINED_MODELS and not os.path.isdir(model):
    model = os.path.join(PRETRAINED_DIR, PRETRAINED_MODELS[model])
  if model:
    if not os.path.isdir(model):
      names = " or ".join(PRETRAINED_MODELS)
      raise InputError(f"{model}: no such model directory (nor a packaged model: {names})")
    return model_ff.from_directory(model)
  pretrained = os.path.join(PRETRAINED_DIR, PRETRAINED_MODELS["default"])
  if os.path.isdir(pretrained):
    return model_ff.from_directory(pretrained)
  if untrained:
    return untrained_model(seed=seed)
  raise InputError(
    "--force_field=model needs --model=DIR: no pretrained model ships yet "
    "(or pass --untrained for a smoke test, or --force_field=chgnet|meam|lj)"
  )


def untrained_model(*, seed: int = 0, max_atoms: int = 40):
  """The force/stress network with random weights (default config): for smoke tests and timing."""
  from crystal_search.force_fields import model as model_ff
  from crystal_search.models import config as config_lib
  from crystal_search.models import force_stress

  config = config_lib.get_model_config()
  lattice = Lattice.cubic(4.0)
  example = crystals_lib.from_structures(
    [Structure(lattice, ["Li", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])], max_atoms=8
  )
  variables = force_stress.init(config, jax.random.PRNGKey(seed), example)
  ff = model_ff.ModelForceField(config, variables, model_ff.default_capacity(max_atoms))
  return dataclasses.replace(ff, name="gnn-force-stress (UNTRAINED weights)")


def relax_files(
  pattern: str,
  force_field,
  output_dir: str,
  *,
  config: ml_collections.ConfigDict | dict | None = None,
  trajectories: bool = False,
  batch_size: int | None = None,
  progress: bool = False,
  log: Callable[[str], None] | None = None,
) -> dict:
  """Relax every structure in the files matched by ``pattern``; write CIFs and a summary.

  Writes ``<output_dir>/<name>.cif`` for every relaxed structure that did not fail,
  ``<output_dir>/trajectories/<name>.extxyz`` when ``trajectories``, and
  ``<output_dir>/summary.json``.  A file that cannot be read, a structure with an
  element the force field does not know, and a relaxation that fails are each one
  entry in the summary (with ``error``/``failure_reason``) and one line to ``log``;
  the others still run and are written.

  Returns:
    The summary dict (``force_field``, ``settings``, ``structures``: one entry per
    structure or unreadable file, in input order; ``counts``).
  """
  import json

  log = log or (lambda line: print(line, file=sys.stderr))
  cfg = make_config(config, **({"trajectory_every": 1} if trajectories else {}))
  paths = crystals_lib.expand_inputs(pattern)
  os.makedirs(output_dir, exist_ok=True)
  entries: list[dict] = []
  todo: list[tuple[int, Structure]] = []
  elements = getattr(force_field, "elements", None)
  names: set[str] = set()
  for path in paths:
    try:
      structures = crystals_lib.read_structures(path)
    except InputError as e:
      entries.append({"file": path, "name": None, "error": str(e), "failed": True})
      log(f"error: {e}")
      continue
    stem = os.path.splitext(os.path.basename(path))[0] or "structure"
    for k, s in enumerate(structures):
      name = stem if len(structures) == 1 else f"{stem}_{k}"
      while name in names:
        name += "_"
      names.add(name)
      entry = {
        "file": path,
        "index": k,
        "name": name,
        "formula": s.composition.formula.replace(" ", ""),
        "n_atoms": len(s),
      }
      unknown = sorted({sp.symbol for sp in s.species} - set(elements)) if elements else []
      if unknown:
        entry.update(
          failed=True,
          error=f"element(s) {', '.join(unknown)} not supported by {force_field.name}",
        )
        log(f"error: {path}: {entry['error']}")
      else:
        todo.append((len(entries), s))
      entries.append(entry)
  results = relax_structures(
    [s for _, s in todo], force_field, config=cfg, batch_size=batch_size, progress=progress
  )
  if trajectories:
    os.makedirs(os.path.join(output_dir, "trajectories"), exist_ok=True)
  for (i, _), r in zip(todo, results, strict=True):
    e = entries[i]
    energy = r.energy if math.isfinite(r.energy) else None
    e.update(
      steps=r.steps,
      converged=r.converged,
      failed=r.failed,
      failure_reason=r.failure_reason,
      energy=energy,
      energy_per_atom=None if energy is None else energy / len(r.final),
      max_force=r.max_force,
      max_stress=r.max_stress,
      volume=float(r.final.volume),
    )
    if r.failed:
      log(
        f"error: {e['file']}: {e['name']}: relaxation failed ({r.failure_reason}) at step {r.steps}"
      )
    else:
      e["cif"] = f"{e['name']}.cif"
      r.final.to(filename=os.path.join(output_dir, e["cif"]))
    if trajectories and r.trajectory is not None:
      e["trajectory"] = os.path.join("trajectories", f"{e['name']}.extxyz")
      write_trajectory(r, os.path.join(output_dir, e["trajectory"]))
  counts = {
    "inputs": len(entries),
    "relaxed": len(results),
    "converged": sum(bool(e.get("converged")) for e in entries),
    "failed": sum(bool(e.get("failed")) for e in entries),
  }
  summary = {
    "force_field": getattr(force_field, "name", type(force_field).__name__),
    "settings": cfg.to_dict(),
    "counts": counts,
    "structures": entries,
  }
  tmp = os.path.join(output_dir, f".summary.json.tmp{os.getpid()}")
  with open(tmp, "w") as f:
    json.dump(summary, f, indent=1)
  os.replace(tmp, os.path.join(output_dir, "summary.json"))
  return summary
