"""Where the force and stress error of a model lives: by teacher force magnitude and by the
position of the frame along its relaxation.

The paper's test frames are the high-force part of each relaxation (max force > 0.1 eV/Å, at
most one in five steps), so one MAE mixes the first, far-from-equilibrium frames of a random
cell with the frames near its end.  This splits the shipped model's (or ``--models``') force
MAE over atoms by the teacher's force magnitude, and force and stress MAE over frames by the
frame's relative position in its trajectory (step / last sampled step), on the test and
held-out Li15Si4 frames of ``--dataset``.

    python benchmarks/error_breakdown.py --out benchmarks/results/error_breakdown.json
"""

from __future__ import annotations

import argparse
import os

import _common  # benchmarks/_common.py (this folder is on sys.path)
import numpy as np

FORCE_BINS = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, np.inf)  # eV/Å, teacher |F| per atom
POSITION_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0001)  # step / the trajectory's last sampled step


def breakdown(frames, predictions: dict) -> dict:
  """Force MAE by teacher |F| bin (over atoms) and force/stress MAE by relative position along
  the trajectory (over frames) for ``predictions`` (``forces [A, 3]``, ``stress [F, 3, 3]``)."""
  err = np.abs(predictions["forces"] - frames.forces)  # [A, 3], eV/Å
  magnitude = np.linalg.norm(frames.forces, axis=1)
  by_force = []
  for lo, hi in zip(FORCE_BINS[:-1], FORCE_BINS[1:], strict=True):
    sel = (magnitude >= lo) & (magnitude < hi)
    by_force.append(
      {
        "teacher_force_range": [lo, None if np.isinf(hi) else hi],
        "atoms": int(sel.sum()),
        "share_of_atoms": float(sel.mean()),
        "force_mae": float(err[sel].mean()) if sel.any() else None,
        "share_of_error": float(err[sel].sum() / err.sum()),
      }
    )
  last = {t: frames.step[frames.trajectory == t].max() for t in np.unique(frames.trajectory)}
  position = np.array([s / max(last[t], 1) for s, t in zip(frames.step, frames.trajectory)])
  frame_force_err = np.array([err[frames.atom_slice(i)].mean() for i in range(len(frames))])
  stress_err = np.abs(predictions["stress"] - frames.stress).mean(axis=(1, 2))
  by_position = []
  for lo, hi in zip(POSITION_BINS[:-1], POSITION_BINS[1:], strict=True):
    sel = (position >= lo) & (position < hi)
    by_position.append(
      {
        "position_range": [lo, min(hi, 1.0)],
        "frames": int(sel.sum()),
        "force_mae": float(frame_force_err[sel].mean()) if sel.any() else None,
        "stress_mae": float(stress_err[sel].mean()) if sel.any() else None,
      }
    )
  return {"force_mae": float(err.mean()), "by_teacher_force": by_force, "by_position": by_position}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="shipped", help="NAME[=MODEL_DIR],... (shipped: package)")
  parser.add_argument("--dataset", default="data/dataset")
  parser.add_argument("--out", default="benchmarks/results/error_breakdown.json")
  args = parser.parse_args()
  from crystal_search.datasets import frames as frames_lib
  from crystal_search.errors import InputError
  from crystal_search.evaluation import frame_errors
  from crystal_search.force_fields import model as model_ff
  from crystal_search.force_fields.registry import PRETRAINED_DIR

  models = _common.parse_models(args.models)
  splits = {}
  for split in ("test", "holdout"):
    path = os.path.join(args.dataset, f"{split}.npz")
    if not os.path.exists(path):
      raise InputError(f"--dataset {args.dataset}: no {split}.npz there")
    splits[split] = frames_lib.load(path)
  report = {
    "command": _common.command_line(),
    "machine": _common.machine(),
    "dataset": args.dataset,
    "models": {},
  }
  for name, path in models.items():
    directory = path or os.path.join(PRETRAINED_DIR, "force_stress")
    force_field = model_ff.from_directory(directory)
    report["models"][name] = {"directory": directory}
    for split, frames in splits.items():
      errors = frame_errors(force_field, frames)
      report["models"][name][split] = breakdown(frames, errors["predictions"])
  lines = [
    "# Where the force and stress error lives",
    "",
    f"Dataset `{args.dataset}` (test and held-out Li15Si4 frames). "
    f"Machine: {_common.describe(report['machine'])}. Command: `{report['command']}`.",
  ]
  for name, entry in report["models"].items():
    for split in splits:
      b = entry[split]
      lines += [
        "",
        f"## {name}, {split} (force MAE {b['force_mae']:.4f} eV/Å)",
        "",
        "| teacher \\|F\\| (eV/Å) | atoms | share of atoms | force MAE (eV/Å) | share of error |",
        "|---|---:|---:|---:|---:|",
      ]
      for row in b["by_teacher_force"]:
        lo, hi = row["teacher_force_range"]
        label = f"{lo:g}–{hi:g}" if hi is not None else f"≥ {lo:g}"
        mae = f"{row['force_mae']:.4f}" if row["force_mae"] is not None else "–"
        lines.append(
          f"| {label} | {row['atoms']:,} | {row['share_of_atoms']:.2f} | {mae} | "
          f"{row['share_of_error']:.2f} |"
        )
      lines += [
        "",
        "| position along the relaxation (step / last sampled) | frames | force MAE (eV/Å) | "
        "stress MAE (kBar) |",
        "|---|---:|---:|---:|",
      ]
      for row in b["by_position"]:
        lo, hi = row["position_range"]
        if row["frames"]:
          lines.append(
            f"| {lo:g}–{hi:g} | {row['frames']:,} | {row['force_mae']:.4f} | "
            f"{row['stress_mae']:.2f} |"
          )
  _common.write_report(args.out, report, lines)


if __name__ == "__main__":
  _common.run(main)
