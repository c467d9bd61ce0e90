r"""The README's main job against the teacher relaxing the same starts: time per structure, hits.

Runs the search of ``scripts/main.sh`` (its flags, read from :data:`_common.MAIN_JOB`; the packaged
models, the search's defaults otherwise) in a fresh process with no persistent compilation cache
(``cold``), and again (``warm``, the compiled programs on disk), and relaxes the first
``--teacher_structures`` of the same random starts with CHGNet + ASE FIRE + FrechetCellFilter one
at a time, on another core at the same time.  Reported: wall time per structure of each, their
ratio, how many relaxations end in the known phase of the composition (the bundled reference
CIFs, :func:`crystal_search.metrics.known_phase`) and those hits per CPU-hour.  Parts write their
JSON into ``--work_dir`` as they finish; a rerun skips finished parts.

  python benchmarks/main_job_vs_teacher.py
"""

from __future__ import annotations

import os
import time

import _common  # benchmarks/_common.py (this folder is on sys.path)
from absl import app, flags

_TEACHER_N = flags.DEFINE_integer("teacher_structures", 32, "Starts relaxed by the teacher.")
_CORES = flags.DEFINE_string("cores", "0,1", "Cores for ours and the teacher ('': no pinning).")
_WORK = flags.DEFINE_string("work_dir", "runs/main_job_vs_teacher", "Per-part JSON (resumable).")
_OUT = flags.DEFINE_string("out", "benchmarks/results/main_job_vs_teacher.json", "Report.")
_PART = flags.DEFINE_string("part", None, "Internal: 'teacher', 'cold' or 'warm'.")


def _config():
  return _common.main_job_config()


def main_job_flags() -> list[str]:
  return _common.main_job_flags()


def part_search(tag: str) -> dict:
  return _common.run_main_job(_config(), tag=tag)


def part_teacher() -> dict:
  """CHGNet + ASE on the first ``--teacher_structures`` starts; each relaxation is kept in
  ``--work_dir/teacher_rows/`` as it finishes, so a larger ``--teacher_structures`` adds only the
  new starts."""
  import json

  from crystal_search import metrics

  config = _config()
  starts = _common.search_starts(config)[: _TEACHER_N.value]
  references = metrics.load_reference_phases()
  folder = os.path.join(_WORK.value, "teacher_rows")
  os.makedirs(folder, exist_ok=True)
  rows = []
  for k, start in enumerate(starts):
    path = os.path.join(folder, f"{k:04d}.json")
    if not os.path.exists(path):
      (row,) = _common.teacher_relaxations(
        [start],
        fmax=float(config.fmax),
        max_steps=1000,
        each=lambda final: {"known_phase": metrics.known_phase(final, references)},
      )
      _common.write_part(folder, f"{k:04d}", row)
    with open(path) as f:
      rows.append(json.load(f))
  return {"relaxations": rows}


def _run_part(name: str, core: str | None, cache_dir: str) -> dict:
  args = [f"--teacher_structures={_TEACHER_N.value}", f"--work_dir={_WORK.value}"]
  env = {"CRYSTAL_SEARCH_JAX_CACHE": cache_dir}
  return _common.run_part(__file__, name, args, work_dir=_WORK.value, core=core, env=env)


def main(argv):
  del argv
  if _PART.value:
    if _PART.value == "teacher":
      out = part_teacher()
    else:
      from crystal_search import compile_cache

      compile_cache.enable()
      out = part_search(_PART.value)
    _common.write_part(_WORK.value, _PART.value, out)
    return
  from concurrent.futures import ThreadPoolExecutor

  import numpy as np

  cores = [c.strip() for c in _CORES.value.split(",")] if _CORES.value else [None, None]
  cache = os.path.abspath(os.path.join(_WORK.value, "jax_cache"))
  machine = _common.machine()
  with ThreadPoolExecutor(1) as pool:
    teacher_job = pool.submit(_run_part, "teacher", cores[1], "off")
    cold = _run_part("cold", cores[0], cache)  # empty cache: every program compiles
    warm = _run_part("warm", cores[0], cache)  # the cache that run filled
    teacher = teacher_job.result()
  rel = teacher["relaxations"]
  t_per = float(np.mean([r["wall_s"] for r in rel]))
  t_hits = sum(r["known_phase"] is not None for r in rel)
  report = {
    "command": _common.command_line(),
    "machine": machine,
    "date": time.strftime("%Y-%m-%d"),
    "main_job_flags": main_job_flags(),
    "teacher": {
      "structures": len(rel),
      "s_per_structure": t_per,
      "median_steps": float(np.median([r["steps"] for r in rel])),
      "converged": int(sum(r["converged"] for r in rel)),
      "hits": t_hits,
      "hits_per_cpu_hour": t_hits / (sum(r["wall_s"] for r in rel) / 3600),
      "known_phases": sorted({r["known_phase"] for r in rel if r["known_phase"]}),
    },
  }
  for tag, run in (("cold", cold), ("warm", warm)):
    per = run["wall_s"] / run["relaxed"]
    report[tag] = {
      **run,
      "s_per_structure": per,
      "ratio_vs_teacher": t_per / per,
      "hits_per_cpu_hour": run["hits"] / (run["wall_s"] / 3600),
    }
  _common.write_report(_OUT.value, report, _markdown(report))


def _markdown(r: dict) -> list[str]:
  t = r["teacher"]
  lines = [
    "# The main job against the teacher on the same starts",
    "",
    f"`{r['command']}` on {_common.describe(r['machine'])}, {r['date']}. The search of "
    f"`scripts/main.sh` ({' '.join(r['main_job_flags'])}) on one core; CHGNet + ASE FIRE + "
    f"FrechetCellFilter on the first {t['structures']} of its starts, one at a time, on the "
    "other core, at the same time.",
    "",
    *_common.table_head(
      "run",
      ["s / structure", "× teacher", "relaxed", "converged", "failed", "hits", "hits / CPU-hour"],
      align="---:",
    ),
  ]
  for tag in ("cold", "warm"):
    o = r[tag]
    lines.append(
      f"| ours, {tag} | {o['s_per_structure']:.2f} | {o['ratio_vs_teacher']:.1f} | "
      f"{o['relaxed']} | {o['converged']} | {o['failed']} | {o['hits']} | "
      f"{o['hits_per_cpu_hour']:.0f} |"
    )
  lines.append(
    f"| teacher | {t['s_per_structure']:.2f} | 1 | {t['structures']} | {t['converged']} | – | "
    f"{t['hits']} | {t['hits_per_cpu_hour']:.1f} |"
  )
  for tag in ("cold", "warm"):
    rows = r[tag]["known_phase_rows"]
    found = "; ".join(f"rank {x['rank']}: {x['known_phase']} ({x['count']}×)" for x in rows)
    lines += ["", f"Known phases in the {tag} report: {found or 'none'}. "
              f"Stage wall times (s): "
              + ", ".join(f"{k} {v:.1f}" for k, v in r[tag]["stages_s"].items()) + "."]  # fmt: skip
  lines += [
    "",
    "Cold: a fresh process with an empty compilation cache; warm: the same command again with "
    "the cache that run filled. Hits: relaxations that end in a known phase (bundled references);"
    " the teacher's count is over its subset of the starts.",
  ]
  return lines


if __name__ == "__main__":
  app.run(main)
