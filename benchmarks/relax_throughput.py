r"""Relaxation throughput: our batched relaxer + force/stress network vs CHGNet + ASE FIRE.

The same ``--num_structures`` random Li–Si cells (<= 38 atoms,
:func:`crystal_search.random_structures.generate`, seeded) are relaxed to the same ``--fmax`` by

(a) :func:`crystal_search.relax.relax_structures` with our force/stress network (jit
    ``while_loop`` over padded, bucketed, in-flight batches).  Without ``--model`` the
    network has UNTRAINED random weights: its relaxations mean nothing, so every structure
    runs exactly ``--steps`` steps and only the per-step cost (structure-steps/s) is
    reported.  With ``--model DIR`` (trained weights) the structures are relaxed to
    ``--fmax`` and relaxations per minute and steps to converge are reported too.
(b) CHGNet (its own ``StructOptimizer``: ASE FIRE + FrechetCellFilter) one structure at a
    time, the way its users run it.  At ~0.1-0.2 s a step on this CPU, only the first
    ``--chgnet_structures`` are relaxed (to ``--fmax``, at most ``--chgnet_max_steps``);
    its per-step cost is measured on those.  ``--chgnet_structures=0`` skips (b).
(c) With ``--peer_model DIR``: (a) again with a second trained network (e.g. the shipped model
    beside a candidate), in its own subprocess right after (a), on the same structures and
    settings, so the two networks are compared as ratios measured in the same run
    (``ratio_*_ours_over_peer``).

Each part runs in its own subprocess so that peak memory (``ru_maxrss``) is per part.
Compile time of (a) is measured from JAX's compile-duration events and reported apart.
Scaling of (a) with batch size and atoms per cell uses ``--scaling_steps`` fixed steps.

  python benchmarks/relax_throughput.py                       # untrained weights
  python benchmarks/relax_throughput.py --model=models/force_stress --out=...json
  python benchmarks/relax_throughput.py --model=CANDIDATE --peer_model=crystal_search/pretrained/force_stress
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import _common  # benchmarks/_common.py (this folder is on sys.path)
from absl import app, flags

from crystal_search.errors import InputError

_NUM = flags.DEFINE_integer("num_structures", 64, "Random Li–Si cells relaxed by (a).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random structures and untrained weights.")
_MODEL = flags.DEFINE_string("model", None, "Trained force/stress model directory.")
_PEER = flags.DEFINE_string(
  "peer_model",
  None,
  "A second trained force/stress model directory, relaxed as (a) in the same run (part (c)); "
  "needs --model.",
)
_FMAX = flags.DEFINE_float("fmax", 0.05, "Force convergence, eV/Å (both relaxers).")
_STEPS = flags.DEFINE_integer("steps", 30, "Steps per structure for (a) with untrained weights.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 300, "Step cap for (a) with a trained model.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Batch size of (a) (slots per bucket).")
_CHGNET_N = flags.DEFINE_integer("chgnet_structures", 3, "Structures relaxed by (b); 0 skips (b).")
_CHGNET_STEPS = flags.DEFINE_integer("chgnet_max_steps", 300, "Step cap of (b).")
_TORCH_THREADS = flags.DEFINE_integer(
  "torch_threads", 1, "torch threads for CHGNet (1 is fastest on this shared 2-core machine)."
)
_SCALING = flags.DEFINE_boolean("scaling", True, "Also measure scaling of (a).")
_SCALING_STEPS = flags.DEFINE_integer("scaling_steps", 10, "Steps per scaling point.")
_OUT = flags.DEFINE_string(
  "out",
  os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "relax_throughput.json"),
  "Output JSON.",
)
_PART = flags.DEFINE_enum(
  "part", "all", ["all", "ours", "peer", "chgnet"], "Internal: one part only."
)
_STRUCTURES = flags.DEFINE_string("structures", None, "Internal: structures JSON.")

COMPOSITIONS = ("LiSi", "Li2Si", "Li7Si2", "Li13Si4", "Li15Si4")


def make_structures(num: int, seed: int) -> list:
  """``num`` random Li–Si cells (<= 38 atoms), compositions in turn, seeded."""
  from crystal_search import random_structures

  per = -(-num // len(COMPOSITIONS))
  pools = [list(random_structures.generate(c, per, seed=seed, max_atoms=38)) for c in COMPOSITIONS]
  out = []
  for k in range(per):
    out.extend(pool[k] for pool in pools if k < len(pool))
  return out[:num]


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _CompileTimer:
  """Sums JAX's compile-stage durations (tracing, lowering, backend compile)."""

  def __init__(self):
    import jax

    self.seconds = 0.0
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event: str, duration: float, **_) -> None:
    if event.startswith("/jax/core/compile/"):
      self.seconds += duration


def _timed_relax(structures, ff, timer, **kwargs) -> dict:
  from crystal_search import relax

  stats: dict = {}
  c0 = timer.seconds
  t0 = time.perf_counter()
  results = relax.relax_structures(structures, ff, stats=stats, **kwargs)
  wall = time.perf_counter() - t0
  compile_s = timer.seconds - c0
  run_s = max(wall - compile_s, 1e-9)
  return {
    "results": results,
    "wall_s": wall,
    "compile_s": compile_s,
    "run_s": run_s,
    "structure_steps": stats["structure_steps"],
    "structure_steps_per_s": stats["structure_steps"] / run_s,
    "batch_sizes": {str(k): v for k, v in stats["batch_sizes"].items()},
    "chunks": stats["chunks"],
  }


def part_ours(structures, model_dir: str | None) -> dict:
  """(a), or (c) with ``model_dir`` = ``--peer_model``: our relaxer with a force/stress network
  (trained weights from ``model_dir``; untrained ones when it is None)."""
  import jax
  import numpy as np

  from crystal_search import relax
  from crystal_search.force_fields import model as model_ff

  timer = _CompileTimer()
  trained = model_dir is not None
  ff = model_ff.from_directory(model_dir) if trained else relax.untrained_model(seed=_SEED.value)
  out: dict = {
    "force_field": ff.name,
    "weights": "trained: " + model_dir if trained else "UNTRAINED (random init)",
    "devices": [str(d) for d in jax.local_devices()],
  }
  if trained:
    settings = dict(fmax=_FMAX.value, max_steps=_MAX_STEPS.value)
  else:
    # Thresholds no structure meets: every structure takes exactly --steps steps.
    settings = dict(fmax=1e-12, smax=1e-12, max_steps=_STEPS.value)
  main = _timed_relax(structures, ff, timer, batch_size=_BATCH.value, **settings)
  results = main.pop("results")
  steps = np.asarray([r.steps for r in results])
  failures: dict = {}
  for r in results:
    if r.failed:
      failures[r.failure_reason] = failures.get(r.failure_reason, 0) + 1
  main.update(
    settings=settings,
    structures=len(results),
    failed=failures,
    converged=int(sum(r.converged for r in results)),
  )
  if trained:
    done = [r for r in results if r.converged]
    main["steps_to_converge_median"] = float(np.median([r.steps for r in done])) if done else None
    main["relaxations_per_minute"] = 60.0 * len(done) / main["run_s"]
  else:
    main["steps_per_structure"] = float(steps.mean())
  out["main"] = main

  if _SCALING.value:
    fixed = dict(fmax=1e-12, smax=1e-12, max_steps=_SCALING_STEPS.value)
    big = [s for s in structures if 32 < len(s) <= 40]
    rows = []
    for b in (8, 32, 64):
      # Repeated cells are fine for a per-step figure (structures do not interact).
      group = (big * (-(-b // len(big))))[:b]
      r = _timed_relax(group, ff, timer, batch_size=b, **fixed)
      r.pop("results")
      rows.append(
        {
          "batch_size": b,
          "atoms_bucket": 40,
          **{k: r[k] for k in ("structure_steps_per_s", "compile_s", "run_s")},
        }
      )
    out["scaling_batch_size"] = rows
    rows = []
    from crystal_search.crystals import bucket_size

    for bucket in (8, 16, 24, 32, 40):
      group = [s for s in structures if bucket_size(len(s)) == bucket][:16]
      if len(group) < 4:
        continue
      r = _timed_relax(group, ff, timer, batch_size=len(group), **fixed)
      r.pop("results")
      rows.append(
        {
          "atoms_bucket": bucket,
          "mean_atoms": float(np.mean([len(s) for s in group])),
          "batch_size": len(group),
          **{k: r[k] for k in ("structure_steps_per_s", "compile_s", "run_s")},
        }
      )
    out["scaling_atoms"] = rows
  out["compile_s_total"] = timer.seconds
  out["peak_rss_mb"] = _peak_rss_mb()
  return out


def part_chgnet(structures) -> dict:
  """(b): CHGNet StructOptimizer (ASE FIRE + FrechetCellFilter), one structure at a time."""
  import numpy as np
  import torch
  from chgnet.model import CHGNet, StructOptimizer

  torch.set_num_threads(_TORCH_THREADS.value)
  t0 = time.perf_counter()
  model = CHGNet.load(verbose=False)
  load_s = time.perf_counter() - t0
  opt = StructOptimizer(model=model, optimizer_class="FIRE")
  calc = opt.calculator
  calls = {"n": 0}
  inner = calc.calculate

  def counting(*args, **kwargs):
    calls["n"] += 1
    return inner(*args, **kwargs)

  calc.calculate = counting
  # Warm-up (first-call overheads of torch and the graph converter), not timed.
  opt.relax(structures[0], fmax=_FMAX.value, steps=2, relax_cell=True, verbose=False)
  rows = []
  for s in structures[: _CHGNET_N.value]:
    calls["n"] = 0
    t0 = time.perf_counter()
    res = opt.relax(
      s,
      fmax=_FMAX.value,
      steps=_CHGNET_STEPS.value,
      relax_cell=True,
      ase_filter="FrechetCellFilter",
      verbose=False,
    )
    wall = time.perf_counter() - t0
    final = res["final_structure"]
    atoms = res["trajectory"].atoms
    forces = np.asarray(res["trajectory"].forces[-1])
    rows.append(
      {
        "formula": s.composition.formula.replace(" ", ""),
        "n_atoms": len(s),
        "steps": calls["n"],
        "wall_s": wall,
        "s_per_step": wall / max(calls["n"], 1),
        "final_max_force": float(np.max(np.linalg.norm(forces, axis=-1))),
        "converged": bool(
          calls["n"] <= _CHGNET_STEPS.value
          and np.max(np.linalg.norm(forces, axis=-1)) < _FMAX.value
        ),
        "final_volume_ratio": float(final.volume / s.volume),
      }
    )
    del atoms
  total_steps = sum(r["steps"] for r in rows)
  total_wall = sum(r["wall_s"] for r in rows)
  return {
    "method": "chgnet.model.StructOptimizer (ASE FIRE + FrechetCellFilter), one structure at a time",
    "chgnet_load_s": load_s,
    "torch_threads": torch.get_num_threads(),
    "relaxations": rows,
    "structure_steps_per_s": total_steps / total_wall,
    "steps_to_converge_median": float(np.median([r["steps"] for r in rows])),
    "relaxations_per_minute": 60.0 * len(rows) / total_wall,
    "peak_rss_mb": _peak_rss_mb(),
  }


def _ratios(report: dict, part: str) -> dict:
  """``ratio_*_ours_over_PART``: part (a) against ``part`` (``chgnet``: (b); ``peer``: (c), the
  peer model), measured in the same run."""
  ours, other = report["ours"], report[part]
  main_other = other if part == "chgnet" else other["main"]
  out = {
    f"ratio_structure_steps_per_s_ours_over_{part}": ours["main"]["structure_steps_per_s"]
    / main_other["structure_steps_per_s"]
  }
  if part == "chgnet":
    # Same cell size: our 40-slot bucket (33-38 atoms) against CHGNet's largest cell.
    largest = max(other["relaxations"], key=lambda r: r["n_atoms"])
    rows = [r for r in ours.get("scaling_batch_size", []) if r["batch_size"] == 64]
    if rows and largest["n_atoms"] > 32:
      out["ratio_per_step_largest_cells_batch64"] = {
        "chgnet_n_atoms": largest["n_atoms"],
        "chgnet_structure_steps_per_s": 1.0 / largest["s_per_step"],
        "ours_structure_steps_per_s": rows[0]["structure_steps_per_s"],
        "ratio": rows[0]["structure_steps_per_s"] * largest["s_per_step"],
      }
  rate_other = main_other.get("relaxations_per_minute")
  if _MODEL.value and rate_other:
    out[f"ratio_relaxations_per_minute_ours_over_{part}"] = (
      ours["main"]["relaxations_per_minute"] / rate_other
    )
  return out


def _load(path):
  from pymatgen.core import Structure

  with open(path) as f:
    return [Structure.from_dict(d) for d in json.load(f)]


def main(argv) -> None:
  del argv
  if _PART.value != "all":
    structures = _load(_STRUCTURES.value)
    if _PART.value == "chgnet":
      out = part_chgnet(structures)
    else:
      out = part_ours(structures, _MODEL.value if _PART.value == "ours" else _PEER.value)
    print("RESULT " + json.dumps(out, default=float))
    return
  for name, value in (("--model", _MODEL.value), ("--peer_model", _PEER.value)):
    if value and not os.path.exists(os.path.join(value, "model.json")):
      raise InputError(f"{name} {value}: no model.json there (a trained model directory)")
  if _PEER.value and not _MODEL.value:
    raise InputError("--peer_model needs --model (the two trained networks are compared)")
  if _CHGNET_N.value < 0:
    raise InputError(f"--chgnet_structures={_CHGNET_N.value}: must be 0 (skip) or more")
  parts = ["ours"] + (["peer"] if _PEER.value else []) + (["chgnet"] if _CHGNET_N.value else [])
  t0 = time.perf_counter()
  structures = make_structures(_NUM.value, _SEED.value)
  gen_s = time.perf_counter() - t0
  report: dict = {
    "command": _common.command_line(),
    "machine": _common.machine(blas_threads="OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=1 in both parts"),
    "structures": {
      "count": len(structures),
      "compositions": list(COMPOSITIONS),
      "atoms_min": min(len(s) for s in structures),
      "atoms_max": max(len(s) for s in structures),
      "atoms_mean": sum(len(s) for s in structures) / len(structures),
      "seed": _SEED.value,
      "generation_s": gen_s,
    },
    "fmax": _FMAX.value,
  }
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "structures.json")
    with open(path, "w") as f:
      json.dump([s.as_dict() for s in structures], f)
    passthrough = [a for a in sys.argv[1:] if not a.startswith(("--part", "--structures", "--out"))]
    for part in parts:
      # One BLAS/OpenMP thread per process: on this shared 2-core machine threaded BLAS makes
      # the small 3x3/9x9 linear algebra (ASE's cell filter, our host-side steps) ~10x slower.
      # XLA keeps its default intra-op threads; torch uses --torch_threads.
      env = dict(
        os.environ,
        JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"),
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
      )
      cmd = [sys.executable, os.path.abspath(__file__), f"--part={part}", f"--structures={path}"]
      proc = subprocess.run(cmd + passthrough, env=env, capture_output=True, text=True)
      lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
      if proc.returncode != 0 or not lines:
        raise SystemExit(f"part {part} failed:\n{proc.stderr[-3000:]}")
      report[part] = json.loads(lines[-1][len("RESULT ") :])
  for part in parts[1:]:
    report.update(_ratios(report, part))
  report["note"] = (
    "UNTRAINED weights: only the per-step ratio is meaningful (relaxations of a random network "
    "mean nothing); rerun with --model DIR for relaxations per minute to the same fmax."
    if not _MODEL.value
    else "trained weights from --model"
  )
  report["wall_s_total"] = time.perf_counter() - t0
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(report, f, indent=1, default=float)
  print(json.dumps({k: report[k] for k in report if k.startswith("ratio")}, indent=1))
  print(f"-> {_OUT.value}")


if __name__ == "__main__":
  app.run(lambda argv: _common.run(lambda: main(argv)))
