r"""Crystal structure search: ``crystal-search search --composition=Li15Si4 --output_dir=OUT``.

Relaxes random structures with the pretrained force/stress model shipped in the package (or any
``--model`` directory, or ``--force_field=chgnet`` to run the teacher's own search), groups the
results, ranks them by energy per atom and writes CIFs, ``summary.md``, ``summary.json`` and
``energy_volume.png``.
"""

from __future__ import annotations

from absl import flags

from crystal_search import search
from crystal_search.errors import InputError
from crystal_search.relax import OPTIMIZERS
from experiments.common import run

_COMPOSITION = flags.DEFINE_string("composition", None, "Composition, e.g. Li15Si4.")
_NUM = flags.DEFINE_integer("num_structures", 500, "Random structures to generate and relax.")
_OUT = flags.DEFINE_string("output_dir", None, "Directory for the report.")
_MAX_ATOMS = flags.DEFINE_integer("max_atoms", 38, "Largest cell (atoms).")
_FORMULA_UNITS = flags.DEFINE_string(
  "formula_units",
  "",
  "Formula units per cell to try, comma list (AIRSS NFORM), e.g. 2 for 38-atom Li15Si4 cells; "
  "default: every size up to --max_atoms.",
)
_SYMMETRIC = flags.DEFINE_float(
  "symmetric_fraction", 0.5, "Share of random cells built in a space group (the rest P1)."
)
_MIN_SYMMOPS = flags.DEFINE_integer(
  "min_symmops",
  2,
  "Smallest point-group order of a symmetric cell; with --max_symmops it can pin a high "
  "symmetry (e.g. 24 and 24 for cubic and hexagonal groups of 24 operations).",
)
_MAX_SYMMOPS = flags.DEFINE_integer(
  "max_symmops", 6, "Largest point-group order of a symmetric cell (AIRSS SYMMOPS; paper: 6)."
)
_PRIMITIVE = flags.DEFINE_boolean(
  "primitive_cells",
  False,
  "Count --max_atoms/--formula_units in the primitive cell also for centred space groups "
  "(C2, Cc, R3c, ...), so they can hold primitive cells of that size.",
)
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_MODEL = flags.DEFINE_string(
  "model",
  None,
  "Force/stress model directory, or 'fast' for the packaged model ~2.4x cheaper a step "
  "(default: the packaged, most accurate model).",
)
_ENERGY_MODEL = flags.DEFINE_string(
  "energy_model", None, "Energy model directory for ranking (default: the shipped one)."
)
_FORCE_FIELD = flags.DEFINE_enum(
  "force_field", "model", ["model", "chgnet", "meam"], "What relaxes the structures."
)
_RESCORE = flags.DEFINE_integer(
  "rescore_top_k", 0, "Re-relax and re-score the top K with the teacher (CHGNet)."
)
_OPTIMIZER = flags.DEFINE_enum(
  "optimizer",
  search.get_search_config().optimizer,
  list(OPTIMIZERS),
  "Relaxer update rule: fire (ASE's FIRE on positions and cell strain, fewer steps) or damped "
  "(the paper's VASP IBRION=3 steepest descent, SMASS=2, POTIM=0.4).",
)
_FMAX = flags.DEFINE_float("fmax", 0.05, "Force convergence (eV/Å).")
_MAX_STEPS = flags.DEFINE_integer("max_steps", 600, "Step cap per relaxation.")
_TRAJ = flags.DEFINE_boolean("trajectories", False, "Also write trajectories (extxyz).")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace a previous run in output_dir.")
_QUIET = flags.DEFINE_boolean("quiet", False, "No progress bars.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise InputError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _COMPOSITION.value:
    raise InputError("--composition is required (e.g. --composition=Li15Si4)")
  if not _OUT.value:
    raise InputError("--output_dir is required")
  config = search.get_search_config()
  config.composition = _COMPOSITION.value
  config.num_structures = _NUM.value
  config.max_atoms = _MAX_ATOMS.value
  config.formula_units = _FORMULA_UNITS.value
  config.symmetric_fraction = _SYMMETRIC.value
  config.min_symmops = _MIN_SYMMOPS.value
  config.max_symmops = _MAX_SYMMOPS.value
  config.primitive_cells = _PRIMITIVE.value
  config.seed = _SEED.value
  config.rescore_top_k = _RESCORE.value
  config.optimizer = _OPTIMIZER.value
  config.fmax = _FMAX.value
  config.max_steps = _MAX_STEPS.value
  config.write_trajectories = _TRAJ.value
  search.validate_config(config)
  force_field, energy_fn = search.load_force_field(
    _FORCE_FIELD.value, model=_MODEL.value, energy_model=_ENERGY_MODEL.value
  )
  teacher = search.load_force_field("chgnet")[0] if _RESCORE.value > 0 else None
  result = search.run_search(
    config,
    force_field=force_field,
    energy_fn=energy_fn,
    teacher=teacher,
    output_dir=_OUT.value,
    overwrite=_OVERWRITE.value,
    progress=not _QUIET.value,
  )
  t = result.totals
  print(
    f"{t['unique']} unique structures from {t['relaxed']} relaxations "
    f"({t['failed']} failed) in {t['wall_time_s']['total']:.1f} s -> {_OUT.value}/summary.md"
  )
  if t["interrupted"]:
    print("run cut short: the report holds what finished")


if __name__ == "__main__":
  run(main)
