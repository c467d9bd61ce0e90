"""What every binary shares: one-line errors instead of tracebacks, the machine's name."""

from __future__ import annotations

import importlib
import os
import platform
import sys
from collections.abc import Callable

from absl import app, flags, logging

from crystal_search.errors import InputError


def machine_name() -> str:
  """The machine a result was measured on, in one line: platform, CPU count, JAX backend."""
  import jax

  return f"{platform.platform()}, {os.cpu_count()} CPUs, JAX on {jax.default_backend()}"


def machines(reports: list[dict]) -> str:
  """The machines the evaluations ran on (``machine`` in ``eval.json``), distinct, in order; for
  evaluations that record none (older ones) the line says so and names the machine
  that builds the tables instead."""
  named = list(dict.fromkeys(r["machine"] for r in reports if r.get("machine")))
  missing = sum(not r.get("machine") for r in reports)
  if missing:
    named.append(
      f"{missing} of {len(reports)} evaluations record no machine (older than the field; "
      f"tables built on {machine_name()})"
    )
  return "; ".join(named)


def run(main: Callable[[list[str]], None], argv: list[str] | None = None) -> None:
  """``absl.app.run`` that turns :class:`InputError` (and flag errors) into one line on stderr.

  Exit codes: 0 success, 1 bad input, 130 interrupted.  Library INFO logs (orbax, jax) are
  hidden unless ``--verbosity`` (absl) or a binary's own ``--verbose`` asks for them.  JAX's
  persistent compilation cache is on (:mod:`crystal_search.compile_cache`).
  """
  from crystal_search import compile_cache

  compile_cache.enable()

  def wrapped(args: list[str]) -> None:
    fl = flags.FLAGS
    verbose = "verbose" in fl and fl["verbose"].value
    if not fl["verbosity"].present and not verbose:
      logging.set_verbosity(logging.WARNING)  # orbax and jax log every load/save at INFO
    try:
      main(args)
    except InputError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(1)
    except KeyboardInterrupt:
      print("error: interrupted", file=sys.stderr)
      sys.exit(130)

  try:
    app.run(wrapped, argv=argv)
  except flags.Error as e:  # pragma: no cover - absl prints flag errors itself.
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def print_outcome(result, output_dir: str) -> None:
  """A search's (or merge's) outcome on stdout: counts, time, where the report is, and how to
  continue a run that did not finish."""
  t = result.totals
  print(
    f"{t['unique']} unique structures from {t['relaxed']} relaxations "
    f"({t['failed']} failed) in {t['wall_time_s']['total']:.1f} s -> {output_dir}/summary.md"
  )
  if t["interrupted"]:
    print("run cut short: the report holds what finished; --resume continues it")
  elif t.get("stopped"):
    print("stopped by the STOP file: the report holds what finished; --resume continues it")


def load_config(spec: str):
  """The config of ``experiments/configs/NAME.py[:ARG]`` (a path relative to the repository
  root, as ``--config`` takes it): ``get_config(ARG or None)`` of that module."""
  path, _, arg = spec.partition(":")
  module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
  return module.get_config(arg or None)


class ConfigAliases:
  """Short flags for fields of a config flag (``--fmax`` for ``--search.fmax``).

  Each alias gets the field's type and the default None, which means the config's value (named
  in its help): the config stays the one source of defaults.  Fields without an alias are set
  with ``--CONFIG.FIELD`` (:mod:`ml_collections.config_flags`).
  """

  _DEFINE = {
    bool: flags.DEFINE_boolean,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    str: flags.DEFINE_string,
  }

  def __init__(
    self,
    config_flag: str,
    config,
    aliases: dict[str, tuple[str, str]],
    *,
    required: tuple[str, ...] = (),
  ):
    """Define the alias flags.

    Args:
      config_flag: name of the config flag (``search`` for ``--search.FIELD``).
      config: the config's defaults (a ``ConfigDict``).
      aliases: alias -> ``(field, help)``.
      required: fields that must be given (as ``--FIELD`` or ``--CONFIG.FIELD``).
    """
    self.config_flag = config_flag
    self.aliases = dict(aliases)
    self.required = tuple(required)
    self.holders = {}
    for alias, (field, help_text) in self.aliases.items():
      default = config[field]
      define = self._DEFINE.get(type(default))
      if define is None:
        raise TypeError(f"--{alias}: config field {field} is a {type(default).__name__}")
      where = f"Same as --{config_flag}.{field}"
      if field not in self.required:
        where += f" (default: {default!r})"
      self.holders[alias] = define(alias, None, f"{help_text} {where}.")

  def apply(self, config):
    """``config`` (the parsed config flag's value) with the given aliases set; returns it.

    Raises:
      InputError: an alias and ``--CONFIG.FIELD`` disagree, or a required field is not given.
    """
    from ml_collections import config_flags

    overridden = config_flags.get_override_values(flags.FLAGS[self.config_flag])
    given = set(overridden)
    for alias, (field, _) in self.aliases.items():
      value = self.holders[alias].value
      if value is None:
        continue
      if field in overridden and overridden[field] != value:
        raise InputError(
          f"--{alias}={value!r} and --{self.config_flag}.{field}={overridden[field]!r} "
          "disagree; pass one of them"
        )
      config[field] = value
      given.add(field)
    for field in self.required:
      if field not in given:
        alias = next((a for a, (f, _) in self.aliases.items() if f == field), None)
        name = alias or f"{self.config_flag}.{field}"
        raise InputError(f"--{name} is required (e.g. --{name}={config[field]})")
    return config
