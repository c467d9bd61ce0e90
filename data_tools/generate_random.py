"""Generate AIRSS-style random structures for compositions.

  python -m data_tools.generate_random --composition=Li15Si4,LiSi --num=10 --seed=0 \
      --output=random.extxyz          # one extxyz file (or a folder of CIFs)
"""

from __future__ import annotations

import os

from absl import flags

from crystal_search import random_structures as rs
from crystal_search.compositions import formula_name, parse_composition
from experiments.common import run

FLAGS = flags.FLAGS
flags.DEFINE_list("composition", None, "Compositions, e.g. Li15Si4,LiSi.")
flags.DEFINE_integer("num", 10, "Structures per composition.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("max_atoms", 38, "Largest number of atoms in a cell.")
flags.DEFINE_float("min_separation", 2.28, "Minimum interatomic distance (Å).")
flags.DEFINE_list("pair_min_separation", [], "Per-pair overrides, e.g. Li-Li=2.2,Si-Si=2.3.")
flags.DEFINE_float("volume_low", 0.8, "Lowest volume as a fraction of the estimate.")
flags.DEFINE_float("volume_high", 1.5, "Highest volume as a fraction of the estimate.")
flags.DEFINE_float("symmetric_fraction", 0.5, "Fraction of symmetric (non-P1) cells.")
flags.DEFINE_integer("min_symmops", 2, "Smallest point-group order of a symmetric cell.")
flags.DEFINE_integer("max_symmops", 6, "Largest point-group order of a symmetric cell.")
flags.DEFINE_list(
  "formula_units", [], "Formula units per cell to try (AIRSS NFORM), e.g. 2; default: every size."
)
flags.DEFINE_boolean(
  "primitive_cells", False, "Count atoms in the primitive cell also for centred space groups."
)
flags.DEFINE_integer("max_attempts", 40, "Tries per structure.")
flags.DEFINE_string("output", None, "An .extxyz/.xyz file, or a folder for CIFs.")


def _pairs(items: list[str]) -> tuple[tuple[str, float], ...]:
  from crystal_search.errors import InputError

  out = []
  for item in items:
    key, _, value = item.partition("=")
    try:
      out.append((key.strip(), float(value)))
    except ValueError:
      raise InputError(f"--pair_min_separation {item!r}: expected A-B=distance") from None
  return tuple(out)


def main(argv: list[str]) -> None:
  del argv
  from crystal_search.errors import InputError

  if not FLAGS.composition:
    raise InputError("--composition is required")
  if not FLAGS.output:
    raise InputError("--output is required (an .extxyz file or a folder)")
  config = rs.RandomStructureConfig(
    max_atoms=FLAGS.max_atoms,
    volume_range=(FLAGS.volume_low, FLAGS.volume_high),
    min_separation=FLAGS.min_separation,
    pair_min_separation=_pairs(FLAGS.pair_min_separation),
    symmetric_fraction=FLAGS.symmetric_fraction,
    min_symmops=FLAGS.min_symmops,
    max_symmops=FLAGS.max_symmops,
    formula_units=rs.parse_formula_units(",".join(FLAGS.formula_units)),
    primitive_cells=FLAGS.primitive_cells,
    max_attempts=FLAGS.max_attempts,
  )
  structures, names, infos = [], [], []
  for text in FLAGS.composition:
    comp = parse_composition(text)
    result = rs.generate(comp, FLAGS.num, seed=FLAGS.seed, config=config, progress=True)
    structures += result.structures
    names += [rs.structure_name(comp, FLAGS.seed, i) for i in result.indices]
    infos += result.info
    print(
      f"{formula_name(comp)}: {len(result.structures)} made, {len(result.failed)} failed "
      f"(failure rate {result.failure_rate:.1%}, {result.attempts} attempts)"
    )
  files = rs.write_structures(structures, FLAGS.output, names=names, info=infos)
  where = FLAGS.output if len(files) == 1 else os.path.join(FLAGS.output, "*.cif")
  print(f"wrote {len(structures)} structures to {where}")


if __name__ == "__main__":
  run(main)
