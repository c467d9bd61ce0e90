"""Do committees lower a model's frame errors?  Seed ensembles, weight averages and rotation
averages of fine-tuned force/stress models.

Three standard variance-reduction tricks, all on the same validation and test frames:

* the **ensemble** (mean prediction) of the models in ``--models``
  (:func:`crystal_search.force_fields.ensemble.committee`; by default the fast model
  (``--model=fast``, ``pretrained.py:finetune_mae``), seed 0, and its seed-1 twin, both
  fine-tuned from the same ``pretrained.py`` model);
* their **weight average** ("model soup": the mean of the parameters, one network's cost;
  meaningful only for models fine-tuned from one start, as these are);
* the **rotation average** of the first model over the identity and the six 90-degree turns of
  the training augmentation (``--rotations``, :class:`~crystal_search.force_fields.ensemble.
  RotationAveragedForceField`) on ``--rotation_splits``: a check of how far the network is from
  exactly equivariant.

Force MAE (eV/Å) over the Cartesian components of every real atom, stress MAE (kBar) over the 9
components, as ``crystal-search evaluate`` reports them, on every frame of each split.

    python benchmarks/committees.py --out benchmarks/results/committees.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import _common  # benchmarks/_common.py (this folder is on sys.path)

#: The fast model and its seed-1 twin: two fine-tunes of one start, so their weights can be averaged.
DEFAULT_MODELS = (
  "fast=crystal_search/pretrained/force_stress_fast,"
  "seed1=experiments/results/probes/finetune_mae_seed_1/model"
)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default=DEFAULT_MODELS, help="NAME[=DIR],... (no DIR: shipped)")
  parser.add_argument("--dataset", default="data/dataset")
  parser.add_argument("--splits", default="val,test")
  parser.add_argument("--rotations", default="quarter", help="'quarter', 'cube' or 'none'")
  parser.add_argument("--rotation_splits", default="val")
  parser.add_argument("--out", default="benchmarks/results/committees.json")
  args = parser.parse_args()

  import jax
  import jax.numpy as jnp

  from crystal_search import evaluation
  from crystal_search.datasets import frames as frames_lib
  from crystal_search.force_fields import ensemble
  from crystal_search.force_fields import model as model_ff
  from crystal_search.force_fields.registry import PRETRAINED_DIR
  from crystal_search.models import io as model_io

  t_start = time.perf_counter()
  paths = {
    name: path or os.path.join(PRETRAINED_DIR, "force_stress")
    for name, path in _common.parse_models(args.models).items()
  }
  loaded = {name: model_io.load_model(path) for name, path in paths.items()}
  configs = {name: rec[1].to_dict() for name, rec in loaded.items()}
  first = next(iter(loaded))
  capacity = model_ff.default_capacity(40)

  def force_field(config, variables):
    return model_ff.ModelForceField(
      config, jax.tree_util.tree_map(jnp.asarray, variables), capacity
    )

  members = {name: force_field(rec[1], rec[2]) for name, rec in loaded.items()}
  candidates = dict(members)
  if len(members) > 1:
    candidates["ensemble"] = ensemble.committee(list(members.values()))
    same_config = all(c == configs[first] for c in configs.values())
    norms = [rec[2]["normalization"] for rec in loaded.values()]
    same_norm = all(
      jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool((a == b).all()), norms[0], n))
      for n in norms
    )
    if same_config and same_norm:
      params = [rec[2]["params"] for rec in loaded.values()]
      soup = jax.tree_util.tree_map(lambda *xs: sum(xs) / len(xs), *params)
      candidates["weight average"] = force_field(
        loaded[first][1], {"params": soup, "normalization": norms[0]}
      )
  results: dict = {}
  for split in [s for s in args.splits.split(",") if s]:
    frames = frames_lib.load(os.path.join(args.dataset, f"{split}.npz"))
    rows = {}
    todo = dict(candidates)
    if args.rotations != "none" and split in args.rotation_splits.split(","):
      todo[f"{first} rotation-averaged ({args.rotations})"] = ensemble.RotationAveragedForceField(
        members[first], args.rotations
      )
    for name, ff in todo.items():
      t0 = time.perf_counter()
      batch = 8 if "rotation" in name else 32
      e = evaluation.frame_errors(ff, frames, batch_size=batch)
      rows[name] = {
        "force_mae": e["force_mae"],
        "stress_mae": e["stress_mae"],
        "seconds": round(time.perf_counter() - t0, 1),
      }
      print(split, name, rows[name], flush=True)
    results[split] = {"frames": len(frames), "rows": rows}
  report = {
    "command": _common.command_line(),
    "machine": _common.machine(),
    "models": paths,
    "model_metadata": {
      name: {k: rec[3].get(k) for k in ("config_hash", "data_version")}
      for name, rec in loaded.items()
    },
    "dataset": args.dataset,
    "results": results,
    "wall_s": round(time.perf_counter() - t_start, 1),
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
    f.write(markdown(report))
  print(f"wrote {args.out}")


def markdown(report: dict) -> str:
  lines = [
    "# Committees of force/stress models",
    "",
    f"`{report['command']}`",
    "",
    f"Machine: {_common.describe(report['machine'])}. Models: "
    + ", ".join(f"`{n}` = `{os.path.relpath(p)}`" for n, p in report["models"].items())
    + f". Every frame of each split of `{report['dataset']}`; {report['wall_s']:.0f} s in all.",
    "",
  ]
  for split, entry in report["results"].items():
    rows = entry["rows"]
    base = next(iter(rows.values()))
    lines += [
      f"## {split} ({entry['frames']:,} frames)",
      "",
      "| model | force MAE (eV/Å) | vs first | stress MAE (kBar) | vs first | s |",
      "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
      lines.append(
        f"| {name} | {r['force_mae']:.5f} | {r['force_mae'] / base['force_mae']:.4f} "
        f"| {r['stress_mae']:.4f} | {r['stress_mae'] / base['stress_mae']:.4f} | {r['seconds']} |"
      )
    best_name, best = min(rows.items(), key=lambda kv: kv[1]["force_mae"])
    lines += [
      "",
      f"Lowest force MAE: {best_name}, {100 * (1 - best['force_mae'] / base['force_mae']):.2f} % "
      f"below {next(iter(rows))}.",
      "",
    ]
  return "\n".join(lines)


if __name__ == "__main__":
  _common.run(main)
