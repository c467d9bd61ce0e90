"""The search pipeline: composition → random structures → batched relaxation → dedupe → rank → report.

Stages (each timed; wall seconds per stage go into the report):

1. per chunk of ``chunk_size`` structure indices, committed to disk when it finishes
   (:mod:`crystal_search.run_store`: ``--resume``, the ``STOP`` file, ``--shard`` and ``merge``):

   a. ``generate``: AIRSS-style random structures (:mod:`crystal_search.random_structures`);
   b. ``screen`` (or ``relax`` without a screening model): batched relaxation
      (:func:`crystal_search.relax.relax_structures`), by default L-BFGS on positions and cell;
      failed relaxations are kept with their reason and left out of the ranking;
   c. ``energy``: energy per atom (eV/atom) of every relaxed structure, from the energy model
      shipped with the package or from the force field when it gives energies;

2. ``dedupe``: identical results grouped with StructureMatcher, pre-binned by composition, space
   group and energy window (:mod:`crystal_search.dedupe`); the lowest-energy member represents a
   group;
3. ``polish`` (when screening): the lowest distinct candidates relaxed again by the accurate model;
4. ``rescore`` (optional): the top K re-relaxed and re-scored with the teacher (CHGNet);
5. ``report``: ``summary.json``, ``summary.md``, ``structures/rank_NNN.cif``, ``energy_volume.png``
   (:mod:`crystal_search.search_report`).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence

import ml_collections
import numpy as np
from pymatgen.core import Structure

from crystal_search.errors import InputError
from crystal_search.force_fields.registry import PRETRAINED_DIR, PRETRAINED_MODELS  # noqa: F401
from crystal_search.search_models import (  # noqa: F401
  apply_model_generator,
  load_force_field,
  load_run_force_fields,
  load_screen_force_field,
)

#: Free disk space a search needs before it starts (MB).
MIN_FREE_DISK_MB = 50
#: Files that mark a directory as holding a search run.
_RUN_MARKERS = ("summary.json", "summary.md", "structures")


#: Counters of :func:`crystal_search.relax.relax_structures` summed into a report's
#: ``totals["relax_work"]``: force evaluations of real structures, batch slots times steps (the
#: work paid for, padding included), jit compilations and batch compactions.
RELAX_WORK = ("structure_steps", "slot_steps", "compiles", "compactions")


def _relax_defaults() -> ml_collections.ConfigDict:
  from crystal_search.relax import get_relax_config

  return get_relax_config()


def get_search_config() -> ml_collections.ConfigDict:
  """Default search settings (every value can be overridden from the command line)."""
  c = ml_collections.ConfigDict()
  c.composition = "Li15Si4"
  c.num_structures = 500
  c.max_atoms = 38
  c.formula_units = ""  # comma list of allowed z (AIRSS NFORM), e.g. "2"; "": every z
  c.symmetric_fraction = 0.5  # share of random cells built in a space group (not P1)
  c.min_symmops = 2  # smallest point-group order of a symmetric cell
  c.max_symmops = 6  # largest point-group order of a symmetric cell (AIRSS SYMMOPS)
  c.primitive_cells = False  # max_atoms counts primitive cells of centred groups too
  # Random-cell volumes (Å^3 per atom, "Li=19.7,Ge=23.9") and per-pair minimum separations (Å,
  # "Li-Ge=2.37,..."): "" takes the Li–Si fit and 2.28 Å, a distilled model's generator.json
  # fills them (crystal_search.search_models.apply_model_generator).
  c.element_volumes = ""
  c.pair_min_separation = ""
  c.seed = 0
  c.optimizer = "lbfgs"  # relaxer update rule: "lbfgs", "fire" (ASE's FIRE) or "damped" (paper's)
  c.fmax = _relax_defaults().fmax  # eV/Å, convergence (of the polish when screening)
  # Screen, then polish: with the packaged models, the screening model relaxes every cell to
  # screen_fmax, then the accurate model polishes the lowest polish_top_k distinct candidates
  # within polish_window of the best to fmax.  "" relaxes every cell with the accurate model.
  # The tiny model screens: the most hits per CPU-hour (benchmarks/results/screen_choice.md).
  c.screen_model = "tiny"  # packaged model name or model directory; "": no screening
  c.screen_fmax = 0.1  # eV/Å (the paper's threshold)
  c.polish_top_k = 16
  c.polish_window = 0.1  # eV/atom above the best screened candidate
  c.smax = 1.0  # kBar
  c.max_steps = 600
  c.chunk_size = 256  # structures relaxed per call (what is kept on Ctrl-C)
  c.energy_window = 0.01  # eV/atom: structures further apart in energy are never compared
  c.symprec = 0.1  # Å, spglib tolerance for space groups in the report and binning
  c.rescore_top_k = 0
  c.write_trajectories = False
  return c


def generator_config(c: ml_collections.ConfigDict):
  """The :class:`~crystal_search.random_structures.RandomStructureConfig` of search config ``c``."""
  from crystal_search import random_structures

  return random_structures.config_from(c)


def validate_config(c: ml_collections.ConfigDict) -> None:
  """One-line :class:`InputError` for impossible values."""
  if int(c.num_structures) <= 0:
    raise InputError(f"num_structures must be positive, got {c.num_structures}")
  if float(c.fmax) <= 0:
    raise InputError(f"fmax must be positive (eV/Å), got {c.fmax}")
  if int(c.max_steps) <= 0:
    raise InputError(f"max_steps must be positive, got {c.max_steps}")
  from crystal_search.relax import OPTIMIZERS

  if c.optimizer not in OPTIMIZERS:
    raise InputError(f"optimizer must be {' or '.join(OPTIMIZERS)}, got {c.optimizer!r}")
  from crystal_search.random_structures import check_settings

  check_settings(generator_config(c))
  if float(c.screen_fmax) < float(c.fmax):
    raise InputError(
      f"screen_fmax={c.screen_fmax} eV/Å is below fmax={c.fmax}: the screening threshold must "
      "not be tighter than the polish's"
    )
  if int(c.polish_top_k) <= 0:
    raise InputError(f"polish_top_k must be positive, got {c.polish_top_k}")
  if not float(c.polish_window) > 0:
    raise InputError(f"polish_window must be positive (eV/atom), got {c.polish_window}")
  if int(c.rescore_top_k) < 0:
    raise InputError(f"rescore_top_k must be >= 0, got {c.rescore_top_k}")
  if float(c.energy_window) < 0:
    raise InputError(f"energy_window must be >= 0 eV/atom, got {c.energy_window}")


def prepare_output_dir(path: str, run: dict, *, overwrite: bool, resume: bool = False) -> None:
  """Make ``path`` ready for the run ``run`` (:func:`crystal_search.run_store.identity`): refuse
  a file, a directory that holds another run (unless ``overwrite``), a ``resume`` of a run with
  other settings, and too little free disk, each before anything there is changed."""
  from crystal_search import run_store

  if os.path.exists(path) and not os.path.isdir(path):
    raise InputError(f"{path}: exists and is not a directory")
  parent = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  while not os.path.isdir(parent):
    parent = os.path.dirname(parent)
  free_mb = shutil.disk_usage(parent).free / 2**20
  if free_mb < MIN_FREE_DISK_MB:
    raise InputError(f"{path}: only {free_mb:.0f} MB free disk, need {MIN_FREE_DISK_MB} MB")
  run_store.open_run(path, run, resume=resume, overwrite=overwrite, markers=_RUN_MARKERS)


@dataclasses.dataclass
class Candidate:
  """One relaxed structure of the search."""

  index: int  # the structure's index in the run's draw (random_structures.random_structure)
  structure: Structure
  energy_per_atom: float  # eV/atom
  converged: bool
  steps: int  # relaxation steps (screening and polish together)
  polished: bool = False  # relaxed again by the accurate model after screening


@dataclasses.dataclass
class SearchResult:
  """Everything the report is made of (also returned to Python callers)."""

  rows: list[dict]
  totals: dict
  candidates: list[Candidate]
  groups: list[list[int]]


@dataclasses.dataclass
class _Pipeline:
  """What the stages after screening need: force fields, energy function, settings."""

  config: ml_collections.ConfigDict
  force_field: object
  energy_fn: Callable[[Sequence[Structure]], np.ndarray] | None
  screen_force_field: object | None
  teacher: object | None
  output_dir: str
  progress: bool


def run_search(
  config: ml_collections.ConfigDict,
  *,
  force_field,
  output_dir: str,
  energy_fn: Callable[[Sequence[Structure]], np.ndarray] | None = None,
  teacher=None,
  screen_force_field=None,
  overwrite: bool = False,
  resume: bool = False,
  shard: str | None = None,
  sources: dict | None = None,
  progress: bool = True,
) -> SearchResult:
  """Run a search and write its report into ``output_dir``.

  Every chunk of ``config.chunk_size`` structures is generated, relaxed, scored and committed to
  ``output_dir/chunks/`` before the next one starts (:mod:`crystal_search.run_store`), so a killed
  run continues with ``resume`` and ``touch output_dir/STOP`` ends it after the current chunk.

  Args:
    config: see :func:`get_search_config`.
    force_field: any :class:`~crystal_search.force_fields.base.ForceField` used to relax (with
      ``screen_force_field``: to polish the screened candidates).
    output_dir: where the report goes (created; refused if it holds another run).
    energy_fn: structures → energies per atom (eV/atom) used for ranking; default: the
      energies the force field reports during relaxation.
    teacher: a force field for the optional re-relaxation of the top ``rescore_top_k``.
    screen_force_field: a cheap force field that relaxes every random cell to
      ``config.screen_fmax`` first; then the lowest ``polish_top_k`` distinct candidates within
      ``polish_window`` of the best are relaxed by ``force_field`` to ``config.fmax``
      (None: ``force_field`` relaxes every cell to ``config.fmax``).
    overwrite: replace a previous run in ``output_dir``.
    resume: continue the run in ``output_dir`` (the same settings), redoing only unfinished
      chunks; in an empty or new directory, start it.
    shard: ``"I/N"``: only the I-th of N disjoint parts of the run (``merge_runs`` joins them).
    sources: how the command line named the force fields (kept in ``run.json`` for ``merge``).
    progress: show progress bars.
  """
  from crystal_search import run_store

  composition = _check_inputs(config, force_field, screen_force_field)
  part = run_store.parse_shard(shard)
  names = _force_field_names(force_field, screen_force_field, sources)
  prepare_output_dir(
    output_dir, run_store.identity(config.to_dict(), names, part), overwrite=overwrite,
    resume=resume,
  )  # fmt: skip
  ranges = run_store.chunk_ranges(int(config.num_structures), int(config.chunk_size))
  todo = run_store.shard_chunks(len(ranges), part)
  pipe = _Pipeline(
    config, force_field, energy_fn, screen_force_field, teacher, output_dir, progress
  )  # fmt: skip
  finished = run_store.read_chunks(output_dir)  # those of an earlier run when resuming
  interrupted, stopped = _screen_chunks(pipe, composition, ranges, todo, finished)
  chunks = {k: finished[k] for k in todo if k in finished}
  state = {"interrupted": interrupted, "stopped": stopped, "shard": part, "total": len(todo)}
  return _finish(pipe, chunks, state)


def merge_runs(
  inputs: Sequence[str],
  *,
  force_field,
  output_dir: str,
  energy_fn: Callable[[Sequence[Structure]], np.ndarray] | None = None,
  teacher=None,
  screen_force_field=None,
  overwrite: bool = False,
  progress: bool = True,
) -> SearchResult:
  """Join the shards ``inputs`` (search directories of one run, ``shard="I/N"``) into the report
  the unsharded run writes: every chunk once, then dedupe, polish, rescore and rank as
  :func:`run_search` does.  The force fields must be the run's (``run.json`` names them)."""
  from crystal_search import run_store

  inputs = [str(p) for p in inputs]
  if not inputs:
    raise InputError("merge needs at least one search directory (--inputs)")
  if os.path.abspath(output_dir) in {os.path.abspath(p) for p in inputs}:
    raise InputError(f"{output_dir}: the output of a merge must not be one of its inputs")
  runs = [run_store.read_run(p) if os.path.isdir(p) else None for p in inputs]
  for path, run in zip(inputs, runs, strict=True):
    if run is None:
      raise InputError(f"{path}: not a search directory (no {run_store.RUN_FILE})")
    diff = run_store.difference(runs[0], run, shard=False)
    if diff:
      raise InputError(f"{path} is not a shard of the same run as {inputs[0]}: {diff}")
  config = get_search_config()
  config.update(runs[0]["settings"])
  whole = run_store.identity(config.to_dict(), runs[0]["force_fields"], None)
  names = _force_field_names(force_field, screen_force_field, runs[0]["force_fields"]["sources"])
  diff = run_store.difference({"force_fields": runs[0]["force_fields"]}, {"force_fields": names})
  if diff:
    raise InputError(f"the force fields given to merge are not the run's: {diff}")
  ranges = run_store.chunk_ranges(int(config.num_structures), int(config.chunk_size))
  chunks = run_store.collect_chunks(inputs, len(ranges))
  prepare_output_dir(output_dir, whole, overwrite=overwrite)
  for k in sorted(chunks):
    run_store.write_chunk(output_dir, chunks[k])
  pipe = _Pipeline(
    config, force_field, energy_fn, screen_force_field, teacher, output_dir, progress
  )  # fmt: skip
  state = {"interrupted": False, "stopped": False, "shard": None, "total": len(ranges)}
  return _finish(pipe, chunks, state)


def _force_field_names(force_field, screen_force_field, sources: dict | None) -> dict:
  """The force fields of a run as ``run.json`` records them."""
  return {
    "force_field": _name(force_field),
    "screen_force_field": _name(screen_force_field) if screen_force_field is not None else None,
    "sources": dict(sources or {}),
  }


def _finish(pipe: _Pipeline, chunks: dict[int, dict], state: dict) -> SearchResult:
  """Dedupe, polish, rescore and rank the finished ``chunks``; write and return the report."""
  from crystal_search import search_report

  config, screening = pipe.config, pipe.screen_force_field is not None
  candidates, counts, wall, work = _collect(chunks)
  groups = _timed(wall, "dedupe", _group, candidates, config)
  polish = {}
  if screening and groups and not state["interrupted"]:
    candidates, groups, polish = _timed(
      wall, "polish", _polish, candidates, groups, pipe.force_field, pipe.energy_fn, config,
      work, pipe.progress,
    )  # fmt: skip
  rescored = {}
  if pipe.teacher is not None and int(config.rescore_top_k) > 0 and groups:
    rescored = _timed(
      wall, "rescore", _rescore, candidates, groups, pipe.teacher, config, pipe.progress
    )  # fmt: skip
  rows = _timed(
    wall, "report", search_report.rows, candidates, groups, rescored, config, pipe.output_dir
  )  # fmt: skip
  totals = _totals(pipe, counts, state, wall, work, len(groups))
  if screening:
    totals.update(screen_force_field=_name(pipe.screen_force_field), **polish)
  result = SearchResult(rows=rows, totals=totals, candidates=candidates, groups=groups)
  search_report.write_report(result, pipe.output_dir)
  return result


def _collect(chunks: dict[int, dict]):
  """``(candidates, counts, wall, work)`` of the finished ``chunks``, in structure order: the
  relaxations that did not fail, the report's counts, and the summed stage wall times (s) and
  relaxation work.  Each chunk's entries are dropped once read (memory: only the structures
  stay)."""
  from crystal_search import run_store

  candidates, failures = [], Counter()
  counts = dict.fromkeys(("generated", "generation_failed", "relaxed", "converged", "failed"), 0)
  wall: dict[str, float] = {}
  work = dict.fromkeys(RELAX_WORK, 0)
  for k in sorted(chunks):
    chunk = chunks[k]
    entries = chunk.pop("results")
    not_made = len(chunk["generation_failed"])
    counts["generated"] += chunk["indices"][1] - chunk["indices"][0] - not_made
    counts["generation_failed"] += not_made
    counts["relaxed"] += len(entries)
    for e in entries:
      counts["converged"] += bool(e["converged"] and not e["failed"])
      counts["failed"] += bool(e["failed"])
      if e["failed"]:
        failures[e["failure_reason"] or "unknown"] += 1
        continue
      structure = run_store.decode_structure(e["structure"])
      energy, converged = float(e["energy_per_atom"]), bool(e["converged"])
      candidates.append(Candidate(int(e["index"]), structure, energy, converged, int(e["steps"])))
    for key, value in chunk["wall_time_s"].items():
      wall[key] = wall.get(key, 0.0) + value
    for key in RELAX_WORK:
      work[key] += int(chunk["relax_work"][key])
  counts["failure_reasons"] = dict(failures)
  counts["chunks"] = len(chunks)
  return candidates, counts, wall, work


def _totals(pipe, counts, state, wall, work, unique: int) -> dict:
  """The report's ``totals``: counts, wall times, work, settings."""
  return {
    **{k: v for k, v in counts.items() if k != "chunks"},
    "unique": unique,
    "interrupted": state["interrupted"],
    "stopped": state["stopped"],
    "shard": list(state["shard"]) if state["shard"] else None,
    "chunks": {"done": counts["chunks"], "total": state["total"]},
    "wall_time_s": dict(wall, total=sum(wall.values())),
    "relax_work": work,
    "force_field": _name(pipe.force_field),
    "composition": pipe.config.composition,
    "seed": int(pipe.config.seed),
    # Every setting of the run (generator, relaxation, ranking), so a report says how it was made.
    "settings": pipe.config.to_dict(),
  }


def _name(force_field) -> str:
  return getattr(force_field, "name", type(force_field).__name__)


def _timed(wall: dict, stage: str, fn: Callable, *args):
  """``fn(*args)``, its wall time (s) added to ``wall[stage]``."""
  t0 = time.perf_counter()
  out = fn(*args)
  wall[stage] = wall.get(stage, 0.0) + time.perf_counter() - t0
  return out


def _check_inputs(config, force_field, screen_force_field):
  """The parsed composition; one-line errors for settings, composition and cell sizes that
  cannot work, before anything is written."""
  from crystal_search import compositions, random_structures

  validate_config(config)
  elements = force_field.elements
  if screen_force_field is not None:
    elements = sorted(set(elements) & set(screen_force_field.elements))
  composition = compositions.parse_composition(config.composition, allowed_elements=elements)
  # A cell size the composition cannot take, or symmetry no allowed cell size can have.
  random_structures.check_composition(composition, generator_config(config))
  return composition


def _screen_chunks(pipe: _Pipeline, composition, ranges, todo: list[int], finished: dict):
  """Generate, relax and score every chunk of ``todo`` not in ``finished`` (the chunks on disk,
  by number), committing each to disk and adding it to ``finished`` as it finishes;
  ``(interrupted, stopped)``: Ctrl-C or the STOP file ended it early."""
  from crystal_search import run_store

  made_any = any(c["results"] for c in finished.values())
  try:
    for k in todo:
      if k in finished:
        continue
      if run_store.stop_requested(pipe.output_dir):
        return False, True
      chunk = _run_chunk(pipe, composition, k, ranges[k], strict=not made_any)
      run_store.write_chunk(pipe.output_dir, chunk)
      finished[k] = chunk  # what was written: JSON keeps every number exactly
      made_any = made_any or bool(chunk["results"])
  except KeyboardInterrupt:
    return True, False
  return False, False


def _run_chunk(pipe: _Pipeline, composition, number: int, indices: range, *, strict: bool):
  """Chunk ``number``: structures ``indices`` generated, relaxed (screened) and scored.  With
  ``strict``, a chunk of which no structure could be generated is the settings' fault (one-line
  error); otherwise its structures count as not made."""
  from crystal_search import random_structures, run_store

  config = pipe.config
  screening = pipe.screen_force_field is not None
  wall: dict[str, float] = {}
  t0 = time.perf_counter()
  try:
    made = random_structures.generate(
      composition, len(indices), seed=int(config.seed), config=generator_config(config),
      indices=indices, progress=pipe.progress,
    )  # fmt: skip
  except InputError:
    if strict:
      raise
    made = random_structures.GenerationResult([], [], list(indices), [], 0)
  wall["generate"] = time.perf_counter() - t0
  work = dict.fromkeys(RELAX_WORK, 0)
  fmax = float(config.screen_fmax if screening else config.fmax)
  first_ff = pipe.screen_force_field if screening else pipe.force_field
  results = _timed(
    wall, "screen" if screening else "relax", _relax_list, list(made.structures), first_ff,
    config, fmax, work, pipe.progress,
  )  # fmt: skip
  entries = _timed(wall, "energy", _score, made.indices, results, pipe.energy_fn)
  if config.write_trajectories:
    _write_trajectories(pipe.output_dir, made.indices, results)
  return run_store.encode_chunk(
    number, indices, made.failed, entries, wall_time_s=wall, relax_work=work
  )  # fmt: skip


def _relax_list(structures, force_field, config, fmax: float, work: dict, progress: bool):
  """Relax ``structures`` to ``fmax`` (eV/Å); the relaxer's counters added to ``work``."""
  from crystal_search import relax

  if not structures:
    return []
  stats: dict = {}
  results = relax.relax_structures(
    structures,
    force_field,
    trajectory_every=1 if config.write_trajectories else 0,
    progress=progress,
    stats=stats,
    **relax_kwargs(config, fmax),
  )
  for key in RELAX_WORK:
    work[key] += int(stats[key])
  return results


def relax_kwargs(config, fmax: float) -> dict:
  """The relaxer's keywords of search config ``config`` with threshold ``fmax`` (eV/Å)."""
  return dict(
    optimizer=str(config.optimizer),
    fmax=fmax,
    smax=float(config.smax),
    max_steps=int(config.max_steps),
  )


def _score(indices, results, energy_fn) -> list[dict]:
  """One chunk entry per relaxation (:func:`crystal_search.run_store.encode_chunk`) with its
  energy per atom (eV/atom); a structure whose energy is not finite fails (``"energy"``)."""
  from crystal_search import run_store

  ok = [k for k, r in enumerate(results) if not r.failed]
  e_atom = _energies([results[k].final for k in ok], energy_fn, [results[k] for k in ok])
  energy = dict(zip(ok, e_atom.tolist(), strict=True))
  entries = []
  for k, (i, r) in enumerate(zip(indices, results, strict=True)):
    e = energy.get(k, float("nan"))
    failed, reason = bool(r.failed), r.failure_reason
    if not failed and not np.isfinite(e):
      failed, reason = True, "energy"
    entries.append({
      "index": int(i),
      "converged": bool(r.converged) and not failed,
      "failed": failed,
      "failure_reason": reason if failed else None,
      "steps": int(r.steps),
      "energy_per_atom": e if np.isfinite(e) else None,
      "structure": None if failed else run_store.encode_structure(r.final),
    })  # fmt: skip
  return entries


def _write_trajectories(output_dir: str, indices, results) -> None:
  """``trajectories/NNNNNN.extxyz`` of each relaxation (by structure index), streamed per chunk."""
  from crystal_search.relax.files import write_trajectory

  folder = os.path.join(output_dir, "trajectories")
  os.makedirs(folder, exist_ok=True)
  for i, r in zip(indices, results, strict=True):
    if r.trajectory is not None:
      write_trajectory(r, os.path.join(folder, f"{int(i):06d}.extxyz"))


def _energies(structures, energy_fn, results) -> np.ndarray:
  """eV/atom of ``structures`` from ``energy_fn``, or from the relaxer's ``results``; a force
  field without energies and no ``energy_fn`` is a one-line error."""
  if energy_fn is not None and structures:
    e_atom = np.asarray(energy_fn(structures), np.float64)
  else:
    e_atom = np.asarray([r.energy / len(r.final) for r in results], np.float64)
  if energy_fn is None and structures and not np.any(np.isfinite(e_atom)):
    raise InputError("the force field gives no energies to rank with; pass an energy model")
  return e_atom


def _group(candidates, config) -> list[list[int]]:
  """Groups of identical candidates (indices), each lowest energy first, ordered by energy."""
  from crystal_search import dedupe

  groups = dedupe.group_structures(
    [c.structure for c in candidates],
    [c.energy_per_atom for c in candidates],
    energy_window=float(config.energy_window),
    symprec=float(config.symprec),
  )
  return sorted(groups, key=lambda g: candidates[g[0]].energy_per_atom)


def _polish(candidates, groups, force_field, energy_fn, config, work, progress):
  """Relax the lowest ``polish_top_k`` distinct screened candidates within ``polish_window``
  eV/atom of the best with the accurate ``force_field`` to ``config.fmax``; polished
  representatives replace the screened ones (a polish that fails keeps the screened structure,
  marked unpolished) and groups that polish into the same structure merge.

  Returns ``(candidates, groups, counts)`` with ``counts`` for the report's totals.
  """
  best = candidates[groups[0][0]].energy_per_atom
  chosen = [
    g[0]
    for g in groups[: int(config.polish_top_k)]
    if candidates[g[0]].energy_per_atom - best <= float(config.polish_window)
  ]
  results = _relax_list(
    [candidates[i].structure for i in chosen], force_field, config, float(config.fmax), work,
    progress,
  )  # fmt: skip
  done = [(i, r) for i, r in zip(chosen, results, strict=True) if not r.failed]
  energies = _energies([r.final for _, r in done], energy_fn, [r for _, r in done])
  candidates = list(candidates)
  failed = len(chosen) - len(done)
  for (i, r), e in zip(done, energies, strict=True):
    if not np.isfinite(e):  # no energy to rank the polished structure by: keep the screened one
      failed += 1
      continue
    old = candidates[i]
    candidates[i] = Candidate(old.index, r.final, float(e), bool(r.converged), old.steps + r.steps)
    candidates[i].polished = True
  reps = [g[0] for g in groups]
  merged = _group([candidates[i] for i in reps], config)
  groups = [sorted(sum((groups[j] for j in m), []), key=lambda i: i != reps[m[0]]) for m in merged]
  counts = {
    "polished": len(chosen),
    "polished_converged": int(sum(c.polished and c.converged for c in candidates)),
    "polish_failed": failed,
  }
  return candidates, groups, counts


def _rescore(candidates, groups, teacher, config, progress) -> dict[int, float]:
  """Teacher energies (eV/atom) of the top ``rescore_top_k`` representatives, re-relaxed."""
  from crystal_search import relax

  top = [candidates[g[0]] for g in groups[: int(config.rescore_top_k)]]
  again = relax.relax_structures(
    [c.structure for c in top], teacher, progress=progress, **relax_kwargs(config, config.fmax)
  )
  return {
    g[0]: r.energy / len(r.final) for g, r in zip(groups, again, strict=False) if not r.failed
  }
