"""Fuzzing the inputs: no structure, however hostile, makes reading, graph building or the
relaxer raise anything but a one-line InputError, and every result is flagged or sane."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pymatgen.core import Lattice, Structure

from crystal_search import crystals as crystals_lib
from crystal_search import fuzz, relax
from crystal_search.errors import InputError
from crystal_search.force_fields import analytic

# Reproducible in CI: the examples are derived from the test, not drawn at random, and no
# example database is kept between runs.
FUZZ = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
# Six images suffice for every cell the relaxer does not fail at once (heights >= 1 Å): no
# growth, so the examples share a few compiled programs.
LJ = analytic.lennard_jones(sigma=2.0, epsilon=0.1, images=6, elements=fuzz.ELEMENTS)
SEEDS = st.integers(0, 2**32 - 1)
KINDS = st.sampled_from(fuzz.CASE_KINDS)


def _case(seed: int, kind: str, max_atoms: int) -> fuzz.Case:
  return fuzz.draw_case(np.random.default_rng(seed), kind, max_atoms=max_atoms)


def _assert_behaved(outcome: fuzz.Outcome, case: fuzz.Case) -> None:
  assert outcome.status != "crashed" and not outcome.problems, (case.kind, outcome)


@settings(max_examples=160, **FUZZ)
@given(seed=SEEDS, kind=KINDS, fmt=st.sampled_from(fuzz.FORMATS))
def test_reading_any_file_gives_structures_or_one_line_errors(tmp_path_factory, seed, kind, fmt):
  path = str(tmp_path_factory.mktemp("fuzz") / f"case.{fmt}")
  case = _case(seed, kind, 200)
  _assert_behaved(fuzz.check_read(case, path, fmt), case)


NUMBERS = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=80, **FUZZ)
@given(
  lattice=hnp.arrays(np.float64, (3, 3), elements=NUMBERS),
  frac=hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.just(3)), elements=NUMBERS),
)
def test_any_numbers_are_refused_or_pass_as_a_sane_cell(lattice, frac):
  species = ["Li"] * len(frac)
  case = fuzz.Case("normal", lattice, frac, species)
  try:
    crystals_lib.check_cell(case.structure(), name="cell")
  except InputError as e:
    assert "\n" not in str(e) and str(e).startswith("cell: ")
    return
  volume = abs(np.linalg.det(lattice))
  assert np.all(np.isfinite(lattice)) and np.all(np.isfinite(frac))
  assert volume / len(frac) >= crystals_lib.MIN_VOLUME_PER_ATOM
  heights = np.asarray(crystals_lib.cell_heights(lattice))
  assert heights.min() >= crystals_lib.MIN_CELL_HEIGHT * (1 - 1e-6)


@settings(max_examples=60, **FUZZ)
@given(seed=SEEDS, kind=KINDS)
def test_graphs_of_any_cell_are_exact_or_flag_overflow(seed, kind):
  case = _case(seed, kind, 8)
  _assert_behaved(fuzz.check_graph(case, capacity=512), case)


@pytest.mark.parametrize("optimizer", relax.OPTIMIZERS)
def test_relaxing_any_batch_fails_flagged_or_ends_sane(optimizer):
  @settings(max_examples=8, **FUZZ)
  @given(
    seeds=st.lists(SEEDS, min_size=4, max_size=4), kinds=st.lists(KINDS, min_size=4, max_size=4)
  )
  def run(seeds, kinds):
    cases = [_case(s, k, 8) for s, k in zip(seeds, kinds, strict=True)]
    outcomes = fuzz.check_relax(cases, LJ, optimizer, max_steps=10)
    for case, outcome in zip(cases, outcomes, strict=True):
      _assert_behaved(outcome, case)

  run()


def test_absurd_cells_are_refused_up_front_with_one_line_errors():
  base = Structure(Lattice.cubic(3.0), ["Li", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])
  cases = {
    "per atom": Lattice.cubic(1.0),
    "thin between opposite faces": Lattice([[9, 0, 0], [0, 9, 0], [0, 0, 0.2]]),
    "long": Lattice.cubic(1e5),
    "zero volume": Lattice([[3, 0, 0], [3, 0, 0], [0, 0, 3]]),
  }
  for pattern, lattice in cases.items():
    s = Structure(lattice, base.species, base.frac_coords)
    with pytest.raises(InputError, match=pattern) as info:
      relax.relax_structures([base, s], LJ, max_steps=1)
    assert "\n" not in str(info.value) and str(info.value).startswith("structure 1 (LiSi)")
  nan = Structure(Lattice.cubic(3.0), ["Li"], [[np.nan, 0, 0]])
  with pytest.raises(InputError, match="NaN"):
    relax.relax_structures([nan], LJ)


def test_an_atom_close_to_its_own_image_in_a_skewed_cell_is_an_overlap():
  """b - a is 0.92 Å long although a, b and c are 5-5.7 Å: the shortest lattice vector, not the
  shortest of a, b, c, is the distance to the nearest periodic image."""
  skewed = Lattice([[5, 0, 0], [5.7, 0.6, 0], [0, 0, 5]])
  s = Structure(skewed, ["Li"], [[0, 0, 0]])
  assert crystals_lib.shortest_lattice_vector(skewed.matrix) == pytest.approx(0.922, abs=1e-3)
  crystals_lib.validate_structure(s)
  with pytest.raises(InputError, match="overlap"):
    crystals_lib.validate_structure(s, min_distance=1.0)


def test_a_collapsed_cell_fails_without_growing_the_force_field():
  """A cell 0.8 Å thin (accepted, below min_cell_height) needs 7 images of the 5 Å pair
  potential: it fails as cell_collapse at step 0 instead of growing the image range."""
  thin = Structure(Lattice([[4, 0, 0], [0, 4, 0], [0, 0, 0.8]]), ["Li"], [[0, 0, 0]])
  stats = {}
  small = analytic.lennard_jones(sigma=2.0, epsilon=0.1, images=1)
  (r,) = relax.relax_structures([thin], small, stats=stats, max_steps=5)
  assert r.failed and r.failure_reason == "cell_collapse" and r.steps == 0
  assert stats["retries"] == 0


def test_a_capacity_beyond_the_memory_budget_is_a_capacity_failure():
  """A cell 1.05 Å thin needs 5 images of the 5 Å pair potential; with a 1 MB budget the growth
  stops at 2 (what the 3.5 Å cell needs) and the thin cell fails as ``capacity`` while the other
  one relaxes."""
  thin = Structure(Lattice([[4, 0, 0], [0, 4, 0], [0, 0, 1.05]]), ["Li"], [[0, 0, 0]])
  good = Structure(Lattice.cubic(3.5), ["Li"], [[0, 0, 0]])
  small = analytic.lennard_jones(sigma=2.0, epsilon=0.1, images=1)
  stats = {}
  bad, ok = relax.relax_structures(
    [thin, good], small, stats=stats, max_steps=5, memory_budget_mb=1, min_bucket_structures=0
  )
  assert bad.failed and bad.failure_reason == "capacity" and not bad.converged
  assert not ok.failed and stats["force_field"].images == 2
