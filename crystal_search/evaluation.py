"""The paper's evaluation (Tables 1, 2, 3 and 5) for any force field.

* :func:`frame_errors`: force MAE (eV/Å, over the Cartesian components of real atoms) and stress
  MAE (kBar, over the 9 tensor components) on labelled frames;
* :func:`trajectory_scores`: from the first frame of each teacher trajectory, relax with the force
  field through our relaxer with the teacher's settings for the teacher's number of steps; the
  *relaxed-structure match* is the fraction whose last structure matches the teacher's last, the
  *matches in trajectory* the fraction of steps ``k`` at which the two structures match, averaged
  over trajectories (:mod:`crystal_search.metrics`), and the fraction matched at each step;
* :func:`experimental_recovery`: how many teacher trajectories end in a reference structure (the
  held-out Li15Si4 experimental phase) and how many of those the force field reproduces.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pymatgen.core import Lattice, Structure

from crystal_search.crystals import bucket_size
from crystal_search.datasets.frames import Frames

#: The dataset files an evaluation reads (frames and whole trajectories of both test sets).
EVALUATION_FILES = ("test.npz", "holdout.npz", "test_trajectories.npz", "holdout_trajectories.npz")


def test_data_version(dataset_dir: str) -> str:
  """Hash (16 hex digits) of the files an evaluation of ``dataset_dir`` reads.

  Recorded in ``eval.json``; an evaluation whose version differs from the folder's current one
  was made on other test data (``experiments.reproduce`` reruns it).
  """
  from crystal_search.training import dataset_version

  return dataset_version(dataset_dir, EVALUATION_FILES)


def _evaluate(force_field, crystals):
  """``(output, force_field)``: the force field grown until no structure overflows its capacity."""
  out = force_field(crystals)
  while bool(np.any(np.asarray(out.overflow))):
    force_field = force_field.grow()
    out = force_field(crystals)
  return out, force_field


def frame_errors(force_field, frames: Frames, *, batch_size: int = 32) -> dict:
  """Force MAE (eV/Å) and stress MAE (kBar) of ``force_field`` on ``frames``.

  Frames are grouped by atom-count bucket so a jittable force field compiles once per bucket.
  Returns ``{'force_mae', 'stress_mae', 'frames', 'predictions'}`` where ``predictions`` holds the
  per-frame arrays (``forces`` flat ``[A, 3]`` in frame order, ``stress [F, 3, 3]``) for parity plots.
  """
  n = len(frames)
  if n == 0:
    return {"force_mae": float("nan"), "stress_mae": float("nan"), "frames": 0}
  buckets = np.asarray([bucket_size(int(k)) for k in frames.n_atoms])
  pred_forces = np.zeros_like(frames.forces, dtype=np.float64)
  pred_stress = np.zeros_like(frames.stress, dtype=np.float64)
  offsets = frames.offsets
  for size in np.unique(buckets):
    idx = np.flatnonzero(buckets == size)
    for start in range(0, len(idx), batch_size):
      chunk = idx[start : start + batch_size]
      crystals, _, _ = frames.to_batch(chunk, max_atoms=int(size), batch_size=batch_size)
      out, force_field = _evaluate(force_field, crystals)
      forces = np.asarray(out.forces, np.float64)
      stress = np.asarray(out.stress, np.float64)
      for k, i in enumerate(chunk):
        m = int(frames.n_atoms[i])
        pred_forces[offsets[i] : offsets[i] + m] = forces[k, :m]
        pred_stress[i] = stress[k]
  return {
    "force_mae": float(np.mean(np.abs(pred_forces - frames.forces))),
    "stress_mae": float(np.mean(np.abs(pred_stress - frames.stress))),
    "frames": n,
    "predictions": {"forces": pred_forces, "stress": pred_stress},
  }


def split_trajectories(frames: Frames) -> list[np.ndarray]:
  """Frame indices of each trajectory, sorted by step (trajectories in order of first frame)."""
  out = []
  seen = []
  for t in frames.trajectory:
    if t not in seen:
      seen.append(t)
  for t in seen:
    idx = np.flatnonzero(frames.trajectory == t)
    out.append(idx[np.argsort(frames.step[idx], kind="stable")])
  return out


def _structure(positions, lattice, numbers) -> Structure:
  return Structure(Lattice(lattice), [int(z) for z in numbers], positions % 1.0)


def trajectory_scores(
  force_field,
  trajectories: Frames,
  *,
  relax_config=None,
  matcher=None,
  max_trajectories: int | None = None,
  progress: bool = False,
) -> dict:
  """Relaxed-structure match and matches in trajectory against the teacher's trajectories.

  Args:
    force_field: the force field under test.
    trajectories: whole teacher trajectories (every ionic step, ``step`` 0..T-1), e.g. the
      dataset's ``test_trajectories.npz``.
    relax_config: overrides for :func:`crystal_search.relax.relax_structures` (the teacher's
      ``potim``/``smass``); convergence thresholds are switched off so that the model runs exactly
      the teacher's number of steps.
    matcher: a pymatgen ``StructureMatcher`` (default :func:`crystal_search.metrics.default_matcher`).
    max_trajectories: evaluate only the first ones (for quick runs).
  """
  from crystal_search import metrics, relax

  groups = split_trajectories(trajectories)
  if max_trajectories is not None:
    groups = groups[:max_trajectories]
  if not groups:
    return {"relaxed_match": float("nan"), "trajectory_match": float("nan"), "trajectories": 0}
  starts = [trajectories.structure(int(g[0])) for g in groups]
  overrides = dict(relax_config or {})
  overrides.update(fmax=1e-12, smax=1e-12, max_steps=max(len(g) - 1 for g in groups) or 1)
  results = relax.relax_structures(
    starts, force_field, trajectory_every=1, progress=progress, **overrides
  )
  final_matches, fractions, per_step, failed = [], [], [], 0
  for g, r, start in zip(groups, results, starts, strict=True):
    teacher = [trajectories.structure(int(i)) for i in g]
    numbers = start.atomic_numbers
    traj = r.trajectory
    model = [
      _structure(traj["positions"][k], traj["lattice"][k], numbers)
      for k in range(len(traj["positions"]))
    ]
    failed += int(r.failed)
    # Steps past the model's end (a failed run stops early) compare the model's last structure.
    model = (model + [model[-1]] * len(teacher))[: len(teacher)]
    hits = metrics.trajectory_matches(model, teacher, matcher=matcher)
    per_step.append(hits)
    fractions.append(float(np.mean(hits)))
    final_matches.append(metrics.structures_match(model[-1], teacher[-1], matcher=matcher))
  return {
    "relaxed_match": float(np.mean(final_matches)),
    "trajectory_match": float(np.mean(fractions)),
    "trajectories": len(groups),
    "failed": failed,
    "matched_by_step": matched_by_step(per_step),
  }


def matched_by_step(per_step: Sequence[np.ndarray]) -> list[float]:
  """Fraction matched at each step ``k`` over the trajectories that last ``k + 1`` steps or more.

  Args:
    per_step: one bool array per trajectory (:func:`crystal_search.metrics.trajectory_matches`).

  Returns:
    ``[K]`` fractions, ``K`` the longest trajectory's length.
  """
  longest = max((len(h) for h in per_step), default=0)
  out = []
  for k in range(longest):
    alive = [bool(h[k]) for h in per_step if len(h) > k]
    out.append(float(np.mean(alive)))
  return out


def mean_matched_by_step(curves: Sequence[Sequence[float]]) -> list[float]:
  """Element-wise mean of :func:`matched_by_step` curves (e.g. one per seed), up to the shortest."""
  if not curves:
    return []
  length = min(len(c) for c in curves)
  return [float(np.mean([c[k] for c in curves])) for k in range(length)]


def experimental_recovery(
  force_field,
  trajectories: Frames,
  reference: Structure,
  *,
  relax_config=None,
  matcher=None,
  progress: bool = False,
) -> dict:
  """Teacher trajectories that end in ``reference``, and how many the force field reproduces.

  A trajectory counts for the teacher when its last structure matches ``reference``; the force
  field reproduces it when its relaxation from the same first frame, for the same number of
  steps, also ends in ``reference``.
  """
  from crystal_search import metrics, relax

  groups = split_trajectories(trajectories)
  hits = [
    g
    for g in groups
    if metrics.structures_match(trajectories.structure(int(g[-1])), reference, matcher=matcher)
  ]
  reproduced = 0
  if hits:
    overrides = dict(relax_config or {})
    overrides.update(fmax=1e-12, smax=1e-12, max_steps=max(len(g) - 1 for g in hits) or 1)
    starts = [trajectories.structure(int(g[0])) for g in hits]
    results = relax.relax_structures(starts, force_field, progress=progress, **overrides)
    reproduced = sum(
      (not r.failed) and metrics.structures_match(r.final, reference, matcher=matcher)
      for r in results
    )
  return {"experimental_in_teacher": len(hits), "experimental_found": int(reproduced)}


def summarize_seeds(values: Sequence[float]) -> dict:
  """Mean and standard deviation over the seeds that have a value (None and NaN are skipped)."""
  arr = np.asarray([v for v in values if v is not None], np.float64)
  arr = arr[np.isfinite(arr)]
  if arr.size == 0:
    return {"mean": float("nan"), "std": float("nan"), "n": 0}
  return {"mean": float(np.mean(arr)), "std": float(np.std(arr)), "n": int(arr.size)}


#: Volume scales ``V / V_ref`` of :func:`equation_of_state` (isotropic, fractional positions kept).
EOS_SCALES = (0.92, 0.96, 1.0, 1.04, 1.08)


def pressures(force_field, structures: Sequence[Structure]) -> np.ndarray:
  """Pressure ``-tr(stress) / 3`` (kBar, compressive positive) of each structure, one batch."""
  from crystal_search import crystals as crystals_lib

  out, _ = _evaluate(force_field, crystals_lib.from_structures(list(structures)))
  stress = np.asarray(out.stress, np.float64)[: len(structures)]
  return -np.trace(stress, axis1=1, axis2=2) / 3.0


def equation_of_state(
  force_field, structure: Structure, *, scales: Sequence[float] = EOS_SCALES
) -> dict:
  """Pressure against volume of ``structure`` scaled isotropically (atoms fixed in fractions).

  Returns ``{'scales', 'pressure_kbar', 'bulk_modulus_gpa', 'zero_pressure_scale'}``: the bulk
  modulus ``B = -dP/dlnV`` at scale 1 and the scale ``V/V_ref`` where the pressure vanishes, both
  from a quadratic fit of ``P`` against ``ln V`` (``zero_pressure_scale`` None when the fit has no
  root within the scanned range).  No relaxation of the positions: a cheap probe of the stress
  head's response to volume (relaxed bulk moduli are lower).
  """
  scales = [float(s) for s in scales]
  scaled = []
  for s in scales:
    copy = structure.copy()
    copy.scale_lattice(structure.volume * s)
    scaled.append(copy)
  p = pressures(force_field, scaled)
  x = np.log(np.asarray(scales))
  c2, c1, c0 = np.polyfit(x, p, 2)
  # np.roots drops zero leading coefficients, so a straight-line fit gives its one root.
  roots = [r.real for r in np.roots([c2, c1, c0]) if abs(r.imag) < 1e-12]
  inside = [r for r in roots if x.min() <= r <= x.max()]
  zero = float(np.exp(min(inside, key=abs))) if inside else None
  return {
    "scales": scales,
    "pressure_kbar": [float(v) for v in p],
    "bulk_modulus_gpa": float(-c1 / 10.0),  # kBar -> GPa
    "zero_pressure_scale": zero,
  }
