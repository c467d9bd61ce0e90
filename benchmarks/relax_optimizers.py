"""Damped dynamics (the paper's steepest descent) against FIRE in our batched relaxer.

The search relaxes random cells with :func:`crystal_search.relax.relax_structures`.  The paper's
teacher used VASP's damped dynamics at critical damping (steepest descent); ASE's FIRE (the
optimiser of CHGNet's ``StructOptimizer``) is available as ``optimizer="fire"``.  This relaxes
the same random cells (the search's default draw, ``--num`` per composition) with each model of
``--models`` and each optimizer, to the search's thresholds, and records per optimizer:

* converged / failed / at the step cap, and steps to converge (median, 90th percentile);
* force evaluations of real structures (``structure_steps``), the machine-independent cost;
* wall time of a warm run (every shape compiled by a first run of the same settings), and its
  ratio to damped dynamics in the same run;
* the energy per atom of each final, by the shipped energy model and by the teacher (CHGNet
  single points): the mean difference to damped dynamics' final of the same start, and how often
  each optimizer ends lower; and how many finals are the same structure
  (StructureMatcher, ltol 0.2, stol 0.3, angle_tol 5°).

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/relax_optimizers.py --num=8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import _common  # benchmarks/_common.py (this folder is on sys.path)
import numpy as np

OPTIMIZERS = ("damped", "fire")


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--compositions", default="LiSi,Li2Si,Li7Si2,Li13Si4,Li15Si4")
  p.add_argument("--num", type=int, default=8, help="Random cells per composition.")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--models",
    default="default,fast",
    help="Packaged names, NAME=DIR, or chgnet (the teacher through our relaxer).",
  )
  p.add_argument("--fmax", type=float, default=0.05, help="eV/Å (the search's default).")
  p.add_argument("--smax", type=float, default=1.0, help="kBar (the search's default).")
  p.add_argument("--max_steps", type=int, default=600, help="The search's default.")
  p.add_argument("--teacher", action=argparse.BooleanOptionalAction, default=True)
  p.add_argument("--output", default="benchmarks/results/relax_optimizers")
  args = p.parse_args(argv)
  if args.num < 1 or args.max_steps < 1 or args.fmax <= 0 or args.smax <= 0:
    p.error("--num, --max_steps, --fmax and --smax must be positive")
  return args


def run_optimizer(cells, force_field, optimizer: str, args) -> dict:
  """Relax ``cells`` twice (the first compiles); the second is timed.  A host force field
  (CHGNet: nothing of it compiles) runs once, and that run is timed; it keeps its energy along
  the way, so the row also counts each relaxation's final polish: the steps taken after its
  energy first came within 1 meV/atom of its final energy (``tail_steps``)."""
  from crystal_search import relax

  settings = dict(optimizer=optimizer, fmax=args.fmax, smax=args.smax, max_steps=args.max_steps)
  jittable = bool(getattr(force_field, "jittable", False))
  cold = None
  if jittable:
    t0 = time.perf_counter()
    relax.relax_structures(cells, force_field, **settings)
    cold = time.perf_counter() - t0
  else:
    settings["trajectory_every"] = 1
  stats: dict = {}
  t0 = time.perf_counter()
  results = relax.relax_structures(cells, force_field, stats=stats, **settings)
  warm = time.perf_counter() - t0
  steps = np.array([r.steps for r in results])
  conv = np.array([r.converged for r in results])
  failed = np.array([r.failed for r in results])
  tail = None
  if not jittable:
    tail = []
    for r in results:
      e = np.asarray(r.trajectory["energy"]) / len(r.final)  # eV/atom, every step
      tail.append(int(len(e) - 1 - np.argmax(e - e[-1] < 1e-3)))
  return {
    "results": results,
    "tail_steps": tail,
    "row": {
      "tail_steps_mean": None if tail is None else float(np.mean(tail)),
      "converged": int(conv.sum()),
      "failed": int(failed.sum()),
      "at_step_cap": int(np.sum(~conv & ~failed)),
      "steps_median_converged": float(np.median(steps[conv])) if conv.any() else None,
      "steps_p90_converged": float(np.percentile(steps[conv], 90)) if conv.any() else None,
      "structure_steps": int(stats["structure_steps"]),
      "wall_warm_s": warm,
      "wall_first_run_s": cold,
    },
  }


def compare_finals(base, other, energies: dict) -> dict:
  """``other`` against ``base`` (damped dynamics) start by start."""
  from pymatgen.analysis.structure_matcher import StructureMatcher

  matcher = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5)
  ok = [
    k for k, (a, b) in enumerate(zip(base, other, strict=True)) if not a.failed and not b.failed
  ]
  out = {
    "both_ok": len(ok),
    "same_structure": int(sum(matcher.fit(base[k].final, other[k].final) for k in ok)),
  }
  for judge, (e_base, e_other) in energies.items():
    d = 1000 * (np.asarray(e_other)[ok] - np.asarray(e_base)[ok])
    out[judge] = {
      "mean_mev_per_atom": float(np.mean(d)),
      "median_mev_per_atom": float(np.median(d)),
      "lower_by_1mev": int(np.sum(d < -1)),
      "higher_by_1mev": int(np.sum(d > 1)),
    }
  return out


def main(argv=None) -> None:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  from crystal_search import relax, search
  from crystal_search.force_fields import model as model_ff

  info = _common.machine(
    omp_num_threads=os.environ.get("OMP_NUM_THREADS"), affinity=sorted(os.sched_getaffinity(0))
  )
  cells = _common.search_cells(args.compositions, args.num, seed=args.seed)
  energy_ff = model_ff.from_directory(os.path.join(search.PRETRAINED_DIR, "energy"))
  teacher = relax.make_force_field("chgnet") if args.teacher else None
  report = {
    "command": _common.command_line(),
    "machine": info,
    "cells": len(cells),
    "atoms_mean": float(np.mean([len(c) for c in cells])),
    "settings": vars(args),
    "models": {},
  }
  for name, path in _common.parse_models(args.models).items():
    model = path or name
    if model == "chgnet":  # the teacher itself through our relaxer
      force_field = teacher if teacher is not None else relax.make_force_field("chgnet")
    else:
      force_field = relax.make_force_field("model", model=model)
    packaged = search.PRETRAINED_MODELS.get(model)
    runs = {opt: run_optimizer(cells, force_field, opt, args) for opt in OPTIMIZERS}
    energies = {}
    for opt, run in runs.items():
      finals = [r.final for r in run["results"]]
      e = {"energy_model": np.asarray(model_ff.energies_per_atom(energy_ff, finals))}
      if teacher is not None:
        e["teacher"] = np.array(_common.single_point_energies(teacher, finals))
      energies[opt] = e
    rows = {opt: run["row"] for opt, run in runs.items()}
    base = rows["damped"]
    for row in rows.values():
      row["wall_ratio_to_damped"] = row["wall_warm_s"] / base["wall_warm_s"]
      row["structure_steps_ratio_to_damped"] = row["structure_steps"] / base["structure_steps"]
    judges = energies["damped"].keys()
    report["models"][name] = {
      "path": path,
      "metadata": _common.shipped_metadata(packaged) if packaged else None,
      "optimizers": rows,
      "fire_vs_damped": compare_finals(
        runs["damped"]["results"],
        runs["fire"]["results"],
        {j: (energies["damped"][j], energies["fire"][j]) for j in judges},
      ),
      # Start by start: steps, converged, and each judge's eV/atom of the final.
      "per_start": {
        opt: {
          "steps": [r.steps for r in run["results"]],
          "converged": [r.converged for r in run["results"]],
          "tail_steps": run["tail_steps"],
          **{j: [float(x) for x in energies[opt][j]] for j in judges},
        }
        for opt, run in runs.items()
      },
    }
    print(json.dumps({name: report["models"][name]["optimizers"]}, indent=1), flush=True)
  os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
  with open(args.output + ".json", "w") as f:
    json.dump(report, f, indent=2)
  with open(args.output + ".md", "w") as f:
    f.write(markdown(report))


def markdown(report: dict) -> str:
  s = report["settings"]
  host = "chgnet" in report["models"]
  lines = [
    "# Damped dynamics (the paper's) against FIRE in our batched relaxer",
    "",
    f"`{report['command']}`",
    "",
    f"Machine: {_common.describe(report['machine'])}. {report['cells']} random cells of the "
    f"search's default draw ({s['compositions']}, {s['num']} each, seed {s['seed']}; mean "
    f"{report['atoms_mean']:.1f} atoms), relaxed to fmax {s['fmax']} eV/Å and smax "
    f"{s['smax']} kBar within {s['max_steps']} steps (the search's thresholds). Wall times are "
    "of a second, warm run of the same settings"
    + (", for `chgnet` (the teacher through our relaxer) of its only run" if host else "")
    + f". Raw numbers: `{os.path.basename(s['output'])}.json`.",
    "",
  ]
  for name, m in report["models"].items():
    lines += [
      f"## Model `{name}`",
      "",
      "| optimizer | converged | failed | at step cap | steps (median / p90) | "
      "structure-steps | warm wall (s) | ratio to damped |",
      "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for opt, r in m["optimizers"].items():
      med, p90 = r["steps_median_converged"], r["steps_p90_converged"]
      steps = "–" if med is None else f"{med:.0f} / {p90:.0f}"
      lines.append(
        f"| {opt} | {r['converged']} | {r['failed']} | {r['at_step_cap']} | "
        f"{steps} | "
        f"{r['structure_steps']} | {r['wall_warm_s']:.1f} | "
        f"{r['wall_ratio_to_damped']:.2f} (steps {r['structure_steps_ratio_to_damped']:.2f}) |"
      )
    tails = {o: r.get("tail_steps_mean") for o, r in m["optimizers"].items()}
    if all(t is not None for t in tails.values()):
      lines += [
        "",
        "Final polish, mean steps per start after the energy first came within 1 meV/atom of "
        "its final value: " + ", ".join(f"{o} {t:.1f}" for o, t in tails.items()) + ".",
      ]
    c = m["fire_vs_damped"]
    lines += [
      "",
      f"FIRE against damped dynamics from the same {c['both_ok']} starts (both not failed): "
      f"the same final structure {c['same_structure']} times.",
      "",
      "| energy of the final by | FIRE − damped, mean (median) meV/atom | FIRE lower by > 1 "
      "meV/atom | FIRE higher by > 1 meV/atom |",
      "|---|---:|---:|---:|",
    ]
    for judge in ("energy_model", "teacher"):
      if judge in c:
        j = c[judge]
        lines.append(
          f"| {judge.replace('_', ' ')} | {j['mean_mev_per_atom']:.1f} "
          f"({j['median_mev_per_atom']:.1f}) | {j['lower_by_1mev']} | {j['higher_by_1mev']} |"
        )
    lines.append("")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
