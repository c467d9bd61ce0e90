"""Tests of composition parsing and AIRSS-style random structures."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
from pymatgen.core import Composition
from pymatgen.io.cif import CifParser
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from crystal_search import random_structures as rs
from crystal_search.compositions import formula_units, parse_composition
from crystal_search.errors import InputError


def test_parse_composition_good():
  assert parse_composition("Li15Si4") == Composition("Li15Si4")
  assert parse_composition("LiSi") == Composition({"Li": 1, "Si": 1})
  assert parse_composition("Li2Si2").num_atoms == 4
  assert parse_composition("Si", allowed_elements=("Li", "Si")) == Composition("Si")


@pytest.mark.parametrize("bad", ["", "  ", "Xx2", "Li0Si", "Li1.5Si", "Li-2Si", "li2si", "Li2Si)"])
def test_parse_composition_bad(bad):
  with pytest.raises(InputError) as e:
    parse_composition(bad)
  assert "\n" not in str(e.value)


def test_parse_composition_unsupported_element():
  with pytest.raises(InputError, match="not supported"):
    parse_composition("LiGe", allowed_elements=("Li", "Si"))


def test_formula_units():
  assert formula_units(Composition("Li15Si4"), 38) == [1, 2]
  assert formula_units(Composition("LiSi"), 5) == [1, 2]
  with pytest.raises(InputError):
    formula_units(Composition("Li15Si4"), 10)


def test_element_volume_fit_reproduces_a_known_phase():
  volumes = rs.default_element_volumes()
  paths = glob.glob(os.path.join(rs.LISI_PHASES_DIR, "*.cif"))
  structures = [CifParser(p).parse_structures(primitive=False)[0] for p in paths]
  # Independent check: the least-squares normal equations hold at the fitted solution.
  symbols = sorted(volumes)
  a = np.array([[s.composition[x] for x in symbols] for s in structures])
  v = np.array([s.volume for s in structures])
  x = np.array([volumes[k] for k in symbols])
  np.testing.assert_allclose(a.T @ (a @ x - v), 0.0, atol=1e-6 * np.abs(a.T @ v).max())
  # And the estimates are within 15 % of every known Li–Si compound (30 % for pure Li and Si).
  for s in structures:
    est = rs.estimate_volume(s.composition, volumes)
    limit = 0.15 if len(s.composition) == 2 else 0.30
    assert abs(est / s.volume - 1) < limit, s.composition


def test_point_group_orders_from_spglib():
  orders = rs.point_group_orders()
  assert orders[1] == 1 and orders[2] == 2 and orders[14] == 4 and orders[62] == 8
  assert orders[221] == 48 and orders[168] == 6 and orders[143] == 3
  groups = rs.space_groups_with_symmops(2, 6)
  assert 1 not in groups and 47 not in groups and 174 in groups and 175 not in groups


@pytest.mark.parametrize("formula", ["LiSi", "Li13Si4", "Li15Si4"])
def test_generated_structures_respect_constraints(formula):
  config = rs.RandomStructureConfig(symmetric_fraction=0.5)
  result = rs.generate(formula, 6, seed=3, config=config)
  assert len(result.structures) + len(result.failed) == 6
  assert len(result.structures) >= 5
  unit = Composition(formula).reduced_composition
  volumes = rs.default_element_volumes()
  for s in result.structures:
    assert len(s) <= config.max_atoms
    assert s.composition.reduced_composition == unit
    assert rs.min_distance(s) >= config.min_separation - 1e-6
    target = rs.estimate_volume(s.composition, volumes)
    assert 0.8 * target - 1e-6 <= s.volume <= 1.5 * target + 1e-6


def test_symmetric_structures_have_requested_symmetry_operations():
  config = rs.RandomStructureConfig(symmetric_fraction=1.0)
  result = rs.generate("Li2Si", 6, seed=5, config=config)
  orders = rs.point_group_orders()
  n_symmetric = 0
  for s, info in zip(result.structures, result.info):
    if info["space_group"] == 1:  # no compatible symmetric group for this cell size
      continue
    n_symmetric += 1
    assert 2 <= orders[info["space_group"]] <= 6
    ops = SpacegroupAnalyzer(s, symprec=1e-3).get_symmetry_dataset().rotations
    n_rot = len({np.asarray(r).tobytes() for r in ops})
    assert n_rot == orders[info["space_group"]]
  assert n_symmetric >= 4


def test_pair_specific_separation():
  config = rs.RandomStructureConfig(
    min_separation=2.0, pair_min_separation=(("Si-Si", 2.6),), symmetric_fraction=0.0
  )
  result = rs.generate("LiSi", 4, seed=0, config=config)
  for s in result.structures:
    si = s.copy()
    si.remove_species(["Li"])
    if len(si) > 1 or min(si.lattice.abc) < 3:
      assert rs.min_distance(si) >= 2.6 - 1e-6
    assert rs.min_distance(s) >= 2.0 - 1e-6


def test_same_seed_same_structures_and_index_independence():
  a = rs.generate("Li7Si2", 3, seed=11)
  b = rs.generate("Li7Si2", 3, seed=11)
  c = rs.generate("Li7Si2", 1, seed=11, indices=[2])
  d = rs.generate("Li7Si2", 3, seed=12)
  for x, y in zip(a.structures, b.structures):
    np.testing.assert_array_equal(x.frac_coords, y.frac_coords)
    np.testing.assert_array_equal(x.lattice.matrix, y.lattice.matrix)
  np.testing.assert_array_equal(a.structures[2].frac_coords, c.structures[0].frac_coords)
  assert not np.allclose(a.structures[0].lattice.matrix, d.structures[0].lattice.matrix)


def test_formula_units_pin_the_cell_size():
  # AIRSS NFORM: Li15Si4 with z=2 only gives 38-atom cells (the experimental primitive cell's).
  config = rs.RandomStructureConfig(formula_units=(2,), symmetric_fraction=1.0)
  result = rs.generate("Li15Si4", 3, seed=0, config=config)
  assert [len(s) for s in result.structures] == [38, 38, 38]
  assert all(info["formula_units"] == 2 for info in result.info)
  assert all(info["point_group_order"] >= 2 for info in result.info)
  # Unset, the default draw is unchanged: the same seed gives the same structure as before.
  a = rs.generate("LiSi", 2, seed=4).structures
  b = rs.generate("LiSi", 2, seed=4, config=rs.RandomStructureConfig(formula_units=())).structures
  np.testing.assert_array_equal(a[1].frac_coords, b[1].frac_coords)


def test_primitive_cells_let_centred_groups_hold_the_whole_primitive_cell():
  # Default: a centred group's 38-atom conventional cell reduces to a 19-atom primitive cell.
  # primitive_cells: 38 atoms in the primitive cell itself (the size of Li15Si4's I-43d cell).
  def centred(primitive_cells):
    config = rs.RandomStructureConfig(
      formula_units=(2,), symmetric_fraction=1.0, primitive_cells=primitive_cells
    )
    result = rs.generate("Li15Si4", 12, seed=0, config=config)
    out = []
    for s, info in zip(result.structures, result.info, strict=True):
      if rs.centring_multiplicity(info["space_group"]) > 1:
        out.append((len(s), len(s.get_primitive_structure()), info))
    return out

  conventional = centred(False)
  primitive = centred(True)
  assert conventional and primitive
  assert all(n == 38 and p == 19 for n, p, _ in conventional)
  assert all(n == 38 and p == 38 for n, p, _ in primitive)
  # R3c (6 operations, a subgroup of I-43d) holds 38 primitive atoms only when counted so.
  assert 161 in rs.compatible_space_groups((30, 8), 2, 6, primitive=True)
  assert 161 not in rs.compatible_space_groups((30, 8), 2, 6)
  for _, _, info in primitive:
    assert info["point_group_order"] == rs.point_group_orders()[info["space_group_detected"]]


@pytest.mark.parametrize(
  "overrides,pattern",
  [
    ({"formula_units": (3,)}, "formula_units 3"),
    ({"formula_units": (0,)}, "formula_units 0"),
    ({"min_symmops": 7, "max_symmops": 6}, "symmetry operations"),
  ],
)
def test_bad_generator_options_are_one_line_errors(overrides, pattern):
  with pytest.raises(InputError, match=pattern) as e:
    rs.generate("Li15Si4", 1, seed=0, **overrides)
  assert "\n" not in str(e.value)


def test_min_symmops_pins_a_high_symmetry():
  config = rs.RandomStructureConfig(
    max_atoms=8, symmetric_fraction=1.0, min_symmops=24, max_symmops=24
  )
  result = rs.generate("LiSi", 3, seed=1, config=config)
  assert len(result.structures) == 3
  for s, info in zip(result.structures, result.info, strict=True):
    assert info["point_group_order"] == 24
    ops = SpacegroupAnalyzer(s, symprec=1e-3).get_symmetry_dataset().rotations
    assert len({np.asarray(r).tobytes() for r in ops}) % 24 == 0


def test_symmetry_no_allowed_cell_size_can_have_is_one_line_error():
  # No space group with 48 operations holds 5 Li + 1 Si (Li5Si, max_atoms 6: z = 1 only).
  assert not rs.compatible_space_groups((5, 1), 48, 48, primitive=True)
  options = dict(max_atoms=6, min_symmops=48, max_symmops=48, primitive_cells=True)
  with pytest.raises(InputError, match="no space group with 48 to 48") as e:
    rs.generate("Li5Si", 1, seed=0, symmetric_fraction=1.0, **options)
  assert "\n" not in str(e.value)
  # Without symmetric cells the symmetry range is not used, so nothing is refused.
  assert len(rs.generate("Li5Si", 1, seed=0, symmetric_fraction=0.0, **options).structures) == 1


def test_impossible_separation_is_one_line_error():
  config = rs.RandomStructureConfig(min_separation=5.0)
  with pytest.raises(InputError) as e:
    rs.generate("LiSi", 2, seed=0, config=config)
  assert "\n" not in str(e.value)


def test_hard_but_not_excluded_constraints_fail_bounded():
  # Passes the packing bound but random placement cannot make it: bounded retries, then error.
  config = rs.RandomStructureConfig(
    min_separation=2.9, volume_range=(0.8, 0.85), max_attempts=2, symmetric_fraction=0.0
  )
  with pytest.raises(InputError) as e:
    rs.generate("Li13Si4", 2, seed=0, config=config)
  assert "\n" not in str(e.value)


def test_write_extxyz_and_cifs(tmp_path):
  import ase.io

  result = rs.generate("LiSi", 2, seed=1)
  names = [rs.structure_name("LiSi", 1, i) for i in result.indices]
  out = rs.write_structures(result.structures, str(tmp_path / "a.extxyz"), names=names)
  atoms = ase.io.read(out[0], index=":")
  assert len(atoms) == 2 and atoms[0].info["name"] == "LiSi_1_00000"
  files = rs.write_structures(result.structures, str(tmp_path / "cifs"), names=names)
  back = CifParser(files[1]).parse_structures(primitive=False)[0]
  assert back.composition == result.structures[1].composition


def test_config_from_reads_the_search_and_teacher_config_sections():
  from crystal_search import search
  from crystal_search.random_structures import RandomStructureConfig, config_from
  from data_tools.configs import default_teacher

  c = search.get_search_config()
  c.formula_units, c.min_symmops, c.max_symmops, c.primitive_cells = "2", 24, 24, True
  got = search.generator_config(c)
  assert (got.formula_units, got.min_symmops, got.max_symmops) == ((2,), 24, 24)
  assert got.primitive_cells and got.volume_range == RandomStructureConfig().volume_range
  teacher = default_teacher.get_config().random
  teacher.volume_low, teacher.volume_high, teacher.max_attempts = 0.9, 1.2, 7
  got = config_from(teacher)
  assert got.volume_range == (0.9, 1.2) and got.max_attempts == 7
  with pytest.raises(InputError, match="formula"):
    config_from({"formula_units": "two"})
