"""pymatgen's primitive-cell search with its candidate filter done for all sites at once.

:func:`get_primitive_structure` returns exactly what pymatgen's
``Structure.get_primitive_structure()`` (default settings) returns, the same lattice, sites and
order (``tests/test_primitive_cells.py`` compares them bit for bit).  pymatgen narrows the
candidate lattice translations by testing them against every site in turn, one k-d tree per site
(``pbc_coord_intersection``); here the same test, with the same arithmetic, runs for all
candidates and sites of a species in one array operation.  On the search's 76-atom conventional
cells that filter was most of the time of a primitive-cell search, which the random-cell generator
runs on every centred cell and StructureMatcher on every structure it compares.

:func:`reduced_for_matching` is StructureMatcher's reduction (Niggli cell, then primitive cell)
on top of it, without pymatgen's cache of reduced cells (whose hits compare structures site by
site).
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
from pymatgen.core import Lattice, Structure

__all__ = ["get_primitive_structure", "reduced_for_matching"]

#: pymatgen's default tolerance of ``get_primitive_structure`` (Å per coordinate).
TOLERANCE = 0.25


def _scaled(frac: np.ndarray, scale: np.ndarray) -> np.ndarray:
  """pymatgen's k-d tree coordinates: wrapped into [0, 1), scaled, clipped below the box."""
  out = (frac % 1.0) * scale
  np.clip(out, 0, scale * (1 - 1e-15), out=out)
  return out


def _narrow(min_vecs: np.ndarray, group: np.ndarray, tol: np.ndarray, block: int = 8):
  """The rows of ``min_vecs`` that, for every site ``f`` of ``group``, lie within ``tol`` (per
  fractional coordinate, periodic) of some ``g - f``: pymatgen's loop of
  ``pbc_coord_intersection(min_vecs, group - f, tol)`` over the sites, ``block`` sites a pass.
  A vector's fate in each step of that loop depends on the vector alone, so testing several
  sites at once keeps exactly the vectors the loop keeps."""
  scale = 1.0 / np.asarray(tol, dtype=float)
  half = scale / 2
  for start in range(0, len(group), block):
    if len(min_vecs) <= 1:  # only the zero vector is left, and it passes every test
      break
    a = _scaled(min_vecs, scale)  # [v, 3]
    b = _scaled(group[None, :, :] - group[start : start + block, None, :], scale)  # [f, g, 3]
    # cKDTree's periodic distance per coordinate: x - y wrapped by one box past half a box.
    x = a[:, None, None, :] - b[None, :, :, :]
    x = np.where(x < -half, scale + x, np.where(x > half, x - scale, x))
    close = np.abs(x).max(axis=-1) < 1.0  # [v, f, g]: the Chebyshev distance, as queried
    min_vecs = min_vecs[close.any(axis=2).all(axis=1)]
  return min_vecs


def _hnf(form_units: int):
  """pymatgen's supercell matrices of each determinant dividing ``form_units``, by diagonal."""

  def factors(n: int):
    return [i for i in range(1, n + 1) if n % i == 0]

  for det in factors(form_units):
    if det == 1:
      continue
    for a in factors(det):
      for e in factors(det // a):
        g = det // a // e
        yield (
          det,
          np.array([
            [[a, b, c], [0, e, f], [0, 0, g]]
            for b, c, f in itertools.product(range(a), range(a), range(e))
          ]),
        )  # fmt: skip


def _sublattice_sites(structure, groups, non_nbrs, latt_mat, inv_m, size, tolerance):
  """The sites of ``structure`` in the smaller cell ``inv_m @ lattice``, equivalent sites
  averaged as pymatgen does, or None when the cell does not fit every species."""
  new_m = np.dot(inv_m, structure.lattice.matrix)
  ftol = np.divide(tolerance, np.sqrt(np.sum(new_m**2, axis=1)))
  species, coords, labels = [], [], []
  for (gsites, gf_coords), nn in zip(groups, non_nbrs, strict=True):
    all_frac = np.dot(gf_coords, latt_mat)
    fdist = all_frac[None, :, :] - all_frac[:, None, :]
    fdist = np.abs(fdist - np.round(fdist))
    close_in_prim = np.all(fdist < ftol[None, None, :], axis=-1)
    grouped = np.logical_and(close_in_prim, nn)
    if not np.all(np.sum(grouped, axis=0) == size):
      return None
    for row in grouped:
      if not np.all(grouped[row][:, row]):
        return None
    added = np.zeros(len(gsites))
    new_frac_coords = all_frac % 1
    for idx, row in enumerate(grouped):
      if not added[idx]:
        added[row] = True
        inds = np.where(row)[0]
        c = new_frac_coords[inds[0]]
        for inner, ind in enumerate(inds[1:]):
          offset = new_frac_coords[ind] - c
          c += (offset - np.round(offset)) / (inner + 2)
        species.append(gsites[inds[0]].species)
        labels.append(gsites[inds[0]].label)
        coords.append(c)
  return species, coords, labels


def get_primitive_structure(structure: Structure, tolerance: float = TOLERANCE) -> Structure:
  """``structure.get_primitive_structure(tolerance)`` of pymatgen (no site properties, no lattice
  constraints, Niggli-reduced result), bit for bit; ``tolerance`` in Å per coordinate."""
  sites = sorted(structure.sites, key=lambda s: s.species_string)
  grouped_sites = [list(g) for _, g in itertools.groupby(sites, key=lambda s: s.species_string)]
  grouped_frac = [np.array([s.frac_coords for s in g]) for g in grouped_sites]
  min_frac = min(grouped_frac, key=len)
  min_vecs = min_frac - min_frac[0]
  super_ftol = np.divide(tolerance, structure.lattice.abc)
  for group in sorted(grouped_frac, key=len):
    min_vecs = _narrow(min_vecs, group, super_ftol * 2)
  non_nbrs = []
  for gf in grouped_frac:
    fdist = gf[None, :, :] - gf[:, None, :]
    fdist -= np.round(fdist)
    np.abs(fdist, fdist)
    nn = np.any(fdist > 2 * super_ftol[None, None, :], axis=-1)
    np.fill_diagonal(nn, val=True)
    non_nbrs.append(nn)
  groups = list(zip(grouped_sites, grouped_frac, strict=True))
  num_fu = functools.reduce(math.gcd, map(len, grouped_sites))
  for size, ms in _hnf(num_fu):
    inv_ms = np.linalg.inv(ms)
    dist = inv_ms[:, :, None, :] - min_vecs[None, None, :, :]
    dist -= np.round(dist)
    np.abs(dist, dist)
    inds = np.all(np.any(np.all(dist < super_ftol, axis=-1), axis=-1), axis=-1)
    for inv_m, latt_mat in zip(inv_ms[inds], ms[inds], strict=True):
      found = _sublattice_sites(structure, groups, non_nbrs, latt_mat, inv_m, size, tolerance)
      if found is None:
        continue
      new_latt = Lattice(np.dot(np.linalg.inv(latt_mat), structure.lattice.matrix))
      species, coords, labels = found
      smaller = Structure(new_latt, species, coords, labels=labels, coords_are_cartesian=False)
      return get_primitive_structure(smaller, tolerance).get_reduced_structure()
  return structure.copy()


def reduced_for_matching(structure: Structure, *, primitive_cell: bool = True) -> Structure:
  """StructureMatcher's reduced cell of ``structure`` (``_get_reduced_structure`` with Niggli
  reduction): the Niggli cell, then its primitive cell."""
  from pymatgen.analysis.structure_matcher import SiteOrderedIStructure

  reduced = SiteOrderedIStructure.from_sites(structure).copy()
  reduced = reduced.get_reduced_structure(reduction_algo="niggli")
  if primitive_cell:
    reduced = get_primitive_structure(Structure.from_sites(reduced))
  return Structure.from_sites(reduced)
