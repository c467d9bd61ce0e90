"""The stress sign convention, checked against ASE and against finite differences."""

import ase
import numpy as np
import pytest
from ase.calculators.lj import LennardJones

import crystal_search as cs
from crystal_search import units
from crystal_search.force_fields.base import cartesian_gradients

SIGMA, EPSILON, RC = 2.0, 0.1, 5.0


def _lj_energy(crystals):
  """Truncated-and-shifted LJ summed over periodic images (ASE's LennardJones, smooth=False)."""
  import jax.numpy as jnp

  shifts = jnp.array([[i, j, k] for i in range(-3, 4) for j in range(-3, 4) for k in range(-3, 4)])
  cart = crystals.cartesian()
  image = jnp.einsum("si,bij->bsj", shifts.astype(cart.dtype), crystals.lattice)
  d = cart[:, :, None, None, :] - cart[:, None, :, None, :] - image[:, None, None, :, :]
  r2 = jnp.sum(d * d, axis=-1)
  self_pair = (
    (jnp.eye(cart.shape[1], dtype=bool)[None, :, :, None])
    & jnp.all(shifts == 0, axis=-1)[None, None, None, :]
  )
  valid = crystals.mask[:, :, None, None] & crystals.mask[:, None, :, None] & ~self_pair
  valid = valid & (r2 < RC**2)
  r2 = jnp.where(valid, r2, 1.0)
  s6 = (SIGMA**2 / r2) ** 3
  shift = 4 * EPSILON * ((SIGMA / RC) ** 12 - (SIGMA / RC) ** 6)
  e = jnp.where(valid, 4 * EPSILON * (s6 * s6 - s6) - shift, 0.0)
  return 0.5 * jnp.sum(e, axis=(1, 2, 3))


@pytest.fixture(scope="module")
def strained_cell():
  rng = np.random.default_rng(0)
  cell = np.array([[4.2, 0.1, 0.0], [0.3, 3.9, 0.2], [0.1, -0.2, 4.4]])
  frac = rng.random((3, 3))
  return ase.Atoms("Li3", scaled_positions=frac, cell=cell, pbc=True)


def test_autodiff_stress_matches_ase_lennard_jones(strained_cell):
  import jax

  jax.config.update("jax_enable_x64", True)
  try:
    atoms = strained_cell.copy()
    atoms.calc = LennardJones(sigma=SIGMA, epsilon=EPSILON, rc=RC, smooth=False)
    batch = cs.from_atoms([atoms], dtype=np.float64)
    energy, forces, stress = cartesian_gradients(_lj_energy, batch)
    np.testing.assert_allclose(float(energy[0]), atoms.get_potential_energy(), rtol=1e-8)
    np.testing.assert_allclose(np.asarray(forces[0, :3]), atoms.get_forces(), atol=1e-8)
    np.testing.assert_allclose(
      np.asarray(stress[0]), units.stress_from_ase(atoms.get_stress()), rtol=1e-6, atol=1e-6
    )
  finally:
    jax.config.update("jax_enable_x64", False)


def test_stress_sign_is_tensile_positive_by_finite_differences(strained_cell):
  """A positive diagonal stress means the energy rises when the cell is stretched."""
  atoms = strained_cell.copy()
  atoms.calc = LennardJones(sigma=SIGMA, epsilon=EPSILON, rc=RC, smooth=False)
  stress = units.stress_from_ase(atoms.get_stress())
  h = 1e-5
  for axis in range(3):
    energies = []
    for sign in (1, -1):
      a = atoms.copy()
      a.calc = atoms.calc
      strain = np.eye(3)
      strain[axis, axis] += sign * h
      a.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
      energies.append(a.get_potential_energy())
    de_dstrain = (energies[0] - energies[1]) / (2 * h)
    expected = de_dstrain / atoms.get_volume() * units.EV_PER_A3_TO_KBAR
    assert stress[axis, axis] == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_conversions_round_trip_and_signs():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(3, 3))
  s = a + a.T
  np.testing.assert_allclose(units.stress_from_ase(units.stress_to_ase(s)), s, rtol=1e-12)
  np.testing.assert_allclose(units.stress_from_vasp(units.stress_to_vasp(s)), s)
  np.testing.assert_allclose(units.stress_from_vasp(s), -s)
  np.testing.assert_allclose(units.stress_from_gpa(s), 10 * s)
  np.testing.assert_allclose(units.stress_from_lammps_pressure(s * 1000), -s)
  np.testing.assert_allclose(units.voigt_to_matrix(units.matrix_to_voigt(s)), s)
  # 1 eV/Å^3 = 160.2 GPa = 1602 kBar.
  assert units.stress_from_ase(np.eye(3))[0, 0] == pytest.approx(1602.1766208)
  with pytest.raises(ValueError):
    units.stress_from_ase(np.zeros(5))
