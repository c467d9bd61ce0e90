"""Build the train/val/test/holdout sets from teacher (or imported) relaxations.

  python -m data_tools.build_dataset --input=data/teacher --output=data/dataset

The paper's protocol (crystal_search.datasets.sampling): training frames from the
high-force part (max force > 0.1 eV/Å), at most one in five ionic steps, no frame
matching the previous kept one (StructureMatcher stol=0.05); trajectories split
80/10/10 with a fixed seed; Li15Si4 held out.
"""

from __future__ import annotations

import glob
import os

from absl import flags

from crystal_search.datasets import sampling
from crystal_search.errors import InputError
from experiments.common import run

FLAGS = flags.FLAGS
flags.DEFINE_string("input", "data/teacher", "Folder of relaxation files (<Formula>/*.npz).")
flags.DEFINE_string("output", "data/dataset", "Output folder.")
flags.DEFINE_float("force_threshold", 0.1, "High-force threshold (eV/Å).")
flags.DEFINE_integer("stride", 5, "At most one frame per this many ionic steps.")
flags.DEFINE_float("stol", 0.05, "StructureMatcher stol for dropping repeated frames.")
flags.DEFINE_list("fractions", ["0.8", "0.1", "0.1"], "Train/val/test trajectory fractions.")
flags.DEFINE_integer("seed", 0, "Split seed.")
flags.DEFINE_list("holdout", ["Li15Si4"], "Stoichiometries held out entirely.")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_bool(
  "md", False, "Input holds MD frame files (<input>/*.npz): split each run by time instead."
)


def main(argv: list[str]) -> None:
  del argv
  if not os.path.isdir(FLAGS.input):
    raise InputError(f"--input {FLAGS.input}: no such folder")
  if FLAGS.md:
    md_paths = sorted(glob.glob(os.path.join(FLAGS.input, "*.npz")))
    fractions = tuple(float(x) for x in FLAGS.fractions)
    manifest = sampling.build_md_dataset(
      md_paths,
      FLAGS.output,
      fractions=fractions,
      holdout=tuple(FLAGS.holdout),
      source=os.path.abspath(FLAGS.input),
    )
    for formula, row in manifest["per_stoichiometry"].items():
      print(formula, row)
    print(f"wrote {FLAGS.output}/manifest.json")
    return
  paths = sorted(glob.glob(os.path.join(FLAGS.input, "*", "*.npz")))
  if not paths:
    raise InputError(f"--input {FLAGS.input}: no relaxation files (<Formula>/*.npz)")
  try:
    fractions = tuple(float(x) for x in FLAGS.fractions)
  except ValueError:
    raise InputError(f"--fractions {FLAGS.fractions}: expected three numbers") from None
  if len(fractions) != 3:
    raise InputError(f"--fractions {FLAGS.fractions}: expected three numbers")
  config = sampling.SamplingConfig(
    force_threshold=FLAGS.force_threshold,
    stride=FLAGS.stride,
    stol=FLAGS.stol,
    fractions=fractions,
    seed=FLAGS.seed,
    holdout=tuple(h.strip() for h in FLAGS.holdout if h.strip()),
  )
  manifest = sampling.build_dataset(
    paths, FLAGS.output, config=config, source=os.path.abspath(FLAGS.input), progress=FLAGS.progress
  )
  print(f"{'stoichiometry':14s} relax  fail  train   val  test  holdout")
  for formula, row in manifest["per_stoichiometry"].items():
    print(
      f"{formula:14s} {row['relaxations']:5d} {row['failed']:5d} {row['frames_train']:6d} "
      f"{row['frames_val']:5d} {row['frames_test']:5d} {row['frames_holdout']:8d}"
    )
  print(f"wrote {FLAGS.output}/manifest.json")


if __name__ == "__main__":
  run(main)
