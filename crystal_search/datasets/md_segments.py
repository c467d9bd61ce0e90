"""Long teacher MD in resumable segments, round-robin over phases (Cheon et al. 2020, app. 7.2).

A phase's run lives in its own folder ``<output_dir>/<name>/`` as segment files
``seg_<index:05d>.npz``: each is a :class:`~crystal_search.datasets.frames.Frames` set
(the frames recorded in that segment, every ``sample_every`` steps, near-duplicates of the
previously kept frame dropped with StructureMatcher) whose ``metadata["state"]`` holds what
ASE's Langevin integrator needs to continue exactly: Cartesian positions (Å), momenta
(amu Å/fs in ASE units), cell (Å), the thermostat's numpy ``Generator`` state and the step.
Each file is written atomically, so a killed run loses at most the segment in flight and a
rerun continues from the last file; with the same seed a resumed run gives the frames of an
uninterrupted one.

A segment whose temperature exceeds ``max_temperature_factor`` times the target, or whose
energy or forces turn non-finite, is not written: the phase stops with a ``diverged.json``
marker and one line, and the other phases go on.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
from pymatgen.core import Structure

from crystal_search.datasets import frames as frames_lib
from crystal_search.datasets import md
from crystal_search.errors import InputError


@dataclasses.dataclass(frozen=True)
class MDSettings:
  """NVT settings shared by every phase of a run."""

  temperature_k: float = 800.0
  timestep_fs: float = 2.0
  friction_per_fs: float = 0.01
  sample_every: int = 10
  segment_steps: int = 250
  stol: float | None = 0.05
  max_temperature_factor: float = 3.0

  def __post_init__(self):
    if self.segment_steps <= 0 or self.sample_every <= 0:
      raise InputError("segment_steps and sample_every must be positive")
    if self.segment_steps % self.sample_every:
      raise InputError(
        f"segment_steps {self.segment_steps} is not a multiple of sample_every {self.sample_every}"
      )


class Diverged(InputError):
  """An MD segment whose temperature or energy ran away."""


def segment_paths(phase_dir: str) -> list[str]:
  return sorted(glob.glob(os.path.join(phase_dir, "seg_*.npz")))


def diverged_reason(phase_dir: str) -> str | None:
  """The recorded divergence of a phase, or None."""
  path = os.path.join(phase_dir, "diverged.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)["reason"]


def steps_done(phase_dir: str) -> int:
  paths = segment_paths(phase_dir)
  return frames_lib.load(paths[-1]).metadata["state"]["step"] if paths else 0


def _write_json(path: str, obj: dict) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".json.tmp")
  with os.fdopen(fd, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def _start(structure: Structure, settings: MDSettings, seed: int):
  """Atoms with Maxwell–Boltzmann velocities (seeded) and the thermostat's Generator."""
  from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
  from pymatgen.io.ase import AseAtomsAdaptor

  atoms = AseAtomsAdaptor.get_atoms(structure)
  rng = np.random.default_rng(seed)
  MaxwellBoltzmannDistribution(atoms, temperature_K=settings.temperature_k, rng=rng)
  Stationary(atoms)
  return atoms, rng, 0, None


def _resume(paths: list[str]):
  """Atoms, Generator, step and the last kept structure from the segment files."""
  from ase import Atoms

  last = frames_lib.load(paths[-1])
  state = last.metadata["state"]
  atoms = Atoms(
    numbers=state["numbers"], positions=state["positions"], cell=state["cell"], pbc=True
  )
  atoms.set_momenta(np.asarray(state["momenta"]), apply_constraint=False)
  rng = np.random.default_rng()
  rng.bit_generator.state = state["rng"]
  kept = None
  for path in reversed(paths):
    frames = last if path == paths[-1] else frames_lib.load(path)
    if len(frames):
      kept = frames.structure(len(frames) - 1)
      break
  return atoms, rng, int(state["step"]), kept


def _langevin(atoms, calculator, rng: np.random.Generator, settings: MDSettings):
  """ASE's Langevin NVT integrator on ``atoms`` (centre of mass fixed), noise from ``rng``."""
  from ase import units
  from ase.constraints import FixCom
  from ase.md.langevin import Langevin

  atoms.calc = calculator
  atoms.set_constraint(FixCom())
  return Langevin(
    atoms,
    timestep=settings.timestep_fs * units.fs,
    temperature_K=settings.temperature_k,
    friction=settings.friction_per_fs / units.fs,
    fixcm=False,
    rng=rng,
  )


def _state(atoms, rng: np.random.Generator, step: int) -> dict:
  """What :func:`_resume` needs to continue exactly (JSON-able)."""
  return {
    "step": step,
    "numbers": atoms.numbers.tolist(),
    "positions": atoms.positions.tolist(),
    "momenta": atoms.get_momenta().tolist(),
    "cell": np.asarray(atoms.cell[:]).tolist(),
    "rng": rng.bit_generator.state,
  }


class _Watch:
  """Per-step divergence check: the largest temperature (K) and the first problem seen."""

  def __init__(self, atoms, dyn, step0: int, limit_k: float):
    self.atoms, self.dyn, self.step0, self.limit_k = atoms, dyn, step0, limit_k
    self.max_t, self.bad = 0.0, None

  def __call__(self) -> None:
    t = float(self.atoms.get_temperature())
    self.max_t = max(self.max_t, t)
    energy = float(self.atoms.get_potential_energy())
    if self.bad is not None:
      return
    step = self.step0 + self.dyn.nsteps
    if not np.isfinite(energy) or not np.all(np.isfinite(self.atoms.get_forces())):
      self.bad = f"non-finite energy or forces at step {step}"
    elif not np.isfinite(t) or t > self.limit_k:
      self.bad = f"temperature {t:.0f} K > {self.limit_k:.0f} K at step {step}"


def run_segment(
  phase_dir: str, structure: Structure, calculator, settings: MDSettings, *, seed: int
) -> frames_lib.Frames:
  """Run the next segment of a phase's NVT run and write it; returns its frames.

  Raises:
    Diverged: the temperature exceeded ``max_temperature_factor`` x target or the energy or
      forces became non-finite; nothing is written and ``diverged.json`` records the reason.
  """
  from pymatgen.io.ase import AseAtomsAdaptor

  os.makedirs(phase_dir, exist_ok=True)
  paths = segment_paths(phase_dir)
  atoms, rng, step0, kept = _resume(paths) if paths else _start(structure, settings, seed)
  dyn = _langevin(atoms, calculator, rng, settings)
  matcher = None
  if settings.stol is not None:
    from crystal_search.metrics import dataset_matcher

    matcher = dataset_matcher(stol=settings.stol)
  records, temperatures = [], []
  watch = _Watch(atoms, dyn, step0, settings.max_temperature_factor * settings.temperature_k)

  def record(step: int) -> None:
    nonlocal kept
    current = AseAtomsAdaptor.get_structure(atoms)
    if matcher is not None and kept is not None and matcher.fit(kept, current):
      return
    kept = current
    temperatures.append(float(atoms.get_temperature()))
    records.append(md.frame_record(atoms, step))

  t0 = time.perf_counter()
  dyn.attach(watch, interval=1)
  if step0 == 0:
    watch()
    record(0)
  done = 0
  while done < settings.segment_steps and watch.bad is None:
    dyn.run(settings.sample_every)
    done += settings.sample_every
    if watch.bad is None:
      record(step0 + done)
  name = os.path.basename(os.path.normpath(phase_dir))
  if watch.bad is not None:
    reason = f"{name}: MD diverged: {watch.bad} (target {settings.temperature_k:.0f} K)"
    _write_json(os.path.join(phase_dir, "diverged.json"), {"reason": reason})
    raise Diverged(reason)
  state = _state(atoms, rng, step0 + done)
  metadata = {
    "source": "teacher-md",
    "name": name,
    "segment": len(paths),
    "first_step": step0,
    "state": state,
    "settings": dataclasses.asdict(settings),
    "seed": seed,
    "mean_temperature_k": float(np.mean(temperatures)) if temperatures else None,
    "max_temperature_k": watch.max_t,
    "wall_seconds": time.perf_counter() - t0,
  }
  frames = frames_lib.from_arrays(records, trajectory_names=[name], metadata=metadata)
  frames.save(os.path.join(phase_dir, f"seg_{len(paths):05d}.npz"))
  return frames


def collect(phase_dir: str, extra_metadata: dict | None = None) -> frames_lib.Frames:
  """All segments of a phase joined into one trajectory (one Frames, float64 labels).

  ``metadata`` holds the settings, steps, ``simulated_ps``, frames, mean temperature of the
  kept frames, summed wall seconds, and ``diverged`` (the reason, or None).
  """
  paths = segment_paths(phase_dir)
  if not paths:
    raise InputError(f"{phase_dir}: no MD segments")
  parts = [frames_lib.load(p) for p in paths]
  name = parts[0].metadata["name"]
  joined = frames_lib.concatenate(parts)
  joined.trajectory[:] = 0
  joined.trajectory_names = [name]
  settings = parts[0].metadata["settings"]
  steps = parts[-1].metadata["state"]["step"]
  weights = [len(p) for p in parts]
  temps = [p.metadata["mean_temperature_k"] or 0.0 for p in parts]
  joined.metadata = {
    "source": "teacher-md",
    "name": name,
    "formula": joined.structure(0).composition.reduced_formula,
    **settings,
    "segments": len(parts),
    "steps": steps,
    "simulated_ps": steps * settings["timestep_fs"] / 1000.0,
    "frames": len(joined),
    "seed": parts[0].metadata["seed"],
    "mean_temperature_k": float(np.average(temps, weights=weights)) if sum(weights) else None,
    "max_temperature_k": max(p.metadata["max_temperature_k"] for p in parts),
    "wall_seconds": float(sum(p.metadata["wall_seconds"] for p in parts)),
    "n_atoms": int(joined.n_atoms[0]),
    "diverged": diverged_reason(phase_dir),
    "converged": False,
    "failed": False,
    **(extra_metadata or {}),
  }
  return joined


@dataclasses.dataclass
class Phase:
  """One phase's run: its folder name, MD cell and seed."""

  name: str
  structure: Structure
  seed: int = 0


def run_round_robin(
  phases: Sequence[Phase],
  calculator,
  output_dir: str,
  settings: MDSettings,
  *,
  total_steps: int,
  deadline: float | None = None,
  log: Callable[[str], None] = print,
) -> dict[str, str]:
  """Advance every phase one segment at a time, in turn, until each has ``total_steps`` steps,
  has diverged, or ``deadline`` (``time.time()``) passes.  A phase that diverges or whose
  calculator fails is reported in one ``error: ...`` line and dropped; the others go on.

  Returns ``{name: "done" | "stopped" | "error: ..."}``.
  """
  status: dict[str, str] = {}
  active = []
  for phase in phases:
    phase_dir = os.path.join(output_dir, phase.name)
    reason = diverged_reason(phase_dir)
    if reason is not None:
      status[phase.name] = f"error: {reason}"
      log(status[phase.name])
    elif steps_done(phase_dir) >= total_steps:
      status[phase.name] = "done"
    else:
      active.append(phase)
  while active:
    for phase in list(active):
      if deadline is not None and time.time() > deadline:
        for p in active:
          status[p.name] = "stopped"
        return status
      phase_dir = os.path.join(output_dir, phase.name)
      try:
        frames = run_segment(phase_dir, phase.structure, calculator, settings, seed=phase.seed)
      except Diverged as e:
        status[phase.name] = f"error: {e}"
      except Exception as e:  # noqa: BLE001 - a calculator failure stops this phase only
        status[phase.name] = f"error: {phase.name}: {type(e).__name__}: {e}".splitlines()[0]
      else:
        meta = frames.metadata
        step = meta["state"]["step"]
        log(
          f"{phase.name}: step {step} ({step * settings.timestep_fs / 1000:.2f} ps), "
          f"{len(frames)} frames, mean T {meta['mean_temperature_k'] or 0:.0f} K, "
          f"{meta['wall_seconds']:.0f} s"
        )
        if step < total_steps:
          continue
        status[phase.name] = "done"
      if status[phase.name].startswith("error"):
        log(status[phase.name])
      active.remove(phase)
  return status


def shard_of(items: Sequence, shard: str) -> list:
  """The items of shard ``"I/N"`` (every N-th, from the I-th; ``I`` counts from 0)."""
  try:
    i, n = (int(x) for x in shard.split("/"))
  except ValueError:
    raise InputError(f"--shard {shard!r}: expected I/N, e.g. 0/2") from None
  if not 0 <= i < n:
    raise InputError(f"--shard {shard!r}: need 0 <= I < N")
  return list(items)[i::n]


def md_phases(
  structures: dict[str, Structure],
  formulas: Sequence[str],
  *,
  seed: int = 0,
  min_atoms: int = 64,
  max_atoms: int = 78,
  nearest_outside: bool = True,
  log: Callable[[str], None] = print,
) -> list[Phase]:
  """The MD cells of ``formulas`` (:func:`crystal_search.datasets.md.md_cell`), one line each; a
  phase without a cell is reported in one ``error: ...`` line and left out."""
  missing = [f for f in formulas if f not in structures]
  if missing:
    raise InputError(
      f"--phases: no bundled structure for {', '.join(missing)} ({sorted(structures)})"
    )
  phases = []
  for formula in formulas:
    try:
      cell, note = md.md_cell(
        structures[formula],
        min_atoms=min_atoms,
        max_atoms=max_atoms,
        nearest_outside=nearest_outside,
      )
    except InputError as e:
      log(f"error: {e}")
      continue
    cell.properties["cell_note"] = note
    log(f"{formula}: {note}, supercell matrix {cell.properties['supercell_matrix']}")
    phases.append(Phase(f"{formula}_md_{seed}", cell, seed))
  return phases
