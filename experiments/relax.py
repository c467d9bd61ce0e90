r"""Relax structures: ``crystal-search relax --input=FILE_OR_GLOB --output_dir=DIR``.

Reads CIF / POSCAR / extxyz / pymatgen-JSON files (a file, a directory or a glob), relaxes
positions and cell with VASP-style damped dynamics (IBRION=3; ``--relax.potim``,
``--relax.smass`` and the other fields of :func:`crystal_search.relax.get_relax_config`;
``--relax.optimizer=fire`` for ASE's FIRE on positions and cell strain instead), and
writes ``DIR/<name>.cif``, ``DIR/trajectories/<name>.extxyz`` (``--trajectory``) and
``DIR/summary.json``.  A file that cannot be read, an unsupported element or a failed
relaxation is one line on stderr and one entry in the summary; the rest still run.

Examples::

  crystal-search relax --input='starts/*.cif' --output_dir=out --model=models/force_stress
  crystal-search relax --input=POSCAR --output_dir=out --force_field=chgnet --fmax=0.05
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from crystal_search import relax
from crystal_search.errors import InputError
from experiments.common import run

_INPUT = flags.DEFINE_string("input", None, "Structure file, directory or glob.")
_OUT = flags.DEFINE_string("output_dir", None, "Where relaxed CIFs and summary.json go.")
_MODEL = flags.DEFINE_string(
  "model",
  None,
  "Force/stress model directory, or 'fast' for the packaged faster model "
  "(--force_field=model; default: the packaged, most accurate model).",
)
_FORCE_FIELD = flags.DEFINE_enum(
  "force_field", "model", list(relax.FORCE_FIELD_KINDS), "What relaxes the structures."
)
_UNTRAINED = flags.DEFINE_boolean(
  "untrained", False, "With --force_field=model and no --model: random weights (smoke tests only)."
)
_FMAX = flags.DEFINE_float("fmax", None, "Force convergence, eV/Å (overrides --relax.fmax).")
_SMAX = flags.DEFINE_float("smax", None, "Stress convergence, kBar (overrides --relax.smax).")
_MAX_STEPS = flags.DEFINE_integer("max_steps", None, "Step cap (overrides --relax.max_steps).")
_TRAJ = flags.DEFINE_boolean("trajectory", False, "Also write every step as extxyz.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Structures per batch (default: memory budget).")
_QUIET = flags.DEFINE_boolean("quiet", False, "No progress bar.")
_RELAX = config_flags.DEFINE_config_dict("relax", relax.get_relax_config())


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise InputError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _INPUT.value:
    raise InputError("--input is required (a structure file, directory or glob)")
  if not _OUT.value:
    raise InputError("--output_dir is required")
  config = _RELAX.value
  for key, flag in (("fmax", _FMAX), ("smax", _SMAX), ("max_steps", _MAX_STEPS)):
    if flag.value is not None:
      config[key] = flag.value
  relax.validate_config(config)
  force_field = relax.make_force_field(
    _FORCE_FIELD.value, model=_MODEL.value, untrained=_UNTRAINED.value
  )
  summary = relax.relax_files(
    _INPUT.value,
    force_field,
    _OUT.value,
    config=config,
    trajectories=_TRAJ.value,
    batch_size=_BATCH.value,
    progress=not _QUIET.value,
  )
  c = summary["counts"]
  print(
    f"{c['relaxed']} relaxed ({c['converged']} converged, {c['failed']} failed of "
    f"{c['inputs']} inputs) with {summary['force_field']} -> {_OUT.value}/summary.json"
  )


if __name__ == "__main__":
  run(main)
