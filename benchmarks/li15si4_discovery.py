"""Does random search find the held-out experimental Li15Si4 structure? Model and teacher.

The paper's headline test (Table 3, "experimental structure found"): relax random Li15Si4 cells
and count those that end in the experimental structure (I-43d, 38-atom primitive cell,
``Li15Si4 (mp-569849)``), for the teacher and for the network that never saw Li15Si4.  The
dataset's 200 held-out teacher relaxations (all cell sizes, half of them P1) never reached it, so
this run spends its budget where the structure can appear: cells of exactly ``--formula_units``
formula units (2: 38 atoms, the primitive cell's size; AIRSS ``NFORM``), all of them symmetric
with ``--min_symmops`` (2) to ``--max_symmops`` point operations (the paper's "up to 6"; AIRSS
``SYMMOPS``, which may also pin a high symmetry: ``--min_symmops=24 --max_symmops=24``; the
generator of ``crystal_search.random_structures``, seeded).  Every structure is relaxed through
our relaxer with the teacher's settings (SMASS=2, POTIM=0.4, positions and cell, fmax
0.05 eV/Å, smax 5 kBar, ``--max_steps``), by the shipped model (``--force_field=model``) or by
CHGNet (``--force_field=chgnet``); the teacher relaxes the first structures of the same seeded
sequence, so the two share their starts.  A final structure "is" the experimental one when
:func:`crystal_search.metrics.known_phase` matches it (StructureMatcher ltol 0.2, stol 0.3,
angle_tol 5°, primitive cells, volumes scaled).

Work is written in chunks of ``--chunk`` structures (``WORK/FORCE_FIELD/chunk_START.json``) and
a rerun skips finished chunks, so a killed run resumes (and a second process given ``--start``
takes the chunks from there on); ``--report`` gathers the chunks:

    python benchmarks/li15si4_discovery.py --force_field=model --num=1024 --work_dir=runs/li15si4
    python benchmarks/li15si4_discovery.py --force_field=chgnet --num=128 --work_dir=runs/li15si4
    python benchmarks/li15si4_discovery.py --report --work_dir=runs/li15si4 \\
        --out=benchmarks/results/li15si4_discovery.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

import _common  # benchmarks/_common.py (this folder is on sys.path)
import numpy as np

EXPERIMENTAL = "Li15Si4 (mp-569849)"


def _settings(args) -> dict:
  from crystal_search import relax

  return relax.teacher_settings(max_steps=args.max_steps)


def _random_config(args):
  from crystal_search.random_structures import RandomStructureConfig

  return RandomStructureConfig(
    formula_units=(args.formula_units,),
    symmetric_fraction=args.symmetric_fraction,
    min_symmops=args.min_symmops,
    max_symmops=args.max_symmops,
    primitive_cells=args.primitive_cells,
  )


def run_chunks(args) -> None:
  """Relax the structures ``[0, --num)`` chunk by chunk, skipping finished chunks."""
  from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

  from crystal_search import metrics, random_structures, relax, search

  out_dir = os.path.join(args.work_dir, args.force_field)
  os.makedirs(os.path.join(out_dir, "hits"), exist_ok=True)
  _check_settings(out_dir, args)
  config = _random_config(args)
  force_field = relax.make_force_field(args.force_field, model=args.model or None)
  energy_fn = search.load_force_field("model")[1] if args.force_field == "model" else None
  references = {EXPERIMENTAL: metrics.load_reference_phases()[EXPERIMENTAL]}
  for start in range(args.start, args.num, args.chunk):
    path = os.path.join(out_dir, f"chunk_{start:05d}.json")
    if os.path.exists(path):
      continue
    indices = range(start, min(start + args.chunk, args.num))
    t0 = time.perf_counter()
    made = random_structures.generate(
      args.composition, 0, seed=args.seed, config=config, indices=indices
    )
    t1 = time.perf_counter()
    results = relax.relax_structures(made.structures, force_field, **_settings(args))
    t2 = time.perf_counter()
    finals = [r.final for r in results]
    model_energy = energy_fn(finals) if energy_fn is not None else [None] * len(finals)
    rows = []
    for i, info, r, e_model in zip(made.indices, made.info, results, model_energy):
      hit = (not r.failed) and metrics.known_phase(r.final, references) == EXPERIMENTAL
      try:
        group = SpacegroupAnalyzer(r.final, symprec=0.1).get_space_group_symbol()
      except Exception:  # noqa: BLE001 - spglib gives up on some distorted cells
        group = "?"
      rows.append(
        {
          "index": int(i),
          "start_space_group": int(info["space_group"]),
          "atoms": len(r.final),
          "converged": bool(r.converged),
          "failed": bool(r.failed),
          "failure_reason": r.failure_reason,
          "steps": int(r.steps),
          "energy_per_atom": float(r.energy) / len(r.final) if np.isfinite(r.energy) else None,
          "model_energy_per_atom": None if e_model is None else float(e_model),
          "final_space_group": group,
          "experimental": bool(hit),
        }
      )
      if hit:
        r.final.to(filename=os.path.join(out_dir, "hits", f"{i:05d}.cif"))
    chunk = {
      "indices": list(indices),
      "not_generated": [int(i) for i in made.failed],
      "generate_s": round(t1 - t0, 2),
      "relax_s": round(t2 - t1, 2),
      "rows": rows,
    }
    with open(path + ".tmp", "w") as f:
      json.dump(chunk, f, indent=1)
    os.replace(path + ".tmp", path)
    hits = sum(row["experimental"] for row in rows)
    print(
      f"{args.force_field} {start}-{indices[-1]}: {len(rows)} relaxed in {t2 - t1:.0f} s, "
      f"{hits} experimental",
      flush=True,
    )


def _load(work_dir: str, kind: str) -> list[dict]:
  rows = []
  for path in sorted(glob.glob(os.path.join(work_dir, kind, "chunk_*.json"))):
    with open(path) as f:
      chunk = json.load(f)
    rows += [
      dict(row, relax_s=chunk["relax_s"] / max(len(chunk["rows"]), 1)) for row in chunk["rows"]
    ]
  return sorted(rows, key=lambda row: row["index"])


def _summary(rows: list[dict]) -> dict:
  hits = [row for row in rows if row["experimental"]]
  out = {
    "relaxed": len(rows),
    "converged": sum(row["converged"] for row in rows),
    "failed": sum(row["failed"] for row in rows),
    "experimental": len(hits),
    "experimental_indices": [row["index"] for row in hits],
    "s_per_structure": round(float(np.mean([row["relax_s"] for row in rows])), 2) if rows else None,
  }
  key = (
    "model_energy_per_atom"
    if rows and rows[0]["model_energy_per_atom"] is not None
    else ("energy_per_atom")
  )
  energies = [
    (row[key], row["index"]) for row in rows if not row["failed"] and row[key] is not None
  ]
  if energies:
    out["lowest_energy_per_atom"] = round(min(energies)[0], 4)
  if hits and energies:
    order = [index for _, index in sorted(energies)]
    out["experimental_energy_ranks"] = [order.index(row["index"]) + 1 for row in hits]
    out["ranked_by"] = key
  if hits:
    groups = sorted({row["start_space_group"] for row in hits})
    out["hit_start_groups"] = {
      str(g): {
        "starts": sum(row["start_space_group"] == g for row in rows),
        "hits": sum(row["start_space_group"] == g for row in hits),
      }
      for g in groups
    }
  return out


def _hit_volumes(work_dir: str, kind: str) -> list[float]:
  """Volume per atom (Å^3) of the saved hits, over the experimental cell's."""
  from pymatgen.core import Structure

  from crystal_search import metrics

  ref = metrics.load_reference_phases()[EXPERIMENTAL]
  per_atom = ref.volume / len(ref)
  out = []
  for path in sorted(glob.glob(os.path.join(work_dir, kind, "hits", "*.cif"))):
    s = Structure.from_file(path)
    out.append(round(s.volume / len(s) / per_atom, 4))
  return out


def _generator(args) -> dict:
  return {
    "composition": args.composition,
    "formula_units": args.formula_units,
    "symmetric_fraction": args.symmetric_fraction,
    "symmops": [args.min_symmops, args.max_symmops],
    "primitive_cells": args.primitive_cells,
    "seed": args.seed,
  }


def _check_settings(out_dir: str, args) -> None:
  """Write ``settings.json`` into a new run; refuse to resume one made with other settings."""
  settings = {"generator": _generator(args), "relax": _settings(args)}
  if args.model:  # absent for the shipped model, so runs made before the option still resume
    settings["model"] = args.model
  path = os.path.join(out_dir, "settings.json")
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    if old != settings:
      raise SystemExit(f"error: {out_dir} holds a run with other settings ({old}); use another dir")
  else:
    with open(path, "w") as f:
      json.dump(settings, f, indent=1)


def _describe(generator: dict) -> str:
  counted = "primitive" if generator["primitive_cells"] else "conventional (dataset generator)"
  return (
    f"z={generator['formula_units']}, symmetric {generator['symmetric_fraction']:g}, "
    f"{generator['symmops'][0]}–{generator['symmops'][1]} ops, atoms counted in the "
    f"{counted} cell, seed {generator['seed']}"
  )


def _run_report(work_dir: str, teacher_run: dict | None = None) -> dict:
  """One work dir's rows.  ``teacher_run``: an earlier report's run whose teacher relaxed the
  same seeded starts (same generator), used when this work dir holds no teacher chunks; its
  teacher relaxed starts ``[0, relaxed)``."""
  model, teacher = _load(work_dir, "model"), _load(work_dir, "chgnet")
  settings = {}
  for kind in ("chgnet", "model"):  # the same generator; the model's settings name its model
    path = os.path.join(work_dir, kind, "settings.json")
    if os.path.exists(path):
      with open(path) as f:
        settings = json.load(f)
  by_model = {r["index"]: r for r in model}
  if teacher_run is not None and not teacher:
    if (teacher_run.get("settings") or {}).get("generator") != settings.get("generator"):
      raise SystemExit(
        f"error: --teacher_from {teacher_run['work_dir']}: other generator settings than {work_dir}"
      )
    teacher_summary = dict(teacher_run["teacher"], from_work_dir=teacher_run["work_dir"])
    teacher_starts = set(range(int(teacher_summary["relaxed"])))
    shared = sorted(set(by_model) & teacher_starts)
    teacher_hits = [i for i in teacher_summary["experimental_indices"] if i in by_model]
  else:
    shared = sorted(set(by_model) & {r["index"] for r in teacher})
    teacher_hits = [r["index"] for r in teacher if r["index"] in shared and r["experimental"]]
    teacher_summary = dict(_summary(teacher), hit_volume_ratios=_hit_volumes(work_dir, "chgnet"))
  return {
    "work_dir": work_dir,
    "settings": settings,
    "model": dict(_summary(model), hit_volume_ratios=_hit_volumes(work_dir, "model")),
    "teacher": teacher_summary,
    "shared_starts": {
      "structures": len(shared),
      "model_experimental": sum(by_model[i]["experimental"] for i in shared),
      "teacher_experimental": len(teacher_hits),
      "model_reproduces_teacher": sum(by_model[i]["experimental"] for i in teacher_hits),
    },
  }


def experimental_energies() -> dict:
  """eV/atom of the experimental structure (primitive cell) by the shipped energy model and by
  CHGNet (relaxed with the teacher's settings), the scale for how close a search came."""
  from crystal_search import metrics, relax, search

  ref = metrics.load_reference_phases()[EXPERIMENTAL].get_primitive_structure()
  settings = relax.teacher_settings(max_steps=300)
  relaxed = relax.relax_structures([ref], relax.make_force_field("chgnet"), **settings)[0]
  return {
    "model_energy_per_atom": round(float(search.load_force_field("model")[1]([ref])[0]), 4),
    "energy_per_atom": round(float(relaxed.energy) / len(relaxed.final), 4),
  }


def _model_label(run: dict) -> str:
  settings = run["settings"] or {}
  if run.get("label"):
    return run["label"]
  return f"model `{settings['model']}`" if "model" in settings else "shipped model"


def _kept_runs(previous_report: str, runs: list[dict]) -> list[dict]:
  """The runs of an earlier report whose work dirs are gone (``runs/`` is not committed), so that
  a report on new work dirs keeps the measured rows it cannot regenerate."""
  previous = (_common.previous_report(previous_report) or {}).get("runs", [])
  named = {run["work_dir"] for run in runs}
  return [
    run for run in previous if run["work_dir"] not in named and not os.path.isdir(run["work_dir"])
  ]


def report(args) -> None:

  previous = {
    run["work_dir"]: run for run in (_common.previous_report(args.out) or {}).get("runs", [])
  }
  teacher_from = {}
  for item in args.teacher_from:
    work_dir, _, source = item.partition("=")
    if source not in previous:
      raise SystemExit(f"error: --teacher_from {item}: {source} is not a run of {args.out}")
    teacher_from[work_dir] = previous[source]
  runs = [_run_report(d, teacher_from.get(d)) for d in args.work_dir.split(",")]
  if args.keep_missing:
    runs = _kept_runs(args.out, runs) + runs
  for item in args.label:
    work_dir, _, label = item.partition("=")
    for run in runs:
      if run["work_dir"] == work_dir:
        run["label"] = label
  reference = experimental_energies()
  result = {
    "command": _common.command_line(),
    "machine": _common.machine(),
    "experimental_energy_per_atom": reference,
    "runs": runs,
  }
  lines = [
    "# Held-out Li15Si4: is the experimental structure found by random search?",
    "",
    f"`{result['command']}`",
    "",
    f"Machine: {_common.describe(result['machine'])}; the model "
    "and the teacher ran side by side, one core each. Random Li15Si4 cells from "
    "`crystal_search.random_structures` (settings per row), relaxed through our relaxer with "
    "the teacher's settings (SMASS=2, POTIM=0.4, positions and cell, fmax 0.05 eV/Å, smax "
    "5 kBar, step cap in `settings.json`); 'found' = the final structure matches "
    f"`{EXPERIMENTAL}` (StructureMatcher ltol 0.2, stol 0.3, angle_tol 5°). The teacher relaxes "
    "the first structures of the model's seeded sequence, so the two share those starts. Raw "
    f"numbers: `{os.path.basename(args.out)}`.",
    "",
    "Lowest energy: of the converged or capped finals, relative to the experimental structure "
    "(by the shipped energy model for the model's rows: "
    f"{reference['model_energy_per_atom']} eV/atom; by CHGNet for the teacher's: "
    f"{reference['energy_per_atom']} eV/atom). With none found in n tries, a 95 % upper bound "
    "on the chance per try is 3/n.",
    *[f"\n{note}" for note in args.note],
    "",
    "| generator | relaxer | relaxed | converged | failed | experimental found | "
    "lowest E − E(exp.) (meV/atom) | s / structure |",
    "|---|---|---:|---:|---:|---:|---:|---:|",
  ]
  for run in runs:
    where = _describe(run["settings"]["generator"]) if run["settings"] else run["work_dir"]
    model_label = _model_label(run)
    for label, key in ((model_label, "model"), ("CHGNet (teacher)", "teacher")):
      x = run[key]
      if not x["relaxed"]:
        continue
      e_ref = reference["model_energy_per_atom" if key == "model" else "energy_per_atom"]
      gap = 1000 * (x["lowest_energy_per_atom"] - e_ref) if "lowest_energy_per_atom" in x else None
      lines.append(
        f"| {where} | {label} | {x['relaxed']} | {x['converged']} | {x['failed']} | "
        f"{x['experimental']} | {'–' if gap is None else f'{gap:+.0f}'} | "
        f"{x['s_per_structure']} |"
      )
  lines.append("")
  for run in runs:
    s = run["shared_starts"]
    if not run["settings"]:
      continue
    text = []
    if s["structures"]:
      text.append(
        f"on the {s['structures']} starts both relaxed, the teacher found it "
        f"{s['teacher_experimental']} times and the model {s['model_experimental']} times; the "
        f"model reproduced {s['model_reproduces_teacher']} of the teacher's "
        f"{s['teacher_experimental']}"
      )
    for label, key in (("model", "model"), ("teacher", "teacher")):
      x = run[key]
      if not x.get("hit_start_groups"):
        continue
      groups = ", ".join(
        f"{v['hits']} of the {v['starts']} starts in space group {g}"
        for g, v in x["hit_start_groups"].items()
      )
      ratios = x.get("hit_volume_ratios") or []
      text.append(
        f"{label} hits: {groups}"
        + (
          f"; volume {min(ratios):.3f}–{max(ratios):.3f} × the experimental cell's"
          if ratios
          else ""
        )
        + (
          f"; energy ranks {x['experimental_energy_ranks']} of {x['relaxed'] - x['failed']}"
          if "experimental_energy_ranks" in x
          else ""
        )
      )
    if text:
      where = f"{_describe(run['settings']['generator'])}, {_model_label(run)}"
      lines.append(f"- {where}: " + "; ".join(text) + ".")
  _common.write_report(args.out, result, lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--force_field", choices=["model", "chgnet"], default="model")
  parser.add_argument("--composition", default="Li15Si4")
  parser.add_argument(
    "--model", default="", help="force/stress model directory (default: the shipped model)"
  )
  parser.add_argument("--num", type=int, default=1024, help="structures [start, num) of the seed")
  parser.add_argument("--chunk", type=int, default=32)
  parser.add_argument(
    "--start",
    type=int,
    default=0,
    help="first structure (a multiple of --chunk): a second process can take the later chunks",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--formula_units", type=int, default=2)
  parser.add_argument("--symmetric_fraction", type=float, default=1.0)
  parser.add_argument("--min_symmops", type=int, default=2)
  parser.add_argument("--max_symmops", type=int, default=6)
  parser.add_argument("--primitive_cells", action=argparse.BooleanOptionalAction, default=True)
  parser.add_argument("--max_steps", type=int, default=600)
  parser.add_argument(
    "--work_dir", default="runs/li15si4_discovery", help="with --report: a comma list"
  )
  parser.add_argument("--report", action="store_true")
  parser.add_argument("--note", action="append", default=[], help="a paragraph for the report")
  parser.add_argument(
    "--label",
    action="append",
    default=[],
    help="with --report: WORK_DIR=TEXT names that run's model in the report",
  )
  parser.add_argument(
    "--teacher_from",
    action="append",
    default=[],
    help="with --report: WORK_DIR=EARLIER_WORK_DIR takes the teacher row of a run in --out "
    "(same generator, same seeded starts) for a work dir without teacher chunks",
  )
  parser.add_argument(
    "--keep_missing",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="with --report: keep the rows of --out's runs whose work dirs no longer exist",
  )
  parser.add_argument("--out", default="benchmarks/results/li15si4_discovery.json")
  args = parser.parse_args()
  if args.report:
    report(args)
  elif args.chunk < 1:
    raise SystemExit(f"error: --chunk={args.chunk}: must be at least 1")
  elif not (0 <= args.start < args.num and args.start % args.chunk == 0):
    raise SystemExit(
      f"error: --start={args.start}: must be a multiple of --chunk={args.chunk} below --num={args.num}"
    )
  else:
    run_chunks(args)


if __name__ == "__main__":
  _common.run(main)
