"""SevenNet-0, the second teacher: units and stress sign, element coverage, a relaxation."""

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystal_search import crystals, relax
from crystal_search.errors import InputError
from crystal_search.force_fields.registry import make_force_field


@pytest.fixture(scope="module")
def sevennet():
  return make_force_field("sevennet")


def _lisi(scale: float = 1.0, seed: int = 0) -> Structure:
  rng = np.random.default_rng(seed)
  lattice = Lattice.cubic(4.2 * scale)
  frac = np.array([[0, 0, 0], [0.5, 0.5, 0.5]]) + rng.normal(0, 0.02, (2, 3))
  return Structure(lattice, ["Li", "Si"], frac)


def test_covers_the_periodic_table_and_names_itself(sevennet):
  assert {"Li", "Si", "Ge", "Na", "Sn", "Mg"} <= set(sevennet.elements)
  assert "SevenNet" in sevennet.name and not sevennet.jittable


def test_stress_is_the_strain_derivative_of_the_energy(sevennet):
  """kBar, tensile positive: stress = (1/V) dE/dstrain, by central differences of SevenNet's
  energy under a small strain."""
  s = _lisi(1.05)
  out = sevennet(crystals.from_structures([s], max_atoms=2))
  stress = np.asarray(out.stress[0])  # kBar
  h = 1e-3
  for i, j in ((0, 0), (1, 1), (0, 1)):
    strain = np.zeros((3, 3))
    strain[i, j] = strain[j, i] = h / (1 if i == j else 2)
    energies = []
    for sign in (1, -1):
      m = s.lattice.matrix @ (np.eye(3) + sign * strain)
      t = Structure(Lattice(m), s.species, s.frac_coords)
      energies.append(float(sevennet(crystals.from_structures([t], max_atoms=2)).energy[0]))
    derivative = (energies[0] - energies[1]) / (2 * h) / s.volume  # eV/Å^3
    assert derivative * 1602.1766 == pytest.approx(stress[i, j], abs=0.5), (i, j)
  assert np.all(np.isfinite(out.forces[0])) and np.isfinite(out.energy[0])


def test_relaxes_with_our_relaxer_and_refuses_what_it_does_not_know(sevennet):
  """Stretched, rattled diamond Si relaxes back to SevenNet's lattice constant (PBE: 5.47 Å)."""
  base = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.75), ["Si"], [[0, 0, 0]])
  rng = np.random.default_rng(0)
  start = Structure(base.lattice, base.species, base.frac_coords + rng.normal(0, 0.01, (8, 3)))
  (result,) = relax.relax_structures(
    [start], sevennet, optimizer="lbfgs", fmax=0.05, smax=1.0, max_steps=200
  )  # fmt: skip
  assert result.converged and not result.failed
  assert result.max_force < 0.05 and np.isfinite(result.energy)
  assert (result.final.volume / 8) ** (1 / 3) * 2 == pytest.approx(5.45, abs=0.06)
  odd = Structure(Lattice.cubic(4.0), ["Li", "Og"], [[0, 0, 0], [0.5, 0.5, 0.5]])
  with pytest.raises(InputError, match="Og"):
    relax.relax_structures([odd], sevennet, max_steps=1)
