r"""No input kills a run: random hostile structures through reading, graph building and relaxation.

Cases from :func:`crystal_search.fuzz.draw_cases` (tiny, huge, nearly flat, strongly skewed and
left-handed cells, overlapping atoms, NaN and inf, single atoms, up to ``--max_atoms`` atoms,
unsupported elements, corrupted files) go through three levels:

* ``read``: written as POSCAR, CIF, extxyz or JSON and read with ``read_structures``;
* ``graph``: neighbour lists and graphs at the tiny model's 4 Å cutoff (capacities met or flagged);
* ``relax``: ``relax_structures`` with each optimizer, a Lennard-Jones pair potential and the
  packaged ``tiny`` model, ``--max_steps`` steps.

Counted per level (and optimizer): refused (an ``InputError``, by kind), failed (by reason),
converged, unconverged, accepted; and every broken property (another exception escaping, a
multi-line error, an unflagged non-finite or exploded result), which must be none.  Each part
(a batch of cases) is written to ``--work_dir`` when done; a rerun skips the parts it finds.

  nice -n 10 python benchmarks/fuzz_inputs.py
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import _common  # benchmarks/_common.py (this folder is on sys.path)
from absl import app, flags

_SEED = flags.DEFINE_integer("seed", 0, "Seed of the cases.")
_READ = flags.DEFINE_integer("read", 1400, "Cases read from files.")
_GRAPH = flags.DEFINE_integer("graph", 250, "Cases through neighbour lists and graphs.")
_RELAX = flags.DEFINE_integer("relax", 128, "Cases relaxed with the pair potential per optimizer.")
_MODEL = flags.DEFINE_integer("model", 16, "Cases relaxed with the tiny model per optimizer.")
_BATCH = flags.DEFINE_integer("batch", 16, "Cases per relaxation batch (and per written part).")
_MAX_ATOMS = flags.DEFINE_integer("max_atoms", 200, "Most atoms in a case.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 30, "Relaxation steps per case.")
_WORK = flags.DEFINE_string("work_dir", "runs/fuzz_inputs", "Where finished parts are kept.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/fuzz_inputs.json", "Report.")

_LEVELS = ("read", "graph", "relax:lj", "relax:tiny")


def _parts() -> list[tuple[str, str | None, int, int]]:
  """``(level, optimizer, part index, cases)`` of the whole run, in order."""
  from crystal_search import relax

  out = []
  sizes = {"read": _READ.value, "graph": _GRAPH.value, "relax:lj": _RELAX.value}
  sizes["relax:tiny"] = _MODEL.value
  for level in _LEVELS:
    optimizers = relax.OPTIMIZERS if level.startswith("relax") else (None,)
    per = 100 if level == "read" else 50 if level == "graph" else _BATCH.value
    for opt in optimizers:
      total = sizes[level]
      for k in range(0, total, per):
        out.append((level, opt, k // per, min(per, total - k)))
  return out


def _run_part(level: str, optimizer: str | None, index: int, count: int) -> list[dict]:
  from crystal_search import fuzz
  from crystal_search.force_fields import analytic
  from crystal_search.force_fields.registry import make_force_field

  level_id = _LEVELS.index(level)
  cases = fuzz.draw_cases([_SEED.value, level_id, index], count, max_atoms=_MAX_ATOMS.value)
  if level == "read":
    with tempfile.TemporaryDirectory() as tmp:
      outcomes = []
      for k, case in enumerate(cases):
        fmt = fuzz.FORMATS[k % len(fuzz.FORMATS)]
        suffix = {"poscar": ".vasp", "cif": ".cif", "extxyz": ".extxyz", "json": ".json"}[fmt]
        outcomes.append(fuzz.check_read(case, os.path.join(tmp, f"case{k}{suffix}"), fmt))
  elif level == "graph":
    outcomes = [fuzz.check_graph(case) for case in cases]
  elif level == "relax:lj":
    ff = analytic.lennard_jones(sigma=2.0, epsilon=0.1, elements=fuzz.ELEMENTS)
    outcomes = fuzz.check_relax(cases, ff, optimizer, max_steps=_MAX_STEPS.value)
  else:
    ff = make_force_field("model", model="tiny")
    outcomes = fuzz.check_relax(cases, ff, optimizer, energies=False, max_steps=_MAX_STEPS.value)
  return [
    {
      "kind": c.kind,
      "atoms": len(c.species),
      "status": o.status,
      "reason": o.reason,
      "problems": o.problems,
    }
    for c, o in zip(cases, outcomes, strict=True)
  ]


def main(argv):
  del argv
  from crystal_search import fuzz

  machine = _common.machine()
  os.makedirs(_WORK.value, exist_ok=True)
  rows: dict[str, list[dict]] = {}
  resumed = 0
  t0 = time.perf_counter()
  for level, opt, index, count in _parts():
    name = f"{level.replace(':', '_')}_{opt or 'all'}_{index:03d}"
    path = os.path.join(_WORK.value, f"s{_SEED.value}_{name}.json")
    if os.path.exists(path):
      with open(path) as f:
        part = json.load(f)
      resumed += 1
    else:
      part = _run_part(level, opt, index, count)
      with open(path + ".tmp", "w") as f:
        json.dump(part, f)
      os.replace(path + ".tmp", path)
      print(f"{name}: {count} cases, {time.perf_counter() - t0:.0f} s", flush=True)
    rows.setdefault(f"{level} {opt or ''}".strip(), []).extend(part)
  table = {}
  for key, part in rows.items():
    outcomes = [fuzz.Outcome(r["status"], r["reason"], r["problems"]) for r in part]
    table[key] = fuzz.tally(outcomes)
  report = {
    "command": _common.command_line(),
    "machine": machine,
    "machine_name": _machine_name(),
    "date": time.strftime("%Y-%m-%d"),
    "seed": _SEED.value,
    "max_atoms": _MAX_ATOMS.value,
    "max_steps": _MAX_STEPS.value,
    "cases": sum(t["cases"] for t in table.values()),
    "parts_resumed": resumed,
    "wall_s": time.perf_counter() - t0,
    "rows": table,
  }
  _common.write_report(_OUT.value, report, _lines(report))


def _machine_name() -> str:
  from experiments.common import machine_name

  return machine_name()


def _counts(d: dict) -> str:
  return ", ".join(f"{k} {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "-"


def _lines(r: dict) -> list[str]:
  lines = [
    "# Fuzzing the inputs: refused, failed, converged",
    "",
    f"`{r['command']}` on {r['machine_name']}, {r['date']}. {r['cases']} random cases (seed "
    f"{r['seed']}, 1-{r['max_atoms']} atoms; relaxations {r['max_steps']} steps); "
    f"{r['parts_resumed']} parts read back from an earlier run.",
    "",
    *_common.table_head(
      "level",
      ["cases", "refused", "failed", "converged", "unconverged", "accepted", "problems"],
      align="---:",
    ),
  ]
  for key, t in r["rows"].items():
    s = t["status"]
    lines.append(
      f"| {key} | {t['cases']} | {s.get('refused', 0)} | {s.get('failed', 0)} | "
      f"{s.get('converged', 0)} | {s.get('unconverged', 0)} | {s.get('accepted', 0)} | "
      f"{len(t['problems'])} |"
    )
  lines += ["", "Refusals (InputError, by message) and failures (by reason):", ""]
  for key, t in r["rows"].items():
    lines.append(f"* {key}: refused: {_counts(t['refused'])}; failed: {_counts(t['failed'])}")
  problems = [f"* {key}: {p}" for key, t in r["rows"].items() for p in t["problems"]]
  lines += ["", "Broken properties:" if problems else "Broken properties: none.", *problems]
  return lines


if __name__ == "__main__":
  app.run(lambda argv: _common.run(lambda: main(argv)))
