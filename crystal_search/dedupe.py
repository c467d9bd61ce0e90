"""Group identical relaxed structures at scale (the search's dedupe step).

StructureMatcher can cost up to a second per pair, so all pairs of 10^5 relaxation results
cannot be compared.  :func:`group_structures` compares only structures that could be the same:

1. **bins**: same reduced composition and same spglib space group
   (``SpacegroupAnalyzer(s, symprec).get_space_group_number()``, computed once per structure);
2. **energy window**: within a bin, structures are swept in order of energy and a structure is
   compared only with the *representatives* (lowest-energy members) of the groups whose energy lies
   within ``energy_window`` eV/atom below its own, nearest energy first, stopping at the first
   match; a structure that matches none starts a new group;
3. **merging neighbouring space-group bins** (``merge_space_groups=True``, the default): a
   relaxed structure a little off a symmetric one can be detected with a different space group at
   ``symprec`` while StructureMatcher (tolerance ~0.3 (V/n)^(1/3), several times ``symprec``)
   still calls them the same crystal; binning strictly by space group would then report one
   crystal twice.  So, after step 2, the representatives of groups of the same composition but
   different space groups whose energies lie within ``energy_window`` are compared too, and
   matching groups are merged (union-find).  This compares group representatives only, so it adds
   few calls when most results are duplicates.  After a merge a group may span up to
   ``2 * energy_window`` (each member lies within the window of its original representative).
   ``merge_space_groups=False`` bins strictly.

The number of StructureMatcher calls is at most (structures) x (representatives within the energy
window of the same bin) plus (representatives within the window across bins); with many
duplicates it is close to one call per structure.
"""

from __future__ import annotations

import bisect
import warnings
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from crystal_search.errors import InputError

#: Default energy window (eV/atom) within which two structures are compared at all.
DEFAULT_ENERGY_WINDOW = 0.01
#: Default spglib tolerance (Å) for the space-group bins.
DEFAULT_SYMPREC = 0.1


def space_group_number(structure: Structure, *, symprec: float = DEFAULT_SYMPREC) -> int:
  """spglib space-group number of ``structure`` at ``symprec`` Å; 0 where spglib fails."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", DeprecationWarning)  # spglib 2.x's error-handling notice
      return int(SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number())
  except Exception:  # noqa: BLE001 - spglib raises several types on degenerate cells
    return 0


class _UnionFind:
  def __init__(self, n: int):
    self.parent = list(range(n))

  def find(self, i: int) -> int:
    while self.parent[i] != i:
      self.parent[i] = self.parent[self.parent[i]]
      i = self.parent[i]
    return i

  def union(self, i: int, j: int) -> None:
    ri, rj = self.find(i), self.find(j)
    if ri != rj:
      self.parent[max(ri, rj)] = min(ri, rj)


def group_structures(
  structures: Sequence[Structure],
  energies_per_atom: Sequence[float] | np.ndarray,
  *,
  energy_window: float = DEFAULT_ENERGY_WINDOW,
  symprec: float = DEFAULT_SYMPREC,
  matcher=None,
  merge_space_groups: bool = True,
  space_groups: Sequence[int] | None = None,
) -> list[list[int]]:
  """Group structures that StructureMatcher calls identical (see the module docstring).

  Args:
    structures: ``n`` structures (e.g. relaxation results).
    energies_per_atom: ``[n]`` eV/atom, finite.
    energy_window: eV/atom; two structures further apart in energy are never compared.
    symprec: spglib tolerance (Å) of the space-group bins.
    matcher: an object with ``fit(a, b) -> bool`` (a pymatgen ``StructureMatcher``); default
      :func:`crystal_search.metrics.default_matcher`.
    merge_space_groups: also compare group representatives across space-group bins of the same
      composition (True: a crystal whose copies are detected with different space groups is
      still one group; False: strict space-group bins).
    space_groups: ``[n]`` precomputed space-group numbers at ``symprec`` (skips spglib).

  Returns:
    Groups as lists of indices into ``structures``; each group sorted by energy (ties by index),
    so ``group[0]`` is its lowest-energy member; groups ordered by their lowest energy.  Every
    index appears in exactly one group.
  """
  n = len(structures)
  energies = np.asarray(energies_per_atom, np.float64)
  if energies.shape != (n,):
    raise InputError(f"{n} structures but energies of shape {energies.shape}")
  if not np.all(np.isfinite(energies)):
    raise InputError(f"{int(np.sum(~np.isfinite(energies)))} energies are NaN or infinite")
  if not energy_window >= 0:
    raise InputError(f"energy_window must be >= 0, got {energy_window}")
  if n == 0:
    return []
  if matcher is None:
    from crystal_search.metrics import default_matcher

    matcher = default_matcher()
  if space_groups is None:
    space_groups = [space_group_number(s, symprec=symprec) for s in structures]
  elif len(space_groups) != n:
    raise InputError(f"{n} structures but {len(space_groups)} space groups")
  formulas = [s.composition.reduced_formula for s in structures]

  bins: dict[tuple[str, int], list[int]] = defaultdict(list)
  for i in range(n):
    bins[(formulas[i], int(space_groups[i]))].append(i)

  # Step 2: energy sweep inside each bin, against group representatives only.
  groups: list[list[int]] = []
  for members in bins.values():
    members.sort(key=lambda i: (energies[i], i))
    rep_energies: list[float] = []  # ascending (the sweep goes up in energy)
    rep_groups: list[int] = []
    for i in members:
      e = energies[i]
      lo = bisect.bisect_left(rep_energies, e - energy_window)
      found = -1
      for k in range(len(rep_energies) - 1, lo - 1, -1):  # nearest energy first
        if matcher.fit(structures[i], structures[groups[rep_groups[k]][0]]):
          found = rep_groups[k]
          break
      if found >= 0:
        groups[found].append(i)
      else:
        rep_energies.append(e)
        rep_groups.append(len(groups))
        groups.append([i])

  # Step 3: merge groups across space-group bins of the same composition.
  uf = _UnionFind(len(groups))
  if merge_space_groups:
    by_formula: dict[str, list[int]] = defaultdict(list)
    for g, members in enumerate(groups):
      by_formula[formulas[members[0]]].append(g)
    for gs in by_formula.values():
      gs.sort(key=lambda g: energies[groups[g][0]])
      rep_e = [energies[groups[g][0]] for g in gs]
      for a, g in enumerate(gs):
        rep = groups[g][0]
        lo = bisect.bisect_left(rep_e, rep_e[a] - energy_window)
        for b in range(a - 1, lo - 1, -1):
          h = gs[b]
          other = groups[h][0]
          if space_groups[other] == space_groups[rep] or uf.find(g) == uf.find(h):
            continue
          if matcher.fit(structures[rep], structures[other]):
            uf.union(g, h)

  merged: dict[int, list[int]] = defaultdict(list)
  for g, members in enumerate(groups):
    merged[uf.find(g)].extend(members)
  out = [sorted(m, key=lambda i: (energies[i], i)) for m in merged.values()]
  out.sort(key=lambda m: (energies[m[0]], m[0]))
  return out
