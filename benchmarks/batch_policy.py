r"""How the relaxer's batch policy sets the cost of the search's screen on one CPU core.

The search's screen relaxes every random cell (the main job's draw: ``--num`` cells of
``scripts/main.sh``'s settings) with a screening model to the search's ``screen_fmax``, L-BFGS.
Each policy of ``--policies`` (:data:`POLICIES`: relaxer settings) runs in a fresh process
pinned to ``--core`` with no persistent compilation cache: ``cold`` is its first call
(compilation included), ``warm`` a second call in the same process.  Reported per policy: wall
times, batch slot-steps and the useful fraction (steps of real, unfinished structures),
compilations, and milliseconds per slot-step (warm).  Every part writes its JSON into
``--work_dir`` as it finishes; a rerun skips finished parts (resumable).

  python benchmarks/batch_policy.py
"""

from __future__ import annotations

import time

import _common  # benchmarks/_common.py (this folder is on sys.path)
from absl import app, flags

#: Relaxer settings compared (``get_relax_config`` fields); ``cpu8`` is the default.
POLICIES = {
  "cpu8": {},
  "cpu16": {"cpu_max_batch_size": 16},
  "cpu32": {"cpu_max_batch_size": 32},
  "cpu128": {"cpu_max_batch_size": 128},
  "cpu128_no_early_refill": {"cpu_max_batch_size": 128, "refill_fraction": 1.0},
}

_MODELS = flags.DEFINE_string("models", "tiny,fast", "Packaged screening models to run.")
_POLICIES = flags.DEFINE_string("policies", ",".join(POLICIES), "Policies to compare.")
_NUM = flags.DEFINE_integer("num", 200, "Random cells of the main job's draw.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random cells.")
_CORE = flags.DEFINE_string("core", "0", "Core the parts run on ('': no pinning).")
_WORK = flags.DEFINE_string("work_dir", "runs/batch_policy", "Per-part JSON (resumable).")
_OUT = flags.DEFINE_string("out", "benchmarks/results/batch_policy.json", "Report.")
_PART = flags.DEFINE_string("part", None, "Internal: run one part (MODEL__POLICY).")


def _cells():
  import os
  import pickle

  path = os.path.join(_WORK.value, f"cells_{_NUM.value}_{_SEED.value}.pkl")
  if os.path.exists(path):
    with open(path, "rb") as f:
      return pickle.load(f)
  config = _common.main_job_config()  # scripts/main.sh's draw
  config.seed = _SEED.value
  cells = _common.search_starts(config, _NUM.value)
  os.makedirs(_WORK.value, exist_ok=True)
  with open(path + ".tmp", "wb") as f:
    pickle.dump(cells, f)
  os.replace(path + ".tmp", path)
  return cells


def part(name: str) -> dict:
  """One model and policy: a cold call, then a warm one, in this (fresh) process."""
  from crystal_search import relax, search
  from crystal_search.force_fields.registry import make_force_field

  model, policy = name.split("__")
  cfg = search.get_search_config()
  cells = _cells()
  ff = make_force_field("model", model=model)
  kw = dict(optimizer=str(cfg.optimizer), fmax=float(cfg.screen_fmax), smax=float(cfg.smax))
  out = {"model": model, "policy": policy, "settings": POLICIES[policy], "cells": len(cells)}
  for run in ("cold", "warm"):
    stats: dict = {}
    t0 = time.perf_counter()
    relax.relax_structures(cells, ff, stats=stats, **kw, **POLICIES[policy])
    out[run] = {
      "wall_s": time.perf_counter() - t0,
      **{k: stats[k] for k in ("structure_steps", "slot_steps", "compiles", "compactions")},
      "batch_sizes": {str(k): v for k, v in stats["batch_sizes"].items()},
    }
  return out


def main(argv):
  del argv
  if _PART.value:
    _common.write_part(_WORK.value, _PART.value, part(_PART.value))
    return
  _cells()  # drawn once, shared by the parts
  machine = _common.machine()
  rows = {}
  for model in [m.strip() for m in _MODELS.value.split(",") if m.strip()]:
    for policy in [p.strip() for p in _POLICIES.value.split(",") if p.strip()]:
      args = [f"--num={_NUM.value}", f"--seed={_SEED.value}", f"--work_dir={_WORK.value}"]
      env = {"CRYSTAL_SEARCH_JAX_CACHE": "off"}
      name = f"{model}:{policy}"
      rows[name] = _common.run_part(
        __file__, name.replace(":", "__"), args, work_dir=_WORK.value, core=_CORE.value, env=env
      )
  report = {
    "command": _common.command_line(),
    "machine": machine,
    "date": time.strftime("%Y-%m-%d"),
    "rows": rows,
  }
  _common.write_report(_OUT.value, report, _lines(report))


def _lines(r: dict) -> list[str]:
  lines = [
    "# Batch policy: the cost of the search's screen on one core",
    "",
    f"`{r['command']}` on {_common.describe(r['machine'])}, {r['date']}. "
    f"{next(iter(r['rows'].values()))['cells']} random cells of `scripts/main.sh`'s draw "
    "relaxed to the search's screen_fmax with L-BFGS, each policy in a fresh process on one "
    "core without a persistent compilation cache: cold is the first call, warm the second.",
    "",
    *_common.table_head(
      "model: policy",
      [
        "cold s",
        "warm s",
        "× cold vs cpu128_no_early_refill",
        "× warm",
        "batch",
        "slot-steps",
        "useful",
        "compiles",
        "ms / slot-step",
      ],
      align="---:",
    ),
  ]
  for name, o in r["rows"].items():
    base = r["rows"].get(f"{o['model']}:cpu128_no_early_refill", o)
    c, w = o["cold"], o["warm"]
    lines.append(
      f"| {name} | {c['wall_s']:.1f} | {w['wall_s']:.1f} | "
      f"{base['cold']['wall_s'] / c['wall_s']:.2f} | {base['warm']['wall_s'] / w['wall_s']:.2f} | "
      f"{max(w['batch_sizes'].values())} | {w['slot_steps']} | "
      f"{w['structure_steps'] / max(w['slot_steps'], 1):.2f} | {c['compiles']} | "
      f"{1000 * w['wall_s'] / max(w['slot_steps'], 1):.2f} |"
    )
  lines += [
    "",
    "Policies (`POLICIES` in the script; relaxer config fields): `cpu8` is the default (at most "
    "8 structures per batch on a CPU, a chunk ends early to refill once a quarter of the batch "
    "has finished); `cpuN` allows N; `cpu128_no_early_refill` refills only at the end of each "
    "25-step chunk. Useful: force evaluations of real, unfinished structures per batch "
    "slot-step.",
  ]
  return lines


if __name__ == "__main__":
  app.run(lambda argv: _common.run(lambda: main(argv)))
