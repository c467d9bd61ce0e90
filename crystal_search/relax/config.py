"""Relaxation settings: the defaults (one place), their validation and the static
:class:`DynamicsParams` the jitted update rules take.
"""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from crystal_search.errors import InputError

#: The update rules of :func:`move` (``optimizer`` setting).
OPTIMIZERS = ("damped", "fire", "lbfgs")


def get_relax_config() -> ml_collections.ConfigDict:
  """Default relaxation settings (the paper's teacher: IBRION=3, SMASS=2, POTIM=0.4, ISIF=3).

  Fields (units):
    optimizer: ``"damped"`` (VASP IBRION=3 damped dynamics, the paper's teacher),
      ``"fire"`` (ASE's FIRE over positions and cell strain) or ``"lbfgs"`` (ASE's L-BFGS over
      the same coordinates, forces only); see :mod:`crystal_search.relax`.
    potim: VASP POTIM, step scale (dimensionless; see the module docstring).
    smass: VASP SMASS, damping ``mu`` in [0, 2] (2 = steepest descent).
    ion_step_per_potim: Å²/eV, ion step ``alpha_ion = potim * ion_step_per_potim``.
    cell_step_per_potim: 1/kBar, cell step ``alpha_cell = potim * cell_step_per_potim``.
    relax_cell: move the cell (ISIF=3) or only the ions (ISIF=2).
    fire_dt: FIRE's initial time step, Å/sqrt(eV) (a step is ``dt^2 F``; ASE's default 0.1).
    fire_dt_max: FIRE's largest time step, Å/sqrt(eV) (ASE's default 1.0).
    fire_max_step: Å, FIRE's cap on the norm of one step over all coordinates of a
      structure (ASE's ``maxstep``, default 0.2).
    lbfgs_memory: step pairs L-BFGS keeps (ASE's ``memory``, default 100).
    lbfgs_alpha: eV/Å², L-BFGS's initial Hessian ``alpha * I`` (ASE's ``alpha``, default 70).
    lbfgs_scaling: scale the initial inverse Hessian by ``s.y / y.y`` of the newest pair at each
      step (Nocedal & Wright's choice: half FIRE's steps on the search's cells with the packaged
      models); False: ``1 / lbfgs_alpha`` throughout, exactly ASE's LBFGS.
    lbfgs_max_step: Å, L-BFGS's cap on the longest row of a step (the atoms and the three strain
      rows ``u``; ASE's ``maxstep``, default 0.2).
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
    refill_fraction: while structures wait in the queue, a chunk ends early once this
      fraction of the batch (at least one slot) has finished in it, so finished slots are
      refilled instead of idling to the chunk's end.
    compact: once the queue is empty and the unfinished structures fit in a smaller
      power-of-two batch (times the device count), move them into the smallest that holds
      them, so finished slots stop costing force evaluations (jittable force fields; each
      new size compiles once per process, or loads from the compilation cache).
    compact_factor: compact only into a batch at least this many times smaller (each new
      batch size is one more compilation; 2 follows the tail closely, 4 compiles half as often).
    compact_min_batch: batches smaller than this never compact (the compilation of a smaller
      batch costs more than the finished slots of a small one).
    memory_budget_mb: MB per batch used to choose the batch size (rounded down to a power of
      two per device, so that shapes recur between calls).
    min_bucket_structures: a size bucket holding fewer structures than this joins the next
      wider bucket (0: never): a few structures padded to a wider cell cost less than one more
      compilation (several seconds per batch shape).
    max_batch_size: upper bound on the batch size on accelerators.
    cpu_max_batch_size: upper bound on the batch size on CPUs.  A core gains nothing from
      wider batches (the cost per structure-slot and step is flat or lower at 8 than at 128,
      ``benchmarks/results/batch_policy.md``), while narrow batches leave fewer slots idle
      behind slow relaxations and compile fewer batch shapes.
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
  c.lbfgs_memory = 100
  c.lbfgs_alpha = 70.0
  c.lbfgs_max_step = 0.2
  c.lbfgs_scaling = True
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
  c.refill_fraction = 0.25
  c.compact = True
  c.compact_factor = 4
  c.compact_min_batch = 16
  c.memory_budget_mb = 1024
  c.min_bucket_structures = 16
  c.max_batch_size = 256
  c.cpu_max_batch_size = 8
  c.max_retries = 8
  return c


def teacher_settings(**overrides) -> dict:
  """The paper's teacher protocol as relax keywords: the defaults of :func:`get_relax_config`
  (VASP IBRION=3, SMASS=2, POTIM=0.4, ISIF=3; fmax eV/Å, smax kBar), with ``overrides``."""
  c = get_relax_config()
  keys = ("optimizer", "potim", "smass", "fmax", "smax")
  return {**{k: c[k] for k in keys}, **overrides}


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
    "lbfgs_alpha",
    "lbfgs_max_step",
  ):
    need(_finite(c[field]) and c[field] > 0, field, "a positive number")
  need(c.optimizer in OPTIMIZERS, "optimizer", " or ".join(repr(o) for o in OPTIMIZERS))
  need(c.fire_dt <= c.fire_dt_max, "fire_dt", f"<= fire_dt_max = {c.fire_dt_max}")
  need(_finite(c.smass) and 0.0 <= c.smass <= 2.0, "smass", "in [0, 2] (2 = steepest descent)")
  need(_finite(c.refill_fraction) and 0 < c.refill_fraction <= 1, "refill_fraction", "in (0, 1]")
  need(_is_int(c.compact_factor) and c.compact_factor >= 2, "compact_factor", "an integer >= 2")
  need(_is_int(c.compact_min_batch) and c.compact_min_batch >= 1, "compact_min_batch", ">= 1")
  for field in ("max_steps", "chunk_steps", "max_batch_size", "cpu_max_batch_size", "lbfgs_memory"):
    need(_is_int(c[field]) and c[field] >= 1, field, "an integer >= 1")
  need(_is_int(c.trajectory_every) and c.trajectory_every >= 0, "trajectory_every", ">= 0")
  need(
    _is_int(c.min_bucket_structures) and c.min_bucket_structures >= 0,
    "min_bucket_structures",
    "an integer >= 0",
  )
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


#: The defaults, read once: :class:`DynamicsParams` takes its field defaults from here.
_DEFAULTS = get_relax_config()


@dataclasses.dataclass(frozen=True)
class DynamicsParams:
  """Static (hashable) parameters of the update rule: the fields of :func:`get_relax_config`
  that the jitted step reads, with the same defaults (see there for units)."""

  optimizer: str = _DEFAULTS.optimizer
  potim: float = _DEFAULTS.potim
  smass: float = _DEFAULTS.smass
  ion_step_per_potim: float = _DEFAULTS.ion_step_per_potim
  cell_step_per_potim: float = _DEFAULTS.cell_step_per_potim
  relax_cell: bool = _DEFAULTS.relax_cell
  fire_dt: float = _DEFAULTS.fire_dt
  fire_dt_max: float = _DEFAULTS.fire_dt_max
  fire_max_step: float = _DEFAULTS.fire_max_step
  lbfgs_memory: int = _DEFAULTS.lbfgs_memory
  lbfgs_alpha: float = _DEFAULTS.lbfgs_alpha
  lbfgs_max_step: float = _DEFAULTS.lbfgs_max_step
  lbfgs_scaling: bool = _DEFAULTS.lbfgs_scaling
  fmax: float = _DEFAULTS.fmax
  smax: float = _DEFAULTS.smax
  max_steps: int = _DEFAULTS.max_steps
  max_displacement: float = _DEFAULTS.max_displacement
  max_strain: float = _DEFAULTS.max_strain
  min_distance: float = _DEFAULTS.min_distance
  overlap_fraction: float = _DEFAULTS.overlap_fraction
  min_cell_height: float = _DEFAULTS.min_cell_height
  min_volume_ratio: float = _DEFAULTS.min_volume_ratio
  max_volume_ratio: float = _DEFAULTS.max_volume_ratio

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> DynamicsParams:
    return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls)})
