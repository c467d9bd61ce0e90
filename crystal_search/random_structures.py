"""AIRSS-style random crystal structures (Cheon et al. 2020, appendix 7.2).

For a composition the generator draws, per structure:

* the number of formula units ``z`` uniformly among those that keep the cell
  at ``<= max_atoms`` atoms (38 in the paper), or among ``formula_units``
  (AIRSS ``NFORM``) when given;
* the cell volume uniformly in ``volume_range`` (80–150 %) of a target volume
  ``sum_i n_i v_i`` whose per-element volumes ``v_i`` are fitted (least
  squares) to the known Li–Si phases bundled in ``crystal_search/data/lisi_phases``;
* random lattice lengths and angles with that volume;
* either P1 (atoms placed at random) or, with probability
  ``symmetric_fraction``, a space group whose point-group order (the number
  of symmetry operations of the primitive cell, AIRSS ``SYMMOPS``) lies in
  ``[2, max_symmops]`` (6 in the paper), drawn among the groups compatible
  with the atom counts (pyxtal ``random_crystal`` places the atoms on Wyckoff
  positions).  pyxtal builds centred groups (C, I, R, F) in their conventional
  cell: by default that cell holds the ``z`` formula units (the committed
  dataset's generator), with ``primitive_cells`` the primitive cell does and
  the conventional one is built 2–4 times larger and reduced;
* a minimum separation of 2.28 Å between all atoms (per species pair
  configurable), checked over all periodic images after generation.

Every structure ``index`` of a run with ``seed`` has its own random stream
(``numpy.random.SeedSequence([seed, index, crc32(formula)])``), so a structure does not depend
on which other structures were generated (shards of a run reproduce it
exactly).  Retries are bounded; structures that cannot be made count as
failures.  Constraints that cannot be met at all raise a one-line
:class:`~crystal_search.errors.InputError`.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import warnings
import zlib
from collections.abc import Iterable, Sequence

import numpy as np
from pymatgen.core import Composition, Structure

from crystal_search.compositions import formula_name, formula_units, parse_composition
from crystal_search.errors import InputError

#: Folder of the bundled known Li–Si phases (CIF).
LISI_PHASES_DIR = os.path.join(os.path.dirname(__file__), "data", "lisi_phases")


@dataclasses.dataclass(frozen=True)
class RandomStructureConfig:
  """Options of the random-structure generator.

  Attributes:
    max_atoms: largest number of atoms in a cell.
    volume_range: ``(low, high)`` fractions of the estimated volume; the cell
      volume is drawn uniformly in between.
    min_separation: minimum distance between any two atoms, Å.
    pair_min_separation: per species pair overrides, keys ``'A-B'`` (either
      order), values in Å.
    symmetric_fraction: probability of a symmetric (non-P1) cell (a cell size that no space
      group with ``min_symmops`` to ``max_symmops`` operations fits is built in P1; when no
      allowed size fits any, generation stops with a one-line error).
    min_symmops: smallest point-group order of a symmetric cell.
    max_symmops: largest point-group order of a symmetric cell (AIRSS SYMMOPS).
    formula_units: the formula-unit multiples ``z`` a cell may hold (AIRSS ``NFORM``),
      e.g. ``(2,)`` for the 38-atom cells that can hold Li15Si4's primitive cell; empty:
      every ``z`` with at most ``max_atoms`` atoms.
    primitive_cells: ``max_atoms`` and ``formula_units`` count the primitive cell also for
      centred space groups (C2, Cc, R3c, I-42d, ...): the conventional cell is built with
      2–4 times the atoms and reduced to its primitive cell before it is returned.  False
      (the default, the committed dataset's generator): they count the conventional cell
      pyxtal builds, so a centred group's cell repeats a primitive cell of 1/2 to 1/4 of its
      atoms and can never hold a structure whose primitive cell has all of them (the
      38-atom primitive cell of Li15Si4's I-43d, reachable through R3c, R3, Cc and C2).
    max_attempts: tries per structure before it counts as failed.
    placement_tolerance: pyxtal places atoms at least this fraction of the
      minimum separation apart; a symmetry-preserving push (:func:`push_apart`)
      then enforces the full separation (random sequential placement at the full
      2.28 Å jams at these densities).
    element_volumes: per-element volumes (Å^3) to use instead of the fit.
  """

  max_atoms: int = 38
  volume_range: tuple[float, float] = (0.8, 1.5)
  min_separation: float = 2.28
  pair_min_separation: tuple[tuple[str, float], ...] = ()
  symmetric_fraction: float = 0.5
  min_symmops: int = 2
  max_symmops: int = 6
  formula_units: tuple[int, ...] = ()
  primitive_cells: bool = False
  max_attempts: int = 40
  placement_tolerance: float = 0.5
  element_volumes: tuple[tuple[str, float], ...] = ()

  def pair_separation(self, a: str, b: str) -> float:
    """Minimum separation of the species pair ``(a, b)`` in Å."""
    table = dict(self.pair_min_separation)
    for key in (f"{a}-{b}", f"{b}-{a}"):
      if key in table:
        return float(table[key])
    return float(self.min_separation)


@dataclasses.dataclass
class GenerationResult:
  """Structures from :func:`generate` and how many could not be made.

  Attributes:
    structures: the generated structures (in index order, failed indices left out).
    indices: ``[len(structures)]`` the structure index of each.
    info: per structure: ``space_group``, ``point_group_order``, ``formula_units``,
      ``volume`` (Å^3), ``target_volume`` (Å^3), ``attempts``.
    failed: indices that failed after ``max_attempts`` tries.
    attempts: total tries.
  """

  structures: list[Structure]
  indices: list[int]
  info: list[dict]
  failed: list[int]
  attempts: int

  def __len__(self) -> int:
    return len(self.structures)

  def __iter__(self):
    return iter(self.structures)

  def __getitem__(self, k):
    return self.structures[k]

  @property
  def failure_rate(self) -> float:
    n = len(self.structures) + len(self.failed)
    return len(self.failed) / n if n else 0.0


# ----------------------------------------------------------------------------
# Volumes.


def fit_element_volumes(structures: Sequence[Structure]) -> dict[str, float]:
  """Per-element volumes (Å^3 per atom) by least squares ``V_cell ≈ sum_i n_i v_i``.

  Args:
    structures: reference crystals (e.g. the known phases of the system).

  Returns:
    ``{symbol: volume}``.
  """
  if not structures:
    raise InputError("no reference structures to fit element volumes to")
  symbols = sorted({sp.symbol for s in structures for sp in s.composition})
  counts = np.array([[s.composition[sym] for sym in symbols] for s in structures], dtype=np.float64)
  volumes = np.array([s.volume for s in structures], dtype=np.float64)
  coef, *_ = np.linalg.lstsq(counts, volumes, rcond=None)
  return {sym: float(v) for sym, v in zip(symbols, coef)}


@functools.lru_cache(maxsize=1)
def default_element_volumes() -> dict[str, float]:
  """Element volumes fitted to the bundled known Li–Si phases."""
  from pymatgen.io.cif import CifParser

  structures = []
  for path in sorted(glob.glob(os.path.join(LISI_PHASES_DIR, "*.cif"))):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      structures.extend(CifParser(path).parse_structures(primitive=False))
  return fit_element_volumes(structures)


def estimate_volume(composition: Composition, element_volumes: dict[str, float]) -> float:
  """Target cell volume ``sum_i n_i v_i`` (Å^3) of ``composition`` (all its atoms)."""
  missing = sorted({el.symbol for el in composition} - set(element_volumes))
  if missing:
    raise InputError(
      f"composition {composition.formula}: no reference volume for {', '.join(missing)}"
    )
  return float(sum(n * element_volumes[el.symbol] for el, n in composition.items()))


# ----------------------------------------------------------------------------
# Space groups.


@functools.lru_cache(maxsize=1)
def point_group_orders() -> dict[int, int]:
  """``{space group number: point-group order}`` for all 230 groups (from spglib's database)."""
  import spglib

  orders: dict[int, int] = {}
  for hall in range(1, 531):
    number = spglib.get_spacegroup_type(hall).number
    if number in orders:
      continue
    rotations = spglib.get_symmetry_from_database(hall)["rotations"]
    orders[number] = len({r.tobytes() for r in np.asarray(rotations, np.int64)})
  return orders


def space_groups_with_symmops(low: int, high: int) -> list[int]:
  """Space groups whose point-group order lies in ``[low, high]``."""
  return sorted(n for n, k in point_group_orders().items() if low <= k <= high)


@functools.cache
def _group(number: int):
  from pyxtal.symmetry import Group

  return Group(number)


#: Lattice points per conventional cell of each centring (pyxtal builds R groups in the
#: hexagonal setting: 3 points).
CENTRING_MULTIPLICITY = {"P": 1, "A": 2, "B": 2, "C": 2, "I": 2, "R": 3, "F": 4}


@functools.cache
def centring_multiplicity(number: int) -> int:
  """Conventional-cell atoms per primitive-cell atom of space group ``number`` (1, 2, 3 or 4)."""
  return CENTRING_MULTIPLICITY[_group(number).symbol[0]]


@functools.lru_cache(maxsize=4096)
def compatible_space_groups(
  num_ions: tuple[int, ...], low: int, high: int, *, primitive: bool = False
) -> tuple[int, ...]:
  """Groups with point-group order in ``[low, high]`` that admit ``num_ions`` atoms per species.

  ``num_ions`` counts the conventional cell, or with ``primitive`` the primitive cell (a
  centred group's conventional cell then holds ``centring_multiplicity`` times as many).
  """
  out = []
  for number in space_groups_with_symmops(low, high):
    mult = centring_multiplicity(number) if primitive else 1
    ok, _ = _group(number).check_compatible([n * mult for n in num_ions])
    if ok:
      out.append(number)
  return tuple(out)


# ----------------------------------------------------------------------------
# Generation.


def min_separation_ok(structure: Structure, config: RandomStructureConfig) -> bool:
  """True when every pair of atoms (all periodic images) is at least its minimum apart."""
  symbols = [sp.symbol for sp in structure.species]
  cutoff = max(
    [config.pair_separation(a, b) for a in set(symbols) for b in set(symbols)]
    + [config.min_separation]
  )
  centers, neighbors, _, distances = structure.get_neighbor_list(r=cutoff - 1e-8)
  for i, j, d in zip(centers, neighbors, distances):
    if d < config.pair_separation(symbols[i], symbols[j]) - 1e-6:
      return False
  return True


def min_distance(structure: Structure, *, cutoff: float = 6.0) -> float:
  """Closest distance between two atoms, periodic images included (Å; ``inf`` if > cutoff)."""
  _, _, _, distances = structure.get_neighbor_list(r=cutoff)
  distances = distances[distances > 1e-8]
  return float(distances.min()) if len(distances) else float("inf")


def detected_space_group(structure: Structure, *, symprec: float = 1e-3) -> int:
  """International number of the space group spglib finds at ``symprec`` (Å)."""
  from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

  return int(SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number())


@functools.lru_cache(maxsize=64)
def _tol_matrix(species: tuple[str, ...], config: RandomStructureConfig):
  """pyxtal's tolerance matrix of ``species`` (read-only in pyxtal: built once per setting)."""
  from pyxtal.tolerance import Tol_matrix

  f = config.placement_tolerance
  tuples = [(a, b, f * config.pair_separation(a, b)) for a in species for b in species]
  return Tol_matrix(*tuples)


def push_apart(
  structure: Structure,
  config: RandomStructureConfig,
  *,
  max_steps: int = 150,
  margin: float = 1.01,
) -> Structure | None:
  """Move atoms apart until every pair respects its minimum separation (AIRSS "push").

  Steepest descent of the overlap energy ``sum_pairs max(0, margin * d_min - d)^2``
  with the cell fixed.  The overlap energy is invariant under the structure's
  space group, so its gradient is symmetric and a symmetric structure stays
  symmetric (atoms on special positions stay on them).

  Returns:
    The pushed structure, or None when ``max_steps`` did not suffice.  On the search's
    symmetric draws, pushes that take longer than the default 150 steps are jams whose
    result breaks the drawn symmetry and is retried anyway; stopping them early saves a sixth
    of a symmetric cell's generation time.
  """
  symbols = [sp.symbol for sp in structure.species]
  kinds = sorted(set(symbols))
  table = np.array([[config.pair_separation(a, b) for b in kinds] for a in kinds])
  kind = np.array([kinds.index(x) for x in symbols])
  # pymatgen's neighbour kernel (what Structure.get_neighbor_list calls) on plain arrays: no
  # Structure is built per step.
  from pymatgen.optimization.neighbors import find_points_in_spheres

  lattice = np.ascontiguousarray(structure.lattice.matrix, dtype=float)
  inv = np.linalg.inv(lattice)
  frac = structure.frac_coords.copy()
  cutoff = float(table.max()) * margin
  pbc = np.ones(3, np.int64)
  for step in range(max_steps):
    cart = np.ascontiguousarray(frac @ lattice, dtype=float)
    centers, neighbors, images, distances = find_points_in_spheres(
      cart, cart, r=cutoff, pbc=pbc, lattice=lattice, tol=1e-8
    )
    keep = distances > 1e-8
    centers, neighbors, images, distances = (
      centers[keep],
      neighbors[keep],
      images[keep],
      distances[keep],
    )
    dmin = table[kind[centers], kind[neighbors]]
    if np.all(distances >= dmin):
      return structure if step == 0 else Structure(structure.lattice, structure.species, frac)
    overlap = np.maximum(margin * dmin - distances, 0.0)
    vec = cart[centers] - (cart[neighbors] + images @ lattice)  # from neighbour to centre
    push = (overlap / distances)[:, None] * vec
    disp = np.zeros_like(cart)
    np.add.at(disp, centers, 0.5 * push)
    largest = float(np.linalg.norm(disp, axis=1).max())
    if largest > 0.2:
      disp *= 0.2 / largest
    frac = frac + disp @ inv
  return None


def _one_attempt(
  composition: Composition,
  rng: np.random.Generator,
  config: RandomStructureConfig,
  element_volumes: dict[str, float],
  *,
  z: int,
  symmetric: bool,
) -> tuple[Structure | None, dict]:
  from pyxtal import pyxtal
  from pyxtal.lattice import Lattice as PyxtalLattice

  from crystal_search import primitive_cells, pyxtal_speedups

  pyxtal_speedups.install()

  unit = composition.reduced_composition
  species = [el.symbol for el in unit]
  num_ions = tuple(int(round(unit[s] * z)) for s in species)
  cell = Composition(dict(zip(species, num_ions)))
  target = estimate_volume(cell, element_volumes)
  low, high = config.volume_range
  volume = float(rng.uniform(low * target, high * target))
  group = 1
  if symmetric:
    groups = compatible_space_groups(
      num_ions, config.min_symmops, config.max_symmops, primitive=config.primitive_cells
    )
    if groups:
      group = int(rng.choice(groups))
  # pyxtal builds the conventional cell; with primitive_cells it holds mult primitive cells.
  mult = centring_multiplicity(group) if config.primitive_cells else 1
  info = {
    "space_group": group,
    "point_group_order": point_group_orders()[group],
    "formula_units": z,
    "target_volume": target,
    "volume": volume,
  }
  min_len = max(config.pair_separation(a, b) for a in species for b in species)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
      lattice = PyxtalLattice(
        _group(group).lattice_type, volume * mult, random_state=rng, min_l=min_len
      )
      crystal = pyxtal()
      crystal.from_random(
        dim=3,
        group=group,
        species=species,
        numIons=[n * mult for n in num_ions],
        lattice=lattice,
        tm=_tol_matrix(tuple(species), config),
        random_state=rng,
        max_count=1,
      )
      if not crystal.valid:
        return None, info
      structure = crystal.to_pymatgen()
      if mult > 1:
        structure = primitive_cells.get_primitive_structure(structure)
    except Exception:  # noqa: BLE001 - pyxtal raises many kinds on a bad draw; that is a retry.
      return None, info
  if len(structure) != sum(num_ions) or structure.composition.reduced_composition != unit:
    return None, info
  if not (low * target * (1 - 1e-6) <= structure.volume <= high * target * (1 + 1e-6)):
    return None, info
  structure = push_apart(structure, config)
  if structure is None or not min_separation_ok(structure, config):
    return None, info
  # A push can break the symmetry when atoms on a special position jam (noise off the symmetry
  # element grows); such a structure is no longer what was drawn and is retried.
  detected = detected_space_group(structure)
  info["space_group_detected"] = detected
  if group != 1 and point_group_orders()[detected] != point_group_orders()[group]:
    return None, info
  info["volume"] = float(structure.volume)
  return structure, info


def check_settings(config: RandomStructureConfig) -> None:
  """One-line :class:`~crystal_search.errors.InputError` for settings no composition can meet."""
  if config.max_atoms <= 0:
    raise InputError(f"max_atoms {config.max_atoms}: must be positive")
  low, high = config.volume_range
  if not 0 < low <= high:
    raise InputError(f"volume_range {config.volume_range}: need 0 < low <= high")
  if not 0.0 <= config.symmetric_fraction <= 1.0:
    raise InputError(f"symmetric_fraction {config.symmetric_fraction}: must lie in [0, 1]")
  if not 1 <= config.min_symmops <= config.max_symmops:
    raise InputError(
      f"symmetry operations [{config.min_symmops}, {config.max_symmops}]: need "
      "1 <= min_symmops <= max_symmops"
    )
  if config.min_separation <= 0:
    raise InputError(f"min_separation {config.min_separation}: must be positive")


def _check_symmetric_cells(composition: Composition, config: RandomStructureConfig) -> None:
  """Refuse symmetric cells that no allowed cell size can hold (they would all fall back to P1)."""
  if config.symmetric_fraction == 0:
    return
  unit = composition.reduced_composition
  species = [el.symbol for el in unit]
  zs = allowed_formula_units(composition, config)
  for z in zs:
    num_ions = tuple(int(round(unit[s] * z)) for s in species)
    if compatible_space_groups(
      num_ions, config.min_symmops, config.max_symmops, primitive=config.primitive_cells
    ):
      return
  raise InputError(
    f"composition {formula_name(composition)}: no space group with {config.min_symmops} to "
    f"{config.max_symmops} symmetry operations fits cells of {', '.join(map(str, zs))} formula "
    "units; widen the symmetry range or change formula_units"
  )


def check_composition(
  composition: Composition, config: RandomStructureConfig, volumes: dict[str, float] | None = None
) -> None:
  """One-line :class:`~crystal_search.errors.InputError` when ``config`` cannot make cells of
  ``composition``: bad settings, a cell size it cannot take, symmetry no allowed size fits, or
  too little volume for the minimum separation."""
  volumes = volumes or dict(config.element_volumes) or default_element_volumes()
  check_settings(config)
  _check_symmetric_cells(composition, config)
  low, high = config.volume_range
  unit = composition.reduced_composition
  # Densest packing of hard spheres of diameter d fills d^3 / sqrt(2) per sphere; a cell
  # smaller than that at the largest allowed volume can never hold the atoms.
  species = [el.symbol for el in unit]
  d = min(config.pair_separation(a, b) for a in species for b in species)
  per_atom_needed = d**3 / np.sqrt(2.0)
  per_atom_available = high * estimate_volume(unit, volumes) / unit.num_atoms
  if per_atom_needed > per_atom_available:
    raise InputError(
      f"composition {formula_name(unit)}: min separation {d} Å needs at least "
      f"{per_atom_needed:.1f} Å^3 per atom but the largest allowed volume gives "
      f"{per_atom_available:.1f} Å^3 per atom"
    )


@functools.lru_cache(maxsize=64)
def _check_composition_once(
  composition: Composition, config: RandomStructureConfig, volumes: tuple[tuple[str, float], ...]
) -> None:
  """:func:`check_composition` once per composition and settings (a refusal is not cached)."""
  check_composition(composition, config, dict(volumes))


def config_from(options) -> RandomStructureConfig:
  """A :class:`RandomStructureConfig` from a flat mapping (an ml-collections config section).

  Reads the keys it finds among ``max_atoms``, ``volume_low``/``volume_high`` (fractions of the
  estimated volume), ``min_separation`` (Å), ``symmetric_fraction``, ``min_symmops``,
  ``max_symmops``, ``formula_units`` (``"1,2"``), ``primitive_cells``, ``max_attempts``,
  ``element_volumes`` and ``pair_min_separation`` (:func:`parse_table`);
  absent keys keep the generator's defaults.  The one mapping from the search and teacher
  configs onto the generator.
  """
  get = options.get
  default = RandomStructureConfig()
  return RandomStructureConfig(
    max_atoms=int(get("max_atoms", default.max_atoms)),
    volume_range=(
      float(get("volume_low", default.volume_range[0])),
      float(get("volume_high", default.volume_range[1])),
    ),
    min_separation=float(get("min_separation", default.min_separation)),
    symmetric_fraction=float(get("symmetric_fraction", default.symmetric_fraction)),
    min_symmops=int(get("min_symmops", default.min_symmops)),
    max_symmops=int(get("max_symmops", default.max_symmops)),
    formula_units=parse_formula_units(get("formula_units", "")),
    primitive_cells=bool(get("primitive_cells", default.primitive_cells)),
    max_attempts=int(get("max_attempts", default.max_attempts)),
    pair_min_separation=parse_table(get("pair_min_separation", ""), "pair_min_separation"),
    element_volumes=parse_table(get("element_volumes", ""), "element_volumes"),
  )


def parse_table(text: str, name: str) -> tuple[tuple[str, float], ...]:
  """``"Li=14.8,Ge=17.9"`` (``element_volumes``, Å^3) or ``"Li-Ge=2.37,Ge-Ge=2.29"``
  (``pair_min_separation``, Å) → sorted ``((key, value), ...)``; ``""`` → ``()``."""
  out = {}
  for item in str(text or "").split(","):
    if not item.strip():
      continue
    key, _, value = item.partition("=")
    symbols = key.strip().split("-")
    try:
      number = float(value)
    except ValueError:
      number = float("nan")
    want = 2 if name == "pair_min_separation" else 1
    if len(symbols) != want or not all(symbols) or not number > 0 or not np.isfinite(number):
      example = "Li-Ge=2.37" if want == 2 else "Ge=17.9"
      raise InputError(f"{name} {text!r}: expected KEY=positive number items, e.g. {example}")
    out[key.strip()] = number
  return tuple(sorted(out.items()))


def parse_formula_units(text: str) -> tuple[int, ...]:
  """``"1,2"`` → ``(1, 2)``; ``""`` → ``()`` (every z); one-line :class:`~crystal_search.errors.InputError` otherwise."""
  out = []
  for item in str(text or "").split(","):
    if not item.strip():
      continue
    try:
      z = int(item)
    except ValueError:
      raise InputError(
        f"formula_units {text!r}: expected positive integers, e.g. '2' or '1,2'"
      ) from None
    if z <= 0:
      raise InputError(f"formula_units {text!r}: formula units must be positive")
    out.append(z)
  return tuple(out)


def allowed_formula_units(composition: Composition, config: RandomStructureConfig) -> list[int]:
  """The ``z`` a cell of ``composition`` may hold under ``config`` (``max_atoms``, ``formula_units``).

  Raises:
    InputError: when a requested ``z`` is not positive or exceeds ``max_atoms``.
  """
  zs = formula_units(composition, config.max_atoms)
  if not config.formula_units:
    return zs
  bad = [z for z in config.formula_units if int(z) not in zs]
  if bad:
    n = int(round(composition.reduced_composition.num_atoms))
    raise InputError(
      f"formula_units {bad[0]}: {formula_name(composition)} allows 1 to {zs[-1]} formula units "
      f"({n} atoms each, max_atoms={config.max_atoms})"
    )
  return sorted({int(z) for z in config.formula_units})


def random_structure(
  composition: Composition | str,
  *,
  seed: int,
  index: int = 0,
  config: RandomStructureConfig | None = None,
) -> tuple[Structure | None, dict]:
  """Structure number ``index`` of the run ``seed`` for ``composition``.

  Returns:
    ``(structure or None after config.max_attempts failed tries, info dict)``.
  """
  config = config or RandomStructureConfig()
  if isinstance(composition, str):
    composition = parse_composition(composition)
  volumes = dict(config.element_volumes) or default_element_volumes()
  _check_composition_once(composition, config, tuple(sorted(volumes.items())))
  name = formula_name(composition)
  rng = np.random.default_rng(
    np.random.SeedSequence([int(seed), int(index), zlib.crc32(name.encode())])
  )
  # The cell size and whether it is symmetric are drawn once per structure, so that retries
  # (more frequent for symmetric cells) do not bias the mix towards P1.
  z = int(rng.choice(allowed_formula_units(composition, config)))
  symmetric = bool(rng.random() < config.symmetric_fraction)
  info: dict = {}
  for attempt in range(1, config.max_attempts + 1):
    structure, info = _one_attempt(composition, rng, config, volumes, z=z, symmetric=symmetric)
    info["attempts"] = attempt
    if structure is not None:
      return structure, info
  return None, info


def generate(
  composition: Composition | str,
  num: int,
  *,
  seed: int,
  config: RandomStructureConfig | None = None,
  indices: Iterable[int] | None = None,
  progress: bool = False,
  **overrides,
) -> GenerationResult:
  """Random structures ``indices`` (default ``range(num)``) of the run ``seed``.

  Keyword ``overrides`` replace fields of ``config`` (e.g. ``max_atoms=24``).  The
  result is also a sequence of the generated structures.

  Raises:
    InputError: on impossible constraints, or when every structure failed.
  """
  config = config or RandomStructureConfig()
  if overrides:
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(config)})
    if unknown:
      raise TypeError(f"unknown random-structure option(s): {', '.join(unknown)}")
    config = dataclasses.replace(config, **overrides)
  if isinstance(composition, str):
    composition = parse_composition(composition)
  indices = list(range(num)) if indices is None else list(indices)
  result = GenerationResult([], [], [], [], 0)
  iterator = indices
  if progress:
    from tqdm import tqdm

    iterator = tqdm(indices, desc=formula_name(composition), unit="structure")
  for i in iterator:
    structure, info = random_structure(composition, seed=seed, index=i, config=config)
    result.attempts += int(info.get("attempts", config.max_attempts))
    if structure is None:
      result.failed.append(i)
    else:
      result.structures.append(structure)
      result.indices.append(i)
      result.info.append(info)
  if indices and not result.structures:
    raise InputError(
      f"composition {formula_name(composition)}: no random structure could be made in "
      f"{config.max_attempts} attempts each (min separation {config.min_separation} Å, "
      f"volume range {config.volume_range}); relax the constraints"
    )
  return result


def structure_name(composition: Composition | str, seed: int, index: int) -> str:
  """File stem of a generated structure: ``<Formula>_<seed>_<index:05d>``."""
  if isinstance(composition, str):
    composition = parse_composition(composition)
  return f"{formula_name(composition)}_{seed}_{index:05d}"


def write_structures(
  structures: Sequence[Structure],
  path: str,
  *,
  names: Sequence[str] | None = None,
  info: Sequence[dict] | None = None,
) -> list[str]:
  """Write structures to one extxyz file (``path`` ends in .xyz/.extxyz) or a folder of CIFs.

  Returns:
    The files written.
  """
  names = (
    list(names) if names is not None else [f"structure_{k:05d}" for k in range(len(structures))]
  )
  lower = path.lower()
  if lower.endswith((".xyz", ".extxyz")):
    import ase.io
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms_list = []
    for k, s in enumerate(structures):
      atoms = AseAtomsAdaptor.get_atoms(s)
      atoms.info["name"] = names[k]
      if info is not None:
        for key, value in info[k].items():
          atoms.info[key] = value
      atoms_list.append(atoms)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    ase.io.write(tmp, atoms_list, format="extxyz")
    os.replace(tmp, path)
    return [path]
  from pymatgen.io.cif import CifWriter

  os.makedirs(path, exist_ok=True)
  written = []
  for name, s in zip(names, structures):
    out = os.path.join(path, f"{name}.cif")
    CifWriter(s).write_file(out)
    written.append(out)
  return written
