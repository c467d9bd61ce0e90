"""Teacher molecular dynamics frames (Cheon et al. 2020, appendix 7.2, "Molecular Dynamics").

The paper ran VASP NVT at 800 K with 2 fs steps on 64–78-atom supercells of the
experimentally characterised phases (≥ 47 ps).  Here the teacher (CHGNet, through its
ASE calculator, or any ASE calculator) drives ASE's Langevin NVT integrator at the
same temperature and time step on supercells of the bundled known phases, a frame
is recorded every ``sample_every`` steps, and a frame that StructureMatcher
(``stol=0.05``) matches to the previously kept one is dropped as a near-duplicate.
The length is configurable; what a CPU run of a few hours can afford is far shorter than the
paper's runs.

Stress is the calculator's (potential) stress converted from ASE's eV/Å^3
(tensile positive) to kBar with :func:`crystal_search.units.stress_from_ase`.
"""

from __future__ import annotations

import glob
import itertools
import os
import time
import warnings

import numpy as np
from pymatgen.core import Structure

from crystal_search.datasets import frames as frames_lib
from crystal_search.random_structures import LISI_PHASES_DIR
from crystal_search.units import stress_from_ase

#: The paper's MD stoichiometries except the held-out Li15Si4.
DEFAULT_MD_PHASES = ("LiSi", "Li13Si4", "Li2Si", "Li7Si2")


def supercell_in_range(
  structure: Structure, *, min_atoms: int = 64, max_atoms: int = 78, max_factor: int = 4
) -> Structure | None:
  """The most compact diagonal supercell with ``min_atoms <= n <= max_atoms`` atoms, or None.

  Among the diagonal multiples ``(a, b, c)`` whose atom count lies in the range, the
  one whose shortest perpendicular cell width is largest is chosen.
  """
  n = len(structure)
  best, best_width = None, -1.0
  for mult in itertools.product(range(1, max_factor + 1), repeat=3):
    count = n * int(np.prod(mult))
    if not min_atoms <= count <= max_atoms:
      continue
    matrix = structure.lattice.matrix * np.asarray(mult)[:, None]
    volume = abs(np.linalg.det(matrix))
    widths = [
      volume / np.linalg.norm(np.cross(matrix[(i + 1) % 3], matrix[(i + 2) % 3])) for i in range(3)
    ]
    if min(widths) > best_width:
      best, best_width = mult, min(widths)
  if best is None:
    return None
  return structure.make_supercell(list(best), in_place=False)


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
    records.append(
      {
        "numbers": atoms.numbers.copy(),
        "positions": atoms.get_scaled_positions(wrap=False),
        "forces": atoms.get_forces().copy(),
        "lattice": np.asarray(atoms.cell[:]).copy(),
        "stress": stress_from_ase(atoms.get_stress(voigt=False)),
        "energy": float(atoms.get_potential_energy()),
        "trajectory": 0,
        "step": step,
      }
    )

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
