"""Teacher relaxations of random structures, sharded and resumable.

  python -m data_tools.generate_teacher --config=data_tools/configs/default_teacher.py \
      [--config.num_per_composition=100] [--shard_index=0 --num_shards=1]

Each finished relaxation is one file ``<output_dir>/<Formula>/<Formula>_<seed>_<index>.npz``;
rerunning skips finished ones (kill and rerun at will).  For a SLURM array:
``--shard_index=$SLURM_ARRAY_TASK_ID --num_shards=$SLURM_ARRAY_TASK_COUNT``.
"""

from __future__ import annotations

import datetime
import os

from absl import flags
from ml_collections import config_flags

from crystal_search.datasets import teacher
from crystal_search.errors import InputError
from experiments.common import run

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config", "data_tools/configs/default_teacher.py", "Teacher-run config.", lock_config=True
)
flags.DEFINE_integer("shard_index", 0, "This process's shard (0-based).")
flags.DEFINE_integer("num_shards", 1, "Number of shards the jobs are split into.")
flags.DEFINE_string("output_dir", None, "Override config.output_dir.")
flags.DEFINE_string("log_file", None, "Append one line per relaxation here (default: none).")
flags.DEFINE_integer("limit", 0, "Stop after this many new relaxations (0: no limit).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")


def make_force_field(cfg):
  """The teacher named by ``cfg.teacher`` and its metadata."""
  name = cfg.teacher.name
  if name == "chgnet":
    from crystal_search.force_fields.chgnet import CHGNetForceField

    ff = CHGNetForceField(model_name=cfg.teacher.model_name, num_threads=cfg.teacher.num_threads)
    return ff, ff.version_info()
  if name == "morse":
    ff = teacher.morse_force_field()
    return ff, {"teacher": ff.name}
  raise InputError(f"config.teacher.name {name!r}: expected 'chgnet' or 'morse'")


def random_config(cfg):
  from crystal_search.random_structures import config_from

  return config_from(cfg.random)


def main(argv: list[str]) -> None:
  del argv
  cfg = FLAGS.config
  output_dir = FLAGS.output_dir or cfg.output_dir
  jobs = teacher.make_jobs(
    [c.strip() for c in cfg.compositions.split(",") if c.strip()],
    int(cfg.num_per_composition),
    int(cfg.seed),
  )
  mine = teacher.shard(jobs, FLAGS.shard_index, FLAGS.num_shards)
  if FLAGS.limit:
    pending = [j for j in mine if not os.path.exists(j.path(output_dir))]
    mine = pending[: FLAGS.limit]
  force_field, info = make_force_field(cfg)
  log_fh = open(FLAGS.log_file, "a") if FLAGS.log_file else None  # noqa: SIM115

  def log(line: str) -> None:
    if log_fh is not None:
      stamp = datetime.datetime.now(datetime.UTC).strftime("%H:%M:%S")
      log_fh.write(f"{stamp} shard {FLAGS.shard_index}/{FLAGS.num_shards} {line}\n")
      log_fh.flush()

  log(f"start: {len(mine)} jobs in this shard, output {output_dir}, teacher {info}")
  summary = teacher.generate(
    mine,
    force_field,
    output_dir=output_dir,
    random_config=random_config(cfg),
    relax_settings=cfg.relax.to_dict(),
    teacher_info=info,
    progress=FLAGS.progress,
    log=log,
  )
  per = summary["seconds"] / summary["ran"] if summary["ran"] else float("nan")
  line = (
    f"done: {summary['ran']} relaxed ({summary['done_before']} already done), "
    f"{summary['converged']} converged, {summary['failed']} failed, "
    f"{per:.1f} s per relaxation"
  )
  log(line)
  print(line)
  if log_fh is not None:
    log_fh.close()


if __name__ == "__main__":
  run(main)
