r"""How a relaxation's cost grows with the atoms per cell, for each packaged model, on one core.

``--num`` random P1 cells of each size of ``--sizes`` (COMPOSITION:Z, e.g. ``Li15Si4:4`` is 76
atoms) are relaxed with L-BFGS to ``--fmax`` by each packaged model of ``--models``, one size at a
time in this process: the first call of a size compiles its programs (``cold``), a second call
reuses them (``warm``).  Reported per model and size: milliseconds per structure-step and
atom-steps per second (warm), the median steps, and the compile time (cold minus warm).

  OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/size_scaling.py
"""

from __future__ import annotations

import time

import _common  # benchmarks/_common.py (this folder is on sys.path)
from absl import app, flags

_MODELS = flags.DEFINE_string("models", "tiny,fast,default", "Packaged models.")
_SIZES = flags.DEFINE_string(
  "sizes", "LiSi:4,Li15Si4:1,Li15Si4:2,Li15Si4:3,Li15Si4:4", "Cell sizes as COMPOSITION:Z."
)
_NUM = flags.DEFINE_integer("num", 16, "Random cells per size.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random cells.")
_FMAX = flags.DEFINE_float("fmax", 0.05, "Force convergence, eV/Å.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/size_scaling.json", "Report.")


def _cells(spec: str) -> list:
  from crystal_search import compositions, random_structures

  name, z = spec.split(":")
  comp = compositions.parse_composition(name, allowed_elements=("Li", "Si"))
  atoms = int(round(comp.reduced_composition.num_atoms)) * int(z)
  return list(
    random_structures.generate(
      comp,
      _NUM.value,
      seed=_SEED.value,
      formula_units=(int(z),),
      max_atoms=atoms,
      symmetric_fraction=0.0,
    )
  )


def _measure(force_field, cells) -> dict:
  import numpy as np

  from crystal_search import relax

  out = {}
  for run in ("cold", "warm"):
    stats: dict = {}
    t0 = time.perf_counter()
    results = relax.relax_structures(
      cells, force_field, optimizer="lbfgs", fmax=_FMAX.value, max_steps=1000, stats=stats
    )
    out[f"{run}_s"] = time.perf_counter() - t0
  steps = stats["structure_steps"]
  atoms = len(cells[0])
  return {
    **out,
    "atoms": atoms,
    "structure_steps": steps,
    "slot_steps": stats["slot_steps"],
    "median_steps": float(np.median([r.steps for r in results])),
    "converged": int(sum(r.converged for r in results)),
    "ms_per_structure_step": 1000 * out["warm_s"] / max(steps, 1),
    "atom_steps_per_s": steps * atoms / out["warm_s"],
    "compile_s": out["cold_s"] - out["warm_s"],
  }


def main(argv):
  del argv
  from crystal_search.force_fields.registry import make_force_field

  machine = _common.machine()
  sizes = [s.strip() for s in _SIZES.value.split(",") if s.strip()]
  cells = {s: _cells(s) for s in sizes}
  rows = {}
  for model in [m.strip() for m in _MODELS.value.split(",") if m.strip()]:
    ff = make_force_field("model", model=model)
    for s in sizes:
      rows[f"{model}:{s}"] = {"model": model, "size": s, **_measure(ff, cells[s])}
  report = {
    "command": _common.command_line(),
    "machine": machine,
    "date": time.strftime("%Y-%m-%d"),
    "num": _NUM.value,
    "fmax": _FMAX.value,
    "rows": rows,
  }
  _common.write_report(_OUT.value, report, _lines(report))


def _lines(r: dict) -> list[str]:
  lines = [
    "# Cost of a relaxation step against the atoms per cell",
    "",
    f"`{r['command']}` on {_common.describe(r['machine'])}, {r['date']}. {r['num']} random P1 "
    f"cells per size, L-BFGS to {r['fmax']} eV/Å, in one process on one core; warm: a second "
    "call with the compiled programs reused.",
    "",
    *_common.table_head(
      "model: size",
      ["atoms", "ms / structure-step", "atom-steps / s", "median steps", "converged", "compile s"],
      align="---:",
    ),
  ]
  for name, o in r["rows"].items():
    lines.append(
      f"| {name} | {o['atoms']} | {o['ms_per_structure_step']:.2f} | "
      f"{o['atom_steps_per_s']:.0f} | {o['median_steps']:.0f} | {o['converged']}/{r['num']} | "
      f"{o['compile_s']:.1f} |"
    )
  return lines


if __name__ == "__main__":
  app.run(lambda argv: _common.run(lambda: main(argv)))
