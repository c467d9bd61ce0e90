"""Dedupe: equivalent copies grouped, different structures apart, energy window, scaling."""

import time
from collections import Counter, defaultdict

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystal_search import dedupe, metrics


class CountingMatcher:
  """Wraps a StructureMatcher and counts ``fit`` calls."""

  def __init__(self, matcher=None):
    self.matcher = matcher or metrics.default_matcher()
    self.calls = 0

  def fit(self, a, b):
    self.calls += 1
    return self.matcher.fit(a, b)


def _diamond_si() -> Structure:
  return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])


def _prototypes() -> list[Structure]:
  """Small cells: bcc Li, diamond Si and three LiSi polymorphs (rock salt, CsCl, zinc blende)."""
  return [
    Structure.from_spacegroup("Im-3m", Lattice.cubic(3.45), ["Li"], [[0, 0, 0]]),
    _diamond_si().get_primitive_structure(),
    Structure.from_spacegroup(
      "Fm-3m", Lattice.cubic(4.6), ["Li", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure(),
    Structure.from_spacegroup(
      "Pm-3m", Lattice.cubic(2.9), ["Li", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ),
    Structure.from_spacegroup(
      "F-43m", Lattice.cubic(5.2), ["Li", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]]
    ).get_primitive_structure(),
  ]


def _copy(s: Structure, rng: np.random.Generator, *, rattle: float = 0.0, supercell=None):
  """Randomly rotated, translated, permuted (optionally rattled / supercell) copy of ``s``."""
  s = s.copy()
  if supercell is not None:
    s.make_supercell(supercell)
  q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  q *= np.sign(np.linalg.det(q))
  frac = (
    s.frac_coords
    + rng.uniform(size=3)
    + rattle * rng.normal(size=(len(s), 3)) @ np.linalg.inv(s.lattice.matrix)
  )
  order = rng.permutation(len(s))
  return Structure(Lattice(s.lattice.matrix @ q.T), [s.species[i] for i in order], frac[order])


def _as_sets(groups):
  return sorted(sorted(g) for g in groups)


def test_equivalent_copies_grouped_and_different_structures_apart():
  rng = np.random.default_rng(0)
  si = _diamond_si()
  bcc_si = Structure.from_spacegroup("Im-3m", Lattice.cubic(3.1), ["Si"], [[0, 0, 0]])
  structures = [
    si,  # 0
    _copy(si, rng),  # 1 rotated/translated/permuted
    _copy(si, rng, supercell=[2, 1, 1]),  # 2 supercell
    _copy(si.get_primitive_structure(), rng, rattle=0.01),  # 3 primitive, rattled
    bcc_si,  # 4 same composition, different structure, same energy
    _copy(bcc_si, rng),  # 5
    Structure(Lattice.cubic(3.45), ["Li", "Li"], [[0, 0, 0], [0.5, 0.5, 0.5]]),  # 6 other element
  ]
  energies = [-4.600, -4.601, -4.599, -4.602, -4.600, -4.601, -4.600]
  matcher = CountingMatcher()
  groups = dedupe.group_structures(structures, energies, matcher=matcher)
  assert _as_sets(groups) == [[0, 1, 2, 3], [4, 5], [6]]
  # Each group sorted by energy; groups ordered by their lowest energy.
  for g in groups:
    assert [energies[i] for i in g] == sorted(energies[i] for i in g)
  assert groups[0][0] == 3
  # The Li cell is never compared (different composition): at most 3 + 1 + merge comparisons.
  assert matcher.calls <= 6


def test_energy_window_is_respected():
  rng = np.random.default_rng(1)
  si = _diamond_si()
  structures = [si, _copy(si, rng), _copy(si, rng)]
  energies = [-4.60, -4.595, -4.58]  # the third is 0.02 eV/atom above the first
  assert _as_sets(dedupe.group_structures(structures, energies)) == [[0, 1], [2]]
  assert _as_sets(dedupe.group_structures(structures, energies, energy_window=0.05)) == [[0, 1, 2]]
  # A zero window still groups exact energy ties.
  assert _as_sets(dedupe.group_structures(structures, [-4.6] * 3, energy_window=0.0)) == [[0, 1, 2]]


def test_copies_detected_in_different_space_groups():
  """Documented behaviour: merged by default, split with strict space-group bins."""
  si = _diamond_si().get_primitive_structure()
  rng = np.random.default_rng(2)
  clean = _copy(si, rng, rattle=0.005)
  shifted = si.copy()
  shifted.translate_sites([1], [0.2, 0.0, 0.0], frac_coords=False)  # 0.2 Å > symprec 0.1
  sg = [dedupe.space_group_number(s, symprec=0.1) for s in (clean, shifted)]
  assert sg[0] == 227 and sg[1] != 227
  assert metrics.structures_match(clean, shifted)  # within StructureMatcher's tolerance
  energies = [-4.600, -4.598]
  assert _as_sets(dedupe.group_structures([clean, shifted], energies)) == [[0, 1]]
  strict = dedupe.group_structures([clean, shifted], energies, merge_space_groups=False)
  assert _as_sets(strict) == [[0], [1]]


def test_bad_inputs():
  si = _diamond_si()
  from crystal_search.errors import InputError

  with pytest.raises(InputError):
    dedupe.group_structures([si, si], [0.0])
  with pytest.raises(InputError):
    dedupe.group_structures([si], [float("nan")])
  assert dedupe.group_structures([], []) == []


def test_scaling_2000_structures_bounded_matcher_calls():
  rng = np.random.default_rng(3)
  protos = _prototypes()
  # Bcc Li, diamond Si apart in energy; the three LiSi polymorphs overlap in energy, so the
  # cross-space-group merge step compares their representatives (and must not merge them).
  base = [-1.65, -4.63, -3.00, -3.002, -2.998]
  n_copies = 400
  structures, energies, labels = [], [], []
  for k, p in enumerate(protos):
    for _ in range(n_copies):
      structures.append(_copy(p, rng, rattle=0.01))
      energies.append(base[k] + rng.normal(scale=1e-3))
      labels.append(k)
  order = rng.permutation(len(structures))
  structures = [structures[i] for i in order]
  energies = np.asarray(energies)[order]
  labels = np.asarray(labels)[order]
  matcher = CountingMatcher()
  t0 = time.perf_counter()
  space_groups = [dedupe.space_group_number(s, symprec=0.1) for s in structures]
  groups = dedupe.group_structures(structures, energies, matcher=matcher, space_groups=space_groups)
  wall = time.perf_counter() - t0
  assert len(groups) == len(protos)
  for g in groups:
    assert len(set(labels[g])) == 1 and len(g) == n_copies
  # Bound: within a (composition, space group) bin holding copies of p prototypes, a structure
  # is compared with at most p representatives; the merge step compares each pair of the
  # per-bin groups of a composition at most once.  Noise occasionally lowers a copy's detected
  # space group, which makes small extra bins that the merge step must join back.
  bins = Counter()
  groups_in_bin = defaultdict(set)
  for s, g, k in zip(structures, space_groups, labels):
    key = (s.composition.reduced_formula, g)
    bins[key] += 1
    groups_in_bin[key].add(int(k))
  within = sum((bins[key] - 1) * len(groups_in_bin[key]) for key in bins)
  per_formula = Counter()
  for (formula, _), ks in groups_in_bin.items():
    per_formula[formula] += len(ks)
  bound = within + sum(k * (k - 1) // 2 for k in per_formula.values())
  assert len(bins) > len(protos)  # (this seed) the merge step had split bins to join back
  assert matcher.calls <= bound, (matcher.calls, bound)
  assert bound < 1.05 * len(structures)  # i.e. about one call per structure, not all pairs
  assert wall < 55, wall
