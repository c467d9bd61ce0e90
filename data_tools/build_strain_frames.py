"""Add teacher-labelled strained copies of the relaxed training structures to a dataset.

  python -m data_tools.build_strain_frames --teacher=data/teacher --dataset=data/dataset \
      --output=data/dataset_strain

The last structure of every training trajectory of ``--dataset`` (its split rule and holdout)
is copied ``--copies`` times with a random volume in ``--volume_low``–``--volume_high`` of its
own, a random traceless shear strain and small displacements, and labelled by the teacher
(CHGNet): the near-equilibrium stress response the paper's high-force sampling leaves out
(:mod:`crystal_search.datasets.strain`).  ``--output`` gets ``train.npz`` (the base training
frames plus these), the base dataset's other splits linked unchanged, ``strain.npz`` and
resumable ``shards/``; with ``--teacher=''`` it is rebuilt from an existing ``strain.npz``.
"""

from __future__ import annotations

import glob
import os

from absl import flags

from crystal_search.datasets import strain
from crystal_search.errors import InputError
from experiments.common import run

FLAGS = flags.FLAGS
flags.DEFINE_string("teacher", "data/teacher", "Teacher relaxation files (<Formula>/*.npz).")
flags.DEFINE_string("dataset", "data/dataset", "The base dataset (its manifest and train.npz).")
flags.DEFINE_string("output", "data/dataset_strain", "Output dataset folder.")
flags.DEFINE_integer("copies", 5, "Strained copies per relaxed training structure.")
flags.DEFINE_float("volume_low", 0.88, "Smallest volume ratio V/V_final.")
flags.DEFINE_float("volume_high", 1.12, "Largest volume ratio V/V_final.")
flags.DEFINE_float("shear_std", 0.02, "Std of the traceless strain components.")
flags.DEFINE_float("rattle", 0.02, "Std of the displacements (Å).")
flags.DEFINE_integer("seed", 0, "Seed of the strains.")
flags.DEFINE_string("teacher_name", "chgnet", "Force field that labels the frames.")
flags.DEFINE_enum(
  "source",
  "finals",
  list(strain.SOURCES),
  "finals: the last structure of every training trajectory (needs --teacher); frames: every "
  "frame of the --dataset's train.npz (--teacher is not read; --label=false joins "
  "an existing strain.npz).",
)
flags.DEFINE_integer("max_sources", 0, "With --source=frames: a seeded subset of so many frames.")
flags.DEFINE_bool("label", True, "With --source=frames: label missing shards with the teacher.")
flags.DEFINE_integer("worker", 0, "This process's index among --workers sharing the shards.")
flags.DEFINE_integer("workers", 1, "Processes sharing the labelling (one core each).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise InputError(f"unexpected arguments: {' '.join(argv[1:])}")
  from crystal_search import relax

  paths = []
  if FLAGS.teacher and FLAGS.source == "finals":
    if not os.path.isdir(FLAGS.teacher):
      raise InputError(f"--teacher {FLAGS.teacher}: no such folder")
    paths = sorted(glob.glob(os.path.join(FLAGS.teacher, "*", "*.npz")))
    if not paths:
      raise InputError(f"--teacher {FLAGS.teacher}: no relaxation files (<Formula>/*.npz)")
  config = strain.StrainConfig(
    copies=FLAGS.copies,
    volume_range=(FLAGS.volume_low, FLAGS.volume_high),
    shear_std=FLAGS.shear_std,
    rattle=FLAGS.rattle,
    seed=FLAGS.seed,
  )
  config.check()
  labelling = bool(paths) if FLAGS.source == "finals" else FLAGS.label
  force_field = relax.make_force_field(FLAGS.teacher_name) if labelling else None
  manifest = strain.build(
    paths,
    FLAGS.dataset,
    FLAGS.output,
    force_field=force_field,
    config=config,
    source=FLAGS.source,
    max_sources=FLAGS.max_sources,
    worker=(FLAGS.worker, FLAGS.workers),
    progress=FLAGS.progress,
    log=print,
  )
  if "missing_shards" in manifest:
    print(f"{manifest['missing_shards']} shards left to other workers; rerun when they finish")
    return
  print(
    f"{manifest['base_train_frames']} training frames + {manifest['strain_frames']} strain "
    f"frames -> {FLAGS.output}/train.npz"
  )


if __name__ == "__main__":
  run(main)
