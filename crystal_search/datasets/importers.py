"""Reading and writing labelled frames in other formats.

* **extxyz** (ASE): :func:`write_extxyz` / :func:`read_extxyz` — energy (eV),
  forces (eV/Å) and stress in ASE's units and sign (eV/Å^3, tensile positive,
  converted with :mod:`crystal_search.units`), so MACE, NequIP or CHGNet
  fine-tuning scripts can read the data.
* **VASP** ``vasprun.xml`` (plain or ``.gz``), through pymatgen's ``Vasprun``:
  every ionic step (structure, forces eV/Å, stress kBar with VASP's
  compressive-positive sign -> converted, energy eV).
* **The paper's published JSON** (Cheon et al. 2020): one JSON file per
  relaxation holding its ionic steps, each with a pymatgen ``structure`` dict,
  ``forces`` (eV/Å), ``stress`` (kBar, VASP sign) and ``energy`` (eV), in folders
  such as ``Li15Si4_02/data/*.json`` (with a ``summary.txt``).  The list of steps
  may be the top-level JSON value or sit under ``steps``/``ionic_steps``/
  ``trajectory``/``data``.

Every reader returns a :class:`~crystal_search.datasets.frames.Frames` with one
trajectory per relaxation; a corrupt or foreign file raises a one-line
:class:`~crystal_search.errors.InputError`.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import warnings
from collections.abc import Sequence

import numpy as np
from pymatgen.core import Structure

from crystal_search.datasets import frames as frames_lib
from crystal_search.errors import InputError
from crystal_search.units import stress_from_ase, stress_from_vasp, stress_to_ase

_STEP_LIST_KEYS = ("steps", "ionic_steps", "trajectory", "data", "frames")
_ENERGY_KEYS = ("energy", "e_fr_energy", "e_0_energy", "e_wo_entrp", "free_energy")


def _one_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


# ----------------------------------------------------------------------------
# extxyz


def write_extxyz(frames: frames_lib.Frames, path: str) -> None:
  """Write every frame to one extxyz file (ASE units: eV, eV/Å, eV/Å^3 tensile positive).

  Per frame ``info`` holds ``energy``, ``stress`` (Voigt, ASE sign), ``trajectory``
  (name) and ``step``; per atom ``forces``.
  """
  import ase.io
  from ase import Atoms
  from ase.calculators.singlepoint import SinglePointCalculator

  atoms_list = []
  for i in range(len(frames)):
    sl = frames.atom_slice(i)
    lattice = np.asarray(frames.lattice[i], np.float64)
    atoms = Atoms(
      numbers=frames.numbers[sl],
      scaled_positions=np.asarray(frames.positions[sl], np.float64),
      cell=lattice,
      pbc=True,
    )
    energy = float(frames.energy[i])
    calc = SinglePointCalculator(
      atoms,
      energy=energy if np.isfinite(energy) else None,
      forces=np.asarray(frames.forces[sl], np.float64),
      stress=stress_to_ase(np.asarray(frames.stress[i], np.float64)),
    )
    atoms.calc = calc
    t = int(frames.trajectory[i])
    atoms.info["trajectory"] = frames.trajectory_names[t] if frames.trajectory_names else str(t)
    atoms.info["step"] = int(frames.step[i])
    atoms_list.append(atoms)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = path + ".tmp"
  ase.io.write(tmp, atoms_list, format="extxyz")
  os.replace(tmp, path)


def read_extxyz(path: str) -> frames_lib.Frames:
  """Read an extxyz file with energy/forces/stress (ASE units and sign) into Frames."""
  import ase.io

  if not os.path.exists(path):
    raise InputError(f"{path}: no such file")
  try:
    atoms_list = ase.io.read(path, index=":", format="extxyz")
  except Exception as e:  # noqa: BLE001
    raise InputError(f"{path}: cannot read extxyz ({_one_line(e)})") from None
  if not atoms_list:
    raise InputError(f"{path}: no frames")
  names: list[str] = []
  records = []
  for k, atoms in enumerate(atoms_list):
    try:
      forces = atoms.get_forces()
      stress = stress_from_ase(atoms.get_stress(voigt=False))
    except Exception:  # noqa: BLE001
      raise InputError(f"{path}: frame {k} has no forces or stress") from None
    try:
      energy = float(atoms.get_potential_energy())
    except Exception:  # noqa: BLE001 - energy is optional
      energy = float("nan")
    name = str(atoms.info.get("trajectory", os.path.basename(path)))
    if name not in names:
      names.append(name)
    records.append(
      {
        "numbers": atoms.numbers,
        "positions": atoms.get_scaled_positions(wrap=False),
        "forces": forces,
        "lattice": np.asarray(atoms.cell[:]),
        "stress": stress,
        "energy": energy,
        "trajectory": names.index(name),
        "step": int(atoms.info.get("step", k)),
      }
    )
  return frames_lib.from_arrays(
    records, trajectory_names=names, metadata={"source": os.path.abspath(path)}
  )


# ----------------------------------------------------------------------------
# VASP


def read_vasprun(path: str, *, name: str | None = None) -> frames_lib.Frames:
  """Every ionic step of a ``vasprun.xml`` (or ``.gz``) as one trajectory.

  Stress is converted from VASP's sign (kBar, compressive positive) to the
  project's (tensile positive); energy is ``e_fr_energy`` (eV, free energy, what
  VASP's forces are the derivative of).
  """
  from pymatgen.io.vasp import Vasprun

  if not os.path.exists(path):
    raise InputError(f"{path}: no such file")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      run = Vasprun(
        path,
        parse_dos=False,
        parse_eigen=False,
        parse_projected_eigen=False,
        parse_potcar_file=False,
        exception_on_bad_xml=True,
      )
  except Exception as e:  # noqa: BLE001
    raise InputError(f"{path}: not a readable vasprun.xml ({_one_line(e)})") from None
  steps = run.ionic_steps
  if not steps:
    raise InputError(f"{path}: vasprun.xml has no ionic steps")
  records = []
  for k, step in enumerate(steps):
    if "forces" not in step or "stress" not in step:
      raise InputError(f"{path}: ionic step {k} lacks forces or stress")
    s: Structure = step["structure"]
    records.append(
      {
        "numbers": s.atomic_numbers,
        "positions": s.frac_coords,
        "forces": np.asarray(step["forces"], np.float64),
        "lattice": s.lattice.matrix,
        "stress": stress_from_vasp(np.asarray(step["stress"], np.float64)),
        "energy": float(step.get("e_fr_energy", np.nan)),
        "trajectory": 0,
        "step": k,
      }
    )
  label = name or os.path.basename(os.path.dirname(os.path.abspath(path))) or path
  meta = {"source": os.path.abspath(path), "format": "vasprun", "converged": bool(run.converged)}
  return frames_lib.from_arrays(records, trajectory_names=[label], metadata=meta)


# ----------------------------------------------------------------------------
# The paper's JSON


def _load_json(path: str):
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rt") as f:
      return json.load(f)
  except Exception as e:  # noqa: BLE001
    raise InputError(f"{path}: not valid JSON ({_one_line(e)})") from None


def _step_list(data, path: str) -> list:
  if isinstance(data, list):
    return data
  if isinstance(data, dict):
    for key in _STEP_LIST_KEYS:
      if isinstance(data.get(key), list):
        return data[key]
    if "structure" in data:
      return [data]
  raise InputError(
    f"{path}: not a relaxation JSON (expected a list of steps or a dict with one of "
    f"{', '.join(_STEP_LIST_KEYS)})"
  )


def read_paper_json(path: str, *, name: str | None = None) -> frames_lib.Frames:
  """One relaxation in the paper's published JSON schema (VASP stress sign) as Frames."""
  steps = _step_list(_load_json(path), path)
  if not steps:
    raise InputError(f"{path}: relaxation JSON has no steps")
  records = []
  for k, step in enumerate(steps):
    if not isinstance(step, dict) or "structure" not in step:
      raise InputError(f"{path}: step {k} has no 'structure'")
    try:
      s = Structure.from_dict(step["structure"])
      forces = np.asarray(step["forces"], np.float64).reshape(len(s), 3)
      stress = stress_from_vasp(np.asarray(step["stress"], np.float64).reshape(3, 3))
    except KeyError as e:
      raise InputError(f"{path}: step {k} lacks {e}") from None
    except Exception as e:  # noqa: BLE001
      raise InputError(f"{path}: step {k} is malformed ({_one_line(e)})") from None
    energy = next((step[key] for key in _ENERGY_KEYS if key in step), float("nan"))
    try:
      energy = float(energy)
    except (TypeError, ValueError):
      raise InputError(f"{path}: step {k} energy {energy!r} is not a number") from None
    records.append(
      {
        "numbers": s.atomic_numbers,
        "positions": s.frac_coords,
        "forces": forces,
        "lattice": s.lattice.matrix,
        "stress": stress,
        "energy": energy,
        "trajectory": 0,
        "step": int(step.get("step", k)),
      }
    )
  label = name or os.path.splitext(os.path.basename(path))[0]
  meta = {"source": os.path.abspath(path), "format": "paper-json"}
  return frames_lib.from_arrays(records, trajectory_names=[label], metadata=meta)


def write_paper_json(frames: frames_lib.Frames, path: str) -> None:
  """Write one trajectory of ``frames`` in the paper's JSON schema (VASP stress sign)."""
  from crystal_search.units import stress_to_vasp

  steps = []
  for i in range(len(frames)):
    sl = frames.atom_slice(i)
    steps.append(
      {
        "structure": frames.structure(i).as_dict(),
        "forces": np.asarray(frames.forces[sl], np.float64).tolist(),
        "stress": stress_to_vasp(np.asarray(frames.stress[i], np.float64)).tolist(),
        "energy": float(frames.energy[i]),
      }
    )
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(steps, f)


def stoichiometry_of_folder(folder: str) -> str:
  """``'Li15Si4_02'`` -> ``'Li15Si4'`` (the part before the last underscore, if any)."""
  base = os.path.basename(os.path.normpath(folder))
  head, sep, tail = base.rpartition("_")
  return head if sep and tail.isdigit() else base


def find_relaxation_files(root: str) -> list[str]:
  """All importable relaxation files under ``root`` (paper JSON, vasprun.xml[.gz], extxyz)."""
  if os.path.isfile(root):
    return [root]
  if not os.path.isdir(root):
    raise InputError(f"{root}: no such file or folder")
  patterns = ("*.json", "*.json.gz", "vasprun*.xml", "vasprun*.xml.gz", "*.extxyz", "*.xyz")
  found = set()
  for pattern in patterns:
    found.update(glob.glob(os.path.join(root, "**", pattern), recursive=True))
  if not found:
    raise InputError(f"{root}: no relaxation files (*.json, vasprun.xml, *.extxyz) found")
  return sorted(found)


def read_any(path: str) -> frames_lib.Frames:
  """Read one relaxation file by its name (paper JSON, vasprun.xml, extxyz)."""
  lower = os.path.basename(path).lower()
  if lower.startswith("vasprun") and (lower.endswith(".xml") or lower.endswith(".xml.gz")):
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return read_vasprun(path, name=f"{parent}/{lower}")
  if lower.endswith((".json", ".json.gz")):
    # Name the trajectory after its folder too: Li15Si4_02/data/0001.json -> Li15Si4_02/0001.
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.basename(folder) == "data":
      folder = os.path.dirname(folder)
    stem = lower.split(".json")[0]
    return read_paper_json(path, name=f"{os.path.basename(folder)}/{stem}")
  if lower.endswith((".extxyz", ".xyz")):
    return read_extxyz(path)
  raise InputError(f"{path}: unknown relaxation file type (expected .json, vasprun.xml, .extxyz)")


def import_folder(root: str, *, stoichiometry: str | None = None) -> list[frames_lib.Frames]:
  """Every relaxation under ``root``, one Frames (one trajectory) each.

  The stoichiometry of each relaxation (stored in its metadata as ``formula``) is
  ``stoichiometry`` if given, else the reduced formula of its first frame.
  """
  out = []
  for path in find_relaxation_files(root):
    frames = read_any(path)
    formula = stoichiometry or frames.structure(0).composition.reduced_formula
    frames.metadata.update(formula=formula, failed=False, converged=None)
    out.append(frames)
  return out


def read_summary(folder: str) -> str | None:
  """The ``summary.txt`` of a published-data folder, if any."""
  path = os.path.join(folder, "summary.txt")
  if os.path.exists(path):
    with open(path) as f:
      return f.read()
  return None


def save_imported(parts: Sequence[frames_lib.Frames], output_dir: str) -> list[str]:
  """Write imported relaxations in the teacher layout ``<Formula>/<name>.npz`` (for the builder)."""
  written = []
  for frames in parts:
    formula = frames.metadata.get("formula") or frames.structure(0).composition.reduced_formula
    name = frames.trajectory_names[0].replace("/", "__").replace(os.sep, "__")
    frames.metadata.setdefault("name", name)
    frames.metadata.setdefault("steps", len(frames))
    frames.metadata.setdefault("n_atoms", int(frames.n_atoms[0]) if len(frames) else 0)
    path = os.path.join(output_dir, formula, f"{name}.npz")
    frames.save(path)
    written.append(path)
  return written
