"""Faster equivalents of pyxtal's hot helpers for random symmetric cells, same results.

Most of a symmetric random cell's generation time is pyxtal's Wyckoff merging
(``Wyckoff_position.merge``), which evaluates tiny NumPy expressions hundreds of thousands of
times per search.  :func:`install` replaces four of its helpers by versions that do the same
arithmetic with less Python around it:

* ``check_images(..., tol=...)`` without a ``Tol_matrix`` builds a default one per call that a
  given ``tol`` leaves unused: one is built once and passed (read-only there);
* ``create_matrix`` (the 27 neighbouring cell offsets) is built per call: cached per
  periodicity, a fresh copy returned (callers add to it in place);
* ``Wyckoff_position.copy`` is a deep copy of the whole position per merge; ``merge`` only reads
  the copy and passes it on (the copies never get written to): a shallow copy;
* ``Group.check_compatible`` (which Wyckoff combinations can hold the atoms) is solved anew
  per random cell: cached per group and atom counts (it draws nothing at random);
* ``Wyckoff_position.project`` projects a point onto the position's symmetry element once per
  neighbouring cell in a Python loop (subtracting each cell's shift from the same point in place,
  so the shifts accumulate): the same accumulated points, projected together;
* ``Wyckoff_position.search_generator_dist`` loops over the group's operations one 3-vector at a
  time: the same per-operation arithmetic over all operations at once.

``tests/test_random_structures.py`` checks that seeded draws are bit-identical with and without
them.
"""

from __future__ import annotations

import copy
import functools
import math

import numpy as np

__all__ = ["install"]


@functools.cache
def _offsets(pbc: tuple[bool, bool, bool], omit: bool) -> np.ndarray:
  axes = [[-1, 0, 1] if p else [0] for p in pbc]
  rows = [[i, j, k] for i in axes[0] for j in axes[1] for k in axes[2]]
  if omit:
    rows = [r for r in rows if r != [0, 0, 0]]
  out = np.array(rows, dtype=float)
  out.flags.writeable = False
  return out


def create_matrix(PBC=None, omit=False):  # noqa: N803 - pyxtal's signature
  """pyxtal's ``operations.create_matrix``: the neighbouring cell offsets (a fresh array)."""
  pbc = (1, 1, 1) if PBC is None else PBC
  return _offsets(tuple(bool(p) for p in pbc), bool(omit)).copy()


def _affine_stack(wp) -> np.ndarray:
  """``(n, 4, 4)`` affine matrices of ``wp.ops``, kept on ``wp`` itself (pyxtal builds a new
  group per random cell, so a module-level cache would only grow) beside the list they came
  from, and rebuilt if that list is replaced."""
  hit = getattr(wp, "_crystal_search_affine", None)
  if hit is None or hit[0] is not wp.ops:
    hit = (wp.ops, np.array([op.affine_matrix for op in wp.ops]))
    wp._crystal_search_affine = hit
  return hit[1]


#: pyxtal's own functions that :func:`install` replaced, by name (for the tests).
ORIGINALS: dict[str, object] = {}


def _search_generator_dist(original):
  def search_generator_dist(self, pt, lattice=None, group=None):
    if self.index == 0 or group is None:
      return original(self, pt, lattice, group)
    if lattice is None:
      lattice = np.eye(3)
    # SymmOp.operate(p) is np.dot(affine, [p, 1])[:3], one BLAS call per operation as there
    # (a batched product rounds differently in the last bit).
    point, first = np.append(pt, 1.0), self.ops[0].affine_matrix
    pts = np.array([np.dot(a, point)[:3] for a in _affine_stack(group[0])])
    homogeneous = np.ones((len(pts), 4))  # each row the np.append(p, 1.0) of pyxtal's loop
    homogeneous[:, :3] = pts
    shifted = np.array([np.dot(first, h)[:3] for h in homogeneous])
    coords = shifted - pts
    # pyxtal's distance() per row: wrapped into the cell, the shortest of the 27 images.
    pbc = self.PBC
    for i in range(3):
      if pbc[i] > 0:
        coords[:, i] -= np.floor(coords[:, i])
    images = (create_matrix(PBC=pbc)[None, :, :] + coords[:, None, :]) @ lattice
    distances = np.min(np.linalg.norm(images, axis=2), axis=1)
    best = int(np.argmin(distances))
    return pts[best], distances[best]

  return search_generator_dist


def _distance_matrix(original):
  def distance_matrix(pts1, pts2, lattice, PBC=None, single=False, metric="euclidean"):  # noqa: N803
    pbc = [1, 1, 1] if PBC is None else PBC
    if list(pbc) == [0, 0, 0]:
      return original(pts1, pts2, lattice, PBC, single, metric)
    from pyxtal.operations import filtered_coords
    from scipy.spatial.distance import cdist

    l1 = np.dot(filtered_coords(pts1, PBC=pbc), lattice)
    l2 = np.dot(filtered_coords(pts2, PBC=pbc), lattice)
    offsets = np.dot(create_matrix(PBC=pbc), lattice)
    # One cdist over the 27 shifted copies of pts1 instead of 27 calls: the same numbers.
    shifted = (offsets[:, None, :] + l1[None, :, :]).reshape(-1, 3)
    all_distances = cdist(shifted, l2, metric).reshape(len(offsets), len(l1), len(l2))
    return np.min(all_distances) if single else np.min(all_distances, axis=0)

  return distance_matrix


def _check_compatible(original):
  cache: dict = {}

  def check_compatible(self, numIons, verbose=False):  # noqa: N803 - pyxtal's signature
    if verbose:
      return original(self, numIons, verbose)
    key = (
      self.number,
      getattr(self, "hall_number", None),
      self.dim,
      tuple(int(n) for n in numIons),
    )
    if key not in cache:
      cache[key] = original(self, numIons)
    return cache[key]

  return check_compatible


def _project(original):
  def project(self, point, cell=None, PBC=None, id=0):  # noqa: A002, N803 - pyxtal's signature
    from pyxtal.operations import filtered_coords

    cell = np.eye(3) if cell is None else cell
    PBC = [1, 1, 1] if PBC is None else PBC  # noqa: N806
    if PBC == [0, 0, 0]:
      return original(self, point, cell, PBC, id)
    op = self.get_euclidean_generator(cell, id) if self.euclidean else self.ops[id]
    rot, trans = op.rotation_matrix, op.translation_vector
    point = filtered_coords(np.array(point, dtype=float))
    shifts = trans + create_matrix(PBC=PBC)  # [27, 3]
    # pyxtal's loop subtracts each shift from the same array in place: the points accumulate.
    points = np.subtract.accumulate(np.vstack([point[None, :], shifts]), axis=0)[1:]
    new = np.zeros_like(points)
    for basis in rot.T:
      b = np.sqrt(basis.dot(basis))
      if b > 1e-3:
        new += basis * (np.array([np.dot(p, basis) for p in points]) / (b**2))[:, None]
    new += shifts
    # np.linalg.norm of a vector is sqrt(x.dot(x)): the same numbers without its checks.
    moves = [d.dot(cell) for d in new - points]
    distances = [math.sqrt(m.dot(m)) for m in moves]
    return filtered_coords(new[int(np.argmin(distances))], PBC=PBC)

  return project


def _number_from_specie(original):
  cache: dict = {}

  def number_from_specie(specie):
    if not isinstance(specie, (str, int)):  # pymatgen species, floats: as pyxtal does it
      return original(specie)
    key = (type(specie), specie)
    if key not in cache:
      cache[key] = original(specie)
    return cache[key]

  return number_from_specie


@functools.cache
def install() -> None:
  """Install the faster helpers into pyxtal (once per process)."""
  import pyxtal.database.element
  import pyxtal.lattice
  import pyxtal.operations
  import pyxtal.symmetry
  import pyxtal.wyckoff_site
  from pyxtal.tolerance import Tol_matrix

  wp = pyxtal.symmetry.Wyckoff_position
  ORIGINALS.update(
    check_images=pyxtal.symmetry.check_images,
    create_matrix=pyxtal.operations.create_matrix,
    distance_matrix=pyxtal.operations.distance_matrix,
    copy=wp.copy,
    search_generator_dist=wp.search_generator_dist,
    check_compatible=pyxtal.symmetry.Group.check_compatible,
    project=wp.project,
  )
  group = pyxtal.symmetry.Group
  group.check_compatible = _check_compatible(group.check_compatible)
  inner = pyxtal.symmetry.check_images
  default = Tol_matrix(prototype="atomic")

  def check_images(*args, tm=None, **kwargs):
    return inner(*args, tm=default if tm is None else tm, **kwargs)

  pyxtal.symmetry.check_images = check_images
  for module in (pyxtal.operations, pyxtal.symmetry, pyxtal.wyckoff_site, pyxtal.lattice):
    if hasattr(module, "create_matrix"):
      module.create_matrix = create_matrix
  fast = _distance_matrix(pyxtal.operations.distance_matrix)
  for module in (pyxtal.operations, pyxtal.symmetry, pyxtal.wyckoff_site):
    if hasattr(module, "distance_matrix"):
      module.distance_matrix = fast
  wp.copy = lambda self: copy.copy(self)
  element = pyxtal.database.element.Element
  ORIGINALS["number_from_specie"] = element.number_from_specie
  element.number_from_specie = staticmethod(_number_from_specie(element.number_from_specie))
  wp.search_generator_dist = _search_generator_dist(wp.search_generator_dist)
  wp.project = _project(wp.project)
