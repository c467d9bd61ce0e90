"""Two training configs compared at matched epochs, and their train-step cost in the same process.

    python benchmarks/training_curves.py \
        --run=blocks6=experiments/results/evals/pretrained_blocks6/metrics.csv \
        --run=shipped=experiments/results/evals/pretrained/metrics.csv \
        --step_time=blocks6=experiments/configs/pretrained.py:blocks6 \
        --step_time=shipped=experiments/configs/pretrained.py \
        --output=benchmarks/results/training_curves

Curves: validation force MAE (eV/Å) and stress MAE (kBar) of each ``--run`` (a ``metrics.csv``
written by ``crystal-search train``) at every epoch that all runs reached, and the change of each
run against the first one.  The runs must share their validation frames (same dataset, seed and
``data.max_eval_frames``) for the comparison to mean anything; the script does not check
that.  Step time (``--step_time``, optional): one jitted ``train_step`` of each config on the same
batches of the same training frames (the largest and a middle atom-count bucket, 32 frames
each), median of ``--repeats`` after compilation, in one process on the same threads; reported as
ratios against the first config, never as absolute speeds alone.  Writes ``OUTPUT.json`` and
``OUTPUT.md`` with the machine named.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _common  # noqa: E402

_RUNS = flags.DEFINE_multi_string(
  "run", [], "NAME=metrics.csv of a training run (first: reference)."
)
_STEP = flags.DEFINE_multi_string(
  "step_time", [], "NAME=CONFIG[:ARG] whose train_step is timed (first: reference)."
)
_DATA = flags.DEFINE_string("frames", "data/dataset/test.npz", "Frames the timed steps train on.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps per config and bucket.")
_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/training_curves", "Output prefix.")

METRICS = ("val_force_mae", "val_stress_mae")


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
  out = []
  for value in values:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
      raise app.UsageError(f"--{flag}={value!r}: expected NAME=VALUE")
    out.append((name, path))
  return out


def read_curve(path: str) -> dict[int, dict[str, float]]:
  """``epoch -> {metric: value}`` of a ``metrics.csv``; one-line error for a bad file."""
  try:
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
    return {int(r["epoch"]): {m: float(r[m]) for m in METRICS} for r in rows}
  except (OSError, KeyError, ValueError) as e:
    from crystal_search.errors import InputError

    raise InputError(f"{path}: not a readable training metrics.csv ({e})") from None


def compare_curves(curves: dict[str, dict[int, dict[str, float]]]) -> list[dict]:
  """One row per epoch every run reached: each run's metrics and its change against the first."""
  names = list(curves)
  epochs = sorted(set.intersection(*(set(c) for c in curves.values())))
  rows = []
  for epoch in epochs:
    row: dict = {"epoch": epoch}
    ref = curves[names[0]][epoch]
    for name in names:
      for m in METRICS:
        row[f"{name}.{m}"] = curves[name][epoch][m]
        if name != names[0]:
          row[f"{name}.{m}.change"] = curves[name][epoch][m] / ref[m] - 1.0
    rows.append(row)
  return rows


def step_times(configs: list[tuple[str, str]], frames_path: str, repeats: int) -> dict:
  """Median seconds of one train step per config and bucket, and ratios to the first config."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from crystal_search import graphs, training
  from crystal_search.datasets import frames as frames_lib
  from experiments.common import load_config

  frames = frames_lib.load(frames_path)
  sizes = np.asarray(frames.n_atoms)
  buckets = sorted({training.bucket_size(int(n)) for n in sizes})
  picked = [buckets[len(buckets) // 2], buckets[-1]]
  out: dict = {"buckets": picked, "seconds": {}, "ratio": {}}
  for name, spec in configs:
    config = load_config(spec)
    adapter = training.model_adapter(config)
    train_step, _ = training.make_steps(adapter)
    tx, _ = training.make_optimizer(config, 100)
    out["seconds"][name] = {}
    for bucket in picked:
      in_bucket = np.flatnonzero(np.array([training.bucket_size(int(n)) == bucket for n in sizes]))[
        : config.batch_size
      ]
      batch = training.make_batch(frames, in_bucket, max_atoms=bucket, batch_size=config.batch_size)
      batch = jax.tree_util.tree_map(jnp.asarray, batch)
      capacity = int(
        graphs.required_capacity(batch.crystals, float(config.model.cutoff))
        * config.capacity_margin
      )
      variables = adapter.init(jax.random.PRNGKey(0), batch.crystals)
      state = training.create_train_state(variables, tx)
      state, aux = train_step(state, batch, capacity)  # compile
      jax.block_until_ready(aux)
      times = []
      for _ in range(repeats):
        start = time.perf_counter()
        state, aux = train_step(state, batch, capacity)
        jax.block_until_ready(aux)
        times.append(time.perf_counter() - start)
      out["seconds"][name][str(bucket)] = statistics.median(times)
  ref = configs[0][0]
  for name, _ in configs:
    out["ratio"][name] = {
      b: out["seconds"][name][b] / out["seconds"][ref][b] for b in out["seconds"][name]
    }
  return out


def to_markdown(report: dict) -> str:
  names = [name for name, _ in report["runs"]]
  lines = [
    "# Training curves at matched epochs",
    "",
    f"Machine: {_common.describe(report['machine'])}. Command: `{report['command']}`.",
    "",
    "Validation force MAE (eV/Å) and stress MAE (kBar) on the same validation frames; change "
    f"against `{names[0]}` in brackets.",
    "",
    "| epoch | " + " | ".join(f"{n} force | {n} stress" for n in names) + " |",
    "|---:|" + "---:|---:|" * len(names),
  ]
  for row in report["curves"]:
    cells = []
    for n in names:
      for m in METRICS:
        text = f"{row[f'{n}.{m}']:.4f}" if m == "val_force_mae" else f"{row[f'{n}.{m}']:.3f}"
        if f"{n}.{m}.change" in row:
          text += f" ({100 * row[f'{n}.{m}.change']:+.0f} %)"
        cells.append(text)
    lines.append(f"| {row['epoch']} | " + " | ".join(cells) + " |")
  steps = report.get("step_time")
  if steps:
    lines += [
      "",
      "Train-step time against the first config, same batches, same process (median of "
      f"{report['repeats']} after compilation; buckets of {', '.join(map(str, steps['buckets']))} "
      "atoms):",
      "",
      "| config | " + " | ".join(f"{b} atoms" for b in steps["buckets"]) + " |",
      "|---|" + "---:|" * len(steps["buckets"]),
    ]
    for name, ratio in steps["ratio"].items():
      lines.append(
        f"| {name} | " + " | ".join(f"{ratio[str(b)]:.2f}×" for b in steps["buckets"]) + " |"
      )
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  runs = _pairs(_RUNS.value, "run")
  configs = _pairs(_STEP.value, "step_time")
  if not runs and not configs:
    raise app.UsageError("give at least one --run or --step_time")
  curves = {name: read_curve(path) for name, path in runs}
  report = {
    "machine": _common.machine(),
    "command": _common.command_line(),
    "runs": runs,
    "curves": compare_curves(curves) if curves else [],
    "repeats": _REPEATS.value,
  }
  if configs:
    report["step_time"] = step_times(configs, _DATA.value, _REPEATS.value)
  os.makedirs(os.path.dirname(_OUTPUT.value) or ".", exist_ok=True)
  with open(_OUTPUT.value + ".json", "w") as f:
    json.dump(report, f, indent=1)
  with open(_OUTPUT.value + ".md", "w") as f:
    f.write(to_markdown(report))
  print(to_markdown(report))


if __name__ == "__main__":
  app.run(lambda argv: _common.run(lambda: main(argv)))
