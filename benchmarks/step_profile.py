r"""Where a relaxation step goes: time, FLOPs and compile time of each stage, per packaged model.

For each model of ``--models`` (packaged names or directories) on ``--num`` cells of the search's
default draw (``--composition``, the search's generator settings, ``--seed``), per atom-count
bucket, one batch of the bucket's cells (at most ``--batch``), each stage jit-compiled alone and
timed as the median of ``--repeats`` calls after compilation:

* ``neighbours``: the periodic neighbour list (:func:`crystal_search.graphs.compute_neighbors`);
* ``graph``: the ``GraphsTuple`` from it (:func:`crystal_search.graphs.build_graph`);
* ``network``: the MEGNet trunk and heads on that graph (:func:`force_stress.apply_graph`);
* ``force_field``: the whole call as the relaxer makes it (neighbours + graph + network +
  de-standardisation), whose difference to the parts is fusion across stages;
* ``update``: the optimizer's update rule (:func:`crystal_search.relax.move`);
* ``checks``: convergence and failure checks (:func:`crystal_search.relax.observe`) with the
  overlap test (:func:`crystal_search.relax.overlap_ratio`) shown apart;
* ``relax_loop``: a whole relaxation of the batch (:func:`relax_structures`, the search's
  optimizer and thresholds): its wall time per structure-step, and the share spent on the host
  between jit-compiled chunks (``host_seconds`` of its stats).

Each stage's FLOPs come from XLA's cost analysis of its compiled program; the fraction of the
machine's matmul rate divides the achieved FLOP rate by a float32 matmul's measured on the same
core.  Compile time is measured for the relaxer's chunk program per bucket width and per batch
size.  Run on one core of an idle machine::

  OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/step_profile.py
"""

from __future__ import annotations

import statistics
import time

import _common  # benchmarks/_common.py (this folder is on sys.path)
import numpy as np
from absl import app, flags

_MODELS = flags.DEFINE_string("models", "default,fast", "Packaged model names or directories.")
_COMPOSITION = flags.DEFINE_string("composition", None, "Composition (default: the search's).")
_NUM = flags.DEFINE_integer("num", 64, "Random cells of the search's draw.")
_BATCH = flags.DEFINE_integer("batch", 64, "Largest batch per bucket.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per stage (median).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random cells.")
_COMPILE_SIZES = flags.DEFINE_string("compile_batches", "1,8,64", "Batch sizes to compile.")
_OUT = flags.DEFINE_string("out", "benchmarks/results/step_profile.json", "Report (JSON + .md).")


def _timed(fn, *args, repeats: int):
  """``(median seconds, flops, compile seconds)`` of a jitted ``fn(*args)``."""
  import jax

  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  flops = float((cost or {}).get("flops", float("nan")))
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times), flops, compile_s


def matmul_rate(n: int = 1024, repeats: int = 5) -> float:
  """Measured float32 matmul rate of this core (FLOP/s) on ``n x n`` matrices."""
  import jax
  import jax.numpy as jnp

  a = jnp.ones((n, n), jnp.float32)
  seconds, _, _ = _timed(lambda x: x @ x, a, repeats=repeats)
  del jax
  return 2 * n**3 / seconds


def profile_bucket(ff, structures, *, optimizer_params, repeats: int) -> dict:
  """Per-stage seconds and FLOPs for one batch of one bucket (see the module docstring)."""
  import numpy as np

  from crystal_search import crystals as crystals_lib
  from crystal_search import graphs, relax
  from crystal_search.models import force_stress, megnet

  batch = crystals_lib.from_structures(structures)
  ff = ff.sized_for(batch)  # the capacity and image range the relaxer gives this bucket
  config, variables, capacity = ff.config, ff.variables, ff.capacity
  batch = megnet.cast_crystals(config, batch)
  cutoff, images = float(config.cutoff), int(config.max_images)
  fict = force_stress.fictitious_kind(config)

  def neighbours(c):
    return graphs.compute_neighbors(c, cutoff=cutoff, capacity=capacity, images=images)

  def graph(c, nb):
    return graphs.build_graph(c, nb, fictitious=fict)

  def network(params, g):
    return force_stress.apply_graph(config, params, g)

  nb = neighbours(batch)
  g = graph(batch, nb)
  stages = {}
  stages["neighbours"] = _timed(neighbours, batch, repeats=repeats)
  stages["graph"] = _timed(graph, batch, nb, repeats=repeats)
  stages["network"] = _timed(network, variables["params"], g, repeats=repeats)
  stages["force_field"] = _timed(lambda c: ff(c), batch, repeats=repeats)
  state = relax.fresh_state(batch, memory=relax.state.lbfgs_memory(optimizer_params))
  out = ff(batch)
  state = relax.observe(state, out, optimizer_params)
  stages["update"] = _timed(lambda s: relax.move(s, optimizer_params), state, repeats=repeats)
  stages["checks"] = _timed(
    lambda s: relax.observe(s, out, optimizer_params), state, repeats=repeats
  )
  stages["overlap_test"] = _timed(
    lambda c: relax.overlap_ratio(c, min_distance=0.5, overlap_fraction=0.5), batch, repeats=repeats
  )
  b = len(structures)
  real_edges = np.asarray(nb.count)
  return {
    "batch": b,
    "atoms_per_cell": sorted({len(s) for s in structures}),
    "edge_capacity": int(capacity),
    "real_edges_mean": float(real_edges.mean()),
    "stages": {
      k: {"seconds_per_structure_step": t / b, "flops_per_structure_step": f / b, "compile_s": c}
      for k, (t, f, c) in stages.items()
    },
  }


def profile_relax_loop(ff, structures, *, config) -> dict:
  """A whole relaxation of ``structures`` (warm: run twice, the second timed)."""
  from crystal_search import relax

  relax.relax_structures(structures, ff, config=config)
  stats: dict = {}
  t0 = time.perf_counter()
  results = relax.relax_structures(structures, ff, config=config, stats=stats)
  wall = time.perf_counter() - t0
  steps = stats["structure_steps"]
  atoms = sum(len(r.final) * r.steps for r in results)
  return {
    "wall_s": wall,
    "structure_steps": steps,
    "slot_steps": stats["slot_steps"],
    "host_seconds": stats.get("host_seconds"),
    "seconds_per_structure_step": wall / max(steps, 1),
    "atom_steps_per_s": atoms / wall,
    "converged": sum(r.converged for r in results),
    "failed": sum(r.failed for r in results),
  }


def compile_times(ff, structures, *, config, batch_sizes) -> dict:
  """Seconds to compile the relaxer's chunk program, per bucket width and batch size."""
  import jax

  from crystal_search import crystals as crystals_lib
  from crystal_search import relax
  from crystal_search.relax import driver

  params = relax.DynamicsParams.from_config(config)
  out = {}
  by_width: dict[int, list] = {}
  for s in structures:
    by_width.setdefault(crystals_lib.bucket_size(len(s)), []).append(s)
  for width, group in sorted(by_width.items()):
    sized = ff.sized_for(crystals_lib.from_structures(group, max_atoms=width))
    for b in batch_sizes:
      picked = (group * b)[:b]
      state = relax.fresh_state(
        crystals_lib.from_structures(picked, max_atoms=width),
        memory=relax.state.lbfgs_memory(params),
      )
      traj = relax.state.empty_trajectory(1, b, width)
      runner = driver._chunk_fn(sized, params, int(config.chunk_steps), 0)
      t0 = time.perf_counter()
      jax.jit(runner).lower(state, traj, np.int32(b + 1)).compile()
      out[f"{width}x{b}"] = time.perf_counter() - t0
  return out


def main(argv):
  del argv
  import os

  from crystal_search import crystals as crystals_lib
  from crystal_search import relax, search
  from crystal_search.force_fields.registry import make_force_field

  search_cfg = search.get_search_config()
  composition = _COMPOSITION.value or search_cfg.composition
  cells = _common.search_cells(composition, _NUM.value, seed=_SEED.value)
  relax_cfg = relax.make_config(
    optimizer=search_cfg.optimizer,
    fmax=search_cfg.fmax,
    smax=search_cfg.smax,
    max_steps=search_cfg.max_steps,
  )
  params = relax.DynamicsParams.from_config(relax_cfg)
  rate = matmul_rate()
  report = {
    "command": _common.command_line(),
    "machine": _common.machine(affinity=sorted(os.sched_getaffinity(0))),
    "date": time.strftime("%Y-%m-%d"),
    "composition": composition,
    "cells": len(cells),
    "matmul_flops_per_s": rate,
    "models": {},
  }
  for name in [m.strip() for m in _MODELS.value.split(",") if m.strip()]:
    ff = make_force_field("model", model=name)
    by_width: dict[int, list] = {}
    for s in cells:
      by_width.setdefault(crystals_lib.bucket_size(len(s)), []).append(s)
    buckets = {}
    for width, group in sorted(by_width.items()):
      row = profile_bucket(
        ff, group[: _BATCH.value], optimizer_params=params, repeats=_REPEATS.value
      )
      for stage in row["stages"].values():
        stage["fraction_of_matmul_rate"] = (
          stage["flops_per_structure_step"] / stage["seconds_per_structure_step"] / rate
        )
      buckets[str(width)] = row
    sizes = [int(x) for x in _COMPILE_SIZES.value.split(",")]
    report["models"][name] = {
      "buckets": buckets,
      "relax_loop": profile_relax_loop(ff, cells, config=relax_cfg),
      "compile_s": compile_times(ff, cells, config=relax_cfg, batch_sizes=sizes),
    }
  _common.write_report(_OUT.value, report, _markdown(report))


def _markdown(report: dict) -> list[str]:
  lines = [
    "# Where a relaxation step goes",
    "",
    f"`{report['command']}` on {_common.describe(report['machine'])}, {report['date']}; "
    f"{report['cells']} cells of the search's draw ({report['composition']}); "
    f"float32 matmul rate of this core {report['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s.",
    "",
  ]
  for name, m in report["models"].items():
    lines += [f"## {name}", ""]
    for width, row in m["buckets"].items():
      lines += [
        f"Bucket of {width} atom slots: batch {row['batch']}, cells of {row['atoms_per_cell']} "
        f"atoms, edge capacity {row['edge_capacity']} per structure, "
        f"{row['real_edges_mean']:.0f} real edges on average.",
        "",
        *_common.table_head(
          "stage",
          ["ms / structure-step", "MFLOP / structure-step", "% of matmul rate"],
          align="---:",
        ),
      ]
      for stage, s in row["stages"].items():
        lines.append(
          f"| {stage} | {1e3 * s['seconds_per_structure_step']:.3f} | "
          f"{s['flops_per_structure_step'] / 1e6:.2f} | {100 * s['fraction_of_matmul_rate']:.1f} |"
        )
      lines.append("")
    loop = m["relax_loop"]
    host = loop["host_seconds"]
    lines += [
      f"Whole relaxation of the {report['cells']} cells (warm): {loop['wall_s']:.1f} s, "
      f"{1e3 * loop['seconds_per_structure_step']:.2f} ms per structure-step, "
      f"{loop['atom_steps_per_s']:.0f} atom-steps/s, {loop['structure_steps']} structure-steps in "
      f"{loop['slot_steps']} slot-steps, {loop['converged']} converged, {loop['failed']} failed"
      + (f"; {host:.1f} s on the host between chunks." if host is not None else "."),
      "",
      "Compile time of the relaxer's chunk program (width x batch): "
      + ", ".join(f"{k}: {v:.1f} s" for k, v in m["compile_s"].items())
      + ".",
      "",
    ]
  return lines


if __name__ == "__main__":
  app.run(main)
