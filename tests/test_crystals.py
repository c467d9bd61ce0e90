"""Crystals batches, conversion, and one-line errors for bad structure files."""

import os
import subprocess
import sys

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

import crystal_search as cs
from crystal_search import crystals as cr

DATA = os.path.join(os.path.dirname(cs.__file__), "data", "lisi_phases")


def _lisi():
  return Structure.from_file(os.path.join(DATA, "LiSi_mp-795.cif"))


def test_round_trip_structures_and_atoms():
  a = _lisi()
  b = Structure(
    Lattice.from_parameters(3, 4, 5, 80, 95, 100), ["Li", "Si"], [[0, 0, 0], [0.5, 0.4, 0.3]]
  )
  batch = cs.from_structures([a, b], batch_size=4)
  assert batch.positions.shape == (4, 32, 3)
  assert list(batch.n_atoms) == [32, 2, 0, 0]
  assert batch.mask.sum() == 34
  back = cs.to_structures(batch)
  assert len(back) == 2
  for orig, new in zip([a, b], back, strict=True):
    np.testing.assert_allclose(new.lattice.matrix, orig.lattice.matrix, atol=1e-5)
    np.testing.assert_allclose(new.frac_coords, orig.frac_coords % 1.0, atol=1e-6)
    assert [s.symbol for s in new.species] == [s.symbol for s in orig.species]
  atoms = cs.to_atoms(batch)
  again = cs.from_atoms(atoms, max_atoms=32)
  np.testing.assert_allclose(again.lattice[:2], batch.lattice[:2], atol=1e-5)
  vol = np.asarray(batch.volume())[:2]
  np.testing.assert_allclose(vol, [a.volume, b.volume], rtol=1e-5)
  cart = np.asarray(batch.cartesian())[1, :2]
  np.testing.assert_allclose(cart, b.cart_coords, atol=1e-5)


def test_buckets():
  assert cs.bucket_size(1) == 8
  assert cs.bucket_size(38) == 40
  assert cs.bucket_size(76) == 80
  with pytest.raises(cs.InputError, match="exceeds"):
    cs.bucket_size(10_000)


def test_pad_and_take():
  batch = cs.from_structures([_lisi()])
  padded = cr.pad_batch(batch, 3)
  assert padded.batch_size == 3 and list(padded.n_atoms) == [32, 0, 0]
  one = cr.take(padded, np.array([0]))
  assert one.batch_size == 1


def _write(tmp_path, name, content, mode="w"):
  p = tmp_path / name
  with open(p, mode) as f:
    f.write(content)
  return str(p)


def test_reads_cif_poscar_extxyz_json(tmp_path):
  s = _lisi()
  s.to(filename=str(tmp_path / "a.cif"))
  s.to(filename=str(tmp_path / "POSCAR"), fmt="poscar")
  import ase.io

  ase.io.write(str(tmp_path / "a.extxyz"), [AseAtomsAdaptor.get_atoms(s)] * 2)
  _write(tmp_path, "a.json", s.to_json())
  for name, n in [("a.cif", 1), ("POSCAR", 1), ("a.extxyz", 2), ("a.json", 1)]:
    got = cs.read_structures(str(tmp_path / name))
    assert len(got) == n
    assert got[0].composition.reduced_formula == "LiSi"
  assert cr.expand_inputs(str(tmp_path / "*.cif")) == [str(tmp_path / "a.cif")]


BAD_POSCAR_NAN = """Li2
1.0
3 0 0
0 3 0
0 0 3
Li
2
direct
0 0 0
nan 0.5 0.5
"""

LEFT_HANDED = """Li2
1.0
3 0 0
0 0 3
0 3 0
Li
2
direct
0 0 0
0.5 0.5 0.5
"""

OVERLAP = """Li2
1.0
5 0 0
0 5 0
0 0 5
Li
2
direct
0 0 0
0.01 0 0
"""

ZERO_VOLUME = """Li2
1.0
3 0 0
3 0 0
0 0 3
Li
2
direct
0 0 0
0.5 0.5 0.5
"""

H2O = """H2O
1.0
5 0 0
0 5 0
0 0 5
H O
2 1
direct
0 0 0
0.3 0 0
0 0.4 0
"""


@pytest.mark.parametrize(
  "name,content,pattern",
  [
    ("empty.cif", "", "empty file"),
    ("bin.cif", b"\x00\x01\x02garbage", "binary file"),
    ("trunc.cif", "data_x\n_cell_length_a 3.0\n_cell_length_b", "cannot parse|no structure"),
    ("POSCAR_nan", BAD_POSCAR_NAN, "NaN|cannot parse"),
    ("POSCAR_left", LEFT_HANDED, "left-handed"),
    ("POSCAR_overlap", OVERLAP, "overlap"),
    ("POSCAR_zero", ZERO_VOLUME, "zero volume|cannot parse"),
  ],
)
def test_bad_files_give_one_line_errors(tmp_path, name, content, pattern):
  path = _write(tmp_path, name, content, mode="wb" if isinstance(content, bytes) else "w")
  with pytest.raises(cs.InputError, match=pattern) as info:
    cs.read_structures(path)
  msg = str(info.value)
  assert "\n" not in msg and path in msg


def test_unknown_element_and_size_limits(tmp_path):
  path = _write(tmp_path, "POSCAR_h2o", H2O)
  with pytest.raises(cs.InputError, match="element.*H.*not supported"):
    cs.read_structures(path, allowed_elements=("Li", "Si"))
  with pytest.raises(cs.InputError, match="exceeds the limit"):
    cs.read_structures(path, max_atoms=2)
  with pytest.raises(cs.InputError, match="no such file"):
    cs.read_structures(str(tmp_path / "missing.cif"))


def test_cli_usage_and_unknown_command():
  out = subprocess.run(
    [sys.executable, "-m", "experiments.cli", "--help"], capture_output=True, text=True, check=False
  )
  assert out.returncode == 0 and "relax" in out.stdout and "search" in out.stdout
  out = subprocess.run(
    [sys.executable, "-m", "experiments.cli", "frobnicate"],
    capture_output=True,
    text=True,
    check=False,
  )
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[0] == "error: unknown command 'frobnicate'"
