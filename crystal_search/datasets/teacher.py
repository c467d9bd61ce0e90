"""Teacher relaxations of random structures: sharded, resumable, one file per relaxation.

A run is defined by a config (compositions, structures per composition, seed,
random-structure options, relaxation settings, teacher).  Its jobs are the pairs
``(composition, index)`` ordered round-robin (index 0 of every composition, then
index 1, ...), so a run that is stopped early holds about the same number of
relaxations of every composition.  Shard ``k`` of ``n`` takes jobs ``k, k+n,
k+2n, ...`` (one SLURM array task per shard).

Job ``(composition, index)`` relaxes the random structure
:func:`crystal_search.random_structures.random_structure` ``(composition,
seed=seed, index=index)`` with the teacher through our relaxer
(:func:`crystal_search.relax.relax_structures`, steepest descent of positions
and cell, every step kept) and writes its whole trajectory atomically as one
:class:`~crystal_search.datasets.frames.Frames` file::

    <output_dir>/<Formula>/<Formula>_<seed>_<index:05d>.npz

(float32 positions/forces/lattice/stress; ``metadata`` holds the teacher and
package versions, the settings, wall seconds, steps, ``converged``,
``failed`` and ``failure_reason``).  A rerun skips every job whose file exists,
so a run killed at any moment loses at most the relaxations in flight and
never duplicates one.  A relaxation with NaN output, or whose random structure
could not be made, is written with ``failed=True`` and its reason (and zero
frames for a generation failure) so it is not retried, and the dataset builder
leaves it out.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from crystal_search import random_structures as rs
from crystal_search.compositions import formula_name, parse_composition
from crystal_search.datasets import frames as frames_lib
from crystal_search.errors import InputError


@dataclasses.dataclass(frozen=True)
class Job:
  """One teacher relaxation: random structure ``index`` of ``formula`` in run ``seed``."""

  formula: str
  seed: int
  index: int

  @property
  def name(self) -> str:
    return f"{self.formula}_{self.seed}_{self.index:05d}"

  def path(self, output_dir: str) -> str:
    return os.path.join(output_dir, self.formula, f"{self.name}.npz")


def make_jobs(compositions: Sequence[str], num_per_composition: int, seed: int) -> list[Job]:
  """All jobs of a run, round-robin over compositions (index-major order)."""
  formulas = [formula_name(parse_composition(c)) for c in compositions]
  if len(set(formulas)) != len(formulas):
    raise InputError(f"compositions {list(compositions)}: a formula is listed twice")
  if num_per_composition < 0:
    raise InputError(f"num_per_composition {num_per_composition}: must be >= 0")
  return [Job(f, int(seed), i) for i in range(num_per_composition) for f in formulas]


def shard(jobs: Sequence[Job], shard_index: int, num_shards: int) -> list[Job]:
  """Jobs ``shard_index, shard_index + num_shards, ...``."""
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise InputError(f"shard {shard_index} of {num_shards}: need 0 <= shard_index < num_shards")
  return list(jobs[shard_index::num_shards])


def package_versions() -> dict:
  """Versions of the packages that determine a teacher result."""
  out = {"python": platform.python_version()}
  for name in ("numpy", "jax", "pymatgen", "pyxtal", "spglib", "ase", "chgnet", "torch"):
    module = sys.modules.get(name)
    if module is None:
      try:
        module = __import__(name)
      except ImportError:
        continue
    out[name] = str(getattr(module, "__version__", "?"))
  return out


def trajectory_frames(
  trajectory: dict,
  n_atoms: int,
  numbers: np.ndarray,
  *,
  name: str,
  metadata: dict,
  dtype=np.float32,
) -> frames_lib.Frames:
  """A relaxation trajectory as Frames (one trajectory, one frame per kept step).

  Args:
    trajectory: ``positions [T, N, 3]`` fractional, ``lattice [T, 3, 3]`` Å,
      ``forces [T, N, 3]`` eV/Å, ``stress [T, 3, 3]`` kBar, ``energy [T]`` eV,
      ``step [T]`` (``N`` may include padding slots beyond ``n_atoms``).
    n_atoms: real atoms.
    numbers: ``[n_atoms]`` atomic numbers.
  """
  positions = np.asarray(trajectory["positions"])[:, :n_atoms]
  t = positions.shape[0]
  forces = np.asarray(trajectory["forces"])[:, :n_atoms]
  energy = np.asarray(trajectory.get("energy", np.full((t,), np.nan)), np.float64).reshape(t)
  step = np.asarray(trajectory.get("step", np.arange(t)), np.int32).reshape(t)
  return frames_lib.Frames(
    numbers=np.tile(np.asarray(numbers, np.int32), t),
    positions=positions.reshape(-1, 3).astype(dtype),
    forces=forces.reshape(-1, 3).astype(dtype),
    lattice=np.asarray(trajectory["lattice"]).reshape(t, 3, 3).astype(dtype),
    stress=np.asarray(trajectory["stress"]).reshape(t, 3, 3).astype(dtype),
    energy=energy,
    n_atoms=np.full((t,), n_atoms, np.int32),
    trajectory=np.zeros((t,), np.int32),
    step=step,
    trajectory_names=[name],
    metadata=metadata,
  )


def _nan_reason(result, frames: frames_lib.Frames) -> str | None:
  if len(frames) == 0:
    return "empty trajectory"
  for key in ("positions", "forces", "lattice", "stress"):
    if not np.all(np.isfinite(getattr(frames, key))):
      return f"non-finite {key} in the teacher trajectory"
  if not np.all(np.isfinite(frames.energy)):
    return "non-finite energy in the teacher trajectory"
  return None


def run_job(
  job: Job,
  force_field,
  *,
  output_dir: str,
  random_config: rs.RandomStructureConfig,
  relax_settings: dict,
  teacher_info: dict,
  relax_fn: Callable | None = None,
) -> dict:
  """Generate, relax and write one job; returns its metadata (also stored in the file)."""
  if relax_fn is None:
    from crystal_search.relax import relax_structures as relax_fn
  t0 = time.perf_counter()
  structure, info = rs.random_structure(
    job.formula, seed=job.seed, index=job.index, config=random_config
  )
  metadata = {
    **_job_metadata(job, relax_settings),
    "random_structure": {k: (float(v) if isinstance(v, float) else v) for k, v in info.items()},
    "random_config": dataclasses.asdict(random_config),
    **teacher_info,
  }
  if structure is None:
    metadata.update(
      converged=False,
      failed=True,
      failure_reason="random structure could not be generated",
      steps=0,
      wall_seconds=time.perf_counter() - t0,
      n_atoms=0,
    )
    empty = frames_lib.from_arrays([], trajectory_names=[job.name], metadata=metadata)
    empty.save(job.path(output_dir))
    return metadata
  settings = dict(relax_settings)
  settings["trajectory_every"] = 1
  metadata["relax_config"] = _resolved_relax_config(settings, relax_fn)
  (result,) = relax_fn([structure], force_field, **settings)
  n = len(structure)
  numbers = np.asarray(structure.atomic_numbers, np.int32)
  traj = result.trajectory or {}
  metadata.update(
    converged=bool(result.converged),
    failed=bool(result.failed),
    failure_reason=(str(result.failure_reason) if result.failure_reason else None),
    steps=int(result.steps),
    n_atoms=n,
    final_energy=float(result.energy) if result.energy is not None else None,
  )
  if traj:
    out = trajectory_frames(traj, n, numbers, name=job.name, metadata=metadata)
    reason = _nan_reason(result, out)
  else:
    out = frames_lib.from_arrays([], trajectory_names=[job.name], metadata=metadata)
    reason = "no trajectory returned"
  if reason and not metadata["failed"]:
    metadata.update(failed=True, converged=False, failure_reason=reason)
  if metadata["final_energy"] is not None and not np.isfinite(metadata["final_energy"]):
    metadata["final_energy"] = None
    if not metadata["failed"]:
      metadata.update(failed=True, converged=False, failure_reason="non-finite final energy")
  metadata["wall_seconds"] = time.perf_counter() - t0
  out.metadata = metadata
  out.save(job.path(output_dir))
  return metadata


def _resolved_relax_config(settings: dict, relax_fn) -> dict | None:
  """The relaxer's full settings (defaults + overrides) and a hash of its source, if known."""
  import hashlib
  import inspect

  try:
    from crystal_search import relax

    if relax_fn is not None and relax_fn is not relax.relax_structures:
      return None
    cfg = relax.make_config(None, **settings).to_dict()
    source = inspect.getsource(relax)
    cfg["relax_source_sha256"] = hashlib.sha256(source.encode()).hexdigest()[:16]
    return cfg
  except Exception:  # noqa: BLE001 - provenance only; never fail a relaxation over it
    return None


def _job_metadata(job: Job, relax_settings) -> dict:
  """What every stored relaxation records about its job and the software that ran it."""
  return {
    "name": job.name,
    "formula": job.formula,
    "seed": job.seed,
    "index": job.index,
    "source": "teacher-relaxation",
    "relax_settings": dict(relax_settings),
    "versions": package_versions(),
  }


def _write_exception(job: Job, error: Exception, output_dir: str, relax_settings, teacher_info):
  """Record a relaxation that raised as failed (zero frames) so the run goes on and skips it."""
  text = str(error).strip().splitlines()
  reason = f"exception {type(error).__name__}: {text[0][:200] if text else ''}"
  metadata = {
    **_job_metadata(job, relax_settings),
    **teacher_info,
    "converged": False,
    "failed": True,
    "failure_reason": reason,
    "steps": 0,
    "n_atoms": 0,
    "wall_seconds": 0.0,
  }
  frames_lib.from_arrays([], trajectory_names=[job.name], metadata=metadata).save(
    job.path(output_dir)
  )
  return metadata


def read_metadata(path: str) -> dict:
  """Only the metadata of one relaxation file (cheap; no frame arrays decompressed)."""
  try:
    with np.load(path, allow_pickle=False) as data:
      return json.loads(str(data["metadata"]))
  except Exception as e:  # noqa: BLE001
    raise InputError(f"{path}: cannot read teacher metadata ({type(e).__name__}: {e})") from None


def finished_files(output_dir: str) -> list[str]:
  """All relaxation files under ``output_dir`` (sorted)."""
  return sorted(glob.glob(os.path.join(output_dir, "*", "*.npz")))


def generate(
  jobs: Sequence[Job],
  force_field,
  *,
  output_dir: str,
  random_config: rs.RandomStructureConfig,
  relax_settings: dict,
  teacher_info: dict | None = None,
  relax_fn: Callable | None = None,
  progress: bool = True,
  log: Callable[[str], None] | None = None,
) -> dict:
  """Run every job whose file does not exist yet; returns counts and timing.

  Returns:
    ``{'done_before', 'ran', 'converged', 'failed', 'seconds'}``.
  """
  teacher_info = dict(teacher_info or {"teacher": getattr(force_field, "name", "unknown")})
  todo = [j for j in jobs if not os.path.exists(j.path(output_dir))]
  summary = {
    "done_before": len(jobs) - len(todo),
    "ran": 0,
    "converged": 0,
    "failed": 0,
    "seconds": 0.0,
    "steps": 0,
  }
  iterator = todo
  bar = None
  if progress:
    from tqdm import tqdm

    bar = tqdm(todo, desc="teacher", unit="relax", mininterval=5.0)
    iterator = bar
  for job in iterator:
    try:
      meta = run_job(
        job,
        force_field,
        output_dir=output_dir,
        random_config=random_config,
        relax_settings=relax_settings,
        teacher_info=teacher_info,
        relax_fn=relax_fn,
      )
    except InputError:
      raise
    except Exception as e:  # noqa: BLE001 - one bad relaxation must not stop a long run.
      meta = _write_exception(job, e, output_dir, relax_settings, teacher_info)
    summary["ran"] += 1
    summary["converged"] += int(meta["converged"])
    summary["failed"] += int(meta["failed"])
    summary["seconds"] += float(meta["wall_seconds"])
    summary["steps"] += int(meta["steps"])
    if log is not None:
      log(
        f"{job.name}: atoms={meta['n_atoms']} steps={meta['steps']} "
        f"converged={meta['converged']} failed={meta['failed']} "
        f"reason={meta['failure_reason']} seconds={meta['wall_seconds']:.1f}"
      )
    if bar is not None:
      bar.set_postfix(conv=summary["converged"], fail=summary["failed"])
  return summary


# ----------------------------------------------------------------------------
# A cheap analytic teacher for tests and dry runs.


def morse_force_field(*, depth: float = 0.3, alpha: float = 1.3, r0: float = 2.7, cutoff=5.5):
  """A jittable Morse pair potential over all atoms and ±2 periodic images (tests/dry runs).

  ``E = sum_{i<j,images} D [(1 - exp(-a (r - r0)))^2 - 1] * s(r)`` with a smooth
  cosine cutoff ``s``; forces and stress by autodiff
  (:class:`~crystal_search.force_fields.base.EnergyForceField`).
  """
  import itertools

  import jax.numpy as jnp

  from crystal_search.force_fields.base import EnergyForceField

  shifts = jnp.asarray(list(itertools.product(range(-2, 3), repeat=3)), jnp.float32)

  def energy_fn(crystals):
    cart = crystals.cartesian()  # [B, N, 3]
    offsets = jnp.einsum("ki,bij->bkj", shifts.astype(cart.dtype), crystals.lattice)
    d = cart[:, :, None, None, :] - cart[:, None, :, None, :] - offsets[:, None, None, :, :]
    r2 = jnp.sum(d * d, axis=-1)  # [B, N, N, K]
    pair = crystals.mask[:, :, None, None] & crystals.mask[:, None, :, None]
    valid = pair & (r2 > 1e-6) & (r2 < cutoff**2)
    r = jnp.sqrt(jnp.where(valid, r2, 1.0))
    morse = depth * ((1 - jnp.exp(-alpha * (r - r0))) ** 2 - 1)
    smooth = 0.5 * (jnp.cos(jnp.pi * r / cutoff) + 1)
    return 0.5 * jnp.sum(jnp.where(valid, morse * smooth, 0.0), axis=(1, 2, 3))

  return EnergyForceField(energy_fn, name="morse-test")
