r"""Does distilling pay off? A distilled Li–Ge student's search against the teacher's own.

Reads a finished ``crystal-search distill`` run (``--distill_dir``; its command is rebuilt from
its ``distill.json`` into the report), then per composition:

* ``student``: ``crystal-search search --model=DISTILL/model`` on ``--student_cells`` random cells
  (the package's generator settings, seed ``--seed``), its top ``--rescore_top_k`` re-relaxed by
  CHGNet (the search's ``rescore_top_k``), in a fresh process on one core (``cold``), and again
  in another process whose second run is timed (``warm``: the compiled programs in memory);
* ``teacher``: CHGNet + ASE FIRE + FrechetCellFilter (one torch thread, fmax 0.05 eV/Å) on the
  first ``--teacher_cells`` of the same starts, one at a time, as a user of the teacher runs it.

Reported: the distillation's teacher and training seconds, the student's errors per round, seconds
per cell of each search and their ratio, the lowest teacher energy each search reached (eV/atom),
the teacher's lowest within the CPU time of the student's search, whether the student's top
structures include the teacher's lowest (StructureMatcher), and the break-even: the searched cells
after which the distillation's cost is paid back (distillation seconds / (teacher − student seconds
per cell)).  Parts write JSON into ``--work_dir`` as they finish; a rerun skips finished parts.

  python benchmarks/distill_li_ge.py --distill_dir=runs/distill_lige
"""

from __future__ import annotations

import json
import os
import time

import _common  # benchmarks/_common.py (this folder is on sys.path)
from absl import app, flags

_DISTILL = flags.DEFINE_string("distill_dir", "runs/distill_lige", "A finished distill run.")
_STUDENT_N = flags.DEFINE_integer(
  "student_cells", 200, "Cells per composition the student relaxes."
)
_TEACHER_N = flags.DEFINE_integer("teacher_cells", 32, "Of those, the first N the teacher relaxes.")
_RESCORE = flags.DEFINE_integer("rescore_top_k", 4, "Student results re-relaxed by the teacher.")
_SEED = flags.DEFINE_integer("seed", 7, "Seed of the searched cells (not one distill used).")
_CORE = flags.DEFINE_string("core", "0", "Core the parts run on, one after another ('': any).")
_WORK = flags.DEFINE_string("work_dir", "runs/distill_li_ge", "Per-part JSON (resumable).")
_OUT = flags.DEFINE_string("out", "benchmarks/results/distill_li_ge.json", "Report.")
_PART = flags.DEFINE_string("part", None, "Internal: 'student_FORMULA' or 'teacher_FORMULA'.")
_FMAX = 0.05  # eV/Å, both searches


def _model() -> str:
  return os.path.join(_DISTILL.value, "model")


def _config(formula: str):
  from crystal_search import search

  config = search.get_search_config()
  config.composition = formula
  config.num_structures = _STUDENT_N.value
  config.seed = _SEED.value
  config.fmax = _FMAX
  config.screen_model = ""
  config.rescore_top_k = _RESCORE.value
  with open(os.path.join(_DISTILL.value, "distill.json")) as f:
    config.max_atoms = int(json.load(f)["max_atoms"])
  search.apply_model_generator(config, _model())
  return config


def part_student(formula: str, *, warm: bool = False) -> dict:
  """The student's search of ``formula`` in this fresh process (``cold``: every program
  compiles), or (``warm``) its second run in the process, the compiled programs in memory."""
  import tempfile

  from crystal_search import search

  config = _config(formula)
  force_field, energy_fn = search.load_force_field("model", model=_model())
  teacher = search.load_force_field("chgnet")[0]
  for _attempt in range(2 if warm else 1):
    out = os.path.join(tempfile.mkdtemp(), formula)
    t0 = time.perf_counter()
    result = search.run_search(
      config, force_field=force_field, energy_fn=energy_fn, teacher=teacher, output_dir=out,
      progress=False,
    )  # fmt: skip
    wall = time.perf_counter() - t0
  top = []
  for row in result.rows[:8]:
    path = os.path.join(out, row["cif"]) if row.get("cif") else None
    top.append({k: row.get(k) for k in ("rank", "energy_per_atom", "teacher_energy_per_atom")})
    if path and os.path.exists(path):
      from pymatgen.core import Structure

      top[-1]["structure"] = Structure.from_file(path).as_dict()
  totals = result.totals
  return {
    "wall_s": wall,
    "relaxed": totals["relaxed"],
    "failed": totals["failed"],
    "unique": totals["unique"],
    "wall_time_s": totals["wall_time_s"],
    "top": top,
  }


def part_teacher(formula: str) -> dict:
  starts = _common.search_starts(_config(formula), _TEACHER_N.value, elements=None)
  return {"relaxations": _common.teacher_relaxations(starts, fmax=_FMAX, max_steps=1000)}


def _distill_cost(distill_dir: str) -> dict:
  """Teacher and training seconds of the distillation (its report and training logs)."""
  import glob

  from crystal_search.training import read_metrics

  with open(os.path.join(distill_dir, "report.json")) as f:
    report = json.load(f)
  teacher_s = sum(r["teacher_seconds"] for r in report["rounds"])
  training_s = 0.0
  for workdir in glob.glob(os.path.join(distill_dir, "round_*", "*")):
    if os.path.exists(os.path.join(workdir, "metrics.csv")):
      training_s += sum(row.get("seconds", 0.0) for row in read_metrics(workdir))
  probes = 0.0
  for path in glob.glob(os.path.join(distill_dir, "round_*", "probe.json")):
    with open(path) as f:
      probes += json.load(f)["student_seconds"]
  return {
    "report": report,
    "teacher_s": teacher_s,
    "training_s": training_s,
    "probe_student_s": probes,
    "total_s": teacher_s + training_s + probes,
  }


def _compare(formula: str, student: dict, teacher: dict) -> dict:
  import numpy as np
  from pymatgen.analysis.structure_matcher import StructureMatcher
  from pymatgen.core import Structure

  rel = teacher["relaxations"]
  t_per = float(np.mean([r["wall_s"] for r in rel]))
  s_per = student["wall_s"] / max(1, student["relaxed"])
  energies = [r["energy_per_atom"] for r in rel]
  affordable = int(student["wall_s"] // t_per)
  best = int(np.argmin(energies))
  rescored = [t["teacher_energy_per_atom"] for t in student["top"] if t["teacher_energy_per_atom"]]
  matcher = StructureMatcher()
  reference = Structure.from_dict(rel[best]["final"])
  found = any(
    matcher.fit(reference, Structure.from_dict(t["structure"]))
    for t in student["top"]
    if "structure" in t
  )
  return {
    "student_s_per_cell": s_per,
    "teacher_s_per_cell": t_per,
    "speed_ratio": t_per / s_per,
    "student_cells": student["relaxed"],
    "teacher_cells": len(rel),
    "student_best_teacher_energy": min(rescored) if rescored else None,
    "teacher_best_energy": float(energies[best]),
    "teacher_cells_in_student_time": affordable,
    "teacher_best_in_student_time": float(min(energies[: max(1, affordable)])),
    "teacher_lowest_in_student_top8": bool(found),
  }


def main(argv):
  del argv
  if _PART.value:
    kind, _, formula = _PART.value.partition("_")
    if kind == "teacher":
      out = part_teacher(formula)
    else:
      out = part_student(formula, warm=kind == "warm")
    _common.write_part(_WORK.value, _PART.value, out)
    return
  cost = _distill_cost(_DISTILL.value)
  formulas = cost["report"]["config"]["compositions"]
  args = [
    f"--distill_dir={_DISTILL.value}", f"--student_cells={_STUDENT_N.value}",
    f"--teacher_cells={_TEACHER_N.value}", f"--rescore_top_k={_RESCORE.value}",
    f"--seed={_SEED.value}", f"--work_dir={_WORK.value}",
  ]  # fmt: skip
  machine = _common.machine()
  rows = {}
  for formula in formulas:
    parts = {}
    for kind in ("student", "warm", "teacher"):
      name = f"{kind}_{formula}"
      parts[kind] = _common.run_part(
        __file__, name, args, work_dir=_WORK.value, core=_CORE.value or None,
        env={"CRYSTAL_SEARCH_JAX_CACHE": "off"},
      )  # fmt: skip
    rows[formula] = _compare(formula, parts["student"], parts["teacher"])
    warm = parts["warm"]["wall_s"] / max(1, parts["warm"]["relaxed"])
    rows[formula].update(
      student_warm_s_per_cell=warm, speed_ratio_warm=rows[formula]["teacher_s_per_cell"] / warm
    )
  saved = [r["teacher_s_per_cell"] - r["student_s_per_cell"] for r in rows.values()]
  saved_warm = [r["teacher_s_per_cell"] - r["student_warm_s_per_cell"] for r in rows.values()]
  report = {
    "command": _common.command_line(),
    "distill_command": _distill_command(cost["report"]["config"]),
    "machine": machine,
    "date": time.strftime("%Y-%m-%d"),
    "distill": {k: v for k, v in cost.items() if k != "report"},
    "rounds": cost["report"]["rounds"],
    "compositions": rows,
    "break_even_cells": cost["total_s"] / (sum(saved) / len(saved)) if min(saved) > 0 else None,
    "break_even_cells_warm": cost["total_s"] / (sum(saved_warm) / len(saved_warm))
    if min(saved_warm) > 0
    else None,
  }
  _common.write_report(_OUT.value, report, _markdown(report))


def _distill_command(c: dict) -> str:
  flags_ = [
    f"--elements={','.join(c['elements'])}", f"--compositions={','.join(c['compositions'])}",
    f"--budget_teacher_relaxations={c['budget_teacher_relaxations']}", f"--rounds={c['rounds']}",
    f"--epochs={c['epochs']}", f"--finetune_epochs={c['finetune_epochs']}",
    f"--probe_cells={c['probe_cells']}", f"--label_frames={c['label_frames']}",
    f"--max_atoms={c['max_atoms']}", f"--teacher={c['teacher']}", f"--seed={c['seed']}",
  ]  # fmt: skip
  return "crystal-search distill " + " ".join(flags_) + f" --output_dir={_DISTILL.value}"


def _markdown(r: dict) -> list[str]:
  d = r["distill"]
  lines = [
    "# Distilling CHGNet for Li–Ge: cost, accuracy, speed and what the searches find",
    "",
    f"`{r['command']}` on {_common.describe(r['machine'])}, {r['date']}; the distillation: "
    f"`{r['distill_command']}`.",
    "",
    f"Distillation: {d['teacher_s'] / 60:.1f} teacher CPU minutes (elemental references, "
    f"first-round relaxations, later rounds' labels), {d['training_s'] / 60:.1f} training minutes, "
    f"{d['probe_student_s'] / 60:.1f} minutes of probe searches: "
    f"**{d['total_s'] / 3600:.2f} CPU hours** (one core).",
    "",
    *_common.table_head(
      "round", ["train frames (labelled)", "force MAE (eV/Å)", "stress MAE (kBar)"], align="---:"
    ),
  ]
  for row in r["rounds"]:
    lines.append(
      f"| {row['round']} | {row['train_frames']} ({row['active_learning_frames']}) | "
      f"{row['force_mae']:.4f} | {row['stress_mae']:.2f} |"
    )
  cols = [
    "student s/cell cold / warm", "teacher s/cell", "speed cold / warm",
    "student's lowest (teacher eV/atom)",
    "teacher's lowest", "teacher cells in the student's time", "teacher's lowest then",
    "teacher's lowest in student's top 8",
  ]  # fmt: skip
  lines += ["", *_common.table_head("composition", cols, align="---:")]
  for formula, c in r["compositions"].items():
    mine = c["student_best_teacher_energy"]
    lines.append(
      f"| {formula} | {c['student_s_per_cell']:.2f} / {c['student_warm_s_per_cell']:.2f} "
      f"({c['student_cells']}) | {c['teacher_s_per_cell']:.2f} ({c['teacher_cells']}) | "
      f"{c['speed_ratio']:.1f}x / {c['speed_ratio_warm']:.1f}x | "
      f"{'' if mine is None else f'{mine:.4f}'} | {c['teacher_best_energy']:.4f} | "
      f"{c['teacher_cells_in_student_time']} | {c['teacher_best_in_student_time']:.4f} | "
      f"{'yes' if c['teacher_lowest_in_student_top8'] else 'no'} |"
    )
  be, warm = r["break_even_cells"], r["break_even_cells_warm"]
  lines += [
    "",
    "Cold: the search in a fresh process, every program compiled (no persistent cache); warm: its "
    "second run in the process. The student's lowest is the teacher's energy after the search's "
    "teacher re-relaxation of its top results; the teacher's lowest is over its cells.",
    "",
    "Break-even: distilling pays off after "
    + (f"**{be:.0f} searched cells** cold" if be else "no number of cells cold")
    + (f", {warm:.0f} warm" if warm else "")
    + " (distillation CPU seconds over the seconds per cell it saves, mean of the compositions).",
  ]
  return lines


if __name__ == "__main__":
  app.run(main)
