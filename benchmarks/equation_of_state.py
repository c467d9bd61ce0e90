"""Pressure against volume of the known phases: does the model's stress follow the teacher's?

A relaxation moves the cell by the stress; a stress head that misses how pressure changes with
volume relaxes cells to the wrong density.  For each bundled known phase (primitive cell, at most
``--max_atoms`` atoms; Li15Si4 is the held-out stoichiometry), the cell is scaled isotropically to
``V / V_ref`` in ``--scales`` with the atoms fixed in fractional coordinates and each force field's
pressure ``-tr(stress) / 3`` (kBar, compressive positive) is recorded; a quadratic fit of pressure
against ``ln V`` gives the bulk modulus ``B = -dP/dlnV`` at the reference volume (GPa, unrelaxed
positions) and the scale where the pressure vanishes
(:func:`crystal_search.evaluation.equation_of_state`).  CHGNet is the teacher the models learned
from; ``--models`` names force/stress model directories to compare (``shipped`` is the model in
the package).

    python benchmarks/equation_of_state.py --out=benchmarks/results/equation_of_state.json
"""

from __future__ import annotations

import argparse

import _common  # benchmarks/_common.py (this folder is on sys.path)
import numpy as np


def _kept_columns(previous_report: str, models: dict, scales: list, phases: list) -> dict:
  """``{'model:NAME': (path, {phase: column})}``: an earlier report's models whose directories
  are gone (``runs/`` is not committed), measured at the same scales on the same phases, so that
  a rerun on new models keeps what it cannot recompute."""
  import os

  previous = _common.previous_report(previous_report)
  if previous is None:
    return {}
  if previous.get("scales") != scales or sorted(previous.get("phases", {})) != sorted(phases):
    return {}
  kept = {}
  for name, path in previous.get("models", {}).items():
    if name in models or not path or os.path.isdir(path):
      continue
    kept[f"model:{name}"] = (path, {p: e[f"model:{name}"] for p, e in previous["phases"].items()})
  return kept


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="shipped", help="NAME[=MODEL_DIR],... (shipped: package)")
  parser.add_argument("--teacher", action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument("--meam", action=argparse.BooleanOptionalAction, default=False)
  parser.add_argument("--scales", default="0.92,0.96,1.0,1.04,1.08")
  parser.add_argument("--max_atoms", type=int, default=40)
  parser.add_argument("--out", default="benchmarks/results/equation_of_state.json")
  parser.add_argument(
    "--keep_missing",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="keep --out's columns of models whose directories no longer exist (same scales)",
  )
  args = parser.parse_args()

  from crystal_search import evaluation, metrics, relax

  scales = [float(s) for s in args.scales.split(",")]
  models = _common.parse_models(args.models)
  force_fields = {
    f"model:{name}": relax.make_force_field("model", model=path) for name, path in models.items()
  }
  if args.teacher:
    force_fields["chgnet"] = relax.make_force_field("chgnet")
  if args.meam:
    force_fields["meam"] = relax.make_force_field("meam")
  phases = {}
  for name, s in sorted(metrics.load_reference_phases().items()):
    prim = s.get_primitive_structure()
    if len(prim) <= args.max_atoms:
      phases[name] = prim
  report = {
    "command": _common.command_line(),
    "machine": _common.machine(),
    "models": models,
    "scales": scales,
    "phases": {},
  }
  kept = _kept_columns(args.out, models, scales, list(phases)) if args.keep_missing else {}
  for kind, (path, _) in kept.items():
    report["models"][kind.removeprefix("model:")] = path
  report["kept_from_previous_report"] = [kind.removeprefix("model:") for kind in kept]
  for name, structure in phases.items():
    entry = {"atoms": len(structure), "volume_per_atom": structure.volume / len(structure)}
    for kind, ff in force_fields.items():
      entry[kind] = evaluation.equation_of_state(ff, structure, scales=scales)
      print(name, kind, np.round(entry[kind]["pressure_kbar"], 1).tolist(), flush=True)
    for kind, (_, columns) in kept.items():
      entry[kind] = columns[name]
    report["phases"][name] = entry
  kinds = [k for k in force_fields if k != "chgnet"] + list(kept)
  kinds += [k for k in force_fields if k == "chgnet"]
  if "chgnet" in kinds:
    report["vs_teacher"] = {}
    for kind in kinds:
      if kind == "chgnet":
        continue
      by_phase = {
        name: float(
          np.abs(np.subtract(e[kind]["pressure_kbar"], e["chgnet"]["pressure_kbar"])).mean()
        )
        for name, e in report["phases"].items()
      }
      dp = list(by_phase.values())
      ratio = [
        e[kind]["bulk_modulus_gpa"] / e["chgnet"]["bulk_modulus_gpa"]
        for e in report["phases"].values()
      ]
      report["vs_teacher"][kind] = {
        "pressure_mae_kbar": float(np.mean(dp)),
        "bulk_modulus_ratio_median": float(np.median(ratio)),
        "pressure_mae_kbar_by_phase": by_phase,
      }

  def zero(e):
    return "–" if e["zero_pressure_scale"] is None else f"{e['zero_pressure_scale']:.3f}"

  lines = [
    "# Pressure against volume of the known phases: models and teacher",
    "",
    f"`{report['command']}`",
    "",
    f"Machine: {_common.describe(report['machine'])}. Each phase's primitive cell scaled "
    f"isotropically to V/V_ref = {', '.join(f'{s:g}' for s in scales)} (atoms fixed in "
    "fractional coordinates, no relaxation); pressure = -tr(stress)/3 in kBar, compressive "
    "positive; B = -dP/dlnV at V_ref (GPa) and the scale where P = 0 from a quadratic fit "
    "('–': no zero inside the scan). Models: "
    + ", ".join(
      f"`{k}` = {v or 'the shipped model'}"
      + (" (kept from the previous report)" if k in report["kept_from_previous_report"] else "")
      for k, v in report["models"].items()
    )
    + ".",
    "",
    "| phase | atoms | "
    + " | ".join(f"{k}: P (kBar) at the scales" for k in kinds)
    + " | "
    + " | ".join(f"{k}: B (GPa) · P=0 at" for k in kinds)
    + " |",
    "|---|---:|" + "---|" * (2 * len(kinds)),
  ]
  for name, e in report["phases"].items():
    pressures = " | ".join(" ".join(f"{p:.1f}" for p in e[k]["pressure_kbar"]) for k in kinds)
    moduli = " | ".join(f"{e[k]['bulk_modulus_gpa']:.1f} · {zero(e[k])}" for k in kinds)
    lines.append(f"| {name} | {e['atoms']} | {pressures} | {moduli} |")
  for kind, v in report.get("vs_teacher", {}).items():
    lines.append("")
    lines.append(
      f"- {kind} vs CHGNet: pressure MAE {v['pressure_mae_kbar']:.1f} kBar over the scans; "
      f"median bulk-modulus ratio {v['bulk_modulus_ratio_median']:.2f}; pressure MAE by phase: "
      + ", ".join(f"{name} {x:.1f}" for name, x in v["pressure_mae_kbar_by_phase"].items())
      + " kBar."
    )
  _common.write_report(args.out, report, lines)


if __name__ == "__main__":
  _common.run(main)
