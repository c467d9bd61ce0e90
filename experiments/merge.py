r"""Join the shards of a search: ``crystal-search merge --inputs=A,B,... --output_dir=OUT``.

Each input is the output directory of ``crystal-search search ... --shard=I/N`` (the same
command with I = 1 .. N, e.g. one SLURM array task each).  The merge checks that the inputs are
shards of one run (same settings and models) and that together they hold every chunk once, then
dedupes, polishes and ranks across them: the report is the one the unsharded run writes.  The
force fields are loaded as the shards' ``run.json`` names them.
"""

from __future__ import annotations

from absl import flags

from crystal_search import run_store, search
from crystal_search.errors import InputError
from experiments.common import print_outcome, run

_INPUTS = flags.DEFINE_list("inputs", None, "Search directories of the shards, comma-separated.")
_OUT = flags.DEFINE_string("output_dir", None, "Directory for the merged report.")
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace a previous run in output_dir.")
_QUIET = flags.DEFINE_boolean("quiet", False, "No progress bars.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise InputError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _INPUTS.value:
    raise InputError("--inputs is required (the shards' search directories, comma-separated)")
  if not _OUT.value:
    raise InputError("--output_dir is required")
  first = run_store.read_run(_INPUTS.value[0])
  if first is None:
    raise InputError(f"{_INPUTS.value[0]}: not a search directory (no {run_store.RUN_FILE})")
  sources = first["force_fields"].get("sources") or {}
  if not sources:
    raise InputError(f"{_INPUTS.value[0]}: its run.json does not say which models made it")
  config = search.get_search_config()
  config.update(first["settings"])
  force_field, energy_fn, screen_ff, teacher = search.load_run_force_fields(
    sources, rescore=config.rescore_top_k > 0
  )
  result = search.merge_runs(
    _INPUTS.value,
    force_field=force_field,
    energy_fn=energy_fn,
    screen_force_field=screen_ff,
    teacher=teacher,
    output_dir=_OUT.value,
    overwrite=_OVERWRITE.value,
    progress=not _QUIET.value,
  )
  print_outcome(result, _OUT.value)


if __name__ == "__main__":
  run(main)
