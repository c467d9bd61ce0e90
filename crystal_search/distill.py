"""Distil a universal teacher into a fast student for a new chemical system, with active learning.

``crystal-search distill --elements=Li,Ge --compositions=LiGe,Li7Ge3 --output_dir=OUT`` runs, in
``OUT`` and resumable at every step (a killed run continues where it stopped):

1. ``references.json``: the elements' reference crystals relaxed by the teacher, and the
   random-cell settings derived from them (:mod:`crystal_search.distill_setup`);
2. ``teacher/``: the first round's teacher relaxations of random cells (the paper's steepest
   descent, one file each, :func:`crystal_search.datasets.teacher.generate`);
3. per round ``r`` (``round_<r>/``):

   a. ``dataset/``: the paper's frame sampling of the teacher trajectories
      (:func:`crystal_search.datasets.sampling.build_dataset`); the teacher's labels of the earlier
      rounds' picks join the training split;
   b. ``student_<k>/``: a committee of students (the search's screening network) trained with the
      existing trainer, from scratch in the first round and fine-tuned from the previous round's
      student after it;
   c. ``eval.json``: the first student's errors on the first round's test split (fixed over
      rounds: the paper's force and stress MAEs, relaxed-structure and trajectory match);
   d. ``probe.npz`` / ``probe.json``: the student relaxes fresh random cells (a small search);
      the teacher labels every student final (``probe_finals.npz``) and the frames of those
      relaxations where the committee's forces disagree most; the probe reports whether the student's search reaches the
      teacher's lowest energy per composition;

4. ``round_<last>/energy/``: an energy student (the packaged energy network) trained on the last
   round's dataset, to rank search results;
5. ``model/``: the packaged student: ``crystal-search search --model=OUT/model`` relaxes with it,
   ranks with ``model/energy/`` and draws cells with ``model/generator.json``;
6. ``report.json`` and ``report.md`` (:mod:`crystal_search.distill_report`).

Teacher time is wall seconds of a one-thread teacher process, per round.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable

import numpy as np

from crystal_search import distill_setup as setup
from crystal_search.datasets import frames as frames_lib
from crystal_search.errors import InputError

__all__ = ["DistillConfig", "make_teacher", "run_distill"]

DistillConfig = setup.DistillConfig
_IDENTITY_FILE = "distill.json"
#: Frames of a probe relaxation kept as candidates for labelling (every this many steps).
PROBE_TRAJECTORY_EVERY = 5


def make_teacher(name: str, *, num_threads: int = 1):
  """The teacher force field named ``name`` (:data:`crystal_search.distill_setup.TEACHERS`)."""
  setup.teacher_elements(name)
  if name == "morse":
    from crystal_search.datasets.teacher import morse_force_field

    return morse_force_field()
  if name == "chgnet":
    from crystal_search.force_fields.chgnet import CHGNetForceField

    return CHGNetForceField(num_threads=num_threads)
  from crystal_search.force_fields.registry import make_force_field

  return make_force_field(name)


def _identity(config: DistillConfig) -> dict:
  return {"kind": "crystal-search distill", **dataclasses.asdict(config)}


def prepare_output_dir(output_dir: str, config: DistillConfig) -> None:
  """Create ``output_dir`` or check that it holds this run; one-line errors otherwise."""
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise InputError(f"{output_dir}: exists and is not a directory")
  path = os.path.join(output_dir, _IDENTITY_FILE)
  want = json.loads(json.dumps(_identity(config)))
  if os.path.exists(path):
    with open(path) as f:
      have = json.load(f)
    for key in ("elements", "compositions", "teacher", "seed", "max_atoms"):
      if have.get(key) != want[key]:
        raise InputError(
          f"{output_dir}: holds a distill run with {key}={have.get(key)} (this one: {want[key]}); "
          "use another --output_dir"
        )
    _write_json(path, want)  # budgets and rounds may grow
    return
  if os.path.isdir(output_dir) and os.listdir(output_dir):
    raise InputError(f"{output_dir}: not empty and holds no distill run; use another --output_dir")
  os.makedirs(output_dir, exist_ok=True)
  _write_json(path, want)


def _write_json(path: str, data) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=2)
  os.replace(tmp, path)


def _read_json(path: str):
  with open(path) as f:
    return json.load(f)


def _relax_settings(config: DistillConfig) -> dict:
  from crystal_search.relax import teacher_settings

  settings = dict(teacher_settings())
  settings["max_steps"] = int(config.teacher_max_steps)
  return settings


def references(config: DistillConfig, output_dir: str, teacher, log) -> dict:
  """``references.json``: relaxed elemental references and the derived generator settings."""
  path = os.path.join(output_dir, "references.json")
  if os.path.exists(path):
    return _read_json(path)
  from crystal_search.relax import relax_structures

  t0 = time.perf_counter()
  refs = {}
  for symbol in config.elements:
    start = setup.reference_structure(symbol)
    (result,) = relax_structures(
      [start], teacher, optimizer="lbfgs", fmax=0.02, smax=0.5, max_steps=300
    )
    if result.failed:
      raise InputError(f"{symbol}: the teacher's relaxation of its reference crystal failed")
    refs[symbol] = setup.summarize_reference(result.final, float(result.energy))
    log(f"reference {symbol}: {refs[symbol]['volume_per_atom']:.2f} Å^3/atom")
  record = {
    "references": refs,
    "generator": setup.generator_settings(refs, config.elements),
    "teacher_seconds": time.perf_counter() - t0,
  }
  _write_json(path, record)
  return record


def teacher_round(
  config: DistillConfig, output_dir: str, teacher, generator, log, shard=None
) -> dict:
  """The first round's teacher relaxations (resumable: finished files are skipped); with
  ``shard=(I, N)`` only the jobs ``I-1, I-1+N, ...``."""
  from crystal_search.datasets import teacher as teacher_lib

  per = -(-config.budget_teacher_relaxations // len(config.compositions))
  jobs = teacher_lib.make_jobs(list(config.compositions), per, config.seed)
  jobs = jobs[: config.budget_teacher_relaxations]
  if shard is not None:
    jobs = teacher_lib.shard(jobs, shard[0] - 1, shard[1])
  return teacher_lib.generate(
    jobs,
    teacher,
    output_dir=os.path.join(output_dir, "teacher"),
    random_config=generator,
    relax_settings=_relax_settings(config),
    teacher_info={"teacher": config.teacher},
    progress=False,
    log=log,
  )


def build_round_dataset(config: DistillConfig, output_dir: str, r: int) -> str:
  """``round_<r>/dataset``: the sampled teacher frames plus the labels of rounds ``< r``."""
  from crystal_search.datasets import sampling

  out = os.path.join(output_dir, f"round_{r}", "dataset")
  done = os.path.join(out, "manifest.json")
  if os.path.exists(done):
    return out
  tmp = out + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  protocol = sampling.SamplingConfig(seed=config.seed, holdout=())
  manifest = sampling.build_dataset(setup.teacher_files(output_dir), tmp, config=protocol)
  labels = [os.path.join(output_dir, f"round_{k}", "probe.npz") for k in range(r)]
  labels = [frames_lib.load(p) for p in labels if os.path.exists(p)]
  labels = [f for f in labels if len(f)]
  if labels:
    train = frames_lib.load(os.path.join(tmp, "train.npz"))
    joined = frames_lib.concatenate([train, *labels])
    joined.metadata = dict(train.metadata, active_learning_frames=len(joined) - len(train))
    joined.save(os.path.join(tmp, "train.npz"))
    manifest["files"]["train"]["frames"] = len(joined)
  manifest["active_learning_frames"] = int(sum(len(f) for f in labels))
  _write_json(os.path.join(tmp, "manifest.json"), manifest)
  shutil.rmtree(out, ignore_errors=True)
  os.replace(tmp, out)
  return out


def train_students(config: DistillConfig, output_dir: str, r: int, dataset: str, log) -> list[str]:
  """The round's committee (model directories); training resumes from its checkpoints."""
  from crystal_search import training

  models = []
  for k in range(config.committee):
    workdir = os.path.join(output_dir, f"round_{r}", f"student_{k}")
    model_dir = os.path.join(workdir, "model")
    if not os.path.exists(os.path.join(model_dir, "model.json")):
      previous = os.path.join(output_dir, f"round_{r - 1}", f"student_{k}", "model")
      c = setup.student_config(
        dataset,
        config.elements,
        seed=config.seed + k,
        epochs=config.epochs if r == 0 else config.finetune_epochs,
        init_from=previous if r > 0 else "",
      )
      t0 = time.perf_counter()
      training.train(c, workdir, progress=False)
      log(f"round {r} student {k}: trained in {time.perf_counter() - t0:.0f} s")
    models.append(model_dir)
  return models


#: Test trajectories relaxed for the paper's relaxed-structure and trajectory match (its Table 1
#: uses 10).
EVAL_TRAJECTORIES = 10


def evaluate_round(config: DistillConfig, output_dir: str, r: int, model_dir: str) -> dict:
  """``round_<r>/eval.json``: the paper's metrics on the first round's test split (the same every
  round): force and stress MAE on its frames, relaxed-structure and trajectory match on its first
  :data:`EVAL_TRAJECTORIES` trajectories relaxed by the student with the teacher's settings."""
  from crystal_search.evaluation import frame_errors, trajectory_scores
  from crystal_search.force_fields import model as model_ff

  path = os.path.join(output_dir, f"round_{r}", "eval.json")
  if os.path.exists(path):
    return _read_json(path)
  dataset = os.path.join(output_dir, "round_0", "dataset")
  student = model_ff.from_directory(model_dir)
  errors = frame_errors(student, frames_lib.load(os.path.join(dataset, "test.npz")))
  errors.pop("predictions", None)
  settings = {k: v for k, v in _relax_settings(config).items() if k in ("smass", "potim")}
  scores = trajectory_scores(
    student, frames_lib.load(os.path.join(dataset, "test_trajectories.npz")),
    relax_config=settings, max_trajectories=EVAL_TRAJECTORIES,
  )  # fmt: skip
  errors.update({k: v for k, v in scores.items() if k != "matched_by_step"})
  _write_json(path, errors)
  return errors


def _committee_spread(members, frames: frames_lib.Frames) -> np.ndarray:
  """``[F]`` largest atomic force difference (eV/Å) between any two committee members."""
  from crystal_search.evaluation import frame_errors

  preds = [frame_errors(m, frames)["predictions"]["forces"] for m in members]
  spread = np.zeros(frames.forces.shape[0])
  for a in range(len(preds)):
    for b in range(a + 1, len(preds)):
      spread = np.maximum(spread, np.linalg.norm(preds[a] - preds[b], axis=-1))
  off = frames.offsets
  return np.asarray([spread[off[i] : off[i + 1]].max() for i in range(len(frames))])


def label(structures, teacher, *, names, steps) -> frames_lib.Frames:
  """Teacher single points of ``structures`` as frames (one trajectory per name)."""
  from crystal_search import crystals as crystals_lib
  from crystal_search.evaluation import _evaluate

  records, unique = [], sorted(set(names))
  for structure, name, step in zip(structures, names, steps):
    batch = crystals_lib.from_structures([structure])
    out, teacher = _evaluate(teacher, batch)
    n = len(structure)
    forces, stress = np.asarray(out.forces)[0, :n], np.asarray(out.stress)[0]
    if not (np.all(np.isfinite(forces)) and np.all(np.isfinite(stress))):
      continue  # a label the teacher cannot give is no label
    records.append(
      {
        "numbers": np.asarray(structure.atomic_numbers, np.int32),
        "positions": structure.frac_coords,
        "forces": np.asarray(out.forces, np.float64)[0, :n],
        "lattice": structure.lattice.matrix,
        "stress": np.asarray(out.stress, np.float64)[0],
        "energy": float(np.asarray(out.energy)[0]),
        "trajectory": unique.index(name),
        "step": int(step),
      }
    )
  return frames_lib.from_arrays(records, trajectory_names=unique)


def _probe_cells(config: DistillConfig, generator, r: int):
  """Fresh random cells of every composition for round ``r`` (a seed no teacher run uses)."""
  from crystal_search import random_structures as rs

  cells, names = [], []
  for formula in config.formulas():
    made = rs.generate(formula, config.probe_cells, seed=config.seed + 1000 + r, config=generator)
    cells.extend(made.structures)
    names.extend(f"probe{r}_{formula}_{i:05d}" for i in made.indices)
  return cells, names


def probe_round(config, output_dir: str, r: int, models, teacher, generator, log) -> dict:
  """The student relaxes fresh cells; the teacher labels its minima and the frames where the
  committee disagrees most (``probe.npz``); ``probe.json`` holds the timings and outcomes."""
  from crystal_search.force_fields import model as model_ff
  from crystal_search.relax import relax_structures

  path = os.path.join(output_dir, f"round_{r}", "probe.json")
  if os.path.exists(path):
    return _read_json(path)
  members = [model_ff.from_directory(m) for m in models]
  cells, names = _probe_cells(config, generator, r)
  t0 = time.perf_counter()
  results = relax_structures(
    cells, members[0], optimizer="lbfgs", fmax=0.05, max_steps=600,
    trajectory_every=PROBE_TRAJECTORY_EVERY,
  )  # fmt: skip
  student_seconds = time.perf_counter() - t0
  ok = [k for k, res in enumerate(results) if not res.failed]
  picks, pick_names, pick_steps = _disagreement_picks(config, members, results, names)
  t1 = time.perf_counter()
  # Every final is labelled: the minima, and the last good configuration of a relaxation that
  # blew up (where the student is most wrong); only minima count as search results.
  finals = label(
    [res.final for res in results], teacher, names=names, steps=[res.steps for res in results]
  )
  frames = [finals]
  if picks:
    frames.append(label(picks, teacher, names=pick_names, steps=pick_steps))
  teacher_seconds = time.perf_counter() - t1
  labelled = frames_lib.concatenate(frames) if len(finals) or picks else finals
  labelled, dropped = _within_force_range(labelled, output_dir)
  finals.save(os.path.join(output_dir, f"round_{r}", "probe_finals.npz"))
  labelled.save(os.path.join(output_dir, f"round_{r}", "probe.npz"))
  record = {
    "cells": len(cells),
    "failed": len(cells) - len(ok),
    "student_seconds": student_seconds,
    "student_seconds_per_cell": student_seconds / max(1, len(cells)),
    "teacher_label_seconds": teacher_seconds,
    "labelled_finals": len(finals),
    "labelled_disagreement_frames": len(picks),
    "labels_beyond_force_range": dropped,
    "minima": _minima_records(finals, dict(zip(names, results))),
  }
  _write_json(path, record)
  log(f"round {r} probe: {len(cells)} cells in {student_seconds:.0f} s, {len(picks)} picks")
  return record


def _within_force_range(frames: frames_lib.Frames, output_dir: str):
  """``(frames, dropped)``: the labelled frames whose largest teacher force (eV/Å) lies within the
  first round's training frames' (a student that blew up leaves overlapping atoms whose forces
  would swamp the loss); a frame's record stays in ``probe.json``."""
  from crystal_search.datasets.sampling import max_forces

  if not len(frames):
    return frames, 0
  train = frames_lib.load(os.path.join(output_dir, "round_0", "dataset", "train.npz"))
  keep = np.flatnonzero(max_forces(frames) <= max_forces(train).max())
  return frames.select(keep), len(frames) - len(keep)


def _disagreement_picks(config, members, results, names):
  """The ``label_frames`` frames of the probe relaxations (also those that blew up, up to their
  last good step) with the largest committee spread."""
  from crystal_search.datasets.teacher import trajectory_frames

  if len(members) < 2 or config.label_frames == 0:
    return [], [], []
  parts = []
  for k in range(len(results)):
    traj = results[k].trajectory
    if traj:
      n = len(results[k].final)
      numbers = np.asarray(results[k].final.atomic_numbers, np.int32)
      parts.append(trajectory_frames(traj, n, numbers, name=names[k], metadata={}))
  parts = [p for p in parts if len(p)]
  if not parts:
    return [], [], []
  frames = frames_lib.concatenate(parts)
  finite = [
    i for i in range(len(frames))
    if np.all(np.isfinite(frames.positions[frames.atom_slice(i)]))
    and np.all(np.isfinite(frames.lattice[i])) and abs(np.linalg.det(frames.lattice[i])) > 1.0
  ]  # fmt: skip
  if not finite:
    return [], [], []
  frames = frames.select(finite)
  spread = np.nan_to_num(_committee_spread(members, frames), nan=np.inf)
  order = np.argsort(-spread, kind="stable")[: config.label_frames]
  picks = [frames.structure(int(i)) for i in order]
  pick_names = [frames.trajectory_names[int(frames.trajectory[i])] for i in order]
  return picks, pick_names, [int(frames.step[i]) for i in order]


def _minima_records(minima: frames_lib.Frames, results: dict) -> list[dict]:
  """Per labelled probe relaxation (frame ``i`` of ``minima``; ``results`` by name): whether it failed, its formula, teacher
  energy (eV/atom) and largest teacher force (eV/Å) at the student's final structure."""
  out = []
  from crystal_search.datasets.sampling import max_forces

  fmax = max_forces(minima) if len(minima) else []
  for i in range(len(minima)):
    n = int(minima.n_atoms[i])
    name = minima.trajectory_names[int(minima.trajectory[i])]
    result = results[name]
    out.append(
      {
        "frame": i,
        "failed": bool(result.failed),
        "name": name,
        "formula": result.final.composition.reduced_formula,
        "teacher_energy_per_atom": float(minima.energy[i]) / n,
        "teacher_max_force": float(fmax[i]),
        "student_steps": int(result.steps),
      }
    )
  return out


def train_energy_student(config: DistillConfig, dataset: str, log) -> str:
  """``round_<last>/energy/``: the energy network that ranks the student's search results,
  trained on the last round's dataset."""
  from crystal_search import training

  workdir = os.path.join(os.path.dirname(dataset), "energy")
  model_dir = os.path.join(workdir, "model")
  if not os.path.exists(os.path.join(model_dir, "model.json")):
    c = setup.student_config(
      dataset, config.elements, kind="energy", seed=config.seed, epochs=config.epochs
    )
    t0 = time.perf_counter()
    training.train(c, workdir, progress=False)
    log(f"energy student trained in {time.perf_counter() - t0:.0f} s")
  return model_dir


def package(output_dir: str, student: str, energy: str, generator_settings: dict) -> str:
  """``model/``: the student, ``energy/`` and ``generator.json``, as ``search --model`` takes."""
  out = os.path.join(output_dir, "model")
  tmp = out + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  shutil.copytree(student, tmp)
  shutil.copytree(energy, os.path.join(tmp, "energy"))
  _write_json(os.path.join(tmp, "generator.json"), generator_settings)
  shutil.rmtree(out, ignore_errors=True)
  os.replace(tmp, out)
  return out


def run_distill(
  config: DistillConfig,
  output_dir: str,
  *,
  teacher=None,
  shard: str | None = None,
  log: Callable[[str], None] | None = None,
) -> dict:
  """Run (or resume) a distillation into ``output_dir``; returns the report (``report.json``).

  With ``shard="I/N"`` only the I-th of N parts of the first round's teacher relaxations run (one
  process or host each, sharing ``output_dir``), and the call returns the teacher summary; a
  call without ``shard`` then relaxes what is left and trains.

  Raises:
    InputError: settings that cannot work or an ``output_dir`` of another run, before any
      teacher time is spent.
  """
  from crystal_search import distill_report
  from crystal_search.run_store import parse_shard

  log = log or (lambda line: None)
  part = parse_shard(shard)
  setup.check_config(config)
  prepare_output_dir(output_dir, config)
  teacher = teacher if teacher is not None else make_teacher(config.teacher)
  refs = references(config, output_dir, teacher, log)
  generator = setup.random_config(refs["generator"], max_atoms=config.max_atoms)
  summary = teacher_round(config, output_dir, teacher, generator, log, shard=part)
  log(f"teacher: {summary['ran']} relaxed now, {summary['done_before']} before")
  if part is not None:
    return {"teacher": summary, "shard": list(part)}
  rounds = []
  for r in range(config.rounds):
    dataset = build_round_dataset(config, output_dir, r)
    models = train_students(config, output_dir, r, dataset, log)
    errors = evaluate_round(config, output_dir, r, models[0])
    probe = probe_round(config, output_dir, r, models, teacher, generator, log)
    rounds.append(
      {"round": r, "dataset": dataset, "models": models, "eval": errors, "probe": probe}
    )
  energy = train_energy_student(config, rounds[-1]["dataset"], log)
  model = package(output_dir, rounds[-1]["models"][0], energy, refs["generator"])
  return distill_report.write_report(config, output_dir, refs, rounds, model)
