r"""The Li–Si convex hull of the known phases by the teacher and by each packaged model.

Every bundled phase of ``crystal_search/data/lisi_phases/`` (primitive cells) and the elemental
references (bcc Li, diamond Si) are relaxed by each force field with the search's default
settings and scored as the search scores them (:func:`crystal_search.hull.known_phases_hull`):
CHGNet with its own energies, the packaged force/stress models with the shipped energy model.
Reported per force field: the stable set, each known phase's formation energy and energy above
the hull (meV/atom), whether its relaxed structure is still that phase, and the wall time.

  python benchmarks/hull_validation.py
"""

from __future__ import annotations

import time

import _common  # benchmarks/_common.py (this folder is on sys.path)
from absl import app, flags, logging

_MODELS = flags.DEFINE_list("models", ["default", "fast", "tiny"], "Packaged models to compare.")
_TEACHER = flags.DEFINE_boolean("teacher", True, "Also the teacher (CHGNet).")
_OUT = flags.DEFINE_string("out", "benchmarks/results/hull_validation.json", "Report.")


def _force_fields() -> dict:
  """Label -> ``(force_field, energy_fn)``, loaded lazily in report order."""
  from crystal_search import search

  loaders = {}
  if _TEACHER.value:
    loaders["chgnet"] = lambda: search.load_force_field("chgnet")
  for name in _MODELS.value:
    loaders[f"model:{name}"] = lambda name=name: search.load_force_field("model", model=name)
  return loaders


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every model load at INFO
  from crystal_search import hull, search
  from experiments.common import machine_name

  machine = _common.machine()
  settings = {k: search.get_search_config()[k] for k in ("optimizer", "fmax", "smax", "max_steps")}
  runs = {}
  for label, load in _force_fields().items():
    force_field, energy_fn = load()
    t0 = time.perf_counter()
    result, failed = hull.known_phases_hull(force_field, energy_fn=energy_fn, settings=settings)
    runs[label] = _summary(result, failed, time.perf_counter() - t0)
    print(f"{label}: stable {', '.join(runs[label]['stable'])}", flush=True)
  report = {
    "command": _common.command_line(),
    "machine": machine,
    "machine_name": machine_name(),
    "date": time.strftime("%Y-%m-%d"),
    "relax_settings": settings,
    "units": {"energy": "meV/atom"},
    "force_fields": runs,
  }
  _common.write_report(_OUT.value, report, _lines(report))


def _summary(result, failed: list[str], wall_s: float) -> dict:
  """One force field's hull: stable set, per phase ``e_above_hull``/``formation_energy``
  (meV/atom), the phase its relaxed structure matches, and the references (eV/atom)."""
  phases = {}
  for r in result.rows:
    name = r["name"] if r["source"] != "reference" else r["known_phase"] or r["name"]
    phases[name] = {
      "formula": r["formula"],
      "x": r["x"],
      "formation_energy": 1000 * r["formation_energy_per_atom"],
      "e_above_hull": 1000 * r["e_above_hull"],
      "stable": r["stable"],
      "relaxed_matches": r["known_phase"],
      "space_group": r["space_group"],
    }
  return {
    "name": result.force_field,
    "stable": result.stable,
    "references_ev_per_atom": {el: x.energy_per_atom for el, x in result.references.items()},
    "failed": failed,
    "wall_s": wall_s,
    "phases": phases,
  }


def _lines(r: dict) -> list[str]:
  runs = r["force_fields"]
  labels = list(runs)
  x_of = {p: v["x"] for x in runs.values() for p, v in x["phases"].items()}
  phases = sorted(x_of, key=x_of.get)
  s = r["relax_settings"]
  lines = [
    "# Li–Si convex hull of the known phases: teacher against the packaged models",
    "",
    f"`{r['command']}` on {_common.describe(r['machine'])}, {r['date']}. Each bundled phase "
    "(primitive cell) and the references bcc Li and diamond Si relaxed by each force field "
    f"({s['optimizer']}, fmax {s['fmax']} eV/Å, smax {s['smax']} kBar, at most {s['max_steps']} "
    "steps) and scored as the search scores it (CHGNet: its own energies; models: the shipped "
    "energy model); hull by pymatgen's PhaseDiagram (`crystal_search.hull.known_phases_hull`).",
    "",
    "Stable set:",
    "",
  ]
  for label in labels:
    x = runs[label]
    failed = f"; failed: {', '.join(x['failed'])}" if x["failed"] else ""
    lines.append(f"- {label} ({x['name']}): {', '.join(x['stable'])}; {x['wall_s']:.0f} s{failed}")
  refs = "; ".join(
    f"{label} "
    + ", ".join(f"{el} {e:.3f}" for el, e in runs[label]["references_ev_per_atom"].items())
    for label in labels
  )
  lines += ["", f"Reference energies (eV/atom, the formation energies' zero): {refs}."]
  lines += ["", "Energy above the hull (meV/atom; * stable; ≠ relaxed away from the phase):", ""]
  lines += _common.table_head("phase", labels, align="---:")
  for p in phases:
    cells = []
    for label in labels:
      x = runs[label]["phases"].get(p)
      if x is None:
        cells.append("failed")
        continue
      mark = ("*" if x["stable"] else "") + ("" if x["relaxed_matches"] == p else " ≠")
      cells.append(f"{x['e_above_hull']:.1f}{mark}")
    lines.append(f"| {p} | " + " | ".join(cells) + " |")
  lines += [
    "",
    "Formation energy (meV/atom):",
    "",
    *_common.table_head("phase", labels, align="---:"),
  ]
  for p in phases:
    cells = [
      f"{runs[label]['phases'][p]['formation_energy']:.1f}" if p in runs[label]["phases"] else "–"
      for label in labels
    ]
    lines.append(f"| {p} | " + " | ".join(cells) + " |")
  return lines


if __name__ == "__main__":
  app.run(lambda argv: _common.run(lambda: main(argv)))
