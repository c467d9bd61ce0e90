"""Throughput of the force/stress network's forward pass on random Li–Si cells (CPU, float32).

Measures structure-steps per second (one step = neighbour list + graph +
forward pass for one structure) on a batch of random Li–Si cells of up to 38
atoms from :mod:`crystal_search.random_structures` (AIRSS-style, minimum
separation and target volumes of that module), reports the compile time apart,
estimates the FLOPs per structure from XLA's cost analysis and from the layer
sizes, and compares the achieved rate with a large float32 matmul timed in the
same run.  Writes ``benchmarks/results/model_throughput.json``.

  python benchmarks/model_throughput.py [--num 64] [--batch 64] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import _common  # benchmarks/_common.py (this folder is on sys.path)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from crystal_search import crystals as cr  # noqa: E402
from crystal_search import graphs, random_structures  # noqa: E402
from crystal_search.models import config as config_lib  # noqa: E402
from crystal_search.models import force_stress  # noqa: E402

COMPOSITIONS = ("LiSi", "Li13Si4", "Li15Si4", "Li7Si3", "Li12Si7", "Li2Si", "Li7Si2", "Li21Si5")


def make_structures(num: int, seed: int, max_atoms: int) -> list:
  out = []
  k = 0
  while len(out) < num:
    comp = COMPOSITIONS[k % len(COMPOSITIONS)]
    try:
      result = random_structures.generate(comp, 1, seed=seed, indices=[k], max_atoms=max_atoms)
      out.extend(result.structures)
    except Exception as e:  # noqa: BLE001 - a composition may not fit max_atoms; skip it.
      print(f"skip {comp}: {type(e).__name__}: {e}")
    k += 1
    if k > 10 * num:
      raise RuntimeError("could not make enough random structures")
  return out[:num]


def analytic_flops(config, n_atoms: float, n_edges: float, n_fict: int) -> float:
  """Multiply-adds x 2 of the dense layers, per structure (ignores gathers and activations)."""
  w, h = config.width, config.head_widths
  nodes = n_atoms + n_fict
  edges = n_edges + n_fict * n_atoms
  macs = nodes * (config.embed_dim * w) + edges * (5 * w)  # input projections
  per_block = edges * (4 * w * w + w * w) + nodes * (3 * w * w + w * w) + (3 * w * w + w * w)
  macs += config.num_blocks * per_block
  head = w * h[0] + h[0] * h[1] + (h[1] + w) * 3
  macs += nodes * head * 2
  return 2.0 * macs


def time_fn(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def matmul_rate(size: int = 2048, repeats: int = 5) -> float:
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
  fn = jax.jit(jnp.matmul)
  seconds = time_fn(fn, a, b, repeats=repeats)
  return 2.0 * size**3 / seconds


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--num", type=int, default=64, help="random structures")
  parser.add_argument("--batch", type=int, default=64, help="structures per forward pass")
  parser.add_argument("--max_atoms", type=int, default=38)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument(
    "--out",
    default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "results", "model_throughput.json"
    ),
  )
  args = parser.parse_args()

  t0 = time.perf_counter()
  structures = make_structures(args.num, args.seed, args.max_atoms)
  gen_seconds = time.perf_counter() - t0
  sizes = np.array([len(s) for s in structures])
  density = np.array([len(s) / s.volume for s in structures])
  slots = cr.bucket_size(int(sizes.max()))
  config = config_lib.get_model_config()
  frozen = config_lib.frozen(config)
  batches = [
    cr.from_structures(structures[k : k + args.batch], max_atoms=slots, batch_size=args.batch)
    for k in range(0, len(structures), args.batch)
  ]
  counts = np.concatenate([graphs.edge_counts(b, config.cutoff) for b in batches])
  counts = counts[: len(structures)]
  capacity = int(max(counts.max(), 1))
  batches = [jax.tree_util.tree_map(jnp.asarray, b) for b in batches]
  variables = force_stress.init(config, jax.random.PRNGKey(args.seed), batches[0])
  n_params = int(sum(x.size for x in jax.tree_util.tree_leaves(variables["params"])))

  def step(variables, batch):
    pred = force_stress.apply(frozen, variables, batch, capacity=capacity)
    return pred.forces, pred.stress, pred.overflow

  def neighbours_only(batch):
    return graphs.graph_from_crystals(
      batch, cutoff=config.cutoff, capacity=capacity, images=config.max_images
    )

  jitted = jax.jit(step)
  t = time.perf_counter()
  lowered = jitted.lower(variables, batches[0])
  compiled = lowered.compile()
  compile_seconds = time.perf_counter() - t
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  out = compiled(variables, batches[0])
  assert not np.any(np.asarray(out[2])[: len(structures)]), "neighbour overflow"

  per_batch = [time_fn(compiled, variables, b, repeats=args.repeats) for b in batches]
  seconds = float(np.sum(per_batch))
  throughput = len(batches) * args.batch / seconds
  real_throughput = len(structures) / seconds
  nb_seconds = float(
    np.sum([time_fn(jax.jit(neighbours_only), b, repeats=args.repeats) for b in batches])
  )
  rate = matmul_rate()
  flops_analytic = analytic_flops(config, sizes.mean(), counts.mean(), 3)
  flops_xla = xla_flops / args.batch
  achieved = flops_xla * len(batches) * args.batch / seconds

  result = {
    "command": _common.command_line(),
    "machine": _common.machine(),
    "workload": {
      "structures": len(structures),
      "compositions": sorted({s.composition.reduced_formula for s in structures}),
      "atoms_mean": float(sizes.mean()),
      "atoms_max": int(sizes.max()),
      "atom_slots": slots,
      "density_atoms_per_A3_mean": float(density.mean()),
      "edges_per_structure_mean": float(counts.mean()),
      "edges_per_atom_mean": float(counts.sum() / sizes.sum()),
      "edge_capacity": capacity,
      "batch_size": args.batch,
      "dtype": config.dtype,
      "model": {k: config[k] for k in ("num_blocks", "width", "embed_dim", "stress_head")},
      "parameters": n_params,
      "generation_seconds": gen_seconds,
    },
    "compile_seconds": compile_seconds,
    "forward_seconds_per_batch": per_batch,
    "structure_steps_per_second": throughput,
    "real_structure_steps_per_second": real_throughput,
    "neighbour_list_and_graph_seconds_total": nb_seconds,
    "neighbour_fraction_of_step": nb_seconds / seconds,
    "flops_per_structure_xla_cost_analysis": flops_xla,
    "flops_per_structure_dense_layers_estimate": flops_analytic,
    "flops_per_structure_dense_layers_padded_estimate": analytic_flops(config, slots, capacity, 3),
    "achieved_flop_rate": achieved,
    "matmul_2048_flop_rate": rate,
    "fraction_of_matmul_rate": achieved / rate,
  }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  _common.run(main)
