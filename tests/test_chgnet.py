"""CHGNet teacher: units and stress sign against finite differences of its own energy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("chgnet")
pytestmark = pytest.mark.teacher

from crystal_search import random_structures as rs  # noqa: E402
from crystal_search.crystals import from_structures, pad_batch  # noqa: E402
from crystal_search.force_fields.base import ForceField  # noqa: E402
from crystal_search.force_fields.chgnet import CHGNetForceField  # noqa: E402
from crystal_search.units import EV_PER_A3_TO_KBAR  # noqa: E402


@pytest.fixture(scope="module")
def ff():
  return CHGNetForceField()


@pytest.fixture(scope="module")
def strained():
  config = rs.RandomStructureConfig(max_atoms=12, symmetric_fraction=0.0)
  s, _ = rs.random_structure("LiSi", seed=0, index=0, config=config)
  s = s.copy()
  s.scale_lattice(s.volume * 0.85)  # compressed: a large, clearly signed stress
  # a shear so off-diagonal components are non-zero too
  s = s.__class__(
    s.lattice.matrix @ np.array([[1, 0.04, 0], [0, 1, 0], [0, 0, 1]]), s.species, s.frac_coords
  )
  return s


def test_is_a_host_force_field(ff):
  assert isinstance(ff, ForceField)
  assert not ff.jittable
  assert ff.grow() is ff
  assert ff.version_info()["chgnet"]


def test_stress_sign_matches_finite_differences_of_energy(ff, strained):
  crystals = from_structures([strained], dtype=np.float64)
  stress = np.asarray(ff(crystals).stress[0])
  volume = strained.volume
  eps = 2e-3
  fd = np.zeros((3, 3))
  for i in range(3):
    for j in range(i, 3):
      energies = []
      for sign in (1.0, -1.0):
        strain = np.zeros((3, 3))
        strain[i, j] += sign * eps / 2
        strain[j, i] += sign * eps / 2
        lattice = crystals.lattice @ (np.eye(3) + strain)
        energies.append(float(ff(dataclasses.replace(crystals, lattice=lattice)).energy[0]))
      fd[i, j] = fd[j, i] = (energies[0] - energies[1]) / (2 * eps) / volume * EV_PER_A3_TO_KBAR
  # Compressed cell: the project sign (tensile positive) makes the pressure positive.
  assert -np.trace(stress) / 3 > 10.0
  scale = np.abs(fd).max()
  np.testing.assert_allclose(stress, fd, atol=0.02 * scale + 1.0)


def test_forces_match_finite_differences(ff, strained):
  crystals = from_structures([strained], dtype=np.float64)
  out = ff(crystals)
  forces = np.asarray(out.forces[0])
  h = 2e-3
  inv = np.linalg.inv(crystals.lattice[0])
  for atom, axis in [(0, 0), (3, 2)]:
    energies = []
    for sign in (1.0, -1.0):
      cart = np.zeros(3)
      cart[axis] = sign * h
      pos = np.array(crystals.positions)
      pos[0, atom] += cart @ inv
      energies.append(float(ff(dataclasses.replace(crystals, positions=pos)).energy[0]))
    fd = -(energies[0] - energies[1]) / (2 * h)
    assert abs(forces[atom, axis] - fd) < 0.03 * np.abs(forces).max() + 0.02


def test_batch_padding_and_per_structure_agree(ff, strained):
  other, _ = rs.random_structure(
    "Li2Si", seed=0, index=1, config=rs.RandomStructureConfig(max_atoms=9)
  )
  single = ff(from_structures([other], dtype=np.float64))
  batch = ff(pad_batch(from_structures([strained, other], max_atoms=40, dtype=np.float64), 3))
  n = len(other)
  np.testing.assert_allclose(batch.energy[1], single.energy[0], rtol=1e-5)
  np.testing.assert_allclose(batch.forces[1, :n], single.forces[0, :n], atol=1e-4)
  np.testing.assert_allclose(batch.stress[1], single.stress[0], atol=1e-2)
  assert np.all(batch.forces[1, n:] == 0)
  assert np.isnan(batch.energy[2]) and np.all(batch.forces[2] == 0)
  assert batch.energy.shape == (3,) and batch.forces.shape == (3, 40, 3)
