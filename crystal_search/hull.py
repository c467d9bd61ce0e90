"""The convex hull of a binary system (Li–Si): which compositions a force field calls stable.

Energies are referred to the elemental references shipped in ``data/lisi_phases/`` (bcc Li,
``Li_MP_symmetrized.cif``; diamond Si, ``Si_MP_symmetrized.cif``), relaxed with the force field
and settings of the search and scored with the energy function the search ranks with.  For a
structure of atomic fractions ``c_el`` and energy ``E`` (eV/atom) the formation energy is
``E - sum_el c_el mu_el`` (eV/atom, ``mu_el`` the reference's energy per atom); pymatgen's
:class:`~pymatgen.analysis.phase_diagram.PhaseDiagram` builds the lower convex hull of all
structures and references and gives each structure's energy above the hull (eV/atom).  A
searched elemental structure below its reference moves the hull's end point (formation energies
stay relative to the references).

Inputs are finished search directories (``summary.json``, see
:func:`crystal_search.search_report.write_report`) of one chemical system and one force field;
their structures are deduplicated across runs (:func:`crystal_search.dedupe.group_structures`,
the lowest energy kept).  The report (``hull.json``, ``hull.md``, ``hull.png``, ``stable/``) is
:mod:`crystal_search.hull_report`'s (with :func:`~crystal_search.hull_report.hull_from_runs`,
the hull of finished searches); :mod:`crystal_search.multi_search` runs one search per
composition and builds their hull.  Units: energies eV/atom, spglib tolerances Å.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Structure

from crystal_search import metrics
from crystal_search.errors import InputError

__all__ = [
  "REFERENCE_FILES",
  "STABLE_SYMPREC",
  "SYMPRECS",
  "Entry",
  "Hull",
  "Reference",
  "SearchRuns",
  "build_hull",
  "check_elements",
  "reference_structure",
  "chemical_system",
  "known_phases_hull",
  "load_runs",
  "reference_energies",
]

#: Elemental reference structures (files in :data:`crystal_search.metrics.REFERENCE_PHASES_DIR`).
REFERENCE_FILES = {"Li": "Li_MP_symmetrized.cif", "Si": "Si_MP_symmetrized.cif"}
#: spglib tolerances (Å) of the two space groups reported for each structure.
SYMPRECS = (0.1, 0.01)
#: spglib tolerance (Å) of the symmetrized CIFs in ``stable/``.
STABLE_SYMPREC = 0.1


@dataclasses.dataclass
class Reference:
  """A relaxed elemental reference: ``energy_per_atom`` in eV/atom."""

  element: str
  structure: Structure
  energy_per_atom: float
  converged: bool = True
  steps: int = 0


@dataclasses.dataclass
class Entry:
  """A structure on the hull's diagram: ``energy_per_atom`` in eV/atom; ``source`` the search
  directory (or a label such as ``known phases``), ``rank`` its row there, ``name`` a label."""

  structure: Structure
  energy_per_atom: float
  source: str
  rank: int | None = None
  name: str = ""


@dataclasses.dataclass
class SearchRuns:
  """Finished searches of one chemical system and force field (:func:`load_runs`)."""

  entries: list[Entry]
  elements: tuple[str, ...]
  force_field: str
  settings: dict


@dataclasses.dataclass
class Hull:
  """The hull: ``rows`` (references first, then entries; see :func:`build_hull`) and the
  structures they describe, ``x_element`` the element whose atomic fraction is ``x``."""

  rows: list[dict]
  structures: list[Structure]
  references: dict[str, Reference]
  x_element: str
  force_field: str = ""

  @property
  def stable(self) -> list[str]:
    """Formulas of the phases on the hull, by increasing ``x``."""
    return [r["formula"] for r in sorted(self.rows, key=lambda r: r["x"]) if r["stable"]]


def _relax_settings(settings: dict | None) -> ml_collections.ConfigDict:
  from crystal_search import search

  config = search.get_search_config()
  for key, value in (settings or {}).items():
    if key in ("optimizer", "fmax", "smax", "max_steps"):
      config[key] = value
  return config


def _relax(structures, force_field, energy_fn, settings, progress):
  """``(results, energies eV/atom)`` of ``structures`` relaxed as the search relaxes (NaN energy
  for a failed relaxation)."""
  from crystal_search import relax, search

  config = _relax_settings(settings)
  kwargs = search.relax_kwargs(config, float(config.fmax))
  results = relax.relax_structures(structures, force_field, progress=progress, **kwargs)
  ok = [k for k, r in enumerate(results) if not r.failed]
  energies = np.full(len(results), np.nan)
  if ok and energy_fn is not None:
    energies[ok] = np.asarray(energy_fn([results[k].final for k in ok]), np.float64)
  elif ok:
    energies[ok] = [results[k].energy / len(results[k].final) for k in ok]
  return results, energies


def reference_energies(
  elements: Sequence[str],
  force_field,
  *,
  energy_fn: Callable[[Sequence[Structure]], np.ndarray] | None = None,
  settings: dict | None = None,
  progress: bool = False,
) -> dict[str, Reference]:
  """The elemental references of ``elements`` relaxed by ``force_field``, energies in eV/atom.

  Args:
    elements: element symbols, each with a file in :data:`REFERENCE_FILES`.
    force_field: relaxes the references (the search's force field, which polishes).
    energy_fn: structures -> eV/atom (the search's ranking); None: the relaxer's energies.
    settings: search settings (``summary.json``'s ``totals.settings``) whose ``optimizer``,
      ``fmax`` (eV/Å), ``smax`` (kBar) and ``max_steps`` relax the references; None: defaults.
    progress: progress bar.

  Raises:
    InputError: an element without reference or force-field parameters, or a reference whose
      relaxation fails or has no finite energy.
  """
  check_elements(elements, force_field)
  structures = [reference_structure(el) for el in elements]
  results, energies = _relax(structures, force_field, energy_fn, settings, progress)
  refs = {}
  for el, r, e in zip(elements, results, energies, strict=True):
    if r.failed or not np.isfinite(e):
      why = r.failure_reason or "no finite energy"
      source = REFERENCE_FILES.get(el, "ase.build.bulk")
      raise InputError(f"reference {el} ({source}) failed to relax: {why}")
    refs[el] = Reference(el, r.final, float(e), bool(r.converged), int(r.steps))
  return refs


def reference_structure(element: str) -> Structure:
  """The elemental reference of ``element``: the bundled Materials Project cell for Li and Si
  (:data:`REFERENCE_FILES`), otherwise ASE's reference crystal (``ase.build.bulk``: diamond Ge,
  bcc Na, ...); one-line :class:`InputError` for an element ASE has no crystal for."""
  if element in REFERENCE_FILES:
    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      path = os.path.join(metrics.REFERENCE_PHASES_DIR, REFERENCE_FILES[element])
      return CifParser(path).parse_structures(primitive=False)[0]
  from ase.build import bulk
  from ase.data import atomic_numbers, reference_states
  from pymatgen.io.ase import AseAtomsAdaptor

  number = atomic_numbers.get(element)
  state = reference_states[number] if number is not None else None
  try:
    if not state or state.get("symmetry") in ("atom", "diatom"):
      raise ValueError("not a crystal")
    return AseAtomsAdaptor.get_structure(bulk(element))
  except (ValueError, KeyError, NotImplementedError, RuntimeError):
    raise InputError(
      f"element {element}: no reference structure (ASE has no crystal for it)"
    ) from None


def check_elements(elements: Sequence[str], force_field) -> None:
  """One-line :class:`InputError` for an element without a reference structure or without
  parameters in ``force_field``."""
  supported = getattr(force_field, "elements", None)
  name = getattr(force_field, "name", "the force field")
  for el in elements:
    reference_structure(el)  # one-line error when there is none
    if supported is not None and el not in supported:
      raise InputError(f"element {el}: {name} has no parameters for it")


def chemical_system(composition: str) -> tuple[str, ...]:
  """The sorted element symbols of a formula (``'Li15Si4'`` -> ``('Li', 'Si')``)."""
  try:
    return tuple(sorted(el.symbol for el in Composition(composition).elements))
  except Exception as e:  # noqa: BLE001 - pymatgen raises several types on bad formulas
    raise InputError(f"composition {composition!r}: cannot parse ({e})") from None


def load_runs(run_dirs: Sequence[str]) -> SearchRuns:
  """The structures of finished searches (each row's CIF and ``energy_per_atom``, eV/atom).

  Raises:
    InputError: no runs, a directory without ``summary.json`` or with a missing CIF, runs of
      different chemical systems or force fields mixed, or fewer than two elements in all.
  """
  if not run_dirs:
    raise InputError("no search runs given (--inputs=DIR,DIR,...)")
  runs = []
  for d in run_dirs:
    path = os.path.join(d, "summary.json")
    if not os.path.isfile(path):
      raise InputError(f"{d}: no summary.json there (not a finished search run)")
    try:
      with open(path) as f:
        summary = json.load(f)
      totals, rows = summary["totals"], summary["structures"]
      runs.append((d, totals, rows, chemical_system(totals["composition"])))
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise InputError(f"{path}: cannot read a search summary ({e!r})") from None
  first, widest = runs[0], max(runs, key=lambda r: len(r[3]))
  entries = []
  for d, totals, rows, system in runs:
    if totals.get("force_field") != first[1].get("force_field"):
      raise InputError(
        f"{d}: relaxed with {totals.get('force_field')!r}, {first[0]} with "
        f"{first[1].get('force_field')!r}; a hull takes runs of one force field"
      )
    if not set(system) <= set(widest[3]):
      raise InputError(
        f"{d}: chemical system {'-'.join(system)} differs from {widest[0]}'s "
        f"{'-'.join(widest[3])}; a hull takes runs of one chemical system"
      )
    for row in rows:
      cif = os.path.join(d, row["cif"])
      if not os.path.isfile(cif):
        raise InputError(f"{cif}: missing (listed in {d}/summary.json)")
      s = Structure.from_file(cif)
      entries.append(Entry(s, float(row["energy_per_atom"]), d, int(row["rank"])))
  if len(widest[3]) < 2:
    raise InputError(f"runs cover only {widest[3][0]}; a hull needs two elements")
  settings = first[1].get("settings", {})
  return SearchRuns(entries, widest[3], str(first[1].get("force_field")), settings)


def _unique(entries: Sequence[Entry]) -> list[Entry]:
  """One entry per distinct structure (the lowest in energy), in input order."""
  from crystal_search import dedupe

  if len(entries) < 2:
    return list(entries)
  groups = dedupe.group_structures(
    [e.structure for e in entries], [e.energy_per_atom for e in entries]
  )
  return [entries[k] for k in sorted(g[0] for g in groups)]


def _space_groups(structure: Structure) -> dict[str, str]:
  from crystal_search.search_report import space_group

  return {str(p): space_group(structure, p) for p in SYMPRECS}


def build_hull(
  entries: Sequence[Entry], references: dict[str, Reference], *, force_field: str = ""
) -> Hull:
  """Formation energies, the lower convex hull and energies above it (eV/atom).

  ``entries`` are deduplicated first (the lowest-energy copy kept).  Each row: ``source``,
  ``rank``, ``name``, ``formula``, ``formula_cell``, ``x`` (atomic fraction of ``x_element``),
  ``energy_per_atom``, ``formation_energy_per_atom``, ``e_above_hull`` (all eV/atom),
  ``stable``, ``decomposes_to`` (formulas), ``space_group`` (at each of :data:`SYMPRECS` Å,
  keyed by the tolerance) and ``known_phase`` (:func:`crystal_search.metrics.known_phase`).

  Raises:
    InputError: not two references, or an entry with an element no reference covers.
  """
  elements = sorted(references)
  if len(elements) != 2:
    raise InputError(f"a hull needs two elemental references, got {', '.join(elements)}")
  for e in entries:
    extra = sorted({sp.symbol for sp in e.structure.species} - set(elements))
    if extra:
      raise InputError(f"{e.source}: element {extra[0]} has no reference in this hull")
  items = [
    Entry(r.structure, r.energy_per_atom, "reference", None, r.element) for r in references.values()
  ]
  items += _unique(entries)
  pd_entries = [
    PDEntry(e.structure.composition, e.energy_per_atom * len(e.structure)) for e in items
  ]
  diagram = PhaseDiagram(pd_entries)
  stable = set(diagram.stable_entries)
  known = metrics.load_reference_phases()
  rows = []
  for item, pd_entry in zip(items, pd_entries, strict=True):
    comp = item.structure.composition
    mu = sum(comp.get_atomic_fraction(el) * references[el].energy_per_atom for el in elements)
    decomposition, e_hull = diagram.get_decomp_and_e_above_hull(pd_entry, allow_negative=True)
    rows.append(
      {
        "source": item.source,
        "rank": item.rank,
        "name": item.name,
        "formula": comp.reduced_formula,
        "formula_cell": comp.formula.replace(" ", ""),
        "x": comp.get_atomic_fraction(elements[0]),
        "energy_per_atom": item.energy_per_atom,
        "formation_energy_per_atom": item.energy_per_atom - mu,
        "e_above_hull": max(float(e_hull), 0.0),
        "stable": pd_entry in stable,
        "decomposes_to": sorted({d.composition.reduced_formula for d in decomposition}),
        "space_group": _space_groups(item.structure),
        "known_phase": metrics.known_phase(item.structure, known),
      }
    )
  structures = [e.structure for e in items]
  return Hull(rows, structures, dict(references), elements[0], force_field)


def known_phases_hull(
  force_field,
  *,
  energy_fn: Callable[[Sequence[Structure]], np.ndarray] | None = None,
  settings: dict | None = None,
  progress: bool = False,
) -> tuple[Hull, list[str]]:
  """The hull of every bundled Li–Si phase (primitive cells) relaxed by ``force_field``.

  Returns ``(hull, failed)``: rows named after the phases (``'LiSi (mp-795)'``), and the phases
  whose relaxation failed (left out of the hull).
  """
  phases = {
    k: s for k, s in metrics.load_reference_phases().items() if len(s.composition.elements) > 1
  }
  refs = reference_energies(
    ("Li", "Si"), force_field, energy_fn=energy_fn, settings=settings, progress=progress
  )
  cells = [s.get_primitive_structure() for s in phases.values()]
  results, energies = _relax(cells, force_field, energy_fn, settings, progress)
  entries, failed = [], []
  for name, r, e in zip(phases, results, energies, strict=True):
    if r.failed or not np.isfinite(e):
      failed.append(name)
    else:
      entries.append(Entry(r.final, float(e), "known phases", None, name))
  name = getattr(force_field, "name", type(force_field).__name__)
  return build_hull(entries, refs, force_field=name), failed
