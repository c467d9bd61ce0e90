"""The report of one evaluation (``crystal-search evaluate``): ``eval.json``, ``eval.md`` and figures.

:func:`evaluate_dataset` scores a force field on a dataset folder with :mod:`crystal_search.evaluation`
and writes into an output folder:

* ``eval.json``: force MAE (eV/Å) and stress MAE (kBar) on the test and held-out frames,
  relaxed-structure match and matches in trajectory on their whole trajectories, the Li15Si4
  experimental-structure recovery, the data version, the relaxer's failure checks, the wall time
  (s) and the machine;
* ``eval.md``: the same as a table;
* ``predictions_{split}.npz`` and ``parity_{split}.png`` per frame split, and
  ``matched_by_step.png``.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

#: (frame split, trajectory split) pairs of a dataset folder, in report order.
SPLITS = (("test", "test_trajectories"), ("holdout", "holdout_trajectories"))
#: Relaxer settings recorded in ``eval.json``: its failure thresholds shape the trajectory
#: metrics (a run flagged as failed stops).
RELAX_CHECKS = ("min_distance", "overlap_fraction", "min_cell_height")


def evaluate_dataset(
  force_field,
  dataset: str,
  output_dir: str,
  *,
  name: str,
  kind: str = "model",
  committee: dict | None = None,
  max_frames: int | None = None,
  max_trajectories: int | None = None,
  machine: str | None = None,
  progress: bool = True,
) -> dict:
  """Evaluate ``force_field`` on the dataset folder ``dataset``; write the report into
  ``output_dir`` (created) and return it (the contents of ``eval.json``).

  Args:
    force_field: the force field under test.
    dataset: folder with ``test.npz``, ``holdout.npz`` and their ``*_trajectories.npz`` (each
      optional).
    output_dir: where ``eval.json``, ``eval.md``, predictions and figures go.
    name: the row name in the results tables.
    kind: ``'model'`` (a trained network: its output offsets are rotation-averaged, recorded
      as ``output_offsets``), ``'meam'`` or ``'chgnet'``.
    committee: ``{'models', 'rotations'}`` of a committee force field, recorded as is.
    max_frames: force/stress MAE on a seeded random subset of this many frames per split.
    max_trajectories: relax only the first trajectories of each split.
    machine: the machine the evaluation runs on, in one line.
    progress: show progress bars.
  """
  from crystal_search import metrics

  os.makedirs(output_dir, exist_ok=True)
  reference = metrics.load_reference_phases()
  li15si4 = next((s for n, s in reference.items() if n.startswith("Li15Si4")), None)
  report = _header(
    dataset,
    name=name,
    kind=kind,
    committee=committee,
    max_frames=max_frames,
    max_trajectories=max_trajectories,
  )
  t0 = time.perf_counter()
  curves: dict[str, list[float]] = {}
  for split, trajectory_split in SPLITS:
    frames = _frames(dataset, split, max_frames=max_frames)
    if frames is not None and len(frames):
      entry = _frame_errors(force_field, frames, output_dir, split, title=f"{name}: {split}")
    else:
      entry = {}
    trajectories = _frames(dataset, trajectory_split)
    if trajectories is not None and len(trajectories):
      entry.update(
        _trajectory_scores(
          force_field,
          trajectories,
          reference=li15si4 if split == "holdout" else None,
          max_trajectories=max_trajectories,
          progress=progress,
        )
      )
      if entry.get("matched_by_step"):
        curves[split] = entry["matched_by_step"]
    report[split] = entry
  report["wall_time_s"] = time.perf_counter() - t0
  report["machine"] = machine
  if curves:
    from crystal_search import plots

    plots.matched_by_step(curves, os.path.join(output_dir, "matched_by_step.png"))
  write_report(report, output_dir)
  return report


def _header(
  dataset: str,
  *,
  name: str,
  kind: str,
  committee: dict | None,
  max_frames: int | None,
  max_trajectories: int | None,
) -> dict:
  """What was evaluated, on which data, with which relaxer checks."""
  from crystal_search import evaluation, relax

  report: dict = {
    "name": name,
    "dataset": os.path.abspath(dataset),
    "data_version": evaluation.test_data_version(dataset),
    "max_frames": max_frames,
    "max_trajectories": max_trajectories,
  }
  if kind == "model":
    # Force/stress networks with equivariant heads add the rotation average of the trainer's
    # output offsets (crystal_search.models.force_stress.output_normalization); an eval.json
    # without this key used the offsets as stored (make_tables marks such rows).
    report["output_offsets"] = "rotation-averaged"
    if committee:
      report["committee"] = dict(committee)
  # eval.json files without relax_checks were made with the flat 0.5 Å overlap check.
  relax_defaults = relax.get_relax_config()
  report["relax_checks"] = {key: relax_defaults[key] for key in RELAX_CHECKS}
  return report


def _frames(dataset: str, split: str, *, max_frames: int | None = None):
  """The frames of ``dataset/{split}.npz`` (None without the file), at most ``max_frames`` of
  them (a seeded random subset in file order)."""
  from crystal_search.datasets import frames as frames_lib

  path = os.path.join(dataset, f"{split}.npz")
  if not os.path.exists(path):
    return None
  frames = frames_lib.load(path)
  if max_frames is not None and len(frames) > max_frames:
    rng = np.random.default_rng(0)
    frames = frames.select(np.sort(rng.choice(len(frames), max_frames, replace=False)))
  return frames


def _frame_errors(force_field, frames, output_dir: str, split: str, *, title: str) -> dict:
  """Force MAE (eV/Å) and stress MAE (kBar) on ``frames``; writes ``predictions_{split}.npz``
  and ``parity_{split}.png``."""
  from crystal_search import evaluation, plots

  errors = evaluation.frame_errors(force_field, frames)
  pred = errors["predictions"]
  np.savez_compressed(
    os.path.join(output_dir, f"predictions_{split}.npz"),
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
    os.path.join(output_dir, f"parity_{split}.png"),
    title=title,
  )
  return {
    "force_mae": errors["force_mae"],
    "stress_mae": errors["stress_mae"],
    "frames": errors["frames"],
  }


def _trajectory_scores(
  force_field,
  trajectories,
  *,
  reference,
  max_trajectories: int | None,
  progress: bool,
) -> dict:
  """Relaxed-structure match and matches in trajectory; with a ``reference`` structure (the
  held-out split's Li15Si4), also its recovery (:func:`evaluation.experimental_recovery`)."""
  from crystal_search import evaluation

  scores = evaluation.trajectory_scores(
    force_field, trajectories, max_trajectories=max_trajectories, progress=progress
  )
  if reference is not None:
    scores.update(evaluation.experimental_recovery(force_field, trajectories, reference))
  return scores


def markdown(report: dict) -> str:
  """``eval.md`` of a report (without its final newline): the table of both splits and the
  Li15Si4 recovery."""
  lines = [f"# Evaluation: {report['name']}", "", f"dataset: `{report['dataset']}`", ""]
  lines += ["| split | force MAE (eV/Å) | stress MAE (kBar) | relaxed match | trajectory match |"]
  lines += ["|---|---:|---:|---:|---:|"]
  for split, _ in SPLITS:
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
  return "\n".join(lines)


def write_report(report: dict, output_dir: str) -> None:
  """Write ``eval.json`` and ``eval.md`` of ``report`` into ``output_dir``."""
  with open(os.path.join(output_dir, "eval.json"), "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(output_dir, "eval.md"), "w") as f:
    f.write(markdown(report) + "\n")
