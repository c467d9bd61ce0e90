r"""Which screening model finds the most per CPU-hour: the main job over several seeds.

Runs the search of ``scripts/main.sh`` (its flags, :func:`_common.main_job_flags`)
with each packaged screening model of ``--screen_models`` and each seed of ``--seeds``, one
search per fresh process on ``--core``, all sharing one persistent compilation cache in
``--work_dir`` (so each model's first search compiles and the others load).  Reported per model:
wall time, relaxations ending in the known phase of the composition (hits, summed over the
seeds), its best rank in each report, and hits per CPU-hour.  Parts write their JSON into
``--work_dir`` as they finish; a rerun skips finished parts.

  python benchmarks/screen_choice.py
"""

from __future__ import annotations

import os
import time

import _common  # benchmarks/_common.py (this folder is on sys.path)
from absl import app, flags

_MODELS = flags.DEFINE_string("screen_models", "tiny,fast", "Packaged screening models.")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "Search seeds.")
_OVERRIDES = flags.DEFINE_string(
  "overrides", "", "Search settings over the main job's, FIELD=VALUE,... (e.g. polish_top_k=8)."
)
_CORE = flags.DEFINE_string("core", "0", "Core the searches run on ('': no pinning).")
_WORK = flags.DEFINE_string("work_dir", "runs/screen_choice", "Per-part JSON (resumable).")
_OUT = flags.DEFINE_string("out", "benchmarks/results/screen_choice.json", "Report.")
_PART = flags.DEFINE_string("part", None, "Internal: run one search (MODEL__SEED).")


def part(name: str) -> dict:
  model, seed = name.split("__")
  config = _common.main_job_config()
  config.screen_model = model
  config.seed = int(seed)
  for item in [x for x in _OVERRIDES.value.split(",") if x.strip()]:
    key, _, value = item.partition("=")
    _common.set_search_field(config, key.strip(), value)
  out = _common.run_main_job(config, tag=name)
  return {"screen_model": model, "seed": int(seed), **out}


def main(argv):
  del argv
  if _PART.value:
    from crystal_search import compile_cache

    compile_cache.enable()
    _common.write_part(_WORK.value, _PART.value, part(_PART.value))
    return
  machine = _common.machine()
  cache = os.path.abspath(os.path.join(_WORK.value, "jax_cache"))
  seeds = [int(s) for s in _SEEDS.value.split(",") if s.strip()]
  runs = {}
  for model in [m.strip() for m in _MODELS.value.split(",") if m.strip()]:
    for seed in seeds:
      name = f"{model}__{seed}"
      runs[name] = _common.run_part(
        __file__,
        name,
        [f"--work_dir={_WORK.value}", f"--overrides={_OVERRIDES.value}"],
        work_dir=_WORK.value,
        core=_CORE.value,
        env={"CRYSTAL_SEARCH_JAX_CACHE": cache},
      )
  report = {
    "command": _common.command_line(),
    "machine": machine,
    "date": time.strftime("%Y-%m-%d"),
    "main_job_flags": _common.main_job_flags(),
    "overrides": _OVERRIDES.value,
    "runs": runs,
  }
  _common.write_report(_OUT.value, report, _lines(report))


def _lines(r: dict) -> list[str]:
  models: dict[str, list[dict]] = {}
  for run in r["runs"].values():
    models.setdefault(run["screen_model"], []).append(run)
  lines = [
    "# Screening models on the main job: what each finds per CPU-hour",
    "",
    f"`{r['command']}` on {_common.describe(r['machine'])}, {r['date']}. The search of "
    f"`scripts/main.sh` ({' '.join(r['main_job_flags'])}"
    + (f"; {r['overrides']}" if r.get("overrides") else "")
    + ") with each screening model and seed, "
    "one search per fresh process on one core; each model's first search compiles its programs "
    "(persistent cache empty), the others load them.",
    "",
    *_common.table_head(
      "screen model",
      [
        "searches",
        "structures",
        "wall s",
        "s / structure",
        "hits",
        "best rank per seed",
        "hits / CPU-hour",
      ],  # fmt: skip
      align="---:",
    ),
  ]
  for model, runs in models.items():
    wall = sum(x["wall_s"] for x in runs)
    relaxed = sum(x["relaxed"] for x in runs)
    hits = sum(x["hits"] for x in runs)
    ranks = ", ".join(
      str(min((k["rank"] for k in x["known_phase_rows"]), default="–")) for x in runs
    )
    lines.append(
      f"| {model} | {len(runs)} | {relaxed} | {wall:.0f} | {wall / relaxed:.2f} | {hits} | "
      f"{ranks} | {hits / (wall / 3600):.0f} |"
    )
  lines += ["", "Per search (stage wall times, s):", ""]
  for name, x in r["runs"].items():
    stages = ", ".join(f"{k} {v:.1f}" for k, v in x["stages_s"].items())
    lines.append(f"- `{name}`: {x['hits']} hits; {stages}.")
  lines += [
    "",
    "Hits: relaxations that end in the composition's known phase (the group count of its row; "
    "bundled references, `crystal_search.metrics.known_phase`).",
  ]
  return lines


if __name__ == "__main__":
  app.run(lambda argv: _common.run(lambda: main(argv)))
