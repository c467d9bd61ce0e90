"""End to end: the ``train`` binary with ``configs/test.py`` on a tiny synthetic dataset."""

import os
import subprocess
import sys

import numpy as np
import pytest
from training_data import make_dataset

from crystal_search import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "test.py")


def _train(workdir, data, *extra, cwd=None, cache=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  if cache:  # share compiled steps between the runs of one test (same executables)
    env.update(
      JAX_COMPILATION_CACHE_DIR=cache,
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
    )
  cmd = [
    sys.executable,
    "-m",
    "experiments.train",
    f"--config={CONFIG}",
    f"--config.data.path={data}",
    f"--workdir={workdir}",
    "--quiet",
    *extra,
  ]
  return subprocess.run(cmd, cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  return make_dataset(
    str(tmp_path_factory.mktemp("data") / "dataset"), seed=3, sizes=(2, 3, 4, 5, 6)
  )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, dataset):
  workdir = str(tmp_path_factory.mktemp("runs") / "full")
  out = _train(workdir, dataset)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir, out


def _load_variables(workdir):
  from crystal_search.models import io as model_io

  kind, _, variables, metadata = model_io.load_model(os.path.join(workdir, "model"))
  return kind, variables, metadata


def test_train_writes_metrics_and_a_loadable_model(finished_run):
  workdir, out = finished_run
  rows = training.read_metrics(workdir)
  assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
  assert rows[-1]["train_loss"] < rows[0]["train_loss"]
  assert all(np.isfinite(r["val_force_mae"]) and np.isfinite(r["val_stress_mae"]) for r in rows)
  assert "best epoch" in out.stdout
  kind, variables, metadata = _load_variables(workdir)
  assert kind == "force_stress" and variables["params"]
  assert len(metadata["data_version"]) == 16 and "test" in metadata["test_metrics"]
  assert metadata["training_config"]["model_kind"] == "force_stress"
  # The exported model predicts finite forces and stresses.
  from crystal_search import graphs
  from crystal_search.datasets import frames as frames_lib
  from crystal_search.models import force_stress
  from crystal_search.models import io as model_io

  _, config, variables, _ = model_io.load_model(os.path.join(workdir, "model"))
  frames = frames_lib.load(os.path.join(metadata["data_path"], "test.npz"))
  crystals, _, _ = frames.to_batch(np.arange(4))
  capacity = graphs.required_capacity(crystals, config.cutoff)
  pred = force_stress.apply(config, variables, crystals, capacity=capacity)
  assert np.all(np.isfinite(pred.forces)) and np.all(np.isfinite(pred.stress))
  assert not np.any(pred.overflow)
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "latest"))
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "best"))


def test_other_config_in_same_workdir_is_refused_in_one_line(finished_run, dataset):
  workdir, _ = finished_run
  out = _train(workdir, dataset, "--config.learning_rate=0.01")
  assert out.returncode == 1
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:") and "different config" in lines[0]
  # The finished run is still there.
  assert len(training.read_metrics(workdir)) == 3


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_model(finished_run, dataset, tmp_path):
  """Two processes (stop after 2 epochs, rerun) give the model of one uninterrupted process."""
  workdir_full, _ = finished_run
  workdir = str(tmp_path / "resumed")
  cache = str(tmp_path / "jax_cache")
  first = _train(workdir, dataset, "--stop_after_epochs=2", cache=cache)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "rerun the same command to resume" in first.stdout
  assert not os.path.exists(os.path.join(workdir, "model"))
  assert len(training.read_metrics(workdir)) == 2
  second = _train(workdir, dataset, cache=cache)
  assert second.returncode == 0, second.stderr[-3000:]
  rows = training.read_metrics(workdir)
  assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
  full_rows = training.read_metrics(workdir_full)
  for a, b in zip(rows, full_rows):
    assert a["val_loss"] == b["val_loss"]
  import jax

  a, b = _load_variables(workdir)[1], _load_variables(workdir_full)[1]
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b and leaves_a
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize(
  "case,pattern",
  [
    ("missing", "no such dataset folder"),
    ("empty", "no frames"),
    ("bad_value", "noise_std"),
    ("unknown_key", "unknown key"),
  ],
)
def test_bad_input_is_one_line(case, pattern, tmp_path, dataset):
  data = dataset
  extra = []
  if case == "missing":
    data = str(tmp_path / "nothing")
  elif case == "empty":
    from crystal_search.datasets import frames as frames_lib

    data = str(tmp_path / "empty")
    os.makedirs(data)
    frames_lib.from_arrays([]).save(os.path.join(data, "train.npz"))
    frames_lib.from_arrays([]).save(os.path.join(data, "val.npz"))
  elif case == "bad_value":
    extra = ["--config.augment.noise_std=-0.5"]
  elif case == "unknown_key":
    extra = ["--config.augment.noise_stdev=0.5"]
  out = _train(str(tmp_path / "w"), data, *extra)
  assert out.returncode == 1
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error:") and pattern in lines[0], out.stderr


def test_evaluate_binary_records_what_it_measured(finished_run, tmp_path):
  import json

  workdir, _ = finished_run
  out_dir = tmp_path / "eval"
  cmd = [sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}"]
  cmd += [f"--output_dir={out_dir}", "--max_frames=5", "--name=tiny", "--quiet"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads((out_dir / "eval.json").read_text())
  assert report["name"] == "tiny" and report["max_frames"] == 5
  assert "CPUs" in report["machine"]  # make_tables names the machines of its evaluations
  assert report["relax_checks"] == {
    "min_distance": 0.5,
    "overlap_fraction": 0.5,
    "min_cell_height": 1.0,
  }
  assert report["test"]["frames"] == 5 and report["holdout"]["frames"] == 5  # 12 and 6 on disk
  assert np.isfinite(report["test"]["force_mae"]) and np.isfinite(report["test"]["stress_mae"])
  from crystal_search.evaluation import test_data_version

  assert report["data_version"] == test_data_version(report["dataset"])
  assert (out_dir / "eval.md").exists() and (out_dir / "parity_test.png").exists()
