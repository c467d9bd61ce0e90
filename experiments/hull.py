r"""The convex hull of finished searches: ``crystal-search hull --inputs=RUN,RUN --output_dir=OUT``.

Relaxes the elemental references (bcc Li, diamond Si) with the force field the searches used,
refers every searched structure to them and writes ``hull.json``, ``hull.md``, ``hull.png`` and
the symmetrized CIFs of the stable phases (``stable/``) into ``--output_dir``
(:func:`crystal_search.hull_report.hull_from_runs`).  Pass the same ``--force_field``,
``--model`` and ``--energy_model`` as the searches: the runs record their force field and a
different one is refused.
"""

from __future__ import annotations

from absl import flags

from crystal_search import hull, hull_report, search
from crystal_search.errors import InputError
from experiments.common import run

_INPUTS = flags.DEFINE_list("inputs", None, "Finished search directories, comma list.")
_OUT = flags.DEFINE_string("output_dir", None, "Directory for the hull report.")
_FORCE_FIELD = flags.DEFINE_enum(
  "force_field", "model", ["model", "chgnet", "meam"], "What relaxed the searches."
)
_MODEL = flags.DEFINE_string(
  "model", None, "Model directory or packaged model (default, fast, tiny) the searches used."
)
_ENERGY_MODEL = flags.DEFINE_string(
  "energy_model", None, "Energy model directory the searches ranked with (default: shipped)."
)
_OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace a previous hull in output_dir.")
_QUIET = flags.DEFINE_boolean("quiet", False, "No progress bars.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise InputError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _INPUTS.value:
    raise InputError("--inputs is required (finished search directories, DIR,DIR,...)")
  if not _OUT.value:
    raise InputError("--output_dir is required")
  hull.load_runs(_INPUTS.value)  # bad inputs fail before a force field loads
  force_field, energy_fn = search.load_force_field(
    _FORCE_FIELD.value, model=_MODEL.value, energy_model=_ENERGY_MODEL.value
  )
  result = hull_report.hull_from_runs(
    _INPUTS.value,
    force_field=force_field,
    energy_fn=energy_fn,
    output_dir=_OUT.value,
    overwrite=_OVERWRITE.value,
    progress=not _QUIET.value,
  )
  print(
    f"stable: {', '.join(result.stable)} ({len(result.rows)} structures) -> {_OUT.value}/hull.md"
  )


if __name__ == "__main__":
  run(main)
