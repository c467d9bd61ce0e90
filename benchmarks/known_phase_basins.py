"""Do the model and the teacher relax perturbed known phases back to them?

Random search finds a phase only if some random cell falls into its basin; this measures the
basin directly. For each bundled known phase (primitive cell, at most ``--max_atoms`` atoms;
Li15Si4 is the held-out stoichiometry the model never trained on), ``--copies`` perturbed copies
(Gaussian displacements of ``--rattle`` Å per Cartesian component and a random symmetric strain
of ``--strain`` std, seeded) are relaxed through our relaxer with the teacher's settings (SMASS=2,
POTIM=0.4, positions and cell, fmax 0.05 eV/Å, ``--max_steps``) by the shipped model (or
``--model``) and by CHGNet (the teacher), and each final structure is compared with the phase
(:func:`crystal_search.metrics.default_matcher`).  The closest interatomic contact (Å) of each
start and final is recorded (a relaxation whose atoms come closer than half the sum of their
covalent radii, 1.20 Å for Li–Si, stops as "overlap" at its last good step: the relaxer's
``overlap_fraction``), and so is the largest atomic force (eV/Å) each force field predicts on
each start (its first relaxation step, kept as a one-frame trajectory): how far a model's
forces run off where the starts' contacts are shorter than any in its training data.

    python benchmarks/known_phase_basins.py --out benchmarks/results/known_phase_basins.json
"""

from __future__ import annotations

import argparse
import os
import time

import _common  # benchmarks/_common.py (this folder is on sys.path)
import numpy as np


def closest_contact(structure) -> float:
  """Å: the smallest distance between two atoms (periodic images included)."""
  d = structure.distance_matrix + np.diag(np.full(len(structure), np.inf))
  return float(d.min())


def perturbed(structure, *, copies: int, rattle: float, strain: float, seed: int):
  """``copies`` copies of ``structure``: Gaussian displacements (Å) and symmetric strain."""
  from pymatgen.core import Lattice, Structure

  rng = np.random.default_rng(seed)
  out = []
  for _ in range(copies):
    eps = rng.normal(0.0, strain, (3, 3))
    eps = 0.5 * (eps + eps.T)
    lattice = structure.lattice.matrix @ (np.eye(3) + eps)
    cart = structure.cart_coords @ (np.eye(3) + eps) + rng.normal(0.0, rattle, (len(structure), 3))
    out.append(
      Structure(Lattice(lattice), structure.species, cart, coords_are_cartesian=True).copy()
    )
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--copies", type=int, default=4)
  parser.add_argument("--rattle", type=float, default=0.3, help="Å, std per component")
  parser.add_argument("--strain", type=float, default=0.05, help="std of the strain components")
  parser.add_argument("--max_atoms", type=int, default=40)
  parser.add_argument("--max_steps", type=int, default=300)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--teacher", action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument("--model", default=None, help="model directory (default: the shipped one)")
  parser.add_argument("--out", default="benchmarks/results/known_phase_basins.json")
  args = parser.parse_args()

  from crystal_search import metrics, relax
  from crystal_search.force_fields.registry import PRETRAINED_DIR

  phases = {}
  for name, s in sorted(metrics.load_reference_phases().items()):
    prim = s.get_primitive_structure()
    if len(prim.composition.elements) == 2 and len(prim) <= args.max_atoms:
      phases[name] = prim
  settings = relax.teacher_settings(max_steps=args.max_steps)
  # Keep the first step (and the last) only: the forces on each start.
  settings["trajectory_every"] = args.max_steps
  kinds = ["model"] + (["chgnet"] if args.teacher else [])
  report = {
    "command": _common.command_line(),
    "machine": _common.machine(),
    "model": args.model or os.path.join(PRETRAINED_DIR, "force_stress"),
    "settings": settings,
    "phases": {},
  }
  matcher = metrics.default_matcher()
  for name, phase in phases.items():
    starts = perturbed(
      phase, copies=args.copies, rattle=args.rattle, strain=args.strain, seed=args.seed
    )
    entry = {
      "atoms": len(phase),
      "formula": phase.composition.reduced_formula,
      # How many perturbed starts already match (the matcher's tolerance, the baseline).
      "starts_matching": int(
        sum(metrics.structures_match(s, phase, matcher=matcher) for s in starts)
      ),
    }
    for kind in kinds:
      force_field = relax.make_force_field(kind, model=args.model if kind == "model" else None)
      t0 = time.perf_counter()
      results = relax.relax_structures(starts, force_field, **settings)
      seconds = time.perf_counter() - t0
      back = [
        (not r.failed) and metrics.structures_match(r.final, phase, matcher=matcher)
        for r in results
      ]
      entry[kind] = {
        "returned": int(sum(back)),
        "of": len(back),
        "converged": int(sum(r.converged for r in results)),
        "failed": int(sum(r.failed for r in results)),
        "failure_reasons": [r.failure_reason for r in results if r.failed],
        # Per copy: closest contact (Å) at the start and at the final (last good) structure.
        "closest_contact": [
          [round(closest_contact(s), 3), round(closest_contact(r.final), 3)]
          for s, r in zip(starts, results, strict=True)
        ],
        # Per copy: eV/Å, the largest atomic force the force field predicts on the start.
        "start_max_force": [
          round(float(np.linalg.norm(r.trajectory["forces"][0], axis=-1).max()), 2) for r in results
        ],
        "seconds": round(seconds, 1),
      }
      print(name, kind, entry[kind], flush=True)
    report["phases"][name] = entry
  lines = [
    "# Known phases: perturbed, relaxed, compared",
    "",
    f"`{report['command']}`",
    "",
    f"Machine: {_common.describe(report['machine'])}. "
    f"Each phase's primitive cell, {args.copies} copies with {args.rattle} Å Gaussian "
    f"displacements and {args.strain:.0%} random strain (seed {args.seed}), relaxed with the "
    "teacher's settings; 'returned' = final structure matches the phase (StructureMatcher "
    "defaults of `crystal_search.metrics`).",
    "",
    "| phase | atoms | starts already matching | "
    + " | ".join(f"{k}: returned / converged / failed" for k in kinds)
    + " |",
    "|---|---:|---:|" + "---:|" * len(kinds),
  ]
  for name, e in report["phases"].items():
    cells = " | ".join(
      f"{e[k]['returned']}/{e[k]['of']} · {e[k]['converged']} · {e[k]['failed']}" for k in kinds
    )
    lines.append(f"| {name} | {e['atoms']} | {e['starts_matching']}/{args.copies} | {cells} |")
  lines += [
    "",
    "Closest interatomic contact (Å), start → final, per copy:",
    "",
    *_common.table_head("phase", kinds),
  ]
  for name, e in report["phases"].items():
    cells = " | ".join(
      ", ".join(f"{a:.2f} → {b:.2f}" for a, b in e[k]["closest_contact"]) for k in kinds
    )
    lines.append(f"| {name} | {cells} |")
  lines += [
    "",
    "Largest atomic force (eV/Å) predicted on each start, per copy:",
    "",
    *_common.table_head("phase", kinds),
  ]
  for name, e in report["phases"].items():
    cells = " | ".join(", ".join(f"{f:.3g}" for f in e[k]["start_max_force"]) for k in kinds)
    lines.append(f"| {name} | {cells} |")
  _common.write_report(args.out, report, lines)


if __name__ == "__main__":
  _common.run(main)
