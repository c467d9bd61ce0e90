r"""Distil the teacher into a fast student for a chemical system, with active learning.

  crystal-search distill --elements=Li,Ge --compositions=LiGe,Li7Ge3 --output_dir=OUT \
      [--budget_teacher_relaxations=120] [--rounds=2]

then ``crystal-search search --model=OUT/model --composition=LiGe --output_dir=RUN``.  Every step
is resumable: rerun the same command after a kill (:mod:`crystal_search.distill`).
"""

from __future__ import annotations

import datetime

from absl import flags

from crystal_search import distill
from crystal_search.errors import InputError
from experiments.common import run

_DEFAULTS = distill.DistillConfig(elements=(), compositions=())
_ELEMENTS = flags.DEFINE_list("elements", None, "Element symbols of the system, e.g. Li,Ge.")
_COMPOSITIONS = flags.DEFINE_list("compositions", None, "Formulas to search, e.g. LiGe,Li7Ge3.")
_OUT = flags.DEFINE_string("output_dir", None, "Directory of the run (resumed when it holds it).")
_BUDGET = flags.DEFINE_integer(
  "budget_teacher_relaxations",
  _DEFAULTS.budget_teacher_relaxations,
  "Teacher relaxations of random cells in the first round (shared over the compositions).",
)
_ROUNDS = flags.DEFINE_integer(
  "rounds", _DEFAULTS.rounds, "Training rounds (each after the first adds active-learning labels)."
)
_TEACHER = flags.DEFINE_enum(
  "teacher", _DEFAULTS.teacher, ["chgnet", "sevennet", "morse"], "The teacher force field."
)
_SEED = flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of cells, splits and students.")
_MAX_ATOMS = flags.DEFINE_integer("max_atoms", _DEFAULTS.max_atoms, "Largest random cell (atoms).")
_EPOCHS = flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Training epochs of the first round.")
_FINETUNE = flags.DEFINE_integer(
  "finetune_epochs", _DEFAULTS.finetune_epochs, "Epochs of each later round (fine-tuning)."
)
_COMMITTEE = flags.DEFINE_integer("committee", _DEFAULTS.committee, "Students per round.")
_PROBE = flags.DEFINE_integer(
  "probe_cells", _DEFAULTS.probe_cells, "Fresh cells per composition the student relaxes a round."
)
_LABELS = flags.DEFINE_integer(
  "label_frames", _DEFAULTS.label_frames, "Most-disputed frames the teacher labels a round."
)
_SHARD = flags.DEFINE_string(
  "shard",
  None,
  "I/N: run only the I-th (1-based) of N parts of the first round's teacher relaxations into "
  "--output_dir and stop (one per process or SLURM task); the command without --shard finishes.",
)
_STEPS = flags.DEFINE_integer(
  "teacher_max_steps", _DEFAULTS.teacher_max_steps, "Step cap of a teacher relaxation."
)


def _log(line: str) -> None:
  stamp = datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S")
  print(f"{stamp} {line}", flush=True)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise InputError(f"unexpected arguments: {' '.join(argv[1:])}")
  for name, flag in (
    ("elements", _ELEMENTS),
    ("compositions", _COMPOSITIONS),
    ("output_dir", _OUT),
  ):
    if not flag.value:
      raise InputError(f"--{name} is required")
  config = distill.DistillConfig(
    elements=tuple(e.strip() for e in _ELEMENTS.value),
    compositions=tuple(c.strip() for c in _COMPOSITIONS.value),
    budget_teacher_relaxations=_BUDGET.value,
    rounds=_ROUNDS.value,
    seed=_SEED.value,
    teacher=_TEACHER.value,
    max_atoms=_MAX_ATOMS.value,
    teacher_max_steps=_STEPS.value,
    committee=_COMMITTEE.value,
    epochs=_EPOCHS.value,
    finetune_epochs=_FINETUNE.value,
    probe_cells=_PROBE.value,
    label_frames=_LABELS.value,
  )
  report = distill.run_distill(config, _OUT.value, shard=_SHARD.value, log=_log)
  if _SHARD.value:
    done = report["teacher"]
    print(f"shard {_SHARD.value}: {done['ran']} teacher relaxations ({done['done_before']} before)")
    return
  last = report["rounds"][-1]
  print(
    f"student: force MAE {last['force_mae']:.4f} eV/Å, stress MAE {last['stress_mae']:.2f} kBar "
    f"-> {_OUT.value}/model ({_OUT.value}/report.md)"
  )


if __name__ == "__main__":
  run(main)
