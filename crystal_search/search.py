"""The search pipeline: composition → random structures → batched relaxation → dedupe → rank → report.

Stages (each timed; wall seconds per stage go into the report):

1. ``generate``: AIRSS-style random structures (:mod:`crystal_search.random_structures`);
2. ``relax``: batched relaxation with a force field (:func:`crystal_search.relax.relax_structures`),
   in chunks so that an interrupted run keeps what finished; by default with FIRE on positions and
   cell (``optimizer="fire"``: fewer steps and lower minima than the paper's steepest descent on
   the search's random cells, ``benchmarks/results/relax_optimizers.md``), ``"damped"`` for the
   paper's VASP IBRION=3 rule;
3. failed relaxations are dropped and counted by reason;
4. ``energy``: energy per atom (eV/atom) of every relaxed structure, from the energy model shipped
   with the package or from the force field when it gives energies;
5. ``dedupe``: identical results grouped with StructureMatcher, pre-binned by composition, space
   group and energy window (:mod:`crystal_search.dedupe`); the lowest-energy member represents a group;
6. ``rescore`` (optional): the top K re-relaxed and re-scored with the teacher (CHGNet);
7. ``report``: ``summary.json``, ``summary.md``, ``structures/rank_NNN.cif``, ``energy_volume.png``.
"""

from __future__ import annotations

import dataclasses
import json
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


def prepare_output_dir(path: str, *, overwrite: bool) -> None:
  """Create ``path``; refuse one that holds another run unless ``overwrite``; check free disk."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise InputError(f"{path}: exists and is not a directory")
  if os.path.isdir(path):
    held = [m for m in _RUN_MARKERS if os.path.exists(os.path.join(path, m))]
    if held and not overwrite:
      raise InputError(f"{path}: holds another run ({held[0]}); pass --overwrite to replace it")
    if held:
      for m in held:
        p = os.path.join(path, m)
        shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
  os.makedirs(path, exist_ok=True)
  free_mb = shutil.disk_usage(path).free / 2**20
  if free_mb < MIN_FREE_DISK_MB:
    raise InputError(f"{path}: only {free_mb:.0f} MB free disk, need {MIN_FREE_DISK_MB} MB")


@dataclasses.dataclass
class Candidate:
  """One relaxed structure of the search."""

  index: int  # position in the generated list
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


def _space_group(structure: Structure, symprec: float) -> str:
  from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

  try:
    sga = SpacegroupAnalyzer(structure, symprec=symprec)
    return f"{sga.get_space_group_symbol()} ({sga.get_space_group_number()})"
  except Exception:  # noqa: BLE001 - spglib fails on some distorted cells
    return "P1 (1)"


def run_search(
  config: ml_collections.ConfigDict,
  *,
  force_field,
  output_dir: str,
  energy_fn: Callable[[Sequence[Structure]], np.ndarray] | None = None,
  teacher=None,
  screen_force_field=None,
  overwrite: bool = False,
  progress: bool = True,
) -> SearchResult:
  """Run a search and write its report into ``output_dir``.

  Args:
    config: see :func:`get_search_config`.
    force_field: any :class:`~crystal_search.force_fields.base.ForceField` used to relax (with
      ``screen_force_field``: to polish the screened candidates).
    output_dir: where the report goes (created; refused if it holds another run).
    energy_fn: structures → energies per atom (eV/atom) used for ranking; default: the
      energies the force field reports during relaxation (must then be finite).
    teacher: a force field for the optional re-relaxation of the top ``rescore_top_k``.
    screen_force_field: a cheap force field that relaxes every random cell to
      ``config.screen_fmax`` first; then the lowest ``polish_top_k`` distinct candidates within
      ``polish_window`` of the best are relaxed by ``force_field`` to ``config.fmax``
      (None: ``force_field`` relaxes every cell to ``config.fmax``).
    overwrite: replace a previous run in ``output_dir``.
    progress: show progress bars.
  """
  composition = _check_inputs(config, force_field, screen_force_field)
  prepare_output_dir(output_dir, overwrite=overwrite)
  wall: dict[str, float] = {}
  work = dict.fromkeys(RELAX_WORK, 0)
  screening = screen_force_field is not None

  structures = _timed(wall, "generate", _generate, composition, config, progress)
  first_ff = screen_force_field if screening else force_field
  fmax = float(config.screen_fmax if screening else config.fmax)
  results, interrupted = _timed(
    wall, "screen" if screening else "relax", _relax_all, structures, first_ff, config, fmax,
    work, progress,
  )  # fmt: skip
  failures = Counter(r.failure_reason or "unknown" for r in results if r.failed)
  candidates = _timed(wall, "energy", _candidates, results, energy_fn)
  groups = _timed(wall, "dedupe", _group, candidates, config)
  polish = {}
  if screening and groups and not interrupted:
    candidates, groups, polish = _timed(
      wall, "polish", _polish, candidates, groups, force_field, energy_fn, config, work, progress
    )
  rescored = {}
  if teacher is not None and int(config.rescore_top_k) > 0 and groups:
    rescored = _timed(wall, "rescore", _rescore, candidates, groups, teacher, config, progress)
  rows = _timed(wall, "report", _rows, candidates, groups, rescored, config, output_dir)
  totals = {
    "generated": len(structures),
    "relaxed": len(results),
    "converged": int(sum(r.converged and not r.failed for r in results)),
    "failed": int(sum(r.failed for r in results)),
    "failure_reasons": dict(failures),
    "unique": len(groups),
    "interrupted": interrupted,
    "wall_time_s": dict(wall, total=sum(wall.values())),
    "relax_work": work,
    "force_field": _name(force_field),
    "composition": config.composition,
    "seed": int(config.seed),
    # Every setting of the run (generator, relaxation, ranking), so a report says how it was made.
    "settings": config.to_dict(),
  }
  if screening:
    totals.update(screen_force_field=_name(screen_force_field), **polish)
  result = SearchResult(rows=rows, totals=totals, candidates=candidates, groups=groups)
  write_report(result, output_dir)
  return result


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


def _generate(composition, config, progress: bool) -> list[Structure]:
  from crystal_search import random_structures

  return random_structures.generate(
    composition,
    int(config.num_structures),
    seed=int(config.seed),
    config=generator_config(config),
    progress=progress,
  )


def _relax_all(structures, force_field, config, fmax: float, work: dict, progress: bool):
  """``(results, interrupted)``: every structure relaxed to ``fmax`` (eV/Å) in chunks of
  ``config.chunk_size``, the relaxer's counters added to ``work``; Ctrl-C keeps what finished."""
  from crystal_search import relax

  results: list = []
  try:
    for start in range(0, len(structures), int(config.chunk_size)):
      stats: dict = {}
      results.extend(
        relax.relax_structures(
          structures[start : start + int(config.chunk_size)],
          force_field,
          trajectory_every=1 if config.write_trajectories else 0,
          progress=progress,
          stats=stats,
          **_relax_kwargs(config, fmax),
        )
      )
      for key in RELAX_WORK:
        work[key] += int(stats[key])
  except KeyboardInterrupt:
    return results, True
  return results, False


def _relax_kwargs(config, fmax: float) -> dict:
  return dict(
    optimizer=str(config.optimizer),
    fmax=fmax,
    smax=float(config.smax),
    max_steps=int(config.max_steps),
  )


def _energies(structures, energy_fn, results) -> np.ndarray:
  """eV/atom of ``structures`` from ``energy_fn``, or from the relaxer's ``results``."""
  if energy_fn is not None and structures:
    e_atom = np.asarray(energy_fn(structures), np.float64)
  else:
    e_atom = np.asarray([r.energy / len(r.final) for r in results], np.float64)
  if structures and not np.all(np.isfinite(e_atom)):
    bad = int(np.sum(~np.isfinite(e_atom)))
    raise InputError(f"{bad} relaxed structures have no finite energy; pass an energy model")
  return e_atom


def _candidates(results, energy_fn) -> list[Candidate]:
  """The relaxations that did not fail, with their energies per atom; failed ones are dropped."""
  ok = [(i, r) for i, r in enumerate(results) if not r.failed]
  e_atom = _energies([r.final for _, r in ok], energy_fn, [r for _, r in ok])
  return [
    Candidate(i, r.final, float(e), bool(r.converged), int(r.steps))
    for (i, r), e in zip(ok, e_atom, strict=True)
  ]


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
  results, _ = _relax_all(
    [candidates[i].structure for i in chosen], force_field, config, float(config.fmax), work,
    progress,
  )  # fmt: skip
  done = [(i, r) for i, r in zip(chosen, results, strict=True) if not r.failed]
  energies = _energies([r.final for _, r in done], energy_fn, [r for _, r in done])
  candidates = list(candidates)
  for (i, r), e in zip(done, energies, strict=True):
    old = candidates[i]
    candidates[i] = Candidate(old.index, r.final, float(e), bool(r.converged), old.steps + r.steps)
    candidates[i].polished = True
  reps = [g[0] for g in groups]
  merged = _group([candidates[i] for i in reps], config)
  groups = [sorted(sum((groups[j] for j in m), []), key=lambda i: i != reps[m[0]]) for m in merged]
  counts = {
    "polished": len(chosen),
    "polished_converged": int(sum(r.converged and not r.failed for r in results)),
    "polish_failed": int(sum(r.failed for r in results)),
  }
  return candidates, groups, counts


def _rescore(candidates, groups, teacher, config, progress) -> dict[int, float]:
  """Teacher energies (eV/atom) of the top ``rescore_top_k`` representatives, re-relaxed."""
  from crystal_search import relax

  top = [candidates[g[0]] for g in groups[: int(config.rescore_top_k)]]
  again = relax.relax_structures(
    [c.structure for c in top], teacher, progress=progress, **_relax_kwargs(config, config.fmax)
  )
  return {
    g[0]: r.energy / len(r.final) for g, r in zip(groups, again, strict=False) if not r.failed
  }


def _rows(candidates, groups, rescored, config, output_dir) -> list[dict]:
  """The report's table, one row per group, and its representative's CIF written."""
  from crystal_search import metrics

  references = metrics.load_reference_phases()
  best = candidates[groups[0][0]].energy_per_atom if groups else float("nan")
  os.makedirs(os.path.join(output_dir, "structures"), exist_ok=True)
  rows = []
  for rank, g in enumerate(groups, start=1):
    c = candidates[g[0]]
    cif = os.path.join("structures", f"rank_{rank:03d}.cif")
    c.structure.to(filename=os.path.join(output_dir, cif))
    row = {
      "rank": rank,
      "formula": c.structure.composition.reduced_formula,
      "formula_cell": c.structure.composition.formula.replace(" ", ""),
      "energy_per_atom": c.energy_per_atom,
      "delta_energy_per_atom": c.energy_per_atom - best,
      "volume_per_atom": c.structure.volume / len(c.structure),
      "space_group": _space_group(c.structure, float(config.symprec)),
      "count": len(g),
      "known_phase": metrics.known_phase(c.structure, references),
      "converged": c.converged,
      "polished": c.polished,
      "cif": cif,
    }
    if g[0] in rescored:
      row["teacher_energy_per_atom"] = rescored[g[0]]
    rows.append(row)
  return rows


def _work_line(work: dict) -> str:
  """The report's line on relaxation work (``totals["relax_work"]``)."""
  useful = work["structure_steps"] / max(work["slot_steps"], 1)
  return (
    f"Relaxation work: {work['structure_steps']} force evaluations of structures in "
    f"{work['slot_steps']} batch slot-steps ({100 * useful:.0f} % useful), "
    f"{work['compiles']} compilations, {work['compactions']} batch compactions."
  )


def write_report(result: SearchResult, output_dir: str) -> None:
  """``summary.json``, ``summary.md`` and ``energy_volume.png`` (AIRSS ``cryan``-style table)."""
  summary = {"structures": result.rows, "totals": result.totals}
  tmp = os.path.join(output_dir, "summary.json.tmp")
  with open(tmp, "w") as f:
    json.dump(summary, f, indent=2)
  os.replace(tmp, os.path.join(output_dir, "summary.json"))

  t = result.totals
  lines = [
    f"# Search: {t['composition']} ({t['force_field']}, seed {t['seed']})",
    "",
  ]
  if t["interrupted"]:
    lines += ["**Run cut short (interrupted): the table holds what finished.**", ""]
  reasons = ", ".join(f"{k}: {v}" for k, v in sorted(t["failure_reasons"].items())) or "none"
  lines += [
    f"Generated {t['generated']}, relaxed {t['relaxed']}, converged {t['converged']}, "
    f"failed {t['failed']} ({reasons}); {t['unique']} unique structures.",
    "",
    "Wall time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t["wall_time_s"].items()),
    "",
  ]
  if "screen_force_field" in t:
    s = t["settings"]
    lines += [
      f"Screened with {t['screen_force_field']} to {s['screen_fmax']} eV/Å, then polished the "
      f"{t.get('polished', 0)} lowest distinct candidates with {t['force_field']} to {s['fmax']} "
      f"eV/Å ({t.get('polished_converged', 0)} converged, {t.get('polish_failed', 0)} failed); "
      "unpolished rows are screening results.",
      "",
    ]
  lines += [
    _work_line(t["relax_work"]),
    "",
    "| rank | formula | E (eV/atom) | ΔE (eV/atom) | V (Å³/atom) | space group | count | known phase "
    "| polished |",
    "|---:|---|---:|---:|---:|---|---:|---|---|",
  ]
  for r in result.rows:
    lines.append(
      f"| {r['rank']} | {r['formula_cell']} | {r['energy_per_atom']:.4f} | "
      f"{r['delta_energy_per_atom']:.4f} | {r['volume_per_atom']:.2f} | {r['space_group']} | "
      f"{r['count']} | {r['known_phase'] or ''} | {'yes' if r.get('polished') else ''} |"
    )
  with open(os.path.join(output_dir, "summary.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  plot_energy_volume(result, os.path.join(output_dir, "energy_volume.png"))


def plot_energy_volume(result: SearchResult, path: str) -> None:
  """Energy per atom against volume per atom: all relaxed structures, unique ones marked."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4.5))
  if result.candidates:
    v = [c.structure.volume / len(c.structure) for c in result.candidates]
    e = [c.energy_per_atom for c in result.candidates]
    ax.scatter(v, e, s=8, c="0.6", label="relaxed")
    reps = [result.candidates[g[0]] for g in result.groups]
    ax.scatter(
      [c.structure.volume / len(c.structure) for c in reps],
      [c.energy_per_atom for c in reps],
      s=30,
      facecolors="none",
      edgecolors="C0",
      label="unique",
    )
    for row, c in zip(result.rows, reps, strict=True):
      if row["known_phase"]:
        x, y = c.structure.volume / len(c.structure), c.energy_per_atom
        ax.scatter([x], [y], s=60, marker="*", c="C3")
        ax.annotate(row["known_phase"], (x, y), textcoords="offset points", xytext=(5, 5))
  ax.set_xlabel("volume per atom (Å³)")
  ax.set_ylabel("energy per atom (eV)")
  ax.set_title(f"{result.totals['composition']}: {result.totals['unique']} unique")
  ax.legend(loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def load_screen_force_field(name: str, *, model: str | None = None):
  """The screening force field for ``search.screen_model`` (a packaged name or a model
  directory), or None for ``""`` or when it is the polishing ``model`` itself."""
  from crystal_search.force_fields.registry import make_force_field

  if not name or name == model:
    return None
  return make_force_field("model", model=name)


def load_force_field(
  kind: str, *, model: str | None = None, energy_model: str | None = None
) -> tuple[object, Callable[[Sequence[Structure]], np.ndarray] | None]:
  """The force field that relaxes, and the energy function that ranks.

  Args:
    kind: ``model`` (our force/stress network; default the shipped one), ``chgnet`` (the
      teacher) or ``meam`` (the 2NN MEAM baseline).
    model: force/stress model directory for ``kind='model'``.
    energy_model: energy model directory for ranking (default the shipped one).

  Returns:
    ``(force_field, energy_fn)``; ``energy_fn`` is None when the force field's own energies rank.
  """
  from crystal_search.force_fields import model as model_ff
  from crystal_search.force_fields.registry import make_force_field

  if kind not in ("model", "chgnet", "meam"):
    raise InputError(f"unknown force field {kind!r} (model, chgnet or meam)")
  force_field = make_force_field(kind, model=model)
  if kind != "model":
    return force_field, None
  energy_path = energy_model or os.path.join(PRETRAINED_DIR, "energy")
  if not os.path.isdir(energy_path):
    raise InputError(f"{energy_path}: no energy model there to rank with (pass --energy_model=DIR)")
  energy_ff = model_ff.from_directory(energy_path)

  def energy_fn(structures: Sequence[Structure]) -> np.ndarray:
    return model_ff.energies_per_atom(energy_ff, structures)

  return force_field, energy_fn
