"""ASE interoperability in both directions.

* :class:`AseForceField`: any ASE calculator as a host force field (numpy
  :class:`~crystal_search.crystals.Crystals` in, ``ForceFieldOutput`` out), so
  :func:`crystal_search.relax.relax_structures` can drive EMT, LAMMPS, GPAW, ...
  ASE's stress (eV/Å^3, tensile positive) is converted with
  :func:`crystal_search.units.stress_from_ase`.
* :class:`CrystalSearchCalculator`: an ASE ``Calculator`` around any of our force
  fields (jittable or host), so ASE optimisers, filters and MD can use our
  models.  Stress goes back to ASE with :func:`crystal_search.units.stress_to_ase`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from crystal_search.crystals import Crystals, bucket_size
from crystal_search.force_fields.base import ForceFieldOutput
from crystal_search.units import stress_from_ase, stress_to_ase


def atoms_from_crystals(crystals: Crystals, index: int) -> Atoms:
  """Structure ``index`` of a (numpy) batch as periodic ASE ``Atoms``."""
  n = int(np.asarray(crystals.n_atoms)[index])
  return Atoms(
    numbers=np.asarray(crystals.atomic_numbers)[index, :n],
    scaled_positions=np.asarray(crystals.positions, np.float64)[index, :n],
    cell=np.asarray(crystals.lattice, np.float64)[index],
    pbc=True,
  )


def crystals_from_atoms(atoms: Atoms, *, max_atoms: int | None = None, dtype=np.float32):
  """One periodic ``Atoms`` as a batch of one, padded to ``max_atoms`` (default: its bucket)."""
  n = len(atoms)
  width = max_atoms or bucket_size(n)
  positions = np.zeros((1, width, 3), dtype)
  positions[0, :n] = atoms.get_scaled_positions(wrap=False)
  numbers = np.zeros((1, width), np.int32)
  numbers[0, :n] = atoms.numbers
  mask = np.zeros((1, width), bool)
  mask[0, :n] = True
  return Crystals(
    positions=positions,
    lattice=np.asarray(atoms.cell.array, dtype)[None],
    atomic_numbers=numbers,
    mask=mask,
    n_atoms=np.asarray([n], np.int32),
  )


@dataclasses.dataclass
class AseForceField:
  """Any ASE calculator as a host force field.

  Attributes:
    calculator: an ASE ``Calculator`` instance, or a zero-argument factory that
      makes one (called once, on first use).
    name: label for reports.
    elements: supported element symbols (None: any).

  A structure the calculator cannot evaluate (it raises) gets NaN forces,
  stress and energy, which the relaxer reports as a ``"nan"`` failure.
  """

  calculator: Calculator | Callable[[], Calculator]
  name: str = "ase"
  elements: tuple[str, ...] | None = None
  jittable: bool = dataclasses.field(default=False, init=False)

  def _calc(self) -> Calculator:
    if not isinstance(self.calculator, Calculator):
      self.calculator = self.calculator()
    return self.calculator

  def __call__(self, crystals: Crystals) -> ForceFieldOutput:
    """Forces ``[B, N, 3]`` eV/Å, stress ``[B, 3, 3]`` kBar, energy ``[B]`` eV (numpy)."""
    n_atoms = np.asarray(crystals.n_atoms)
    b, n = np.asarray(crystals.positions).shape[:2]
    forces = np.zeros((b, n, 3), np.float64)
    stress = np.zeros((b, 3, 3), np.float64)
    energy = np.full((b,), np.nan, np.float64)
    calc = self._calc()
    for k in range(b):
      m = int(n_atoms[k])
      if m == 0:
        continue
      atoms = atoms_from_crystals(crystals, k)
      atoms.calc = calc
      try:
        f = atoms.get_forces()
        s = atoms.get_stress(voigt=True)
      except Exception:  # noqa: BLE001 - any calculator error: this structure is reported as NaN.
        forces[k, :m] = np.nan
        stress[k] = np.nan
        continue
      forces[k, :m] = f
      stress[k] = stress_from_ase(s)
      try:
        energy[k] = float(atoms.get_potential_energy())
      except Exception:  # noqa: BLE001 - some calculators give no energy: NaN means unknown.
        energy[k] = np.nan
    return ForceFieldOutput(
      forces=forces, stress=stress, energy=energy, overflow=np.zeros((b,), bool)
    )

  def grow(self) -> AseForceField:
    return self


_JIT_CACHE: dict = {}


def _jit(force_field) -> Callable:
  """``jax.jit`` of a jittable force field, shared by calculators of the same (hashable) one."""
  try:
    hash(force_field)
  except TypeError:
    return jax.jit(force_field.__call__)
  if force_field not in _JIT_CACHE:
    if len(_JIT_CACHE) > 16:
      _JIT_CACHE.pop(next(iter(_JIT_CACHE)))
    _JIT_CACHE[force_field] = jax.jit(force_field.__call__)
  return _JIT_CACHE[force_field]


class CrystalSearchCalculator(Calculator):
  """An ASE calculator around any crystal-search force field (periodic cells only).

  Args:
    force_field: jittable or host force field.
    max_retries: capacity growths allowed when the force field overflows.

  Properties: ``energy``/``free_energy`` (eV; NaN if the force field gives
  none), ``forces`` (eV/Å), ``stress`` (eV/Å^3, ASE's Voigt order and sign).
  """

  implemented_properties = ["energy", "free_energy", "forces", "stress"]

  def __init__(self, force_field, *, max_retries: int = 8, **kwargs):
    super().__init__(**kwargs)
    self.force_field = force_field
    self.max_retries = max_retries
    self._jitted = None

  def _evaluate(self, crystals: Crystals) -> ForceFieldOutput:
    if not getattr(self.force_field, "jittable", False):
      return self.force_field(crystals)
    if self._jitted is None:
      self._jitted = _jit(self.force_field)
    return self._jitted(jax.tree_util.tree_map(jnp.asarray, crystals))

  def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
    super().calculate(atoms, properties, system_changes)
    if not np.all(self.atoms.pbc):
      raise ValueError("CrystalSearchCalculator needs a periodic cell (pbc=True)")
    crystals = crystals_from_atoms(self.atoms)
    for _ in range(self.max_retries + 1):
      out = self._evaluate(crystals)
      if not bool(np.any(np.asarray(out.overflow))):
        break
      self.force_field = self.force_field.grow()
      self._jitted = None
    else:
      raise RuntimeError(f"{self.force_field.name}: neighbour capacity still overflows")
    n = len(self.atoms)
    energy = float(np.asarray(out.energy)[0])
    self.results = {
      "energy": energy,
      "free_energy": energy,
      "forces": np.asarray(out.forces, np.float64)[0, :n],
      "stress": stress_to_ase(np.asarray(out.stress, np.float64)[0]),
    }
