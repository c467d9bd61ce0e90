"""Import relaxations from VASP or the paper's published JSON, or export to extxyz.

python -m data_tools.import_data --input=Li15Si4_02 --output=data/imported
    # every *.json / vasprun.xml[.gz] / *.extxyz under --input, one .npz per relaxation in
    # <output>/<Formula>/ (the layout build_dataset reads)
python -m data_tools.import_data --export_extxyz=data/dataset/train.npz --output=train.extxyz
"""

from __future__ import annotations

from absl import flags

from crystal_search.datasets import frames as frames_lib
from crystal_search.datasets import importers
from crystal_search.errors import InputError
from experiments.common import run

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "File or folder of relaxations to import.")
flags.DEFINE_string("output", None, "Output folder (import) or .extxyz file (export).")
flags.DEFINE_string("stoichiometry", None, "Override the stoichiometry of imported data.")
flags.DEFINE_string("export_extxyz", None, "A Frames .npz to export as extxyz instead.")


def main(argv: list[str]) -> None:
  del argv
  if not FLAGS.output:
    raise InputError("--output is required")
  if FLAGS.export_extxyz:
    frames = frames_lib.load(FLAGS.export_extxyz)
    importers.write_extxyz(frames, FLAGS.output)
    print(f"wrote {len(frames)} frames to {FLAGS.output}")
    return
  if not FLAGS.input:
    raise InputError("--input is required (or --export_extxyz)")
  parts = importers.import_folder(FLAGS.input, stoichiometry=FLAGS.stoichiometry)
  written = importers.save_imported(parts, FLAGS.output)
  frames = sum(len(p) for p in parts)
  print(f"imported {len(parts)} relaxations ({frames} frames) into {FLAGS.output}")
  del written


if __name__ == "__main__":
  run(main)
