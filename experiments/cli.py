"""The ``crystal-search`` console command: ``crystal-search SUBCOMMAND [--flags]``.

Each subcommand is an absl binary in ``experiments/`` (or ``data_tools/``) that
is also runnable as ``python -m experiments.NAME``.
"""

from __future__ import annotations

import importlib
import sys

#: subcommand -> module with an absl ``main(argv)``.
COMMANDS: dict[str, str] = {
  "search": "experiments.search",
  "merge": "experiments.merge",
  "hull": "experiments.hull",
  "distill": "experiments.distill",
  "relax": "experiments.relax",
  "train": "experiments.train",
  "evaluate": "experiments.evaluate",
  "generate-random": "data_tools.generate_random",
  "generate-teacher": "data_tools.generate_teacher",
  "build-dataset": "data_tools.build_dataset",
  "build-strain-frames": "data_tools.build_strain_frames",
  "dataset-stats": "data_tools.dataset_stats",
}


def _usage() -> str:
  names = "\n  ".join(sorted(COMMANDS))
  return (
    "usage: crystal-search COMMAND [--flags]   (COMMAND --help for its flags)\n"
    "       crystal-search --version\n"
    f"commands:\n  {names}"
  )


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(_usage())
    sys.exit(0 if len(argv) >= 2 else 2)
  if argv[1] == "--version":
    from crystal_search import __version__

    print(f"crystal-search {__version__}")
    sys.exit(0)
  command = argv[1]
  if command not in COMMANDS:
    print(f"error: unknown command {command!r}\n{_usage()}", file=sys.stderr)
    sys.exit(2)
  try:
    module = importlib.import_module(COMMANDS[command])
  except ModuleNotFoundError as e:
    print(f"error: command {command!r} is not available ({e})", file=sys.stderr)
    sys.exit(2)
  from experiments.common import run

  run(module.main, argv=[f"crystal-search {command}"] + argv[2:])


if __name__ == "__main__":
  main()
