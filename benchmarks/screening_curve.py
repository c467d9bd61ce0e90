r"""Accuracy against speed of the candidate screening models, from two committed results.

Speed and search quality come from ``benchmarks/results/speed_vs_teacher.json`` (each model with
L-BFGS on the same 65 random cells as CHGNet + ASE, one core each: relaxations a minute warm and
cold, atom-steps a second, CHGNet's energy of the finals against the teacher's own); accuracy from
the paper-table rows of the same configs on all 77 test trajectories
(``experiments/results/traj77/summary.json``: force and stress MAE on the test frames, relaxed and
trajectory match).  Rerun ``speed_vs_teacher.py`` with ``--extra_models`` for the exports of
``pretrained.py:blocks4`` and ``:blocks6`` (see ``docs/results.md``) first; the packaged tiny
model is the export of ``pretrained.py:cutoff4``.

  python benchmarks/screening_curve.py
"""

from __future__ import annotations

import argparse
import json
import time

import _common  # benchmarks/_common.py (this folder is on sys.path)

#: Setting of speed_vs_teacher -> (table row, config, parameters of the network).
MODELS = {
  "tiny_lbfgs": (
    "GNN (pretrained.py:cutoff4)",
    "pretrained.py:cutoff4 (tiny)",
    "4 blocks × 32, 4 Å",
  ),
  "blocks4_lbfgs": ("GNN (pretrained.py:blocks4)", "pretrained.py:blocks4", "4 blocks × 32, 5 Å"),
  "blocks6_lbfgs": ("GNN (pretrained.py:blocks6)", "pretrained.py:blocks6", "6 blocks × 32, 5 Å"),
  "fast_lbfgs": (
    "GNN (fast; pretrained.py:finetune_mae)",
    "pretrained.py:finetune_mae (fast)",
    "6 blocks × 32, 5 Å, 16 vectors",
  ),
  "default_lbfgs": (
    "GNN (shipped)",
    "pretrained.py:large_mae_contacts (default)",
    "7 blocks × 64, 5 Å, 32 vectors",
  ),
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--speed", default="benchmarks/results/speed_vs_teacher.json")
  parser.add_argument("--tables", default="experiments/results/traj77/summary.json")
  parser.add_argument("--out", default="benchmarks/results/screening_curve.json")
  args = parser.parse_args()
  with open(args.speed) as f:
    speed = json.load(f)
  with open(args.tables) as f:
    tables = json.load(f)["rows"]
  rows = {}
  for setting, (row, config, network) in MODELS.items():
    if setting not in speed["ours"] or row not in tables:
      continue
    s, t = speed["ours"][setting], tables[row]
    rows[setting] = {
      "config": config,
      "network": network,
      "force_mae": t["force_mae"]["mean"],
      "stress_mae": t["stress_mae"]["mean"],
      "relaxed_match": t["relaxed_match"]["mean"],
      "trajectory_match": t["trajectory_match"]["mean"],
      **{
        k: s[k]
        for k in (
          "atom_steps_per_s_warm",
          "ratio_warm",
          "ratio_cold",
          "median_steps",
          "teacher_energy_difference_meV_per_atom_median",
          "teacher_energy_difference_meV_per_atom_p90",
          "converged",
          "failed",
        )
      },
    }
  report = {
    "command": _common.command_line(),
    "date": time.strftime("%Y-%m-%d"),
    "sources": {"speed": args.speed, "accuracy": args.tables},
    "speed_command": speed["command"],
    "rows": rows,
  }
  lines = [
    "# Screening models: accuracy against speed",
    "",
    f"`{report['command']}`, {report['date']}: accuracy from `{args.tables}` (all 77 test "
    f"trajectories and test frames), speed from `{args.speed}` (`{speed['command']}`: "
    f"{speed['cells']} random cells, L-BFGS to {speed['fmax']} eV/Å, one core each against "
    "CHGNet + ASE FIRE).",
    "",
    *_common.table_head(
      "model",
      [
        "network",
        "force MAE (eV/Å)",
        "stress MAE (kBar)",
        "relaxed / trajectory match",
        "atom-steps/s",
        "× teacher warm / cold",
        "ΔE teacher median / p90 (meV/atom)",
        "converged",
      ],
    ),
  ]
  for r in rows.values():
    lines.append(
      f"| {r['config']} | {r['network']} | {r['force_mae']:.4f} | {r['stress_mae']:.2f} | "
      f"{r['relaxed_match']:.3f} / {r['trajectory_match']:.3f} | "
      f"{r['atom_steps_per_s_warm']:.0f} | {r['ratio_warm']:.1f} / {r['ratio_cold']:.1f} | "
      f"{r['teacher_energy_difference_meV_per_atom_median']:.1f} / "
      f"{r['teacher_energy_difference_meV_per_atom_p90']:.1f} | {r['converged']} |"
    )
  lines += [
    "",
    "ΔE: CHGNet's energy of the model's final minus that of CHGNet's own final from the same start "
    "(negative: the model's lower).",
  ]
  _common.write_report(args.out, report, lines)


if __name__ == "__main__":
  main()
