"""Batch compaction in the relaxer: the search's relaxations with and without it.

A bucket's batch runs until its slowest structure stops; without compaction every finished slot
goes on costing a force evaluation per step.  With ``compact=True`` (the default) the unfinished
structures move into the smallest power-of-two batch that holds them (once the queue is empty),
at the price of one compilation per new batch size.  This relaxes the same random cells (the
search's draw for each composition of ``--compositions``, ``--num`` each, seed ``--seed``) with
the shipped model and the search's settings, once per setting, each in a fresh process with
JAX's persistent compilation cache off, and records per setting:

* the wall time of the first run in the process (compiles included: a user's first search) and
  of a second, warm run of the same cells;
* ``slot_steps`` (batch slots times loop iterations: the work paid for), ``structure_steps``
  (force evaluations of real structures), compilations and compactions;
* that both settings give the same relaxations: steps per structure, converged flags, and the
  largest difference between final cells (Å) and between final Cartesian positions (Å).

Speed is reported as the ratio to ``compact=False`` in the same run.

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/relax_compaction.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import _common  # benchmarks/_common.py (this folder is on sys.path)
import numpy as np

SETTINGS = {"whole batch": False, "compacted": True}


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--compositions", default="Li15Si4", help="Comma list (the main job's).")
  p.add_argument("--num", type=int, default=100, help="Random cells per composition.")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--model", default="default", help="A packaged model name or a directory.")
  p.add_argument("--optimizer", default="fire", help="The search's default.")
  p.add_argument("--max_steps", type=int, default=400, help="The main job's (scripts/main.sh).")
  p.add_argument("--out", default="benchmarks/results/relax_compaction.json")
  p.add_argument("--child", choices=("off", "on"), help=argparse.SUPPRESS)
  p.add_argument("--child_out", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.num < 1 or args.max_steps < 1:
    p.error("--num and --max_steps must be positive")
  return args


def child(args) -> None:
  """One setting in this process: a first (compiling) and a second (warm) run; arrays to npz."""
  from crystal_search import relax, search

  cells = _common.search_cells(args.compositions, args.num, seed=args.seed)
  force_field = relax.make_force_field("model", model=args.model)
  defaults = search.get_search_config()
  settings = dict(
    optimizer=args.optimizer,
    fmax=defaults.fmax,
    smax=defaults.smax,
    max_steps=args.max_steps,
    compact=args.child == "on",
  )
  walls, stats = [], []
  for _ in range(2):
    st: dict = {}
    t0 = time.perf_counter()
    results = relax.relax_structures(cells, force_field, stats=st, **settings)
    walls.append(time.perf_counter() - t0)
    st.pop("force_field")
    stats.append(st)
  np.savez(
    args.child_out,
    walls=np.asarray(walls),
    stats=json.dumps(stats[0], default=str),
    steps=np.asarray([r.steps for r in results]),
    converged=np.asarray([r.converged for r in results]),
    failed=np.asarray([r.failed for r in results]),
    lattice=np.stack([r.final.lattice.matrix for r in results]),
    cart=np.concatenate([r.final.cart_coords for r in results]),
    atoms=np.asarray([len(c) for c in cells]),
  )


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  if args.child:
    child(args)
    return
  info = _common.machine(
    omp_num_threads=os.environ.get("OMP_NUM_THREADS"), affinity=sorted(os.sched_getaffinity(0))
  )
  env = dict(os.environ, CRYSTAL_SEARCH_JAX_CACHE="off")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  runs = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, on in SETTINGS.items():
      path = os.path.join(tmp, f"{int(on)}.npz")
      flag = "on" if on else "off"
      cmd = [sys.executable, __file__, *argv, f"--child={flag}", f"--child_out={path}"]
      subprocess.run(cmd, env=env, check=True)
      with np.load(path) as z:
        runs[name] = {k: z[k] for k in z.files}
  base, comp = runs["whole batch"], runs["compacted"]
  rows = {}
  for name, r in runs.items():
    st = json.loads(str(r["stats"]))
    rows[name] = {
      "wall_first_run_s": float(r["walls"][0]),
      "wall_warm_s": float(r["walls"][1]),
      "first_run_ratio": float(r["walls"][0] / base["walls"][0]),
      "warm_ratio": float(r["walls"][1] / base["walls"][1]),
      "slot_steps": int(st["slot_steps"]),
      "structure_steps": int(st["structure_steps"]),
      "useful_fraction": st["structure_steps"] / st["slot_steps"],
      "compiles": int(st["compiles"]),
      "compactions": int(st["compactions"]),
      "batch_sizes": st["batch_sizes"],
      "converged": int(r["converged"].sum()),
      "failed": int(r["failed"].sum()),
    }
  same = {
    "steps_equal": int(np.sum(base["steps"] == comp["steps"])),
    "converged_equal": int(np.sum(base["converged"] == comp["converged"])),
    "max_cell_difference_A": float(np.max(np.abs(base["lattice"] - comp["lattice"]))),
    "max_position_difference_A": float(np.max(np.abs(base["cart"] - comp["cart"]))),
  }
  report = {
    "command": _common.command_line(),
    "machine": info,
    "cells": len(base["steps"]),
    "atoms_mean": float(np.mean(base["atoms"])),
    "settings": {k: v for k, v in vars(args).items() if not k.startswith("child")},
    "rows": rows,
    "same_relaxations": same,
  }
  _common.write_report(args.out, report, markdown(report))


def markdown(report: dict) -> list[str]:
  s, same = report["settings"], report["same_relaxations"]
  lines = [
    "# Batch compaction in the relaxer",
    "",
    f"`{report['command']}`",
    "",
    f"Machine: {_common.describe(report['machine'])}. {report['cells']} random cells of the "
    f"search's draw ({s['compositions']}, {s['num']} each, seed {s['seed']}; mean "
    f"{report['atoms_mean']:.1f} atoms), model `{s['model']}`, {s['optimizer']}, the search's "
    f"thresholds, at most {s['max_steps']} steps. Each setting ran in a fresh process with the "
    "persistent compilation cache off: the first run compiles, the second is warm. Ratios are "
    "to the whole-batch setting in the same run. Raw numbers: "
    f"`{os.path.basename(s['out'])}`.",
    "",
    *_common.table_head(
      "setting",
      [
        "first run (s)",
        "ratio",
        "warm (s)",
        "ratio",
        "slot-steps",
        "structure-steps",
        "useful",
        "compiles",
        "compactions",
      ],
      align="---:",
    ),
  ]
  for name, r in report["rows"].items():
    lines.append(
      f"| {name} | {r['wall_first_run_s']:.1f} | {r['first_run_ratio']:.2f} | "
      f"{r['wall_warm_s']:.1f} | {r['warm_ratio']:.2f} | {r['slot_steps']} | "
      f"{r['structure_steps']} | {100 * r['useful_fraction']:.0f} % | {r['compiles']} | "
      f"{r['compactions']} |"
    )
  lines += [
    "",
    f"Same relaxations: equal step counts for {same['steps_equal']} of {report['cells']} cells, "
    f"equal converged flags for {same['converged_equal']}; largest difference of a final cell "
    f"entry {same['max_cell_difference_A']:.2g} Å and of a final position "
    f"{same['max_position_difference_A']:.2g} Å.",
  ]
  return lines


if __name__ == "__main__":
  _common.run(main)
