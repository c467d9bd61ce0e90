"""The search's report: one row per distinct structure, ``summary.json``, ``summary.md``,
``structures/rank_NNN.cif`` and ``energy_volume.png`` (an AIRSS ``cryan``-style table)."""

from __future__ import annotations

import os

import numpy as np

from crystal_search import run_store

__all__ = ["plot_energy_volume", "rows", "space_group", "work_line", "write_report"]


def space_group(structure, symprec: float) -> str:
  """``"SYMBOL (NUMBER)"`` of ``structure`` at spglib tolerance ``symprec`` (Å); P1 when spglib
  fails."""
  from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

  try:
    sga = SpacegroupAnalyzer(structure, symprec=symprec)
    return f"{sga.get_space_group_symbol()} ({sga.get_space_group_number()})"
  except Exception:  # noqa: BLE001 - spglib fails on some distorted cells
    return "P1 (1)"


def rows(candidates, groups, rescored, config, output_dir) -> list[dict]:
  """The report's table, one row per group, and its representative's CIF written."""
  from crystal_search import metrics

  references = metrics.load_reference_phases()
  best = candidates[groups[0][0]].energy_per_atom if groups else float("nan")
  os.makedirs(os.path.join(output_dir, "structures"), exist_ok=True)
  table = []
  for rank, g in enumerate(groups, start=1):
    c = candidates[g[0]]
    cif = os.path.join("structures", f"rank_{rank:03d}.cif")
    try:
      c.structure.to(filename=os.path.join(output_dir, cif))
    except (ValueError, TypeError, ArithmeticError) as e:  # one structure's CIF, not the report
      cif = f"not written: {e}"
    row = {
      "rank": rank,
      "formula": c.structure.composition.reduced_formula,
      "formula_cell": c.structure.composition.formula.replace(" ", ""),
      "energy_per_atom": c.energy_per_atom,
      "delta_energy_per_atom": c.energy_per_atom - best,
      "volume_per_atom": c.structure.volume / len(c.structure),
      "space_group": space_group(c.structure, float(config.symprec)),
      "count": len(g),
      "known_phase": _known_phase(c.structure, references),
      "converged": c.converged,
      "polished": c.polished,
      "cif": cif,
    }
    if g[0] in rescored:
      row["teacher_energy_per_atom"] = rescored[g[0]]
    table.append(row)
  return table


def _known_phase(structure, references) -> str | None:
  """The bundled phase ``structure`` matches, None also when the matcher cannot compare it."""
  from crystal_search import metrics

  try:
    return metrics.known_phase(structure, references)
  except (ValueError, ArithmeticError, np.linalg.LinAlgError):
    return None


def work_line(work: dict) -> str:
  """The report's line on relaxation work (``totals["relax_work"]``)."""
  useful = work["structure_steps"] / max(work["slot_steps"], 1)
  return (
    f"Relaxation work: {work['structure_steps']} force evaluations of structures in "
    f"{work['slot_steps']} batch slot-steps ({100 * useful:.0f} % useful), "
    f"{work['compiles']} compilations, {work['compactions']} batch compactions."
  )


def write_report(result, output_dir: str) -> None:
  """``summary.json``, ``summary.md`` and ``energy_volume.png`` (AIRSS ``cryan``-style table)."""
  summary = {"structures": result.rows, "totals": result.totals}
  run_store.write_json(os.path.join(output_dir, "summary.json"), summary, indent=2)

  t = result.totals
  lines = [
    f"# Search: {t['composition']} ({t['force_field']}, seed {t['seed']})",
    "",
  ]
  if t["interrupted"]:
    lines += ["**Run cut short (interrupted): the table holds what finished.**", ""]
  if t.get("stopped"):
    lines += [f"**Stopped by the {run_store.STOP_FILE} file: the table holds what finished.**", ""]
  chunks = t.get("chunks", {})
  if chunks and chunks["done"] < chunks["total"]:
    part = f"shard {t['shard'][0]}/{t['shard'][1]}: " if t.get("shard") else ""
    lines += [f"{part}{chunks['done']} of {chunks['total']} chunks of the run.", ""]
  reasons = ", ".join(f"{k}: {v}" for k, v in sorted(t["failure_reasons"].items())) or "none"
  lines += [
    f"Generated {t['generated']}, relaxed {t['relaxed']}, converged {t['converged']}, "
    f"failed {t['failed']} ({reasons}); {t['unique']} unique structures.",
    "",
    "Wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t["wall_time_s"].items()),
    "",
  ]
  if "screen_force_field" in t:
    s = t["settings"]
    lines += [
      f"Screened with {t['screen_force_field']} to {s['screen_fmax']} eV/Å, then polished the "
      f"{t.get('polished', 0)} lowest distinct candidates with {t['force_field']} to {s['fmax']} "
      f"eV/Å ({t.get('polished_converged', 0)} converged, {t.get('polish_failed', 0)} failed); "
      "unpolished rows are screening results.",
      "",
    ]
  lines += [
    work_line(t["relax_work"]),
    "",
    "| rank | formula | E (eV/atom) | ΔE (eV/atom) | V (Å³/atom) | space group | count | known phase "
    "| polished |",
    "|---:|---|---:|---:|---:|---|---:|---|---|",
  ]
  for r in result.rows:
    lines.append(
      f"| {r['rank']} | {r['formula_cell']} | {r['energy_per_atom']:.4f} | "
      f"{r['delta_energy_per_atom']:.4f} | {r['volume_per_atom']:.2f} | {r['space_group']} | "
      f"{r['count']} | {r['known_phase'] or ''} | {'yes' if r.get('polished') else ''} |"
    )
  with open(os.path.join(output_dir, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  plot_energy_volume(result, os.path.join(output_dir, "energy_volume.png"))


def plot_energy_volume(result, path: str) -> None:
  """Energy per atom against volume per atom: all relaxed structures, unique ones marked."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4.5))
  if result.candidates:
    v = [c.structure.volume / len(c.structure) for c in result.candidates]
    e = [c.energy_per_atom for c in result.candidates]
    ax.scatter(v, e, s=8, c="0.6", label="relaxed")
    reps = [result.candidates[g[0]] for g in result.groups]
    ax.scatter(
      [c.structure.volume / len(c.structure) for c in reps],
      [c.energy_per_atom for c in reps],
      s=30,
      facecolors="none",
      edgecolors="C0",
      label="unique",
    )
    for row, c in zip(result.rows, reps, strict=True):
      if row["known_phase"]:
        x, y = c.structure.volume / len(c.structure), c.energy_per_atom
        ax.scatter([x], [y], s=60, marker="*", c="C3")
        ax.annotate(row["known_phase"], (x, y), textcoords="offset points", xytext=(5, 5))
  ax.set_xlabel("volume per atom (Å³)")
  ax.set_ylabel("energy per atom (eV)")
  ax.set_title(f"{result.totals['composition']}: {result.totals['unique']} unique")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
