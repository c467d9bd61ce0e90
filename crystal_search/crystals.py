"""Padded batches of crystals as a JAX pytree, conversion and file I/O.

A :class:`Crystals` batch holds ``B`` structures padded to ``N`` atom slots.
``N`` is taken from :data:`ATOM_BUCKETS` so that jit compiles once per bucket,
not once per structure.  Conventions (see :mod:`crystal_search.units`):
lattice vectors are rows in Å, positions are fractional, padding atoms have
atomic number 0 and ``mask == False``.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from pymatgen.core import Element, Lattice, Structure

from crystal_search.errors import InputError

#: Atom-slot sizes a batch is padded to (one compilation per size).
ATOM_BUCKETS: tuple[int, ...] = (8, 16, 24, 32, 40, 48, 64, 80, 96, 128, 160, 192, 256)
#: Closest two atoms may be before a structure is refused as overlapping (Å).
DEFAULT_MIN_DISTANCE = 0.5
#: Largest number of atoms accepted in one cell.
DEFAULT_MAX_ATOMS = ATOM_BUCKETS[-1]
#: Å^3, smallest volume per atom of a cell accepted as input (the densest solids have ~5).
MIN_VOLUME_PER_ATOM = 1.0
#: Å, thinnest cell (distance between opposite faces) accepted as input; no nonzero lattice
#: vector, so no periodic image of an atom, is shorter than the thinnest height.
MIN_CELL_HEIGHT = 0.5
#: Å, longest lattice vector accepted as input: float32 positions in a longer cell are coarser
#: than 1e-3 Å, and its volume overflows float32 beyond ~7e12 Å.
MAX_CELL_LENGTH = 1e4


@struct.dataclass
class Crystals:
  """A padded batch of periodic crystals.

  Attributes:
    positions: ``[B, N, 3]`` float, fractional coordinates (any image; they are
      not required to lie in [0, 1)).
    lattice: ``[B, 3, 3]`` float, lattice vectors as rows, Å.
    atomic_numbers: ``[B, N]`` int32, 0 for padding slots.
    mask: ``[B, N]`` bool, True for real atoms.  Real atoms come first.
    n_atoms: ``[B]`` int32, number of real atoms per structure (0 for a padding
      structure).
  """

  positions: jax.Array
  lattice: jax.Array
  atomic_numbers: jax.Array
  mask: jax.Array
  n_atoms: jax.Array

  @property
  def batch_size(self) -> int:
    return self.positions.shape[0]

  @property
  def max_atoms(self) -> int:
    return self.positions.shape[1]

  def cartesian(self) -> jax.Array:
    """Cartesian positions ``[B, N, 3]`` in Å."""
    return jnp.einsum("bni,bij->bnj", self.positions, self.lattice)

  def volume(self) -> jax.Array:
    """Cell volumes ``[B]`` in Å^3 (signed: negative for a left-handed cell)."""
    return jnp.linalg.det(self.lattice)


def cell_heights(lattice: jax.Array) -> jax.Array:
  """Distances between opposite faces of each cell, ``[..., 3]`` Å (lattice rows in Å)."""
  a, b, c = lattice[..., 0, :], lattice[..., 1, :], lattice[..., 2, :]
  volume = jnp.abs(jnp.einsum("...i,...i->...", a, jnp.cross(b, c)))
  areas = jnp.stack(
    [
      jnp.linalg.norm(jnp.cross(b, c), axis=-1),
      jnp.linalg.norm(jnp.cross(c, a), axis=-1),
      jnp.linalg.norm(jnp.cross(a, b), axis=-1),
    ],
    axis=-1,
  )
  return volume[..., None] / areas


def bucket_size(n_atoms: int, buckets: Sequence[int] = ATOM_BUCKETS) -> int:
  """Smallest bucket that holds ``n_atoms`` atoms."""
  for size in buckets:
    if n_atoms <= size:
      return size
  raise InputError(f"a cell with {n_atoms} atoms exceeds the largest supported size {buckets[-1]}")


def from_structures(
  structures: Sequence[Structure],
  *,
  max_atoms: int | None = None,
  batch_size: int | None = None,
  dtype: np.dtype = np.float32,
) -> Crystals:
  """Pack pymatgen structures into one padded :class:`Crystals` batch (numpy arrays).

  Args:
    structures: the structures (ordered; ``to_structures`` returns them in order).
    max_atoms: atom slots per structure; default: the bucket of the largest one.
    batch_size: number of structure slots; extra slots are padding structures
      with no atoms and an identity-like lattice.  Default: ``len(structures)``.
    dtype: float dtype of positions and lattice.
  """
  if not structures and not batch_size:
    raise InputError("no structures to batch")
  largest = max((len(s) for s in structures), default=1)
  n_slots = max_atoms or bucket_size(largest)
  if largest > n_slots:
    raise InputError(f"a structure has {largest} atoms but the batch holds only {n_slots}")
  b = batch_size or len(structures)
  if b < len(structures):
    raise InputError(f"batch_size {b} is smaller than the {len(structures)} structures given")
  positions = np.zeros((b, n_slots, 3), dtype)
  lattice = np.tile(np.eye(3, dtype=dtype) * 10.0, (b, 1, 1))
  numbers = np.zeros((b, n_slots), np.int32)
  mask = np.zeros((b, n_slots), bool)
  n_atoms = np.zeros((b,), np.int32)
  for k, s in enumerate(structures):
    n = len(s)
    positions[k, :n] = s.frac_coords
    lattice[k] = s.lattice.matrix
    numbers[k, :n] = s.atomic_numbers
    mask[k, :n] = True
    n_atoms[k] = n
  return Crystals(positions, lattice, numbers, mask, n_atoms)


def to_structures(crystals: Crystals, *, wrap: bool = True) -> list[Structure]:
  """Unpack a batch into pymatgen structures (padding structures are skipped).

  Args:
    crystals: the batch.
    wrap: put fractional coordinates into [0, 1).
  """
  positions = np.asarray(crystals.positions, np.float64)
  lattice = np.asarray(crystals.lattice, np.float64)
  numbers = np.asarray(crystals.atomic_numbers)
  n_atoms = np.asarray(crystals.n_atoms)
  out = []
  for k in range(positions.shape[0]):
    n = int(n_atoms[k])
    if n == 0:
      continue
    frac = positions[k, :n] % 1.0 if wrap else positions[k, :n]
    out.append(Structure(Lattice(lattice[k]), [int(z) for z in numbers[k, :n]], frac))
  return out


def take(crystals: Crystals, index: int | np.ndarray) -> Crystals:
  """Select structures along the batch axis (keeps numpy/jax array types)."""
  return jax.tree_util.tree_map(lambda x: x[index], crystals)


def pad_batch(crystals: Crystals, batch_size: int) -> Crystals:
  """Append padding structures (no atoms) up to ``batch_size`` slots."""
  extra = batch_size - crystals.batch_size
  if extra < 0:
    raise ValueError(f"batch has {crystals.batch_size} structures, more than {batch_size}")
  if extra == 0:
    return crystals
  n = crystals.max_atoms
  xp = jnp if isinstance(crystals.positions, jax.Array) else np
  pad = Crystals(
    positions=xp.zeros((extra, n, 3), crystals.positions.dtype),
    lattice=xp.tile(xp.eye(3, dtype=crystals.lattice.dtype) * 10.0, (extra, 1, 1)),
    atomic_numbers=xp.zeros((extra, n), crystals.atomic_numbers.dtype),
    mask=xp.zeros((extra, n), bool),
    n_atoms=xp.zeros((extra,), crystals.n_atoms.dtype),
  )
  return jax.tree_util.tree_map(lambda a, b: xp.concatenate([a, b], axis=0), crystals, pad)


def from_atoms(atoms_list: Sequence, **kwargs) -> Crystals:
  """Pack ASE ``Atoms`` (periodic) into a batch; keyword arguments as :func:`from_structures`."""
  from pymatgen.io.ase import AseAtomsAdaptor

  return from_structures([AseAtomsAdaptor.get_structure(a) for a in atoms_list], **kwargs)


def to_atoms(crystals: Crystals) -> list:
  """Unpack a batch into ASE ``Atoms`` (periodic in all three directions)."""
  from pymatgen.io.ase import AseAtomsAdaptor

  return [AseAtomsAdaptor.get_atoms(s) for s in to_structures(crystals)]


# ----------------------------------------------------------------------------
# Validation and file I/O.


def shortest_lattice_vector(matrix: np.ndarray) -> float:
  """Å, length of the shortest nonzero vector of the lattice with rows ``matrix`` (Å): the
  distance from an atom to its nearest periodic image (searched over the LLL-reduced basis)."""
  reduced = Lattice(np.asarray(matrix, np.float64)).get_lll_reduced_lattice().matrix
  shifts = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])
  lengths = np.linalg.norm(shifts[np.any(shifts != 0, axis=1)] @ reduced, axis=1)
  return float(lengths.min())


def check_cell(structure: Structure, *, name: str = "structure") -> Structure:
  """Refuse a structure no relaxation or graph can start from; raise :class:`InputError`.

  Checks: at least one atom; finite lattice and coordinates; a volume per atom of at least
  :data:`MIN_VOLUME_PER_ATOM` Å^3; no lattice vector longer than :data:`MAX_CELL_LENGTH` Å; no
  cell height (face-to-face distance) below :data:`MIN_CELL_HEIGHT` Å (so no atom is that close
  to its own periodic image).
  Left-handed cells pass (:func:`validate_structure` refuses them in files).
  """
  n = len(structure)
  if n == 0:
    raise InputError(f"{name}: no atoms")
  matrix = np.asarray(structure.lattice.matrix, np.float64)
  if not np.all(np.isfinite(matrix)) or not np.all(np.isfinite(structure.frac_coords)):
    raise InputError(f"{name}: lattice or coordinates are NaN or infinite")
  with np.errstate(all="ignore"):
    volume = abs(float(np.linalg.det(matrix)))
    heights = volume / np.linalg.norm(np.cross(matrix[[1, 2, 0]], matrix[[2, 0, 1]]), axis=1)
  if volume < 1e-6:
    raise InputError(f"{name}: the lattice has zero volume")
  if not volume / n >= MIN_VOLUME_PER_ATOM:
    raise InputError(
      f"{name}: {volume / n:.3g} Å^3 per atom, below the smallest accepted {MIN_VOLUME_PER_ATOM}"
    )
  longest = float(np.max(np.linalg.norm(matrix, axis=1)))
  if longest > MAX_CELL_LENGTH:
    raise InputError(
      f"{name}: a lattice vector is {longest:.3g} Å long, above the largest accepted "
      f"{MAX_CELL_LENGTH:g} Å"
    )
  if not np.all(heights >= MIN_CELL_HEIGHT):
    raise InputError(
      f"{name}: the cell is {np.nanmin(heights):.3g} Å thin between opposite faces, "
      f"below the smallest accepted {MIN_CELL_HEIGHT} Å"
    )
  return structure


def validate_structure(
  structure: Structure,
  *,
  name: str = "structure",
  min_distance: float = DEFAULT_MIN_DISTANCE,
  max_atoms: int = DEFAULT_MAX_ATOMS,
  allowed_elements: Iterable[str] | None = None,
) -> Structure:
  """Check a structure for the problems that break a relaxation; raise :class:`InputError`.

  Checks: at most ``max_atoms`` atoms; :func:`check_cell` (atoms, finite numbers, volume per
  atom, cell heights); a right-handed cell; no two atoms (periodic images included) closer than
  ``min_distance`` Å; elements in ``allowed_elements`` when given.
  """
  n = len(structure)
  if n > max_atoms:
    raise InputError(f"{name}: {n} atoms exceeds the limit of {max_atoms}")
  check_cell(structure, name=name)
  if np.linalg.det(structure.lattice.matrix) < 0:
    raise InputError(f"{name}: the lattice is left-handed (negative determinant)")
  if allowed_elements is not None:
    allowed = set(allowed_elements)
    unknown = sorted({sp.symbol for sp in structure.species} - allowed)
    if unknown:
      raise InputError(
        f"{name}: element(s) {', '.join(unknown)} not supported (known: {', '.join(sorted(allowed))})"
      )
  closest = shortest_lattice_vector(structure.lattice.matrix)
  if n > 1:
    dmat = structure.distance_matrix
    np.fill_diagonal(dmat, np.inf)
    closest = min(closest, float(dmat.min()))
  if closest < min_distance:
    raise InputError(
      f"{name}: atoms overlap ({closest:.3f} Å apart, minimum allowed {min_distance} Å)"
    )
  return structure


def _read_one(path: str) -> list[Structure]:
  """Read every structure in a file with pymatgen/ASE, by extension."""
  lower = os.path.basename(path).lower()
  if lower.endswith(".cif"):
    from pymatgen.io.cif import CifParser

    return CifParser(path).parse_structures(primitive=False)
  if lower.endswith((".xyz", ".extxyz")):
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    return [AseAtomsAdaptor.get_structure(a) for a in ase.io.read(path, index=":")]
  if lower.endswith(".json"):
    import json

    with open(path) as f:
      data = json.load(f)
    return [Structure.from_dict(d) for d in (data if isinstance(data, list) else [data])]
  # POSCAR, CONTCAR, *.vasp and anything else pymatgen recognises.
  return [Structure.from_file(path)]


def read_structures(
  path: str,
  *,
  validate: bool = True,
  **validate_kwargs,
) -> list[Structure]:
  """Read all structures from one CIF, POSCAR/CONTCAR/.vasp, extxyz or pymatgen-JSON file.

  Raises:
    InputError: one line naming the file and the problem (missing, empty,
      binary, truncated or unparsable file; or a structure failing
      :func:`validate_structure`).
  """
  if not os.path.exists(path):
    raise InputError(f"{path}: no such file")
  if os.path.isdir(path):
    raise InputError(f"{path}: is a directory, not a structure file")
  if os.path.getsize(path) == 0:
    raise InputError(f"{path}: empty file")
  with open(path, "rb") as f:
    head = f.read(4096)
  if b"\x00" in head:
    raise InputError(f"{path}: binary file, expected CIF, POSCAR, extxyz or JSON text")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # parser warnings become the one-line error below
      structures = _read_one(path)
  except InputError:
    raise
  except Exception as e:  # noqa: BLE001 - parsers raise many types; report them in one line.
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise InputError(f"{path}: cannot parse structure ({type(e).__name__}: {msg[:200]})") from None
  if not structures:
    raise InputError(f"{path}: no structure found in file")
  if validate:
    for k, s in enumerate(structures):
      label = path if len(structures) == 1 else f"{path}[{k}]"
      validate_structure(s, name=label, **validate_kwargs)
  return structures


def expand_inputs(pattern: str) -> list[str]:
  """Files named by a path, a directory (every file in it) or a glob, sorted."""
  if os.path.isdir(pattern):
    paths = sorted(p for p in glob.glob(os.path.join(pattern, "*")) if os.path.isfile(p))
  elif any(c in pattern for c in "*?["):
    paths = sorted(glob.glob(pattern))
  else:
    paths = [pattern]
  if not paths:
    raise InputError(f"{pattern}: matches no file")
  return paths


def element_symbols(atomic_numbers: Iterable[int]) -> list[str]:
  """Element symbols for atomic numbers."""
  return [Element.from_Z(int(z)).symbol for z in atomic_numbers]
