"""Network size against loss: the shipped size and the paper's 7 × 64, each on the squared and
the absolute-error loss, trained alike on the same subset of frames.

What should a lent accelerator train?  This trains the four corners of that choice from
scratch, the same way and on the same seeded frames, so that their validation error after the
same number of epochs says which axis buys more:

* ``shipped_mse``: ``pretrained.py`` (the shipped architecture: 6 blocks × 32, 16 vector
  channels, 5 Å) on the squared loss, as the shipped model was first trained;
* ``shipped_mae``: the same on the mean-absolute-error loss from the start;
* ``large_mse``: ``pretrained.py:large`` (7 blocks × 64, heads 64-32, 32 vector channels);
* ``large_mae``: ``pretrained.py:large_mae``, what ``scripts/device/train_large.sh`` runs.

    python benchmarks/capacity_probe.py                       # all four, one after another
    taskset -c 0 python benchmarks/capacity_probe.py --rows=shipped_mse,large_mse --no-report &
    taskset -c 1 python benchmarks/capacity_probe.py --rows=shipped_mae,large_mae --no-report
    python benchmarks/capacity_probe.py                       # then: the report (runs are done)

Every row trains ``--epochs`` epochs on ``--train_frames`` training frames and validates on
``--eval_frames`` validation frames (the config's seeded subsets), learning rate 1e-3 halved
every ``--halving`` epochs, no early stopping, in ``WORK_DIR/NAME`` (resumable: rerun the same
command; a finished row is read back, not retrained).  The report gives each row's validation
force and stress MAE by epoch, its parameter count, and its seconds per epoch as a ratio to
``shipped_mse`` (rows timed on separate cores at the same time are comparable; the ratio says
so when they were not).  Validation only: a probe, not a test-set figure.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time

import _common  # benchmarks/_common.py (this folder is on sys.path)

CONFIG = "experiments/configs/pretrained.py"
#: Row name -> (config, extra overrides).
ROWS = {
  "shipped_mse": (CONFIG, []),
  "shipped_mae": (CONFIG, ["--config.loss=mae"]),
  "large_mse": (f"{CONFIG}:large", []),
  "large_mae": (f"{CONFIG}:large_mae", []),
}
REFERENCE = "shipped_mse"


def read_metrics(run_dir: str) -> list[dict]:
  """The rows of ``run_dir/metrics.csv`` as dicts of floats (empty when there is none)."""
  path = os.path.join(run_dir, "metrics.csv")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def parameter_count(run_dir: str) -> int:
  """Trainable parameters of the model the run exported (``run_dir/model``)."""
  import jax
  import numpy as np

  from crystal_search.models import io as model_io

  params = model_io.load_model(os.path.join(run_dir, "model"))[2]["params"]
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


def summarise(name: str, run_dir: str, epochs: int) -> dict | None:
  """One row of the report, or ``None`` while the run has not finished ``epochs`` epochs."""
  rows = read_metrics(run_dir)
  if len(rows) < epochs or not os.path.exists(os.path.join(run_dir, "model")):
    return None
  rows = rows[:epochs]
  # The first epoch includes the compilation of every size bucket: time the others.
  steady = [r["seconds"] for r in rows[1:]] or [rows[0]["seconds"]]
  best = min(rows, key=lambda r: r["val_loss"])
  return {
    "name": name,
    "config": ROWS[name][0],
    "overrides": ROWS[name][1],
    "run": run_dir,
    "parameters": parameter_count(run_dir),
    "epochs": len(rows),
    "val_force_mae": [r["val_force_mae"] for r in rows],
    "val_stress_mae": [r["val_stress_mae"] for r in rows],
    "final_val_force_mae": rows[-1]["val_force_mae"],
    "final_val_stress_mae": rows[-1]["val_stress_mae"],
    "best_epoch": int(best["epoch"]),
    "best_val_force_mae": min(r["val_force_mae"] for r in rows),
    "seconds_per_epoch": sum(steady) / len(steady),
    "train_seconds": sum(r["seconds"] for r in rows),
    "mtime": os.path.getmtime(os.path.join(run_dir, "metrics.csv")),
  }


def _train(name: str, run_dir: str, args: argparse.Namespace) -> None:
  config, extra = ROWS[name]
  cmd = [sys.executable, "-m", "experiments.train", f"--config={config}", f"--workdir={run_dir}"]
  cmd += [
    f"--config.data.max_train_frames={args.train_frames}",
    f"--config.data.max_eval_frames={args.eval_frames}",
    f"--config.num_epochs={args.epochs}",
    f"--config.lr_halving_epochs={args.halving}",
    "--config.patience=0",
    "--quiet",
    *extra,
  ]
  print("+", " ".join(cmd), flush=True)
  done = subprocess.run(cmd, check=False)
  if done.returncode != 0:
    raise SystemExit(f"failed (exit {done.returncode}): {' '.join(cmd)}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", default=",".join(ROWS), help=f"Rows to train, of {list(ROWS)}.")
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--train_frames", type=int, default=2000)
  parser.add_argument("--eval_frames", type=int, default=500)
  parser.add_argument("--halving", type=int, default=4, help="Epochs per learning-rate halving.")
  parser.add_argument("--work_dir", default="runs/capacity_probe")
  parser.add_argument("--out", default="benchmarks/results/capacity_probe.json")
  parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True)
  args = parser.parse_args()
  from crystal_search.errors import InputError

  names = [n.strip() for n in args.rows.split(",") if n.strip()]
  unknown = sorted(set(names) - set(ROWS))
  if unknown or not names:
    raise InputError(f"--rows {args.rows}: expected names from {list(ROWS)}")
  for flag in ("epochs", "train_frames", "eval_frames", "halving"):
    if getattr(args, flag) < 1:
      raise InputError(f"--{flag} {getattr(args, flag)}: must be at least 1")
  t0 = time.perf_counter()
  for name in names:
    _train(name, os.path.join(args.work_dir, name), args)
  if not args.report:
    return
  rows = {}
  for name in ROWS:
    row = summarise(name, os.path.join(args.work_dir, name), args.epochs)
    if row is not None:
      rows[name] = row
  if REFERENCE not in rows:
    raise InputError(f"{args.work_dir}/{REFERENCE}: not trained; the ratios need it")
  ref = rows[REFERENCE]
  for row in rows.values():
    row["time_ratio_to_shipped_mse"] = row["seconds_per_epoch"] / ref["seconds_per_epoch"]
    row["force_vs_shipped_mse"] = row["final_val_force_mae"] / ref["final_val_force_mae"] - 1
    row["stress_vs_shipped_mse"] = row["final_val_stress_mae"] / ref["final_val_stress_mae"] - 1
  report = {
    "command": _common.command_line(),
    "machine": _common.machine(),
    "settings": {k: getattr(args, k) for k in ("epochs", "train_frames", "eval_frames", "halving")},
    "rows": rows,
    "wall_s": time.perf_counter() - t0,
  }
  s = report["settings"]
  lines = [
    "# Network size against loss, trained alike from scratch",
    "",
    f"Each row trains {s['epochs']} epochs on the same {s['train_frames']:,} seeded training "
    f"frames of `data/dataset_strain`, learning rate 1e-3 halved every {s['halving']} epochs, "
    f"no early stopping, and is validated on the same {s['eval_frames']} validation frames "
    f"(the report reads validation only). Machine: {_common.describe(report['machine'])}. Command: "
    f"`{report['command']}` (rows trained in `{args.work_dir}/NAME`; the module docstring "
    "gives the two-core recipe).",
    "",
    "| row | config | parameters | val force MAE (eV/Å), last epoch | vs shipped_mse | "
    "val stress MAE (kBar) | vs shipped_mse | best epoch | s / epoch, ratio to shipped_mse |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for name, r in rows.items():
    config = r["config"].split("/")[-1] + "".join(f" `{o}`" for o in r["overrides"])
    lines.append(
      f"| {name} | {config} | {r['parameters']:,} | {r['final_val_force_mae']:.4f} | "
      f"{r['force_vs_shipped_mse']:+.1%} | {r['final_val_stress_mae']:.2f} | "
      f"{r['stress_vs_shipped_mse']:+.1%} | {r['best_epoch']} | "
      f"{r['time_ratio_to_shipped_mse']:.2f}x |"
    )
  lines += [
    "",
    "Validation force MAE (eV/Å) by epoch:",
    "",
    *_common.table_head("epoch", rows, align="---:"),
  ]
  for epoch in range(s["epochs"]):
    lines.append(
      f"| {epoch + 1} | "
      + " | ".join(f"{r['val_force_mae'][epoch]:.4f}" for r in rows.values())
      + " |"
    )
  lines += [
    "",
    "Seconds per epoch leave out the first (it compiles every size bucket). Rows trained at the "
    "same time on separate cores of one machine are timed alike; the times are those the "
    "runs recorded, so a row trained beside other work reads slower than it is.",
  ]
  _common.write_report(args.out, report, lines)


if __name__ == "__main__":
  _common.run(main)
