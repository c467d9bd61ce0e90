"""Results tables (experiments.make_tables) and the reproduce driver's job list."""

import json
import os
import subprocess
import sys

import pytest

from experiments import reproduce


def _report(force, stress, relaxed, traj, found=0):
  test = dict(force_mae=force, stress_mae=stress, relaxed_match=relaxed, trajectory_match=traj)
  holdout = dict(test, experimental_found=found, experimental_in_teacher=1)
  return {"test": test, "holdout": holdout, "wall_time_s": 10.0}


def _write(tmp_path, name, report):
  d = tmp_path / name
  d.mkdir()
  (d / "eval.json").write_text(json.dumps(report))
  return str(d)


def test_seeds_become_mean_and_std_and_rows_land_in_the_paper_tables(tmp_path):
  runs = [
    (_write(tmp_path, "a", _report(0.05, 2.0, 0.4, 0.6)), "GNN noise=0.01"),
    (_write(tmp_path, "b", _report(0.07, 3.0, 0.2, 0.7, found=1)), "GNN noise=0.01"),
    (_write(tmp_path, "c", _report(0.5, 10.0, 0.1, 0.3)), "MEAM"),
    (_write(tmp_path, "d", _report(0.3, 20.0, 0.0, 0.1)), "energy GNN"),
    (_write(tmp_path, "e", _report(0.04, 3.1, 0.1, 0.3)), "GNN stress=corner"),
    (_write(tmp_path, "f", _report(0.06, 3.3, 0.1, 0.3)), "GNN stress=plane (edge forces)"),
  ]
  out = tmp_path / "results"
  cmd = [sys.executable, "-m", "experiments.make_tables", f"--output_dir={out}"]
  cmd += ["--runs=" + ",".join(r for r, _ in runs), "--row_names=" + ",".join(n for _, n in runs)]
  subprocess.run(cmd, check=True, capture_output=True, cwd=os.getcwd())
  summary = json.loads((out / "summary.json").read_text())["rows"]
  row = summary["GNN noise=0.01"]
  assert row["seeds"] == 2
  assert row["force_mae"]["mean"] == pytest.approx(0.06)
  assert row["force_mae"]["std"] > 0
  assert row["holdout"]["experimental_found"]["mean"] == pytest.approx(0.5)
  text = (out / "tables.md").read_text()
  table2 = text.split("## Table 2")[1].split("## Table 3")[0]
  assert "energy GNN" in table2 and "0.24 / 18.7" in table2  # the paper's numbers beside ours
  assert "GNN noise=0.01" not in table2  # set against the MD-trained GNN only
  table5 = text.split("## Table 5")[1]
  assert "GNN stress=corner" in table5 and "0.03 / 3.09" in table5
  # The paper's head beside our force head is set against the paper's row of that head.
  assert "| GNN stress=plane (edge forces) | 0.06 | 3.3 | 0.1 | 0.3 | 0.03 / 1.05" in table5


def test_table2_sets_the_md_gnn_against_the_random_relaxation_gnn(tmp_path):
  runs = [
    ("GNN noise=0.01", _report(0.05, 2.0, 0.4, 0.6)),
    ("GNN (MD data)", _report(0.5, 30.0, 0.0, 0.1)),
    ("GNN (MD data) on MD", _report(0.1, 3.0, 0.0, 0.0)),
    ("MEAM", _report(0.5, 10.0, 0.1, 0.3)),
  ]
  paths = [_write(tmp_path, f"r{k}", r) for k, (_, r) in enumerate(runs)]
  out = tmp_path / "results"
  cmd = [sys.executable, "-m", "experiments.make_tables", f"--output_dir={out}"]
  cmd += ["--runs=" + ",".join(paths), "--row_names=" + ",".join(n for n, _ in runs)]
  subprocess.run(cmd, check=True, capture_output=True)
  table2 = (out / "tables.md").read_text().split("## Table 2")[1].split("## Table 3")[0]
  assert "| GNN noise=0.01 | 0.05 | 2 | 0.031 / 0.98 |" in table2
  assert (
    "against the random-relaxation GNN (`GNN noise=0.01`): force and stress MAE 10.0x and 15.0x (paper 19.7x and 33.0x)"
    in table2
  )
  assert (
    "itself on MD frames (`GNN (MD data) on MD`): force and stress MAE 5.0x and 10.0x (paper 9.1x and 19.8x)"
    in table2
  )


def test_step_curves_average_seeds_up_to_the_shortest_and_are_plotted(tmp_path):
  from crystal_search import plots
  from crystal_search.evaluation import mean_matched_by_step

  assert mean_matched_by_step([[1.0, 0.5, 0.25], [1.0, 0.75]]) == [1.0, 0.625]
  assert mean_matched_by_step([]) == []

  def report(test_curve, holdout_curve=None):
    r = _report(0.05, 2.0, 0.4, 0.6)
    r["test"]["matched_by_step"] = test_curve
    if holdout_curve is not None:
      r["holdout"]["matched_by_step"] = holdout_curve
    return r

  runs = [
    ("GNN noise=0", report([1.0, 0.5, 0.25], [1.0, 1.0])),
    ("GNN noise=0", report([1.0, 0.75])),
    ("MEAM", report([1.0, 0.0, 0.0, 0.0])),
    ("energy GNN", _report(0.3, 20.0, 0.0, 0.1)),  # no trajectories: no curve
  ]
  paths = [_write(tmp_path, f"r{k}", r) for k, (_, r) in enumerate(runs)]
  out = tmp_path / "results"
  cmd = [sys.executable, "-m", "experiments.make_tables", f"--output_dir={out}"]
  cmd += ["--runs=" + ",".join(paths), "--row_names=" + ",".join(n for n, _ in runs)]
  subprocess.run(cmd, check=True, capture_output=True)
  assert (out / "matched_by_step.png").stat().st_size > 0
  assert not plots.matched_by_step_rows({"test": {}}, str(tmp_path / "none.png"))
  assert not (tmp_path / "none.png").exists()


def test_goals_check_the_shipped_row_and_every_gnn_row_against_meam(tmp_path):
  runs = [
    ("GNN (shipped)", _report(0.029, 0.9, 0.5, 0.72)),
    # Relaxed match level with MEAM (a mean over seeds: float residue above 0.1): not ahead.
    ("GNN noise=0", _report(0.05, 2.0, (0.1 + 0.1 + 0.1) / 3, 0.5)),
    ("GNN (MD data) on MD", _report(0.9, 30.0, 0.0, 0.0)),  # other test frames: not compared
    ("MEAM", _report(0.5, 10.0, 0.1, 0.3)),
  ]
  paths = [_write(tmp_path, f"r{k}", r) for k, (_, r) in enumerate(runs)]
  out = tmp_path / "results"
  cmd = [sys.executable, "-m", "experiments.make_tables", f"--output_dir={out}"]
  cmd += ["--runs=" + ",".join(paths), "--row_names=" + ",".join(n for n, _ in runs)]
  subprocess.run(cmd, check=True, capture_output=True)
  goals = json.loads((out / "summary.json").read_text())["goals"]
  assert [g["met"] for g in goals["shipped"]] == [True, True, True, True]
  assert goals["compared"] == 12  # two GNN rows x (4 test + 2 held-out metrics)
  behind = [(b["row"], b["split"], b["metric"]) for b in goals["behind_meam"]]
  assert behind == [
    ("GNN noise=0", "test", "relaxed_match"),
    ("GNN noise=0", "holdout", "relaxed_match"),
  ]
  assert goals["experimental"] == {"found": 0.0, "in_teacher": 1.0}
  text = (out / "tables.md").read_text()
  assert "| every GNN row ahead of MEAM | 2 of 12 row-metric pairs not ahead" in text
  assert "reproduced | 0 of 1 teacher trajectories that end in it | **no** |" in text


def test_missing_eval_is_one_line(tmp_path):
  cmd = [sys.executable, "-m", "experiments.make_tables", f"--runs={tmp_path}/nothing"]
  done = subprocess.run(cmd, capture_output=True, text=True)
  assert done.returncode != 0
  assert "no such file" in done.stderr and "Traceback" not in done.stderr


def test_reproduce_lists_every_row_of_the_paper():
  jobs = reproduce.jobs(reproduce.ROWS, "cpu", {"0", "1", "2"})
  rows = [ev.row for job in jobs for ev in job.evaluations] + [
    r for j in jobs for _, r in j.aliases
  ]
  assert sum(r.startswith("GNN noise=") for r in rows) == 12
  assert {"GNN noise=0", "GNN noise=0.03", "MEAM", "energy GNN", "GNN (MD data) on MD"} <= set(rows)
  assert {"GNN stress=plane", "GNN stress=virial"} <= set(rows)
  assert len({job.workdir for job in jobs}) == len(jobs)
  # The shipped config trains on the strain dataset, whose train.npz is joined first if missing.
  (shipped,) = [job for job in jobs if job.workdir == "pretrained"]
  ((target, module, *flags),) = shipped.prepare
  assert target.endswith("dataset_strain/train.npz")
  assert module == "data_tools.build_strain_frames" and "--teacher=" in flags
  # The displaced-copy rows first join that, then make their own dataset from it.
  (rattle,) = [job for job in jobs if job.workdir == "pretrained_rattle"]
  assert rattle.prepare[0] == shipped.prepare[0]
  target, module, *flags = rattle.prepare[1]
  assert target.endswith("dataset_rattle/train.npz") and "--source=frames" in flags
  assert "--dataset=data/dataset_strain" in flags and "--rattle=0.05" in flags
  names = ("pretrained_rattle", "pretrained_rattle_seed_1")
  seeds = {job.config for job in jobs if job.workdir in names}
  assert seeds == {
    "experiments/configs/pretrained.py:rattle",
    "experiments/configs/pretrained.py:rattle,1",
  }
  assert {f"GNN stress={h} (shipped budget)" for h in ("plane", "corner", "global")} <= set(rows)
  (cutoff4,) = [job for job in jobs if job.workdir == "pretrained_cutoff4"]
  assert cutoff4.prepare == shipped.prepare
  assert cutoff4.config == "experiments/configs/pretrained.py:cutoff4"
  for variant in ("blocks6", "blocks4", "long"):
    (job,) = [job for job in jobs if job.workdir == f"pretrained_{variant}"]
    assert job.prepare == shipped.prepare
    assert job.config == f"experiments/configs/pretrained.py:{variant}"
  # Seeds beyond 0 train in WORKDIR_seed_N with ',N' appended to the config's argument.
  (seed_1,) = [job for job in jobs if job.workdir == "pretrained_seed_1"]
  assert seed_1.config == "experiments/configs/pretrained.py:,1"
  assert [ev.row for ev in seed_1.evaluations] == ["GNN (pretrained.py)"]
  seeded = reproduce._seeded("x", "pretrained.py", "row", {"2", "0", "1"}, ("0", "2"), ())
  assert [job.config for job in seeded] == [
    "experiments/configs/pretrained.py",
    "experiments/configs/pretrained.py:,2",
  ]
  with pytest.raises(Exception, match="unknown row"):
    reproduce.jobs(["tabel1"], "cpu", {"0"})


def test_reproduce_dry_run_prints_resumable_commands(tmp_path):
  cmd = [sys.executable, "-m", "experiments.reproduce", "--rows=noise_sweep", "--seeds=1"]
  cmd += [f"--runs_dir={tmp_path}", "--dry_run", "--set=num_epochs=3"]
  done = subprocess.run(cmd, capture_output=True, text=True, check=True)
  train = [line for line in done.stdout.splitlines() if "experiments.train" in line]
  assert len(train) == 4 and all("--config.num_epochs=3" in line for line in train)
  assert "noise_sweep.py:0.03,1,cpu" in done.stdout


def test_reproduce_shards_split_the_jobs_without_overlap(tmp_path):
  def trained(shard):
    cmd = [sys.executable, "-m", "experiments.reproduce", "--rows=noise_sweep", "--seeds=0,1"]
    cmd += [f"--runs_dir={tmp_path}", "--dry_run", f"--shard={shard}"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return [
      line.split("--workdir=")[1].split()[0]
      for line in done.stdout.splitlines()
      if "experiments.train" in line
    ]

  first, second, whole = trained("0/2"), trained("1/2"), trained("0/1")
  assert len(whole) == 8 and len(first) == len(second) == 4
  assert sorted(first + second) == sorted(whole)
  for bad in ("2/2", "1", "a/b", "-1/2"):
    with pytest.raises(Exception, match="--shard"):
      reproduce.parse_shard(bad)


def test_identical_configs_share_one_run_and_one_evaluation():
  cpu = reproduce.jobs(["noise_sweep", "stress_heads"], "cpu", {"0"})
  shared = [job for job in cpu if job.aliases]
  # At CPU scale the virial head is the default model: one run, one evaluation, two row names.
  assert [job.workdir for job in shared] == ["noise_0.01_seed_0"]
  assert shared[0].aliases == (("eval", "GNN stress=virial"),)
  assert len(shared[0].evaluations) == 1
  # At paper scale the default keeps the paper's plane head: the plane row is the shared one.
  paper = reproduce.jobs(["noise_sweep", "stress_heads"], "paper", {"0"})
  assert [job.aliases for job in paper if job.aliases] == [(("eval", "GNN stress=plane"),)]
  assert {"stress_virial", "stress_corner"} <= {job.workdir for job in paper}
  assert "stress_plane" not in {job.workdir for job in paper}
  # The paper's stress heads beside the edge force head: three more runs, none shared.
  edge = reproduce.jobs(["stress_heads", "stress_heads_edge"], "cpu", {"0"})
  rows = {ev.row for job in edge for ev in job.evaluations}
  assert {f"GNN stress={h} (edge forces)" for h in ("plane", "corner", "global")} <= rows
  every = reproduce.jobs(list(reproduce.ROWS), "cpu", {"0", "1", "2"})
  assert not [ev.row for job in every for ev in job.evaluations if "," in ev.row]
  assert len({job.config for job in edge}) == len(edge) == 7


def test_an_evaluation_on_other_test_data_is_redone(tmp_path):
  from crystal_search.evaluation import test_data_version

  data = tmp_path / "data"
  data.mkdir()
  (data / "test.npz").write_bytes(b"first")
  eval_dir = tmp_path / "meam" / "eval"
  eval_dir.mkdir(parents=True)
  report = {"dataset": str(data), "data_version": test_data_version(str(data))}
  (eval_dir / "eval.json").write_text(json.dumps(report))
  assert reproduce._fresh(str(eval_dir), str(tmp_path / "meam"), trained=False)
  (data / "test.npz").write_bytes(b"second")
  assert not reproduce._fresh(str(eval_dir), str(tmp_path / "meam"), trained=False)
  (eval_dir / "eval.json").write_text(json.dumps({"dataset": str(data)}))  # older eval.json
  assert not reproduce._fresh(str(eval_dir), str(tmp_path / "meam"), trained=False)


def test_tables_rebuild_from_the_archive_alone(tmp_path):
  runs, archive = tmp_path / "runs", tmp_path / "archive"
  for workdir, value in (("meam", 0.5), ("stress_plane", 0.08)):
    eval_dir = runs / workdir / "eval"
    eval_dir.mkdir(parents=True)
    (eval_dir / "eval.json").write_text(json.dumps(_report(value, 2.0, 0.4, 0.6)))
    (eval_dir / "parity_test.png").write_bytes(b"png")
    (eval_dir / "predictions_test.npz").write_bytes(b"big")
    (runs / workdir / "metrics.csv").write_text("epoch,seconds\n1,2.0\n")
    reproduce._archive(str(runs / workdir), str(eval_dir), str(archive / workdir), "eval")
  assert (archive / "meam" / "eval" / "parity_test.png").exists()
  assert not (archive / "meam" / "eval" / "predictions_test.npz").exists()
  assert (archive / "meam" / "metrics.csv").exists()
  out = tmp_path / "results"
  cmd = [sys.executable, "-m", "experiments.reproduce", "--rows=meam,stress_heads", "--seeds=0"]
  cmd += ["--tables_only", f"--runs_dir={archive}", f"--output_dir={out}", "--note=from archive"]
  subprocess.run(cmd, check=True, capture_output=True, text=True)
  summary = json.loads((out / "summary.json").read_text())
  assert summary["notes"] == ["from archive"]
  assert summary["rows"]["MEAM"]["force_mae"]["mean"] == pytest.approx(0.5)
  assert summary["rows"]["GNN stress=plane"]["force_mae"]["mean"] == pytest.approx(0.08)
  assert summary["rows"]["MEAM"]["train_seconds"] == pytest.approx(2.0)  # from metrics.csv
  assert "| GNN stress=plane | 1 | 0.0 | 0.2 |" in (out / "tables.md").read_text()


def test_tables_name_the_machines_of_their_evaluations():
  from experiments.common import machines

  a, b = {"machine": "box A"}, {"machine": "box B"}
  assert machines([a, b, dict(a)]) == "box A; box B"
  line = machines([a, {}])
  assert line.startswith("box A; 1 of 2 evaluations record no machine") and "built on" in line


def test_notes_file_paragraphs_become_notes(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("# rebuild: python -m ...\n\nFirst note\nwrapped.\n\n\n# c\nSecond.\n")
  assert reproduce.read_notes(str(path)) == ["First note wrapped.", "Second."]
  path.write_text("# only a comment\n\n")
  with pytest.raises(Exception, match="no notes"):
    reproduce.read_notes(str(path))
  with pytest.raises(Exception, match="missing.txt"):
    reproduce.read_notes(str(tmp_path / "missing.txt"))


def test_committed_notes_files_rebuild_their_tables_headers():
  """Each notes file's paragraphs are the notes in its tables' summary.json."""
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
  notes_dir = os.path.join(root, "results", "notes")
  for name in sorted(os.listdir(notes_dir)):
    out = os.path.join(root, "results", "" if name == "main.txt" else name[: -len(".txt")])
    with open(os.path.join(out, "summary.json")) as f:
      assert reproduce.read_notes(os.path.join(notes_dir, name)) == json.load(f)["notes"], name


def test_rows_evaluated_with_raw_output_offsets_are_marked(tmp_path):
  """An equivariant force/stress run evaluated before the rotation-averaged output offsets (no
  ``output_offsets`` in eval.json) is marked †; a re-evaluated seed or a paper head is not."""
  equivariant = {"edge_inputs": "rbf", "stress_head": "virial", "force_head": "edge"}
  paper_head = {"edge_inputs": "vector", "stress_head": "plane", "force_head": "node"}
  runs = []
  for name, model, new in (
    ("old", equivariant, False),
    ("new", equivariant, True),
    ("plane", paper_head, False),
  ):
    report = _report(0.05, 2.0, 0.4, 0.6)
    if new:
      report["output_offsets"] = "rotation-averaged"
    d = _write(tmp_path, name, report)
    config = {"model_kind": "force_stress", "model": model}
    (tmp_path / name / "run.json").write_text(json.dumps({"config": config}))
    runs.append(d)
  out = tmp_path / "results"
  cmd = [
    sys.executable,
    "-m",
    "experiments.make_tables",
    f"--output_dir={out}",
    "--runs=" + ",".join(runs),
  ]
  cmd += ["--row_names=GNN noise=0,GNN noise=0.01,GNN stress=plane"]
  subprocess.run(cmd, check=True, capture_output=True, cwd=os.getcwd())
  summary = json.loads((out / "summary.json").read_text())["rows"]
  assert [
    summary[n]["raw_offsets"] for n in ("GNN noise=0", "GNN noise=0.01", "GNN stress=plane")
  ] == [1, 0, 0]
  text = (out / "tables.md").read_text()
  assert "| GNN noise=0 † |" in text and "| GNN noise=0.01 |" in text
  assert "| GNN stress=plane |" in text and "- †: evaluated" in text
