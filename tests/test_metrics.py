"""Metrics: MAEs against plain numpy, structure matching on hand-made cases, known phases."""

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystal_search import metrics


def _diamond_si() -> Structure:
  return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])


def _random_p1(seed: int = 0) -> Structure:
  """An 8-atom Li4Si4 cell with random positions: no symmetry, its own primitive cell."""
  rng = np.random.default_rng(seed)
  lattice = Lattice.from_parameters(5.1, 5.6, 6.2, 80, 95, 105)
  return Structure(lattice, ["Li"] * 4 + ["Si"] * 4, rng.uniform(size=(8, 3)))


def _rock_salt_lisi() -> Structure:
  return Structure.from_spacegroup(
    "Fm-3m", Lattice.cubic(4.6), ["Li", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]]
  )


def _transformed(
  s: Structure, seed: int, *, strain: float = 0.0, rattle: float = 0.0, supercell=None
) -> Structure:
  """A randomly rotated, translated, permuted copy, optionally strained/rattled/a supercell."""
  rng = np.random.default_rng(seed)
  s = s.copy()
  if supercell is not None:
    s.make_supercell(supercell)
  q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  q *= np.sign(np.linalg.det(q))
  eps = strain * rng.uniform(-1, 1, size=(3, 3))
  eps = 0.5 * (eps + eps.T)
  lattice = s.lattice.matrix @ (np.eye(3) + eps) @ q.T
  cart_noise = rattle * rng.normal(size=(len(s), 3))
  frac = s.frac_coords + rng.uniform(size=3) + cart_noise @ np.linalg.inv(s.lattice.matrix)
  order = rng.permutation(len(s))
  return Structure(Lattice(lattice), [s.species[i] for i in order], frac[order])


# ----------------------------------------------------------------------------
# MAEs.


def test_force_mae_counts_components_of_real_atoms_only():
  rng = np.random.default_rng(0)
  pred, target = rng.normal(size=(2, 3, 5, 3))
  mask = np.array([[True] * 5, [True, True, False, False, False], [False] * 5])
  pred[~mask] = 1e6  # garbage in padding must not count
  expected = np.mean(np.abs(pred[mask] - target[mask]))
  assert metrics.force_mae(pred, target, mask) == pytest.approx(expected, rel=1e-12)
  flat = metrics.force_mae(pred[mask], target[mask])
  assert flat == pytest.approx(expected, rel=1e-12)
  assert np.isnan(metrics.force_mae(pred, target, np.zeros_like(mask)))


def test_stress_mae_over_nine_or_six_components():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(4, 3, 3))
  pred = a + np.swapaxes(a, 1, 2)
  target = np.zeros_like(pred)
  mask = np.array([True, True, True, False])
  pred_masked = pred[mask]
  assert metrics.stress_mae(pred, target, mask) == pytest.approx(np.mean(np.abs(pred_masked)))
  voigt = np.stack(
    [pred_masked[:, i, j] for i, j in [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]], -1
  )
  assert metrics.stress_mae(pred, target, mask, components=6) == pytest.approx(
    np.mean(np.abs(voigt))
  )
  assert metrics.stress_mae(pred, target) == pytest.approx(np.mean(np.abs(pred)))
  with pytest.raises(ValueError):
    metrics.stress_mae(pred, target, components=3)


# ----------------------------------------------------------------------------
# Matching.


def test_identical_and_equivalent_copies_match():
  si = _diamond_si()
  assert metrics.structures_match(si, si.copy())
  assert metrics.structures_match(si, _transformed(si, 0))
  assert metrics.structures_match(si, _transformed(si, 1, supercell=[2, 1, 1]))
  assert metrics.structures_match(si, _transformed(si, 2, strain=0.01, rattle=0.02))
  lisi = _rock_salt_lisi()
  assert metrics.structures_match(
    lisi, _transformed(lisi, 3, supercell=[[1, 1, 0], [0, 1, 1], [1, 0, 1]])
  )


def test_copies_beyond_tolerance_do_not_match():
  si = _diamond_si()
  # 50 % uniaxial stretch: beyond ltol = 0.2 even after volume normalisation.
  stretched = si.copy()
  stretched.lattice = Lattice(si.lattice.matrix @ np.diag([1.5, 1.0, 1.0]))
  assert not metrics.structures_match(si, stretched)
  # Rattled by 0.8 Å per component: beyond stol = 0.3 (V/n)^(1/3) ~ 0.7 Å; 0.05 Å is within.
  p1 = _random_p1()
  assert metrics.structures_match(p1, _transformed(p1, 4, rattle=0.05))
  assert not metrics.structures_match(p1, _transformed(p1, 4, rattle=0.8))
  # A different composition never matches.
  assert not metrics.structures_match(si, _rock_salt_lisi())
  assert not metrics.structures_match(si, None)


def test_matcher_parameter_is_used():
  p1 = _random_p1()
  rattled = _transformed(p1, 5, rattle=0.2)
  assert metrics.structures_match(p1, rattled)  # default stol 0.3
  assert not metrics.structures_match(p1, rattled, matcher=metrics.dataset_matcher())  # stol 0.05
  assert metrics.structures_match(p1, rattled, matcher=metrics.dataset_matcher(stol=0.3))
  assert metrics.DATASET_MATCHER_SETTINGS["stol"] == 0.05


def test_relaxed_structure_match_fraction():
  si, lisi = _diamond_si(), _rock_salt_lisi()
  model = [_transformed(si, 6), None, _transformed(lisi, 7), si]
  teacher = [si, si, lisi, _rock_salt_lisi()]
  assert metrics.relaxed_structure_match(model, teacher) == pytest.approx(0.5)
  assert np.isnan(metrics.relaxed_structure_match([], []))


def test_trajectory_match_step_by_step_and_after_the_model_ends():
  a = _random_p1(0)
  b = _transformed(a, 9, rattle=0.8)
  c = _random_p1(10)
  assert not metrics.structures_match(b, c) and not metrics.structures_match(a, b)
  # Step-by-step: a=a, b=b, then a vs c and a vs c miss.
  assert metrics.trajectory_match([a, b, a, a], [a, b, c, c]) == pytest.approx(0.5)
  # Model shorter than the teacher: its last structure (b) fills the missing steps.
  assert metrics.trajectory_match([a, b], [a, b, b, c]) == pytest.approx(0.75)
  # Model longer than the teacher: extra steps are ignored.
  assert metrics.trajectory_match([a, b, c, c, c], [a, b]) == pytest.approx(1.0)
  assert metrics.mean_trajectory_match([[a, b, a, a], [a]], [[a, b, c, c], [a]]) == pytest.approx(
    0.75
  )


# ----------------------------------------------------------------------------
# Known phases.


@pytest.fixture(scope="module")
def references():
  return metrics.load_reference_phases()


def test_reference_phases_are_named_by_formula_and_mp_id(references):
  assert set(references) == {
    "LiSi (mp-795)",
    "Li12Si7 (mp-1314)",
    "Li7Si3 (mp-1201871)",
    "Li13Si4 (mp-672287)",
    "Li15Si4 (mp-569849)",
    "Li (mp-135)",
    "Si (mp-149)",
  }
  assert len(references["LiSi (mp-795)"]) == 32
  assert references["Li15Si4 (mp-569849)"].composition.reduced_formula == "Li15Si4"


def test_known_phase_recognises_a_transformed_strained_copy(references):
  lisi = references["LiSi (mp-795)"]
  copy = _transformed(lisi, 11, strain=0.01)
  assert metrics.known_phase(copy, references) == "LiSi (mp-795)"
  # A noisy conventional cell (too noisy to reduce to the 16-atom primitive cell) still matches.
  noisy = _transformed(lisi, 14, strain=0.01, rattle=0.1)
  assert len(noisy.get_primitive_structure(tolerance=0.1)) == 32
  assert metrics.known_phase(noisy, references) == "LiSi (mp-795)"
  # ... which is why the default matcher allows supercells: pymatgen's plain default misses it.
  plain = metrics.default_matcher(attempt_supercell=False)
  assert metrics.known_phase(noisy, references, matcher=plain) is None
  # The held-out Li15Si4 in its 38-atom primitive cell is recognised against the 76-atom CIF.
  prim = references["Li15Si4 (mp-569849)"].get_primitive_structure()
  assert len(prim) == 38
  assert metrics.known_phase(_transformed(prim, 12), references) == "Li15Si4 (mp-569849)"


def test_known_phase_is_none_for_a_random_structure(references):
  rng = np.random.default_rng(13)
  lisi = references["LiSi (mp-795)"]
  random = Structure(lisi.lattice, lisi.species, rng.uniform(size=(len(lisi), 3)))
  assert metrics.known_phase(random, references) is None
  # Composition with no reference.
  li2si = Structure(
    Lattice.cubic(5.0), ["Li", "Li", "Si"], [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5]]
  )
  assert metrics.known_phase(li2si, references) is None


def test_reducing_matcher_answers_as_pymatgens_and_sees_changes_in_place():
  import pickle

  from pymatgen.analysis.structure_matcher import StructureMatcher

  plain = StructureMatcher(**metrics.RELAXED_MATCHER_SETTINGS)
  ours = metrics.default_matcher()
  assert isinstance(ours, metrics.ReducingMatcher)
  base = _rock_salt_lisi()
  noisy = base.copy()
  noisy.perturb(0.05)
  pairs = [
    (base, base * (2, 1, 1)),
    (base, noisy),
    (_random_p1(0), _random_p1(1)),
    (_diamond_si(), _diamond_si() * (1, 1, 2)),
    (base, _diamond_si()),
  ]
  for a, b in pairs:
    for sym in (False, True):
      assert ours.fit(a, b, symmetric=sym) == plain.fit(a, b, symmetric=sym)
  moved = base.copy()
  assert ours.fit(base, moved)
  moved.translate_sites([0], [0.3, 0.1, 0.0])  # changed in place: reduced again, no stale match
  assert ours.fit(base, moved) == plain.fit(base, moved) is False
  assert "_reduced" not in pickle.loads(pickle.dumps(ours)).__dict__  # the cache stays behind
