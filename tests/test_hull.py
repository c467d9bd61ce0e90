"""The convex hull: formation energies and energies above the hull against hand-computed values,
one-line errors for bad inputs, the ``hull`` binary and a tiny multi-composition search."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from pymatgen.core import Lattice, Structure

from crystal_search import hull, hull_report, multi_search, search
from crystal_search.errors import InputError
from crystal_search.force_fields.analytic import morse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MORSE = dict(sigma=2.6, epsilon=0.3, alpha=1.4)


@pytest.fixture(scope="module")
def morse_ff():
  return morse(**MORSE, elements=("Li", "Si"))


def _cscl(a=3.0, species=("Li", "Si")):
  return Structure(Lattice.cubic(a), list(species), [[0, 0, 0], [0.5, 0.5, 0.5]])


def _l12(majority, minority, a=4.0):
  """Cu3Au-type cell: ``minority`` at the corner, ``majority`` at the face centres."""
  frac = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
  return Structure(Lattice.cubic(a), [minority] + [majority] * 3, frac)


def _rocksalt(a=5.0):
  return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Li", "Si"], [[0, 0, 0], [0.5] * 3])


def _write_run(path, composition, rows, *, force_field="toy"):
  """A finished search directory as :func:`search.write_report` lays it out."""
  os.makedirs(os.path.join(path, "structures"), exist_ok=True)
  out = []
  for rank, (structure, energy) in enumerate(rows, start=1):
    cif = os.path.join("structures", f"rank_{rank:03d}.cif")
    structure.to(filename=os.path.join(path, cif))
    out.append(
      {
        "rank": rank,
        "formula": structure.composition.reduced_formula,
        "energy_per_atom": energy,
        "cif": cif,
        "space_group": "P1 (1)",
        "known_phase": None,
      }
    )
  totals = {
    "composition": composition,
    "force_field": force_field,
    "settings": search.get_search_config().to_dict(),
  }
  with open(os.path.join(path, "summary.json"), "w") as f:
    json.dump({"structures": out, "totals": totals}, f)
  return str(path)


def _toy_references():
  """References with round energies: Li -1.0 eV/atom, Si -2.0 eV/atom."""
  from crystal_search import metrics

  phases = metrics.load_reference_phases()
  return {
    "Li": hull.Reference("Li", phases["Li (mp-135)"], -1.0),
    "Si": hull.Reference("Si", phases["Si (mp-149)"], -2.0),
  }


def test_formation_energies_and_hull_match_hand_computed_values(tmp_path):
  runs = [
    # CsCl LiSi at E_f -0.3 (on the hull), rocksalt LiSi at -0.2 (0.1 above).
    _write_run(tmp_path / "a", "LiSi", [(_cscl(), -1.8), (_rocksalt(), -1.7)]),
    # The same CsCl crystal found again 5 meV/atom higher: one structure on the diagram.
    _write_run(tmp_path / "b", "LiSi", [(_cscl(3.01), -1.795)]),
    # Li3Si at E_f -0.25, below the LiSi–Li line (-0.15 at x = 0.75): on the hull.
    _write_run(tmp_path / "c", "Li3Si", [(_l12("Li", "Si"), -1.5)]),
    # LiSi3 at E_f +0.05, the hull there is -0.15: 0.2 above.
    _write_run(tmp_path / "d", "LiSi3", [(_l12("Si", "Li"), -1.7)]),
  ]
  loaded = hull.load_runs(runs)
  assert loaded.elements == ("Li", "Si") and len(loaded.entries) == 5
  result = hull.build_hull(loaded.entries, _toy_references(), force_field="toy")
  assert result.stable == ["Si", "LiSi", "Li3Si", "Li"]
  rows = {(r["formula"], r["source"], r["rank"]): r for r in result.rows}
  assert len(rows) == 6  # two references, four distinct structures
  want = {  # (E_f, E above hull), eV/atom
    ("LiSi", runs[0], 1): (-0.3, 0.0),
    ("LiSi", runs[0], 2): (-0.2, 0.1),
    ("Li3Si", runs[2], 1): (-0.25, 0.0),
    ("LiSi3", runs[3], 1): (0.05, 0.2),
    ("Li", "reference", None): (0.0, 0.0),
  }
  for key, (e_form, e_hull) in want.items():
    assert rows[key]["formation_energy_per_atom"] == pytest.approx(e_form, abs=1e-9)
    assert rows[key]["e_above_hull"] == pytest.approx(e_hull, abs=1e-9)
  assert rows[("LiSi3", runs[3], 1)]["x"] == pytest.approx(0.25)
  assert rows[("LiSi3", runs[3], 1)]["decomposes_to"] == ["LiSi", "Si"]
  assert rows[("LiSi", runs[0], 1)]["space_group"] == {"0.1": "Pm-3m (221)", "0.01": "Pm-3m (221)"}
  assert rows[("Li", "reference", None)]["known_phase"] == "Li (mp-135)"

  out = tmp_path / "hull"
  os.makedirs(out)
  hull_report.write_hull(result, str(out))
  report = json.load(open(out / "hull.json"))
  assert report["stable"] == result.stable and report["x_element"] == "Li"
  assert report["references"]["Si"]["energy_per_atom"] == -2.0
  assert [r["stable"] for r in report["structures"]] == [True] * 4 + [False] * 2
  assert sorted(os.listdir(out / "stable")) == sorted(
    ["LiSi_sg221.cif", "Li3Si_sg221.cif", "Li_sg229.cif", "Si_sg227.cif"]
  )
  for r in report["structures"][:4]:
    cif = Structure.from_file(out / r["stable_cif"])
    assert cif.composition.reduced_formula == r["formula"]
  md = open(out / "hull.md").read().splitlines()
  assert md[2].startswith("Stable: Si, LiSi, Li3Si, Li.") and "| 200.0 |" in md[-1]
  assert os.path.getsize(out / "hull.png") > 1000
  with pytest.raises(InputError, match="holds another hull"):
    hull_report.write_hull(result, str(out))


@pytest.mark.parametrize(
  "layout, message",
  [
    ({"a": ("LiSi", "toy"), "missing": None}, "no summary.json"),
    ({"a": ("LiSi", "toy"), "b": ("Li3Si", "other")}, "a hull takes runs of one force field"),
    ({"a": ("LiSi", "toy"), "b": ("LiGe", "toy")}, "chemical system Ge-Li differs"),
    ({"a": ("Li", "toy")}, "runs cover only Li; a hull needs two elements"),
    ({}, "no search runs given"),
  ],
)
def test_bad_runs_are_one_line_errors(tmp_path, layout, message):
  dirs = []
  for name, spec in layout.items():
    path = tmp_path / name
    if spec is None:
      os.makedirs(path)
    else:
      _write_run(path, spec[0], [(_cscl(), -1.0)], force_field=spec[1])
    dirs.append(str(path))
  with pytest.raises(InputError, match=message) as e:
    hull.load_runs(dirs)
  assert "\n" not in str(e.value)


def test_reference_errors_name_the_element(tmp_path, morse_ff, monkeypatch):
  with pytest.raises(InputError, match="element F: no reference structure"):
    hull.reference_energies(("F", "Li"), morse(**MORSE))
  assert hull.reference_structure("Ge").composition.reduced_formula == "Ge"  # ASE's diamond
  with pytest.raises(InputError, match="element Si: Morse.* has no parameters"):
    hull.reference_energies(("Li", "Si"), morse(**MORSE, elements=("Li",)))
  runs = [_write_run(tmp_path / "a", "LiSi", [(_cscl(), -1.0)], force_field="toy")]
  with pytest.raises(InputError, match="relaxed with 'toy', not 'Morse"):
    hull_report.hull_from_runs(runs, force_field=morse_ff, output_dir=str(tmp_path / "out"))

  from crystal_search import relax

  def failing(structures, *args, **kwargs):
    return [
      SimpleNamespace(
        final=s,
        failed="Si" in s.symbol_set,
        failure_reason="nan",
        converged=False,
        steps=1,
        energy=-1.0,
      )
      for s in structures
    ]

  monkeypatch.setattr(relax, "relax_structures", failing)
  with pytest.raises(InputError, match=r"reference Si \(Si_MP_symmetrized.cif\) failed to relax"):
    hull.reference_energies(("Li", "Si"), morse_ff)


def test_split_structures():
  assert multi_search.split_structures(10, 3) == [4, 3, 3]
  assert multi_search.split_structures(2, 3) == [1, 1, 1]
  assert sum(multi_search.split_structures(500, 5)) == 500


def _config(**kw):
  c = search.get_search_config()
  c.update(dict(num_structures=3, max_atoms=8, max_steps=150, chunk_size=4, screen_model=""))
  c.update(kw)
  return c


@pytest.mark.parametrize(
  "compositions, message",
  [
    (["LiSi", "NaSi"], "'NaSi': element\\(s\\) Na not supported"),
    (["Li", "Li2"], "Li is given twice"),
    (["Li"], "one element only; a hull needs two"),
    ([" "], "no composition given"),
  ],
)
def test_bad_composition_lists_are_refused_before_anything_runs(
  tmp_path, morse_ff, compositions, message
):
  with pytest.raises(InputError, match=message):
    multi_search.run_multi_search(
      compositions, _config(), force_field=morse_ff, output_dir=str(tmp_path / "o")
    )
  assert not os.path.exists(tmp_path / "o")


def test_an_element_without_reference_is_refused(tmp_path):
  """A force field for any element still has no hull reference for F."""
  with pytest.raises(InputError, match="element F: no reference structure"):
    multi_search.run_multi_search(
      ["LiF", "Li3F"], _config(), force_field=morse(**MORSE), output_dir=str(tmp_path / "o")
    )
  assert not os.path.exists(tmp_path / "o")


# Runs a binary through `experiments.cli.main` with the toy Morse force field in place of the
# packaged model (every other step as in `crystal-search COMMAND`).
_CLI = """
import sys
from crystal_search import search, search_models
from crystal_search.force_fields.analytic import morse
fake = lambda kind, **kw: (morse({morse}, elements=("Li", "Si")), None)
search.load_force_field = search_models.load_force_field = fake
from experiments import cli
cli.main(["crystal-search", *sys.argv[1:]])
"""


def _cli(*args):
  """``crystal-search ARGS`` with the Morse force field."""
  code = _CLI.format(morse=", ".join(f"{k}={v}" for k, v in MORSE.items()))
  return subprocess.run(
    [sys.executable, "-c", code, *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=False,
    env=dict(os.environ, JAX_PLATFORMS="cpu", CRYSTAL_SEARCH_JAX_CACHE="off"),
  )


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory, morse_ff):
  """Searches of LiSi and Li3Si (4 structures split 2 + 2) and their hull."""
  out = tmp_path_factory.mktemp("multi") / "o"
  config = _config(num_structures=4, max_steps=100)
  multi_search.run_multi_search(
    ["LiSi", "Li3Si"], config, force_field=morse_ff, output_dir=str(out), progress=False
  )
  return out


def test_a_list_of_compositions_searches_each_and_builds_their_hull(multi_run):
  out = multi_run
  counts = {}
  for formula in ("LiSi", "Li3Si"):
    totals = json.load(open(out / formula / "summary.json"))["totals"]
    assert totals["composition"] == formula and totals["seed"] == 0
    counts[formula] = totals["generated"]
  assert counts == {"LiSi": 2, "Li3Si": 2}
  report = json.load(open(out / "hull.json"))
  refs = {el: r["energy_per_atom"] for el, r in report["references"].items()}
  assert set(refs) == {"Li", "Si"} and report["force_field"].startswith("Morse")
  assert report["stable"][0] == "Si" and report["stable"][-1] == "Li"
  sources = {os.path.basename(r["source"]) for r in report["structures"]}
  assert sources == {"reference", "LiSi", "Li3Si"}
  for r in report["structures"]:
    x = r["x"]
    mu = x * refs["Li"] + (1 - x) * refs["Si"]
    assert r["formation_energy_per_atom"] == pytest.approx(r["energy_per_atom"] - mu, abs=1e-9)
    assert r["e_above_hull"] >= 0 and (r["e_above_hull"] < 1e-6 or not r["stable"])
  assert len(os.listdir(out / "stable")) == len(report["stable"])
  assert (out / "hull.md").exists() and (out / "hull.png").exists()


def test_hull_binary_rebuilds_the_same_hull_from_the_runs(multi_run, tmp_path):
  runs = f"{multi_run / 'LiSi'},{multi_run / 'Li3Si'}"
  out = tmp_path / "h"
  done = _cli("hull", f"--inputs={runs}", f"--output_dir={out}", "--quiet")
  assert done.returncode == 0, done.stderr[-3000:]
  again = json.load(open(out / "hull.json"))
  first = json.load(open(multi_run / "hull.json"))
  assert again["stable"] == first["stable"]
  assert [r["e_above_hull"] for r in again["structures"]] == pytest.approx(
    [r["e_above_hull"] for r in first["structures"]], abs=1e-6
  )
  done = _cli("hull", f"--inputs={tmp_path / 'nowhere'}", f"--output_dir={tmp_path / 'x'}")
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
  assert (
    lines[0] == f"error: {tmp_path / 'nowhere'}: no summary.json there (not a finished search run)"
  )


def test_a_comma_in_the_search_binarys_composition_runs_a_multi_search(tmp_path):
  """``crystal-search search --composition=A,B`` goes to :mod:`crystal_search.multi_search`
  (here refused in one line before anything runs: a composition with a foreign element)."""
  done = _cli("search", "--composition=LiSi,NaSi", f"--output_dir={tmp_path / 'o'}", "--quiet")
  lines = done.stderr.strip().splitlines()
  assert done.returncode == 1 and len(lines) == 1, done.stderr[-3000:]
  assert lines[0].startswith("error: composition 'NaSi': element(s) Na not supported")
  assert not os.path.exists(tmp_path / "o")
