"""`crystal-search distill`: a new system's student from a teacher, resumable, with active learning.

The teacher here is the analytic Morse pair potential (``--teacher=morse``), so the whole loop
(references, teacher relaxations, dataset, committee, probe, labels, energy student, package)
runs in about a minute; the CHGNet run on Li–Ge is ``benchmarks/distill_li_ge.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from crystal_search import distill, distill_setup, search
from crystal_search.datasets import frames as frames_lib
from crystal_search.errors import InputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(
  elements=("Li", "Ge"),
  compositions=("LiGe", "Li2Ge"),
  budget_teacher_relaxations=12,
  rounds=2,
  teacher="morse",
  max_atoms=8,
  teacher_max_steps=30,
  committee=2,
  epochs=2,
  finetune_epochs=1,
  probe_cells=2,
  label_frames=4,
)


def _config(**overrides) -> distill.DistillConfig:
  return distill.DistillConfig(**{**SMALL, **overrides})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("distill") / "lige")
  report = distill.run_distill(_config(), out)
  return out, report


def test_a_run_packages_a_student_the_search_takes(run_dir, tmp_path):
  out, report = run_dir
  model = os.path.join(out, "model")
  for name in ("model.json", "energy/model.json", "generator.json"):
    assert os.path.exists(os.path.join(model, name)), name
  with open(os.path.join(model, "model.json")) as f:
    assert json.load(f)["config"]["elements"] == ["Li", "Ge"]
  generator = json.load(open(os.path.join(model, "generator.json")))
  assert generator["pair_min_separation"]["Li-Ge"] == pytest.approx(2.366, abs=1e-3)
  refs = json.load(open(os.path.join(out, "references.json")))["references"]
  assert generator["element_volumes"]["Ge"] == pytest.approx(
    distill_setup.volume_scale() * refs["Ge"]["volume_per_atom"], abs=1e-3
  )
  assert [row["round"] for row in report["rounds"]] == [0, 1]
  assert report["teacher_relaxations"] == 12
  assert np.isfinite(report["rounds"][-1]["force_mae"])
  assert "| round |" in open(os.path.join(out, "report.md")).read()

  # The search takes the package: its cells are drawn with generator.json and ranked by energy/.
  config = search.get_search_config()
  config.composition, config.num_structures, config.max_atoms = "LiGe", 2, 8
  search.apply_model_generator(config, model)
  assert config.element_volumes.startswith("Ge=")
  force_field, energy_fn = search.load_force_field("model", model=model)
  assert energy_fn is not None and force_field.elements == ("Li", "Ge")
  result = search.run_search(
    config, force_field=force_field, energy_fn=energy_fn, output_dir=str(tmp_path / "s"),
    progress=False,
  )  # fmt: skip
  assert result.totals["generated"] + result.totals["generation_failed"] == 2
  assert result.totals["settings"]["pair_min_separation"].startswith("Ge-Ge=2.29")


def test_the_teachers_labels_join_the_next_rounds_training_set(run_dir):
  out, _ = run_dir
  probe = frames_lib.load(os.path.join(out, "round_0", "probe.npz"))
  record = json.load(open(os.path.join(out, "round_0", "probe.json")))
  labelled = record["labelled_finals"] + record["labelled_disagreement_frames"]
  assert len(probe) == labelled - record["labels_beyond_force_range"]
  assert record["labelled_disagreement_frames"] <= SMALL["label_frames"]
  assert np.all(np.isfinite(probe.forces))
  first = json.load(open(os.path.join(out, "round_0", "dataset", "manifest.json")))
  second = json.load(open(os.path.join(out, "round_1", "dataset", "manifest.json")))
  assert first["active_learning_frames"] == 0
  assert second["active_learning_frames"] == len(probe)
  n0 = len(frames_lib.load(os.path.join(out, "round_0", "dataset", "train.npz")))
  n1 = len(frames_lib.load(os.path.join(out, "round_1", "dataset", "train.npz")))
  assert n1 == n0 + len(probe) == second["files"]["train"]["frames"]
  # The test frames the rounds are scored on are the same.
  t0 = frames_lib.load(os.path.join(out, "round_0", "dataset", "test.npz"))
  t1 = frames_lib.load(os.path.join(out, "round_1", "dataset", "test.npz"))
  np.testing.assert_array_equal(t0.positions, t1.positions)


def test_a_rerun_redoes_nothing_and_more_rounds_continue(run_dir, monkeypatch):
  out, report = run_dir
  from crystal_search import training
  from crystal_search.datasets import teacher

  calls = []
  real_train = training.train
  monkeypatch.setattr(teacher, "run_job", lambda *a, **k: calls.append("teacher"))
  monkeypatch.setattr(
    training, "train", lambda *a, **k: calls.append("train") or real_train(*a, **k)
  )
  again = distill.run_distill(_config(), out)
  assert calls == [] and again["rounds"] == report["rounds"]
  more = distill.run_distill(_config(rounds=3), out)  # one more round: only its students train
  assert calls == ["train"] * SMALL["committee"] + ["train"] and len(more["rounds"]) == 3


def test_teacher_shards_share_the_first_round(tmp_path, monkeypatch):
  from crystal_search.datasets import teacher

  out = str(tmp_path / "o")
  config = _config()
  done = [distill.run_distill(config, out, shard=f"{i}/2")["teacher"]["ran"] for i in (1, 2)]
  assert done == [6, 6]
  assert len(distill_setup.teacher_files(out)) == 12
  ran = []
  monkeypatch.setattr(teacher, "run_job", lambda *a, **k: ran.append(1))
  distill.run_distill(config, out, shard="2/2")  # a finished shard reruns nothing
  assert ran == []
  with pytest.raises(InputError, match="shard '3/2'"):
    distill.run_distill(config, out, shard="3/2")


def test_a_killed_run_resumes(tmp_path, monkeypatch):
  from crystal_search import training

  out = str(tmp_path / "o")
  real_train = training.train

  def killed(config, workdir, **kwargs):
    if "round_0" in workdir and workdir.endswith("student_1"):
      raise KeyboardInterrupt
    return real_train(config, workdir, **kwargs)

  monkeypatch.setattr(training, "train", killed)
  with pytest.raises(KeyboardInterrupt):
    distill.run_distill(_config(rounds=1), out)
  assert os.path.exists(os.path.join(out, "round_0", "student_0", "model", "model.json"))
  assert not os.path.exists(os.path.join(out, "model"))
  monkeypatch.setattr(training, "train", real_train)
  report = distill.run_distill(_config(rounds=1), out)
  assert os.path.exists(os.path.join(out, "model", "energy", "model.json"))
  assert len(report["rounds"]) == 1


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"elements": ("Li", "Xx")}, "unknown element 'Xx'"),
    ({"elements": ("Li", "F")}, "element F: no reference structure"),
    ({"elements": ("Li", "Og"), "teacher": "chgnet"}, "teacher chgnet does not cover Og"),
    ({"compositions": ("LiGe", "LiSi")}, "element\\(s\\) Si not supported"),
    ({"compositions": ("LiGe", "Li2Ge2")}, "a formula is listed twice"),
    ({"budget_teacher_relaxations": 2}, "too small to split into train, validation and test"),
    ({"compositions": ("Li30Ge",)}, "31 atoms, more than max_atoms=8"),
    ({"rounds": 0}, "--rounds=0"),
  ],
)
def test_bad_settings_are_one_line_errors_before_any_teacher_time(tmp_path, overrides, message):
  out = tmp_path / "o"
  with pytest.raises(InputError, match=message) as error:
    distill.run_distill(_config(**overrides), str(out))
  assert "\n" not in str(error.value)
  assert not out.exists()


def test_an_output_directory_of_another_system_is_refused(run_dir, tmp_path):
  out, _ = run_dir
  with pytest.raises(InputError, match="holds a distill run with elements"):
    distill.run_distill(
      _config(elements=("Na", "Ge"), compositions=("NaGe", "Na2Ge"), budget_teacher_relaxations=40),
      out,
    )
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  with pytest.raises(InputError, match="not empty and holds no distill run"):
    distill.run_distill(_config(), str(foreign))
  assert (foreign / "notes.txt").read_text() == "mine"


def test_the_command_line_prints_one_error_line(tmp_path):
  proc = subprocess.run(
    [
      sys.executable, "-m", "experiments.cli", "distill", "--elements=Li,Ge",
      "--compositions=LiGe,LiSi", f"--output_dir={tmp_path / 'o'}", "--teacher=morse",
    ],
    cwd=REPO, capture_output=True, text=True, check=False,
    env=dict(os.environ, JAX_PLATFORMS="cpu", CRYSTAL_SEARCH_JAX_CACHE="off"),
  )  # fmt: skip
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith("error: composition 'LiSi'")
  assert "Traceback" not in proc.stderr
