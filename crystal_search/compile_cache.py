"""JAX's persistent compilation cache for the command-line tools.

A search or relaxation compiles one relaxation loop per atom-count bucket and batch size, a few
seconds each on a CPU.  The ``crystal-search`` binaries keep compiled programs on disk so that
later runs on the same machine skip that work (``scripts/main.sh`` twice on the idle 2-core
machine: 6 min 48 s, then 6 min 11 s; README).

Where: ``$CRYSTAL_SEARCH_JAX_CACHE`` if set (``off`` or empty: no cache), else
``$XDG_CACHE_HOME/crystal_search/jax`` (default ``~/.cache/crystal_search/jax``).  A
``JAX_COMPILATION_CACHE_DIR`` set by the user wins over both.  A directory that cannot be
created means no cache, never an error.
"""

from __future__ import annotations

import os

#: Environment variable naming the cache directory (``off``: none).
ENV = "CRYSTAL_SEARCH_JAX_CACHE"


def default_directory() -> str | None:
  """The cache directory the binaries use, or None when switched off."""
  if ENV in os.environ:
    value = os.environ[ENV].strip()
    return None if value.lower() in ("", "off", "0", "false", "none") else value
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "crystal_search", "jax")


def enable(directory: str | None = None, *, min_compile_time_s: float = 1.0) -> str | None:
  """Turn on JAX's persistent compilation cache; returns the directory used (None: off).

  Args:
    directory: where compiled programs go; default :func:`default_directory`.
    min_compile_time_s: programs that compile faster than this (seconds) are not stored.
  """
  import jax

  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  directory = directory or default_directory()
  if not directory:
    return None
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError:
    return None
  if not os.access(directory, os.W_OK):
    return None
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory
