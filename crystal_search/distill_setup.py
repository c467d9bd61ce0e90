"""What ``crystal-search distill`` derives for a new chemical system before training a student.

* **Settings** (:class:`DistillConfig`) and their one-line checks, all made before any teacher
  time is spent: elements the teacher covers, compositions inside ``elements``, a budget that
  splits into train, validation and test trajectories.
* **Elemental references**: each element's reference crystal (the hull's,
  :func:`crystal_search.hull.reference_structure`: bcc Li, diamond Si from the Materials Project,
  otherwise ``ase.build.bulk``: diamond Ge, ...) relaxed by the teacher (positions and cell).  Its volume per atom (Å^3) times
  :func:`volume_scale` is the element's volume in the random-cell estimate ``V = sum_i n_i v_i``
  (the Li–Si generator fits these volumes to the known phases instead).  Alloys are denser than
  their elements (the bundled Li–Si phases take 0.75 of their elements' volume, Li15Si4 0.73,
  LiSi 0.78), so the elemental volumes are scaled by the least-squares ratio of the bundled
  phases' volumes to their elements' (the bundled Li and Si reference cells).
* **Minimum separations**: per element pair, the sum of the two covalent radii (ASE's table)
  scaled so that Li–Si gets the paper's 2.28 Å (:data:`SEPARATION_SCALE`; Li–Ge: 2.37 Å,
  Ge–Ge 2.29 Å).
* **Student configs**: the search's screening network (the packaged ``force_stress_tiny``
  model's config) and the packaged energy model's config with the new elements, trained by the
  existing trainer.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import warnings

import ml_collections
import numpy as np
from pymatgen.core import Structure

from crystal_search import random_structures as rs
from crystal_search.compositions import formula_name, parse_composition
from crystal_search.datasets.sampling import SPLITS, split_of
from crystal_search.errors import InputError
from crystal_search.force_fields.registry import PRETRAINED_DIR
from crystal_search.hull import reference_structure

__all__ = [
  "DistillConfig",
  "SEPARATION_SCALE",
  "check_config",
  "generator_settings",
  "pair_min_separations",
  "random_config",
  "reference_structure",
  "student_config",
  "teacher_elements",
  "teacher_files",
  "volume_scale",
]

#: Teachers ``distill`` can label with, and the elements each covers (None: any).
TEACHERS = ("chgnet", "sevennet", "morse")


def _covalent_radius(symbol: str) -> float:
  from ase.data import atomic_numbers, covalent_radii

  return float(covalent_radii[atomic_numbers[symbol]])


#: Scale of the covalent-radius sum that gives the paper's Li–Si minimum separation (2.28 Å).
SEPARATION_SCALE = rs.RandomStructureConfig().min_separation / (
  _covalent_radius("Li") + _covalent_radius("Si")
)


@dataclasses.dataclass(frozen=True)
class DistillConfig:
  """Settings of a distillation run.

  Attributes:
    elements: element symbols of the system, e.g. ``('Li', 'Ge')``.
    compositions: formulas searched and trained on (elements within ``elements``).
    budget_teacher_relaxations: teacher relaxations of random cells in the first round, shared
      round-robin over the compositions.
    rounds: training rounds; every round after the first adds the teacher's labels of the
      previous round's active-learning picks.
    seed: seeds the random cells, the splits and the students.
    teacher: ``chgnet``, ``sevennet`` or ``morse`` (an analytic pair potential for tests).
    max_atoms: largest random cell (atoms).
    teacher_max_steps: step cap of a teacher relaxation (the paper's steepest descent).
    committee: students trained per round (seeds ``seed .. seed+committee-1``); their force
      spread picks the frames the teacher labels; the first is the packaged student.
    epochs: training epochs of the first round (an epoch of ~1,300 frames of up to 20 atoms takes
      ~3.5 s on one core: training is cheap next to the teacher's relaxations).
    finetune_epochs: epochs of a later round, starting from the previous round's student.
    probe_cells: fresh random cells per composition the student relaxes each round.
    label_frames: frames of the student's relaxations with the largest committee spread the
      teacher labels each round (besides every student minimum).
  """

  elements: tuple[str, ...]
  compositions: tuple[str, ...]
  budget_teacher_relaxations: int = 120
  rounds: int = 2
  seed: int = 0
  teacher: str = "chgnet"
  max_atoms: int = 24
  teacher_max_steps: int = 200
  committee: int = 2
  epochs: int = 100
  finetune_epochs: int = 30
  probe_cells: int = 16
  label_frames: int = 32

  def formulas(self) -> list[str]:
    return [formula_name(parse_composition(c)) for c in self.compositions]


@functools.lru_cache(maxsize=1)
def volume_scale() -> float:
  """Least-squares ``s`` in ``V_phase ≈ s * sum_i n_i v_i(element)`` over the bundled Li–Si
  phases, with the volumes per atom of the Li and Si reference cells."""
  from pymatgen.io.cif import CifParser

  phases, elemental = [], []
  cells = {e: reference_structure(e) for e in ("Li", "Si")}
  volumes = {e: cell.volume / len(cell) for e, cell in cells.items()}
  for path in sorted(glob.glob(os.path.join(rs.LISI_PHASES_DIR, "*.cif"))):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      structure = CifParser(path).parse_structures(primitive=False)[0]
    if len(structure.composition) < 2:
      continue
    phases.append(structure.volume)
    elemental.append(sum(n * volumes[el.symbol] for el, n in structure.composition.items()))
  phases, elemental = np.asarray(phases), np.asarray(elemental)
  return float(phases @ elemental / (elemental @ elemental))


def teacher_elements(teacher: str) -> set[str] | None:
  """Elements the teacher covers (None: any): CHGNet and SevenNet-0 were trained on the
  Materials Project, which has elements up to Z = 94."""
  if teacher not in TEACHERS:
    raise InputError(f"teacher {teacher!r}: expected one of {', '.join(TEACHERS)}")
  if teacher == "morse":
    return None
  from pymatgen.core import Element

  return {Element.from_Z(z).symbol for z in range(1, 95)}


def _check_elements(config: DistillConfig) -> None:
  from pymatgen.core import Element

  if len(config.elements) < 1 or len(set(config.elements)) != len(config.elements):
    raise InputError(f"--elements={','.join(config.elements)}: list each element once")
  for symbol in config.elements:
    if not Element.is_valid_symbol(symbol):
      raise InputError(f"--elements: unknown element {symbol!r}")
  covered = teacher_elements(config.teacher)
  missing = [e for e in config.elements if covered is not None and e not in covered]
  if missing:
    raise InputError(
      f"--elements: the teacher {config.teacher} does not cover {', '.join(missing)}"
    )
  for symbol in config.elements:
    reference_structure(symbol)


def check_config(config: DistillConfig) -> None:
  """One-line :class:`InputError` for settings that cannot work, before any teacher time."""
  _check_elements(config)
  if not config.compositions:
    raise InputError("--compositions: give at least one formula, e.g. LiGe")
  for text in config.compositions:
    parse_composition(text, allowed_elements=config.elements)
  formulas = config.formulas()
  if len(set(formulas)) != len(formulas):
    raise InputError(f"--compositions={','.join(config.compositions)}: a formula is listed twice")
  if config.rounds < 1:
    raise InputError(f"--rounds={config.rounds}: need at least 1")
  if config.committee < 1 or config.epochs < 1 or config.finetune_epochs < 1:
    raise InputError("--committee, --epochs and --finetune_epochs must be at least 1")
  if config.probe_cells < 1 or config.label_frames < 0:
    raise InputError("--probe_cells must be at least 1 and --label_frames at least 0")
  if config.teacher_max_steps < 1:
    raise InputError(f"--teacher_max_steps={config.teacher_max_steps}: need at least 1")
  splits = {split_of(name, seed=config.seed) for name in job_names(config)}
  if not set(SPLITS) <= splits:
    raise InputError(
      f"--budget_teacher_relaxations={config.budget_teacher_relaxations}: too small to split "
      f"into train, validation and test trajectories (it gives {', '.join(sorted(splits)) or 'none'})"
    )
  generator = rs.RandomStructureConfig(max_atoms=config.max_atoms)
  rs.check_settings(generator)
  for formula in formulas:
    rs.allowed_formula_units(parse_composition(formula), generator)


def teacher_files(output_dir: str) -> list[str]:
  """The first round's teacher relaxation files of the distill run in ``output_dir``."""
  from crystal_search.datasets.teacher import finished_files

  return finished_files(os.path.join(output_dir, "teacher"))


def job_names(config: DistillConfig) -> list[str]:
  """Names of the first round's teacher relaxations, round-robin over the compositions."""
  from crystal_search.datasets import teacher

  per = -(-config.budget_teacher_relaxations // max(1, len(config.compositions)))
  jobs = teacher.make_jobs(list(config.compositions), per, config.seed)
  return [j.name for j in jobs[: config.budget_teacher_relaxations]]


def pair_min_separations(elements) -> dict[str, float]:
  """``{'A-B': Å}`` for every pair: ``SEPARATION_SCALE * (r_A + r_B)`` (covalent radii)."""
  out = {}
  for i, a in enumerate(elements):
    for b in elements[i:]:
      out[f"{a}-{b}"] = round(SEPARATION_SCALE * (_covalent_radius(a) + _covalent_radius(b)), 3)
  return out


def generator_settings(references: dict, elements) -> dict:
  """The random-cell settings of a system: ``element_volumes`` (Å^3 per atom: the teacher's
  relaxed references times :func:`volume_scale`) and ``pair_min_separation`` (Å)."""
  scale = volume_scale()
  return {
    "element_volumes": {
      e: round(scale * float(references[e]["volume_per_atom"]), 3) for e in elements
    },
    "volume_scale": round(scale, 4),
    "pair_min_separation": pair_min_separations(list(elements)),
  }


def random_config(settings: dict, *, max_atoms: int) -> rs.RandomStructureConfig:
  """The generator's config for a system's :func:`generator_settings`."""
  pairs = settings["pair_min_separation"]
  return rs.RandomStructureConfig(
    max_atoms=int(max_atoms),
    min_separation=float(min(pairs.values())),
    pair_min_separation=tuple(sorted((k, float(v)) for k, v in pairs.items())),
    element_volumes=tuple(sorted((k, float(v)) for k, v in settings["element_volumes"].items())),
  )


def _packaged_model_config(name: str) -> dict:
  with open(os.path.join(PRETRAINED_DIR, name, "model.json")) as f:
    return json.load(f)["config"]


def student_config(
  dataset_dir: str,
  elements,
  *,
  kind: str = "force_stress",
  seed: int = 0,
  epochs: int = 30,
  init_from: str = "",
) -> ml_collections.ConfigDict:
  """A training config for a student: the search's screening network (``force_stress``) or the
  packaged energy model's network (``energy``), with ``elements``, on ``dataset_dir``."""
  from crystal_search import training
  from crystal_search.models import config as model_config

  c = training.get_default_config()
  c.scale = "cpu"
  c.model_kind = kind
  packaged = _packaged_model_config("force_stress_tiny" if kind == "force_stress" else "energy")
  c.model = model_config.from_dict(dict(packaged, elements=list(elements)))
  c.data.path = dataset_dir
  c.data.holdout = ()
  c.data.max_eval_frames = 500
  c.seed = int(seed)
  c.num_epochs = int(epochs)
  c.lr_halving_epochs = max(1, int(epochs) // 3)
  c.patience = int(epochs)
  c.init_from = init_from
  if init_from:
    c.learning_rate = 2.5e-4
  if kind == "energy":
    c.augment.noise_fraction = 0.0
    c.augment.noise_std = 0.0
  return c


def nearest_neighbour(structure: Structure) -> float:
  """Shortest interatomic distance (Å, periodic images included)."""
  return float(rs.min_distance(structure))


def summarize_reference(structure: Structure, energy_ev: float) -> dict:
  """The JSON record of one relaxed elemental reference."""
  n = len(structure)
  return {
    "formula": structure.composition.reduced_formula,
    "atoms": n,
    "volume_per_atom": float(structure.volume / n),
    "energy_per_atom": float(energy_ev / n) if np.isfinite(energy_ev) else None,
    "nearest_neighbour": nearest_neighbour(structure),
    "structure": structure.as_dict(),
  }
