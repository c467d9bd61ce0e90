r"""The paper's evaluation of one model (or baseline): ``crystal-search evaluate --workdir=DIR``.

Writes ``eval.json`` and ``eval.md`` (into the workdir, or ``--output_dir``; assembled by
:func:`crystal_search.evaluation_report.evaluate_dataset`):

* force MAE (eV/Å) and stress MAE (kBar) on the test frames and the held-out frames;
* relaxed-structure match and matches in trajectory on whole test / held-out trajectories,
  simulated through our relaxer with the teacher's settings for the teacher's number of steps;
* Li15Si4 holdout: how many teacher trajectories end in the experimental structure
  (bundled ``Li15Si4_mp-569849.cif``) and how many of those the model reproduces.

Baselines use the same code: ``--force_field=meam`` (2NN MEAM) or ``--model=DIR`` for any saved
model (an energy model is differentiated by finite differences unless ``--derivative=autodiff``).
Committees (:mod:`crystal_search.force_fields.ensemble`): ``--model=DIR1,DIR2`` evaluates the
mean of several models (e.g. seeds), ``--rotations=quarter|cube`` the mean of each over rotated
copies of every cell.
"""

from __future__ import annotations

import json
import os

from absl import flags

from crystal_search.errors import InputError
from experiments.common import machine_name, run

_WORKDIR = flags.DEFINE_string("workdir", None, "Training run directory (model/ and run.json).")
_MODEL = flags.DEFINE_list(
  "model", None, "Model directory (default: WORKDIR/model); several: their mean (an ensemble)."
)
_ROTATIONS = flags.DEFINE_enum(
  "rotations",
  "none",
  ["none", "quarter", "cube"],
  "Average each force/stress model over rotated copies of every cell: the identity and the six "
  "90-degree turns (quarter, 7x the cost) or the 24 rotations of the cube (cube, 24x).",
)
_DATASET = flags.DEFINE_string("dataset", None, "Dataset directory (default: from run.json).")
_FORCE_FIELD = flags.DEFINE_enum(
  "force_field", "model", ["model", "meam", "chgnet"], "What is evaluated."
)
_DERIVATIVE = flags.DEFINE_enum(
  "derivative", None, ["fd", "autodiff"], "Energy models: forces/stress by FD or autodiff."
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where eval.json/eval.md go.")
_MAX_TRAJ = flags.DEFINE_integer("max_trajectories", None, "Evaluate only the first N.")
_MAX_FRAMES = flags.DEFINE_integer(
  "max_frames", None, "Force/stress MAE on a seeded random subset of N frames per split."
)
_NAME = flags.DEFINE_string("name", None, "Row name in the results tables.")
_QUIET = flags.DEFINE_boolean("quiet", False, "No progress bars.")


def _dataset_path() -> str:
  if _DATASET.value:
    return _DATASET.value
  if not _WORKDIR.value:
    raise InputError("pass --workdir=DIR (a training run) or --dataset=DIR")
  run_file = os.path.join(_WORKDIR.value, "run.json")
  if not os.path.exists(run_file):
    raise InputError(f"{run_file}: no such file (is --workdir a training run?)")
  with open(run_file) as f:
    return json.load(f)["config"]["data"]["path"]


def _force_field():
  if _FORCE_FIELD.value == "meam":
    from crystal_search.force_fields.lammps_meam import MEAMForceField

    return MEAMForceField()
  if _FORCE_FIELD.value == "chgnet":
    from crystal_search.force_fields.chgnet import CHGNetForceField

    return CHGNetForceField()
  from crystal_search.force_fields import ensemble
  from crystal_search.force_fields import model as model_ff

  paths = _MODEL.value or ([os.path.join(_WORKDIR.value, "model")] if _WORKDIR.value else [None])
  members = []
  for path in paths:
    if not path or not os.path.isdir(path):
      raise InputError(f"{path}: no model directory (pass --workdir or --model)")
    members.append(model_ff.from_directory(path, derivative=_DERIVATIVE.value))
  rotations = None if _ROTATIONS.value == "none" else _ROTATIONS.value
  if rotations and not all(isinstance(m, model_ff.ModelForceField) for m in members):
    raise InputError("--rotations: only force/stress models are averaged over rotations")
  if len(members) == 1 and not rotations:
    return members[0]
  return ensemble.committee(members, rotations=rotations)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise InputError(f"unexpected arguments: {' '.join(argv[1:])}")
  from crystal_search import evaluation_report

  dataset = _dataset_path()
  if not os.path.isdir(dataset):
    raise InputError(f"{dataset}: no dataset directory")
  force_field = _force_field()
  out_dir = _OUTPUT_DIR.value or _WORKDIR.value
  if not out_dir:
    raise InputError("pass --output_dir (or --workdir)")
  committee = None
  if _FORCE_FIELD.value == "model" and (len(_MODEL.value or ()) > 1 or _ROTATIONS.value != "none"):
    committee = {"models": list(_MODEL.value or ()), "rotations": _ROTATIONS.value}
  report = evaluation_report.evaluate_dataset(
    force_field,
    dataset,
    out_dir,
    name=_NAME.value or getattr(force_field, "name", _FORCE_FIELD.value),
    kind=_FORCE_FIELD.value,
    committee=committee,
    max_frames=_MAX_FRAMES.value,
    max_trajectories=_MAX_TRAJ.value,
    machine=machine_name(),
    progress=not _QUIET.value,
  )
  print(evaluation_report.markdown(report))


if __name__ == "__main__":
  run(main)
