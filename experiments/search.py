r"""Crystal structure search: ``crystal-search search --composition=Li15Si4 --output_dir=OUT``.

Relaxes random structures with the pretrained force/stress model shipped in the package (or any
``--model`` directory, or ``--force_field=chgnet`` to run the teacher's own search), groups the
results, ranks them by energy per atom and writes CIFs, ``summary.md``, ``summary.json`` and
``energy_volume.png``.

Every field of :func:`crystal_search.search.get_search_config` is a flag ``--search.FIELD``
(e.g. ``--search.energy_window=0.02``); the common ones also go by their short name
(``--composition``, ``--num_structures``, ``--fmax``, ... :data:`ALIASES`), whose default is
the config's.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from crystal_search import search
from crystal_search.errors import InputError
from experiments.common import ConfigAliases, print_outcome, run

#: Short flag -> (search config field, help).  The flag's type and default come from the field.
ALIASES: dict[str, tuple[str, str]] = {
  "composition": (
    "composition",
    "Composition, e.g. Li15Si4 (required); a comma list (LiSi,Li2Si,Li15Si4) searches each into "
    "OUTPUT/FORMULA/ (num_structures shared out equally) and writes their convex hull.",
  ),
  "num_structures": ("num_structures", "Random structures to generate and relax."),
  "max_atoms": ("max_atoms", "Largest cell (atoms)."),
  "formula_units": (
    "formula_units",
    "Formula units per cell to try, comma list (AIRSS NFORM), e.g. 2 for 38-atom Li15Si4 "
    "cells; '': every size up to --max_atoms.",
  ),
  "symmetric_fraction": (
    "symmetric_fraction",
    "Share of random cells built in a space group (the rest P1).",
  ),
  "min_symmops": (
    "min_symmops",
    "Smallest point-group order of a symmetric cell; with --max_symmops it can pin a high "
    "symmetry (e.g. 24 and 24 for cubic and hexagonal groups of 24 operations).",
  ),
  "max_symmops": (
    "max_symmops",
    "Largest point-group order of a symmetric cell (AIRSS SYMMOPS; paper: 6).",
  ),
  "primitive_cells": (
    "primitive_cells",
    "Count --max_atoms/--formula_units in the primitive cell also for centred space groups "
    "(C2, Cc, R3c, ...), so they can hold primitive cells of that size.",
  ),
  "seed": ("seed", "Random seed."),
  "optimizer": (
    "optimizer",
    "Relaxer update rule: fire (ASE's FIRE on positions and cell strain), lbfgs (ASE's L-BFGS "
    "on the same coordinates) or damped (the paper's VASP IBRION=3 steepest descent).",
  ),
  "fmax": ("fmax", "Force convergence (eV/Å)."),
  "max_steps": ("max_steps", "Step cap per relaxation."),
  "rescore_top_k": ("rescore_top_k", "Re-relax and re-score the top K with the teacher (CHGNet)."),
  "trajectories": ("write_trajectories", "Also write trajectories (extxyz)."),
}
#: Config fields a search cannot do without (given as ``--FIELD`` or ``--search.FIELD``).
REQUIRED = ("composition",)

_SEARCH = config_flags.DEFINE_config_dict(
  "search", search.get_search_config(), "Search settings (crystal_search.search)."
)
_ALIASES = ConfigAliases("search", search.get_search_config(), ALIASES, required=REQUIRED)
for _alias in ALIASES:
  flags.declare_key_flag(_alias)  # listed by --help with this binary's own flags
_OUT = flags.DEFINE_string("output_dir", None, "Directory for the report.")
_MODEL = flags.DEFINE_string(
  "model",
  None,
  "Relax every cell with this one model: a model directory, 'default', 'fast' or 'tiny' (the "
  "packaged models ~3x and ~8x cheaper a step). Without it the tiny model screens and the "
  "default model polishes "
  "(--search.screen_model, screen_fmax, polish_top_k, polish_window).",
)
_ENERGY_MODEL = flags.DEFINE_string(
  "energy_model", None, "Energy model directory for ranking (default: the shipped one)."
)
_FORCE_FIELD = flags.DEFINE_enum(
  "force_field",
  "model",
  ["model", "chgnet", "sevennet", "meam"],
  "What relaxes the structures (chgnet: the teacher; sevennet: SevenNet-0, a second universal "
  "potential).",
)
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace a previous run in output_dir.")
_RESUME = flags.DEFINE_boolean(
  "resume",
  False,
  "Continue the run in --output_dir (killed, stopped with `touch OUT/STOP`, or cut short) with "
  "the same settings; only unfinished chunks are redone.",
)
_SHARD = flags.DEFINE_string(
  "shard",
  None,
  "I/N: run only the I-th (1-based) of N disjoint parts of the seeded search, e.g. one per "
  "SLURM array task; `crystal-search merge` joins them into the unsharded run's report.",
)
_QUIET = flags.DEFINE_boolean("quiet", False, "No progress bars.")


def search_config():
  """The search config of the command line: ``--search.FIELD`` overrides, then the aliases."""
  return _ALIASES.apply(_SEARCH.value)


def _flag_present(name: str) -> bool:
  return name in flags.FLAGS and flags.FLAGS[name].present


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise InputError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = search_config()
  if not _OUT.value:
    raise InputError("--output_dir is required")
  # Screening goes with the packaged models; --model alone (or another force field) relaxes
  # every cell with that one model unless --search.screen_model is given too.
  screen = config.screen_model
  if _FORCE_FIELD.value != "model" or (_MODEL.value and not _flag_present("search.screen_model")):
    screen = ""
  given = [k for k in ("element_volumes", "pair_min_separation") if _flag_present(f"search.{k}")]
  search.apply_model_generator(config, _MODEL.value, given=given)
  sources = {
    "force_field": _FORCE_FIELD.value,
    "model": _MODEL.value or "",
    "energy_model": _ENERGY_MODEL.value or "",
    "screen_model": screen,
  }
  force_field, energy_fn, screen_ff, teacher = search.load_run_force_fields(
    sources, rescore=config.rescore_top_k > 0
  )
  kwargs = dict(
    force_field=force_field,
    energy_fn=energy_fn,
    teacher=teacher,
    screen_force_field=screen_ff,
    output_dir=_OUT.value,
    overwrite=_OVERWRITE.value,
    resume=_RESUME.value,
    sources=sources,
    progress=not _QUIET.value,
  )
  if "," in config.composition:  # one search per composition into OUT/FORMULA/, then the hull
    if _SHARD.value:
      raise InputError("--shard takes one composition; shard each composition's search instead")
    from crystal_search import multi_search

    hull = multi_search.run_multi_search(config.composition.split(","), config, **kwargs)
    print(f"stable: {', '.join(hull.stable)} -> {_OUT.value}/hull.md")
    return
  # run_search validates the config and parses the composition (for the force field's elements).
  result = search.run_search(config, shard=_SHARD.value, **kwargs)
  print_outcome(result, _OUT.value)


if __name__ == "__main__":
  run(main)
