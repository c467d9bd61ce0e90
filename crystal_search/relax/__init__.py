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

Modules: :mod:`~crystal_search.relax.config` (settings, one place),
:mod:`~crystal_search.relax.state` (the :class:`RelaxState` pytree, trajectories),
:mod:`~crystal_search.relax.optimizers` (the update rules: add an optimizer there and to
:data:`OPTIMIZERS`), :mod:`~crystal_search.relax.checks` (failures),
:mod:`~crystal_search.relax.dynamics` (one step), :mod:`~crystal_search.relax.driver`
(:func:`relax_structures`) and :mod:`~crystal_search.relax.files` (the ``relax`` binary's work).

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

from crystal_search.force_fields.registry import (
  FORCE_FIELD_KINDS,
  make_force_field,
  untrained_model,
)
from crystal_search.relax.checks import FAILURE_REASONS, overlap_ratio, pair_distances
from crystal_search.relax.config import (
  OPTIMIZERS,
  DynamicsParams,
  get_relax_config,
  make_config,
  teacher_settings,
  validate_config,
)
from crystal_search.relax.driver import (
  EDGE_BYTES,
  RelaxResult,
  bytes_per_structure,
  check_inputs,
  choose_batch_size,
  compact_size,
  relax_structures,
)
from crystal_search.relax.dynamics import damped_dynamics, move, observe
from crystal_search.relax.files import relax_files, trajectory_atoms, write_trajectory
from crystal_search.relax.state import RelaxState, Trajectory, active, fresh_state

__all__ = [
  "EDGE_BYTES",
  "FAILURE_REASONS",
  "FORCE_FIELD_KINDS",
  "OPTIMIZERS",
  "DynamicsParams",
  "RelaxResult",
  "RelaxState",
  "Trajectory",
  "active",
  "bytes_per_structure",
  "check_inputs",
  "choose_batch_size",
  "compact_size",
  "damped_dynamics",
  "fresh_state",
  "get_relax_config",
  "make_config",
  "make_force_field",
  "move",
  "observe",
  "overlap_ratio",
  "pair_distances",
  "relax_files",
  "relax_structures",
  "teacher_settings",
  "trajectory_atoms",
  "untrained_model",
  "validate_config",
  "write_trajectory",
]
