"""The Li–Si MEAM baseline: published lattice constants, forces and stress by finite differences."""

import numpy as np
import pytest
from ase.build import bulk
from pymatgen.core import Lattice, Structure

from crystal_search import crystals as crystals_lib
from crystal_search.errors import InputError
from crystal_search.units import EV_PER_A3_TO_KBAR

pytestmark = pytest.mark.meam


@pytest.fixture(scope="module")
def meam():
  from crystal_search.force_fields.lammps_meam import MEAMForceField

  return MEAMForceField()


def _skewed_lisi(seed: int = 0) -> Structure:
  """A rattled 8-atom Li3Si5 cell with a general (not lower-triangular) skewed lattice."""
  rng = np.random.default_rng(seed)
  base = bulk("Si", "diamond", a=5.6, cubic=True)
  lattice = base.cell.array @ (np.eye(3) + 0.12 * rng.normal(size=(3, 3)))
  frac = base.get_scaled_positions() + 0.02 * rng.normal(size=(8, 3))
  species = ["Li", "Li", "Li", "Si", "Si", "Si", "Si", "Si"]
  return Structure(Lattice(lattice), species, frac)


def _energy(meam, structure: Structure) -> float:
  batch = crystals_lib.from_structures([structure], dtype=np.float64)
  return float(meam(batch).energy[0])


@pytest.mark.parametrize(
  "element,kind,a_ref,e_ref",
  # Published library values (crystal_search/data/README.md, shared/data/README.md).
  [("Li", "bcc", 3.452, -1.647), ("Si", "diamond", 5.422, -4.629)],
)
def test_equilibrium_lattice_constant_and_energy(meam, element, kind, a_ref, e_ref):
  grid = np.linspace(a_ref * 0.97, a_ref * 1.03, 13)
  energies = []
  for a in grid:
    atoms = bulk(element, kind, a=a, cubic=True)
    e, _, stress = meam.evaluate_atoms(atoms)
    energies.append(e / len(atoms))
  energies = np.asarray(energies)
  k = int(np.argmin(energies))
  assert 0 < k < len(grid) - 1, "minimum at the edge of the scan"
  c2, c1, c0 = np.polyfit(grid[k - 2 : k + 3], energies[k - 2 : k + 3], 2)
  a_min = -c1 / (2 * c2)
  e_min = c0 - c1**2 / (4 * c2)
  assert a_min == pytest.approx(a_ref, rel=5e-3)
  assert e_min == pytest.approx(e_ref, rel=5e-3)


def test_forces_are_minus_energy_gradient_on_a_skewed_cell(meam):
  s = _skewed_lisi()
  out = meam(crystals_lib.from_structures([s], dtype=np.float64))
  forces = np.asarray(out.forces[0, : len(s)])
  assert np.abs(forces).max() > 0.1  # a real test: the rattled cell is not at equilibrium
  h = 1e-4
  fd = np.zeros_like(forces)
  for i in range(len(s)):
    for j in range(3):
      cart = s.cart_coords.copy()
      energies = []
      for sign in (1, -1):
        moved = cart.copy()
        moved[i, j] += sign * h
        energies.append(
          _energy(meam, Structure(s.lattice, s.species, moved, coords_are_cartesian=True))
        )
      fd[i, j] = -(energies[0] - energies[1]) / (2 * h)
  np.testing.assert_allclose(forces, fd, atol=1e-4 * max(1.0, np.abs(forces).max()))
  # Padding slots stay zero.
  assert np.all(np.asarray(out.forces[0, len(s) :]) == 0)


def test_stress_is_volume_normalised_strain_derivative_in_kbar(meam):
  """stress_ij = (1/V) dE/d(strain_ij), L' = L (1 + strain): the project's sign and unit."""
  s = _skewed_lisi(seed=1)
  out = meam(crystals_lib.from_structures([s], dtype=np.float64))
  stress = np.asarray(out.stress[0])
  assert np.abs(stress).max() > 1.0
  h = 1e-5
  fd = np.zeros((3, 3))
  for i in range(3):
    for j in range(3):
      energies = []
      for sign in (1, -1):
        strain = np.zeros((3, 3))
        strain[i, j] += 0.5 * sign * h
        strain[j, i] += 0.5 * sign * h
        lattice = s.lattice.matrix @ (np.eye(3) + strain)
        energies.append(_energy(meam, Structure(Lattice(lattice), s.species, s.frac_coords)))
      fd[i, j] = (energies[0] - energies[1]) / (2 * h) / s.volume * EV_PER_A3_TO_KBAR
  np.testing.assert_allclose(stress, fd, atol=1e-3 * np.abs(stress).max())
  np.testing.assert_allclose(stress, stress.T, atol=1e-6)


def test_compressed_si_has_compressive_negative_stress(meam):
  batch = crystals_lib.from_atoms([bulk("Si", "diamond", a=5.3, cubic=True)], dtype=np.float64)
  stress = np.asarray(meam(batch).stress[0])
  assert np.all(np.diag(stress) < 0)  # compressed cell wants to grow: negative (compressive)


def test_rotation_covariance_and_batch_of_mixed_sizes(meam):
  """Rotating the cell rotates forces and stress (the LAMMPS prism frame is undone)."""
  s = _skewed_lisi(seed=2)
  q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
  q *= np.sign(np.linalg.det(q))  # proper rotation
  rot = Structure(Lattice(s.lattice.matrix @ q.T), s.species, s.frac_coords)
  li = Structure(Lattice.cubic(3.5), ["Li", "Li"], [[0, 0, 0], [0.5, 0.5, 0.52]])
  batch = crystals_lib.from_structures([s, li, rot], dtype=np.float64, batch_size=4)
  out = meam(batch)
  f, st, e = (np.asarray(x) for x in (out.forces, out.stress, out.energy))
  n = len(s)
  assert e[0] == pytest.approx(e[2], abs=1e-8)
  np.testing.assert_allclose(f[2, :n], f[0, :n] @ q.T, atol=1e-6)
  np.testing.assert_allclose(st[2], q @ st[0] @ q.T, atol=1e-5)
  # The 2-atom cell evaluated alone gives the same as inside the mixed batch.
  alone = meam(crystals_lib.from_structures([li], dtype=np.float64))
  assert float(alone.energy[0]) == pytest.approx(e[1], abs=1e-8)
  np.testing.assert_allclose(np.asarray(alone.forces[0, :2]), f[1, :2], atol=1e-8)
  # Padding structure: zero forces and stress, NaN energy (as the CHGNet teacher), no overflow.
  assert np.isnan(e[3]) and np.all(f[3] == 0) and np.all(st[3] == 0)
  assert not np.any(np.asarray(out.overflow))
  assert out.forces.dtype == np.float64


def test_unevaluable_structures_give_nan_and_lammps_recovers(meam):
  good = Structure(Lattice.cubic(5.0), ["Li", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])
  on_top = Structure(Lattice.cubic(5.0), ["Li", "Si"], [[0, 0, 0], [0, 0, 0]])
  thin = Structure(Lattice(np.diag([5.0, 5.0, 1e-3])), ["Li", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])
  batch = crystals_lib.from_structures([good, on_top, thin, good], dtype=np.float64)
  batch.lattice[3, 0, 0] = np.nan
  out = meam(batch)
  e, f, st = (np.asarray(x) for x in (out.energy, out.forces, out.stress))
  assert np.isfinite(e[0]) and np.all(np.isfinite(f[0])) and np.all(np.isfinite(st[0]))
  for k in (1, 2, 3):
    assert np.isnan(e[k]) and np.all(np.isnan(f[k, :2])) and np.all(np.isnan(st[k]))
  # LAMMPS was restarted after its error and still gives the same answer.
  again = meam(crystals_lib.from_structures([good], dtype=np.float64))
  assert float(again.energy[0]) == pytest.approx(e[0], abs=1e-10)


def test_rejects_unsupported_elements(meam):
  s = Structure(Lattice.cubic(4.0), ["Li", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
  with pytest.raises(InputError, match="not supported"):
    meam(crystals_lib.from_structures([s]))


def test_protocol_attributes(meam):
  from crystal_search.force_fields.base import ForceField

  assert isinstance(meam, ForceField)
  assert meam.jittable is False
  assert meam.elements == ("Li", "Si")
  assert meam.grow() is meam
