"""The evaluation figures (matplotlib, written to files; no display needed).

* :func:`parity`: predicted against teacher force components (eV/Å) and stress components (kBar);
* :func:`matched_by_step`: fraction of test trajectories whose model structure matches the
  teacher's at each ionic step;
* :func:`matched_by_step_rows`: the same for every row of a results table, test and held out;
* :func:`noise_sweep`: force/stress MAE and match rates against the noise std (Å) of the sweep.

The search's energy–volume plot lives with the search (:func:`crystal_search.search.plot_energy_volume`)
and the dataset distributions with the dataset statistics (:mod:`crystal_search.datasets.stats`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def parity(
  forces_true: np.ndarray,
  forces_pred: np.ndarray,
  stress_true: np.ndarray,
  stress_pred: np.ndarray,
  path: str,
  *,
  title: str = "",
) -> None:
  """Two panels: force components (eV/Å) and stress components (kBar), prediction vs teacher."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
  panels = (
    (forces_true, forces_pred, "force component (eV/Å)"),
    (stress_true, stress_pred, "stress component (kBar)"),
  )
  for ax, (truth, pred, label) in zip(axes, panels, strict=True):
    t = np.asarray(truth, np.float64).ravel()
    p = np.asarray(pred, np.float64).ravel()
    if t.size:
      lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
      ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
      ax.scatter(t, p, s=3, alpha=0.3, rasterized=True)
      mae = float(np.mean(np.abs(p - t)))
      ax.set_title(f"MAE {mae:.3g}")
    ax.set_xlabel(f"teacher {label}")
    ax.set_ylabel(f"model {label}")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def matched_by_step(curves: Mapping[str, Sequence[float]], path: str) -> None:
  """Fraction of trajectories matched against ionic step, one line per label."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for label, fractions in curves.items():
    ax.plot(np.arange(len(fractions)), fractions, label=label)
  ax.set_xlabel("ionic step")
  ax.set_ylabel("fraction of trajectories matched")
  ax.set_ylim(-0.02, 1.02)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def matched_by_step_rows(panels: Mapping[str, Mapping[str, Sequence[float]]], path: str) -> bool:
  """Fraction of trajectories matched against ionic step for several models: one panel per split
  (``{"test": {row: fractions}, "held out": {...}}``), one line per row, legend beside the panels.

  Returns False (and writes nothing) when no panel has a curve.
  """
  panels = {title: curves for title, curves in panels.items() if curves}
  if not panels:
    return False
  plt = _pyplot()
  names = list(dict.fromkeys(name for curves in panels.values() for name in curves))
  cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
  color = {name: cmap(k % cmap.N) for k, name in enumerate(names)}
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 3.5, 4), squeeze=False)
  for ax, (title, curves) in zip(axes[0], panels.items(), strict=True):
    for name, fractions in curves.items():
      style = "--" if name == "MEAM" else "-"
      ax.plot(np.arange(len(fractions)), fractions, style, color=color[name], lw=1.2, label=name)
    ax.set_title(title)
    ax.set_xlabel("ionic step")
    ax.set_ylabel("fraction of trajectories matched")
    ax.set_ylim(-0.02, 1.02)
  handles, labels = [], []
  for ax in axes[0]:
    for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
      if label not in labels:
        handles.append(handle)
        labels.append(label)
  fig.legend(handles, labels, loc="center right", fontsize="small", frameon=False)
  fig.tight_layout(rect=(0, 0, 1 - 3.5 / (5 * len(panels) + 3.5), 1))
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def noise_sweep(rows: Mapping[str, Mapping], path: str) -> bool:
  """MAE and match rates against noise std from ``summary.json`` rows named ``GNN noise=S``.

  Returns False (and writes nothing) when fewer than two noise values are present.
  """
  points = []
  for name, row in rows.items():
    if name.startswith("GNN noise="):
      points.append((float(name.split("=", 1)[1]), row))
  if len(points) < 2:
    return False
  points.sort(key=lambda p: p[0])
  noise = [p[0] for p in points]
  plt = _pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
  specs = (
    ("force_mae", "force MAE (eV/Å)"),
    ("stress_mae", "stress MAE (kBar)"),
    ("relaxed_match", "match rate"),
  )
  for ax, (key, label) in zip(axes, specs, strict=True):
    keys = (key, "trajectory_match") if key == "relaxed_match" else (key,)
    for k in keys:
      mean = [p[1][k]["mean"] for p in points]
      std = [p[1][k]["std"] for p in points]
      ax.errorbar(noise, mean, yerr=std, marker="o", capsize=3, label=k.replace("_", " "))
    ax.set_xlabel("noise std (Å)")
    ax.set_ylabel(label)
    if len(keys) > 1:
      ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True
