"""Teacher molecular dynamics frames (Cheon et al. 2020, appendix 7.2, "Molecular Dynamics").

The paper ran VASP NVT at 800 K with 2 fs steps on 64–78-atom supercells of the
experimentally characterised phases (≥ 47 ps).  Here the teacher (CHGNet, through its
ASE calculator, or any ASE calculator) drives ASE's Langevin NVT integrator at the
same temperature and time step on supercells of the bundled known phases, a frame
is recorded every ``sample_every`` steps, and a frame that StructureMatcher
(``stol=0.05``) matches to the previously kept one is dropped as a near-duplicate.
The length is configurable; what a CPU run of a few hours can afford is far shorter than the
paper's runs.  Long runs go in resumable segments, round-robin over phases
(:mod:`crystal_search.datasets.md_segments`).

Stress is the calculator's (potential) stress converted from ASE's eV/Å^3
(tensile positive) to kBar with :func:`crystal_search.units.stress_from_ase`.
"""

from __future__ import annotations

import glob
import os
import time
import warnings

import numpy as np
from pymatgen.core import Structure

from crystal_search.datasets import frames as frames_lib
from crystal_search.errors import InputError
from crystal_search.random_structures import LISI_PHASES_DIR
from crystal_search.units import stress_from_ase

#: The bundled known phases of the training stoichiometries' system except the held-out Li15Si4.
DEFAULT_MD_PHASES = ("LiSi", "Li12Si7", "Li7Si3", "Li13Si4")


def _min_width(matrix: np.ndarray) -> float:
  """Smallest perpendicular width (Å) of the cell with lattice rows ``matrix``."""
  volume = abs(np.linalg.det(matrix))
  return min(
    volume / np.linalg.norm(np.cross(matrix[(i + 1) % 3], matrix[(i + 2) % 3])) for i in range(3)
  )


def supercell_in_range(
  structure: Structure, *, min_atoms: int = 64, max_atoms: int = 78
) -> Structure | None:
  """The most compact supercell of the primitive cell with ``min_atoms <= n <= max_atoms``, or None.

  Candidates, for every multiple ``k`` of the primitive cell in the range: the integer matrices
  (non-diagonal in general) that ASE's :func:`~ase.build.find_optimal_cell_shape` finds closest
  to a simple-cubic and to an fcc cell, and the diagonal multiples of the given cell.  Each is Niggli-reduced and
  the one whose smallest perpendicular width (Å) is largest wins (ties: fewer atoms), i.e. the
  cell in which an atom's periodic images lie farthest apart.
  ``properties["supercell_matrix"]`` holds the matrix (rows, in primitive-cell vectors).
  """
  import itertools

  from ase.build.supercells import find_optimal_cell_shape

  primitive = structure.get_primitive_structure()
  lattice = primitive.lattice.matrix
  n = len(primitive)
  candidates = []
  for k in range(max(1, -(-min_atoms // n)), max_atoms // n + 1):
    for shape in ("sc", "fcc"):
      candidates.append(np.asarray(find_optimal_cell_shape(lattice, k, shape), int))
  # Diagonal multiples of the given (conventional) cell, written in primitive-cell vectors.
  to_primitive = structure.lattice.matrix @ np.linalg.inv(lattice)
  for mult in itertools.product(range(1, 7), repeat=3):
    matrix = np.rint(np.diag(mult) @ to_primitive).astype(int)
    if min_atoms <= len(structure) * int(np.prod(mult)) <= max_atoms:
      candidates.append(matrix)
  best, best_key = None, None
  for matrix in candidates:
    if round(abs(np.linalg.det(matrix))) == 0:
      continue
    cell = primitive.make_supercell(matrix.tolist(), in_place=False).get_reduced_structure("niggli")
    key = (-round(_min_width(cell.lattice.matrix), 6), len(cell))
    if best_key is None or key < best_key:
      best, best_key = cell, key
      best.properties["supercell_matrix"] = matrix.tolist()
  return best


def md_cell(
  structure: Structure, *, min_atoms: int = 64, max_atoms: int = 78, nearest_outside: bool = True
) -> tuple[Structure, str]:
  """The MD cell of a phase and a one-line note on how it was chosen.

  The most cubic supercell in the atom range (:func:`supercell_in_range`).  A phase with no
  multiple of its primitive cell in the range raises :class:`InputError`, or, with
  ``nearest_outside``, runs in the multiple whose atom count lies nearest the range (ties:
  the smaller), the most cubic one of that size.
  """
  cell = supercell_in_range(structure, min_atoms=min_atoms, max_atoms=max_atoms)
  if cell is not None:
    return cell, f"{len(cell)} atoms (in {min_atoms}-{max_atoms})"
  n = len(structure.get_primitive_structure())
  formula = structure.composition.reduced_formula
  if not nearest_outside:
    raise InputError(
      f"{formula}: no supercell of its {n}-atom primitive cell has {min_atoms}-{max_atoms} atoms"
    )
  below, above = (min_atoms // n) * n, -(-min_atoms // n) * n
  target = below if below and min_atoms - below <= above - max_atoms else above
  cell = supercell_in_range(structure, min_atoms=target, max_atoms=target)
  return cell, f"{len(cell)} atoms (no multiple of {n} in {min_atoms}-{max_atoms}: the nearest)"


def known_phases(directory: str = LISI_PHASES_DIR) -> dict[str, Structure]:
  """``{reduced formula: conventional structure}`` of the bundled known phases."""
  from pymatgen.io.cif import CifParser

  out = {}
  for path in sorted(glob.glob(os.path.join(directory, "*.cif"))):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      s = CifParser(path).parse_structures(primitive=False)[0]
    out.setdefault(s.composition.reduced_formula, s)
  return out


def frame_record(atoms, step: int) -> dict:
  """The ASE atoms' current frame in :func:`frames.from_arrays` form (eV/Å, kBar)."""
  return {
    "numbers": atoms.numbers.copy(),
    "positions": atoms.get_scaled_positions(wrap=False),
    "forces": atoms.get_forces().copy(),
    "lattice": np.asarray(atoms.cell[:]).copy(),
    "stress": stress_from_ase(atoms.get_stress(voigt=False)),
    "energy": float(atoms.get_potential_energy()),
    "trajectory": 0,
    "step": step,
  }


def run_nvt(
  structure: Structure,
  calculator,
  *,
  steps: int,
  temperature_k: float = 800.0,
  timestep_fs: float = 2.0,
  friction_per_fs: float = 0.01,
  sample_every: int = 10,
  seed: int = 0,
  name: str = "md",
  stol: float | None = 0.05,
  progress: bool = False,
) -> frames_lib.Frames:
  """Langevin NVT with an ASE calculator; returns the sampled frames (one trajectory).

  Args:
    structure: starting structure.
    calculator: an ASE calculator (e.g. ``CHGNetForceField.ase_calculator()``).
    steps: MD steps.
    temperature_k: thermostat temperature (K).
    timestep_fs: time step (fs).
    friction_per_fs: Langevin friction (1/fs).
    sample_every: record a frame every this many steps (step 0 included).
    seed: seeds the initial velocities and the thermostat noise.
    stol: StructureMatcher ``stol`` for dropping a frame that matches the previous
      kept one (None keeps every sampled frame).

  Returns:
    Frames with positions (fractional), forces (eV/Å), stress (kBar), potential
    energy (eV), ``step`` the MD step; metadata holds the settings, the mean
    temperature of the sampled frames and wall seconds.
  """
  from ase import units
  from ase.md.langevin import Langevin
  from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
  from pymatgen.io.ase import AseAtomsAdaptor

  matcher = None
  if stol is not None:
    from crystal_search.metrics import dataset_matcher

    matcher = dataset_matcher(stol=stol)
  from ase.constraints import FixCom

  atoms = AseAtomsAdaptor.get_atoms(structure)
  atoms.calc = calculator
  atoms.set_constraint(FixCom())
  rng = np.random.default_rng(seed)
  MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_k, rng=rng)
  Stationary(atoms)
  dyn = Langevin(
    atoms,
    timestep=timestep_fs * units.fs,
    temperature_K=temperature_k,
    friction=friction_per_fs / units.fs,
    fixcm=False,
    rng=rng,
  )
  records = []
  temperatures = []
  last = {"structure": None}
  t0 = time.perf_counter()

  def record(step: int) -> None:
    current = AseAtomsAdaptor.get_structure(atoms)
    if matcher is not None and last["structure"] is not None:
      if matcher.fit(last["structure"], current):
        return
    last["structure"] = current
    temperatures.append(float(atoms.get_temperature()))
    records.append(frame_record(atoms, step))

  bar = None
  if progress:
    from tqdm import tqdm

    bar = tqdm(total=steps, desc=name, unit="step", mininterval=5.0)
  record(0)
  done = 0
  while done < steps:
    n = min(sample_every, steps - done)
    dyn.run(n)
    done += n
    if bar is not None:
      bar.update(n)
    if done % sample_every == 0:
      record(done)
  if bar is not None:
    bar.close()
  metadata = {
    "source": "teacher-md",
    "name": name,
    "formula": structure.composition.reduced_formula,
    "temperature_k": temperature_k,
    "timestep_fs": timestep_fs,
    "friction_per_fs": friction_per_fs,
    "steps": steps,
    "simulated_ps": steps * timestep_fs / 1000.0,
    "sample_every": sample_every,
    "stol": stol,
    "seed": seed,
    "mean_temperature_k": float(np.mean(temperatures)) if temperatures else None,
    "wall_seconds": time.perf_counter() - t0,
    "n_atoms": len(structure),
    "converged": False,
    "failed": False,
  }
  return frames_lib.from_arrays(records, trajectory_names=[name], metadata=metadata)
