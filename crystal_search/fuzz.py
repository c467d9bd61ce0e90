"""Random hostile inputs for reading, graph building and relaxation, and the checks they must pass.

A :class:`Case` is one structure drawn by :func:`draw_case` from a numpy ``Generator``: a lattice
(rows, Å), fractional positions and element symbols, of a ``kind`` among :data:`CASE_KINDS`
(tiny, huge, nearly flat, strongly skewed or left-handed cells, overlapping atoms, NaN or
infinite numbers, single atoms, up to 200 atoms, unsupported elements, corrupted files).

The checks (:func:`check_read`, :func:`check_graph`, :func:`check_relax`) return one
:class:`Outcome` per case.  The property every check asserts: the only exception that escapes
the library is :class:`~crystal_search.errors.InputError` (an outcome ``"refused"`` with the error
kind, the message's text before the number-free part); every other outcome is ``"failed"`` with a
reason, ``"converged"`` or ``"unconverged"``, and ``problems`` lists what broke the properties
(an unexpected exception, a multi-line error, a result that is neither failed nor finite and
sane).  ``benchmarks/fuzz_inputs.py`` and ``tests/test_fuzz.py`` run them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import traceback

import numpy as np
from pymatgen.core import Lattice, Structure

from crystal_search.errors import InputError

#: Kinds of case :func:`draw_case` draws (``corrupt`` only means something when reading a file).
CASE_KINDS = (
  "normal",
  "single",
  "large",
  "tiny",
  "huge",
  "flat",
  "skewed",
  "left_handed",
  "overlap",
  "nan",
  "inf",
  "unsupported",
  "corrupt",
)
#: File formats :func:`write_case` writes.
FORMATS = ("poscar", "cif", "extxyz", "json")
#: Elements a case is made of (the packaged models' elements) and some they do not support.
ELEMENTS = ("Li", "Si")
UNSUPPORTED = ("H", "C", "O", "Fe", "Au", "U", "Og")


@dataclasses.dataclass
class Case:
  """One drawn structure.

  Attributes:
    kind: one of :data:`CASE_KINDS`.
    lattice: ``[3, 3]`` rows, Å (may hold NaN or inf).
    frac: ``[n, 3]`` fractional coordinates (may hold NaN or inf).
    species: ``n`` element symbols.
    seed: seed of the case's own draws (file format, corruption).
  """

  kind: str
  lattice: np.ndarray
  frac: np.ndarray
  species: list[str]
  seed: int = 0

  def structure(self) -> Structure:
    """The case as a pymatgen structure (no checks: NaN, overlaps and all)."""
    return Structure(Lattice(self.lattice), self.species, self.frac, validate_proximity=False)


@dataclasses.dataclass
class Outcome:
  """What one check of one case gave.

  Attributes:
    status: ``"refused"`` (an :class:`InputError`), ``"failed"`` (a flagged failure),
      ``"converged"``, ``"unconverged"`` (the step cap reached) or ``"accepted"`` (read or
      graph built).
    reason: the failure reason, or the kind of refusal (:func:`error_kind`).
    problems: broken properties; empty when the case behaved.
  """

  status: str
  reason: str | None = None
  problems: list[str] = dataclasses.field(default_factory=list)


def _atom_count(rng: np.random.Generator, max_atoms: int) -> int:
  """1-16 atoms mostly, some up to 64, a few up to ``max_atoms``."""
  u = rng.random()
  top = 16 if u < 0.7 else 64 if u < 0.9 else max_atoms
  return int(rng.integers(1, min(top, max_atoms) + 1))


def _random_lattice(rng: np.random.Generator, n: int, volume_per_atom: float) -> np.ndarray:
  """A right-handed cell of ``n * volume_per_atom`` Å^3 with angles in 60-120°."""
  abc = rng.uniform(0.7, 1.3, 3)
  angles = rng.uniform(60.0, 120.0, 3)
  for _ in range(20):
    lattice = Lattice.from_parameters(*abc, *angles).matrix
    if np.linalg.det(lattice) > 0.2 * np.prod(abc):
      break
    angles = rng.uniform(75.0, 105.0, 3)
  scale = (n * volume_per_atom / np.linalg.det(lattice)) ** (1 / 3)
  return lattice * scale


def draw_case(rng: np.random.Generator, kind: str | None = None, *, max_atoms: int = 200) -> Case:
  """One random case of ``kind`` (default: drawn uniformly from :data:`CASE_KINDS`)."""
  kind = kind or str(rng.choice(CASE_KINDS))
  if kind not in CASE_KINDS:
    raise ValueError(f"unknown case kind {kind!r}")
  n = 1 if kind == "single" else _atom_count(rng, max_atoms)
  if kind == "large":
    n = int(rng.integers(min(65, max_atoms), max_atoms + 1))
  lattice = _random_lattice(rng, n, rng.uniform(12.0, 30.0))
  frac = rng.random((n, 3))
  species = [str(rng.choice(ELEMENTS)) for _ in range(n)]
  if kind == "tiny":
    lattice = lattice * (10.0 ** rng.uniform(-3.0, 0.0))
  elif kind == "huge":
    lattice = lattice * (10.0 ** rng.uniform(1.0, 14.0))
  elif kind == "flat":
    lattice[int(rng.integers(3))] *= 10.0 ** rng.uniform(-8.0, -0.3)
  elif kind == "skewed":
    i, j = rng.choice(3, 2, replace=False)
    lattice[i] += rng.choice([-1, 1]) * rng.uniform(2.0, 60.0) * lattice[j]
  elif kind == "left_handed":
    lattice = lattice[[1, 0, 2]]
  elif kind == "overlap":
    k = int(rng.integers(n))
    offset = rng.normal(size=3)
    offset *= 10.0 ** rng.uniform(-8.0, 0.0) / np.linalg.norm(offset)
    frac = np.concatenate([frac, frac[k : k + 1] + offset @ np.linalg.inv(lattice)])
    species.append(str(rng.choice(ELEMENTS)))
  elif kind in ("nan", "inf"):
    bad = np.nan if kind == "nan" else rng.choice([-np.inf, np.inf])
    target = lattice if rng.random() < 0.5 else frac
    target[tuple(rng.integers(0, s) for s in target.shape)] = bad
  elif kind == "unsupported":
    species[int(rng.integers(n))] = str(rng.choice(UNSUPPORTED))
  return Case(kind, lattice, frac, species, int(rng.integers(2**31)))


def draw_cases(seed, count: int, *, kinds=None, max_atoms: int = 200) -> list[Case]:
  """``count`` cases from ``numpy.random.default_rng(seed)`` (an int or a sequence of ints),
  kinds cycled from ``kinds``."""
  rng = np.random.default_rng(seed)
  kinds = list(kinds or CASE_KINDS)
  return [draw_case(rng, kinds[k % len(kinds)], max_atoms=max_atoms) for k in range(count)]


def error_kind(error: BaseException) -> str:
  """A short label of an error: its message after the name of the input, digits dropped."""
  text = str(error).split(": ", 1)[-1] if ": " in str(error) else str(error)
  text = re.sub(r"\(.*", "", text)
  return re.sub(r"[-+]?\d[\d.e+-]*", "#", text).strip()[:60]


def _crash(stage: str, error: BaseException) -> str:
  where = traceback.extract_tb(error.__traceback__)[-1]
  place = f"{os.path.basename(where.filename)}:{where.lineno}"
  return f"{stage}: {type(error).__name__} at {place}: {str(error).splitlines()[0][:160] if str(error) else ''}"


def _refused(error: InputError) -> Outcome:
  problems = ["multi-line InputError"] if "\n" in str(error).strip() else []
  return Outcome("refused", error_kind(error), problems)


# ----------------------------------------------------------------------------
# Files.


def _number(x: float) -> str:
  return repr(float(x))


def write_case(case: Case, path: str, fmt: str) -> None:
  """Write ``case`` as ``fmt`` (:data:`FORMATS`) text, NaN and inf written as such."""
  lines: list[str]
  n = len(case.species)
  if fmt == "poscar":
    symbols = list(dict.fromkeys(case.species))
    order = sorted(range(n), key=lambda i: symbols.index(case.species[i]))
    lines = ["fuzz", "1.0"] + [" ".join(map(_number, row)) for row in case.lattice]
    lines += [" ".join(symbols), " ".join(str(case.species.count(s)) for s in symbols), "direct"]
    lines += [" ".join(map(_number, case.frac[i])) for i in order]
  elif fmt == "cif":
    with np.errstate(all="ignore"):
      lengths = np.linalg.norm(case.lattice, axis=1)
      a, b, c = case.lattice
      cos = [b @ c / (lengths[1] * lengths[2]), a @ c / (lengths[0] * lengths[2])]
      cos.append(a @ b / (lengths[0] * lengths[1]))
      angles = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    lines = ["data_fuzz", "_symmetry_space_group_name_H-M 'P 1'"]
    for name, value in zip(("a", "b", "c"), lengths, strict=True):
      lines.append(f"_cell_length_{name} {_number(value)}")
    for name, value in zip(("alpha", "beta", "gamma"), angles, strict=True):
      lines.append(f"_cell_angle_{name} {_number(value)}")
    lines += ["loop_", "_atom_site_label", "_atom_site_type_symbol"]
    lines += ["_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z"]
    for i, (s, f) in enumerate(zip(case.species, case.frac, strict=True)):
      lines.append(f"{s}{i} {s} " + " ".join(map(_number, f)))
  elif fmt == "extxyz":
    with np.errstate(all="ignore"):
      cart = case.frac @ case.lattice
    cell = " ".join(_number(x) for x in case.lattice.reshape(-1))
    lines = [str(n), f'Lattice="{cell}" Properties=species:S:1:pos:R:3 pbc="T T T"']
    lines += [f"{s} " + " ".join(map(_number, r)) for s, r in zip(case.species, cart, strict=True)]
  elif fmt == "json":
    sites = [
      {"species": [{"element": s, "occu": 1}], "abc": [float(x) for x in f]}
      for s, f in zip(case.species, case.frac, strict=True)
    ]
    data = {
      "@module": "pymatgen.core.structure",
      "@class": "Structure",
      "lattice": {"matrix": case.lattice.tolist()},
      "sites": sites,
    }
    lines = [json.dumps(data)]
  else:
    raise ValueError(f"unknown format {fmt!r}")
  text = "\n".join(lines) + "\n"
  if case.kind == "corrupt":
    text = corrupt_text(text, np.random.default_rng(case.seed))
  with open(path, "w") as f:
    f.write(text)


def corrupt_text(text: str, rng: np.random.Generator) -> str:
  """``text`` truncated, with characters replaced, or with lines dropped or repeated."""
  how = int(rng.integers(4))
  if how == 0 and text:
    return text[: int(rng.integers(len(text)))]
  if how == 1:
    chars = list(text)
    for _ in range(int(rng.integers(1, 8))):
      chars[int(rng.integers(len(chars)))] = str(rng.choice(list("0-.e x\n#'_;")))
    return "".join(chars)
  lines = text.splitlines()
  k = int(rng.integers(len(lines)))
  lines = lines[:k] + lines[k + 1 :] if how == 2 else lines[:k] + [lines[k]] * 3 + lines[k:]
  return "\n".join(lines) + "\n"


def check_read(case: Case, path: str, fmt: str) -> Outcome:
  """Write ``case`` to ``path`` as ``fmt`` and read it back with
  :func:`~crystal_search.crystals.read_structures`: refused with a one-line error naming the
  file, or read as finite structures that pass :func:`~crystal_search.crystals.check_cell`."""
  from crystal_search import crystals as crystals_lib

  write_case(case, path, fmt)
  try:
    structures = crystals_lib.read_structures(path)
  except InputError as e:
    out = _refused(e)
    if path not in str(e):
      out.problems.append("error does not name the file")
    return out
  except Exception as e:  # noqa: BLE001 - any other exception is what the fuzzer looks for.
    return Outcome("crashed", type(e).__name__, [_crash("read", e)])
  problems = []
  for s in structures:
    try:
      crystals_lib.check_cell(s, name=path)
    except InputError as e:
      problems.append(f"read a structure that check_cell refuses: {e}")
    if not (np.all(np.isfinite(s.lattice.matrix)) and np.all(np.isfinite(s.frac_coords))):
      problems.append("read a non-finite structure")
  return Outcome("accepted", None, problems)


def _pow2(x: int, least: int = 64) -> int:
  return max(least, 1 << max(0, int(x) - 1).bit_length())


def check_graph(
  case: Case, *, cutoff: float = 4.0, max_images: int = 3, capacity: int | None = None
) -> Outcome:
  """Neighbour lists and the graph of ``case`` (refused up front by
  :func:`~crystal_search.crystals.check_cell`, like the relaxer's inputs).

  With ``capacity`` edges (default: the power of two that holds the host count
  :func:`~crystal_search.graphs.edge_counts`) and an image range of at most ``max_images`` (the
  models' largest), ``overflow`` is set exactly when the edges or the image range cannot be
  met (a ``"capacity"`` failure); otherwise the edges are the host count's, finite and within
  ``cutoff`` Å, and the graph's features are finite.  Without ``capacity``, a capacity of half
  the power of two must overflow too.
  """
  from crystal_search import crystals as crystals_lib
  from crystal_search import graphs

  try:
    structure = crystals_lib.check_cell(case.structure(), name=f"{case.kind} case")
  except InputError as e:
    return _refused(e)
  try:
    batch = crystals_lib.from_structures([structure])
    expected = int(graphs.edge_counts(batch, cutoff)[0])
    need = graphs.required_images(batch, cutoff)
    fits = need <= max_images and (capacity is None or expected <= capacity)
    images = max_images if capacity else min(need, max_images)
    neighbors = _neighbors(batch, cutoff, capacity or _pow2(expected), images)
    problems = _graph_problems(batch, neighbors, expected, cutoff, fits)
    if capacity is None and expected > 1 and fits:
      small = _neighbors(batch, cutoff, _pow2(expected, 1) // 2, images)
      if not bool(small.overflow[0]):
        problems.append(f"{expected} edges in a capacity of {small.capacity} without overflow")
  except InputError as e:
    return _refused(e)
  except Exception as e:  # noqa: BLE001 - any other exception is what the fuzzer looks for.
    return Outcome("crashed", type(e).__name__, [_crash("graph", e)])
  return Outcome("accepted" if fits else "failed", None if fits else "capacity", problems)


_NEIGHBOR_FNS: dict = {}


def _neighbors(batch, cutoff: float, capacity: int, images: int):
  import jax

  from crystal_search import graphs

  key = (cutoff, capacity, images)
  if key not in _NEIGHBOR_FNS:
    _NEIGHBOR_FNS[key] = jax.jit(
      lambda c: graphs.compute_neighbors(c, cutoff=cutoff, capacity=capacity, images=images)
    )
  return jax.tree_util.tree_map(np.asarray, _NEIGHBOR_FNS[key](batch))


def _graph_problems(batch, neighbors, expected: int, cutoff: float, fits: bool) -> list[str]:
  from crystal_search import graphs

  problems = []
  if not fits:
    if not bool(neighbors.overflow[0]):
      problems.append("edges or images beyond the capacity without overflow")
    return problems
  if bool(neighbors.overflow[0]):
    problems.append(f"overflow with capacity {neighbors.capacity} for {expected} edges")
  if int(neighbors.count[0]) != expected:
    problems.append(f"{int(neighbors.count[0])} edges found, {expected} expected")
  vectors = np.asarray(graphs.edge_vectors(batch, neighbors))[0][neighbors.mask[0]]
  lengths = np.linalg.norm(vectors, axis=-1)
  if not np.all(np.isfinite(vectors)):
    problems.append("non-finite edge vectors")
  elif len(lengths) and lengths.max() > cutoff * (1 + 1e-4):
    problems.append(f"an edge {lengths.max():.3g} Å long, beyond the cutoff")
  graph = graphs.build_graph(batch, neighbors)
  for part in (graph.nodes["plane_distances"], graph.edges["features"]):
    if not np.all(np.isfinite(np.asarray(part))):
      problems.append("non-finite graph features")
      break
  return problems


#: Relaxation settings of the fuzzer: short runs (the properties hold at every step).
RELAX_SETTINGS = {"fmax": 0.05, "smax": 5.0, "max_steps": 30}


def check_relax(
  cases: list[Case], force_field, optimizer: str, *, energies: bool = True, **settings
) -> list[Outcome]:
  """Relax ``cases`` together with ``force_field`` and ``optimizer`` (settings
  :data:`RELAX_SETTINGS`, ``settings`` win).  A case :func:`relax_structures` refuses (an
  :class:`InputError` for it alone) is ``"refused"`` and left out of the batch; the others
  each give a flagged failure, or a result that is finite and sane (:func:`result_problems`).
  An exception that escapes the batch is attributed by relaxing its cases one at a time.
  ``energies``: the force field gives energies (False for the force/stress models: NaN)."""
  from crystal_search import relax

  settings = {**RELAX_SETTINGS, "optimizer": optimizer, **settings}
  outcomes: list[Outcome | None] = [None] * len(cases)
  structures, kept = [], []
  for k, case in enumerate(cases):
    try:
      structure = case.structure()
      relax.check_inputs([structure], force_field)
    except InputError as e:
      outcomes[k] = _refused(e)
      continue
    except Exception as e:  # noqa: BLE001 - any other exception is what the fuzzer looks for.
      outcomes[k] = Outcome("crashed", type(e).__name__, [_crash("relax input", e)])
      continue
    structures.append(structure)
    kept.append(k)
  try:
    results = relax.relax_structures(structures, force_field, **settings) if kept else []
  except Exception as e:  # noqa: BLE001
    if len(kept) == 1:
      outcomes[kept[0]] = Outcome("crashed", type(e).__name__, [_crash("relax", e)])
      return outcomes  # type: ignore[return-value]
    for k in kept:
      outcomes[k] = check_relax([cases[k]], force_field, optimizer, energies=energies, **settings)[
        0
      ]
    return outcomes  # type: ignore[return-value]
  for k, structure, result in zip(kept, structures, results, strict=True):
    problems = result_problems(structure, result, settings, energies=energies)
    if result.failed:
      outcomes[k] = Outcome("failed", result.failure_reason, problems)
    else:
      outcomes[k] = Outcome("converged" if result.converged else "unconverged", None, problems)
  return outcomes  # type: ignore[return-value]


def result_problems(start: Structure, result, settings: dict, *, energies: bool) -> list[str]:
  """What is wrong with one relaxation result: a failure without a known reason, or an unfailed
  result with non-finite numbers, an exploded or collapsed cell, overlapping atoms, a
  convergence claim the forces and stress do not meet, or a stop before the step cap."""
  from crystal_search import relax
  from crystal_search.relax.config import make_config

  cfg = make_config(settings)
  if result.failed:
    bad = [] if result.failure_reason in relax.FAILURE_REASONS[1:] else ["unknown failure reason"]
    return bad + (["failed and converged"] if result.converged else [])
  final = result.final
  numbers = [final.lattice.matrix, final.frac_coords, result.forces, result.stress]
  if not all(np.all(np.isfinite(x)) for x in numbers):
    return ["unfailed result with non-finite lattice, positions, forces or stress"]
  if math.isinf(result.energy) or (energies and not math.isfinite(result.energy)):
    return [f"unfailed result with energy {result.energy}"]
  problems = []
  ratio = abs(np.linalg.det(final.lattice.matrix)) / abs(np.linalg.det(start.lattice.matrix))
  if not cfg.min_volume_ratio * (1 - 1e-4) <= ratio <= cfg.max_volume_ratio * (1 + 1e-4):
    problems.append(f"volume ratio {ratio:.3g} outside the bounds")
  m = final.lattice.matrix
  heights = abs(np.linalg.det(m)) / np.linalg.norm(np.cross(m[[1, 2, 0]], m[[2, 0, 1]]), axis=1)
  if heights.min() < cfg.min_cell_height * (1 - 1e-4):
    problems.append(f"cell height {heights.min():.3g} Å below min_cell_height")
  closest = _closest_distance(final)
  if closest < cfg.min_distance * (1 - 1e-3):
    problems.append(f"atoms {closest:.3g} Å apart")
  if result.converged:
    if result.max_force >= cfg.fmax or (cfg.relax_cell and result.max_stress >= cfg.smax):
      problems.append("converged with forces or stress above the thresholds")
  elif result.steps != cfg.max_steps:
    problems.append(f"neither failed nor converged at step {result.steps} < max_steps")
  return problems


def _closest_distance(structure: Structure) -> float:
  """Å, the closest two atoms or an atom and its own image."""
  from crystal_search.crystals import shortest_lattice_vector

  closest = shortest_lattice_vector(structure.lattice.matrix)
  if len(structure) > 1:
    d = structure.distance_matrix
    np.fill_diagonal(d, np.inf)
    closest = min(closest, float(d.min()))
  return closest


def tally(outcomes: list[Outcome]) -> dict:
  """Counts of outcomes: ``{status: n}``, refusals and failures by kind or reason, problems."""
  counts: dict = {"cases": len(outcomes), "status": {}, "refused": {}, "failed": {}}
  problems = []
  for o in outcomes:
    counts["status"][o.status] = counts["status"].get(o.status, 0) + 1
    if o.status in ("refused", "failed"):
      counts[o.status][o.reason] = counts[o.status].get(o.reason, 0) + 1
    problems += o.problems
  counts["problems"] = problems
  return counts
