"""The report of a distillation run: ``report.json`` and ``report.md`` in its output directory.

Per round: the teacher's time (wall seconds of a one-thread process: the first round's
relaxations and references, then each round's labels), the students' training time, the first
student's force and stress MAE and relaxed-structure / trajectory match on the fixed test split,
and the probe search: seconds per
cell, and per composition the teacher energy of the student's lowest minimum against the lowest
the teacher's own relaxations reached, and whether a student minimum is the teacher's lowest
structure (StructureMatcher, default tolerances).
"""

from __future__ import annotations

import json
import os

import numpy as np

from crystal_search.datasets import frames as frames_lib

__all__ = ["teacher_minima", "write_report"]


def teacher_minima(output_dir: str) -> tuple[dict, float, int]:
  """``({formula: {'energy_per_atom', 'name', 'structure'}}, teacher seconds, relaxations)``:
  the lowest final energy per composition among the first round's teacher relaxations."""
  from crystal_search.distill_setup import teacher_files

  best: dict[str, dict] = {}
  seconds, count = 0.0, 0
  for path in teacher_files(output_dir):
    frames = frames_lib.load(path)
    meta = frames.metadata
    seconds += float(meta.get("wall_seconds", 0.0))
    count += 1
    energy = meta.get("final_energy")
    if meta.get("failed") or energy is None or not len(frames):
      continue
    last = int(np.argmax(frames.step))
    structure = frames.structure(last)
    formula = structure.composition.reduced_formula
    per_atom = float(energy) / len(structure)
    if formula not in best or per_atom < best[formula]["energy_per_atom"]:
      best[formula] = {
        "energy_per_atom": per_atom,
        "name": meta.get("name"),
        "structure": structure,
      }
  return best, seconds, count


def _training_seconds(model_dir: str) -> float:
  from crystal_search.training import read_metrics

  workdir = os.path.dirname(model_dir)
  try:
    return float(sum(row.get("seconds", 0.0) for row in read_metrics(workdir)))
  except (OSError, KeyError):
    return float("nan")


def _probe_outcome(output_dir: str, r: int, probe: dict, best: dict) -> dict:
  """Per composition: the student's lowest teacher energy against the teacher's, and a match."""
  from pymatgen.analysis.structure_matcher import StructureMatcher

  minima = frames_lib.load(os.path.join(output_dir, f"round_{r}", "probe_finals.npz"))
  records = probe["minima"]
  matcher = StructureMatcher()
  out = {}
  for formula, ref in sorted(best.items()):
    mine = [rec["frame"] for rec in records if rec["formula"] == formula and not rec["failed"]]
    if not mine:
      out[formula] = {"student_best": None, "teacher_best": ref["energy_per_atom"], "found": False}
      continue
    energies = [records[i]["teacher_energy_per_atom"] for i in mine]  # frame i is record i
    found = any(matcher.fit(ref["structure"], minima.structure(i)) for i in mine)
    out[formula] = {
      "student_best": float(min(energies)),
      "teacher_best": ref["energy_per_atom"],
      "gap_mev_per_atom": 1000.0 * (float(min(energies)) - ref["energy_per_atom"]),
      "found": bool(found),
      "cells": len(mine),
    }
  return out


def write_report(config, output_dir: str, refs: dict, rounds: list[dict], model_dir: str) -> dict:
  """Write ``report.json`` and ``report.md``; returns the report."""
  import dataclasses

  best, teacher_seconds, relaxations = teacher_minima(output_dir)
  rows = []
  for entry in rounds:
    r, probe = entry["round"], entry["probe"]
    with open(os.path.join(entry["dataset"], "manifest.json")) as f:
      manifest = json.load(f)
    rows.append(
      {
        "round": r,
        "train_frames": int(manifest["files"]["train"]["frames"]),
        "active_learning_frames": int(manifest.get("active_learning_frames", 0)),
        "teacher_seconds": (teacher_seconds + refs["teacher_seconds"] if r == 0 else 0.0)
        + (rounds[r - 1]["probe"]["teacher_label_seconds"] if r > 0 else 0.0),
        "training_seconds": float(sum(_training_seconds(m) for m in entry["models"])),
        "force_mae": entry["eval"]["force_mae"],
        "stress_mae": entry["eval"]["stress_mae"],
        "relaxed_match": entry["eval"].get("relaxed_match"),
        "trajectory_match": entry["eval"].get("trajectory_match"),
        "test_frames": entry["eval"]["frames"],
        "probe_seconds_per_cell": probe["student_seconds_per_cell"],
        "probe": _probe_outcome(output_dir, r, probe, best),
      }
    )
  report = {
    "config": dataclasses.asdict(config),
    "generator": refs["generator"],
    "references": {
      e: {k: v for k, v in rec.items() if k != "structure"} for e, rec in refs["references"].items()
    },
    "teacher_relaxations": relaxations,
    "teacher_seconds_per_relaxation": teacher_seconds / max(1, relaxations),
    "rounds": rows,
    "model": os.path.relpath(model_dir, output_dir),
  }
  with open(os.path.join(output_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(output_dir, "report.md"), "w") as f:
    f.write(markdown(report))
  return report


def markdown(report: dict) -> str:
  """``report.md`` from ``report.json``."""
  c = report["config"]
  lines = [
    f"# Distillation of {c['teacher']} for {'-'.join(c['elements'])}",
    "",
    f"Compositions {', '.join(c['compositions'])}; {report['teacher_relaxations']} teacher "
    f"relaxations ({report['teacher_seconds_per_relaxation']:.1f} s each); cells up to "
    f"{c['max_atoms']} atoms; model: `{report['model']}`.",
    "",
    "Random-cell settings: volumes (Å^3/atom) "
    + ", ".join(f"{k} {v}" for k, v in report["generator"]["element_volumes"].items())
    + "; minimum separations (Å) "
    + ", ".join(f"{k} {v}" for k, v in report["generator"]["pair_min_separation"].items())
    + ".",
    "",
    "| round | train frames (labelled picks) | teacher s | training s | force MAE (eV/Å) | "
    "stress MAE (kBar) | relaxed / trajectory match | probe s/cell |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for row in report["rounds"]:
    match = f"{row['relaxed_match']:.2f} / {row['trajectory_match']:.2f}"
    lines.append(
      f"| {row['round']} | {row['train_frames']} ({row['active_learning_frames']}) | "
      f"{row['teacher_seconds']:.0f} | {row['training_seconds']:.0f} | {row['force_mae']:.4f} | "
      f"{row['stress_mae']:.2f} | {match} | {row['probe_seconds_per_cell']:.2f} |"
    )
  lines += [
    "",
    "Probe search per round: the teacher energy of the student's lowest minimum minus the lowest "
    "the teacher's relaxations reached (meV/atom), and whether a student minimum is that structure.",
    "",
    "| round | composition | cells | gap (meV/atom) | teacher's lowest found |",
    "|---:|---|---:|---:|---|",
  ]
  for row in report["rounds"]:
    for formula, p in row["probe"].items():
      gap = "" if p["student_best"] is None else f"{p['gap_mev_per_atom']:+.1f}"
      lines.append(
        f"| {row['round']} | {formula} | {p.get('cells', 0)} | {gap} | "
        f"{'yes' if p['found'] else 'no'} |"
      )
  return "\n".join(lines) + "\n"
