"""The paper's evaluation metrics (Table 1) and known-phase recognition.

* :func:`force_mae`: mean absolute error over the force **components** (x, y, z) of real atoms,
  eV/Å.
* :func:`stress_mae`: mean absolute error over the **9 components** of the 3x3 stress tensor of
  real structures (``components=6`` gives the Voigt xx, yy, zz, yz, xz, xy instead), kBar.
* :func:`relaxed_structure_match`: fraction of final relaxed structures that match the teacher's.
* :func:`trajectory_match`: fraction of the teacher's ionic steps ``k`` at which the model's step
  ``k`` matches the teacher's step ``k``.
* :func:`known_phase`: the name of the bundled known phase a structure matches, if any.

Structure comparison uses pymatgen's ``StructureMatcher``.  Its settings live in one place,
:data:`RELAXED_MATCHER_SETTINGS` (relaxed structures, trajectories, known phases, search dedupe)
and :data:`DATASET_MATCHER_SETTINGS` (the paper's ``stol=0.05`` for dropping near-duplicate frames
when sampling a dataset).  Every function takes a ``matcher=`` to override.

The relaxed-structure settings are pymatgen's defaults (``ltol=0.2, stol=0.3, angle_tol=5``,
primitive cells, volumes scaled), which is what the paper's "pymatgen's StructureMatcher"
comparison implies, except ``attempt_supercell=True``: the matcher first reduces both structures
to primitive cells, and that reduction fails on a slightly noisy cell (a 32-atom LiSi cell with
0.05 Å of noise stays at 32 atoms while the clean one reduces to 16), after which the default
matcher reports "no match" for what is a supercell of the same crystal.  Allowing supercells costs
nothing when both cells reduce to the same number of sites.  With ``scale=True`` the matcher
normalises volumes, so a uniform expansion alone never makes two structures differ.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

from crystal_search.errors import InputError

#: StructureMatcher settings for relaxed structures, trajectory steps, known phases and dedupe
#: (pymatgen's defaults: lattice 20 %, site RMS 0.3 (V/n)^(1/3), angles 5 degrees; plus
#: supercell matching, see the module docstring).
RELAXED_MATCHER_SETTINGS: dict = {
  "ltol": 0.2,
  "stol": 0.3,
  "angle_tol": 5.0,
  "primitive_cell": True,
  "scale": True,
  "attempt_supercell": True,
}
#: StructureMatcher settings of the paper's dataset sampling ("StructureMatcher class with
#: stol=0.05"; other settings pymatgen's defaults).
DATASET_MATCHER_SETTINGS: dict = dict(RELAXED_MATCHER_SETTINGS, stol=0.05)

#: Folder of the bundled known Li–Si phases (CIF; provenance in ``data/README.md``).
REFERENCE_PHASES_DIR = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), "data", "lisi_phases"
)
# Materials Project ids of the bundled files whose names do not carry one (data/README.md).
_MP_IDS = {"Li_MP_symmetrized.cif": "mp-135", "Si_MP_symmetrized.cif": "mp-149"}


class ReducingMatcher(StructureMatcher):
  """A StructureMatcher that reduces each structure once, not once per comparison.

  ``fit`` reduces both structures (Niggli, then primitive cell) before it compares them, and
  pymatgen's cache of reduced cells compares a hit site by site (~30 ms for a 38-atom cell,
  most of a search's dedupe and known-phase time).  This matcher keeps the reduced cell of each
  structure seen by any ReducingMatcher of the process, keyed by the structure's content
  (lattice, coordinates and species, so a structure changed in place is reduced again), reduces
  with :func:`crystal_search.primitive_cells.reduced_for_matching` (pymatgen's reduction, bit for
  bit, faster) and fits the reduced cells with ``skip_structure_reduction=True``: the same
  comparisons, the same answers.
  """

  #: Reduced cells kept (oldest dropped first), shared by every ReducingMatcher.
  CACHE_SIZE = 8192
  _reduced: dict[bytes, Structure] = {}

  def _reduced_cell(self, structure: Structure) -> Structure:
    from crystal_search.primitive_cells import reduced_for_matching

    key = b"".join(
      [
        b"p" if self._primitive_cell else b"n",
        structure.lattice.matrix.tobytes(),
        np.ascontiguousarray(structure.frac_coords).tobytes(),
        "|".join(site.species_string for site in structure).encode(),
      ]
    )
    cache = ReducingMatcher._reduced
    hit = cache.get(key)
    if hit is None:
      hit = reduced_for_matching(structure, primitive_cell=self._primitive_cell)
      if len(cache) >= self.CACHE_SIZE:
        cache.pop(next(iter(cache)))
      cache[key] = hit
    return hit

  def fit(self, struct1, struct2, symmetric: bool = False, skip_structure_reduction=False):
    if skip_structure_reduction or self._ignored_species:
      return super().fit(struct1, struct2, symmetric, skip_structure_reduction)
    a, b = self._reduced_cell(struct1), self._reduced_cell(struct2)
    return super().fit(a, b, symmetric, skip_structure_reduction=True)


@functools.cache
def _shared_matcher() -> StructureMatcher:
  """One default matcher per process, so that its reduced cells (e.g. of the reference phases)
  are kept between calls."""
  return default_matcher()


def default_matcher(**overrides) -> StructureMatcher:
  """A StructureMatcher with :data:`RELAXED_MATCHER_SETTINGS` (keyword overrides allowed)."""
  return ReducingMatcher(**dict(RELAXED_MATCHER_SETTINGS, **overrides))


def dataset_matcher(**overrides) -> StructureMatcher:
  """A StructureMatcher with the paper's dataset-sampling settings (``stol=0.05``)."""
  return ReducingMatcher(**dict(DATASET_MATCHER_SETTINGS, **overrides))


# ----------------------------------------------------------------------------
# Mean absolute errors.


def force_mae(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
  """Mean absolute error over the Cartesian force components of real atoms (eV/Å).

  Args:
    pred: ``[..., N, 3]`` eV/Å, e.g. ``[B, N, 3]`` padded batches or ``[n_atoms, 3]`` flat.
    target: same shape as ``pred``, eV/Å.
    mask: ``[..., N]`` bool, True for real atoms; None counts every atom.

  Returns:
    ``mean |pred - target|`` over the ``3 * n_real_atoms`` components; NaN when there are none.
  """
  pred = np.asarray(pred, np.float64)
  target = np.asarray(target, np.float64)
  if pred.shape != target.shape or pred.shape[-1:] != (3,):
    raise ValueError(f"forces must both be [..., N, 3], got {pred.shape} and {target.shape}")
  err = np.abs(pred - target)
  if mask is None:
    return float(np.mean(err)) if err.size else float("nan")
  mask = np.asarray(mask, bool)
  if mask.shape != pred.shape[:-1]:
    raise ValueError(f"mask {mask.shape} does not match forces {pred.shape}")
  n = 3 * int(mask.sum())
  return float(np.sum(err * mask[..., None]) / n) if n else float("nan")


def stress_mae(
  pred: np.ndarray,
  target: np.ndarray,
  mask: np.ndarray | None = None,
  *,
  components: int = 9,
) -> float:
  """Mean absolute error over stress tensor components of real structures (kBar).

  Args:
    pred: ``[..., 3, 3]`` kBar.
    target: same shape as ``pred``, kBar.
    mask: ``[...]`` bool, True for real structures; None counts every structure.
    components: 9 averages over the full 3x3 tensor (the paper's "stress MAE over tensor
      components"; off-diagonal terms count twice), 6 over the Voigt components
      (xx, yy, zz, yz, xz, xy).

  Returns:
    The MAE in kBar; NaN when no structure is counted.
  """
  pred = np.asarray(pred, np.float64)
  target = np.asarray(target, np.float64)
  if pred.shape != target.shape or pred.shape[-2:] != (3, 3):
    raise ValueError(f"stress must both be [..., 3, 3], got {pred.shape} and {target.shape}")
  if components == 9:
    err = np.abs(pred - target).reshape(pred.shape[:-2] + (9,))
  elif components == 6:
    rows, cols = (0, 1, 2, 1, 0, 0), (0, 1, 2, 2, 2, 1)
    err = np.abs(pred - target)[..., rows, cols]
  else:
    raise ValueError(f"components must be 9 or 6, got {components}")
  if mask is None:
    return float(np.mean(err)) if err.size else float("nan")
  mask = np.asarray(mask, bool)
  if mask.shape != pred.shape[:-2]:
    raise ValueError(f"mask {mask.shape} does not match stress {pred.shape}")
  n = components * int(mask.sum())
  return float(np.sum(err * mask[..., None]) / n) if n else float("nan")


# ----------------------------------------------------------------------------
# Structure matching.


def structures_match(
  a: Structure | None, b: Structure | None, *, matcher: StructureMatcher | None = None
) -> bool:
  """Whether two structures are the same crystal (StructureMatcher ``fit``).

  Args:
    a, b: the structures; None (a failed relaxation) never matches.
    matcher: default :func:`default_matcher`.
  """
  if a is None or b is None:
    return False
  if a.composition.reduced_composition != b.composition.reduced_composition:
    return False
  matcher = matcher or default_matcher()
  return bool(matcher.fit(a, b))


def relaxed_structure_match(
  model_finals: Sequence[Structure | None],
  teacher_finals: Sequence[Structure],
  *,
  matcher: StructureMatcher | None = None,
) -> float:
  """Fraction of relaxations whose final structure matches the teacher's (paper's Table 1, *).

  Args:
    model_finals: the model's final structures, one per relaxation (None for a failed one,
      counted as a mismatch).
    teacher_finals: the teacher's final structures, same order.
    matcher: default :func:`default_matcher`.

  Returns:
    A fraction in [0, 1]; NaN for no relaxations.
  """
  if len(model_finals) != len(teacher_finals):
    raise ValueError(f"{len(model_finals)} model finals but {len(teacher_finals)} teacher finals")
  if not teacher_finals:
    return float("nan")
  matcher = matcher or default_matcher()
  hits = [structures_match(m, t, matcher=matcher) for m, t in zip(model_finals, teacher_finals)]
  return float(np.mean(hits))


def trajectory_matches(
  model_traj_structures: Sequence[Structure],
  teacher_traj_structures: Sequence[Structure],
  *,
  matcher: StructureMatcher | None = None,
) -> np.ndarray:
  """Per teacher step ``k``, whether the model's structure matches: bool ``[len(teacher)]``.

  Step ``k`` compares the model's step ``k`` with the teacher's step ``k``.  When the model's
  trajectory is shorter (it stopped or failed early), the steps past its end compare the model's
  **last** structure; model steps past the teacher's end are ignored.

  Raises:
    ValueError: the model trajectory is empty (and the teacher's is not).
  """
  if not teacher_traj_structures:
    return np.zeros((0,), bool)
  if not model_traj_structures:
    raise ValueError("the model trajectory is empty")
  matcher = matcher or default_matcher()
  last = len(model_traj_structures) - 1
  return np.asarray(
    [
      structures_match(model_traj_structures[min(k, last)], t, matcher=matcher)
      for k, t in enumerate(teacher_traj_structures)
    ],
    bool,
  )


def trajectory_match(
  model_traj_structures: Sequence[Structure],
  teacher_traj_structures: Sequence[Structure],
  *,
  matcher: StructureMatcher | None = None,
) -> float:
  """Fraction of the teacher's steps at which the model's structure matches (Table 1, **).

  See :func:`trajectory_matches` for how steps are paired.

  Args:
    model_traj_structures: the model's structures, step 0 first (non-empty).
    teacher_traj_structures: the teacher's structures, step 0 first.
    matcher: default :func:`default_matcher`.

  Returns:
    A fraction in [0, 1]; NaN for an empty teacher trajectory.
  """
  hits = trajectory_matches(model_traj_structures, teacher_traj_structures, matcher=matcher)
  return float(np.mean(hits)) if hits.size else float("nan")


def mean_trajectory_match(
  model_trajectories: Sequence[Sequence[Structure]],
  teacher_trajectories: Sequence[Sequence[Structure]],
  *,
  matcher: StructureMatcher | None = None,
) -> float:
  """:func:`trajectory_match` averaged over trajectories (each trajectory weighs the same)."""
  if len(model_trajectories) != len(teacher_trajectories):
    raise ValueError(
      f"{len(model_trajectories)} model trajectories but {len(teacher_trajectories)} teacher ones"
    )
  if not teacher_trajectories:
    return float("nan")
  matcher = matcher or default_matcher()
  return float(
    np.mean(
      [
        trajectory_match(m, t, matcher=matcher)
        for m, t in zip(model_trajectories, teacher_trajectories)
      ]
    )
  )


# ----------------------------------------------------------------------------
# Known phases.


def _phase_name(path: str, structure: Structure) -> str:
  base = os.path.basename(path)
  found = re.match(r"^(.+)_(mp-\d+)\.cif$", base)
  if found:
    return f"{found.group(1)} ({found.group(2)})"
  formula = structure.composition.reduced_formula
  return f"{formula} ({_MP_IDS[base]})" if base in _MP_IDS else formula


def load_reference_phases(directory: str = REFERENCE_PHASES_DIR) -> dict[str, Structure]:
  """The known phases as ``{name: Structure}``, e.g. ``'LiSi (mp-795)'``, ``'Li (mp-135)'``.

  Reads every ``*.cif`` in ``directory`` (default: the bundled Li–Si phases, including the
  held-out experimental Li15Si4 structure ``'Li15Si4 (mp-569849)'`` that a search must find).
  Names are ``FORMULA (MP-ID)`` from file names ``FORMULA_mp-ID.cif``.
  """
  from pymatgen.io.cif import CifParser

  paths = sorted(glob.glob(os.path.join(directory, "*.cif")))
  if not paths:
    raise InputError(f"{directory}: no reference CIF files")
  phases = {}
  for path in paths:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      structure = CifParser(path).parse_structures(primitive=False)[0]
    phases[_phase_name(path, structure)] = structure
  return phases


def known_phase(
  structure: Structure,
  references: Mapping[str, Structure],
  *,
  matcher: StructureMatcher | None = None,
) -> str | None:
  """The name of the first reference phase that ``structure`` matches, or None.

  Args:
    structure: e.g. a relaxed search result (any cell: primitive, conventional or a supercell
      reducing to the same primitive cell).
    references: ``{name: Structure}``, e.g. from :func:`load_reference_phases`.
    matcher: default :func:`default_matcher`.
  """
  matcher = matcher or _shared_matcher()
  reduced = structure.composition.reduced_composition
  for name, reference in references.items():
    if reference.composition.reduced_composition != reduced:
      continue
    if matcher.fit(structure, reference):
      return name
  return None
