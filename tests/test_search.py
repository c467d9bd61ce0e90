"""The search pipeline end to end on a cheap force field, its report, and its bad-input errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pymatgen.core import Structure

from crystal_search import search
from crystal_search.errors import InputError
from crystal_search.force_fields.analytic import morse


@pytest.fixture(scope="module")
def morse_ff():
  return morse(sigma=2.6, epsilon=0.3, alpha=1.4, elements=("Li", "Si"))


def _config(**kw):
  c = search.get_search_config()
  c.composition = "LiSi"
  c.num_structures = 6
  c.max_atoms = 8
  c.max_steps = 150
  c.chunk_size = 4
  for k, v in kw.items():
    c[k] = v
  return c


def test_search_writes_a_consistent_report(tmp_path, morse_ff):
  out = str(tmp_path / "run")
  result = search.run_search(_config(), force_field=morse_ff, output_dir=out, progress=False)
  with open(os.path.join(out, "summary.json")) as f:
    summary = json.load(f)
  totals = summary["totals"]
  assert totals["generated"] == 6 and totals["relaxed"] == 6
  assert totals["converged"] + totals["failed"] <= totals["relaxed"]
  rows = summary["structures"]
  assert len(rows) == totals["unique"] >= 1
  assert sum(r["count"] for r in rows) == totals["relaxed"] - totals["failed"]
  energies = [r["energy_per_atom"] for r in rows]
  assert energies == sorted(energies)
  assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
  for r in rows:
    s = Structure.from_file(os.path.join(out, r["cif"]))
    assert s.composition.reduced_formula == "LiSi"
    assert r["volume_per_atom"] == pytest.approx(s.volume / len(s), rel=1e-3)
    assert {"formula", "space_group", "known_phase", "delta_energy_per_atom"} <= set(r)
  # Group representatives are the lowest-energy members; rank 1 is the best candidate overall.
  best = min(c.energy_per_atom for c in result.candidates)
  assert rows[0]["energy_per_atom"] == pytest.approx(best)
  assert os.path.getsize(os.path.join(out, "energy_volume.png")) > 1000
  md = open(os.path.join(out, "summary.md")).read()
  assert "| rank |" in md and "LiSi" in md
  assert set(totals["wall_time_s"]) >= {"generate", "relax", "dedupe", "report", "total"}
  # Relaxation work, summed over the two relaxation calls (chunk_size 4 of 6 structures).
  work = totals["relax_work"]
  evaluations = sum(c.steps + 1 for c in result.candidates)  # failed ones are not candidates
  assert work["structure_steps"] >= evaluations > 0
  if totals["failed"] == 0:
    assert work["structure_steps"] == evaluations
  assert work["slot_steps"] >= work["structure_steps"] and work["compiles"] >= 1
  assert f"{work['structure_steps']} force evaluations" in md


def test_same_seed_same_result(tmp_path, morse_ff):
  a = search.run_search(
    _config(), force_field=morse_ff, output_dir=str(tmp_path / "a"), progress=False
  )
  b = search.run_search(
    _config(), force_field=morse_ff, output_dir=str(tmp_path / "b"), progress=False
  )
  np.testing.assert_allclose(
    [r["energy_per_atom"] for r in a.rows], [r["energy_per_atom"] for r in b.rows], rtol=1e-6
  )


def test_refuses_another_run_unless_overwrite(tmp_path, morse_ff):
  out = str(tmp_path / "run")
  search.run_search(_config(num_structures=2), force_field=morse_ff, output_dir=out, progress=False)
  with pytest.raises(InputError, match="holds another run"):
    search.run_search(
      _config(num_structures=2), force_field=morse_ff, output_dir=out, progress=False
    )
  search.run_search(
    _config(num_structures=2), force_field=morse_ff, output_dir=out, overwrite=True, progress=False
  )


@pytest.mark.parametrize(
  "composition,pattern",
  [
    ("Xx2", "Xx"),
    ("Li0Si", "Li0Si|zero|positive"),
    ("H2O", "H|not supported"),
    ("", "empty|composition"),
  ],
)
def test_bad_compositions(tmp_path, morse_ff, composition, pattern):
  with pytest.raises(InputError, match=pattern):
    search.run_search(
      _config(composition=composition), force_field=morse_ff, output_dir=str(tmp_path / "x")
    )


def test_bad_numbers(tmp_path, morse_ff):
  with pytest.raises(InputError, match="num_structures"):
    search.run_search(_config(num_structures=0), force_field=morse_ff, output_dir=str(tmp_path))
  with pytest.raises(InputError, match="optimizer must be damped or fire"):
    search.run_search(_config(optimizer="bfgs"), force_field=morse_ff, output_dir=str(tmp_path))


def test_the_optimizer_setting_reaches_the_relaxer(tmp_path, morse_ff):
  """The search relaxes with L-BFGS by default; ``fire`` is ASE's FIRE, ``damped`` the paper's rule."""
  from crystal_search import compositions, random_structures, relax

  assert search.get_search_config().optimizer == "lbfgs"
  c = _config(num_structures=3)
  cells = random_structures.generate(
    compositions.parse_composition("LiSi"), 3, seed=0, config=search.generator_config(c)
  )
  for optimizer in ("lbfgs", "fire", "damped"):
    out = tmp_path / optimizer
    result = search.run_search(
      _config(num_structures=3, optimizer=optimizer),
      force_field=morse_ff,
      output_dir=str(out),
      progress=False,
    )
    direct = relax.relax_structures(
      cells, morse_ff, optimizer=optimizer, fmax=c.fmax, smax=c.smax, max_steps=c.max_steps
    )
    assert sorted(x.steps for x in result.candidates) == sorted(
      r.steps for r in direct if not r.failed
    )
    with open(out / "summary.json") as f:
      assert json.load(f)["totals"]["settings"]["optimizer"] == optimizer


@pytest.mark.parametrize(
  "overrides,pattern",
  [
    ({"formula_units": "two"}, "formula_units"),
    ({"formula_units": "1,-2"}, "positive"),
    ({"symmetric_fraction": 1.5}, "symmetric_fraction"),
    ({"max_symmops": 1}, "max_symmops"),
    ({"min_symmops": 8, "max_symmops": 6}, "min_symmops <= max_symmops"),
    (
      {"composition": "Li5Si", "max_atoms": 6, "symmetric_fraction": 1.0}
      | {"min_symmops": 48, "max_symmops": 48},
      "no space group with 48",
    ),
  ],
)
def test_bad_generator_settings(tmp_path, morse_ff, overrides, pattern):
  with pytest.raises(InputError, match=pattern):
    search.run_search(_config(**overrides), force_field=morse_ff, output_dir=str(tmp_path / "x"))
  assert not (tmp_path / "x").exists()  # refused before anything is written


def test_formula_units_setting_reaches_the_generator(tmp_path, morse_ff):
  result = search.run_search(
    _config(composition="LiSi", num_structures=2, formula_units="3", max_atoms=8),
    force_field=morse_ff,
    output_dir=str(tmp_path / "z3"),
    progress=False,
  )
  assert {len(c.structure) for c in result.candidates} == {6}
  with open(tmp_path / "z3" / "summary.json") as f:
    settings = json.load(f)["totals"]["settings"]
  assert settings["formula_units"] == "3" and settings["primitive_cells"] is False


def _cli(*args):
  return subprocess.run(
    [sys.executable, "-m", "experiments.cli", "search", *args],
    capture_output=True,
    text=True,
    check=False,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )


def test_cli_bad_input_is_one_line(tmp_path):
  out = _cli("--composition=Xx2", f"--output_dir={tmp_path}/o", "--force_field=meam", "--quiet")
  assert out.returncode == 1
  assert out.stderr.strip().startswith("error:") and len(out.stderr.strip().splitlines()) == 1
  out = _cli("--composition=LiSi", f"--output_dir={tmp_path}/o", "--num_structures=-3", "--quiet")
  assert out.returncode == 1 and "num_structures" in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1
  out = _cli("--composition=Li15Si4", f"--output_dir={tmp_path}/z", "--formula_units=3", "--quiet")
  assert out.returncode == 1 and "formula_units 3" in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / "z")  # refused before anything is written


@pytest.mark.meam
def test_cli_search_with_meam(tmp_path):
  out = _cli(
    "--composition=LiSi",
    "--num_structures=3",
    "--max_atoms=8",
    "--max_steps=60",
    f"--output_dir={tmp_path}/o",
    "--force_field=meam",
    "--quiet",
  )
  assert out.returncode == 0, out.stderr[-2000:]
  summary = json.load(open(tmp_path / "o" / "summary.json"))
  assert summary["totals"]["generated"] == 3


def test_ctrl_c_keeps_what_finished_and_says_so(tmp_path, morse_ff, monkeypatch):
  """A KeyboardInterrupt during the second relaxation chunk: chunk one is reported, run flagged."""
  from crystal_search import relax

  real = relax.relax_structures
  calls = []

  def interrupted_after_first_chunk(structures, *args, **kwargs):
    calls.append(len(structures))
    if len(calls) == 2:
      raise KeyboardInterrupt
    return real(structures, *args, **kwargs)

  monkeypatch.setattr(relax, "relax_structures", interrupted_after_first_chunk)
  out = str(tmp_path / "cut")
  search.run_search(_config(chunk_size=4), force_field=morse_ff, output_dir=out, progress=False)
  with open(os.path.join(out, "summary.json")) as f:
    totals = json.load(f)["totals"]
  assert totals["interrupted"] is True
  # Chunk two was generated but not relaxed: only the finished chunk counts.
  assert totals["generated"] == 4 and totals["relaxed"] == 4
  assert totals["chunks"] == {"done": 1, "total": 2}
  assert "cut short" in open(os.path.join(out, "summary.md")).read()
  assert len(os.listdir(os.path.join(out, "structures"))) == totals["unique"] >= 1


def test_screen_then_polish_relaxes_the_lowest_candidates_again(tmp_path, morse_ff):
  """Every cell screened to screen_fmax by one force field; the lowest polish_top_k distinct
  candidates polished by the other to fmax; groups and counts stay consistent."""
  screen = morse(sigma=2.6, epsilon=0.3, alpha=1.4, elements=("Li", "Si"))
  config = _config(num_structures=8, screen_fmax=0.3, polish_top_k=3, polish_window=1.0)
  out = str(tmp_path / "run")
  result = search.run_search(
    config, force_field=morse_ff, screen_force_field=screen, output_dir=out, progress=False
  )
  t = result.totals
  assert 1 <= t["polished"] <= 3
  assert t["polished_converged"] + t["polish_failed"] <= t["polished"]
  assert {"screen", "polish"} <= set(t["wall_time_s"]) and "relax" not in t["wall_time_s"]
  rows = result.rows
  assert sum(r["count"] for r in rows) == t["relaxed"] - t["failed"]
  polished = [c for c in result.candidates if c.polished]
  assert len(polished) == t["polished"] - t["polish_failed"]
  for c in polished:  # polished to the tighter threshold: forces below fmax under morse_ff
    (again,) = relax_once(c.structure, morse_ff)
    assert again.max_force < 0.05 + 1e-3
  assert any(r["polished"] for r in rows) and rows[0]["polished"]
  md = open(os.path.join(out, "summary.md")).read()
  assert "Screened with" in md and "| polished |" in md


def relax_once(structure, force_field):
  from crystal_search import relax

  return relax.relax_structures([structure], force_field, max_steps=1, fmax=1e9, smax=1e9)


@pytest.mark.parametrize(
  "overrides, message",
  [
    (dict(screen_fmax=0.01), "screen_fmax"),
    (dict(polish_top_k=0), "polish_top_k"),
    (dict(polish_window=0.0), "polish_window"),
  ],
)
def test_impossible_screening_settings_are_one_line_errors(tmp_path, morse_ff, overrides, message):
  with pytest.raises(InputError, match=message):
    search.run_search(
      _config(**overrides),
      force_field=morse_ff,
      screen_force_field=morse_ff,
      output_dir=str(tmp_path / "x"),
      progress=False,
    )
  assert not os.path.exists(tmp_path / "x")
