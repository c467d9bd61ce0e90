r"""The paper's evaluation of one model (or baseline): ``crystal-search evaluate --workdir=DIR``.

Writes ``eval.json`` and ``eval.md`` (into the workdir, or ``--output_dir``):

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
import time

import numpy as np
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
  from crystal_search import evaluation, metrics, plots, relax
  from crystal_search.datasets import frames as frames_lib

  dataset = _dataset_path()
  if not os.path.isdir(dataset):
    raise InputError(f"{dataset}: no dataset directory")
  force_field = _force_field()
  out_dir = _OUTPUT_DIR.value or _WORKDIR.value
  if not out_dir:
    raise InputError("pass --output_dir (or --workdir)")
  os.makedirs(out_dir, exist_ok=True)

  def maybe(name):
    path = os.path.join(dataset, f"{name}.npz")
    return frames_lib.load(path) if os.path.exists(path) else None

  reference = metrics.load_reference_phases()
  li15si4 = next((s for n, s in reference.items() if n.startswith("Li15Si4")), None)
  report: dict = {
    "name": _NAME.value or getattr(force_field, "name", _FORCE_FIELD.value),
    "dataset": os.path.abspath(dataset),
    "data_version": evaluation.test_data_version(dataset),
    "max_frames": _MAX_FRAMES.value,
    "max_trajectories": _MAX_TRAJ.value,
  }
  if _FORCE_FIELD.value == "model":
    # Force/stress networks with equivariant heads add the rotation average of the trainer's
    # output offsets (crystal_search.models.force_stress.output_normalization); an eval.json
    # without this key used the offsets as stored (make_tables marks such rows).
    report["output_offsets"] = "rotation-averaged"
  if _FORCE_FIELD.value == "model" and (len(_MODEL.value or ()) > 1 or _ROTATIONS.value != "none"):
    report["committee"] = {"models": list(_MODEL.value or ()), "rotations": _ROTATIONS.value}
  # The relaxer's failure thresholds shape the trajectory metrics (a run flagged as failed
  # stops); eval.json files without this key were made with the flat 0.5 Å overlap check.
  relax_defaults = relax.get_relax_config()
  report["relax_checks"] = {
    key: relax_defaults[key] for key in ("min_distance", "overlap_fraction", "min_cell_height")
  }
  t0 = time.perf_counter()
  curves: dict[str, list[float]] = {}
  for split, traj_split in (("test", "test_trajectories"), ("holdout", "holdout_trajectories")):
    entry: dict = {}
    frames = maybe(split)
    if frames is not None and _MAX_FRAMES.value is not None and len(frames) > _MAX_FRAMES.value:
      rng = np.random.default_rng(0)
      frames = frames.select(np.sort(rng.choice(len(frames), _MAX_FRAMES.value, replace=False)))
    if frames is not None and len(frames):
      errors = evaluation.frame_errors(force_field, frames)
      entry.update(force_mae=errors["force_mae"], stress_mae=errors["stress_mae"])
      entry["frames"] = errors["frames"]
      pred = errors["predictions"]
      np.savez_compressed(
        os.path.join(out_dir, f"predictions_{split}.npz"),
        forces_true=frames.forces,
        forces_pred=pred["forces"],
        stress_true=frames.stress,
        stress_pred=pred["stress"],
      )
      plots.parity(
        frames.forces,
        pred["forces"],
        frames.stress,
        pred["stress"],
        os.path.join(out_dir, f"parity_{split}.png"),
        title=f"{report['name']}: {split}",
      )
    trajectories = maybe(traj_split)
    if trajectories is not None and len(trajectories):
      scores = evaluation.trajectory_scores(
        force_field,
        trajectories,
        max_trajectories=_MAX_TRAJ.value,
        progress=not _QUIET.value,
      )
      entry.update(scores)
      if scores.get("matched_by_step"):
        curves[split] = scores["matched_by_step"]
      if split == "holdout" and li15si4 is not None:
        entry.update(evaluation.experimental_recovery(force_field, trajectories, li15si4))
    report[split] = entry
  report["wall_time_s"] = time.perf_counter() - t0
  report["machine"] = machine_name()
  if curves:
    plots.matched_by_step(curves, os.path.join(out_dir, "matched_by_step.png"))
  with open(os.path.join(out_dir, "eval.json"), "w") as f:
    json.dump(report, f, indent=2)
  lines = [f"# Evaluation: {report['name']}", "", f"dataset: `{report['dataset']}`", ""]
  lines += ["| split | force MAE (eV/Å) | stress MAE (kBar) | relaxed match | trajectory match |"]
  lines += ["|---|---:|---:|---:|---:|"]
  for split in ("test", "holdout"):
    e = report.get(split, {})

    def fmt(key, e=e):
      v = e.get(key)
      return "–" if v is None else f"{v:.4g}"

    lines.append(
      f"| {split} | {fmt('force_mae')} | {fmt('stress_mae')} | {fmt('relaxed_match')} | "
      f"{fmt('trajectory_match')} |"
    )
  h = report.get("holdout", {})
  if "experimental_in_teacher" in h:
    lines += [
      "",
      f"Li15Si4 experimental structure: teacher found it in {h['experimental_in_teacher']} "
      f"trajectories; the model reproduces {h['experimental_found']} of them.",
    ]
  with open(os.path.join(out_dir, "eval.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  run(main)
