"""Dataset statistics: Table 4 (markdown + JSON), Figures 1–2 (PNG), per-stoichiometry counts.

  python -m data_tools.dataset_stats --teacher_dir=data/teacher --dataset_dir=data/dataset \
      --md_dataset_dir=data/dataset_md --output_dir=experiments/results/dataset_stats \
      --summary_json=experiments/results/dataset_stats.json
"""

from __future__ import annotations

import glob
import json
import os

from absl import flags

from crystal_search.crystals import expand_inputs
from crystal_search.datasets import frames as frames_lib
from crystal_search.datasets import stats
from crystal_search.datasets.teacher import read_metadata
from crystal_search.errors import InputError
from experiments.common import run

FLAGS = flags.FLAGS
flags.DEFINE_string("teacher_dir", "data/teacher", "Relaxation files (<Formula>/*.npz).")
flags.DEFINE_string("dataset_dir", "data/dataset", "Output of build_dataset.")
flags.DEFINE_string(
  "md", None, "Optional MD frames: a .npz, a folder of them or a glob (Figure 1 and its table)."
)
flags.DEFINE_string(
  "md_dataset_dir",
  None,
  "Optional MD dataset (build_dataset --md): its frames are the MD set (unless --md is given),"
  " its manifest's runs and frame counts go into the summary and table4.md.",
)
flags.DEFINE_string("output_dir", "experiments/results/dataset_stats", "Tables and plots.")
flags.DEFINE_string(
  "summary_json", "experiments/results/dataset_stats.json", "Per-stoichiometry summary JSON."
)


def main(argv: list[str]) -> None:
  del argv
  paths = sorted(glob.glob(os.path.join(FLAGS.teacher_dir, "*", "*.npz")))
  metadata = [read_metadata(p) for p in paths]
  manifest = None
  manifest_path = os.path.join(FLAGS.dataset_dir, "manifest.json")
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      manifest = json.load(f)
  if not metadata and manifest is None:
    raise InputError(f"no relaxation files in {FLAGS.teacher_dir} and no {manifest_path}")
  sets = {}
  parts = []
  for key in ("train", "val", "test"):
    path = os.path.join(FLAGS.dataset_dir, f"{key}.npz")
    if os.path.exists(path):
      frames = frames_lib.load(path)
      sets[key] = frames
      if len(frames):
        parts.append(frames)
  if parts:
    sets["random (train+val+test, holdout excluded)"] = frames_lib.concatenate(parts)
  holdout = os.path.join(FLAGS.dataset_dir, "holdout.npz")
  if os.path.exists(holdout):
    sets["holdout"] = frames_lib.load(holdout)
  if FLAGS.md:
    md_paths = expand_inputs(
      os.path.join(FLAGS.md, "*.npz") if os.path.isdir(FLAGS.md) else FLAGS.md
    )
    sets["md"] = frames_lib.concatenate([frames_lib.load(p) for p in md_paths])
  md_manifest = None
  if FLAGS.md_dataset_dir:
    md_manifest_path = os.path.join(FLAGS.md_dataset_dir, "manifest.json")
    if not os.path.exists(md_manifest_path):
      raise InputError(f"--md_dataset_dir: no {md_manifest_path}")
    with open(md_manifest_path) as f:
      md_manifest = json.load(f)
    if "md" not in sets:
      md_paths = [os.path.join(FLAGS.md_dataset_dir, f"{k}.npz") for k in ("train", "val", "test")]
      sets["md"] = frames_lib.concatenate([frames_lib.load(p) for p in md_paths])
  result = stats.dataset_stats(metadata, manifest, sets)
  if md_manifest is not None:
    result["md"] = {k: md_manifest.get(k) for k in ("per_stoichiometry", "runs", "files")}
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  markdown = []
  for name, frames in sets.items():
    markdown.append(stats.table4_markdown(result["table4"][name], title=name))
    slug = "".join(c if c.isalnum() else "_" for c in name.split(" ")[0])
    stats.plot_distributions(
      frames, os.path.join(FLAGS.output_dir, f"distribution_{slug}.png"), title=name
    )
  random_key = "random (train+val+test, holdout excluded)"
  if "md" in sets and random_key in sets:
    stats.plot_md_vs_random(
      sets["md"],
      sets[random_key],
      os.path.join(FLAGS.output_dir, "distribution_md_vs_random.png"),
      title="MD frames against random-relaxation frames (paper appendix, Figures 1-2)",
    )
  if md_manifest is not None:
    markdown.append(stats.md_runs_markdown(md_manifest))
  with open(os.path.join(FLAGS.output_dir, "table4.md"), "w") as f:
    f.write("\n\n".join(markdown) + "\n")
  stats.write_json(result["table4"], os.path.join(FLAGS.output_dir, "table4.json"))
  stats.write_json(result, FLAGS.summary_json)
  print("\n\n".join(markdown))
  print()
  for formula, row in result["per_stoichiometry"].items():
    print(formula, {k: v for k, v in row.items()})
  print(f"wrote {FLAGS.summary_json} and {FLAGS.output_dir}/")


if __name__ == "__main__":
  run(main)
