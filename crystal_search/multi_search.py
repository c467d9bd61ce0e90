"""Searches of several compositions of one system and their convex hull.

``crystal-search search --composition=LiSi,Li2Si,Li7Si2,Li13Si4,Li15Si4`` runs one search per
composition into ``OUT/FORMULA/`` (:func:`crystal_search.search.run_search`) and builds the hull
of all of them into ``OUT`` (:mod:`crystal_search.hull`, :mod:`crystal_search.hull_report`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
from pymatgen.core import Structure

from crystal_search import hull_report
from crystal_search.errors import InputError
from crystal_search.hull import (
  Hull,
  build_hull,
  check_elements,
  chemical_system,
  load_runs,
  reference_energies,
)

__all__ = ["composition_configs", "run_multi_search", "split_structures"]


def split_structures(total: int, count: int) -> list[int]:
  """``total`` random structures split equally over ``count`` compositions (the first ones get
  one more when it does not divide), at least one each."""
  return [max(1, total // count + (k < total % count)) for k in range(count)]


def composition_configs(
  compositions: Sequence[str], config: ml_collections.ConfigDict
) -> dict[str, ml_collections.ConfigDict]:
  """``{formula: search config}``: ``config`` for each composition, with its share of
  ``config.num_structures`` (:func:`split_structures`), in the order given."""
  from crystal_search import compositions as compositions_lib

  counts = split_structures(int(config.num_structures), len(compositions))
  configs = {}
  for name, n in zip(compositions, counts, strict=True):
    c = ml_collections.ConfigDict(config.to_dict())
    c.composition, c.num_structures = name, n
    configs[compositions_lib.formula_name(compositions_lib.parse_composition(name))] = c
  return configs


def run_multi_search(
  compositions: Sequence[str],
  config: ml_collections.ConfigDict,
  *,
  force_field,
  output_dir: str,
  energy_fn: Callable[[Sequence[Structure]], np.ndarray] | None = None,
  screen_force_field=None,
  teacher=None,
  overwrite: bool = False,
  resume: bool = False,
  sources: dict | None = None,
  progress: bool = True,
) -> Hull:
  """One search per composition into ``output_dir/FORMULA/``, then their hull into ``output_dir``.

  ``config.num_structures`` is split by :func:`split_structures`; every search keeps
  ``config.seed`` (so each is the single search of its composition, count and seed).  Every
  composition is checked and the references relaxed before any search runs.  With ``resume``
  each composition's search continues where it stopped (:func:`crystal_search.search.run_search`)
  and the hull is written again.

  Raises:
    InputError: a bad composition or setting, a composition repeated, an element without
      reference (a foreign element), compositions of one element only, or an output directory
      that holds another hull or run (without ``overwrite``).
  """
  from crystal_search import compositions as compositions_lib
  from crystal_search import random_structures, search

  names = [c.strip() for c in compositions if c.strip()]
  if not names:
    raise InputError("no composition given (a comma list such as LiSi,Li15Si4)")
  supported = [
    set(ff.elements) for ff in (force_field, screen_force_field) if getattr(ff, "elements", None)
  ]
  allowed = sorted(set.intersection(*supported)) if supported else None
  parsed = {}
  for name in names:
    comp = compositions_lib.parse_composition(name, allowed_elements=allowed)
    formula = compositions_lib.formula_name(comp)
    if formula in parsed:
      raise InputError(f"composition {name!r}: {formula} is given twice")
    parsed[formula] = (name, comp)
  elements = sorted({el for f in parsed for el in chemical_system(f)})
  check_elements(elements, force_field)
  if len(elements) < 2:
    raise InputError(f"compositions {','.join(names)}: one element only; a hull needs two")
  configs = composition_configs(names, config)
  for formula, c in configs.items():
    search.validate_config(c)
    random_structures.check_composition(parsed[formula][1], search.generator_config(c))
  hull_report.check_output_dir(output_dir, overwrite=overwrite or resume)
  refs = reference_energies(
    elements, force_field, energy_fn=energy_fn, settings=config.to_dict(), progress=progress
  )
  for formula, c in configs.items():
    search.run_search(
      c,
      force_field=force_field,
      output_dir=os.path.join(output_dir, formula),
      energy_fn=energy_fn,
      teacher=teacher,
      screen_force_field=screen_force_field,
      overwrite=overwrite,
      resume=resume,
      sources=sources,
      progress=progress,
    )
  runs = load_runs([os.path.join(output_dir, f) for f in configs])
  hull = build_hull(runs.entries, refs, force_field=runs.force_field)
  hull_report.write_hull(hull, output_dir, overwrite=overwrite or resume)
  return hull
