r"""Results tables in the layout of the paper's Tables 1, 2, 3 and 5, from evaluated run directories.

    python -m experiments.make_tables --runs=runs/gnn_noise0.01_s0,runs/gnn_noise0.01_s1,... \
        --output_dir=experiments/results

Each run directory holds ``eval.json`` (written by ``crystal-search evaluate``) and, for trained
models, ``run.json`` (config). Rows are keyed by a row name: ``--row_names`` gives one per run, else
it is derived from the config (``GNN noise=0.01``, ``energy GNN``, ``GNN (MD data)``,
``GNN stress=global``...); runs that share a row name are seeds of one row and are summarised as
mean and standard deviation. Writes ``summary.json`` and ``tables.md`` with the paper's numbers
side by side, and checks the issue's goals on our data (:func:`goals`: the shipped row's bounds,
every GNN row ahead of MEAM, the held-out experimental structure) in both.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

from absl import flags

from crystal_search.errors import InputError
from crystal_search.evaluation import summarize_seeds
from experiments.common import machines, run

_RUNS = flags.DEFINE_list("runs", [], "Run directories with eval.json.")
_ROW_NAMES = flags.DEFINE_list("row_names", [], "Row name per run (default: from run.json).")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where summary.json goes.")
_NOTES = flags.DEFINE_multi_string("note", [], "A line added under the tables' header.")

#: The paper's numbers (Cheon et al. 2020), for side-by-side comparison. DFT (VASP PBE) teacher.
PAPER = {
  "table1": {
    "GNN noise=0": (0.033, 1.05, 0.40, 0.65),
    "GNN noise=0.01": (0.031, 0.98, 0.42, 0.67),
    "GNN noise=0.02": (0.032, 1.01, 0.43, 0.67),
    "GNN noise=0.03": (0.034, 1.06, 0.42, 0.66),
    "MEAM": (0.55, 9.11, 0.18, 0.39),
  },
  "table2": {
    "GNN (MD data) on MD": (0.067, 1.63),
    "GNN (MD data)": (0.61, 32.3),
    "energy GNN": (0.24, 18.7),
    "GNN noise=0.01": (0.031, 0.98),  # the paper's Table 1 row, which its Table 2 is set against
    "MEAM": (0.55, 9.11),
  },
  "table3": {
    "GNN noise=0": (0.35, 0.64, "2/3"),
    "GNN noise=0.01": (0.38, 0.66, "2/3"),
    "GNN noise=0.02": (0.39, 0.67, "2/3"),
    "GNN noise=0.03": (0.39, 0.66, "2/3"),
    "MEAM": (0.19, 0.39, "0/3"),
  },
  "table5": {
    "GNN stress=corner": (0.03, 3.09, 0.15, 0.34),
    "GNN stress=plane": (0.03, 1.05, 0.41, 0.66),
    "GNN stress=global": (0.04, 0.96, 0.36, 0.61),
    "MEAM": (0.55, 9.11, 0.23, 0.39),
  },
}
METRICS = ("force_mae", "stress_mae", "relaxed_match", "trajectory_match")
#: The issue's goals on our data for the shipped model's row: (metric, bound, lower is better).
SHIPPED_ROW = "GNN (shipped)"
GOALS = (
  ("force_mae", 0.03, True),
  ("stress_mae", 1.0, True),
  ("relaxed_match", 0.5, False),
  ("trajectory_match", 0.7, False),
)
_UNITS = {"force_mae": " eV/Å", "stress_mae": " kBar"}


def row_name(run_dir: str, report: dict) -> str:
  """A row name from the run's config (or the evaluated force field's name)."""
  run_file = os.path.join(run_dir, "run.json")
  if not os.path.exists(run_file):
    return "MEAM" if "meam" in str(report.get("name", "")).lower() else str(report.get("name"))
  with open(run_file) as f:
    config = json.load(f)["config"]
  if config.get("model_kind") == "energy":
    return "energy GNN"
  data_path = str(config.get("data", {}).get("path", ""))
  if "md" in os.path.basename(data_path.rstrip("/")):
    return "GNN (MD data)"
  head = config.get("model", {}).get("stress_head", "plane")
  if head not in ("plane", "virial"):  # the CPU default's own head is 'virial'
    return f"GNN stress={head}"
  return f"GNN noise={float(config.get('augment', {}).get('noise_std', 0)):g}"


#: Footnote of rows with an evaluation made before the output offsets of equivariant heads were
#: rotation-averaged (``crystal_search.models.force_stress.output_normalization``).
RAW_OFFSETS_NOTE = (
  "†: evaluated (some or all seeds) with the trainer's output offsets as stored, before evaluate "
  "recorded output_offsets (commit 54b9e25): one stress mean broadcast to all nine components, "
  "which a rotation-equivariant network "
  "cannot follow; with its rotation average (now used) the same trained models measure a lower "
  "stress MAE, the same force MAE, and pressure unchanged."
)


def raw_offsets(run_dir: str, report: dict) -> bool:
  """Whether an evaluation of an equivariant force/stress network (``run.json``: ``rbf`` edges
  with the virial stress head or the edge force head) predates the rotation-averaged output
  offsets (no ``output_offsets`` in its ``eval.json``)."""
  run_file = os.path.join(run_dir, "run.json")
  if report.get("output_offsets") or not os.path.exists(run_file):
    return False
  with open(run_file) as f:
    config = json.load(f)["config"]
  model = config.get("model", {})
  equivariant = model.get("edge_inputs") == "rbf" and (
    model.get("stress_head") == "virial" or model.get("force_head") == "edge"
  )
  return config.get("model_kind", "force_stress") == "force_stress" and equivariant


def train_seconds(run_dir: str) -> float | None:
  """Training wall time (s): the ``seconds`` column of ``metrics.csv`` in the evaluation folder's
  run directory (its parent) or the folder itself; None for untrained baselines."""
  import csv

  for d in (os.path.dirname(os.path.normpath(run_dir)), run_dir):
    path = os.path.join(d, "metrics.csv")
    if os.path.exists(path):
      with open(path) as f:
        return sum(float(row["seconds"]) for row in csv.DictReader(f))
  return None


def summarize(runs: list[tuple[str, dict]]) -> dict:
  """``{row: {metric: {mean, std, n}, holdout: {...}}}`` over the runs (seeds) of each row."""
  grouped: dict[str, list[dict]] = defaultdict(list)
  for name, report in runs:
    grouped[name].append(report)
  out = {}
  for name, reports in grouped.items():
    row = {m: summarize_seeds([r.get("test", {}).get(m) for r in reports]) for m in METRICS}
    hold = {m: summarize_seeds([r.get("holdout", {}).get(m) for r in reports]) for m in METRICS}
    for key in ("experimental_found", "experimental_in_teacher"):
      values = [r.get("holdout", {}).get(key) for r in reports]
      hold[key] = summarize_seeds(values)
    row["holdout"] = hold
    row["seeds"] = len(reports)
    row["raw_offsets"] = sum(bool(r.get("raw_offsets")) for r in reports)
    row["wall_time_s"] = sum(float(r.get("wall_time_s", 0.0)) for r in reports)
    trained = [r["train_seconds"] for r in reports if r.get("train_seconds") is not None]
    row["train_seconds"] = sum(trained) if trained else None
    out[name] = row
  return out


def step_curves(runs: list[tuple[str, dict]], split: str) -> dict[str, list[float]]:
  """``{row: fractions}``: each row's fraction of ``split`` trajectories matched at each ionic
  step (``matched_by_step`` of its evaluations), averaged over its seeds up to the shortest."""
  grouped: dict[str, list[list[float]]] = defaultdict(list)
  for name, report in runs:
    curve = report.get(split, {}).get("matched_by_step")
    if curve:
      grouped[name].append(curve)
  from crystal_search.evaluation import mean_matched_by_step

  return {name: mean_matched_by_step(curves) for name, curves in grouped.items()}


def _mean(entry: dict | None) -> float | None:
  if not entry or entry.get("n", 0) == 0 or entry["mean"] != entry["mean"]:
    return None
  return float(entry["mean"])


def goals(summary: dict) -> dict:
  """The issue's goals checked on ``summary`` (rows present only).

  ``shipped``: ``[{metric, bound, value, met}]`` for :data:`SHIPPED_ROW` on the test set;
  ``behind_meam``: ``[{row, split, metric, value, meam}]`` for every GNN row and metric (force
  and stress MAE on the test set, relaxed and trajectory match on the test and held-out sets)
  where the row's mean is not strictly better than MEAM's; ``compared``: how many (row, metric)
  pairs were compared; ``experimental``: the shipped row's held-out ``found`` / ``in_teacher``.
  """
  out: dict = {}
  shipped = summary.get(SHIPPED_ROW)
  if shipped:
    out["shipped"] = []
    for metric, bound, lower in GOALS:
      value = _mean(shipped.get(metric))
      met = None if value is None else (value <= bound if lower else value >= bound)
      out["shipped"].append({"metric": metric, "bound": bound, "value": value, "met": met})
    hold = shipped.get("holdout", {})
    out["experimental"] = {
      "found": _mean(hold.get("experimental_found")),
      "in_teacher": _mean(hold.get("experimental_in_teacher")),
    }
  meam = summary.get("MEAM")
  if meam:
    behind, compared = [], 0
    checks = [("test", m) for m in METRICS] + [
      ("holdout", m) for m in ("relaxed_match", "trajectory_match")
    ]
    for name, row in summary.items():
      if name == "MEAM" or "GNN" not in name or name.endswith(" on MD"):
        continue  # a row tested on MD frames is not comparable with MEAM's
      for split, metric in checks:
        ours = _mean(row.get(metric) if split == "test" else row.get("holdout", {}).get(metric))
        ref = _mean(meam.get(metric) if split == "test" else meam.get("holdout", {}).get(metric))
        if ours is None or ref is None:
          continue
        compared += 1
        # Strictly better, beyond the float residue of a mean over equal seeds.
        margin = ref - ours if metric.endswith("_mae") else ours - ref
        if margin <= 1e-9 * max(1.0, abs(ref)):
          behind.append({"row": name, "split": split, "metric": metric, "value": ours, "meam": ref})
    out["behind_meam"] = behind
    out["compared"] = compared
  return out


def goals_markdown(checked: dict) -> list[str]:
  """The ``## Goals`` section of ``tables.md`` from :func:`goals` (empty when nothing applies)."""
  if not checked:
    return []
  lines = ["", "## The issue's goals on our data", "", "| goal | measured | met |", "|---|---|---|"]
  for goal in checked.get("shipped", []):
    sign = "≤" if goal["metric"].endswith("_mae") else "≥"
    unit = _UNITS.get(goal["metric"], "")
    value = "–" if goal["value"] is None else f"{goal['value']:.3g}"
    met = "–" if goal["met"] is None else ("yes" if goal["met"] else "**no**")
    name = goal["metric"].replace("_mae", " MAE").replace("_", " ")
    lines.append(f"| {SHIPPED_ROW}: {name} {sign} {goal['bound']:g}{unit} | {value} | {met} |")
  if "behind_meam" in checked:
    behind = checked["behind_meam"]
    listed = "; ".join(
      f"{b['row']}: {b['split']} {b['metric'].replace('_mae', ' MAE').replace('_', ' ')} {b['value']:.3g} vs {b['meam']:.3g}"
      for b in behind
    )
    measured = f"{len(behind)} of {checked['compared']} row-metric pairs not ahead"
    measured += f": {listed}" if behind else ""
    met = "yes" if not behind else "**no**"
    lines.append(f"| every GNN row ahead of MEAM | {measured} | {met} |")
  if "experimental" in checked:
    found, teacher = checked["experimental"]["found"], checked["experimental"]["in_teacher"]
    if teacher:
      met = "yes" if found and found > 0 else "**no**"
      measured = f"{found:g} of {teacher:g} teacher trajectories that end in it"
    else:
      met = "not testable here"
      measured = (
        "no held-out teacher trajectory ends in it (a dedicated search that reaches it: "
        "benchmarks/results/li15si4_discovery.md)"
      )
    lines.append(
      f"| {SHIPPED_ROW}: held-out Li15Si4 experimental structure reproduced | {measured} | {met} |"
    )
  return lines


def _fmt(entry: dict | None) -> str:
  if _mean(entry) is None:
    return "–"
  std = entry["std"] if abs(entry["std"]) > 1e-9 else 0.0  # equal seeds: no float residue
  return f"{entry['mean']:.3g} ({std:.2g})" if entry["n"] > 1 else f"{entry['mean']:.3g}"


def _paper(table: str, name: str) -> str:
  # A paper stress head in another setting ("GNN stress=plane (edge forces)", "... (shipped
  # budget)") is compared with the paper's row of that head.
  head = name.split(" (")[0] if name.startswith("GNN stress=") else name
  paper = PAPER[table].get(name) or PAPER[table].get(head)
  return " / ".join(map(str, paper)) if paper else "–"


#: The random-relaxation GNN that Table 2 sets the MD-trained GNN against.
RANDOM_GNN_ROW = "GNN noise=0.01"


def md_gap_lines(summary: dict) -> list[str]:
  """How far the MD-trained GNN falls behind on random relaxations: its force and stress MAE over
  the random-relaxation GNN's (:data:`RANDOM_GNN_ROW`) and over its own on MD frames, ours and
  the paper's (empty when a row is missing)."""
  md, on_md, ref = (
    summary.get(n) for n in ("GNN (MD data)", "GNN (MD data) on MD", RANDOM_GNN_ROW)
  )
  if md is None:
    return []
  paper = PAPER["table2"]
  lines = []
  for other, name, label in (
    (ref, RANDOM_GNN_ROW, "the random-relaxation GNN"),
    (on_md, "GNN (MD data) on MD", "itself on MD frames"),
  ):
    values = [
      (_mean(md[k]), _mean(other[k]) if other else None) for k in ("force_mae", "stress_mae")
    ]
    if any(a is None or not b for a, b in values):
      continue
    ours = " and ".join(f"{a / b:.1f}x" for a, b in values)
    theirs = " and ".join(f"{a / b:.1f}x" for a, b in zip(paper["GNN (MD data)"], paper[name]))
    lines.append(
      f"- GNN (MD data) on random relaxations against {label} (`{name}`): force and stress MAE "
      f"{ours} (paper {theirs})."
    )
  return lines


def _table(summary: dict, names: list[str], columns, table: str) -> list[str]:
  head = " | ".join(title for title, _ in columns)
  lines = [f"| row | {head} | paper |", "|---|" + "---:|" * len(columns) + "---|"]
  for name in names:
    cells = " | ".join(get(summary[name]) for _, get in columns)
    mark = " †" if summary[name].get("raw_offsets") else ""
    lines.append(f"| {name}{mark} | {cells} | {_paper(table, name)} |")
  return lines


def tables_markdown(summary: dict, *, machine: str = "", notes=()) -> str:
  """The paper's Tables 1, 2, 3 and 5 (rows present in ``summary``), ours beside the paper's."""
  names = list(summary)
  noise = [n for n in names if n.startswith("GNN noise=")]
  table2 = [n for n in names if n.startswith(("GNN (MD data)", "energy GNN"))]
  heads = [n for n in names if n.startswith("GNN stress=")]
  other = [n for n in names if n not in noise + table2 + heads + ["MEAM"]]
  meam = ["MEAM"] if "MEAM" in summary else []
  four = [
    ("force MAE (eV/Å)", lambda r: _fmt(r["force_mae"])),
    ("stress MAE (kBar)", lambda r: _fmt(r["stress_mae"])),
    ("relaxed match", lambda r: _fmt(r["relaxed_match"])),
    ("traj. match", lambda r: _fmt(r["trajectory_match"])),
  ]
  lines = [
    "# Results (ours vs the paper)",
    "",
    "Ours: CHGNet teacher (stand-in for VASP PBE), CPU-scale data and training — see README.",
    "Paper: VASP PBE teacher, ~4,500 relaxations per stoichiometry. Mean (std over seeds).",
    "At CPU scale the `GNN noise=` and `GNN (MD data)` rows use our equivariant edge heads;",
    "`GNN stress=plane|corner|global` use the paper's node force head and trunk;",
    "`GNN stress=... (edge forces)` the same stress heads beside our edge force head.",
  ]
  if machine:
    lines.append(f"Machine: {machine}.")
  lines += [f"- {note}" for note in notes]
  if any(row.get("raw_offsets") for row in summary.values()):
    lines.append(f"- {RAW_OFFSETS_NOTE}")
  lines += ["", "## Table 1: noise sweep on the test set", ""]
  lines += _table(summary, noise + other + meam, four, "table1")
  if table2:
    lines += ["", "## Table 2: training data and architecture baselines", ""]
    ref = [RANDOM_GNN_ROW] if RANDOM_GNN_ROW in summary and "GNN (MD data)" in summary else []
    lines += _table(summary, table2 + ref + meam, four[:2], "table2")
    gaps = md_gap_lines(summary)
    if gaps:
      lines += [""] + gaps
  lines += ["", "## Table 3: Li15Si4 held out", ""]
  hold = [
    ("relaxed match", lambda r: _fmt(r["holdout"]["relaxed_match"])),
    ("traj. match", lambda r: _fmt(r["holdout"]["trajectory_match"])),
    (
      "experimental found / in teacher",
      lambda r: (
        f"{_fmt(r['holdout']['experimental_found'])} / "
        f"{_fmt(r['holdout']['experimental_in_teacher'])}"
      ),
    ),
  ]
  lines += _table(summary, noise + other + heads + meam, hold, "table3")
  if heads:
    lines += ["", "## Table 5: stress heads", ""]
    lines += _table(summary, heads + meam, four, "table5")
  lines += goals_markdown(goals(summary))
  lines += ["", "## Wall time (all seeds of a row together)", ""]
  lines += ["| row | seeds | training (min) | evaluation (min) |", "|---|---:|---:|---:|"]
  for name in names:
    row = summary[name]
    train = row.get("train_seconds")
    train_text = "–" if train is None else f"{train / 60:.1f}"
    lines.append(
      f"| {name} | {row['seeds']} | {train_text} | {row.get('wall_time_s', 0.0) / 60:.1f} |"
    )
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise InputError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _RUNS.value:
    raise InputError("--runs is required (comma-separated run directories with eval.json)")
  if _ROW_NAMES.value and len(_ROW_NAMES.value) != len(_RUNS.value):
    raise InputError("--row_names needs one name per run")
  runs = []
  for k, d in enumerate(_RUNS.value):
    path = os.path.join(d, "eval.json")
    if not os.path.exists(path):
      raise InputError(f"{path}: no such file (run crystal-search evaluate first)")
    with open(path) as f:
      report = json.load(f)
    report["train_seconds"] = train_seconds(d)
    report["raw_offsets"] = raw_offsets(d, report)
    runs.append((_ROW_NAMES.value[k] if _ROW_NAMES.value else row_name(d, report), report))
  summary = summarize(runs)
  os.makedirs(_OUT.value, exist_ok=True)
  machine = machines([report for _, report in runs])
  with open(os.path.join(_OUT.value, "summary.json"), "w") as f:
    record = {
      "rows": summary,
      "goals": goals(summary),
      "machine": machine,
      "notes": _NOTES.value,
      "paper": PAPER,
    }
    json.dump(record, f, indent=2)
  text = tables_markdown(summary, machine=machine, notes=_NOTES.value)
  with open(os.path.join(_OUT.value, "tables.md"), "w") as f:
    f.write(text)
  from crystal_search import plots

  plots.noise_sweep(summary, os.path.join(_OUT.value, "noise_sweep.png"))
  panels = {"test": step_curves(runs, "test"), "held out (Li15Si4)": step_curves(runs, "holdout")}
  plots.matched_by_step_rows(panels, os.path.join(_OUT.value, "matched_by_step.png"))
  print(text)


if __name__ == "__main__":
  run(main)
