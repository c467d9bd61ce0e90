r"""Relaxations per minute against the teacher itself: our relaxer against CHGNet + ASE.

The same random Li–Si cells (``--num`` of each of ``--compositions``, the search's default draw,
``--seed``) are relaxed to ``--fmax`` eV/Å by

* the teacher as its users run it: CHGNet's ``StructOptimizer`` (ASE FIRE + FrechetCellFilter),
  one structure at a time, one torch thread (``teacher``);
* our batched relaxer with each setting of ``--settings`` (:data:`SETTINGS`: model, optimizer,
  and for ``screen_polish`` the search's two stages), each in a fresh process: ``cold`` is its
  first call (every compilation included, no persistent compilation cache), ``warm`` a second
  call in the same process (the compiled programs reused, as from a filled cache).

The teacher runs on one core and our settings one after the other on another, at the same time
(``--cores``).  Quality: CHGNet's energy (single point) of our finals minus that of the teacher's
own finals from the same start (meV/atom, median and 90th percentile) and the fraction of starts
whose two finals StructureMatcher calls the same.  Every part writes its JSON into ``--work_dir``
as it finishes; a rerun skips finished parts (resumable).

  python benchmarks/speed_vs_teacher.py
"""

from __future__ import annotations

import time

import _common  # benchmarks/_common.py (this folder is on sys.path)
from absl import app, flags

#: Our settings: (force/stress model, optimizer, fmax override or None, polish model or None).
SETTINGS = {
  "default_fire": ("default", "fire", None, None),
  "default_damped": ("default", "damped", None, None),
  "default_lbfgs": ("default", "lbfgs", None, None),
  "fast_lbfgs": ("fast", "lbfgs", None, None),
  "tiny_lbfgs": ("tiny", "lbfgs", None, None),
  "screen": ("tiny", "lbfgs", "screen", None),
  "screen_polish": ("tiny", "lbfgs", "screen", "default"),
}

_COMPOSITIONS = flags.DEFINE_string(
  "compositions", "LiSi,Li2Si,Li7Si2,Li13Si4,Li15Si4", "Compositions of the random cells."
)
_NUM = flags.DEFINE_integer("num", 13, "Random cells per composition.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random cells.")
_FMAX = flags.DEFINE_float("fmax", 0.05, "Force convergence, eV/Å (both relaxers).")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 1000, "Step cap of every relaxation.")
_SETTINGS = flags.DEFINE_string(
  "settings", ",".join(SETTINGS), f"Our settings to run ({', '.join(SETTINGS)})."
)
_EXTRA = flags.DEFINE_string(
  "extra_models",
  "",
  "More models, NAME=DIR,...: each relaxes the same cells with L-BFGS as setting NAME_lbfgs "
  "(e.g. earlier, smaller configs' exports, for the accuracy-speed curve of screening models).",
)
_CORES = flags.DEFINE_string("cores", "0,1", "Cores for ours and the teacher ('': no pinning).")
_WORK = flags.DEFINE_string("work_dir", "runs/speed_vs_teacher", "Per-part JSON (resumable).")
_OUT = flags.DEFINE_string("out", "benchmarks/results/speed_vs_teacher.json", "Report.")
_PART = flags.DEFINE_string("part", None, "Internal: run one part ('teacher' or a setting).")


def _settings() -> dict:
  """:data:`SETTINGS` and the ``--extra_models`` ones."""
  out = dict(SETTINGS)
  for item in [x.strip() for x in _EXTRA.value.split(",") if x.strip()]:
    name, _, path = item.partition("=")
    out[f"{name}_lbfgs"] = (path, "lbfgs", None, None)
  return out


def _cells():
  return _common.search_cells(_COMPOSITIONS.value, _NUM.value, seed=_SEED.value)


def part_ours(name: str) -> dict:
  """One setting of ours: cold call, then warm call, in this (fresh) process."""
  from crystal_search import relax, search
  from crystal_search.force_fields.registry import make_force_field

  model, optimizer, fmax, polish = _settings()[name]
  cfg = search.get_search_config()
  first_fmax = float(cfg.screen_fmax) if fmax == "screen" else _FMAX.value
  cells = _cells()
  ff = make_force_field("model", model=model)
  polish_ff = make_force_field("model", model=polish) if polish else None
  kw = dict(optimizer=optimizer, smax=float(cfg.smax), max_steps=_MAX_STEPS.value)

  def run():
    stats: dict = {}
    t0 = time.perf_counter()
    results = relax.relax_structures(cells, ff, fmax=first_fmax, stats=stats, **kw)
    steps = [r.steps for r in results]
    if polish_ff is not None:
      again = relax.relax_structures(
        [r.final for r in results], polish_ff, fmax=_FMAX.value, stats=stats, **kw
      )
      steps = [a + b.steps for a, b in zip(steps, again, strict=True)]
      results = again
    wall = time.perf_counter() - t0
    atoms = sum(len(c) * k for c, k in zip(cells, steps, strict=True))
    return wall, steps, results, atoms

  cold, _, _, _ = run()
  warm, steps, results, atoms = run()
  return {
    "setting": name,
    "model": model,
    "optimizer": optimizer,
    "fmax": first_fmax,
    "polish_model": polish,
    "cold_s": cold,
    "warm_s": warm,
    "steps": steps,
    "atom_steps_per_s_warm": atoms / warm,
    "converged": [bool(r.converged) for r in results],
    "failed": [r.failure_reason for r in results],
    "finals": [r.final.as_dict() for r in results],
  }


def part_teacher() -> dict:
  """CHGNet's StructOptimizer (ASE FIRE + FrechetCellFilter), one structure at a time."""
  rows = _common.teacher_relaxations(_cells(), fmax=_FMAX.value, max_steps=_MAX_STEPS.value)
  return {"relaxations": rows}


def _run_part(name: str, core: str | None) -> dict:
  """Run one part in a fresh process (pinned to ``core``) unless its JSON is already there."""
  args = [f"--{f}={flags.FLAGS[f].value}" for f in ("compositions", "num", "seed", "fmax")]
  args += [f"--extra_models={_EXTRA.value}"]
  args += [f"--max_steps={_MAX_STEPS.value}", f"--work_dir={_WORK.value}"]
  env = {"CRYSTAL_SEARCH_JAX_CACHE": "off"}
  return _common.run_part(__file__, name, args, work_dir=_WORK.value, core=core, env=env)


def _quality(ours: dict, teacher: dict, energies_fn) -> dict:
  import numpy as np
  from pymatgen.core import Structure

  from crystal_search import metrics

  matcher = metrics.default_matcher()
  theirs = [Structure.from_dict(r["final"]) for r in teacher["relaxations"]]
  mine = [Structure.from_dict(d) for d in ours["finals"]]
  ok = [i for i, f in enumerate(ours["failed"]) if f is None]
  e_mine = energies_fn([mine[i] for i in ok])
  e_theirs = energies_fn([theirs[i] for i in ok])
  delta = 1000.0 * (np.asarray(e_mine) - np.asarray(e_theirs))
  same = [bool(matcher.fit(mine[i], theirs[i])) for i in ok]
  return {
    "compared": len(ok),
    "teacher_energy_difference_meV_per_atom_median": float(np.median(delta)),
    "teacher_energy_difference_meV_per_atom_p90": float(np.percentile(delta, 90)),
    "same_structure_fraction": float(np.mean(same)),
  }


def main(argv):
  del argv
  if _PART.value:
    out = part_teacher() if _PART.value == "teacher" else part_ours(_PART.value)
    _common.write_part(_WORK.value, _PART.value, out)
    return
  from concurrent.futures import ThreadPoolExecutor

  import numpy as np

  from crystal_search.force_fields.chgnet import CHGNetForceField

  settings = [s.strip() for s in _SETTINGS.value.split(",") if s.strip()]
  cores = [c.strip() for c in _CORES.value.split(",")] if _CORES.value else [None, None]
  machine = _common.machine()
  with ThreadPoolExecutor(2) as pool:
    teacher_job = pool.submit(_run_part, "teacher", cores[1])
    ours = {name: _run_part(name, cores[0]) for name in settings}
    teacher = teacher_job.result()
  teacher_ff = CHGNetForceField()

  def energies(structures):
    return _common.single_point_energies(teacher_ff, structures)

  n = len(teacher["relaxations"])
  teacher_wall = sum(r["wall_s"] for r in teacher["relaxations"])
  rows = {}
  for name, o in ours.items():
    rows[name] = {
      "relaxations_per_min_cold": 60 * n / o["cold_s"],
      "relaxations_per_min_warm": 60 * n / o["warm_s"],
      "ratio_cold": teacher_wall / o["cold_s"],
      "ratio_warm": teacher_wall / o["warm_s"],
      "median_steps": float(np.median(o["steps"])),
      "atom_steps_per_s_warm": o["atom_steps_per_s_warm"],
      "converged": int(sum(o["converged"])),
      "failed": int(sum(f is not None for f in o["failed"])),
      **_quality(o, teacher, energies),
    }
  atoms = sum(r["n_atoms"] * r["steps"] for r in teacher["relaxations"])
  report = {
    "command": _common.command_line(),
    "machine": machine,
    "date": time.strftime("%Y-%m-%d"),
    "cells": n,
    "compositions": _COMPOSITIONS.value,
    "fmax": _FMAX.value,
    "teacher": {
      "relaxations_per_min": 60 * n / teacher_wall,
      "median_steps": float(np.median([r["steps"] for r in teacher["relaxations"]])),
      "atom_steps_per_s": atoms / teacher_wall,
      "converged": int(sum(r["converged"] for r in teacher["relaxations"])),
      "wall_s": teacher_wall,
    },
    "ours": rows,
  }
  _common.write_report(_OUT.value, report, _markdown(report))


def _markdown(r: dict) -> list[str]:
  t = r["teacher"]
  lines = [
    "# Relaxations per minute: our relaxer against CHGNet + ASE",
    "",
    f"`{r['command']}` on {_common.describe(r['machine'])}, {r['date']}. {r['cells']} random "
    f"cells of the search's draw ({r['compositions']}), fmax {r['fmax']} eV/Å. CHGNet + ASE FIRE "
    "+ FrechetCellFilter one structure at a time on one core, our settings one after the other "
    "on the other core, in the same run. Cold: first call in a fresh process (compilation "
    "included); warm: a second call (compiled programs reused).",
    "",
    f"Teacher: {t['relaxations_per_min']:.1f} relaxations/min, median {t['median_steps']:.0f} "
    f"steps, {t['atom_steps_per_s']:.0f} atom-steps/s, {t['converged']}/{r['cells']} converged.",
    "",
    *_common.table_head(
      "setting",
      [
        "relax/min cold",
        "relax/min warm",
        "× teacher cold",
        "× teacher warm",
        "median steps",
        "atom-steps/s",
        "converged",
        "failed",
        "ΔE teacher median (meV/atom)",
        "ΔE p90",
        "same structure",
      ],
      align="---:",
    ),
  ]
  for name, o in r["ours"].items():
    lines.append(
      f"| {name} | {o['relaxations_per_min_cold']:.1f} | {o['relaxations_per_min_warm']:.1f} | "
      f"{o['ratio_cold']:.1f} | {o['ratio_warm']:.1f} | {o['median_steps']:.0f} | "
      f"{o['atom_steps_per_s_warm']:.0f} | {o['converged']} | {o['failed']} | "
      f"{o['teacher_energy_difference_meV_per_atom_median']:.1f} | "
      f"{o['teacher_energy_difference_meV_per_atom_p90']:.1f} | "
      f"{o['same_structure_fraction']:.2f} |"
    )
  lines += [
    "",
    "Settings (`SETTINGS` in the script): model and optimizer; `screen` relaxes with the tiny "
    "model to the search's screen_fmax; `screen_polish` then relaxes every screened cell again "
    "with the default model to fmax (the search polishes only its lowest candidates). ΔE: "
    "CHGNet's energy of our final minus that of CHGNet's own final from the same start "
    "(negative: ours lower).",
  ]
  return lines


if __name__ == "__main__":
  app.run(main)
