"""The primitive-cell search of :mod:`crystal_search.primitive_cells` against pymatgen's own."""

import glob
import os

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import SiteOrderedIStructure, StructureMatcher
from pymatgen.core import Structure

from crystal_search import metrics, primitive_cells, random_structures


def _identical(a: Structure, b: Structure) -> bool:
  return (
    a.lattice.matrix.tobytes() == b.lattice.matrix.tobytes()
    and a.frac_coords.tobytes() == b.frac_coords.tobytes()
    and [s.species_string for s in a] == [s.species_string for s in b]
    and [s.label for s in a] == [s.label for s in b]
  )


def _cases() -> list[Structure]:
  """Reference phases and their supercells, random centred cells of 24 operations (76 atoms)
  and P1 cells, each also with noise below and above the tolerance."""
  cases = []
  for path in sorted(glob.glob(os.path.join(metrics.REFERENCE_PHASES_DIR, "*.cif"))):
    s = Structure.from_file(path)
    cases += [s, s * (2, 1, 1), s * (1, 2, 2)]
  cases += list(
    random_structures.generate(
      "Li15Si4", 6, seed=3, formula_units=(4,), max_atoms=76, symmetric_fraction=1.0,
      min_symmops=24, max_symmops=24,
    )
  )  # fmt: skip
  cases += list(random_structures.generate("LiSi", 4, seed=0, max_atoms=16, symmetric_fraction=0))
  rng = np.random.default_rng(0)
  for s in list(cases):
    for sigma in (1e-4, 0.03):
      frac = s.frac_coords + rng.normal(0.0, sigma, s.frac_coords.shape)
      cases.append(Structure(s.lattice, s.species, frac))
  return cases


@pytest.fixture(scope="module")
def cases():
  return _cases()


def test_primitive_cell_is_pymatgens_bit_for_bit(cases):
  shrunk = 0
  for s in cases:
    ours = primitive_cells.get_primitive_structure(s)
    assert _identical(ours, s.get_primitive_structure()), s.composition
    shrunk += len(ours) < len(s)
  assert shrunk >= len(cases) // 3  # the cases do exercise the reduction


def test_matcher_reduction_is_pymatgens_bit_for_bit(cases):
  for s in cases[::3]:
    theirs = StructureMatcher._get_reduced_istructure.__wrapped__(
      SiteOrderedIStructure.from_sites(s), True, True
    )
    assert _identical(primitive_cells.reduced_for_matching(s), Structure.from_sites(theirs))
