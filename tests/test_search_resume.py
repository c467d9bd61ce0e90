"""A search survives being killed, stops on request, and splits into shards that merge back into
the unsharded run's report (:mod:`crystal_search.run_store`)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from crystal_search import run_store, search
from crystal_search.errors import InputError
from crystal_search.force_fields.analytic import morse

MORSE = dict(sigma=2.6, epsilon=0.3, alpha=1.4, elements=("Li", "Si"))


@pytest.fixture(scope="module")
def morse_ff():
  return morse(**MORSE)


def _config(**kw):
  c = search.get_search_config()
  c.composition = "LiSi"
  c.num_structures = 10
  c.max_atoms = 8
  c.max_steps = 150
  c.chunk_size = 2
  c.screen_model = ""
  c.update(kw)
  return c


def _rows(out):
  """The report's table without anything that depends on timing."""
  with open(os.path.join(out, "summary.json")) as f:
    summary = json.load(f)
  return summary["structures"], summary["totals"]


def _same_report(a, b):
  rows_a, totals_a = _rows(a)
  rows_b, totals_b = _rows(b)
  assert rows_a == rows_b
  for key in ("generated", "relaxed", "converged", "failed", "failure_reasons", "unique"):
    assert totals_a[key] == totals_b[key], key
  for r in rows_a:  # the same CIFs
    assert open(os.path.join(a, r["cif"])).read() == open(os.path.join(b, r["cif"])).read()


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, morse_ff):
  out = str(tmp_path_factory.mktemp("whole") / "run")
  search.run_search(_config(), force_field=morse_ff, output_dir=out, progress=False)
  return out


_KILLED_RUN = """
import sys
from crystal_search import search
from crystal_search.force_fields.analytic import morse
sys.path.insert(0, {tests!r})
from test_search_resume import MORSE, _config
search.run_search(_config(), force_field=morse(**MORSE), output_dir={out!r}, progress=False,
                  resume=True)
"""


def test_a_search_killed_at_random_moments_resumes_to_the_same_report(
  tmp_path, morse_ff, whole_run
):
  """``kill -9`` at random moments (several times in a row), then ``resume``: every chunk once,
  the report identical to the uninterrupted run's."""
  out = str(tmp_path / "run")
  script = _KILLED_RUN.format(tests=os.path.dirname(__file__), out=out)
  rng = np.random.default_rng(0)
  for round_ in (1, 2, 3):
    proc = subprocess.Popen(
      [sys.executable, "-c", script], env=dict(os.environ, JAX_PLATFORMS="cpu"),
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # Killed at a random moment after this round's first committed chunk (mid-chunk or mid-write).
    deadline = time.monotonic() + 120
    while len(run_store.read_chunks(out)) < round_ and time.monotonic() < deadline:
      time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.5))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Whole chunks only: every committed file parses.
    for name in os.listdir(os.path.join(out, run_store.CHUNKS_DIR)):
      if name.endswith(".json"):
        with open(os.path.join(out, run_store.CHUNKS_DIR, name)) as f:
          json.load(f)
  before = run_store.read_chunks(out)
  assert 3 <= len(before) < 5  # killed mid-run: resume has work left
  result = search.run_search(
    _config(), force_field=morse_ff, output_dir=out, resume=True, progress=False
  )  # fmt: skip
  after = run_store.read_chunks(out)
  assert len(after) == 5 and all(after[k] == before[k] for k in before)
  assert result.totals["chunks"] == {"done": 5, "total": 5}
  _same_report(out, whole_run)


def test_stop_file_ends_after_the_current_chunk_with_a_complete_report(
  tmp_path, morse_ff, whole_run, monkeypatch
):
  from crystal_search import relax

  out = str(tmp_path / "run")
  real = relax.relax_structures
  calls = []

  def touch_stop_in_chunk_two(structures, *args, **kwargs):
    calls.append(len(structures))
    if len(calls) == 2:
      open(os.path.join(out, run_store.STOP_FILE), "w").close()
    return real(structures, *args, **kwargs)

  monkeypatch.setattr(relax, "relax_structures", touch_stop_in_chunk_two)
  result = search.run_search(_config(), force_field=morse_ff, output_dir=out, progress=False)
  t = result.totals
  assert t["stopped"] and not t["interrupted"]
  assert t["chunks"] == {"done": 2, "total": 5} and t["relaxed"] == 4
  assert "Stopped by the STOP file" in open(os.path.join(out, "summary.md")).read()
  assert len(os.listdir(os.path.join(out, "structures"))) == t["unique"] >= 1
  # Resuming removes the STOP file and finishes the run as if it had never stopped.
  monkeypatch.setattr(relax, "relax_structures", real)
  search.run_search(_config(), force_field=morse_ff, output_dir=out, resume=True, progress=False)
  assert not os.path.exists(os.path.join(out, run_store.STOP_FILE))
  _same_report(out, whole_run)


def test_shards_merge_into_the_unsharded_report(tmp_path, morse_ff, whole_run):
  shards = []
  for i in (1, 2, 3):
    out = str(tmp_path / f"shard{i}")
    result = search.run_search(
      _config(), force_field=morse_ff, output_dir=out, shard=f"{i}/3", progress=False
    )  # fmt: skip
    assert sorted(run_store.read_chunks(out)) == [k for k in range(5) if k % 3 == i - 1]
    assert result.totals["shard"] == [i, 3]
    shards.append(out)
  merged = str(tmp_path / "merged")
  search.merge_runs(shards, force_field=morse_ff, output_dir=merged, progress=False)
  _same_report(merged, whole_run)
  # A missing shard, a shard given twice and a shard of another run are one-line errors.
  with pytest.raises(InputError, match="missing or unfinished"):
    search.merge_runs(shards[:2], force_field=morse_ff, output_dir=str(tmp_path / "m2"))
  with pytest.raises(InputError, match="in both"):
    search.merge_runs(shards + shards[:1], force_field=morse_ff, output_dir=str(tmp_path / "m3"))
  other = str(tmp_path / "other")
  search.run_search(
    _config(seed=1), force_field=morse_ff, output_dir=other, shard="1/3", progress=False
  )  # fmt: skip
  with pytest.raises(InputError, match="not a shard of the same run.*seed"):
    search.merge_runs([other] + shards[1:], force_field=morse_ff, output_dir=str(tmp_path / "m4"))
  with pytest.raises(InputError, match="force fields given to merge"):
    search.merge_runs(shards, force_field=morse(**dict(MORSE, sigma=2.5)), output_dir=merged)
  assert not os.path.exists(tmp_path / "m2")  # refused before anything is written


@pytest.mark.parametrize("shard", ["3/2", "0/2", "a/b", "1/2/3", "2"])
def test_impossible_shards_are_one_line_errors(tmp_path, morse_ff, shard):
  with pytest.raises(InputError, match="shard"):
    search.run_search(_config(), force_field=morse_ff, output_dir=str(tmp_path / "x"), shard=shard)
  assert not os.path.exists(tmp_path / "x")


def test_resume_refuses_a_run_of_other_settings(tmp_path, morse_ff):
  out = str(tmp_path / "run")
  search.run_search(_config(num_structures=2), force_field=morse_ff, output_dir=out, progress=False)
  before = open(os.path.join(out, "summary.json")).read()
  with pytest.raises(InputError, match=r"other settings: composition \('LiSi' there, 'Li2Si'"):
    search.run_search(
      _config(num_structures=2, composition="Li2Si"), force_field=morse_ff, output_dir=out,
      resume=True,
    )  # fmt: skip
  assert open(os.path.join(out, "summary.json")).read() == before  # nothing overwritten
  with pytest.raises(InputError, match="holds another run"):
    search.run_search(_config(num_structures=2), force_field=morse_ff, output_dir=out)


def _cli(*args):
  return subprocess.run(
    [sys.executable, "-m", "experiments.cli", *args],
    capture_output=True,
    text=True,
    check=False,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )


def test_cli_shards_and_merge(tmp_path):
  """``search --shard=I/N`` then ``merge`` from the command line, with the packaged tiny model;
  the user's mistakes are one-line errors."""
  common = [
    "--composition=LiSi", "--num_structures=4", "--max_atoms=8", "--max_steps=40",
    "--search.chunk_size=1", "--model=tiny", "--quiet",
  ]  # fmt: skip
  for i in (1, 2):
    out = _cli("search", *common, f"--shard={i}/2", f"--output_dir={tmp_path}/s{i}")
    assert out.returncode == 0, out.stderr[-2000:]
  out = _cli("merge", f"--inputs={tmp_path}/s1,{tmp_path}/s2", f"--output_dir={tmp_path}/m")
  assert out.returncode == 0, out.stderr[-2000:]
  with open(tmp_path / "m" / "summary.json") as f:
    totals = json.load(f)["totals"]
  assert totals["chunks"] == {"done": 4, "total": 4} and totals["shard"] is None
  assert totals["relaxed"] == 4
  for args, message in [
    (["search", *common, "--shard=3/2", f"--output_dir={tmp_path}/x"], "shard '3/2'"),
    (["merge", f"--inputs={tmp_path}/s1", f"--output_dir={tmp_path}/x"], "missing"),
    (["merge", f"--inputs={tmp_path}/nothing", f"--output_dir={tmp_path}/x"], "not a search"),
    (["search", *common, "--seed=3", "--resume", f"--output_dir={tmp_path}/s1"], "seed"),
  ]:
    out = _cli(*args)
    assert out.returncode == 1, out.stderr[-2000:]
    assert out.stderr.strip().startswith("error:") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / "x")
