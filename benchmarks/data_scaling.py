"""Test error against the number of teacher relaxations, at a matched number of optimiser steps.

A learning curve that trains each subset for the same number of *epochs* also gives the larger
sets more optimiser steps, and cannot tell "more data" from "longer training".  Here each
training-set fraction keeps a seeded subset of the training *trajectories* (the split unit of
the paper's protocol) and is trained for ``epochs / fraction`` epochs (learning-rate halving
and patience scaled alike), so every point gets the optimiser steps of the full-data run; the
validation, test and held-out frames are the full dataset's.

    python benchmarks/data_scaling.py --fractions=0.5,1 \
        --reference=experiments/results/evals/pretrained_no_strain

``--reference`` takes the full-data point from an existing run (its ``run.json`` and
``eval/eval.json``: the same config trained on every trajectory) instead of training it again.
Each point trains in ``WORK_DIR/f<fraction>/`` (resumable: rerun the same command) and is
evaluated on the force and stress MAE only (no relaxations).  The report fits
``MAE ∝ frames^-slope`` through the points and says how many training frames the fit puts at
the issue's goals (0.03 eV/Å, 1.0 kBar) — an extrapolation, stated as one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import _common  # benchmarks/_common.py (this folder is on sys.path)
import numpy as np

GOALS = {"force_mae": 0.03, "stress_mae": 1.0}  # eV/Å, kBar (issue 5)


def trajectory_subset(dataset: str, output: str, *, fraction: float, seed: int) -> dict:
  """Write ``output/`` = ``dataset/`` with a seeded ``fraction`` of its training trajectories
  (every frame of each kept trajectory) and its other splits linked; returns the counts."""
  from crystal_search.datasets import frames as frames_lib
  from crystal_search.datasets import strain

  train = frames_lib.load(os.path.join(dataset, "train.npz"))
  trajectories = np.unique(train.trajectory)
  keep_n = max(1, round(fraction * len(trajectories)))
  kept = np.random.default_rng(seed).permutation(trajectories)[:keep_n]
  subset = train.select(np.flatnonzero(np.isin(train.trajectory, kept)))
  os.makedirs(output, exist_ok=True)
  subset.save(os.path.join(output, "train.npz"))
  strain.link_splits(dataset, output)
  counts = {
    "trajectories": int(keep_n),
    "of_trajectories": int(len(trajectories)),
    "frames": len(subset),
    "seed": seed,
  }
  with open(os.path.join(output, "manifest.json"), "w") as f:
    json.dump({"subset_of": os.path.abspath(dataset), **counts}, f, indent=1)
  return counts


def _run(cmd: list[str]) -> None:
  print("+", " ".join(cmd), flush=True)
  done = subprocess.run(cmd, check=False)
  if done.returncode != 0:
    raise SystemExit(f"failed (exit {done.returncode}): {' '.join(cmd)}")


def _point(run_dir: str) -> dict:
  """Frames, steps, seconds and test/held-out MAE of a trained and evaluated run."""
  with open(os.path.join(run_dir, "eval", "eval.json")) as f:
    report = json.load(f)
  with open(os.path.join(run_dir, "metrics.csv")) as f:
    rows = [line.strip().split(",") for line in f if line.strip()]
  header, rows = rows[0], rows[1:]
  col = {k: i for i, k in enumerate(header)}
  out = {
    "steps": int(rows[-1][col["step"]]),
    "epochs": len(rows),
    "train_seconds": sum(float(r[col["seconds"]]) for r in rows),
    "best_val_force_mae": min(float(r[col["val_force_mae"]]) for r in rows),
  }
  for split in ("test", "holdout"):
    out[split] = {k: report[split][k] for k in ("force_mae", "stress_mae", "frames")}
  return out


def fit(points: list[dict], key: str) -> dict | None:
  """Least-squares ``log MAE = a - slope * log frames`` through the points; the frames it puts
  at ``GOALS[key]`` (None where the slope is not positive)."""
  if len(points) < 2:
    return None
  x = np.log([p["frames"] for p in points])
  y = np.log([p["test"][key] for p in points])
  slope, intercept = np.polyfit(x, y, 1)
  out = {"slope": float(-slope), "frames_at_goal": None, "times_the_full_set": None}
  if slope < 0:
    frames = math.exp((math.log(GOALS[key]) - intercept) / slope)
    out["frames_at_goal"] = frames
    out["times_the_full_set"] = frames / max(p["frames"] for p in points)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dataset", default="data/dataset")
  parser.add_argument("--config", default="experiments/configs/pretrained.py:no_strain")
  parser.add_argument("--fractions", default="0.5,1", help="Fractions of training trajectories.")
  parser.add_argument("--reference", default="", help="Existing full-data run (fraction 1).")
  parser.add_argument("--seed", type=int, default=0, help="Seed of the trajectory subsets.")
  parser.add_argument("--work_dir", default="runs/data_scaling")
  parser.add_argument("--out", default="benchmarks/results/data_scaling.json")
  args = parser.parse_args()
  from crystal_search.errors import InputError
  from experiments.common import load_config

  fractions = sorted({float(f) for f in args.fractions.split(",") if f.strip()})
  if not fractions or not all(0 < f <= 1 for f in fractions):
    raise InputError(f"--fractions {args.fractions}: need numbers in (0, 1]")
  if not os.path.exists(os.path.join(args.dataset, "train.npz")):
    raise InputError(f"--dataset {args.dataset}: no train.npz there")
  if args.reference and not os.path.exists(os.path.join(args.reference, "eval", "eval.json")):
    raise InputError(f"--reference {args.reference}: no eval/eval.json there")
  try:
    config = load_config(args.config)
  except (ImportError, ValueError) as e:
    raise InputError(f"--config {args.config}: {e}") from None
  python = sys.executable
  t0 = time.perf_counter()
  points = []
  for fraction in fractions:
    if fraction == 1 and args.reference:
      from crystal_search.datasets import frames as frames_lib

      run_dir = args.reference
      train = frames_lib.load(os.path.join(args.dataset, "train.npz"))
      n = int(len(np.unique(train.trajectory)))
      counts = {"trajectories": n, "of_trajectories": n, "frames": len(train), "seed": None}
    else:
      run_dir = os.path.join(args.work_dir, f"f{fraction:g}")
      data_dir = run_dir + "_data"
      counts = trajectory_subset(args.dataset, data_dir, fraction=fraction, seed=args.seed)
      epochs = max(1, round(config.num_epochs / fraction))
      halving = max(1, round(config.lr_halving_epochs / fraction))
      _run(
        [python, "-m", "experiments.train", f"--config={args.config}", f"--workdir={run_dir}"]
        + [f"--config.data.path={data_dir}", f"--config.num_epochs={epochs}"]
        + [f"--config.lr_halving_epochs={halving}", f"--config.patience={halving}", "--quiet"]
      )
      if not os.path.exists(os.path.join(run_dir, "eval", "eval.json")):
        _run(
          [python, "-m", "experiments.evaluate", f"--workdir={run_dir}"]
          + [f"--output_dir={run_dir}/eval", "--max_trajectories=0", "--quiet"]
        )
    points.append({"fraction": fraction, "run": run_dir, **counts, **_point(run_dir)})
  report = {
    "command": _common.command_line(),
    "machine": _common.machine(),
    "config": args.config,
    "dataset": args.dataset,
    "points": points,
    "fit": {key: fit(points, key) for key in GOALS},
    "goals": GOALS,
    "wall_s": time.perf_counter() - t0,
  }
  lines = [
    "# Test error against teacher data at matched optimiser steps",
    "",
    f"Config `{args.config}` on seeded subsets of the training trajectories of "
    f"`{args.dataset}`, each trained for the full-data run's optimiser steps (epochs and "
    "learning-rate halving divided by the fraction); MAE on every test and held-out Li15Si4 "
    f"frame. Machine: {_common.describe(report['machine'])}. Command: `{report['command']}`.",
    "",
    "| fraction | trajectories | frames | epochs | steps | test force MAE (eV/Å) | "
    "test stress MAE (kBar) | held-out force MAE | held-out stress MAE | train min |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for p in points:
    lines.append(
      f"| {p['fraction']:g} | {p['trajectories']} | {p['frames']:,} | {p['epochs']} | "
      f"{p['steps']:,} | {p['test']['force_mae']:.4f} | {p['test']['stress_mae']:.2f} | "
      f"{p['holdout']['force_mae']:.4f} | {p['holdout']['stress_mae']:.2f} | "
      f"{p['train_seconds'] / 60:.1f} |"
    )
  lines.append("")
  for key, unit in (("force_mae", "eV/Å"), ("stress_mae", "kBar")):
    f = report["fit"][key]
    if f is None:
      continue
    if f["frames_at_goal"] is None:
      lines.append(
        f"- {key}: does not fall with more trajectories at this step budget (fitted MAE ∝ "
        f"frames^{-f['slope']:+.2f}): more teacher data alone will not reach {GOALS[key]:g} {unit}"
      )
      continue
    lines.append(
      f"- {key}: MAE ∝ frames^-{f['slope']:.2f}; the fit reaches the goal {GOALS[key]:g} "
      f"{unit} at ~{f['frames_at_goal']:,.0f} training frames ({f['times_the_full_set']:.1f}x "
      "the full set; an extrapolation from these points, same network and step budget)"
    )
  _common.write_report(args.out, report, lines)


if __name__ == "__main__":
  _common.run(main)
