"""Teacher-data generation: job order, shards, resumability (kill and rerun), NaN handling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from crystal_search import random_structures as rs
from crystal_search.crystals import from_structures
from crystal_search.datasets import frames as frames_lib
from crystal_search.datasets import teacher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = rs.RandomStructureConfig(max_atoms=6)


def fake_relax(structures, force_field, *, max_steps=5, trajectory_every=1, **unused):
  """A few plain steepest-descent steps on positions (the real relaxer is tested elsewhere)."""
  del unused, trajectory_every
  out = []
  for s in structures:
    c = from_structures([s], dtype=np.float64)
    pos, lat = np.array(c.positions), np.array(c.lattice)
    steps = {k: [] for k in ("positions", "lattice", "forces", "stress", "energy", "step")}
    for k in range(max_steps):
      res = force_field(c.replace(positions=pos, lattice=lat))
      for key, val in (
        ("positions", pos[0]),
        ("lattice", lat[0]),
        ("forces", np.asarray(res.forces[0])),
        ("stress", np.asarray(res.stress[0])),
        ("energy", float(res.energy[0])),
        ("step", k),
      ):
        steps[key].append(np.array(val))
      pos = pos + 0.01 * np.asarray(res.forces) @ np.linalg.inv(lat[0])
    traj = {k: np.stack(v) for k, v in steps.items()}
    energy = traj["energy"][-1]
    out.append(
      types.SimpleNamespace(
        final=s,
        converged=False,
        failed=False,
        failure_reason=None,
        steps=max_steps,
        energy=energy,
        forces=traj["forces"][-1],
        stress=traj["stress"][-1],
        trajectory=traj,
      )
    )
  return out


class NaNForceField:
  jittable = False
  elements = None
  name = "nan"

  def __call__(self, crystals):
    out = teacher.morse_force_field()(crystals)
    return out.replace(forces=np.full(np.shape(out.forces), np.nan))

  def grow(self):
    return self


def test_jobs_round_robin_and_shards_partition():
  jobs = teacher.make_jobs(["LiSi", "Li15Si4"], 3, seed=4)
  assert [j.name for j in jobs[:3]] == ["LiSi_4_00000", "Li15Si4_4_00000", "LiSi_4_00001"]
  shards = [teacher.shard(jobs, k, 4) for k in range(4)]
  names = sorted(j.name for s in shards for j in s)
  assert names == sorted(j.name for j in jobs)
  assert len(set(names)) == len(jobs)
  with pytest.raises(teacher.InputError):
    teacher.shard(jobs, 4, 4)
  with pytest.raises(teacher.InputError):
    teacher.make_jobs(["LiSi", "Li2Si2"], 1, seed=0)


def test_generate_writes_one_file_per_job_and_resumes(tmp_path):
  jobs = teacher.make_jobs(["LiSi", "Li2Si"], 2, seed=1)
  ff = teacher.morse_force_field()
  kwargs = dict(
    output_dir=str(tmp_path),
    random_config=SMALL,
    relax_settings={"max_steps": 4},
    relax_fn=fake_relax,
    progress=False,
  )
  first = teacher.generate(jobs[:3], ff, **kwargs)
  assert first["ran"] == 3
  mtimes = {p: os.path.getmtime(p) for p in teacher.finished_files(str(tmp_path))}
  second = teacher.generate(jobs, ff, **kwargs)
  assert second["done_before"] == 3 and second["ran"] == 1
  files = teacher.finished_files(str(tmp_path))
  assert len(files) == 4
  for p, m in mtimes.items():
    assert os.path.getmtime(p) == m  # finished files are not rewritten
  f = frames_lib.load(jobs[0].path(str(tmp_path)))
  assert len(f) == 4 and f.positions.dtype == np.float32
  meta = f.metadata
  assert meta["name"] == jobs[0].name and meta["relax_settings"]["max_steps"] == 4
  assert not meta["failed"] and meta["wall_seconds"] > 0 and "numpy" in meta["versions"]
  # The stored first frame is the generated random structure itself.
  s, _ = rs.random_structure("LiSi", seed=1, index=0, config=SMALL)
  np.testing.assert_allclose(f.lattice[0], s.lattice.matrix, atol=1e-5)
  np.testing.assert_allclose(f.positions[: len(s)], s.frac_coords, atol=1e-5)


def test_nan_teacher_is_marked_failed_and_run_continues(tmp_path):
  jobs = teacher.make_jobs(["LiSi"], 2, seed=0)
  summary = teacher.generate(
    jobs,
    NaNForceField(),
    output_dir=str(tmp_path),
    random_config=SMALL,
    relax_settings={"max_steps": 2},
    relax_fn=fake_relax,
    progress=False,
  )
  assert summary["ran"] == 2 and summary["failed"] == 2
  meta = teacher.read_metadata(jobs[1].path(str(tmp_path)))
  assert meta["failed"] and "non-finite" in meta["failure_reason"]


def _run_binary(output_dir, log_file, extra=()):
  cmd = [
    sys.executable,
    "-m",
    "data_tools.generate_teacher",
    "--config=data_tools/configs/test_teacher.py",
    f"--output_dir={output_dir}",
    f"--log_file={log_file}",
    "--noprogress",
    *extra,
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_kill_and_rerun_loses_and_duplicates_nothing(tmp_path):
  pytest.importorskip("crystal_search.relax")
  ref_dir = str(tmp_path / "ref")
  ref = _run_binary(ref_dir, str(tmp_path / "ref.log"))
  assert ref.wait(timeout=300) == 0, ref.stdout.read().decode()[-2000:]
  # Kill a run as soon as its first relaxation is on disk. Later relaxations reuse the compiled
  # code and can all finish before the kill lands on a loaded machine: then that run was not
  # interrupted and a fresh one is tried (at most 3).
  total = len(teacher.finished_files(ref_dir))
  for attempt in range(3):
    dir_ = str(tmp_path / f"killed_{attempt}")
    proc = _run_binary(dir_, str(tmp_path / "k.log"))
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not teacher.finished_files(dir_):
      time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = teacher.finished_files(dir_)
    if 0 < len(partial) < total:
      break
  assert 0 < len(partial) < total
  # Leftover temporary files (a write in flight) are never taken for finished relaxations.
  rerun = _run_binary(dir_, str(tmp_path / "k.log"))
  assert rerun.wait(timeout=300) == 0
  got = teacher.finished_files(dir_)
  want = teacher.finished_files(ref_dir)
  assert [os.path.relpath(p, dir_) for p in got] == [os.path.relpath(p, ref_dir) for p in want]
  for a, b in zip(got, want):
    fa, fb = frames_lib.load(a), frames_lib.load(b)
    np.testing.assert_array_equal(fa.positions, fb.positions)
    np.testing.assert_array_equal(fa.forces, fb.forces)
    assert fa.metadata["steps"] == fb.metadata["steps"]
  # And a third run has nothing left to do.
  third = _run_binary(dir_, str(tmp_path / "k.log"))
  out = third.communicate(timeout=300)[0].decode()
  assert "done: 0 relaxed (6 already done)" in out


def test_an_exception_in_one_relaxation_is_recorded_and_the_run_goes_on(tmp_path):
  calls = []

  def flaky_relax(structures, force_field, **kwargs):
    calls.append(1)
    if len(calls) == 1:
      raise RuntimeError("teacher blew up\nsecond line")
    return fake_relax(structures, force_field, **kwargs)

  jobs = teacher.make_jobs(["LiSi"], 2, seed=0)
  summary = teacher.generate(
    jobs,
    teacher.morse_force_field(),
    output_dir=str(tmp_path),
    random_config=SMALL,
    relax_settings={"max_steps": 2},
    relax_fn=flaky_relax,
    progress=False,
  )
  assert summary["ran"] == 2 and summary["failed"] == 1
  meta = teacher.read_metadata(jobs[0].path(str(tmp_path)))
  assert meta["failed"] and meta["failure_reason"] == "exception RuntimeError: teacher blew up"
  assert not teacher.read_metadata(jobs[1].path(str(tmp_path)))["failed"]
