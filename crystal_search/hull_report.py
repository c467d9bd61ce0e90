"""The hull's report: ``hull.json``, ``hull.md`` (stable phases first), ``hull.png`` (formation
energy against the atomic fraction of the hull's first element) and ``stable/`` (symmetrized CIFs
of the phases on the hull); :func:`hull_from_runs` builds and writes the hull of finished
searches.  Energies eV/atom (the table's energy above the hull meV/atom),
spglib tolerances Å."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence

import numpy as np
from pymatgen.core import Structure

from crystal_search.errors import InputError
from crystal_search.hull import (
  REFERENCE_FILES,
  STABLE_SYMPREC,
  SYMPRECS,
  Hull,
  build_hull,
  load_runs,
  reference_energies,
)

__all__ = ["check_output_dir", "hull_from_runs", "plot_hull", "write_hull"]

#: What a hull writes into its directory.
OUTPUTS = ("hull.json", "hull.md", "hull.png", "stable")


def _order(hull: Hull) -> list[int]:
  """Row indices: stable phases by ``x``, then the rest by energy above the hull."""
  return sorted(
    range(len(hull.rows)),
    key=lambda k: (not hull.rows[k]["stable"], hull.rows[k]["e_above_hull"], hull.rows[k]["x"]),
  )


def check_output_dir(output_dir: str, *, overwrite: bool) -> None:
  """One-line :class:`InputError` when ``output_dir`` holds another hull (unless ``overwrite``)."""
  held = [n for n in OUTPUTS if os.path.exists(os.path.join(output_dir, n))]
  if held and not overwrite:
    raise InputError(
      f"{output_dir}: holds another hull ({held[0]}); pass --overwrite to replace it"
    )


def write_hull(hull: Hull, output_dir: str, *, overwrite: bool = False) -> None:
  """``hull.json``, ``hull.md``, ``hull.png`` and ``stable/*.cif`` into ``output_dir``."""
  check_output_dir(output_dir, overwrite=overwrite)
  stable_dir = os.path.join(output_dir, "stable")
  shutil.rmtree(stable_dir, ignore_errors=True)
  os.makedirs(stable_dir)
  order = _order(hull)
  for k in order:
    if hull.rows[k]["stable"]:
      hull.rows[k]["stable_cif"] = _write_symmetrized(hull.structures[k], stable_dir)
  report = {
    "units": {"energy": "eV/atom", "symprec": "Å"},
    "force_field": hull.force_field,
    "x_element": hull.x_element,
    "stable": hull.stable,
    "references": {
      el: {
        "file": REFERENCE_FILES.get(el),
        "energy_per_atom": r.energy_per_atom,
        "converged": r.converged,
        "steps": r.steps,
      }
      for el, r in hull.references.items()
    },
    "structures": [hull.rows[k] for k in order],
  }
  with open(os.path.join(output_dir, "hull.json"), "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(output_dir, "hull.md"), "w") as f:
    f.write("\n".join(_markdown(hull, order)) + "\n")
  plot_hull(hull, os.path.join(output_dir, "hull.png"))


def _write_symmetrized(structure: Structure, directory: str) -> str:
  """The structure refined at :data:`STABLE_SYMPREC` Å as a symmetrized CIF (the raw structure
  when spglib fails); its path relative to the hull's directory."""
  from pymatgen.io.cif import CifWriter
  from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

  formula = structure.composition.reduced_formula
  try:
    sga = SpacegroupAnalyzer(structure, symprec=STABLE_SYMPREC)
    refined, number = sga.get_refined_structure(), sga.get_space_group_number()
    name = f"{formula}_sg{number}.cif"
    CifWriter(refined, symprec=STABLE_SYMPREC).write_file(os.path.join(directory, name))
  except Exception:  # noqa: BLE001 - spglib fails on some distorted cells
    name = f"{formula}_raw.cif"
    structure.to(filename=os.path.join(directory, name))
  return os.path.join("stable", name)


def _markdown(hull: Hull, order: list[int]) -> list[str]:
  x, p0, p1 = hull.x_element, *SYMPRECS
  refs = ", ".join(f"{el} {r.energy_per_atom:.4f}" for el, r in hull.references.items())
  lines = [
    f"# Convex hull ({hull.force_field})",
    "",
    f"Stable: {', '.join(hull.stable)}. References (eV/atom): {refs}.",
    "",
    f"| formula | x({x}) | E (eV/atom) | E_f (eV/atom) | E above hull (meV/atom) | space group "
    f"({p0} Å) | space group ({p1} Å) | known phase | source | stable |",
    "|---|---:|---:|---:|---:|---|---|---|---|---|",
  ]
  for k in order:
    r = hull.rows[k]
    source = r["source"] + (f" #{r['rank']}" if r["rank"] is not None else "")
    lines.append(
      f"| {r['formula_cell']} | {r['x']:.3f} | {r['energy_per_atom']:.4f} | "
      f"{r['formation_energy_per_atom']:.4f} | {1000 * r['e_above_hull']:.1f} | "
      f"{r['space_group'][str(p0)]} | {r['space_group'][str(p1)]} | {r['known_phase'] or ''} | "
      f"{source} | {'yes' if r['stable'] else ''} |"
    )
  return lines


def plot_hull(hull: Hull, path: str) -> None:
  """Formation energy (eV/atom) against ``x``: every structure, the hull line, stable phases
  labelled with formula and space group, known phases starred."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  rows = hull.rows
  ax.scatter([r["x"] for r in rows], [r["formation_energy_per_atom"] for r in rows], s=12, c="0.6")
  line = sorted((r for r in rows if r["stable"]), key=lambda r: r["x"])
  ax.plot([r["x"] for r in line], [r["formation_energy_per_atom"] for r in line], "-o", c="C0")
  for r in line:
    label = f"{r['formula']} {r['space_group'][str(SYMPRECS[0])].split(' ')[0]}"
    xy = (r["x"], r["formation_energy_per_atom"])
    ax.annotate(label, xy, textcoords="offset points", xytext=(4, -12), fontsize=8)
  known = [r for r in rows if r["known_phase"]]
  xs, ys = [r["x"] for r in known], [r["formation_energy_per_atom"] for r in known]
  ax.scatter(xs, ys, s=70, marker="*", c="C3", label="known phase", zorder=3)
  ax.set_xlabel(f"atomic fraction of {hull.x_element}")
  ax.set_ylabel("formation energy (eV/atom)")
  ax.set_title(f"Convex hull: {hull.force_field}")
  if known:
    ax.legend(loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def hull_from_runs(
  run_dirs: Sequence[str],
  *,
  force_field,
  output_dir: str,
  energy_fn: Callable[[Sequence[Structure]], np.ndarray] | None = None,
  overwrite: bool = False,
  progress: bool = True,
) -> Hull:
  """The hull of finished searches, written into ``output_dir``.

  ``force_field`` (and ``energy_fn``) must be the ones the searches relaxed (and ranked) with:
  they relax (and score) the references with the runs' settings.

  Raises:
    InputError: see :func:`~crystal_search.hull.load_runs` and
      :func:`~crystal_search.hull.reference_energies`; a force field other than
      the runs'; an output directory that holds another hull (without ``overwrite``).
  """
  runs = load_runs(run_dirs)
  name = getattr(force_field, "name", type(force_field).__name__)
  if name != runs.force_field:
    raise InputError(f"runs were relaxed with {runs.force_field!r}, not {name!r}")
  check_output_dir(output_dir, overwrite=overwrite)
  refs = reference_energies(
    runs.elements, force_field, energy_fn=energy_fn, settings=runs.settings, progress=progress
  )
  hull = build_hull(runs.entries, refs, force_field=name)
  os.makedirs(output_dir, exist_ok=True)
  write_hull(hull, output_dir, overwrite=overwrite)
  return hull
