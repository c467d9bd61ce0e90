"""Teacher NVT molecular dynamics frames on supercells of the known phases.

  python -m data_tools.generate_md --phases=LiSi,Li13Si4 --steps=500 --output_dir=data/teacher_md

The paper: 800 K, 2 fs, 64–78-atom supercells, >= 47 ps per phase (VASP).  One CHGNet step on
64 atoms takes ~0.25 s on this CPU, so a CPU run affords a few ps at most; the length is a flag.
Each phase's run is written atomically as <output_dir>/<Formula>_md_<seed>.npz; a finished
file is skipped on rerun.
"""

from __future__ import annotations

import os

from absl import flags

from crystal_search.datasets import md
from crystal_search.errors import InputError
from experiments.common import run

FLAGS = flags.FLAGS
flags.DEFINE_list("phases", ["LiSi", "Li13Si4"], "Known phases (reduced formulas) to simulate.")
flags.DEFINE_integer("steps", 500, "MD steps per phase.")
flags.DEFINE_integer("sample_every", 10, "Record a frame every this many steps.")
flags.DEFINE_float("temperature", 800.0, "Temperature (K).")
flags.DEFINE_float("timestep", 2.0, "Time step (fs).")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_string("output_dir", "data/teacher_md", "Output folder.")
flags.DEFINE_integer("num_threads", 1, "Torch threads.")


def main(argv: list[str]) -> None:
  del argv
  from crystal_search.force_fields.chgnet import CHGNetForceField

  phases = md.known_phases()
  missing = [p for p in FLAGS.phases if p not in phases]
  if missing:
    raise InputError(f"--phases: no bundled structure for {', '.join(missing)} ({sorted(phases)})")
  ff = CHGNetForceField(num_threads=FLAGS.num_threads)
  for formula in FLAGS.phases:
    path = os.path.join(FLAGS.output_dir, f"{formula}_md_{FLAGS.seed}.npz")
    if os.path.exists(path):
      print(f"{path}: exists, skipped")
      continue
    cell = md.supercell_in_range(phases[formula])
    if cell is None:
      print(f"{formula}: no 64-78-atom diagonal supercell, skipped")
      continue
    frames = md.run_nvt(
      cell,
      ff.ase_calculator(),
      steps=FLAGS.steps,
      temperature_k=FLAGS.temperature,
      timestep_fs=FLAGS.timestep,
      sample_every=FLAGS.sample_every,
      seed=FLAGS.seed,
      name=f"{formula}_md_{FLAGS.seed}",
      progress=True,
    )
    frames.metadata.update(ff.version_info())
    frames.save(path)
    meta = frames.metadata
    print(
      f"{formula}: {len(cell)} atoms, {meta['simulated_ps']:.2f} ps, {len(frames)} frames, "
      f"mean T {meta['mean_temperature_k']:.0f} K, {meta['wall_seconds']:.0f} s -> {path}"
    )


if __name__ == "__main__":
  run(main)
