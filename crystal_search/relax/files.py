"""Relaxing structure files (the ``relax`` binary) and writing trajectories as extxyz."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable

import ml_collections
import numpy as np
from pymatgen.core import Structure

from crystal_search import crystals as crystals_lib
from crystal_search.errors import InputError
from crystal_search.relax.config import make_config
from crystal_search.relax.driver import RelaxResult, check_inputs, relax_structures


def trajectory_atoms(result: RelaxResult) -> list:
  """A result's trajectory as ASE ``Atoms`` with single-point energy, forces and stress.

  Stress is converted to ASE's eV/Å^3 with :func:`crystal_search.units.stress_to_ase`.
  """
  from ase import Atoms
  from ase.calculators.singlepoint import SinglePointCalculator

  from crystal_search.units import stress_to_ase

  if result.trajectory is None:
    raise ValueError("this result has no trajectory (relax with trajectory_every >= 1)")
  t = result.trajectory
  numbers = result.final.atomic_numbers
  out = []
  for k in range(len(t["step"])):
    lattice = np.asarray(t["lattice"][k], np.float64)
    atoms = Atoms(
      numbers=numbers,
      scaled_positions=np.asarray(t["positions"][k], np.float64),
      cell=lattice,
      pbc=True,
    )
    energy = float(t["energy"][k])
    atoms.calc = SinglePointCalculator(
      atoms,
      energy=energy if math.isfinite(energy) else None,
      forces=np.asarray(t["forces"][k], np.float64),
      stress=stress_to_ase(np.asarray(t["stress"][k], np.float64)),
    )
    atoms.info["step"] = int(t["step"][k])
    out.append(atoms)
  return out


def write_trajectory(result: RelaxResult, path: str) -> None:
  """Write a result's trajectory as extxyz (positions Å, forces eV/Å, stress eV/Å^3, ASE sign)."""
  import ase.io

  tmp = f"{path}.tmp{os.getpid()}"
  ase.io.write(tmp, trajectory_atoms(result), format="extxyz")
  os.replace(tmp, path)


def relax_files(
  pattern: str,
  force_field,
  output_dir: str,
  *,
  config: ml_collections.ConfigDict | dict | None = None,
  trajectories: bool = False,
  batch_size: int | None = None,
  progress: bool = False,
  log: Callable[[str], None] | None = None,
) -> dict:
  """Relax every structure in the files matched by ``pattern``; write CIFs and a summary.

  Writes ``<output_dir>/<name>.cif`` for every relaxed structure that did not fail,
  ``<output_dir>/trajectories/<name>.extxyz`` when ``trajectories``, and
  ``<output_dir>/summary.json``.  A file that cannot be read, a structure with an
  element the force field does not know, and a relaxation that fails are each one
  entry in the summary (with ``error``/``failure_reason``) and one line to ``log``;
  the others still run and are written.

  Returns:
    The summary dict (``force_field``, ``settings``, ``structures``: one entry per
    structure or unreadable file, in input order; ``counts``).
  """
  import json

  log = log or (lambda line: print(line, file=sys.stderr))
  cfg = make_config(config, **({"trajectory_every": 1} if trajectories else {}))
  paths = crystals_lib.expand_inputs(pattern)
  os.makedirs(output_dir, exist_ok=True)
  entries: list[dict] = []
  todo: list[tuple[int, Structure]] = []
  names: set[str] = set()
  for path in paths:
    try:
      structures = crystals_lib.read_structures(path, validate=False)  # each checked below
    except InputError as e:
      entries.append({"file": path, "name": None, "error": str(e), "failed": True})
      log(f"error: {e}")
      continue
    stem = os.path.splitext(os.path.basename(path))[0] or "structure"
    for k, s in enumerate(structures):
      name = stem if len(structures) == 1 else f"{stem}_{k}"
      while name in names:
        name += "_"
      names.add(name)
      entry = {
        "file": path,
        "index": k,
        "name": name,
        "formula": s.composition.formula.replace(" ", ""),
        "n_atoms": len(s),
      }
      label = path if len(structures) == 1 else f"{path}[{k}]"
      try:  # an absurd cell, overlapping atoms or a foreign element fail this structure alone
        crystals_lib.validate_structure(s, name=label)
        check_inputs([s], force_field)
        todo.append((len(entries), s))
      except InputError as e:
        entry.update(failed=True, error=str(e))
        log(f"error: {name}: {e}")
      entries.append(entry)
  results = relax_structures(
    [s for _, s in todo], force_field, config=cfg, batch_size=batch_size, progress=progress
  )
  if trajectories:
    os.makedirs(os.path.join(output_dir, "trajectories"), exist_ok=True)
  for (i, _), r in zip(todo, results, strict=True):
    e = entries[i]
    energy = r.energy if math.isfinite(r.energy) else None
    e.update(
      steps=r.steps,
      converged=r.converged,
      failed=r.failed,
      failure_reason=r.failure_reason,
      energy=energy,
      energy_per_atom=None if energy is None else energy / len(r.final),
      max_force=r.max_force,
      max_stress=r.max_stress,
      volume=float(r.final.volume),
    )
    if r.failed:
      log(
        f"error: {e['file']}: {e['name']}: relaxation failed ({r.failure_reason}) at step {r.steps}"
      )
    else:
      e["cif"] = f"{e['name']}.cif"
      r.final.to(filename=os.path.join(output_dir, e["cif"]))
    if trajectories and r.trajectory is not None:
      e["trajectory"] = os.path.join("trajectories", f"{e['name']}.extxyz")
      write_trajectory(r, os.path.join(output_dir, e["trajectory"]))
  counts = {
    "inputs": len(entries),
    "relaxed": len(results),
    "converged": sum(bool(e.get("converged")) for e in entries),
    "failed": sum(bool(e.get("failed")) for e in entries),
  }
  summary = {
    "force_field": getattr(force_field, "name", type(force_field).__name__),
    "settings": cfg.to_dict(),
    "counts": counts,
    "structures": entries,
  }
  tmp = os.path.join(output_dir, f".summary.json.tmp{os.getpid()}")
  with open(tmp, "w") as f:
    json.dump(summary, f, indent=1)
  os.replace(tmp, os.path.join(output_dir, "summary.json"))
  return summary
