"""The faster pyxtal helpers give pyxtal's own numbers."""

import copy

import numpy as np
import pytest

from crystal_search import pyxtal_speedups


@pytest.fixture(scope="module")
def originals():
  pyxtal_speedups.install()
  return pyxtal_speedups.ORIGINALS


def _lattice(rng):
  return np.eye(3) * rng.uniform(4, 9, 3) + rng.uniform(-1.5, 1.5, (3, 3))


def test_create_matrix_is_pyxtals_and_a_fresh_copy(originals):
  for pbc in ([1, 1, 1], [1, 0, 1], [0, 0, 1], None):
    for omit in (False, True):
      ours = pyxtal_speedups.create_matrix(PBC=pbc, omit=omit)
      np.testing.assert_array_equal(ours, originals["create_matrix"](PBC=pbc, omit=omit))
      ours += 1.0  # callers add in place: the cache must not see it
      np.testing.assert_array_equal(
        pyxtal_speedups.create_matrix(PBC=pbc, omit=omit),
        originals["create_matrix"](PBC=pbc, omit=omit),
      )


def test_distance_matrix_is_bit_identical(originals):
  import pyxtal.operations

  rng = np.random.default_rng(0)
  for _ in range(50):
    lattice = _lattice(rng)
    a, b = rng.uniform(-0.5, 1.5, (int(rng.integers(1, 6)), 3)), rng.uniform(0, 1, (7, 3))
    for single in (False, True):
      for metric in ("euclidean", "sqeuclidean"):
        want = originals["distance_matrix"](a.copy(), b.copy(), lattice, single=single,
                                            metric=metric)  # fmt: skip
        got = pyxtal.operations.distance_matrix(a.copy(), b.copy(), lattice, single=single,
                                                metric=metric)  # fmt: skip
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("number", [220, 166, 194, 225, 62, 12])
def test_search_generator_dist_is_bit_identical(originals, number):
  from pyxtal.symmetry import Group

  group = Group(number)
  rng = np.random.default_rng(number)
  for wp in group:
    for _ in range(5):
      pt, lattice = rng.uniform(0, 1, 3), _lattice(rng)
      want = originals["search_generator_dist"](wp, pt.copy(), lattice, group)
      got = wp.search_generator_dist(pt.copy(), lattice, group)
      np.testing.assert_array_equal(got[0], want[0])
      assert got[1] == want[1]


def test_merge_leaves_the_groups_positions_untouched(originals):
  from pyxtal.symmetry import Group

  group = Group(220)
  before = [copy.deepcopy(wp.ops) for wp in group]
  rng = np.random.default_rng(1)
  for _ in range(30):
    group[0].merge(rng.uniform(0, 1, 3), _lattice(rng), 1.5, group=group)
  for wp, ops in zip(group, before, strict=True):
    assert [o.affine_matrix.tolist() for o in wp.ops] == [o.affine_matrix.tolist() for o in ops]


def test_check_compatible_is_pyxtals(originals):
  from pyxtal.symmetry import Group

  for number in (1, 12, 62, 166, 220, 225):
    group = Group(number)
    for counts in ([60, 16], [30, 8], [4, 4], [7, 3], [1], [48, 12]):
      want = originals["check_compatible"](group, counts)
      assert group.check_compatible(counts) == want
      assert group.check_compatible(list(counts)) == want  # cached


@pytest.mark.parametrize("number", [220, 166, 194, 191, 225, 62, 12, 1])
def test_project_is_bit_identical(originals, number):
  from pyxtal.symmetry import Group

  group = Group(number)
  rng = np.random.default_rng(100 + number)
  for wp in group:
    for _ in range(4):
      pt, lattice = rng.uniform(-0.2, 1.2, 3), _lattice(rng)
      want = originals["project"](wp, pt.copy(), lattice)
      np.testing.assert_array_equal(wp.project(pt.copy(), lattice), want)


def test_number_from_specie_is_pyxtals(originals):
  from pymatgen.core import Species
  from pyxtal.database.element import Element

  for specie in ("Li", "Si", 3, 14, "Lithium", Species("Li", 1), 14.0):
    for _ in range(2):  # the second call answers from the cache
      assert Element.number_from_specie(specie) == originals["number_from_specie"](specie)
