"""How well do energy models rank relaxed search results? Against the teacher's energies.

A search ranks its relaxed cells with the energy model (``crystal_search/pretrained/energy``).
This relaxes ``--num`` seeded random cells per composition with the shipped force/stress model
(the search's generator defaults and the teacher's relaxer settings), then scores every
converged final with each energy model of ``--energy_models`` and with the teacher (CHGNet,
single points), per composition:

* Spearman rank correlation of the model's and the teacher's energies per atom;
* MAE (meV/atom) of the model's energies after removing their mean offset from the teacher's
  (ranking needs only energy differences);
* regret (meV/atom): the teacher's energy of the model's lowest-energy cell above the teacher's
  lowest.

Relaxed finals and teacher energies are cached in ``--work_dir`` (a rerun with other energy
models re-scores without relaxing again; other cells, settings or a different shipped
force/stress model relax again):

    python benchmarks/energy_ranking.py --num=32 --energy_models=shipped,other=RUN_DIR/model
"""

from __future__ import annotations

import argparse
import json
import os
import time

import _common  # benchmarks/_common.py (this folder is on sys.path)
import numpy as np

from crystal_search.relax import teacher_settings

#: The paper's teacher protocol (relax defaults), for every relaxation here.
SETTINGS = teacher_settings()


def relaxed_finals(args, composition: str, force_model: dict) -> list[dict]:
  """Converged finals of ``composition`` (cached): structure dicts, with the teacher's eV/atom.

  ``force_model``: :func:`force_model` of the shipped force/stress model that relaxes them.
  """
  from crystal_search import random_structures, relax

  path = os.path.join(args.work_dir, f"{composition}.json")
  # The cache holds for the same cells, relaxer settings and relaxing model only.
  key = {"num": args.num, "seed": args.seed, "max_steps": args.max_steps, **force_model}
  if os.path.exists(path):
    with open(path) as f:
      cached = json.load(f)
    if cached.get("key") == key:
      return cached["finals"]
    print(f"{path}: made with other settings or another model; relaxing again", flush=True)
  force_field = relax.make_force_field("model")
  made = random_structures.generate(composition, args.num, seed=args.seed)
  t0 = time.perf_counter()
  results = relax.relax_structures(
    made.structures, force_field, max_steps=args.max_steps, **SETTINGS
  )
  t1 = time.perf_counter()
  finals = [r.final for r in results if r.converged and not r.failed]
  teacher = relax.make_force_field("chgnet")
  teacher_e = _common.single_point_energies(teacher, finals)
  rows = [
    {"structure": s.as_dict(), "teacher_energy_per_atom": float(e)}
    for s, e in zip(finals, teacher_e, strict=True)
  ]
  os.makedirs(args.work_dir, exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(
      {"key": key, "relaxed": len(results), "relax_s": round(t1 - t0, 1), "finals": rows}, f
    )
  os.replace(path + ".tmp", path)
  return rows


def force_model() -> dict:
  """The shipped force/stress model's provenance: its run's config hash, data version and best
  epoch."""
  metadata = _common.shipped_metadata("force_stress") or {}
  return {k: metadata.get(k) for k in ("config_hash", "data_version", "best_epoch")}


def score(model_e: np.ndarray, teacher_e: np.ndarray) -> dict:
  """Spearman rho, offset-free MAE and regret (meV/atom) of model vs teacher energies per atom."""
  from scipy.stats import spearmanr

  diff = model_e - teacher_e
  return {
    "n": len(teacher_e),
    "spearman": float(spearmanr(model_e, teacher_e).statistic),
    "offset_free_mae_mev": float(1000 * np.mean(np.abs(diff - diff.mean()))),
    "regret_mev": float(1000 * (teacher_e[np.argmin(model_e)] - teacher_e.min())),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--compositions", default="LiSi,Li2Si,Li7Si2,Li13Si4,Li15Si4")
  parser.add_argument("--num", type=int, default=24, help="random cells per composition")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--max_steps", type=int, default=300)
  parser.add_argument("--energy_models", default="shipped", help="NAME[=MODEL_DIR],...")
  parser.add_argument("--work_dir", default="runs/energy_ranking")
  parser.add_argument("--out", default="benchmarks/results/energy_ranking.json")
  args = parser.parse_args()
  from pymatgen.core import Structure

  from crystal_search import search
  from crystal_search.force_fields import model as model_ff

  models = _common.parse_models(args.energy_models)
  energy_ffs = {
    name: model_ff.from_directory(path or os.path.join(search.PRETRAINED_DIR, "energy"))
    for name, path in models.items()
  }
  result = {
    "command": _common.command_line(),
    "machine": _common.machine(),
    "settings": {**SETTINGS, "max_steps": args.max_steps, "num": args.num, "seed": args.seed},
    "models": {name: path or "shipped" for name, path in models.items()},
    "force_model": force_model(),
    "compositions": {},
  }
  for composition in args.compositions.split(","):
    rows = relaxed_finals(args, composition, result["force_model"])
    structures = [Structure.from_dict(r["structure"]) for r in rows]
    teacher_e = np.array([r["teacher_energy_per_atom"] for r in rows])
    result["compositions"][composition] = {
      name: score(np.asarray(model_ff.energies_per_atom(ff, structures)), teacher_e)
      for name, ff in energy_ffs.items()
    }
    print(composition, result["compositions"][composition], flush=True)
  lines = [
    "# Energy models ranking relaxed random cells, against the teacher",
    "",
    f"`{result['command']}`",
    "",
    f"Machine: {_common.describe(result['machine'])}. Per composition {args.num} seeded random "
    "cells (the search's generator defaults), relaxed by the shipped force/stress model (config "
    f"hash {result['force_model']['config_hash']}) with the teacher's settings "
    f"(≤ {args.max_steps} steps); converged finals scored by each energy model and by CHGNet. ρ: Spearman rank correlation with CHGNet; MAE: meV/atom after "
    "removing the mean offset; regret: CHGNet energy of the model's lowest cell above CHGNet's "
    f"lowest (meV/atom). Models: {', '.join(f'`{k}` = {v}' for k, v in result['models'].items())}."
    " Li15Si4 is held out of every model's training data. Raw numbers: "
    f"`{os.path.basename(args.out)}`.",
    "",
    "| composition | cells | " + " | ".join(f"{name}: ρ · MAE · regret" for name in models) + " |",
    "|---|---:|" + "---|" * len(models),
  ]
  for composition, by_model in result["compositions"].items():
    n = next(iter(by_model.values()))["n"]
    cells = [
      f"{s['spearman']:.3f} · {s['offset_free_mae_mev']:.1f} · {s['regret_mev']:.1f}"
      for s in by_model.values()
    ]
    lines.append(f"| {composition} | {n} | " + " | ".join(cells) + " |")
  for name in models:
    scores = [by_model[name] for by_model in result["compositions"].values()]
    lines.append("")
    lines.append(
      f"- {name}: mean ρ {np.mean([s['spearman'] for s in scores]):.3f}, mean MAE "
      f"{np.mean([s['offset_free_mae_mev'] for s in scores]):.1f} meV/atom, mean regret "
      f"{np.mean([s['regret_mev'] for s in scores]):.1f} meV/atom."
    )
  _common.write_report(args.out, result, lines)


if __name__ == "__main__":
  _common.run(main)
