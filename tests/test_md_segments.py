"""Long teacher MD in resumable segments: supercells, resume, divergence (cheap calculators)."""

import os

import numpy as np
import pytest
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.lj import LennardJones

from crystal_search.datasets import frames as frames_lib
from crystal_search.datasets import md, md_segments
from crystal_search.errors import InputError


def _lj():
  return LennardJones(sigma=2.1, epsilon=0.05, rc=5.0)


class _Breaks(Calculator):
  """Lennard-Jones, except that cells of ``bad_atoms`` atoms get a NaN energy after ``after``
  calls (a run that diverges part-way)."""

  implemented_properties = ("energy", "forces", "stress")

  def __init__(self, bad_atoms: int, after: int):
    super().__init__()
    self.bad_atoms, self.after, self.calls = bad_atoms, after, 0
    self.lj = _lj()

  def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
    super().calculate(atoms, properties, system_changes)
    self.lj.calculate(atoms, ["energy", "forces", "stress"], all_changes)
    self.results = dict(self.lj.results)
    if len(atoms) == self.bad_atoms:
      self.calls += 1
      if self.calls > self.after:
        self.results["energy"] = float("nan")


@pytest.fixture(scope="module")
def phases():
  return md.known_phases()


def test_supercell_non_diagonal_in_range(phases):
  cell, note = md.md_cell(phases["LiSi"])
  assert len(cell) == 64 and cell.composition.reduced_formula == "LiSi"
  matrix = np.asarray(cell.properties["supercell_matrix"])
  assert round(abs(np.linalg.det(matrix))) == 4  # 4 primitive cells of 16 atoms
  assert np.count_nonzero(matrix - np.diag(np.diag(matrix)))  # not a diagonal multiple
  assert "in 64-78" in note
  # Its shortest perpendicular width beats every diagonal multiple of the primitive cell.
  primitive = phases["LiSi"].get_primitive_structure()
  diag_best = max(
    md._min_width(np.diag(m) @ primitive.lattice.matrix)
    for m in [(4, 1, 1), (1, 4, 1), (1, 1, 4), (2, 2, 1), (2, 1, 2), (1, 2, 2)]
  )
  assert md._min_width(cell.lattice.matrix) >= diag_best - 1e-9


def test_phase_without_cell_in_range_is_reported(phases):
  # Li7Si3: 60-atom primitive cell, no multiple in 64-78.
  assert md.supercell_in_range(phases["Li7Si3"]) is None
  with pytest.raises(InputError, match="Li7Si3: no supercell"):
    md.md_cell(phases["Li7Si3"], nearest_outside=False)
  cell, note = md.md_cell(phases["Li7Si3"])  # the nearest multiple: the 60-atom cell
  assert len(cell) == 60 and "nearest" in note
  lines = []
  out = md_segments.md_phases(phases, ["Li7Si3", "LiSi"], nearest_outside=False, log=lines.append)
  assert [p.name for p in out] == ["LiSi_md_0"]
  assert lines[0].startswith("error: Li7Si3: no supercell") and "\n" not in lines[0]
  with pytest.raises(InputError, match="no bundled structure"):
    md_segments.md_phases(phases, ["Li3Si"], log=lines.append)


def test_resume_gives_the_uninterrupted_frames(tmp_path, phases):
  si = phases["Si"]  # 8 atoms
  whole = md_segments.MDSettings(segment_steps=40, sample_every=5)
  pieces = md_segments.MDSettings(segment_steps=10, sample_every=5)
  md_segments.run_segment(str(tmp_path / "a"), si, _lj(), whole, seed=3)
  for _ in range(4):  # a fresh calculator each time, as after a restart
    md_segments.run_segment(str(tmp_path / "b"), si, _lj(), pieces, seed=3)
  assert len(md_segments.segment_paths(str(tmp_path / "b"))) == 4
  a = md_segments.collect(str(tmp_path / "a"))
  b = md_segments.collect(str(tmp_path / "b"))
  assert a.metadata["steps"] == b.metadata["steps"] == 40
  assert a.metadata["simulated_ps"] == pytest.approx(0.08)
  np.testing.assert_array_equal(a.step, b.step)
  # Equal to round-off: a fresh Lennard-Jones neighbour list may sum pairs in another order.
  np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-12)
  np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=1e-12)
  np.testing.assert_allclose(a.stress, b.stress, rtol=0, atol=1e-9)
  assert a.step[0] == 0 and a.metadata["formula"] == "Si"
  # Labels are the calculator's, in project units (stress kBar).
  from pymatgen.io.ase import AseAtomsAdaptor

  from crystal_search.units import stress_from_ase

  atoms = AseAtomsAdaptor.get_atoms(a.structure(3))
  atoms.calc = _lj()
  np.testing.assert_allclose(a.forces[a.atom_slice(3)], atoms.get_forces(), atol=1e-8)
  np.testing.assert_allclose(a.stress[3], stress_from_ase(atoms.get_stress()), atol=1e-6)


def test_divergence_stops_one_phase_and_keeps_its_segments(tmp_path, phases):
  si = phases["Si"]
  runs = [
    md_segments.Phase("bad_md_0", si.get_primitive_structure(), 0),  # 2 atoms
    md_segments.Phase("good_md_0", si, 0),  # 8 atoms
  ]
  settings = md_segments.MDSettings(segment_steps=10, sample_every=5)
  lines = []
  calc = _Breaks(bad_atoms=2, after=15)  # the bad phase's second segment turns NaN
  status = md_segments.run_round_robin(
    runs, calc, str(tmp_path), settings, total_steps=30, log=lines.append
  )
  assert status["good_md_0"] == "done"
  assert status["bad_md_0"].startswith("error: bad_md_0: MD diverged: non-finite energy")
  errors = [line for line in lines if line.startswith("error:")]
  assert len(errors) == 1 and "\n" not in errors[0]
  bad_dir = str(tmp_path / "bad_md_0")
  assert len(md_segments.segment_paths(bad_dir)) == 1  # the good first segment is kept
  assert md_segments.steps_done(str(tmp_path / "good_md_0")) == 30
  collected = md_segments.collect(bad_dir)
  assert collected.metadata["steps"] == 10 and "diverged" in collected.metadata["diverged"]
  # A rerun reports the diverged phase again and leaves everything as it was.
  again = md_segments.run_round_robin(
    runs, _lj(), str(tmp_path), settings, total_steps=30, log=lines.append
  )
  assert again["good_md_0"] == "done" and again["bad_md_0"].startswith("error:")
  assert len(md_segments.segment_paths(bad_dir)) == 1


def test_temperature_divergence_and_deadline(tmp_path, phases):
  si = phases["Si"]
  hot = md_segments.MDSettings(segment_steps=10, sample_every=5, max_temperature_factor=0.01)
  with pytest.raises(md_segments.Diverged, match="temperature"):
    md_segments.run_segment(str(tmp_path / "hot"), si, _lj(), hot, seed=0)
  assert not md_segments.segment_paths(str(tmp_path / "hot"))
  assert "temperature" in md_segments.diverged_reason(str(tmp_path / "hot"))
  settings = md_segments.MDSettings(segment_steps=10, sample_every=5)
  status = md_segments.run_round_robin(
    [md_segments.Phase("x_md_0", si, 0)],
    _lj(),
    str(tmp_path),
    settings,
    total_steps=50,
    deadline=0.0,
  )
  assert status == {"x_md_0": "stopped"}
  with pytest.raises(InputError, match="multiple"):
    md_segments.MDSettings(segment_steps=12, sample_every=5)


def test_shard_and_segment_files(tmp_path):
  assert md_segments.shard_of(["a", "b", "c"], "1/2") == ["b"]
  with pytest.raises(InputError, match="shard"):
    md_segments.shard_of(["a"], "2/2")
  with pytest.raises(InputError, match="no MD segments"):
    md_segments.collect(str(tmp_path))
  assert md_segments.steps_done(str(tmp_path / "none")) == 0
  assert os.path.isdir(tmp_path)
  assert frames_lib.from_arrays([]).__len__() == 0


def test_md_dataset_reports_runs(tmp_path, phases):
  from crystal_search.datasets import sampling, stats

  settings = md_segments.MDSettings(segment_steps=20, sample_every=5)
  phase = md_segments.md_phases(phases, ["Si"], min_atoms=8, max_atoms=8, log=lambda _: None)[0]
  assert len(phase.structure) == 8
  phase_dir = str(tmp_path / "segments" / phase.name)
  for _ in range(2):
    md_segments.run_segment(phase_dir, phase.structure, _lj(), settings, seed=0)
  extra = {"cell_note": phase.structure.properties["cell_note"]}
  run_path = str(tmp_path / f"{phase.name}.npz")
  md_segments.collect(phase_dir, extra).save(run_path)
  manifest = sampling.build_md_dataset([run_path], str(tmp_path / "ds"))
  (run,) = manifest["runs"]
  assert run["formula"] == "Si" and run["n_atoms"] == 8 and run["simulated_ps"] == 0.08
  assert run["frames"] == sum(
    manifest["per_stoichiometry"]["Si"][f"frames_{k}"] for k in "train val test".split()
  )
  table = stats.md_runs_markdown(manifest)
  assert "| Si | 8 | in 8-8 | 0.08 |" in table
  md_frames = frames_lib.load(run_path)
  stats.plot_md_vs_random(md_frames, md_frames, str(tmp_path / "cmp.png"))
  assert os.path.getsize(tmp_path / "cmp.png") > 0
