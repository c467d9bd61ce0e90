"""Dataset statistics: the paper's Table 4 and Figures 1–2, per-stoichiometry and per-MD-run counts.

Table 4 of Cheon et al. 2020 summarises the random-structure dataset with the
mean, standard deviation, min and max of

* force components (eV/Å; every Cartesian component of every atom),
* stress components (kBar; the six independent components xx, yy, zz, yz, xz, xy
  of every frame),
* the largest force magnitude of each structure (eV/Å),
* the largest stress component (absolute value) of each structure (kBar).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from crystal_search.datasets import frames as frames_lib
from crystal_search.units import matrix_to_voigt

ROWS = (
  ("force", "Force (eV/Å)"),
  ("stress", "Stress (kBar)"),
  ("max_force", "max |force| (eV/Å)"),
  ("max_stress", "max stress component (kBar)"),
)


def _summary(x: np.ndarray) -> dict:
  x = np.asarray(x, np.float64).ravel()
  x = x[np.isfinite(x)]
  if not len(x):
    return {"mean": None, "std": None, "min": None, "max": None, "count": 0}
  return {
    "mean": float(x.mean()),
    "std": float(x.std()),
    "min": float(x.min()),
    "max": float(x.max()),
    "count": int(len(x)),
  }


def label_arrays(frames: frames_lib.Frames) -> dict[str, np.ndarray]:
  """The four distributions of Table 4 as flat arrays.

  Returns:
    ``force [3A]`` eV/Å, ``stress [6F]`` kBar, ``max_force [F]`` eV/Å,
    ``max_stress [F]`` kBar (absolute).
  """
  forces = np.asarray(frames.forces, np.float64)
  voigt = matrix_to_voigt(np.asarray(frames.stress, np.float64))  # [F, 6]
  norms = np.linalg.norm(forces, axis=-1)
  off = frames.offsets
  max_force = np.array(
    [norms[off[i] : off[i + 1]].max() if off[i + 1] > off[i] else 0.0 for i in range(len(frames))]
  )
  return {
    "force": forces.ravel(),
    "stress": voigt.ravel(),
    "max_force": max_force,
    "max_stress": np.abs(voigt).max(axis=-1) if len(frames) else np.zeros((0,)),
  }


def table4(frames: frames_lib.Frames) -> dict[str, dict]:
  """``{row: {mean, std, min, max, count}}`` for the rows of Table 4."""
  arrays = label_arrays(frames)
  return {key: _summary(arrays[key]) for key, _ in ROWS}


def table4_markdown(table: dict[str, dict], *, title: str = "") -> str:
  """Table 4 as a markdown table."""
  lines = []
  if title:
    lines += [f"**{title}**", ""]
  lines += ["| | mean | standard deviation | min | max | count |", "|---|---|---|---|---|---|"]
  for key, label in ROWS:
    row = table[key]
    if row["count"] == 0:
      lines.append(f"| {label} | – | – | – | – | 0 |")
      continue
    lines.append(
      f"| {label} | {row['mean']:.3f} | {row['std']:.3f} | {row['min']:.3f} | "
      f"{row['max']:.3f} | {row['count']} |"
    )
  return "\n".join(lines)


def plot_distributions(frames: frames_lib.Frames, path: str, *, title: str = "") -> None:
  """Force (left) and stress (right) component histograms (log counts), like Figures 1–2."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  arrays = label_arrays(frames)
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, key, xlabel in (
    (axes[0], "force", "force component (eV/Å)"),
    (axes[1], "stress", "stress component (kBar)"),
  ):
    values = arrays[key][np.isfinite(arrays[key])]
    if len(values):
      ax.hist(values, bins=100, color="tab:blue" if key == "force" else "tab:orange")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_md_vs_random(
  md: frames_lib.Frames, random: frames_lib.Frames, path: str, *, title: str = ""
) -> None:
  """Force (left) and stress (right) component densities of MD frames against random-relaxation
  frames on shared axes (log density), the comparison of the paper's appendix Figures 1–2."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  arrays = {"MD": label_arrays(md), "random relaxations": label_arrays(random)}
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for ax, key, xlabel in (
    (axes[0], "force", "force component (eV/Å)"),
    (axes[1], "stress", "stress component (kBar)"),
  ):
    values = {k: v[key][np.isfinite(v[key])] for k, v in arrays.items()}
    everything = np.concatenate([v for v in values.values() if len(v)] or [np.zeros(1)])
    bins = np.linspace(everything.min(), everything.max(), 101)
    for (name, v), color in zip(values.items(), ("tab:red", "tab:blue")):
      if len(v):
        label = f"{name} (std {v.std():.3g})"
        ax.hist(v, bins=bins, density=True, histtype="step", color=color, label=label)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def md_runs_markdown(manifest: dict) -> str:
  """One row per MD run of an MD dataset's ``manifest.json``: atoms, ps, frames kept (after the
  StructureMatcher dedupe) and per split, mean temperature, teacher wall minutes."""
  per = manifest.get("per_stoichiometry", {})
  lines = [
    "**MD runs** (800 K teacher NVT; frames after the StructureMatcher dedupe)",
    "",
    "| phase | atoms | cell | ps | frames | train / val / test | mean T (K) | wall (min) |",
    "|---|---:|---|---:|---:|---|---:|---:|",
  ]
  for run in manifest.get("runs", []):
    row = per.get(run["formula"], {})
    split = " / ".join(str(row.get(f"frames_{k}", 0)) for k in ("train", "val", "test"))
    ps, temp, wall = run.get("simulated_ps"), run.get("mean_temperature_k"), run.get("wall_seconds")
    note = (run.get("cell_note") or "").split(" (")[-1].rstrip(")") or "–"
    if run.get("diverged"):
      note += "; diverged"
    lines.append(
      f"| {run['formula']} | {run.get('n_atoms', '–')} | {note} | "
      f"{'–' if ps is None else f'{ps:.2f}'} | {run['frames']} | {split} | "
      f"{'–' if temp is None else f'{temp:.0f}'} | {'–' if wall is None else f'{wall / 60:.0f}'} |"
    )
  return "\n".join(lines)


def teacher_summary(metadata: Sequence[dict]) -> dict[str, dict]:
  """Per stoichiometry: relaxations, converged, failed, teacher seconds and steps.

  Args:
    metadata: the metadata of each relaxation file (teacher runs record ``formula``,
      ``converged``, ``failed``, ``steps``, ``wall_seconds``).
  """
  rows: dict[str, dict] = defaultdict(
    lambda: {"relaxations": 0, "converged": 0, "failed": 0, "_seconds": [], "_steps": []}
  )
  for meta in metadata:
    row = rows[str(meta.get("formula", "unknown"))]
    row["relaxations"] += 1
    row["converged"] += int(bool(meta.get("converged")))
    row["failed"] += int(bool(meta.get("failed")))
    if meta.get("wall_seconds") is not None and meta.get("n_atoms", 1):
      row["_seconds"].append(float(meta["wall_seconds"]))
    if meta.get("steps") is not None and meta.get("n_atoms", 1):
      row["_steps"].append(int(meta["steps"]))
  out = {}
  for formula, row in sorted(rows.items()):
    seconds, steps = row.pop("_seconds"), row.pop("_steps")
    row["teacher_seconds_per_relaxation"] = float(np.mean(seconds)) if seconds else None
    row["mean_steps"] = float(np.mean(steps)) if steps else None
    row["teacher_seconds_per_step"] = (
      float(np.sum(seconds) / max(np.sum(steps), 1)) if seconds and steps else None
    )
    out[formula] = row
  return out


def dataset_stats(
  teacher_metadata: Sequence[dict],
  manifest: dict | None,
  sets: dict[str, frames_lib.Frames],
) -> dict:
  """Everything ``data_tools/dataset_stats.py`` reports, as one JSON-able dict.

  Args:
    teacher_metadata: metadata of every relaxation file.
    manifest: the builder's ``manifest.json`` (frame counts per stoichiometry), or None.
    sets: named frame sets for Table 4 (e.g. ``{'random (train+val+test)': ...}``).
  """
  per = teacher_summary(teacher_metadata)
  built = (manifest or {}).get("per_stoichiometry", {})
  for formula in sorted(set(per) | set(built)):
    row = per.setdefault(
      formula,
      {
        "relaxations": built.get(formula, {}).get("relaxations", 0),
        "converged": built.get(formula, {}).get("converged", 0),
        "failed": built.get(formula, {}).get("failed", 0),
        "teacher_seconds_per_relaxation": None,
        "mean_steps": None,
        "teacher_seconds_per_step": None,
      },
    )
    b = built.get(formula, {})
    for key in ("frames_train", "frames_val", "frames_test", "frames_holdout"):
      row[key] = int(b.get(key, 0))
  return {
    "per_stoichiometry": per,
    "table4": {name: table4(f) for name, f in sets.items()},
    "protocol": (manifest or {}).get("protocol"),
  }


def write_json(data: dict, path: str) -> None:
  """Write JSON atomically."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=2)
  os.replace(tmp, path)
