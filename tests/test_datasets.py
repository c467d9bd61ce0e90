"""Dataset protocol (sampling, split, builder) and importers (extxyz, VASP, paper JSON)."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystal_search.crystals import from_structures
from crystal_search.datasets import frames as frames_lib
from crystal_search.datasets import importers, sampling
from crystal_search.datasets.teacher import morse_force_field
from crystal_search.errors import InputError
from crystal_search.units import EV_PER_A3_TO_KBAR

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _trajectory(fmax, *, name="t", formula="LiSi", repeat_from=None, seed=0, failed=False):
  """A synthetic trajectory: one step per entry of ``fmax`` (max force of that step, eV/Å).

  Steps from ``repeat_from`` on repeat the structure of step ``repeat_from``.
  """
  rng = np.random.default_rng(seed)
  base = Structure(Lattice.cubic(6.0), ["Li", "Li", "Si", "Si"], rng.random((4, 3)))
  records = []
  frac = base.frac_coords
  for k, f in enumerate(fmax):
    if repeat_from is None or k <= repeat_from:
      frac = (frac + rng.normal(0, 0.06, frac.shape)) % 1.0
    forces = np.zeros((4, 3))
    forces[1, 2] = f
    records.append(
      {
        "numbers": base.atomic_numbers,
        "positions": frac,
        "forces": forces,
        "lattice": base.lattice.matrix,
        "stress": np.eye(3) * k,
        "energy": -k,
        "trajectory": 0,
        "step": k,
      }
    )
  meta = {"formula": formula, "failed": failed, "converged": not failed, "name": name}
  return frames_lib.from_arrays(records, trajectory_names=[name], metadata=meta)


def test_max_forces_and_prefix():
  t = _trajectory([2.0, 1.0, 0.5, 0.08, 0.3, 0.05])
  np.testing.assert_allclose(sampling.max_forces(t), [2.0, 1.0, 0.5, 0.08, 0.3, 0.05])
  np.testing.assert_array_equal(sampling.trajectory_prefix(t, 0.1), [0, 1, 2, 3])
  never = _trajectory([1.0, 0.9])
  np.testing.assert_array_equal(sampling.trajectory_prefix(never, 0.1), [0, 1])


def test_sampling_high_force_stride_and_no_repeats():
  fmax = [1.0] * 23 + [0.05] * 10
  t = _trajectory(fmax)
  kept = sampling.sample_training_frames(t)
  np.testing.assert_array_equal(kept, [0, 5, 10, 15, 20])  # one in five, high force only
  # Frames that repeat the previous kept structure are dropped.
  r = _trajectory([1.0] * 23, repeat_from=3)
  kept = sampling.sample_training_frames(r)
  assert list(kept) == [0, 5]  # 5 differs from 0 (moved until step 3); 10, 15, 20 repeat 5
  # No frame at or below the threshold.
  low = _trajectory([0.1, 0.09, 0.2], seed=3)
  assert list(sampling.sample_training_frames(low)) == [2]


def test_split_is_stable_and_close_to_fractions():
  names = [f"LiSi_0_{i:05d}" for i in range(3000)]
  splits = [sampling.split_of(n, seed=0) for n in names]
  counts = {s: splits.count(s) / len(names) for s in sampling.SPLITS}
  assert abs(counts["train"] - 0.8) < 0.03 and abs(counts["val"] - 0.1) < 0.02
  assert splits == [sampling.split_of(n, seed=0) for n in names]
  assert splits != [sampling.split_of(n, seed=1) for n in names]
  with pytest.raises(InputError):
    sampling.split_of("x", seed=0, fractions=(0, 0, 0))


def _teacher_files(teacher_dir) -> list[str]:
  """12 synthetic relaxations (every 4th a held-out Li15Si4), 12 high-force steps + 3 low."""
  paths = []
  for i in range(12):
    formula = "Li15Si4" if i % 4 == 0 else "LiSi"
    t = _trajectory([1.0] * 12 + [0.05] * 3, name=f"{formula}_0_{i:05d}", formula=formula, seed=i)
    p = str(teacher_dir / formula / f"{formula}_0_{i:05d}.npz")
    t.save(p)
    paths.append(p)
  return paths


def test_build_dataset_writes_all_sets(tmp_path):
  teacher_dir = tmp_path / "teacher"
  paths = _teacher_files(teacher_dir)
  bad = _trajectory([np.nan] * 3, name="LiSi_0_99999", failed=True)
  bad.save(str(teacher_dir / "LiSi" / "LiSi_0_99999.npz"))
  paths.append(str(teacher_dir / "LiSi" / "LiSi_0_99999.npz"))
  out = str(tmp_path / "dataset")
  manifest = sampling.build_dataset(sorted(paths), out, source="test")
  for key in ("train", "val", "test", "test_trajectories", "holdout", "holdout_trajectories"):
    assert os.path.exists(os.path.join(out, f"{key}.npz"))
  with open(os.path.join(out, "manifest.json")) as f:
    assert json.load(f) == json.loads(json.dumps(manifest))
  per = manifest["per_stoichiometry"]
  assert per["Li15Si4"]["trajectories_holdout"] == 3 and per["Li15Si4"]["frames_train"] == 0
  assert per["Li15Si4"]["frames_holdout"] == 3 * 3  # steps 0, 5, 10 of each
  assert per["LiSi"]["relaxations"] == 10 and per["LiSi"]["failed"] == 1
  n_traj = sum(per["LiSi"][f"trajectories_{s}"] for s in sampling.SPLITS)
  assert n_traj == 9
  train = frames_lib.load(os.path.join(out, "train.npz"))
  assert len(train) == per["LiSi"]["frames_train"]
  assert np.all(sampling.max_forces(train) > 0.1)
  assert not any("99999" in n for n in train.trajectory_names)
  holdout_traj = frames_lib.load(os.path.join(out, "holdout_trajectories.npz"))
  assert len(holdout_traj) == 3 * 13  # 12 high-force steps + the first low-force one
  # Every trajectory is in exactly one split.
  seen = {}
  for key in ("train", "val", "test", "holdout"):
    f = frames_lib.load(os.path.join(out, f"{key}.npz"))
    for name in set(f.trajectory_names[t] for t in f.trajectory):
      assert name not in seen, (name, key, seen.get(name))
      seen[name] = key


def test_extxyz_round_trip_uses_ase_units_and_sign(tmp_path):
  import ase.io

  t = _trajectory([1.0, 0.5])
  t.stress = np.stack([np.diag([10.0, -5.0, 2.0]), np.eye(3) * 3.0])
  path = str(tmp_path / "t.extxyz")
  importers.write_extxyz(t, path)
  atoms = ase.io.read(path, index=":")
  # ASE: eV/Å^3, tensile positive, Voigt.
  np.testing.assert_allclose(
    atoms[0].get_stress()[:3], np.array([10.0, -5.0, 2.0]) / EV_PER_A3_TO_KBAR
  )
  np.testing.assert_allclose(atoms[1].get_forces(), t.forces[4:8])
  back = importers.read_extxyz(path)
  np.testing.assert_allclose(back.stress, t.stress, atol=1e-9)
  np.testing.assert_allclose(back.forces, t.forces)
  np.testing.assert_allclose(back.energy, t.energy)
  np.testing.assert_allclose(back.lattice, t.lattice)


def test_extxyz_stress_sign_against_an_ase_calculator(tmp_path):
  """An ASE calculator's own stress, exported and imported, keeps the physical sign."""
  import ase.io
  from ase.build import bulk
  from ase.calculators.lj import LennardJones

  atoms = bulk("Ar", "fcc", a=4.6) * (2, 1, 1)
  atoms.calc = LennardJones(sigma=3.4, epsilon=0.01, rc=7.0)
  atoms.set_cell(atoms.cell * 0.92, scale_atoms=True)  # compressed: pressure > 0
  atoms.get_stress()
  ase.io.write(str(tmp_path / "a.extxyz"), atoms)
  frames = importers.read_extxyz(str(tmp_path / "a.extxyz"))
  pressure = -np.trace(frames.stress[0]) / 3
  assert pressure > 0


def test_paper_json_fixture_reads_with_vasp_sign_converted():
  folder = os.path.join(FIXTURES, "paper_json", "Li15Si4_02")
  parts = importers.import_folder(folder)
  assert len(parts) == 2 and all(len(p) == 3 for p in parts)
  assert parts[0].metadata["formula"] == "Li15Si4"
  assert parts[0].trajectory_names == ["Li15Si4_02/0000"]
  assert importers.stoichiometry_of_folder(folder) == "Li15Si4"
  assert "SYNTHETIC" in importers.read_summary(folder)
  # Independent check: recompute the (Morse) labels on the imported structures.
  ff = morse_force_field()
  frames = parts[1]
  with open(os.path.join(folder, "data", "0001.json")) as f:
    raw = json.load(f)
  for i in range(len(frames)):
    out = ff(from_structures([frames.structure(i)], dtype=np.float64))
    n = int(frames.n_atoms[i])
    np.testing.assert_allclose(frames.stress[i], np.asarray(out.stress[0]), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(frames.stress[i], -np.asarray(raw[i]["stress"]), atol=1e-9)
    np.testing.assert_allclose(frames.forces[frames.atom_slice(i)], out.forces[0, :n], atol=1e-4)
    assert frames.energy[i] == pytest.approx(raw[i]["energy"])


def test_imported_data_goes_through_the_builder(tmp_path):
  parts = importers.import_folder(os.path.join(FIXTURES, "paper_json"))
  written = importers.save_imported(parts, str(tmp_path / "imported"))
  assert len(written) == 2
  manifest = sampling.build_dataset(
    written, str(tmp_path / "ds"), config=sampling.SamplingConfig(holdout=())
  )
  row = manifest["per_stoichiometry"]["Li15Si4"]
  assert row["relaxations"] == 2
  assert row["frames_train"] + row["frames_val"] + row["frames_test"] >= 1


@pytest.mark.parametrize(
  "content", ["{not json", '{"a": 1}', '[{"structure": {"bad": 1}}]', "[]", "[1, 2]"]
)
def test_corrupt_or_foreign_json_is_one_line_error(tmp_path, content):
  path = tmp_path / "x.json"
  path.write_text(content)
  with pytest.raises(InputError) as e:
    importers.read_paper_json(str(path))
  assert "\n" not in str(e.value)


def test_foreign_xml_is_one_line_error(tmp_path):
  path = tmp_path / "vasprun.xml"
  path.write_text("<?xml version='1.0'?><html><body>not vasp</body></html>")
  with pytest.raises(InputError) as e:
    importers.read_vasprun(str(path))
  assert "\n" not in str(e.value)
  with pytest.raises(InputError):
    importers.read_vasprun(str(tmp_path / "missing.xml"))


VASPRUNS = sorted(glob.glob(os.path.join(FIXTURES, "vasp", "*", "vasprun*.xml*")))


@pytest.mark.skipif(not VASPRUNS, reason="no vasprun.xml fixture")
def test_real_vasprun_relaxation():
  from pymatgen.io.vasp import Vasprun

  path = VASPRUNS[0]
  frames = importers.read_vasprun(path)
  run = Vasprun(path, parse_dos=False, parse_eigen=False, parse_potcar_file=False)
  assert len(frames) == len(run.ionic_steps) >= 3
  for k, step in enumerate(run.ionic_steps):
    np.testing.assert_allclose(frames.stress[k], -np.asarray(step["stress"]))
    np.testing.assert_allclose(frames.forces[frames.atom_slice(k)], step["forces"])
    np.testing.assert_allclose(frames.lattice[k], step["structure"].lattice.matrix)
  # Physics of the sign: VASP reports negative (tensile) stress and the cell shrinks, so the
  # project stress (tensile positive) is positive while the volume decreases.
  volumes = [abs(np.linalg.det(lat)) for lat in frames.lattice]
  assert np.all(np.diff(volumes) < 0)
  assert np.all(np.trace(frames.stress, axis1=1, axis2=2) > 0)
  assert np.all(np.diff(frames.energy) < 0)


def test_table4_statistics_against_direct_numpy():
  from crystal_search.datasets import stats

  t = _trajectory([1.0, 0.5, 0.2])
  t.stress = (
    np.stack([[[1.0, 2.0, 3.0], [2.0, -4.0, 5.0], [3.0, 5.0, 6.0]]] * 3)
    * np.arange(1, 4)[:, None, None]
  )
  table = stats.table4(t)
  forces = t.forces.reshape(-1)
  assert table["force"]["count"] == 3 * 4 * 3
  assert table["force"]["mean"] == pytest.approx(forces.mean())
  assert table["force"]["std"] == pytest.approx(forces.std())
  # six independent components per frame: xx yy zz yz xz xy
  comps = np.concatenate([np.array([1.0, -4, 6, 5, 3, 2]) * k for k in (1, 2, 3)])
  assert table["stress"]["count"] == 18
  assert table["stress"]["mean"] == pytest.approx(comps.mean())
  assert table["stress"]["min"] == pytest.approx(-12.0)
  np.testing.assert_allclose(table["max_force"]["max"], 1.0)
  assert table["max_stress"]["max"] == pytest.approx(18.0)
  md = stats.table4_markdown(table, title="x")
  assert "| Force (eV/Å) |" in md


def test_teacher_summary_and_stats_binary(tmp_path):
  import subprocess
  import sys

  from crystal_search.datasets import stats

  meta = [
    {"formula": "LiSi", "converged": True, "failed": False, "steps": 10, "wall_seconds": 2.0},
    {"formula": "LiSi", "converged": False, "failed": True, "steps": 30, "wall_seconds": 4.0},
    {"formula": "Li2Si", "converged": True, "failed": False, "steps": 5, "wall_seconds": 1.0},
  ]
  summary = stats.teacher_summary(meta)
  assert summary["LiSi"]["relaxations"] == 2 and summary["LiSi"]["failed"] == 1
  assert summary["LiSi"]["teacher_seconds_per_relaxation"] == pytest.approx(3.0)
  assert summary["LiSi"]["mean_steps"] == pytest.approx(20.0)
  # End to end: build a small dataset, run the binary.
  teacher_dir = tmp_path / "teacher"
  for i in range(6):
    t = _trajectory([1.0] * 11, name=f"LiSi_0_{i:05d}", seed=i)
    t.metadata.update(steps=11, wall_seconds=1.5, n_atoms=4)
    t.save(str(teacher_dir / "LiSi" / f"LiSi_0_{i:05d}.npz"))
  paths = sorted(str(p) for p in teacher_dir.glob("*/*.npz"))
  sampling.build_dataset(paths, str(tmp_path / "ds"))
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "data_tools.dataset_stats",
      f"--teacher_dir={teacher_dir}",
      f"--dataset_dir={tmp_path / 'ds'}",
      f"--output_dir={tmp_path / 'stats'}",
      f"--summary_json={tmp_path / 'stats.json'}",
    ],
    cwd=repo,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  with open(tmp_path / "stats.json") as f:
    data = json.load(f)
  row = data["per_stoichiometry"]["LiSi"]
  assert row["relaxations"] == 6 and row["teacher_seconds_per_relaxation"] == pytest.approx(1.5)
  assert row["frames_train"] + row["frames_val"] + row["frames_test"] == 6 * 3
  assert (tmp_path / "stats" / "table4.md").exists()
  assert list((tmp_path / "stats").glob("distribution_*.png"))


def test_md_supercells_and_nvt_frames():
  from ase.calculators.lj import LennardJones

  from crystal_search.datasets import md
  from crystal_search.units import stress_from_ase

  phases = md.known_phases()
  cell = md.supercell_in_range(phases["LiSi"])
  assert 64 <= len(cell) <= 78 and cell.composition.reduced_formula == "LiSi"
  assert md.supercell_in_range(phases["Li12Si7"]) is None  # 152 atoms: no multiple fits
  small = phases["Si"]  # 8 atoms: quick
  calc = LennardJones(sigma=2.1, epsilon=0.05, rc=5.0)
  frames = md.run_nvt(small, calc, steps=20, sample_every=5, seed=1, stol=None)
  assert list(frames.step) == [0, 5, 10, 15, 20]
  assert frames.metadata["simulated_ps"] == pytest.approx(0.04)
  # Labels are the calculator's, in project units.
  from pymatgen.io.ase import AseAtomsAdaptor

  s = frames.structure(2)
  atoms = AseAtomsAdaptor.get_atoms(s)
  atoms.calc = LennardJones(sigma=2.1, epsilon=0.05, rc=5.0)
  np.testing.assert_allclose(frames.forces[frames.atom_slice(2)], atoms.get_forces(), atol=1e-8)
  np.testing.assert_allclose(frames.stress[2], stress_from_ase(atoms.get_stress()), atol=1e-6)
  # Same seed, same trajectory; near-duplicates (every step, tiny steps) are dropped.
  again = md.run_nvt(small, calc, steps=20, sample_every=5, seed=1, stol=None)
  np.testing.assert_array_equal(again.positions, frames.positions)
  dedup = md.run_nvt(small, calc, steps=6, sample_every=1, timestep_fs=0.05, seed=1, stol=0.05)
  assert len(dedup) < 7


def test_md_dataset_split_by_time(tmp_path):
  runs = []
  for i, formula in enumerate(["LiSi", "Li13Si4", "Li15Si4"]):
    t = _trajectory([1.0] * 20, name=f"{formula}_md", formula=formula, seed=i)
    p = str(tmp_path / "md" / f"{formula}_md_0.npz")
    t.save(p)
    runs.append(p)
  manifest = sampling.build_md_dataset(runs, str(tmp_path / "ds"))
  assert set(manifest["per_stoichiometry"]) == {"LiSi", "Li13Si4"}
  assert manifest["per_stoichiometry"]["LiSi"] == {
    "runs": 1,
    "frames_train": 16,
    "frames_val": 2,
    "frames_test": 2,
  }
  train = frames_lib.load(str(tmp_path / "ds" / "train.npz"))
  test = frames_lib.load(str(tmp_path / "ds" / "test.npz"))
  assert train.step.max() < test.step.min()  # test frames come after the training frames


def test_build_dataset_cache_gives_identical_output(tmp_path, monkeypatch):
  paths = []
  for i in range(4):
    t = _trajectory([1.0] * 12, name=f"LiSi_0_{i:05d}", seed=i)
    p = str(tmp_path / "teacher" / "LiSi" / f"LiSi_0_{i:05d}.npz")
    t.save(p)
    paths.append(p)
  out = str(tmp_path / "ds")
  first = sampling.build_dataset(paths, out)
  assert os.path.exists(os.path.join(out, "sampling_cache.json"))
  train_a = frames_lib.load(os.path.join(out, "train.npz"))

  # Second build must not call the sampler (all cached) and must give the same sets.
  def boom(*args, **kwargs):
    raise AssertionError("sampler called despite the cache")

  monkeypatch.setattr(sampling, "sample_training_frames", boom)
  second = sampling.build_dataset(paths, out)
  assert first["per_stoichiometry"] == second["per_stoichiometry"]
  train_b = frames_lib.load(os.path.join(out, "train.npz"))
  np.testing.assert_array_equal(train_a.positions, train_b.positions)
  # Different settings invalidate the cache.
  with pytest.raises(AssertionError, match="sampler called"):
    sampling.build_dataset(paths, out, config=sampling.SamplingConfig(stride=3))


def test_strained_copies_are_seeded_and_keep_the_drawn_volume():
  from crystal_search.datasets import strain

  s = Structure(Lattice.cubic(5.0), ["Li", "Si"], [[0, 0, 0], [0.5, 0.5, 0.5]])
  config = strain.StrainConfig(copies=6, volume_range=(0.9, 1.1), shear_std=0.03, rattle=0.0)
  a = strain.strained_copies(s, name="x", config=config)
  b = strain.strained_copies(s, name="x", config=config)
  c = strain.strained_copies(s, name="y", config=config)
  assert len(a) == 6
  assert all(np.allclose(p.lattice.matrix, q.lattice.matrix) for p, q in zip(a, b, strict=True))
  assert not np.allclose(a[0].lattice.matrix, c[0].lattice.matrix)
  ratios = np.array([p.volume / s.volume for p in a])
  assert np.all((ratios >= 0.9 - 1e-9) & (ratios <= 1.1 + 1e-9)) and ratios.std() > 0.01
  assert any(abs(p.lattice.alpha - 90) > 0.1 for p in a)  # sheared, not only scaled
  with pytest.raises(InputError, match="volume_range"):
    strain.StrainConfig(volume_range=(1.1, 0.9)).check()


def test_frame_source_labels_copies_of_every_training_frame_across_workers(tmp_path):
  from crystal_search.datasets import strain

  paths = _teacher_files(tmp_path / "teacher")
  base = str(tmp_path / "dataset")
  sampling.build_dataset(sorted(paths), base)
  train = frames_lib.load(os.path.join(base, "train.npz"))
  out = str(tmp_path / "rattled")
  config = strain.StrainConfig(copies=1, volume_range=(0.95, 1.05), rattle=0.05)
  ff = morse_force_field()
  kw = dict(force_field=ff, config=config, source="frames", shard_size=2)
  # Worker 1 of 2 labels its shards only and does not join while worker 0's are missing.
  first = strain.build([], base, out, worker=(1, 2), **kw)
  n_shards = -(-len(train) // 2)
  assert first == {"missing_shards": (n_shards + 1) // 2}  # worker 0's: shards 0, 2, ...
  assert not os.path.exists(os.path.join(out, "train.npz"))
  made = strain.build([], base, out, worker=(0, 2), **kw)
  extra = frames_lib.load(os.path.join(out, "strain.npz"))
  assert made["strain_frames"] == len(extra) == len(train)
  assert made["source"] == {"kind": "frames", "max_sources": 0}
  # Copy k is frame k moved (names follow the source frame) and labelled by the teacher.
  name = f"{train.trajectory_names[train.trajectory[3]]}/step_{train.step[3]}/strain_0"
  assert extra.trajectory_names[extra.trajectory[3]] == name
  moved = np.abs(extra.structure(3).cart_coords - train.structure(3).cart_coords)
  assert 0.0 < moved.mean() < 0.3
  direct = ff(from_structures([extra.structure(3)]))
  assert np.allclose(
    extra.forces[extra.atom_slice(3)], np.asarray(direct.forces)[0, : len(moved)], atol=1e-4
  )
  assert len(frames_lib.load(os.path.join(out, "train.npz"))) == 2 * len(train)

  def no_teacher(batch):
    raise AssertionError("relabelled although strain.npz is there")

  again = strain.build([], base, out, **dict(kw, force_field=no_teacher))
  assert again["strain_frames"] == len(train)
  # A seeded subset; an unknown source or worker index is one line.
  sub = strain.build([], base, str(tmp_path / "sub"), max_sources=3, **kw)
  assert sub["strain_frames"] == 3
  with pytest.raises(InputError, match="source"):
    strain.build([], base, out, force_field=ff, config=config, source="nope")
  with pytest.raises(InputError, match="worker"):
    strain.build([], base, out, worker=(2, 2), **kw)


def test_strain_dataset_adds_labelled_frames_of_training_finals_only(tmp_path):
  from crystal_search.datasets import strain

  paths = _teacher_files(tmp_path / "teacher")
  base = str(tmp_path / "dataset")
  manifest = sampling.build_dataset(sorted(paths), base)
  out = str(tmp_path / "strained")
  config = strain.StrainConfig(copies=2)
  ff = morse_force_field()
  made = strain.build(paths, base, out, force_field=ff, config=config, shard_size=2)
  n_train = manifest["per_stoichiometry"]["LiSi"]["trajectories_train"]
  assert made["strain_frames"] == 2 * n_train
  extra = frames_lib.load(os.path.join(out, "strain.npz"))
  train_names = {
    n.split("/")[0] for n in frames_lib.load(os.path.join(base, "train.npz")).trajectory_names
  }
  assert {n.split("/")[0] for n in extra.trajectory_names} == train_names
  # The labels are the force field's own on those structures.
  direct = ff(from_structures([extra.structure(0)]))
  assert np.allclose(extra.stress[0], np.asarray(direct.stress)[0], atol=1e-4)
  joined = frames_lib.load(os.path.join(out, "train.npz"))
  assert len(joined) == made["base_train_frames"] + len(extra)
  for split in ("val", "test", "holdout"):  # the other splits are the base dataset's
    a = frames_lib.load(os.path.join(out, f"{split}.npz"))
    b = frames_lib.load(os.path.join(base, f"{split}.npz"))
    assert np.array_equal(a.positions, b.positions)
  # A rerun without teacher files rebuilds from strain.npz; other settings are refused.
  again = strain.build([], base, out, force_field=None, config=config)
  assert again["strain_frames"] == made["strain_frames"]
  with pytest.raises(InputError, match="other settings"):
    strain.build([], base, out, force_field=None, config=strain.StrainConfig(copies=3))
  # Without its joined train.npz (not committed) training names the command that rebuilds it.
  from crystal_search import training
  from experiments.configs import data as data_configs

  os.remove(os.path.join(out, "train.npz"))
  with pytest.raises(InputError, match="build-strain-frames --teacher= --dataset=") as err:
    training.load_dataset(data_configs.get_config(out), elements=("Li", "Si"))
  assert os.path.normpath(base) in str(err.value)
