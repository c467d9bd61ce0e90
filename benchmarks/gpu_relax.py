r"""Relaxations per hour on one accelerator (or the CPU, as a dry run): 38-atom Li15Si4 cells.

``--num`` random Li15Si4 cells of two formula units (38 atoms; P1, the search's generator with
``--seed``; or the cells of ``--starts``, an ``.npz`` written by ``--write_starts``) are relaxed
by the search's two settings, each in one call of :func:`crystal_search.relax.relax_structures`
with batches as large as ``--memory_budget_mb`` allows: ``screen`` (the fast model, L-BFGS, to
the search's ``screen_fmax``) and ``polish`` (the default model, L-BFGS, to ``fmax``).  Reported
per setting: wall time of a first call (compilation included) and of a second, relaxations per
hour of the second, median steps, converged and failed counts.  The paper relaxed 4,199 held-out
Li15Si4 cells: ``--num=4199``.

  python benchmarks/gpu_relax.py --num=4199 --out=$OUT/gpu_relax.json   # on the device
  python benchmarks/gpu_relax.py --num=4 --max_steps=5 --out=/tmp/x.json  # CPU dry run
"""

from __future__ import annotations

import time

import _common  # benchmarks/_common.py (this folder is on sys.path)
from absl import app, flags

_NUM = flags.DEFINE_integer("num", 4199, "Random 38-atom Li15Si4 cells.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random cells.")
_STARTS = flags.DEFINE_string("starts", None, "Cells from this .npz instead of generating them.")
_WRITE = flags.DEFINE_string("write_starts", None, "Write the cells to this .npz and stop.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 600, "Step cap of every relaxation.")
_BUDGET = flags.DEFINE_float("memory_budget_mb", 16384, "Memory per batch (MB).")
_MAX_BATCH = flags.DEFINE_integer("max_batch_size", 4096, "Largest batch.")
_SETTINGS = flags.DEFINE_string("settings", "screen,polish", "screen and/or polish.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/gpu_relax.json", "Report (JSON + .md).")


def cells(num: int, seed: int) -> list:
  """``num`` P1 Li15Si4 cells of 38 atoms (the search's generator settings otherwise)."""
  from crystal_search import compositions, random_structures, search

  config = search.get_search_config()
  config.formula_units, config.symmetric_fraction = "2", 0.0
  comp = compositions.parse_composition("Li15Si4", allowed_elements=("Li", "Si"))
  return random_structures.generate(comp, num, seed=seed, config=search.generator_config(config))


def save_cells(path: str, structures) -> None:
  import numpy as np

  np.savez_compressed(
    path,
    lattice=np.stack([s.lattice.matrix for s in structures]),
    frac=np.stack([s.frac_coords for s in structures]),
    numbers=np.stack([s.atomic_numbers for s in structures]),
  )


def load_cells(path: str) -> list:
  import numpy as np
  from pymatgen.core import Lattice, Structure

  d = np.load(path)
  return [
    Structure(Lattice(lat), [int(z) for z in z_row], frac)
    for lat, frac, z_row in zip(d["lattice"], d["frac"], d["numbers"], strict=True)
  ]


def main(argv):
  del argv
  import jax
  import numpy as np

  from crystal_search import relax, search
  from crystal_search.force_fields.registry import make_force_field

  starts = load_cells(_STARTS.value) if _STARTS.value else cells(_NUM.value, _SEED.value)
  if _WRITE.value:
    save_cells(_WRITE.value, starts)
    return
  cfg = search.get_search_config()
  settings = {
    "screen": (cfg.screen_model, float(cfg.screen_fmax)),
    "polish": ("default", float(cfg.fmax)),
  }
  report = {
    "command": _common.command_line(),
    "machine": _common.machine(),
    "date": time.strftime("%Y-%m-%d"),
    "cells": len(starts),
    "settings": {},
  }
  for name in [s.strip() for s in _SETTINGS.value.split(",") if s.strip()]:
    model, fmax = settings[name]
    ff = make_force_field("model", model=model)
    kw = dict(
      optimizer=cfg.optimizer,
      fmax=fmax,
      smax=float(cfg.smax),
      max_steps=_MAX_STEPS.value,
      memory_budget_mb=_BUDGET.value,
      max_batch_size=_MAX_BATCH.value,
    )
    times, stats = [], {}
    for _ in range(2):
      stats = {}
      t0 = time.perf_counter()
      results = relax.relax_structures(starts, ff, stats=stats, **kw)
      times.append(time.perf_counter() - t0)
    report["settings"][name] = {
      "model": model,
      "fmax": fmax,
      "first_call_s": times[0],
      "second_call_s": times[1],
      "relaxations_per_hour": 3600 * len(starts) / times[1],
      "median_steps": float(np.median([r.steps for r in results])),
      "converged": int(sum(r.converged for r in results)),
      "failed": int(sum(r.failed for r in results)),
      "batch_sizes": {str(k): v for k, v in stats["batch_sizes"].items()},
      "devices": [str(d) for d in jax.devices()],
    }
  lines = [
    "# Relaxations per hour, 38-atom Li15Si4 cells",
    "",
    f"`{report['command']}` on {_common.describe(report['machine'])}, {report['date']}; "
    f"{report['cells']} cells.",
    "",
    *_common.table_head(
      "setting",
      ["first call (s)", "second call (s)", "relaxations/hour", "median steps", "conv", "failed"],
      align="---:",
    ),
  ]
  for name, s in report["settings"].items():
    lines.append(
      f"| {name} ({s['model']}, {s['fmax']} eV/Å) | {s['first_call_s']:.1f} | "
      f"{s['second_call_s']:.1f} | {s['relaxations_per_hour']:.0f} | {s['median_steps']:.0f} | "
      f"{s['converged']} | {s['failed']} |"
    )
  _common.write_report(_OUT.value, report, lines)


if __name__ == "__main__":
  app.run(main)
