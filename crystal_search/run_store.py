"""A search's state on disk: its settings and its finished chunks, so it resumes, stops and merges.

A search directory holds

* ``run.json``: what makes the run's results (:func:`identity`: every search setting, the
  force fields, the shard).  ``--resume`` continues only a run of the same identity.
* ``chunks/NNNNNN.json``: chunk ``k`` of ``chunk_size`` consecutive structure indices, written
  once it is generated, relaxed and scored (:func:`encode_chunk`).  Each file is written to a
  temporary name and renamed, so a process killed at any moment (``kill -9``) leaves whole chunks
  or none; a resumed run redoes only the missing ones.  Structures are drawn per index
  (:func:`crystal_search.random_structures.random_structure`), so a chunk's content does not
  depend on which process made it.
* ``STOP``: touched by a user (AIRSS-style), ends the search after the current chunk with a
  complete report of what finished.

Shards: ``I/N`` (1-based) takes the chunks ``k`` with ``k % N == I - 1``; the chunks of all ``N``
shards together are the unsharded run's, and :func:`collect_chunks` gathers them from several
directories for ``crystal-search merge``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
from pymatgen.core import Lattice, Structure

from crystal_search.errors import InputError

__all__ = [
  "CHUNKS_DIR",
  "RUN_FILE",
  "STOP_FILE",
  "chunk_ranges",
  "collect_chunks",
  "decode_structure",
  "difference",
  "encode_chunk",
  "encode_structure",
  "identity",
  "open_run",
  "parse_shard",
  "read_chunks",
  "read_run",
  "shard_chunks",
  "stop_requested",
  "write_chunk",
  "write_json",
]

RUN_FILE = "run.json"
CHUNKS_DIR = "chunks"
STOP_FILE = "STOP"
#: Settings that change what a run writes but not its results: a resumed run may differ in them.
NON_RESULT_SETTINGS = ("write_trajectories",)


def parse_shard(text: str | None) -> tuple[int, int] | None:
  """``"I/N"`` → ``(I, N)`` with ``1 <= I <= N``; None or ``""`` → None (the whole run)."""
  if not text:
    return None
  parts = str(text).split("/")
  try:
    i, n = (int(p) for p in parts)
  except ValueError:
    raise InputError(f"shard {text!r}: expected I/N with whole numbers, e.g. 1/4") from None
  if not 1 <= i <= n:
    raise InputError(f"shard {text!r}: I must be between 1 and N (1-based), got {i} of {n}")
  return i, n


def chunk_ranges(num_structures: int, chunk_size: int) -> list[range]:
  """Structure indices of each chunk: ``chunk_size`` consecutive ones, the last one shorter."""
  step = max(int(chunk_size), 1)
  return [range(a, min(a + step, int(num_structures))) for a in range(0, int(num_structures), step)]


def shard_chunks(num_chunks: int, shard: tuple[int, int] | None) -> list[int]:
  """The chunk numbers of ``shard`` (all of them for None)."""
  if shard is None:
    return list(range(num_chunks))
  i, n = shard
  return [k for k in range(num_chunks) if k % n == i - 1]


def identity(settings: dict, force_fields: dict, shard: tuple[int, int] | None) -> dict:
  """What a run's results depend on: its settings, force-field names and shard."""
  kept = {k: v for k, v in settings.items() if k not in NON_RESULT_SETTINGS}
  return {
    "settings": kept,
    "force_fields": dict(force_fields),
    "shard": list(shard) if shard else None,
  }


def write_json(path: str, data, *, indent: int | None = None) -> None:
  """Write ``data`` as JSON atomically (a temporary file renamed over ``path``)."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(data, f, indent=indent)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_run(path: str) -> dict | None:
  """``run.json`` of the search directory ``path``, or None if it has none."""
  name = os.path.join(path, RUN_FILE)
  if not os.path.exists(name):
    return None
  try:
    with open(name) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise InputError(f"{name}: not a readable run file ({e})") from None


def difference(there: dict, here: dict, *, shard: bool = True) -> str | None:
  """The first setting in which two identities (:func:`identity`) differ, as
  ``name (A there, B here)``; None when they agree (``shard=False``: apart from the shard)."""
  for section in ("settings", "force_fields"):
    a, b = there.get(section, {}), here.get(section, {})
    for key in sorted(set(a) | set(b)):
      if a.get(key) != b.get(key):
        return f"{key} ({a.get(key)!r} there, {b.get(key)!r} here)"
  if shard and there.get("shard") != here.get("shard"):
    return f"shard ({there.get('shard')} there, {here.get('shard')} here)"
  return None


def open_run(path: str, run: dict, *, resume: bool, overwrite: bool, markers: tuple) -> None:
  """Make ``path`` ready for the run ``run`` (:func:`identity`): with ``resume``, check that a
  run already there is the same one (one-line error naming the first differing setting);
  otherwise refuse a directory that holds a run (``markers``) unless ``overwrite``.  Nothing is
  removed or written before the checks pass."""
  there = read_run(path) if os.path.isdir(path) else None
  held = [m for m in markers + (RUN_FILE, CHUNKS_DIR) if os.path.exists(os.path.join(path, m))]
  if resume and there is not None:
    diff = difference(there, run)
    if diff:
      raise InputError(f"{path}: --resume of a run with other settings: {diff}")
  elif resume and held:
    raise InputError(f"{path}: holds a run without {RUN_FILE} to resume; pass --overwrite")
  elif held and not overwrite:
    raise InputError(f"{path}: holds another run ({held[0]}); pass --overwrite to replace it")
  elif held:
    for m in held:
      p = os.path.join(path, m)
      shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
  os.makedirs(os.path.join(path, CHUNKS_DIR), exist_ok=True)
  write_json(os.path.join(path, RUN_FILE), run)
  stop = os.path.join(path, STOP_FILE)
  if os.path.exists(stop):  # a STOP left by the run that is resumed now
    os.remove(stop)


def stop_requested(path: str) -> bool:
  """Whether a user asked the search in ``path`` to stop (``touch path/STOP``)."""
  return os.path.exists(os.path.join(path, STOP_FILE))


def encode_structure(structure: Structure) -> dict:
  """A structure as plain JSON: lattice rows (Å), species, fractional coordinates.  JSON keeps
  every float64 exactly, so :func:`decode_structure` gives back the same numbers."""
  return {
    "lattice": structure.lattice.matrix.tolist(),
    "species": [site.species_string for site in structure],
    "frac_coords": structure.frac_coords.tolist(),
  }


def decode_structure(data: dict) -> Structure:
  """The structure of :func:`encode_structure`."""
  return Structure(
    Lattice(np.asarray(data["lattice"], np.float64)),
    data["species"],
    np.asarray(data["frac_coords"], np.float64),
  )


def encode_chunk(
  number: int,
  indices: range,
  generation_failed: list[int],
  results: list[dict],
  *,
  wall_time_s: dict,
  relax_work: dict,
) -> dict:
  """One finished chunk: its structure ``indices``, those the generator could not make, and one
  entry per relaxed structure (``index``, ``structure`` (:func:`encode_structure`),
  ``converged``, ``failed``, ``failure_reason``, ``steps``, ``energy_per_atom`` eV/atom)."""
  return {
    "chunk": int(number),
    "indices": [int(indices.start), int(indices.stop)],
    "generation_failed": [int(i) for i in generation_failed],
    "results": results,
    "wall_time_s": {k: float(v) for k, v in wall_time_s.items()},
    "relax_work": {k: int(v) for k, v in relax_work.items()},
  }


def _chunk_path(path: str, number: int) -> str:
  return os.path.join(path, CHUNKS_DIR, f"{number:06d}.json")


def write_chunk(path: str, chunk: dict) -> None:
  """Commit a finished chunk to the search directory ``path`` (atomically)."""
  write_json(_chunk_path(path, chunk["chunk"]), chunk)


def read_chunks(path: str) -> dict[int, dict]:
  """The finished chunks in ``path`` by number; a file that cannot be read counts as unfinished."""
  chunks = {}
  for name in sorted(glob.glob(os.path.join(path, CHUNKS_DIR, "[0-9]*.json"))):
    try:
      with open(name) as f:
        chunk = json.load(f)
      chunks[int(chunk["chunk"])] = chunk
    except (OSError, ValueError, KeyError, TypeError):
      continue
  return chunks


def collect_chunks(inputs: list[str], num_chunks: int) -> dict[int, dict]:
  """Chunks ``0 .. num_chunks - 1`` gathered from the search directories ``inputs`` (shards of
  one run, whose ``run.json`` the caller has checked), by number.  One-line errors for a chunk
  in two inputs and for chunks that no input holds."""
  chunks: dict[int, dict] = {}
  source: dict[int, str] = {}
  for path in inputs:
    for k, chunk in read_chunks(path).items():
      if k in chunks:
        raise InputError(f"chunk {k} is in both {source[k]} and {path}: give each shard once")
      chunks[k], source[k] = chunk, path
  missing = [k for k in range(num_chunks) if k not in chunks]
  if missing:
    listed = ", ".join(map(str, missing[:8])) + (" ..." if len(missing) > 8 else "")
    raise InputError(
      f"{len(missing)} of {num_chunks} chunks are in none of the inputs ({listed}): a shard is "
      "missing or unfinished (finish it with --resume)"
    )
  extra = sorted(set(chunks) - set(range(num_chunks)))
  if extra:
    raise InputError(f"chunk {extra[0]} is beyond the run's {num_chunks} chunks")
  return chunks
