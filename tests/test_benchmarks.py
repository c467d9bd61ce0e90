"""The benchmark scripts end bad input in one line, not a traceback (``benchmarks/_common.run``)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_line_error(script, flags, tmp_path):
  """Runs ``benchmarks/script`` with ``flags``; asserts it exits 1 with no traceback and no
  report written, and returns the one line it printed to stderr."""
  out = str(tmp_path / "report.json")
  done = subprocess.run(
    [sys.executable, os.path.join(ROOT, "benchmarks", script), *flags, f"--out={out}"],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    timeout=300,
  )
  assert done.returncode == 1 and "Traceback" not in done.stderr and not os.path.exists(out)
  lines = [x for x in done.stderr.splitlines() if x.strip() and "Warning" not in x]
  assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
  return lines[0]


def _report(script, flags, tmp_path):
  """Runs ``benchmarks/script`` with ``flags``; asserts it succeeds and returns its JSON report
  (written to ``tmp_path/report.json``, its markdown beside it)."""
  out = str(tmp_path / "report.json")
  done = subprocess.run(
    [sys.executable, os.path.join(ROOT, "benchmarks", script), *flags, f"--out={out}"],
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  with open(out) as f:
    return json.load(f)


@pytest.mark.parametrize(
  "script, flag",
  [
    ("equation_of_state.py", "--models=x=/nonexistent/model"),
    ("relax_throughput.py", "--model=/nonexistent/model"),
    ("relax_throughput.py", "--peer_model=/nonexistent/model"),
    ("committees.py", "--models=x=/nonexistent/model"),
  ],
)
def test_missing_model_directory_is_one_line(script, flag, tmp_path):
  assert "/nonexistent/model" in _one_line_error(script, [flag], tmp_path)


SHIPPED = os.path.join(ROOT, "crystal_search", "pretrained", "force_stress")


@pytest.mark.parametrize(
  "flags, message",
  [
    ([f"--peer_model={SHIPPED}"], "--peer_model needs --model"),
    ([f"--model={SHIPPED}", "--chgnet_structures=-1"], "--chgnet_structures=-1: must be 0"),
  ],
)
def test_relax_throughput_bad_flags_are_one_line(flags, message, tmp_path):
  assert message in _one_line_error("relax_throughput.py", flags, tmp_path)


def test_relax_throughput_compares_two_models_in_one_run(tmp_path):
  """``--peer_model``: part (c) relaxes the same cells with a second network in the same run;
  the shipped model against itself takes exactly the same steps, and ``--chgnet_structures=0``
  skips CHGNet."""
  args = ["--num_structures=3", "--max_steps=4", "--noscaling", "--chgnet_structures=0"]
  flags = [f"--model={SHIPPED}", f"--peer_model={SHIPPED}", *args]
  report = _report("relax_throughput.py", flags, tmp_path)
  assert "chgnet" not in report and not any(k.endswith("_over_chgnet") for k in report)
  ours, peer = report["ours"]["main"], report["peer"]["main"]
  assert ours["structures"] == peer["structures"] == 3
  assert ours["structure_steps"] == peer["structure_steps"] > 0
  assert ours["converged"] == peer["converged"]
  assert report["ours"]["weights"] == report["peer"]["weights"] == "trained: " + SHIPPED
  assert report["ratio_structure_steps_per_s_ours_over_peer"] > 0


@pytest.mark.parametrize(
  "start, chunk, message",
  [
    ("-32", "32", "--start=-32: must be a multiple of --chunk=32 below --num=512"),
    ("16", "32", "--start=16: must be a multiple of --chunk=32 below --num=512"),
    ("512", "32", "--start=512: must be a multiple of --chunk=32 below --num=512"),
    ("0", "0", "--chunk=0: must be at least 1"),
  ],
)
def test_li15si4_discovery_bad_start_or_chunk_is_one_line(start, chunk, message, tmp_path):
  script = os.path.join(ROOT, "benchmarks", "li15si4_discovery.py")
  args = [f"--start={start}", "--num=512", f"--chunk={chunk}", f"--work_dir={tmp_path / 'run'}"]
  done = subprocess.run(
    [sys.executable, script, *args], capture_output=True, text=True, cwd=tmp_path, timeout=300
  )
  assert done.returncode == 1 and "Traceback" not in done.stderr
  assert done.stderr.strip() == f"error: {message}"
  assert not os.path.exists(tmp_path / "run")


def _benchmark(name):
  import importlib

  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  try:
    return importlib.import_module(name)
  finally:
    sys.path.pop(0)


def test_data_scaling_fit_and_trajectory_subsets(tmp_path):
  import numpy as np

  from crystal_search.datasets import frames as frames_lib
  from tests.training_data import make_dataset

  ds = _benchmark("data_scaling")
  # MAE = 2 frames^-0.5 puts 0.03 eV/Å at (2 / 0.03)^2 frames.
  points = [{"frames": n, "test": {"force_mae": 2 * n**-0.5}} for n in (1000, 4000)]
  fit = ds.fit(points, "force_mae")
  assert fit["slope"] == pytest.approx(0.5)
  assert fit["frames_at_goal"] == pytest.approx((2 / 0.03) ** 2, rel=1e-6)
  flat = [{"frames": n, "test": {"force_mae": 0.04 + 1e-4 * k}} for k, n in enumerate((10, 20))]
  assert ds.fit(flat, "force_mae")["frames_at_goal"] is None  # no decrease: no extrapolation
  # A subset keeps whole training trajectories and links the other splits.
  data = make_dataset(str(tmp_path / "data"))
  full = frames_lib.load(os.path.join(data, "train.npz"))
  full.trajectory = np.arange(len(full)) // 3  # trajectories of three frames
  full.save(os.path.join(data, "train.npz"))
  counts = ds.trajectory_subset(data, str(tmp_path / "half"), fraction=0.5, seed=0)
  half = frames_lib.load(str(tmp_path / "half" / "train.npz"))
  assert counts["trajectories"] == round(0.5 * len(np.unique(full.trajectory)))
  kept = np.unique(half.trajectory)
  assert len(half) == 3 * len(kept) == counts["frames"]  # whole trajectories only
  assert os.path.islink(str(tmp_path / "half" / "test.npz"))


def test_error_breakdown_bins_cover_every_atom_and_frame():
  import numpy as np

  from tests.training_data import make_frames

  eb = _benchmark("error_breakdown")
  frames = make_frames(0, 8, sizes=(2, 3, 4))
  frames.trajectory = np.arange(8) // 4  # two trajectories of four steps
  frames.step = np.tile(np.arange(4) * 5, 2)
  pred = {"forces": frames.forces + 0.1, "stress": frames.stress - 2.0}
  out = eb.breakdown(frames, pred)
  assert out["force_mae"] == pytest.approx(0.1)
  assert sum(b["atoms"] for b in out["by_teacher_force"]) == len(frames.forces)
  assert sum(b["share_of_error"] for b in out["by_teacher_force"]) == pytest.approx(1.0)
  # Steps 0, 5, 10, 15 of 15: positions 0, 1/3, 2/3, 1 -> bins 0-0.2, 0.2-0.4, 0.6-0.8, 0.8-1.
  assert [b["frames"] for b in out["by_position"]] == [2, 2, 0, 2, 2]
  assert all(b["stress_mae"] == pytest.approx(2.0) for b in out["by_position"] if b["frames"])


def test_li15si4_report_keeps_the_rows_of_work_dirs_that_are_gone(tmp_path):
  discovery = _benchmark("li15si4_discovery")
  present = tmp_path / "present"
  present.mkdir()
  previous = {
    "runs": [
      {"work_dir": str(tmp_path / "gone"), "settings": {}},
      {"work_dir": str(present), "settings": {}},
      {"work_dir": str(tmp_path / "rerun"), "settings": {}},
    ]
  }
  report = tmp_path / "report.json"
  report.write_text(json.dumps(previous))
  new = [{"work_dir": str(tmp_path / "rerun"), "settings": {"model": "m"}}]
  kept = discovery._kept_runs(str(report), new)
  # Rows whose chunks still exist are re-read from them, not copied; reread dirs are not doubled.
  assert [run["work_dir"] for run in kept] == [str(tmp_path / "gone")]
  assert discovery._model_label(new[0]) == "model `m`"
  assert discovery._model_label({"settings": {}, "label": "4 Å model"}) == "4 Å model"


def test_li15si4_discovery_teacher_from_an_earlier_run(tmp_path):
  """A work dir without teacher chunks takes an earlier run's teacher row (same generator) and
  counts the shared starts from its hit indices; another generator is refused."""
  discovery = _benchmark("li15si4_discovery")
  generator = {"composition": "Li15Si4", "seed": 0}
  model_dir = tmp_path / "run" / "model"
  model_dir.mkdir(parents=True)
  (model_dir / "settings.json").write_text(json.dumps({"generator": generator, "relax": {}}))
  rows = [
    {
      "index": i,
      "experimental": i in (1, 3, 5),
      "converged": True,
      "failed": False,
      "start_space_group": 220,
      "model_energy_per_atom": -1.0 - 0.01 * i,
      "energy_per_atom": None,
    }
    for i in range(6)
  ]
  (model_dir / "chunk_0000.json").write_text(json.dumps({"relax_s": 6.0, "rows": rows}))
  earlier = {
    "work_dir": "runs/earlier",
    "settings": {"generator": generator},
    "teacher": {
      "relaxed": 4,
      "converged": 4,
      "failed": 0,
      "experimental": 2,
      "experimental_indices": [0, 3],
      "s_per_structure": 10.0,
    },
  }
  run = discovery._run_report(str(tmp_path / "run"), earlier)
  assert run["model"]["experimental"] == 3 and run["model"]["relaxed"] == 6
  assert run["teacher"]["from_work_dir"] == "runs/earlier"
  assert run["shared_starts"] == {
    "structures": 4,
    "model_experimental": 2,
    "teacher_experimental": 2,
    "model_reproduces_teacher": 1,
  }
  other = dict(earlier, settings={"generator": dict(generator, seed=1)})
  with pytest.raises(SystemExit, match="other generator settings"):
    discovery._run_report(str(tmp_path / "run"), other)


def test_equation_of_state_keeps_columns_of_models_that_are_gone(tmp_path):
  eos = _benchmark("equation_of_state")
  column = {"pressure_kbar": [1.0, 0.0], "bulk_modulus_gpa": 3.0, "zero_pressure_scale": 1.0}
  previous = {
    "models": {"gone": str(tmp_path / "gone"), "shipped": "", "here": str(tmp_path), "new": "x"},
    "scales": [0.96, 1.04],
    "phases": {"LiSi": {f"model:{k}": column for k in ("gone", "shipped", "here", "new")}},
  }
  report = tmp_path / "eos.json"
  report.write_text(json.dumps(previous))
  kept = eos._kept_columns(str(report), {"new": "y"}, [0.96, 1.04], ["LiSi"])
  assert kept == {"model:gone": (str(tmp_path / "gone"), {"LiSi": column})}
  # Other scales or phases: nothing is comparable, nothing kept.
  assert eos._kept_columns(str(report), {}, [0.9, 1.1], ["LiSi"]) == {}
  assert eos._kept_columns(str(report), {}, [0.96, 1.04], ["Li"]) == {}


def test_a_malformed_previous_report_is_bad_input_and_stays(tmp_path):
  from crystal_search.errors import InputError

  common = _benchmark("_common")
  report = tmp_path / "report.json"
  assert common.previous_report(str(report)) is None
  report.write_text('{"runs": [')
  with pytest.raises(InputError, match="report.json: the previous report cannot be read"):
    common.previous_report(str(report))
  assert report.read_text() == '{"runs": ['


def test_training_curves_match_epochs_and_time_steps(tmp_path):
  """Curves compared at the epochs both runs reached; step times as ratios to the first config."""
  bench = _benchmark("training_curves")
  header = "epoch,step,learning_rate,train_loss,val_loss,val_force_mae,val_stress_mae,skipped_steps,seconds\n"
  a, b = tmp_path / "a.csv", tmp_path / "b.csv"
  a.write_text(header + "1,10,0.001,1,1,0.10,4.0,0,5\n2,20,0.001,1,1,0.08,3.0,0,5\n")
  b.write_text(header + "1,10,0.001,1,1,0.05,4.0,0,7\n")
  rows = bench.compare_curves({"a": bench.read_curve(str(a)), "b": bench.read_curve(str(b))})
  assert [r["epoch"] for r in rows] == [1]
  assert rows[0]["b.val_force_mae.change"] == pytest.approx(-0.5)
  assert rows[0]["b.val_stress_mae.change"] == pytest.approx(0.0)
  from crystal_search.errors import InputError

  (tmp_path / "bad.csv").write_text("not,a,metrics\n1,2,3\n")
  with pytest.raises(InputError, match="bad.csv"):
    bench.read_curve(str(tmp_path / "bad.csv"))
  steps = bench.step_times(
    [("ref", "experiments/configs/test.py"), ("same", "experiments/configs/test.py")],
    os.path.join(ROOT, "data", "dataset", "test.npz"),
    1,
  )
  assert steps["ratio"]["ref"] == {str(b): 1.0 for b in steps["buckets"]}
  assert all(t > 0 for t in steps["seconds"]["same"].values())
  report = {
    "machine": {"platform": "p", "cpu_count": 2},
    "command": "c",
    "runs": [("a", str(a)), ("b", str(b))],
    "curves": rows,
    "repeats": 1,
    "step_time": steps,
  }
  text = bench.to_markdown(report)
  assert "| 1 | 0.1000 | 4.000 | 0.0500 (-50 %) | 4.000 (+0 %) |" in text and "1.00×" in text


def test_energy_ranking_reuses_its_cache_only_for_the_same_cells_and_model(tmp_path, monkeypatch):
  import argparse

  from crystal_search import relax

  er = _benchmark("energy_ranking")
  args = argparse.Namespace(work_dir=str(tmp_path), num=4, seed=0, max_steps=300)
  model = er.force_model()
  key = {"num": 4, "seed": 0, "max_steps": 300, **model}
  assert key["config_hash"]  # the shipped model's run is named
  finals = [{"structure": {}, "teacher_energy_per_atom": -1.0}]
  with open(tmp_path / "LiSi.json", "w") as f:
    json.dump({"key": key, "finals": finals}, f)

  def no_relaxing(*_, **__):
    raise RuntimeError("relaxed again")

  monkeypatch.setattr(relax, "make_force_field", no_relaxing)
  assert er.relaxed_finals(args, "LiSi", model) == finals
  for changed in ({"num": 8}, {"seed": 1}, {"max_steps": 600}):
    with pytest.raises(RuntimeError, match="relaxed again"):
      er.relaxed_finals(argparse.Namespace(**{**vars(args), **changed}), "LiSi", model)
  with open(tmp_path / "LiSi.json", "w") as f:  # a cache from another model
    json.dump({"key": {**key, "config_hash": "other"}, "finals": finals}, f)
  with pytest.raises(RuntimeError, match="relaxed again"):
    er.relaxed_finals(args, "LiSi", model)


@pytest.mark.parametrize(
  "flag, message",
  [
    ("--rows=huge_mae", "--rows huge_mae: expected names from"),
    ("--epochs=0", "--epochs 0: must be at least 1"),
  ],
)
def test_capacity_probe_bad_flags_are_one_line_and_train_nothing(flag, message, tmp_path):
  script = os.path.join(ROOT, "benchmarks", "capacity_probe.py")
  done = subprocess.run(
    [sys.executable, script, flag, f"--work_dir={tmp_path / 'runs'}"],
    capture_output=True,
    text=True,
    cwd=tmp_path,
    timeout=300,
  )
  assert done.returncode == 1 and "Traceback" not in done.stderr
  assert done.stderr.strip().startswith(f"error: {message}")
  assert not os.path.exists(tmp_path / "runs")


def test_capacity_probe_rows_wait_for_their_epochs_and_time_without_compilation(
  tmp_path, monkeypatch
):
  probe = _benchmark("capacity_probe")
  monkeypatch.setattr(probe, "parameter_count", lambda run_dir: 7)
  run = tmp_path / "large_mae"
  (run / "model").mkdir(parents=True)
  header = "epoch,step,learning_rate,train_loss,val_loss,val_force_mae,val_stress_mae,"
  header += "skipped_steps,seconds\n"
  rows = ["1,10,0.001,1.0,0.9,0.08,3.0,0,100.0", "2,20,0.001,0.8,0.7,0.06,2.5,0,10.0"]
  rows.append("3,30,0.0005,0.7,0.75,0.05,2.4,0,20.0")
  (run / "metrics.csv").write_text(header + "\n".join(rows[:2]) + "\n")
  assert probe.summarise("large_mae", str(run), 3) is None  # two of three epochs
  (run / "metrics.csv").write_text(header + "\n".join(rows) + "\n")
  row = probe.summarise("large_mae", str(run), 3)
  assert row["final_val_force_mae"] == 0.05 and row["val_force_mae"] == [0.08, 0.06, 0.05]
  assert row["best_epoch"] == 2  # lowest validation loss, not the last epoch
  assert row["seconds_per_epoch"] == 15.0  # epoch 1 (compilation) left out
  assert row["parameters"] == 7 and row["train_seconds"] == 130.0


def test_known_phase_basins_records_the_force_predicted_on_each_start(tmp_path):
  """``start_max_force`` is the largest atomic force (eV/Å) on each perturbed start: the same
  starts rebuilt here and evaluated through the ASE calculator give the same numbers."""
  from pymatgen.io.ase import AseAtomsAdaptor

  from crystal_search import metrics, relax
  from crystal_search.force_fields.ase import CrystalSearchCalculator

  flags = ["--model=fast", "--copies=2", "--max_atoms=16", "--max_steps=3", "--seed=1"]
  report = _report("known_phase_basins.py", [*flags, "--no-teacher"], tmp_path)
  assert list(report["phases"]) == ["LiSi (mp-795)"]  # the only phase of at most 16 atoms
  recorded = report["phases"]["LiSi (mp-795)"]["model"]["start_max_force"]
  phase = metrics.load_reference_phases()["LiSi (mp-795)"].get_primitive_structure()
  basins = _benchmark("known_phase_basins")
  starts = basins.perturbed(phase, copies=2, rattle=0.3, strain=0.05, seed=1)
  calculator = CrystalSearchCalculator(relax.make_force_field("model", model="fast"))
  expected = []
  for s in starts:
    atoms = AseAtomsAdaptor.get_atoms(s)
    atoms.calc = calculator
    expected.append(float(np.linalg.norm(atoms.get_forces(), axis=-1).max()))
  assert len(recorded) == 2 and min(expected) > 0.1
  np.testing.assert_allclose(recorded, expected, atol=0.011, rtol=1e-3)
  with open(tmp_path / "report.md") as f:
    assert "Largest atomic force (eV/Å) predicted on each start" in f.read()
