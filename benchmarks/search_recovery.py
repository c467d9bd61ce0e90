"""Known-phase recovery and speed of the whole search, model against teacher, in one run.

For each composition (default LiSi and Li15Si4), seed and ``num_structures``, run
:func:`crystal_search.search.run_search` with the shipped model and record whether the known phase
(bundled reference CIFs) is found and at which rank. The teacher (CHGNet through our relaxer) runs
the same search on a subset for comparison, and CHGNet + ASE FIRE + FrechetCellFilter relaxes a
subset one structure at a time (the way its users run it) for the speed ratio.

    python benchmarks/search_recovery.py --out benchmarks/results/search_recovery.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import _common  # benchmarks/_common.py (this folder is on sys.path)
import numpy as np


def _model_info() -> dict:
  info = {}
  for name in ("force_stress", "energy"):
    meta = _common.shipped_metadata(name)
    if meta is not None:
      info[name] = {
        "data_version": meta.get("data_version"),
        "test_metrics": meta.get("test_metrics", {}).get("test"),
        "network": {
          k: meta.get("training_config", {}).get("model", {}).get(k)
          for k in ("num_blocks", "width", "force_head", "stress_head", "edge_inputs")
        },
      }
  return info


def _search(kind: str, composition: str, n: int, seed: int, max_steps: int, optimizer: str) -> dict:
  from crystal_search import search

  config = search.get_search_config()
  config.composition = composition
  config.num_structures = n
  config.seed = seed
  config.max_steps = max_steps
  config.optimizer = optimizer
  force_field, energy_fn = search.load_force_field(kind)
  with tempfile.TemporaryDirectory() as out:
    t0 = time.perf_counter()
    result = search.run_search(
      config, force_field=force_field, energy_fn=energy_fn, output_dir=out, progress=False
    )
    wall = time.perf_counter() - t0
  ranks = [r["rank"] for r in result.rows if r["known_phase"]]
  return {
    "force_field": kind,
    "composition": composition,
    "num_structures": n,
    "seed": seed,
    "found": bool(ranks),
    "best_rank": min(ranks) if ranks else None,
    "known_phases": sorted({r["known_phase"] for r in result.rows if r["known_phase"]}),
    "unique": result.totals["unique"],
    "converged": result.totals["converged"],
    "failed": result.totals["failed"],
    "optimizer": optimizer,
    "wall_s": wall,
    "wall_s_per_structure": wall / max(result.totals["relaxed"], 1),
    # Per stage (generate, relax, energy, dedupe, report), as the search's own report has them.
    "stage_wall_s": result.totals["wall_time_s"],
  }


def _ase_fire_seconds_per_structure(composition: str, n: int, seed: int, fmax: float) -> dict:
  """CHGNet + ASE FIRE + FrechetCellFilter, one structure at a time."""
  from ase.filters import FrechetCellFilter
  from ase.optimize import FIRE
  from chgnet.model.dynamics import CHGNetCalculator
  from pymatgen.io.ase import AseAtomsAdaptor

  from crystal_search import compositions, random_structures

  structures = random_structures.generate(
    compositions.parse_composition(composition), n, seed=seed, max_atoms=38
  )
  calc = CHGNetCalculator(use_device="cpu")
  steps, t0 = [], time.perf_counter()
  for s in structures:
    atoms = AseAtomsAdaptor.get_atoms(s)
    atoms.calc = calc
    opt = FIRE(FrechetCellFilter(atoms), logfile=None)
    opt.run(fmax=fmax, steps=1000)
    steps.append(opt.nsteps)
  wall = time.perf_counter() - t0
  return {"structures": n, "wall_s_per_structure": wall / n, "mean_steps": float(np.mean(steps))}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--compositions", default="LiSi,Li15Si4")
  p.add_argument("--num_structures", default="16,64,128")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--teacher_num_structures", type=int, default=16)
  p.add_argument("--fire_structures", type=int, default=4)
  p.add_argument("--max_steps", type=int, default=600)
  from crystal_search import relax, search

  p.add_argument(
    "--optimizer",
    default=search.get_search_config().optimizer,
    choices=relax.OPTIMIZERS,
    help="The search's relaxer rule (default: the search's; damped is the paper's).",
  )
  p.add_argument("--out", default="benchmarks/results/search_recovery.json")
  args = p.parse_args()
  comps = args.compositions.split(",")
  sizes = [int(x) for x in args.num_structures.split(",")]
  seeds = [int(x) for x in args.seeds.split(",")]
  runs = []
  for comp in comps:
    for n in sizes:
      for seed in seeds:
        runs.append(_search("model", comp, n, seed, args.max_steps, args.optimizer))
        print(json.dumps(runs[-1]))
  teacher = []
  for comp in comps:
    teacher.append(
      _search("chgnet", comp, args.teacher_num_structures, 0, args.max_steps, args.optimizer)
    )
    print(json.dumps(teacher[-1]))
  fire = _ase_fire_seconds_per_structure(comps[0], args.fire_structures, 0, fmax=0.05)
  model_per = float(np.mean([r["wall_s_per_structure"] for r in runs]))
  teacher_per = float(np.mean([r["wall_s_per_structure"] for r in teacher]))
  summary = {
    "command": _common.command_line(),
    "machine": _common.machine(),
    "model_runs": runs,
    "teacher_runs": teacher,
    "chgnet_ase_fire": fire,
    "recovery": {
      f"{c}@{n}": float(
        np.mean([r["found"] for r in runs if r["composition"] == c and r["num_structures"] == n])
      )
      for c in comps
      for n in sizes
    },
    "best_ranks": {
      f"{c}@{n}": [
        r["best_rank"] for r in runs if r["composition"] == c and r["num_structures"] == n
      ]
      for c in comps
      for n in sizes
    },
    "teacher_recovery": {
      f"{r['composition']}@{r['num_structures']}": {
        "found": r["found"],
        "best_rank": r["best_rank"],
      }
      for r in teacher
    },
    "model_pipeline_s_per_structure": model_per,
    "teacher_pipeline_s_per_structure": teacher_per,
    "speed_ratio_model_vs_chgnet_fire_per_structure": fire["wall_s_per_structure"] / model_per,
    "speed_ratio_model_vs_teacher_pipeline_per_structure": teacher_per / model_per,
    "model": _model_info(),
  }
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(summary, f, indent=2)
  print(json.dumps(summary["recovery"]), summary["speed_ratio_model_vs_chgnet_fire_per_structure"])


if __name__ == "__main__":
  _common.run(main)
