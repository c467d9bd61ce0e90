"""What every benchmark records beside its numbers: the machine it ran on, its command line and
the shipped models it measured.

The scripts run as ``python benchmarks/NAME.py`` (so this folder is on ``sys.path``) and import
this module as ``_common``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time

from absl import flags

#: ``--conditions``: conditions of a run that its report should state (what else ran, what resumed).
CONDITIONS = flags.DEFINE_string("conditions", "", "Conditions of the run to state in its report.")


def machine(**extra) -> dict:
  """Platform, CPU model and count, Python, JAX backend and devices, load at start; ``extra``
  adds script-specific entries (e.g. thread settings)."""
  import jax

  info = {
    "platform": platform.platform(),
    "processor": platform.processor() or platform.machine(),
    "cpu_model": None,
    "cpu_count": os.cpu_count(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jax_backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "load_average_at_start": os.getloadavg(),
  }
  try:
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    info["cpu_model"] = names[0] if names else None
  except OSError:
    pass
  info.update(extra)
  return info


def describe(info: dict) -> str:
  """One line for a report's header: ``platform, N CPUs (model)`` and the devices if not CPU."""
  text = f"{info['platform']}, {info['cpu_count']} CPUs"
  if info.get("cpu_model"):
    text += f" ({info['cpu_model']})"
  if info.get("jax_backend") not in (None, "cpu"):
    text += f"; {info['jax_backend']}: {', '.join(info.get('devices', []))}"
  return text


def command_line(argv: list[str] | None = None) -> str:
  """The command that ran this script, as it can be pasted into a shell."""
  argv = sys.argv if argv is None else argv
  return " ".join(["python", *(shlex.quote(a) for a in argv)])


def shipped_metadata(name: str) -> dict | None:
  """The ``metadata`` of the package's ``pretrained/NAME/model.json`` (its run's config hash, data
  version, test metrics, ...), or None when the package ships no such model."""
  from crystal_search.force_fields.registry import PRETRAINED_DIR

  path = os.path.join(PRETRAINED_DIR, name, "model.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get("metadata", {})


def parse_models(text: str) -> dict[str, str | None]:
  """``"shipped,eos=runs/x/model"`` -> ``{'shipped': None, 'eos': 'runs/x/model'}`` (None: the
  model shipped in the package)."""
  out: dict[str, str | None] = {}
  for item in [t.strip() for t in text.split(",") if t.strip()]:
    name, _, path = item.partition("=")
    out[name] = path or None
  return out


def search_cells(compositions: str, num: int, *, seed: int) -> list:
  """``num`` random cells of each composition of the comma list ``compositions``, drawn as the
  search draws them by default (its generator settings), with ``seed``."""
  from crystal_search import compositions as compositions_lib
  from crystal_search import random_structures, search

  generator = search.generator_config(search.get_search_config())
  cells = []
  for name in [c.strip() for c in compositions.split(",") if c.strip()]:
    comp = compositions_lib.parse_composition(name, allowed_elements=("Li", "Si"))
    cells += random_structures.generate(comp, num, seed=seed, config=generator)
  return cells


def single_point_energies(force_field, structures) -> list[float]:
  """eV/atom of each pymatgen structure under ``force_field`` (e.g. the CHGNet teacher), one
  structure per call, so that no batch padding or bucket affects the numbers."""
  import numpy as np

  from crystal_search.crystals import from_structures

  return [
    float(np.asarray(force_field(from_structures([s])).energy)[0]) / len(s) for s in structures
  ]


def table_head(first: str, columns, *, align: str = "---") -> list[str]:
  """The two header lines of a markdown table whose first column is ``first`` and whose other
  columns are ``columns``, aligned by ``align`` (``'---:'`` for numbers)."""
  columns = list(columns)
  return ["| " + " | ".join([first, *columns]) + " |", "|---|" + f"{align}|" * len(columns)]


def write_report(out: str, report: dict, lines: list[str]) -> None:
  """``report`` as JSON at ``out`` and ``lines`` as markdown beside it (``.md``), then printed;
  ``--conditions``, when given, go into both (after the markdown's first paragraph)."""
  import json

  note = (
    CONDITIONS.value if flags.FLAGS.is_parsed() else ""
  )  # argparse scripts have no --conditions
  if note:
    report = dict(report, conditions=note)
    lines = [*lines[:4], note, "", *lines[4:]]

  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.splitext(out)[0] + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


def previous_report(path: str) -> dict | None:
  """The JSON report an earlier run wrote to ``path`` (``None`` when there is none), read by the
  scripts that keep the rows or columns they cannot recompute; a malformed file is bad input."""
  import json

  from crystal_search.errors import InputError

  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise InputError(
      f"--out {path}: the previous report cannot be read ({e}); pass --no-keep_missing"
    ) from None


def run(main) -> None:
  """Call a benchmark's ``main()``; bad input (:class:`InputError`) ends in one line on stderr
  and exit code 1 instead of a traceback."""
  from crystal_search.errors import InputError

  try:
    main()
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def teacher_relaxations(structures, *, fmax: float, max_steps: int, each=None) -> list[dict]:
  """CHGNet's ``StructOptimizer`` (ASE FIRE + FrechetCellFilter) on each structure, one at a time
  on one torch thread, as the teacher's users run it: per structure ``wall_s``, ``steps`` (force
  evaluations), ``converged`` (largest force below ``fmax`` eV/Å), ``energy_per_atom`` (eV/atom,
  the last step's) and ``final`` (pymatgen dict),
  plus what ``each(final_structure)`` returns (a dict) when given."""
  import numpy as np
  import torch
  from chgnet.model import CHGNet, StructOptimizer

  torch.set_num_threads(1)
  opt = StructOptimizer(model=CHGNet.load(verbose=False), optimizer_class="FIRE")
  rows = []
  for s in structures:
    t0 = time.perf_counter()
    res = opt.relax(
      s, fmax=fmax, steps=max_steps, relax_cell=True, ase_filter="FrechetCellFilter", verbose=False
    )
    wall = time.perf_counter() - t0
    forces = np.asarray(res["trajectory"].forces[-1])
    row = {
      "n_atoms": len(s),
      "wall_s": wall,
      "steps": len(res["trajectory"].energies),
      "converged": bool(np.max(np.linalg.norm(forces, axis=-1)) < fmax),
      "energy_per_atom": float(res["trajectory"].energies[-1]) / len(s),
      "final": res["final_structure"].as_dict(),
    }
    row.update(each(res["final_structure"]) if each else {})
    rows.append(row)
  return rows


def run_part(script: str, name: str, args: list[str], *, work_dir: str, core, env: dict) -> dict:
  """``script --part=NAME ARGS`` in a fresh process (pinned to ``core`` with taskset when given,
  ``env`` added to the environment) unless ``work_dir/NAME.json`` exists; that JSON."""
  import subprocess

  path = os.path.join(work_dir, f"{name}.json")
  if not os.path.exists(path):
    argv = [sys.executable, os.path.abspath(script), f"--part={name}", *args]
    if core:
      argv = ["taskset", "-c", core, *argv]
    subprocess.run(argv, check=True, env=dict(os.environ, OMP_NUM_THREADS="1", **env))
  with open(path) as f:
    return json.load(f)


def write_part(work_dir: str, name: str, out: dict) -> None:
  """``out`` as ``work_dir/NAME.json``, atomically (what :func:`run_part` reads back)."""
  os.makedirs(work_dir, exist_ok=True)
  path = os.path.join(work_dir, f"{name}.json")
  with open(path + ".tmp", "w") as f:
    json.dump(out, f)
  os.replace(path + ".tmp", path)


# The README's main job (scripts/main.sh), shared by the benchmarks that run it.

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The main job's command line, as ``scripts/main.sh`` runs it.
MAIN_JOB = os.path.join(_ROOT, "scripts", "main.sh")


def main_job_flags() -> list[str]:
  """The ``--flags`` of the ``crystal-search search`` line of ``scripts/main.sh``."""
  with open(MAIN_JOB) as f:
    text = f.read().replace("\\\n", " ")
  line = next(x for x in text.splitlines() if "crystal-search search" in x)
  words = shlex.split(line.split("crystal-search search", 1)[1])
  return [w for w in words if w.startswith("--") and not w.startswith("--output_dir")]


def set_search_field(config, key: str, value: str) -> None:
  """``config[key] = value`` converted to the field's type (``false``/``0`` is False for a
  boolean); an unknown field is bad input."""
  from crystal_search.errors import InputError

  if key not in config:
    raise InputError(f"{key}: not a search setting")
  default = config[key]
  if isinstance(default, bool):
    config[key] = value.strip().lower() not in ("false", "0", "no")
  else:
    config[key] = type(default)(value)


def main_job_config():
  """The main job's search config (its flags over the defaults)."""
  from crystal_search import search

  config = search.get_search_config()
  for w in main_job_flags():
    key, _, value = w[2:].partition("=")
    key = key.removeprefix("search.")
    if key in config:
      set_search_field(config, key, value or "true")
    elif key.startswith("no") and key[2:] in config:
      config[key[2:]] = False
  return config


def search_starts(config, num: int | None = None, *, elements=("Li", "Si")) -> list:
  """The first ``num`` (default ``config.num_structures``) random cells a search of ``config``
  relaxes (its composition of ``elements``, seed and generator settings)."""
  from crystal_search import compositions, random_structures, search

  comp = compositions.parse_composition(config.composition, allowed_elements=elements)
  return list(
    random_structures.generate(
      comp,
      int(config.num_structures) if num is None else int(num),
      seed=int(config.seed),
      config=search.generator_config(config),
    )
  )


def run_main_job(config, *, tag: str) -> dict:
  """One search of ``config`` with the packaged models (a temporary output directory): wall
  time, stage times, counts and the rows of known phases (``hits``: relaxations ending in one)."""
  import tempfile

  from crystal_search import search

  force_field, energy_fn = search.load_force_field("model")
  screen = search.load_screen_force_field(config.screen_model)
  out = os.path.join(tempfile.mkdtemp(), tag)
  t0 = time.perf_counter()
  result = search.run_search(
    config,
    force_field=force_field,
    energy_fn=energy_fn,
    screen_force_field=screen,
    output_dir=out,
    progress=False,
  )
  wall = time.perf_counter() - t0
  t = result.totals
  hits = [r for r in result.rows if r["known_phase"]]
  return {
    "wall_s": wall,
    "stages_s": t["wall_time_s"],
    "relaxed": t["relaxed"],
    "converged": t["converged"],
    "failed": t["failed"],
    "unique": t["unique"],
    "polished": t.get("polished"),
    "known_phase_rows": [
      {k: r[k] for k in ("rank", "known_phase", "count", "space_group", "energy_per_atom")}
      for r in hits
    ],
    "hits": int(sum(r["count"] for r in hits)),
  }
