"""Teacher NVT molecular dynamics on supercells of the known phases, in resumable segments.

  python -m data_tools.generate_md --steps=10000 --max_minutes=90 --output_dir=data/teacher_md

The paper: 800 K, 2 fs, 64–78-atom supercells, >= 47 ps per phase (VASP).  Each phase runs in
the most compact supercell of 64–78 atoms (non-diagonal matrices included); a phase with no
multiple of its primitive cell in the range runs in the multiple nearest the range
(``--nearest_outside``) or is reported and skipped.  The phases advance round-robin, one
segment (``--segment_steps``) at a time, each segment written atomically under
``<output_dir>/segments/<Formula>_md_<seed>/``; rerunning the command continues where it
stopped.  ``--shard=I/N`` splits the phases across processes.  At the end (or with
``--collect_only``) each phase's segments are joined into ``<output_dir>/<Formula>_md_<seed>.npz``
for ``data_tools.build_dataset --md``.  One CHGNet step on 64 atoms takes ~0.25 s on one core.
"""

from __future__ import annotations

import os
import time

from absl import flags

from crystal_search.datasets import frames as frames_lib
from crystal_search.datasets import md, md_segments
from experiments.common import run

FLAGS = flags.FLAGS
flags.DEFINE_list("phases", list(md.DEFAULT_MD_PHASES), "Known phases (reduced formulas).")
flags.DEFINE_integer("steps", 10000, "MD steps per phase (2 fs each: 10000 = 20 ps).")
flags.DEFINE_integer("segment_steps", 250, "Steps per resumable segment.")
flags.DEFINE_integer("sample_every", 10, "Record a frame every this many steps.")
flags.DEFINE_float("temperature", 800.0, "Temperature (K).")
flags.DEFINE_float("timestep", 2.0, "Time step (fs).")
flags.DEFINE_float("max_temperature_factor", 3.0, "A phase above this x target has diverged.")
flags.DEFINE_integer("min_atoms", 64, "Smallest supercell (atoms).")
flags.DEFINE_integer("max_atoms", 78, "Largest supercell (atoms).")
flags.DEFINE_bool("nearest_outside", True, "Phases with no cell in range: nearest multiple.")
flags.DEFINE_integer("seed", 0, "Seed of the velocities and the thermostat noise.")
flags.DEFINE_string("shard", "0/1", "This process's share of the phases, I/N.")
flags.DEFINE_float("max_minutes", 0.0, "Stop starting segments after this long (0: no limit).")
flags.DEFINE_bool("collect_only", False, "Only join existing segments into per-phase files.")
flags.DEFINE_string("output_dir", "data/teacher_md", "Output folder.")
flags.DEFINE_integer("num_threads", 1, "Torch threads.")


def _collect(phases: list[md_segments.Phase], version: dict) -> None:
  for phase in phases:
    name = phase.name
    phase_dir = os.path.join(FLAGS.output_dir, "segments", name)
    if not md_segments.segment_paths(phase_dir):
      continue
    path = os.path.join(FLAGS.output_dir, f"{name}.npz")
    if not version and os.path.exists(path):  # --collect_only: keep the teacher's versions
      old = frames_lib.load(path).metadata
      version = {k: old[k] for k in ("teacher", "chgnet", "torch", "model_name") if k in old}
    extra = {**version, "supercell_matrix": phase.structure.properties.get("supercell_matrix")}
    extra["cell_note"] = phase.structure.properties.get("cell_note")
    frames = md_segments.collect(phase_dir, extra)
    frames.save(path)
    m = frames.metadata
    print(
      f"{name}: {m['n_atoms']} atoms, {m['simulated_ps']:.2f} ps, {m['frames']} frames, "
      f"mean T {m['mean_temperature_k']:.0f} K, {m['wall_seconds'] / 60:.0f} min -> {path}"
    )


def main(argv: list[str]) -> None:
  del argv
  start = time.time()
  settings = md_segments.MDSettings(
    temperature_k=FLAGS.temperature,
    timestep_fs=FLAGS.timestep,
    sample_every=FLAGS.sample_every,
    segment_steps=FLAGS.segment_steps,
    max_temperature_factor=FLAGS.max_temperature_factor,
  )
  formulas = md_segments.shard_of(FLAGS.phases, FLAGS.shard)
  phases = md_segments.md_phases(
    md.known_phases(),
    formulas,
    seed=FLAGS.seed,
    min_atoms=FLAGS.min_atoms,
    max_atoms=FLAGS.max_atoms,
    nearest_outside=FLAGS.nearest_outside,
  )
  if FLAGS.collect_only:
    _collect(phases, {})
    return
  from crystal_search.force_fields.chgnet import CHGNetForceField

  ff = CHGNetForceField(num_threads=FLAGS.num_threads)
  deadline = start + 60 * FLAGS.max_minutes if FLAGS.max_minutes > 0 else None
  status = md_segments.run_round_robin(
    phases,
    ff.ase_calculator(),
    os.path.join(FLAGS.output_dir, "segments"),
    settings,
    total_steps=FLAGS.steps,
    deadline=deadline,
    log=lambda line: print(line, flush=True),
  )
  print(", ".join(f"{k}: {v}" for k, v in status.items()), flush=True)
  _collect(phases, ff.version_info())


if __name__ == "__main__":
  run(main)
